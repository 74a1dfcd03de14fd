"""Careless tools: text that is not Unicode, exceptions that cannot be described, and
``BaseException``s. Each must end as what it is (data, or a tool failure the script can
catch), in both languages and one or two levels deep; only ``KeyboardInterrupt`` ends a
run, as it ends any Python code.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from enum import IntEnum, StrEnum
from pathlib import Path

import pytest

from bridge import SpellError, ToolError
from bridge.errors import describe_exception, exception_message
from host import Host, tool
from tests.cli import polyspell
from tests.conftest import EXTENSION, LANGUAGES, pick


def _quiet(*tools, **options) -> Host:
    return Host(list(tools), timeout=10, on_output=lambda line: None, **options)


# -- item 8: text with a lone surrogate ------------------------------------------------

@tool
def lone() -> dict:
    """A result whose strings are not all Unicode text (lone and paired surrogates)."""
    return {"s": "a\ud800b", "k\udfff": ["\udc00"], "pair": "\ud83d\ude00"}


@tool
def refuse(why: str) -> None:
    """Fails with a message that holds a lone surrogate."""
    raise ValueError(f"bad {why}")


def test_a_lone_surrogate_enters_lua_as_the_replacement_character_and_js_as_it_is(language):
    host = _quiet(lone)
    got = host.run_source(pick(language, "local r = tools.lone()\nreturn {r, #r.s}\n",
                               "async function main() {\n  const r = await tools.lone();\n"
                               "  return [r, r.s.length];\n}\n"), language, "agent")
    if language == "lua":  # Lua strings are UTF-8: U+FFFD is 3 bytes
        assert got == [{"s": "a\ufffdb", "k\ufffd": ["\ufffd"], "pair": "\U0001f600"}, 5]
    else:  # JavaScript strings are UTF-16: they hold a lone surrogate
        assert got == [{"s": "a\ud800b", "k\udfff": ["\udc00"], "pair": "\U0001f600"}, 3]


def test_a_lone_surrogate_in_args_and_in_a_tool_error_crosses(language):
    host = _quiet(refuse)
    source = pick(language,
                  "local ok, err = pcall(tools.refuse, {why = args.why})\n"
                  "return {args.why, err.message}\n",
                  "async function main(args) {\n"
                  "  try { await tools.refuse({why: args.why}); }\n"
                  "  catch (err) { return [args.why, err.message]; }\n}\n")
    why, message = host.run_source(source, language, "agent", {"why": "x\ud800"})
    expected = pick(language, "x\ufffd", "x\ud800")
    assert why == expected
    assert message.endswith(f"ValueError: bad {expected}")


def test_a_lone_surrogate_reaches_a_lua_tools_file_as_the_replacement_character(tmp_path):
    helpers = tmp_path / "helpers.lua"
    helpers.write_text("local M = {}\nfunction M.echo(p) return {p.s, #p.s} end\nreturn M\n")
    host = _quiet(helpers)
    got = host.run_source("async function main() { return await tools.echo({s: 'a\\ud800'}); }",
                          "javascript", "agent")
    assert got == ["a\ufffd", 4]


def test_a_lone_surrogate_in_a_script_name_does_not_crash_lua():
    host = _quiet()
    assert host.run_source("return 1", "lua", "agent\udcff.lua") == 1
    with pytest.raises(SpellError) as info:
        host.run_source("error('boom')", "lua", "agent\udcff.lua")
    assert info.value.code == "script/lua"


def test_a_source_with_a_lone_surrogate_is_refused_as_code_in_both_languages(language):
    source = pick(language, "local a = 1\nreturn 'x\ud800'\n",
                  "function main() {\n  return 'x\ud800';\n}\n")
    with pytest.raises(SpellError) as info:
        _quiet().run_source(source, language, "agent")
    assert info.value.code == "script/compilation_failed"
    assert "not valid UTF-8" in info.value.message
    if language == "lua":
        assert info.value.fields["line"] == 2


# -- item 9: exceptions that cannot be described ----------------------------------------

class StrFails(Exception):
    def __str__(self) -> str:
        raise ValueError("no str for you")


class StrAndReprFail(StrFails):
    def __repr__(self) -> str:
        raise ValueError("no repr for you")


class ArgsFail(Exception):
    @property
    def args(self):  # type: ignore[override]
        raise RuntimeError("no args")


class StrNotText(Exception):
    def __str__(self):  # type: ignore[override]
        return 42


class Meta(type):
    def __getattribute__(cls, name: str):
        if name in ("__module__", "__qualname__"):
            raise RuntimeError("no name")
        return super().__getattribute__(name)


class NameFails(Exception, metaclass=Meta):
    pass


class InterruptedDescribing(Exception):
    def __str__(self) -> str:
        raise KeyboardInterrupt


BROKEN = {"str": StrFails, "str_and_repr": StrAndReprFail, "args": ArgsFail,
          "not_text": StrNotText, "name": NameFails}


@tool
def broken(kind: str) -> None:
    """Raises an exception that cannot describe itself."""
    raise BROKEN[kind]("hidden")


@pytest.mark.parametrize("kind", list(BROKEN))
def test_describing_a_broken_exception_never_fails(kind):
    try:
        raise BROKEN[kind]("hidden")
    except Exception as exc:
        text = describe_exception(exc)
        assert isinstance(text, str) and type(text) is str
        assert isinstance(exception_message(exc), str)
        for err in (SpellError.wrap(exc), SpellError.wrap(exc, "runtime", "python_exception"),
                    ToolError.wrap(exc, tool_name="t")):
            assert isinstance(err.message, str)
            json.loads(err.to_json())
            err.to_text()
            assert pickle.loads(pickle.dumps(err)).code == err.code
        try:
            raise ToolError.NotFound(tool_name="t") from exc
        except SpellError as outer:
            assert outer.cause is not None
            assert json.loads(outer.to_json())["cause"]["kind"] == "python_exception"
            pickle.loads(pickle.dumps(outer))
    assert describe_exception(StrFails("x")).endswith("StrFails: <exception str() failed>")


def test_describing_keeps_a_keyboard_interrupt():
    with pytest.raises(KeyboardInterrupt):
        describe_exception(InterruptedDescribing())


@pytest.mark.parametrize("kind", list(BROKEN))
def test_a_tool_exception_that_cannot_be_described_is_a_catchable_tool_failure(language, kind):
    host = _quiet(broken)
    caught = host.run_source(pick(language,
                                  "local ok, err = pcall(tools.broken, {kind = args.kind})\n"
                                  "return {err.category, err.kind, err.message}\n",
                                  "async function main(args) {\n"
                                  "  try { await tools.broken({kind: args.kind}); }\n"
                                  "  catch (err) { return [err.category, err.kind, err.message];"
                                  " }\n}\n"), language, "agent", {"kind": kind})
    assert caught[:2] == ["tool", "execution_failed"]
    assert caught[2].startswith("Tool execution failed: broken - ")
    with pytest.raises(ToolError) as info:
        host.run_source(pick(language, "return tools.broken{kind = args.kind}",
                             "async function main(args) { return await tools.broken(args); }"),
                        language, "agent", {"kind": kind})
    err = info.value
    assert err.code == "tool/execution_failed" and err.fields["tool_name"] == "broken"
    assert isinstance(err.__cause__, BROKEN[kind])
    json.loads(err.to_json())
    assert "Tool execution failed: broken" in err.to_text()
    assert pickle.loads(pickle.dumps(err)).code == "tool/execution_failed"


RELAY = {
    "lua": "local M = {}\nfunction M.relay(p) return tools.broken(p) end\n"
           "function M.guard(p)\n  local ok, err = pcall(tools.broken, p)\n"
           "  return {err.kind, err.fields.tool_name}\nend\nreturn M\n",
    "javascript": "exports.relay = function relay(p) { return tools.broken(p); };\n"
                  "exports.guard = async function guard(p) {\n"
                  "  try { await tools.broken(p); } catch (err) {"
                  " return [err.kind, err.fields.tool_name]; }\n};\n",
}


@pytest.mark.parametrize("helper", LANGUAGES)
@pytest.mark.parametrize("kind", ["str", "str_and_repr"])
def test_two_levels_deep_a_broken_exception_is_the_tools_failure(language, helper, kind,
                                                                  tmp_path):
    path = tmp_path / f"relay{EXTENSION[helper]}"
    path.write_text(RELAY[helper])
    host = _quiet(broken, path)
    # the tools file catches it
    assert host.run_source(pick(language, "return tools.guard{kind = args.kind}",
                                "async function main(args) { return await tools.guard(args); }"),
                           language, "agent", {"kind": kind}) == ["execution_failed", "broken"]
    # nobody catches it: the agent's error is the Python tool's failure, not a ValueError
    with pytest.raises(ToolError.ExecutionFailed) as info:
        host.run_source(pick(language, "return tools.relay{kind = args.kind}",
                             "async function main(args) { return await tools.relay(args); }"),
                        language, "agent", {"kind": kind})
    err = info.value
    assert err.fields["tool_name"] == "broken"
    assert "<exception str() failed>" in err.message
    json.loads(err.to_json())
    err.to_text()


# -- item 10: BaseException from a tool ---------------------------------------------------

class Custom(BaseException):
    pass


FATAL = {"SystemExit": SystemExit, "GeneratorExit": GeneratorExit,
         "BaseException": BaseException, "Custom": Custom,
         "KeyboardInterrupt": KeyboardInterrupt}


@tool
def quit_sync(name: str) -> None:
    """Raises the named BaseException."""
    raise FATAL[name]("bye")


@tool
async def quit_async(name: str) -> None:
    """Raises the named BaseException, in async code."""
    raise FATAL[name]("bye")


@tool(timeout=5)
def quit_thread(name: str) -> None:
    """Raises the named BaseException on a thread of its own (it has a timeout)."""
    raise FATAL[name]("bye")


QUITTERS = [quit_sync, quit_async, quit_thread]
CATCH = {
    "lua": "local ok, err = pcall(tools[args.tool], {name = args.name})\n"
           "return {tostring(ok), err.category, err.kind, err.fields.reason}\n",
    "javascript": "async function main(args) {\n"
                  "  try { await tools[args.tool]({name: args.name}); return 'no error'; }\n"
                  "  catch (err) { return ['false', err.category, err.kind, err.fields.reason]; }"
                  "\n}\n",
}


@pytest.mark.parametrize("name", ["SystemExit", "GeneratorExit", "BaseException", "Custom"])
@pytest.mark.parametrize("fn", ["quit_sync", "quit_async", "quit_thread"])
def test_a_tools_base_exception_is_a_tool_failure_the_script_can_catch(language, name, fn):
    host = _quiet(*QUITTERS)
    got = host.run_source(CATCH[language], language, "agent", {"tool": fn, "name": name})
    qualified = "tests.test_careless_tools.Custom" if name == "Custom" else name
    assert got == ["false", "tool", "execution_failed", f"{name}: bye"] or \
        got == ["false", "tool", "execution_failed", f"{qualified}: bye"]
    with pytest.raises(ToolError) as info:
        host.run_source(pick(language, "return tools[args.tool]{name = args.name}",
                             "async function main(a) { return await tools[a.tool]({name: a.name});"
                             " }"), language, "agent", {"tool": fn, "name": name})
    assert info.value.code == "tool/execution_failed"
    assert type(info.value.__cause__) is FATAL[name]
    assert host.run_source(pick(language, "return 1", "function main() { return 1; }"),
                           language, "after") == 1


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["SystemExit", "GeneratorExit", "Custom"])
@pytest.mark.parametrize("fn", ["quit_sync", "quit_async", "quit_thread"])
async def test_a_tools_base_exception_under_asyncio_and_trio(language, name, fn):
    host = _quiet(*QUITTERS)
    got = await host.arun_source(CATCH[language], language, "agent", {"tool": fn, "name": name})
    assert got[:3] == ["false", "tool", "execution_failed"]


@pytest.mark.parametrize("fn", ["quit_sync", "quit_async", "quit_thread"])
def test_a_tools_keyboard_interrupt_ends_the_run_as_in_any_python_code(language, fn):
    host = _quiet(*QUITTERS)
    with pytest.raises(KeyboardInterrupt):  # the script's pcall / catch does not swallow it
        host.run_source(CATCH[language], language, "agent",
                        {"tool": fn, "name": "KeyboardInterrupt"})
    assert host.run_source(pick(language, "return 2", "function main() { return 2; }"),
                           language, "after") == 2


@pytest.mark.anyio
@pytest.mark.parametrize("fn", ["quit_sync", "quit_async", "quit_thread"])
async def test_a_tools_keyboard_interrupt_under_asyncio_and_trio(language, fn):
    host = _quiet(*QUITTERS)
    with pytest.raises(KeyboardInterrupt):
        await host.arun_source(CATCH[language], language, "agent",
                               {"tool": fn, "name": "KeyboardInterrupt"})


@pytest.mark.parametrize("helper", LANGUAGES)
def test_two_levels_deep_a_base_exception_is_the_tools_failure(language, helper, tmp_path):
    path = tmp_path / f"relay{EXTENSION[helper]}"
    path.write_text(RELAY[helper].replace("broken", "quit_sync"))
    host = _quiet(quit_sync, path)
    with pytest.raises(ToolError.ExecutionFailed) as info:
        host.run_source(pick(language, "return tools.relay{name = 'SystemExit'}",
                             "async function main() { return await tools.relay("
                             "{name: 'SystemExit'}); }"), language, "agent")
    assert info.value.fields["tool_name"] == "quit_sync"
    assert info.value.fields["reason"] == "SystemExit: bye"
    with pytest.raises(KeyboardInterrupt):
        host.run_source(pick(language, "return tools.guard{name = 'KeyboardInterrupt'}",
                             "async function main() { return await tools.guard("
                             "{name: 'KeyboardInterrupt'}); }"), language, "agent")


# -- the command line ---------------------------------------------------------------------

CLI_TOOLS = '''
from host import tool


@tool
def lone() -> str:
    """A lone surrogate."""
    return "a\\ud800b"


@tool
def leave(name: str) -> None:
    """Raises a BaseException."""
    raise {"exit": SystemExit, "interrupt": KeyboardInterrupt}[name]("bye")
'''


def _strict(text: str) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"not RFC 8259 JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def _cli(tmp_path: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    tools = tmp_path / "careless.py"
    tools.write_text(CLI_TOOLS)
    return polyspell(*args, "--tools", tools, encoding="utf-8", errors="surrogateescape")


@pytest.mark.parametrize("language", LANGUAGES)
def test_cli_prints_a_lone_surrogate_as_json(language, tmp_path):
    script = tmp_path / f"agent{EXTENSION[language]}"
    script.write_text(pick(language, "return {tools.lone(), args.a}",
                           "async function main(args) { return [await tools.lone(), args.a]; }"))
    expected = {"lua": ["a\ufffdb", "\ufffd"], "javascript": ["a\ud800b", "\ud800"]}[language]
    for flags in ([], ["--json"]):
        out = _cli(tmp_path, "run", script, "--args-json", '{"a": "\\ud800"}', *flags)
        assert out.returncode == 0, out.stderr
        data = _strict(out.stdout)
        assert (data["result"] if flags else data) == expected


@pytest.mark.parametrize("language", LANGUAGES)
def test_cli_a_tools_system_exit_is_a_json_failure(language, tmp_path):
    script = tmp_path / f"agent{EXTENSION[language]}"
    script.write_text(pick(language, "return tools.leave{name = 'exit'}",
                           "async function main() { return await tools.leave({name: 'exit'}); }"))
    out = _cli(tmp_path, "run", script, "--json")
    assert out.returncode == 1, out.stderr
    payload = _strict(out.stdout)
    assert payload["ok"] is False
    assert payload["error"]["kind"] == "execution_failed"
    assert payload["error"]["fields"]["reason"] == "SystemExit: bye"


@pytest.mark.parametrize("language", LANGUAGES)
def test_cli_a_tools_keyboard_interrupt_is_an_interruption(language, tmp_path):
    script = tmp_path / f"agent{EXTENSION[language]}"
    script.write_text(pick(language, "return tools.leave{name = 'interrupt'}",
                           "async function main() { return await tools.leave("
                           "{name: 'interrupt'}); }"))
    out = _cli(tmp_path, "run", script, "--json")
    assert out.returncode == 130
    assert out.stdout == ""
    assert "polyspell: interrupted" in out.stderr
    assert "Traceback" not in out.stderr


if sys.platform == "win32":  # pragma: no cover
    pytestmark = pytest.mark.skip("POSIX only")


# -- results of str, int and float subclasses, and integers too large -------------------

class Color(StrEnum):
    RED = "red"


class Size(IntEnum):
    BIG = 3


class Loud(str):
    def __str__(self) -> str:  # not the data: the text it holds is
        return "FORGED"


@tool
def enums() -> dict:
    """Members of enums and a str subclass, as a tool may well return them."""
    return {"color": Color.RED, "size": Size.BIG, "loud": Loud("quiet"), "list": [Color.RED]}


def test_subclasses_of_str_and_int_cross_as_their_values_in_both_languages(language):
    source = pick(language, "return tools.enums{}",
                  "async function main() { return await tools.enums({}); }")
    assert _quiet(enums).run_source(source, language) == {
        "color": "red", "size": 3, "loud": "quiet", "list": ["red"]}


@tool
def huge(bits: int) -> int:
    """2**bits - 1."""
    return 2 ** bits - 1


@pytest.mark.parametrize("language, fits, too_large", [
    ("lua", 63, 64), ("javascript", 53, 54)])
def test_an_integer_larger_than_the_language_holds_is_a_catchable_refusal(
        language, fits, too_large):
    host = _quiet(huge)
    source = pick(
        language,
        "local ok, e = pcall(tools.huge, {bits = args.bits}) "
        "if ok then return e end return e.code .. '|' .. e.message",
        "async function main(args) { try { return await tools.huge({bits: args.bits}); } "
        "catch (e) { return e.code + '|' + e.message; } }")
    assert host.run_source(source, language, args={"bits": fits}) == 2 ** fits - 1
    refused = host.run_source(source, language, args={"bits": too_large})
    code, message = refused.split("|")
    assert code == "script/cross_engine_communication"  # not rounded, and the run goes on
    assert f"{fits} bits" in message and "as a string" in message
