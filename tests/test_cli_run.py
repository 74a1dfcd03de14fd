"""``polyspell run`` and ``polyspell tools`` as users run them: output, JSON and exit codes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bridge import SpellError
from tests.cli import polyspell

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "scripts"


@pytest.mark.parametrize("script", ["agent.lua", "agent.js"])
def test_example_agent_succeeds_with_its_result_on_stdout(script):
    out = polyspell("run", f"scripts/{script}", "city=Lisbon", "--tools", "scripts/tools.py")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "city": "Lisbon",
        "summary": "Lisbon is the capital of Portugal, on the Tagus.",
        "weather": "sunny, 21 C",
    }
    assert "skipping translation: " in out.stderr  # script output goes to stderr
    assert "Tool not found: translate" in out.stderr


@pytest.mark.parametrize("script,line", [("agent.lua", 7), ("agent.js", 7)])
def test_example_agent_failure_prints_a_translated_traceback(script, line):
    out = polyspell("run", f"scripts/{script}", "city=Atlantis", "--tools", "scripts/tools.py")
    assert out.returncode == 1
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    language = "lua" if script.endswith(".lua") else "javascript"
    assert f"  {language} scripts/{script}:{line}" in "\n".join(lines)
    assert any(entry.startswith("  host <tool call>, in weather") for entry in lines)
    assert any("tools.py" in entry and entry.startswith("  python ") for entry in lines)
    assert 'raise LookupError(f"no weather station in {city!r}")' in out.stderr
    assert lines[-1] == ("tool/execution_failed: Tool execution failed: weather - "
                         "LookupError: no weather station in 'Atlantis'")
    assert "The above exception was the direct cause" in out.stderr
    assert "host/runner.py" not in out.stderr  # polyspell's own frames are hidden
    assert "Traceback (most recent call last):" in out.stderr


def test_json_output_on_success_and_failure():
    good = polyspell("run", "scripts/agent.lua", "--args-json", '{"city": "Paris"}',
                     "--tools", "scripts/tools.py", "--json")
    assert good.returncode == 0
    assert json.loads(good.stdout) == {"ok": True, "result": {
        "city": "Paris", "summary": "Paris is the capital of France, on the Seine.",
        "weather": "cloudy, 14 C"}}
    bad = polyspell("run", "scripts/agent.js", "city=Atlantis", "--tools", "scripts/tools.py",
                    "--json")
    assert bad.returncode == 1
    (line,) = bad.stdout.splitlines()  # exactly one JSON object
    payload = json.loads(line)
    assert payload["ok"] is False
    err = SpellError.from_dict(payload["error"])
    assert err.code == "tool/execution_failed"
    assert err.cause.fields["exception_type"] == "LookupError"


@pytest.mark.parametrize("name,source", [
    ("echo.lua", "return {type(args), args}"),
    ("echo.js", "function main(a) { return [args === null ? 'null' : typeof a, args]; }")])
def test_without_arguments_args_is_an_empty_object(tmp_path, name, source):
    script = tmp_path / name
    script.write_text(source)
    out = polyspell("run", script)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [pick(name, "table", "object"), {}]


def pick(name: str, lua: str, javascript: str) -> str:
    return lua if name.endswith(".lua") else javascript


def test_key_value_arguments_are_json_or_strings(tmp_path):
    script = tmp_path / "echo.lua"
    script.write_text("return args")
    out = polyspell("run", script, "n=3", "flag=true", "name=Ada", "list=[1,2]")
    assert json.loads(out.stdout) == {"n": 3, "flag": True, "name": "Ada", "list": [1, 2]}


def test_exit_code_2_for_usage_and_configuration(tmp_path):
    assert polyspell("run", tmp_path / "missing.lua").returncode == 2
    odd = tmp_path / "agent.rb"
    odd.write_text("puts 1")
    unknown = polyspell("run", odd)
    assert unknown.returncode == 2 and "cannot tell the language" in unknown.stderr
    broken = tmp_path / "broken.py"
    broken.write_text("this is not python\n")
    ok = tmp_path / "ok.lua"
    ok.write_text("return 1")
    bad_tools = polyspell("run", ok, "--tools", broken)
    assert bad_tools.returncode == 2 and "configuration/load_failed" in bad_tools.stderr
    assert polyspell("run", ok, "--no-such-flag").returncode == 2
    assert polyspell("run", ok, "--args-json", "{oops").returncode == 2
    for out in (unknown, bad_tools):  # no plumbing frames, only what the user can act on
        assert "anyio" not in out.stderr and "asyncio" not in out.stderr
        assert "host/" not in out.stderr and "importlib" not in out.stderr


def test_exit_code_3_for_a_security_violation(tmp_path):
    script = tmp_path / "escape.lua"
    script.write_text('return load("\\27Lua binary chunk")')
    out = polyspell("run", script)
    assert out.returncode == 3 and "security/script_safety_violation" in out.stderr


@pytest.mark.parametrize("source,name", [("while true do end", "loop.lua"),
                                         ("while (true) {}", "loop.js")])
def test_exit_code_4_for_a_resource_limit(tmp_path, source, name):
    script = tmp_path / name
    script.write_text(source)
    out = polyspell("run", script, "--timeout", "0.5")
    assert out.returncode == 4
    assert "script/resource_exhaustion" in out.stderr and "time" in out.stderr


def test_tools_lists_names_and_schemas():
    out = polyspell("tools", "--tools", "scripts/tools.py", "--json")
    assert out.returncode == 0
    listing = {entry["name"]: entry for entry in json.loads(out.stdout)}
    assert set(listing) == {"search", "weather", "summarize"}
    assert listing["weather"]["async"] is True and listing["weather"]["timeout"] == 2.0
    assert listing["search"]["parameters"]["required"] == ["query"]
    text = polyspell("tools", "--tools", "scripts/tools.py")
    assert "search  Look a subject up in a small built-in encyclopedia." in text.stdout


def test_explain_renders_saved_json_the_way_run_prints_it(tmp_path):
    run = polyspell("run", "scripts/agent.lua", "city=Atlantis", "--tools", "scripts/tools.py",
                    "--json")
    saved = tmp_path / "error.json"
    saved.write_text(run.stdout)
    shown = polyspell("explain", saved)
    assert shown.returncode == 0
    direct = polyspell("run", "scripts/agent.lua", "city=Atlantis", "--tools",
                       "scripts/tools.py")
    traceback_only = direct.stderr[direct.stderr.index("Traceback"):]
    assert shown.stdout.strip() == traceback_only.strip()
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(json.loads(run.stdout)["error"]))
    as_json = polyspell("explain", bare, "--json")
    assert json.loads(as_json.stdout) == json.loads(run.stdout)["error"]


def test_explain_refuses_bad_input_clearly(tmp_path):
    missing = polyspell("explain", tmp_path / "none.json")
    assert missing.returncode == 2 and "configuration/file_not_found" in missing.stderr
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    out = polyspell("explain", garbage)
    assert out.returncode == 2 and "configuration/parse_failed" in out.stderr
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"category": "tool", "kind": "timeout", "fields": {"tool_name": 1}}')
    out = polyspell("explain", wrong)
    assert out.returncode == 2
    assert "bridge/deserialization_failed" in out.stderr and "$.fields" in out.stderr


@pytest.mark.parametrize("language,source", [("lua", "return 1"),
                                             ("js", "function main() { return 1; }")])
def test_a_run_that_raises_nothing_never_imports_pydantic(language, source):
    # pydantic costs a third of the CLI's start-up; it is for errors and tool parameters.
    import sys

    code = ("import sys\nfrom host import Host\n"
            f"assert Host().run_source({source!r}, {language!r}) == 1\n"
            "print('pydantic' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr


TOOLS = ("--tools", "scripts/helpers.lua", "--tools", "scripts/text.js", "--tools",
         "scripts/tools.py")


def test_polyglot_example_succeeds():
    out = polyspell("run", "scripts/trip.js", "city=Lisbon", *TOOLS)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "plan": "Lisbon: Lisbon is the capital of Portugal, on the Tagus. (sunny, 21 C)"}


def test_polyglot_example_failure_walks_javascript_lua_and_python():
    out = polyspell("run", "scripts/trip.js", "city=Atlantis", *TOOLS)
    assert out.returncode == 1
    failure = out.stderr.split("direct cause of the following exception:")[-1]
    located = [line.strip() for line in failure.splitlines()
               if line.startswith("  ") and not line.startswith("    ")]
    assert located == [
        "javascript scripts/trip.js:13:29, in main",
        "javascript scripts/trip.js:7:29, in plan",
        "host <tool call>, in brief",
        "lua scripts/helpers.lua:16, in brief",
        "lua scripts/helpers.lua:9, in forecast",
        "host <tool call>, in weather",
        "python scripts/tools.py:30:9, in weather",
    ]
    assert failure.strip().endswith(
        "tool/execution_failed: Tool execution failed: weather - LookupError: "
        "no weather station in 'Atlantis'")
    assert "local report = tools.weather{city = city}" in failure  # the source lines too


def test_tools_lists_the_functions_of_lua_and_javascript_tools_files():
    out = polyspell("tools", "--tools", "scripts/helpers.lua", "--tools", "scripts/text.js",
                    "--json")
    assert out.returncode == 0, out.stderr
    names = [entry["name"] for entry in json.loads(out.stdout)]
    assert names == ["brief", "shout", "upper", "words"]


@pytest.mark.parametrize("name,source", [("echo.lua", "return args"),
                                         ("echo.js", "function main(a) { return a; }")])
def test_key_value_arguments_may_come_after_options(tmp_path, name, source):
    script = tmp_path / name
    script.write_text(source)
    out = polyspell("run", script, "--tools", "scripts/tools.py", "city=Lisbon")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"city": "Lisbon"}
    mixed = polyspell("run", script, "a=1", "--timeout", "5", "b=x", "--json", "a=2",
                      "--args-json", '{"c": true}')
    assert mixed.returncode == 0, mixed.stderr
    assert json.loads(mixed.stdout) == {"ok": True, "result": {"a": 2, "b": "x", "c": True}}


def test_flags_after_key_value_arguments_are_still_flags(tmp_path):
    script = tmp_path / "echo.lua"
    script.write_text("return args")
    for bad in (["city=Lisbon", "--no-such-flag"], ["--tools", "scripts/tools.py", "a=1",
                                                    "--no-such=1", "b=2"],
                ["a=1", "-x=1"]):
        out = polyspell("run", script, *bad)
        assert out.returncode == 2, (bad, out.stdout)
        assert "unrecognized arguments" in out.stderr and out.stdout == ""
    after = polyspell("run", script, "city=Lisbon", "--timeout", "x=1")  # a value, not a pair
    assert after.returncode == 2 and "--timeout" in after.stderr
    not_pair = polyspell("run", script, "--json", "oops")
    assert not_pair.returncode == 2 and "'oops' is not key=value" in not_pair.stdout
    usage = polyspell("run", "--help")
    assert "anywhere after the script" in " ".join(usage.stdout.split())
