"""Everything polyspell prints as JSON is RFC 8259 JSON: a strict parser reads it.

A number that is not finite (NaN, Infinity) is written as ``null``, as JavaScript's
``JSON.stringify`` and pydantic write it. Error fields cannot hold one at all: they are
refused (``bridge/invalid_error``) in every language, as JavaScript already refused them,
so an error read back from its JSON is the error that was written.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from bridge import SpellError, ToolError
from bridge.jsontext import json_text
from host import Host, tool
from tests import cli
from tests.conftest import EXTENSION, LANGUAGES, pick


def strict(text: str) -> object:
    """``text`` read by a parser that refuses NaN and Infinity, as RFC 8259 does."""
    def refuse(constant: str) -> None:
        raise ValueError(f"not RFC 8259 JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def polyspell(*args: str | Path, encoding: str = "utf-8") -> subprocess.CompletedProcess[str]:
    return cli.polyspell(*args, encoding=encoding, errors="surrogateescape",
                         env={"PYTHONIOENCODING": encoding})


def test_json_text_writes_non_finite_numbers_as_null_and_escapes_lone_surrogates():
    value = {"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": ("x\ud800", {"d": math.nan}),
             "é": "ü\U0001f600"}
    text = json_text(value)
    assert strict(text) == {"a": None, "b": [None, None, 1.5], "c": ["x\ud800", {"d": None}],
                            "é": "ü\U0001f600"}
    assert "\\ud800" in text and "é" in text  # Unicode text stays as it is
    text.encode("utf-8")  # always encodable
    assert strict(json_text(value, indent=2)) == strict(text)
    assert json_text({"a": 1}) == json.dumps({"a": 1})  # the usual case is unchanged
    assert value["a"] is math.nan  # the data itself is left alone


def test_an_errors_json_is_strict_and_reads_back():
    err = ToolError.Timeout(tool_name="t", duration=1.0, retry_after=math.inf)
    assert strict(err.to_json())["retry_after"] is None
    assert err.to_dict()["retry_after"] is None
    strict(json.dumps(err.to_dict(), allow_nan=False))
    with pytest.raises(SpellError) as info:  # fields hold JSON data: a non-finite is refused
        ToolError.Timeout(tool_name="t", duration=math.nan)
    assert info.value.code == "bridge/invalid_error"
    assert info.value.fields["field"] == "duration"
    with pytest.raises(SpellError) as info:
        ToolError.ExecutionFailed(tool_name="t", reason="r", partial_result={"x": [math.inf]})
    assert info.value.code == "bridge/invalid_error"


@pytest.mark.parametrize("thrown", ["0/0", "{x = 0/0, y = {math.huge, -math.huge}}"])
def test_a_lua_error_value_that_is_not_finite_is_kept_as_null(thrown):
    with pytest.raises(SpellError) as info:
        Host([], timeout=5).run_source(f"error({thrown})", "lua", "agent.lua")
    err = info.value
    assert err.code == "script/lua"
    data = strict(err.to_json())
    assert SpellError.from_dict(data).fields == data["fields"]


@tool
def timeout_nan() -> None:
    """Raises an error whose field is not a finite number."""
    raise ToolError.Timeout(tool_name="x", duration=math.nan)


def test_an_error_field_that_is_not_finite_is_refused_in_every_language(language):
    host = Host([timeout_nan], timeout=5, on_output=lambda line: None)
    for source in (pick(language,
                        "error(errors.ToolError{kind = 'timeout', tool_name = 'x', "
                        "duration = 0/0})",
                        "function main() { throw new ToolError({kind: 'timeout', "
                        "tool_name: 'x', duration: NaN}); }"),
                   pick(language, "return tools.timeout_nan()",
                        "async function main() { return await tools.timeout_nan(); }")):
        with pytest.raises(SpellError) as info:
            host.run_source(source, language, "agent")
        assert info.value.code == "bridge/invalid_error", info.value
        assert info.value.fields["field"] == "duration"
        strict(info.value.to_json())


# -- the command line -------------------------------------------------------------------

RESULTS = {
    "lua": "return {a = 0/0, b = math.huge, c = {-math.huge, 1}, d = 'x'}",
    "javascript": "function main() { return {a: null, b: null, c: [null, 1], d: 'x'}; }",
}
FAILURES = {
    "lua": "error({code = 0/0, why = math.huge})",
    "javascript": "function main() { const e = new Error('m'); e.code = NaN; throw e; }",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_run_prints_strict_json(language, tmp_path):
    script = tmp_path / f"agent{EXTENSION[language]}"
    script.write_text(RESULTS[language])
    expected = {"a": None, "b": None, "c": [None, 1], "d": "x"}
    plain = polyspell("run", script)
    assert plain.returncode == 0, plain.stderr
    assert strict(plain.stdout) == expected
    wrapped = polyspell("run", script, "--json")
    assert strict(wrapped.stdout) == {"ok": True, "result": expected}
    script.write_text(FAILURES[language])
    failed = polyspell("run", script, "--json")
    assert failed.returncode == 1
    payload = strict(failed.stdout)
    assert payload["ok"] is False
    saved = tmp_path / "error.json"
    saved.write_text(failed.stdout)
    explained = polyspell("explain", saved, "--json")
    assert explained.returncode == 0, explained.stderr
    assert strict(explained.stdout)["fields"] == payload["error"]["fields"]


def test_explain_json_is_strict_whatever_it_read(tmp_path):
    saved = tmp_path / "error.json"
    saved.write_text('{"category": "tool", "kind": "timeout", "retry_after": NaN, '
                     '"fields": {"tool_name": "x", "duration": 1.5}}')
    out = polyspell("explain", saved, "--json")
    assert out.returncode == 0, out.stderr
    assert strict(out.stdout)["retry_after"] is None


def test_plan_tools_and_catalog_json_are_strict(tmp_path):
    (tmp_path / "nan.lua").write_text("return {x = 0/0, y = math.huge}")
    (tmp_path / "plan.toml").write_text(
        '[[task]]\nid = "a"\nscript = "nan.lua"\n')
    (tmp_path / "tools.py").write_text(
        "from host import tool\n\n\n@tool\ndef far(limit: float = float('inf'), "
        "floor: float = float('-nan')) -> float:\n    \"\"\"Defaults that are not finite.\"\"\"\n"
        "    return limit\n")
    plan = polyspell("plan", tmp_path / "plan.toml", "--json")
    assert plan.returncode == 0, plan.stderr
    report = strict(plan.stdout)
    assert report["tasks"][0]["result"] == {"x": None, "y": None}
    tools = polyspell("tools", "--tools", tmp_path / "tools.py", "--json")
    assert tools.returncode == 0, tools.stderr
    (entry,) = strict(tools.stdout)
    assert entry["parameters"]["properties"]["limit"]["default"] is None
    catalog = polyspell("catalog", "--json")
    assert catalog.returncode == 0
    strict(catalog.stdout)
    listing = polyspell("tools", "--tools", tmp_path / "tools.py")
    assert listing.returncode == 0
    # each default is written as JSON: strict JSON, as --json writes it
    assert listing.stdout.splitlines()[1:] == ["  limit: number = null",
                                               "  floor: number = null"]


def test_json_on_a_stdout_that_is_not_utf8_is_ascii_json(tmp_path):
    script = tmp_path / "agent.lua"
    script.write_text('return {"\u00e9\U0001f600", 0/0}', encoding="utf-8")
    for encoding in ("ascii", "latin-1"):
        out = polyspell("run", script, "--json", encoding=encoding)
        assert out.returncode == 0, out.stderr
        assert out.stdout.isascii()
        assert strict(out.stdout) == {"ok": True, "result": ["\u00e9\U0001f600", None]}


def test_text_that_stdout_cannot_encode_is_escaped_not_a_crash(tmp_path):
    saved = tmp_path / "error.json"
    saved.write_text('{"category": "tool", "kind": "timeout", "message": "bad \\ud800", '
                     '"fields": {"tool_name": "x", "duration": 1.5}}')
    out = polyspell("explain", saved)
    assert out.returncode == 0, out.stderr
    assert "tool/timeout: bad \\ud800" in out.stdout
    as_json = polyspell("explain", saved, "--json")
    assert strict(as_json.stdout)["message"] == "bad \ud800"


def test_an_error_whose_context_holds_numbers_that_are_not_finite_is_strict_json():
    """A context's floats and user data may hold NaN or Infinity (a tool's metadata, a
    measured time, a Retry-After): to_dict writes each as null (the context's models do
    it themselves, without a walk over the whole context): to_dict is JSON data."""
    from bridge.context import CallFrame, RecoveryAttempt

    err = ToolError.ExecutionFailed(tool_name="t", reason="x", retry_after=math.nan)
    context = err.context
    trace = context.execution_trace.model_copy(update={
        "call_stack": [CallFrame(function_name="f", execution_time=math.inf,
                                 parameters={"x": [math.nan, 1.5]})],
        "recovery_attempts": [RecoveryAttempt(action="retry", tool="t", attempt=1,
                                              delay=-math.inf, error="tool/timeout",
                                              at=context.timestamp)]})
    err.context = context.model_copy(update={
        "metadata": {"ratio": math.nan, "nested": {"deep": [math.inf, 2.0]}},
        "execution_trace": trace})
    data = err.to_dict()
    json.dumps(data, allow_nan=False)  # a NaN left anywhere would raise here
    assert data["retry_after"] is None
    assert data["context"]["metadata"] == {"ratio": None, "nested": {"deep": [None, 2.0]}}
    [frame] = data["context"]["execution_trace"]["call_stack"]
    assert (frame["execution_time"], frame["parameters"]) == (None, {"x": [None, 1.5]})
    [attempt] = data["context"]["execution_trace"]["recovery_attempts"]
    assert attempt["delay"] is None
