"""The runner's fused path for a plain sync tool (``ScriptRun._plain``) answers exactly as
the pipeline does: the same results, and the same errors (code, message, fields, frames,
cause chain, context) for everything the pipeline refuses, as a script sees them and as
the host does. A host with a pass-through layer of its own takes the pipeline for the
same tools; the two are compared on the real engines, in both languages."""

from __future__ import annotations

import math
from typing import Annotated, Any

import anyio
import pytest
from pydantic import AfterValidator, BaseModel, field_validator

from bridge import SpellError
from bridge.frames import is_internal
from host import Host, ToolContext, tool
from tests.conftest import pick


@tool
def add(a: int, b: int) -> int:
    """Adds."""
    return a + b


@tool
def explode(reason: str) -> None:
    """Fails, from a cause."""
    try:
        raise KeyError(reason)
    except KeyError as exc:
        raise ValueError(f"exploded: {reason}") from exc


@tool
def give(what: str) -> Any:
    """Returns something a script may not be able to hold."""
    return {"set": {1, 2}, "huge": 2**80, "nan": math.nan, "cycle": _cycle(),
            "deep": _deep(200), "key": {1: "x"}, "fine": {"a": [1, "b", None]}}[what]


class Odd(BaseModel):
    """A model whose validator refuses (a ValueError: a validation error) or breaks (any
    other exception, which pydantic lets through)."""

    n: int

    @field_validator("n")
    @classmethod
    def odd(cls, n: int) -> int:
        if n == 0:
            raise RuntimeError("zero breaks the validator")
        if n % 2 == 0:
            raise ValueError("n must be odd")
        return n


@tool
def odd(params: Odd) -> int:
    """Takes a model (validated, then handed over whole)."""
    return params.n


def _odd(n: int) -> int:
    return Odd.odd(n)


@tool
def odd_kw(n: Annotated[int, AfterValidator(_odd)]) -> int:
    """Takes keyword arguments, one with the same validator."""
    return n


@tool
def halve(n: int, items: list[int]) -> int:
    """Has a list field (an empty Lua table arrives as {})."""
    return n // 2 + len(items)


def _cycle() -> list[Any]:
    items: list[Any] = []
    items.append(items)
    return items


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def passthrough(call: Any, next: Any) -> Any:
    """A host layer that changes nothing: its tools take the pipeline."""
    return next(call)


def fused() -> Host:
    return Host([add, explode, give, odd, odd_kw, halve], on_output=lambda line: None)


def pipelined() -> Host:
    return Host([add, explode, give, odd, odd_kw, halve], on_output=lambda line: None,
                layers=[passthrough])


CALLS = [  # (tool, Lua params, JS params)
    ("add", "{a = 1, b = 2}", "{a: 1, b: 2}"),
    ("add", "{a = 'x', b = 2}", "{a: 'x', b: 2}"),
    ("add", "{a = 1}", "{a: 1}"),
    ("add", "{a = 1, b = 2, c = 3}", "{a: 1, b: 2, c: 3}"),
    ("explode", "{reason = 'no'}", "{reason: 'no'}"),
    *[(name, f"{{n = {n}}}", f"{{n: {n}}}") for n in (3, 4, 0, "'x'")
      for name in ("odd", "odd_kw")],
    ("halve", "{n = 8, items = {}}", "{n: 8, items: []}"),
    ("halve", "{n = 8, items = {1, 2}}", "{n: 8, items: [1, 2]}"),
    ("halve", "{n = 8, items = 'x'}", "{n: 8, items: 'x'}"),
    ("halve", "{n = 8}", "{n: 8}"),
    *[("give", f"{{what = '{what}'}}", f"{{what: '{what}'}}")
      for what in ("set", "huge", "nan", "cycle", "deep", "key", "fine")],
]


def _uncaught(language: str, name: str, lua: str, js: str) -> str:
    return pick(language, f"\n\nlocal r = tools.{name}({lua})\nreturn r\n",
                f"\n\nasync function main() {{\n  return await tools.{name}({js});\n}}\n")


def _caught(language: str, name: str, lua: str, js: str) -> str:
    return pick(
        language,
        f"local ok, e = pcall(tools.{name}, {lua})\n"
        "if ok then return {ok = true, value = e} end\n"
        "return {ok = false, code = e.code, name = e.name, message = e.message,\n"
        "        cause = e.cause and e.cause.message, text = tostring(e),\n"
        "        retryable = e.retryable}\n",
        f"async function main() {{\n  try {{\n"
        f"    return {{ok: true, value: await tools.{name}({js})}};\n"
        "  } catch (e) {\n    return {ok: false, code: e.code, name: e.name, message: e.message,\n"
        "            cause: e.cause && e.cause.message, text: String(e),\n"
        "            retryable: e.retryable};\n  }\n}\n")


def _seen(err: SpellError) -> dict[str, Any]:
    """What the host sees of an error, apart from ids, times and polyspell's own frames
    (and the pass-through layer's, which the fused path has not)."""
    context = err.context
    return {
        "chain": [(e.code, e.message, e.fields if e is not err else
                   {k: v for k, v in e.fields.items() if k != "execution_time"},
                   [(f.language, f.file, f.line, f.function, f.source)
                    for f in e.frames if not is_internal(f) and f.function != "passthrough"])
                  for e in err.chain()],
        "component": context.component.model_dump(),
        "operation": context.operation,
        "call_stack": [(s.function_name, s.file_location and s.file_location.model_dump(),
                        s.parameters) for s in context.execution_trace.call_stack],
        "correlation": context.correlation_id is not None,
    }


@pytest.mark.parametrize(("name", "lua", "js"), CALLS)
def test_a_script_sees_the_same_answer_on_both_paths(language: str, name: str, lua: str,
                                                       js: str) -> None:
    source = _caught(language, name, lua, js)
    answers = [repr(host.run_source(source, language, "calls"))  # repr: nan is nan
               for host in (fused(), pipelined())]
    assert answers[0] == answers[1]


@pytest.mark.parametrize(("name", "lua", "js"), CALLS[1:-1])
def test_the_host_sees_the_same_error_on_both_paths(language: str, name: str, lua: str,
                                                     js: str) -> None:
    source = _uncaught(language, name, lua, js)
    errors = []
    for host in (fused(), pipelined()):
        try:  # (Lua holds NaN: that call succeeds, on both paths)
            errors.append(repr(host.run_source(source, language,
                                               "calls" + pick(language, ".lua", ".js"))))
        except SpellError as err:
            errors.append(_seen(err))
    assert errors[0] == errors[1]
    if isinstance(errors[0], str):
        return
    # and it points at the script's line of the call, the tool's frames after
    line = pick(language, "3", "4")
    frames = errors[0]["chain"][0][3]
    assert frames[0][1:3] == ("calls" + pick(language, ".lua", ".js"), int(line)), frames
    # (a JS result without a JSON form fails in the engine, past the boundary: no step)
    for step in errors[0]["call_stack"]:
        assert step[1]["line"] == int(line)


def test_a_tool_error_keeps_its_context_and_frames_when_read_late(language: str) -> None:
    """The context a boundary gives an error is made when it is first read (after the run
    here), and a cause's frames too: both as they were when the call failed."""
    source = _uncaught(language, "explode", "{reason = 'late'}", "{reason: 'late'}")
    with pytest.raises(SpellError) as caught:
        fused().run_source(source, language, "late" + pick(language, ".lua", ".js"))
    err = caught.value
    assert err.code == "tool/execution_failed"
    assert err.context.component.model_dump() == {"type": "tool", "tool_name": "explode",
                                                  "category": ""}
    assert err.context.operation == "tool call from late" + pick(language, ".lua", ".js")
    cause = err.cause
    assert cause is not None and cause.message.endswith("exploded: late")
    raised = [f for f in cause.frames if f.function == "explode"]
    assert raised and raised[-1].source == 'raise ValueError(f"exploded: {reason}") from exc'
    assert err.context.error_id == err.context.error_id  # made once


def test_an_error_read_twice_has_one_context_and_later_updates_apply_in_order() -> None:
    """SpellError.update_context: updates wait for the next read, in order; setting the
    context drops those not yet applied (they were to the context it replaces)."""
    from bridge import ToolError

    err = ToolError.Timeout(tool_name="t", duration=1.0)
    err.update_context(lambda c: c.model_copy(update={"operation": "one"}))
    err.update_context(lambda c: c.model_copy(update={"operation": c.operation + " two"}))
    assert err.context_made is not None and err.context.operation == "one two"
    first = err.context
    assert err.context is first
    err.update_context(lambda c: c.model_copy(update={"operation": "three"}))
    err.context = first.model_copy(update={"operation": "set"})
    assert err.context.operation == "set"
    fresh = ToolError.Timeout(tool_name="t", duration=1.0)
    assert fresh.context_made is None  # a look that makes none


def test_a_tool_on_a_narrower_deadline_or_with_context_takes_the_pipeline(
        language: str) -> None:
    """A tool with a timeout of its own, or a ToolContext parameter, is never fused."""

    @tool(timeout=5)
    def slow_add(a: int, b: int) -> int:
        return a + b

    @tool
    def where(ctx: ToolContext) -> list[Any]:
        return [ctx.tool, ctx.caller.line]

    host = Host([slow_add, where], on_output=lambda line: None)
    source = pick(language, "\nreturn {tools.slow_add{a = 1, b = 2}, tools.where{}}",
                  "\nasync function main() {\n  return [await tools.slow_add({a: 1, b: 2}),\n"
                  "          await tools.where({})];\n}")
    run = host.new_run_source(source, language, "w")
    assert anyio.run(run.execute) == [3, ["where", 2 if language == "lua" else 4]]
    assert run._plain_tools == {}
    run = fused().new_run_source(_caught(language, "add", "{a = 1, b = 2}", "{a: 1, b: 2}"),
                                 language, "f")
    assert anyio.run(run.execute) == {"ok": True, "value": 3}
    assert list(run._plain_tools) == ["add"]


@tool
def types_of(values: Any) -> list[str]:
    """The Python types of what a script passed, and the values as text."""
    return [f"{type(v).__name__} {v!r}" for v in values]


def test_js_integers_beyond_2_53_still_arrive_as_the_doubles_they_are() -> None:
    """Requests are read with native int parsing only when the prelude saw no number
    beyond 2**53 in them; one that has such a number (nested too) is read as before."""
    host = Host([types_of], on_output=lambda line: None)
    source = """
async function main() {
  const small = await tools.types_of({values: [1, -2, 2 ** 53, -(2 ** 53), 0.5]});
  const large = await tools.types_of({values: [2 ** 53 + 2, [25261409972196210], 7]});
  const again = await tools.types_of({values: [3]});
  return [small, large, again];
}
"""
    small, large, again = host.run_source(source, "javascript", "big.js")
    assert small == ["int 1", "int -2", f"int {2**53}", f"int {-(2**53)}", "float 0.5"]
    assert large[0] == f"float {float(2**53 + 2)!r}" and large[2] == "int 7"
    assert again == ["int 3"]
    assert host.run_source("""
async function main() {
  return await tools.types_of({values: [{toJSON() { return 2 ** 60; }}]});
}""", "javascript", "tojson.js") == [f"float {float(2**60)!r}"]


# A tools file's function whose pipeline is only the boundary is fused too
# (``ScriptRun._plain_call``): the same answers and errors as through the pipeline.
FILE_LUA = """
local M = {}
function M.l_add(p) return p.a + p.b end
function M.l_throw(p) error("lua no " .. tostring(p.a)) end
function M.l_nan(p) return 0 / 0 end
function M.l_print(p) print("lua says", p.a) return {p.a, "x"} end
function M.l_calls(p) return tools.add{a = p.a, b = 1} + tools.j_add{a = 1, b = 1} end
function M.l_fails(p) return tools.explode{reason = "from lua"} end
function M.l_table(p) return {n = p.a, list = {1, 2}} end
return M
"""
FILE_JS = """
exports.j_add = function (p) { return p.a + p.b; };
exports.j_throw = function (p) { throw new RangeError("js no " + p.a); };
exports.j_print = function (p) { console.log("js says", p.a); return [p.a, "x"]; };
exports.j_calls = async function (p) { return (await tools.add({a: p.a, b: 1})) +
  (await tools.l_add({a: 1, b: 1})); };
exports.j_fails = async function (p) { return await tools.explode({reason: "from js"}); };
exports.j_later = function (p) { Promise.resolve().then(() => console.log("later")); return 5; };
exports.j_object = function (p) { return {n: p.a, list: [1, 2]}; };
"""
FILE_CALLS = [(name, "{a = 2, b = 3}", "{a: 2, b: 3}") for name in (
    "l_add", "l_throw", "l_nan", "l_print", "l_calls", "l_fails", "l_table",
    "j_add", "j_throw", "j_print", "j_calls", "j_fails", "j_later", "j_object")] + [
    ("l_add", "{a = 2}", "{a: 2}"), ("j_add", "{a = 'x', b = {}}", "{a: 'x', b: {}}"),
    ("j_add", "{a = 2, b = function() end}", "{a: 2, b: () => 1}")]


def _files_hosts(folder: Any, printed: tuple[list[str], list[str]] = ([], [])
                 ) -> tuple[Host, Host]:
    """A host that fuses the files' calls, and one that takes the pipeline (``printed``:
    where each one's output lines go)."""
    (folder / "lib.lua").write_text(FILE_LUA)
    (folder / "lib.js").write_text(FILE_JS)
    tools = [add, explode, folder / "lib.lua", folder / "lib.js"]
    return (Host(tools, on_output=printed[0].append),
            Host(tools, on_output=printed[1].append, layers=[passthrough]))


@pytest.mark.parametrize(("name", "lua", "js"), FILE_CALLS)
def test_a_tools_file_function_answers_alike_on_both_paths(
        language: str, name: str, lua: str, js: str, tmp_path: Any) -> None:
    printed: tuple[list[str], list[str]] = ([], [])
    hosts = _files_hosts(tmp_path, printed)
    answers = [repr(host.run_source(_caught(language, name, lua, js), language, "calls"))
               for host in hosts]
    assert answers[0] == answers[1]
    assert printed[0] == printed[1]
    if name in ("l_print", "j_print", "j_later"):
        assert printed[0], printed
    errors = []
    for host in hosts:
        try:
            errors.append(repr(host.run_source(_uncaught(language, name, lua, js), language,
                                               "calls" + pick(language, ".lua", ".js"))))
        except SpellError as err:
            errors.append(_seen(err))
    assert errors[0] == errors[1]


def test_a_tools_file_function_is_fused_only_without_layers(language: str,
                                                            tmp_path: Any) -> None:
    fused_host, layered = _files_hosts(tmp_path)
    source = _caught(language, "j_calls", "{a = 2}", "{a: 2}")
    seen = []
    for host in (fused_host, layered):
        run = host.new_run_source(source, language, "f")
        seen.append(anyio.run(run.execute))
        seen.append(sorted(run._plain_functions))
    assert seen == [{"ok": True, "value": 5}, ["j_calls", "l_add"],
                    {"ok": True, "value": 5}, []]
