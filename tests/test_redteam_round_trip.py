"""Red team on issue 17's round-trip changes (flat Lua parameters, Lua call sites read only
when asked for, JavaScript's time limit set again without the clock, small poll texts read
with C ints): every shortcut must give what the long way gave, and keep every limit.

The Lua tests are differential: the same script through the prelude as it is and through
the prelude with the shortcut switched off (no flat parameters; the call site taken at
every call, tests/test_lua_call_sites.py's ``eager``) must give the same requests, results,
errors and frames, on each Lua version (tests/conftest.py: lua_version). The JavaScript
busy loops are driven in the engine itself (a host gives up at its deadline even when the
engine never stops). The xfails are findings older than issue 17 (see their reasons).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import engines.javascript as js_engine
import engines.lua as lua_engine
from bridge import SpellError, ToolError
from bridge.lua import LuaScript
from engines import Finished, Limits, ToolInfo
from host import Host, hooks, tool
from tests.engine_driver import Run, converse, drive, make_engine
from tests.test_lua_call_sites import eager

# the Lua tests on each Lua version (the JavaScript ones run once)
pytestmark = pytest.mark.usefixtures("lua_version")

FLAT = "return flat_call(name, kind, params, walk, flat(params, nil, 1))"


@pytest.fixture(autouse=True)
def fresh_prelude() -> Any:
    lua_engine.prelude_bytecode.cache_clear()
    yield
    lua_engine.prelude_bytecode.cache_clear()


def no_flat_params(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Lua engine made from now on sends every params table the long way."""
    text = lua_engine.PRELUDE
    assert text.count(FLAT) == 1, FLAT
    monkeypatch.setattr(lua_engine, "PRELUDE",
                        text.replace(FLAT, "return long_call(name, 1, params, kind)"))
    lua_engine.prelude_bytecode.cache_clear()


# -- flat parameters: the same requests as the long way --------------------------------

FLAT_CASES = {
    "empty": "return tools.t{}",
    "8 keys": "return tools.t{a=1, b=2, c=3, d=4, e=5, f=6, g=7, h=8}",
    "9 keys": "return tools.t{a=1, b=2, c=3, d=4, e=5, f=6, g=7, h=8, i=9}",
    "8 keys after deletions": "local t = {} for i = 1, 20 do t['k' .. i] = i end\n"
                              "for i = 1, 12 do t['k' .. i] = nil end\nreturn tools.t(t)",
    "key not UTF-8": "return tools.t{['\\xff'] = 1}",
    "value not UTF-8": "return tools.t{a = 'ok', b = '\\xff'}",
    "lone surrogate value": "return tools.t{a = '\\xed\\xa0\\x80'}",
    "lone surrogate key": "return tools.t{['\\xed\\xa0\\x80'] = 1}",
    "past U+10FFFF": "return tools.t{a = '\\u{7FFFFFFF}'}",
    "NUL and accents": "return tools.t{['\\u{FC}'] = '\\0', a = '\\u{E9}'}",
    "NaN and infinities": "return tools.t{a = 0/0, b = 1/0, c = -1/0}",
    "integer bounds": "return tools.t{a = math.mininteger or -2^53, b = math.maxinteger or 2^53}",
    "floats": "return tools.t{a = 1.0, b = -0.0, c = 2^53 + 1, d = 2^63, e = 0.1}",
    "string keys like numbers": "return tools.t{['1'] = 1, [''] = 2}",
    "integer key": "return tools.t{[1] = 1}",
    "mixed keys": "return tools.t{a = 1, [1] = 2}",
    "float key": "return tools.t{[1.5] = 1}",
    "boolean key": "return tools.t{[true] = 1}",
    "function value": "return tools.t{a = print}",
    "thread value": "return tools.t{a = coroutine.create(print)}",
    "nested": "return tools.t{a = {1, 2}}",
    "__index and __pairs": "return tools.t(setmetatable({}, {__index = function() return 1 end,\n"
                           "  __pairs = function() return next, {x = 1} end}))",
    "__len and __newindex": "return tools.t(setmetatable({a = 1}, {__len = function() return 5 end,"
                            "\n  __newindex = function() end}))",
    "inherited key": "return tools.t(setmetatable({a = 1}, {__index = {b = 2}}))",
    "two tables": "return tools.t({a = 1}, {b = 2})",
    "table and nil": "return tools.t({a = 1}, nil)",
    "nil": "return tools.t(nil)",
    "a string": "return tools.t('x')",
    "tools.call": "return tools.call('t', {a = 1, b = true, c = false})",
    "pcall": "local ok, r = pcall(tools.t, {a = 'x'})\nreturn {ok, r}",
    "in a coroutine": "return coroutine.wrap(function() return tools.t{a = 1, b = 'two'} end)()",
    "large, shared": "local s = string.rep('x', 1e6)\n"
                     "return #tools.t{a = s, b = s, c = s, d = s}.a",
    "over the data budget": "local s = string.rep('x', 9e6)\nreturn tools.t{a = s, b = s,"
                            " c = s, d = s, e = s, f = s, g = s, h = s}",
    "over the budget, caught": "local s = string.rep('x', 9e6)\n"
                               "local t = {a = s, b = s, c = s, d = s, e = s, f = s, g = s,"
                               " h = s}\n"
                               "local ok, e = pcall(tools.t, t)\nreturn {ok, e}",
    "over the budget by a 9th key": "local s = string.rep('x', 9e6)\n"
                                    "return tools.t{a = s, b = s, c = s, d = s, e = s, f = s,"
                                    " g = s, h = s, i = 1}",
    "many calls": "local n = 0\nfor i = 1, 300 do n = n + tools.t{i = i, s = 'y'}.i end\nreturn n",
}


def requests_of(source: str) -> Any:
    """What a run of ``source`` did: its end, and each request as the host got it."""
    run = drive("lua", source, tools={"t": lambda params: params}, memory_mb=64)
    step = run.step
    end = (repr(step.result) if hasattr(step, "result")
           else (step.error.code, step.error.message))
    return end, [(repr(r.params), r.problem, r.kind,
                  [(f.file, f.line, f.function) for f in r.frames]) for r in run.requests]


@pytest.mark.parametrize("source", FLAT_CASES.values(), ids=FLAT_CASES.keys())
def test_flat_parameters_reach_the_host_as_the_long_way_gives_them(
        source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fast = requests_of(source)
    no_flat_params(monkeypatch)
    assert fast == requests_of(source)


def test_flat_parameters_keep_their_types_and_refuse_what_the_long_way_refuses() -> None:
    """The differential above, pinned: what reaches a tool (or why nothing does)."""
    end, requests = requests_of("return tools.t{s = 'x', i = 3, f = 0.5, b = false}")
    assert end == repr({"b": False, "f": 0.5, "i": 3, "s": "x"})
    assert requests[0][0] == repr({"b": False, "f": 0.5, "i": 3, "s": "x"})
    _, requests = requests_of("local ok = pcall(tools.t, {a = '\\xff'})\nreturn ok")
    assert requests[0][1] is not None and requests[0][0] == "None"  # a problem, no params
    _, requests = requests_of("local ok = pcall(tools.t, {[1] = 1, a = 2})\nreturn ok")
    assert requests[0][1] is not None
    end, _ = requests_of(FLAT_CASES["over the budget, caught"])
    assert end[0] == "resource/memory_exhaustion"  # the budget stops the run: no catching it


# -- call sites read when asked: the same frames as at every call ----------------------


@tool
def fails(n: int = 0) -> str:
    """Always fails."""
    raise ToolError.NotFound(tool_name=f"entry {n}")


@tool
def ok(n: int = 0) -> int:
    """Answers its n."""
    return n


def outcome(source: str, **options: Any) -> Any:
    host = Host([fails, ok], timeout=10, on_output=lambda line: None, **options)
    try:
        result = host.run_source(source, "lua", "agent.lua")
    except SpellError as err:
        return ("raised", err.code, str(err),
                [(f.language, f.file, f.line, f.function) for f in err.frames])
    return ("returned", result)


CAUGHT = "\nreturn {ok, e.kind, e.traceback}"
FAILED_SITES = {
    "__index metamethod": "local t = setmetatable({}, {__index = function(_, k)\n"
                          "  return tools.fails{n = 1}\nend})\nlocal x = t.foo\nreturn x",
    "generic for iterator": "for x in function() local r = tools.fails{n = 2} return r end do\n"
                            "end",
    "coroutine.resume": "local co = coroutine.create(function()\n  local r = tools.fails{n = 3}\n"
                        "  return r\nend)\nlocal ok, e = coroutine.resume(co)" + CAUGHT,
    "pcall in wrap in wrap": "local f = coroutine.wrap(function()\n"
                             "  local g = coroutine.wrap(function()\n"
                             "    local ok, e = pcall(tools.fails, {n = 4})\n"
                             "    return {ok, e.kind, e.traceback}\n  end)\n"
                             "  local r = g()\n  return r\nend)\nlocal r = f()\nreturn r",
    "uncaught in wrap in wrap": "local f = coroutine.wrap(function()\n"
                                "  local g = coroutine.wrap(function()\n"
                                "    local r = tools.fails{n = 5}\n    return r\n  end)\n"
                                "  local r = g()\n  return r\nend)\nlocal r = f()\nreturn r",
    "tail call in a wrapped pcall": "local ok, e = pcall(coroutine.wrap(function()\n"
                                    "  return tools.fails{n = 6}\nend))" + CAUGHT,
    "xpcall handler reads it": "local ok, e = xpcall(function()\n"
                               "  local r = tools.fails{n = 7}\n  return r\n"
                               "end, function(e) return e end)" + CAUGHT,
    "sort comparator": "table.sort({3, 1, 2}, function(a, b)\n  tools.fails{n = 8}\n"
                       "  return a < b\nend)",
    "gsub callback": "local s = string.gsub('ab', '.', function(c)\n"
                     "  local r = tools.fails{n = 9}\n  return r\nend)\nreturn s",
    "tools.call, 9 keys": "local x = 1\nlocal r = tools.call('fails', {n = 1, a = 1, b = 2,"
                          " c = 3, d = 4, e = 5, f = 6, g = 7, h = 8})\nreturn r",
    "a hook's own call fails": "hooks.before_tool_call(function(ctx)\n"
                               "  local ok, e = pcall(tools.fails, {n = 10})\n"
                               "  seen = e.traceback\nend)\n"
                               "local r = tools.ok{n = 1}\nreturn {r, seen}",
    "a hook's own call, uncaught": "hooks.before_tool_call(function(ctx)\n"
                                   "  if ctx.tool == 'ok' then tools.fails{n = 11} end\nend)\n"
                                   "local x = 1\nlocal r = tools.ok{n = 1}\nreturn r",
    "an error in a hook": "hooks.after_tool_call(function(ctx)\n"
                          "  error('hook broke')\nend)\nlocal x = 1\n"
                          "local r = tools.fails{n = 12}\nreturn r",
    "after hook, a coroutine": "hooks.after_tool_call(function(ctx) end)\n"
                               "local r = coroutine.wrap(function()\n"
                               "  local ok, e = pcall(tools.fails, {n = 13})\n"
                               "  return {ok, e.kind, e.traceback}\nend)()\nreturn r",
    "recovery.retry": "local ok, e = pcall(recovery.retry, function()\n"
                      "  return tools.fails{n = 14}\nend, {attempts = 2, backoff = 'fixed',"
                      " initial = 0.01, jitter = 0})" + CAUGHT,
    "past MAX_LEVELS, caught": "local function f(n)\n"
                               "  if n == 0 then local r = tools.fails{n = 16} return r end\n"
                               "  local r = f(n - 1)\n  return r\nend\n"
                               "local ok, e = pcall(f, 1200)" + CAUGHT,
    "past MAX_LEVELS, uncaught": "local function f(n)\n"
                                 "  if n == 0 then local r = tools.fails{n = 17} return r end\n"
                                 "  local r = f(n - 1)\n  return r\nend\nreturn f(1100)",
    "on_cancel-free deep stack": "local function f(n)\n"
                                 "  if n == 0 then local r = tools.fails{n = 15} return r end\n"
                                 "  local r = f(n - 1)\n  return r\nend\n"
                                 "local co = coroutine.wrap(f)\nlocal r = co(30)\nreturn r",
}


def collapsed(result: Any) -> Any:
    """``outcome``'s result with runs of the same frame counted once."""
    if result[0] != "raised":
        return result
    frames = [f for i, f in enumerate(result[3]) if i == 0 or f != result[3][i - 1]]
    return (*result[:3], frames)


@pytest.mark.parametrize("source", FAILED_SITES.values(), ids=FAILED_SITES.keys())
def test_a_failed_call_names_the_same_lines_as_when_every_call_took_its_site(
        source: str, monkeypatch: pytest.MonkeyPatch, lua_version: str) -> None:
    lazy = outcome(source)
    eager(monkeypatch)
    if lua_version == "luajit" and "f(1100)" in source:
        # Past MAX_LEVELS LuaJIT's own traceback is kept, which shows the stack's levels
        # below 12 (counted from its top, whatever level it starts at) before "...": the
        # script's frames start at level 3 in the waiting coroutine (co_yield, call_tool,
        # the tool function; COMPAT.traceback ignores the level given with a coroutine, and
        # LuaScript.frames leaves those out), at 5 when made at the call (COMPAT.traceback
        # and traceback above them too): 2 more frames of the recursion. The same lines.
        assert collapsed(lazy) == collapsed(outcome(source))
        return
    assert lazy == outcome(source)


def test_a_failed_call_in_a_required_module_names_the_module_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "helper.lua").write_text(
        "local M = {}\nfunction M.go(n)\n  local x = n\n  local r = tools.fails{n = n}\n"
        "  return r\nend\nfunction M.caught(n)\n  local ok, e = pcall(tools.fails, {n = n})\n"
        "  return e.traceback\nend\nreturn M\n")
    source = ("local helper = require('helper')\nlocal t = helper.caught(1)\n"
              "local r = helper.go(2)\nreturn {t, r}")
    lazy = outcome(source, libraries=[tmp_path])
    assert lazy[0] == "raised"
    assert [f[1:3] for f in lazy[3][:2]] == [("agent.lua", 3), (str(tmp_path / "helper.lua"), 4)]
    eager(monkeypatch)
    assert lazy == outcome(source, libraries=[tmp_path])


# -- observers, ToolContext and isolation: the site crosses threads and the wire -------

SITE_SCRIPT = """local x = 1
local function go(name)
  local done, r = pcall(tools[name], {n = 1})
  return done
end
local a = go('ok_sync')
local b = coroutine.wrap(function() return go('ok_async') end)()
local c = go('fails_sync')
local d = coroutine.wrap(function()
  local r = go('fails_async')
  return r
end)()
local e = tools.ok_sync{n = 2}
return {a, b, c, d, e}
"""


@tool
def ok_sync(n: int = 0) -> int:
    """Answers n."""
    return n


@tool
async def ok_async(n: int = 0) -> int:
    """Answers n, later."""
    await asyncio.sleep(0)
    return n


@tool
def fails_sync(n: int = 0) -> int:
    """Fails."""
    raise ToolError.NotFound(tool_name=f"sync {n}")


@tool
async def fails_async(n: int = 0) -> int:
    """Fails, later."""
    await asyncio.sleep(0)
    raise ToolError.NotFound(tool_name=f"async {n}")


@pytest.mark.parametrize("isolation", ["thread", "process"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_observers_see_each_calls_own_line_for_sync_and_async_tools(
        isolation: str, mode: str, lua_version: str) -> None:
    if isolation == "process" and lua_version != "5.5":
        pytest.skip("worker processes run their default Lua")
    seen: list[tuple[str, str, int | None]] = []

    @hooks.observer("tool_call_started")
    def started(ctx: Any) -> None:
        seen.append(("started", ctx.tool, ctx.caller.line if ctx.caller else None))

    @hooks.observer("tool_call_finished")
    def finished(ctx: Any) -> None:
        seen.append(("finished", ctx.tool, ctx.caller.line if ctx.caller else None))

    host = Host([ok_sync, ok_async, fails_sync, fails_async], hooks=[started, finished],
                on_output=lambda line: None, isolation=isolation, timeout=20)
    if mode == "sync":
        result = host.run_source(SITE_SCRIPT, "lua", "agent.lua")
    else:
        result = asyncio.run(host.arun_source(SITE_SCRIPT, "lua", "agent.lua"))
    assert result == [True, True, False, False, 2]
    expected = [(point, name, 3) for name in ("ok_sync", "ok_async", "fails_sync", "fails_async")
                for point in ("started", "finished")]
    assert sorted(seen) == sorted([*expected, ("started", "ok_sync", 13),
                                   ("finished", "ok_sync", 13)])


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_a_failed_calls_frames_cross_the_wire(isolation: str, lua_version: str) -> None:
    if isolation == "process" and lua_version != "5.5":
        pytest.skip("worker processes run their default Lua")
    host = Host([fails_async], on_output=lambda line: None, isolation=isolation, timeout=20)
    source = ("local x = 1\nlocal r = coroutine.wrap(function()\n"
              "  local v = tools.fails_async{n = 1}\n  return v\nend)()\nreturn r")
    with pytest.raises(ToolError) as info:
        host.run_source(source, "lua", "agent.lua")
    lines = [f.line for f in info.value.frames if f.file == "agent.lua"]
    assert lines == [5, 3]  # the wrapped function called at `end)()`, the tool at 3


# -- JavaScript: the time limit set again, and small texts read with C ints -------------

JS_BUSY = {
    "after an await": "await tools.t({a: 1});\nfor (;;) {}",
    "after 300 awaits": "for (let i = 0; i < 300; i++) await tools.t({a: i});\nfor (;;) {}",
    "in a then": "tools.t({a: 1}).then(() => { for (;;) {} });\nawait tools.at({a: 2});\nreturn 1;",
    "in a then of an async tool": "const p = tools.at({a: 1});\np.then(() => { for (;;) {} });\n"
                                  "await p;\nawait tools.t({});\nreturn 2;",
    "in a finally": "try { await tools.t({a: 1}); } finally { for (;;) {} }",
    "not awaited": "tools.t({a: 1});\nfor (;;) {}",
    "after a failed call": "try { await tools.bad({}); } catch (e) {}\nfor (;;) {}",
    "only calls": "for (let i = 0; ; i++) await tools.t({a: i});",
}


@tool
def t(a: Any = None) -> Any:
    """Echo."""
    return a


@tool
async def at(a: Any = None) -> Any:
    """Echo, async."""
    return a


@tool
def bad() -> None:
    """Fails."""
    raise ToolError.NotFound(tool_name="bad")


def js_main(body: str) -> str:
    return "async function main() {\n" + body + "\n}\n"


def stopped_by_the_engine(work: Callable[[], Any]) -> Any:
    """What ``work`` (an engine driven on this process's thread) returned: it must return
    by itself, which a busy loop does only if quickjs's own time limit interrupts it (the
    host would give up on such a run at its deadline, leaving its thread spinning)."""
    done: list[Any] = []
    thread = threading.Thread(target=lambda: done.append(work()), daemon=True)
    thread.start()
    thread.join(20.0)
    assert not thread.is_alive(), "the busy loop was never interrupted: no time limit set"
    return done[0]


def is_time_limit(step: Any) -> bool:
    err = step.error
    return (err.code, err.fields.get("resource_type")) == ("script/resource_exhaustion", "time")


@pytest.mark.parametrize("body", JS_BUSY.values(), ids=JS_BUSY.keys())
def test_a_javascript_busy_loop_after_tool_calls_is_stopped_at_its_limit(
        body: str, lua_version: str) -> None:
    if lua_version != "5.5":
        pytest.skip("JavaScript: once")

    def bad_tool(params: Any) -> Any:
        raise ToolError.NotFound(tool_name="bad")

    tools = {"t": lambda params: params, "at": lambda params: params, "bad": bad_tool}
    run = stopped_by_the_engine(lambda: drive("javascript", js_main(body), tools=tools,
                                              timeout=0.5))
    assert is_time_limit(run.step), run.step
    # and through a host, which says so as a time limit
    host = Host([t, at, bad], timeout=0.5, on_output=lambda line: None)
    with pytest.raises(SpellError) as info:
        host.run_source(js_main(body), "javascript", "agent.js")
    assert info.value.code == "script/resource_exhaustion", info.value


def test_a_javascript_tools_file_busy_after_a_call_is_stopped(lua_version: str) -> None:
    """call() with the deadline it had keeps the limit it had: the busy loop after the
    tools file's own tool call still ends at it."""
    if lua_version != "5.5":
        pytest.skip("JavaScript: once")
    source = ("exports.spin = async function spin(p) {\n  await tools.t({a: p.n});\n"
              "  if (p.n === 50) { for (;;) {} }\n  return p.n;\n};\n")

    def calls() -> Any:
        engine = make_engine("javascript", limits=Limits(timeout=0.5))
        deadline = time.monotonic() + 0.5
        step = engine.load(source, "lib.js", [ToolInfo("t")], deadline)
        assert isinstance(step, Finished), step
        for n in range(1, 101):
            step = engine.call("spin", {"n": n}, deadline)
            run = converse(engine, step, {"t": lambda params: params}, deadline, Run(step))
            if not isinstance(run.step, Finished):
                return n, run.step
            assert run.step.result == n
        return None, None

    n, step = stopped_by_the_engine(calls)
    assert n == 50 and is_time_limit(step), (n, step)


# an InternalError("interrupted") the script made (InternalError itself refuses to)
FORGE = ("const e = new Error('interrupted');\n"
         "Object.setPrototypeOf(e, InternalError.prototype);\nthrow e;")
FORGED_AFTER_CALLS = {
    "after a call": "await tools.t({a: 1});\n" + FORGE,
    "after many calls": "for (let i = 0; i < 200; i++) await tools.t({a: i});\n" + FORGE,
    "in a then": "await tools.t({a: 1}).then(() => {\n" + FORGE + "\n});",
    "after some work": "await tools.t({a: 1});\nlet x = 0;\n"
                       "for (let i = 0; i < 3e6; i++) x += i;\n" + FORGE,
    "a caught engine error relabelled": "await tools.t({a: 1});\n"
                                        "try { (function f() { f(); })(); } catch (e) {\n"
                                        "  e.message = 'interrupted';\n  throw e;\n}",
}


@pytest.mark.parametrize("body", FORGED_AFTER_CALLS.values(), ids=FORGED_AFTER_CALLS.keys())
def test_a_forged_interrupt_after_tool_calls_is_not_a_time_limit(body: str,
                                                                  lua_version: str) -> None:
    if lua_version != "5.5":
        pytest.skip("JavaScript: once")
    host = Host([t], timeout=5.0, on_output=lambda line: None)
    with pytest.raises(SpellError) as info:
        host.run_source(js_main(body), "javascript", "agent.js")
    err = info.value
    assert err.category != "resource" and err.code != "script/resource_exhaustion", err
    assert "interrupted" in str(err)  # the script's own error, as it made it


NUMBERS = [2**53 - 1, 2**53, 2**53 + 2, 10**15, 10**15 - 1, 9999999999999999,
           1000000000000000, -(2**53), 123456789012345678, 2**63, -(2**63), 0, -1, 0.5]


def js_numbers() -> list[Any]:
    """Each number made in JS (a literal: a double), through a tool's params and back."""
    got: list[Any] = []

    @tool
    def echo(a: Any = None) -> Any:
        """Echo, keeping what came."""
        got.append(a)
        return a

    host = Host([echo], timeout=10, on_output=lambda line: None)
    seen = []
    for number in NUMBERS:
        got.clear()
        try:
            back = host.run_source(js_main(f"const r = await tools.echo({{a: {number}}});\n"
                                           "return [r, String(r)];"), "javascript", "agent.js")
        except SpellError as err:  # (2**53 itself: see the xfail below)
            back = [err.code]
        seen.append((got[0], type(got[0]), back, [type(v) for v in back]))
    return seen


def test_javascript_ints_of_16_digits_and_past_2_53_cross_as_before(
        lua_version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if lua_version != "5.5":
        pytest.skip("JavaScript: once")
    now = js_numbers()
    for number, (param, kind, _, _) in zip(NUMBERS, now, strict=True):
        if isinstance(number, int) and abs(number) <= 2**53:
            assert (param, kind) == (number, int)  # exact, an int
        else:
            assert param == float(number) and kind is float  # the double JS had
    # as read before: every small text with the Python-level int parser
    monkeypatch.setattr(js_engine, "_LONG_DIGITS", lambda text: True)
    assert now == js_numbers()


@pytest.mark.xfail(strict=True, reason="pre-existing (not issue 17's): a JS number of +-2**53 "
                   "reaches Python as an exact int (engines/javascript.py _MAX_SAFE_INTEGER = "
                   "2**53), but host/data.py lets only ints up to 2**53 - 1 cross to "
                   "JavaScript: echoing the script's own number back fails")
def test_a_javascript_number_of_2_53_can_be_echoed_back(lua_version: str) -> None:
    if lua_version != "5.5":
        pytest.skip("JavaScript: once")
    host = Host([t], timeout=10, on_output=lambda line: None)
    assert host.run_source(js_main("return await tools.t({a: 2 ** 53});"),
                           "javascript", "agent.js") == 2**53


def test_javascript_small_and_large_poll_texts_read_the_same(lua_version: str) -> None:
    """A small text (read with C ints unless it holds 16 digits) and a large one (read in C,
    then again if an int is past 2**53) give the same values."""
    if lua_version != "5.5":
        pytest.skip("JavaScript: once")
    host = Host([t], timeout=10, on_output=lambda line: None)
    values = [2**53 - 1, 10**16, 12345678901234567, 1.5, -(2**60), -(2**53 - 1)]
    small = host.run_source(js_main(f"return await tools.t({{a: {values}}});"),
                            "javascript", "agent.js")
    padded = host.run_source(js_main(f"return (await tools.t({{a: [{values}, "
                                     f"'x'.repeat(4000)]}}))[0];"), "javascript", "agent.js")
    assert small == padded
    assert [type(v) for v in small] == [type(v) for v in padded]
    assert small[0] == 2**53 - 1 and type(small[0]) is int and type(small[1]) is float


@pytest.mark.xfail(strict=True, reason="pre-existing (not issue 17's): host.data.crossing lets "
                   "any int through (not_json_like accepts every int, and the fast return of "
                   "scalars keeps that), so a Lua tools file's math.maxinteger reaches a "
                   "JavaScript agent rounded to a double, where a Python tool's 2**63 - 1 is "
                   "refused (host/data.py _too_large: 'give it as a string')")
def test_a_lua_tools_files_int_past_2_53_is_refused_to_javascript_as_a_python_tools_is(
        tmp_path: Path, lua_version: str) -> None:
    if lua_version == "luajit":
        pytest.skip("LuaJIT has no integers past 2**53")

    @tool
    def py_big() -> int:
        """2**63 - 1 from Python."""
        return 2**63 - 1

    lib = tmp_path / "big.lua"
    lib.write_text("local M = {}\nfunction M.lua_big(p) return math.maxinteger end\nreturn M\n")
    host = Host([lib, py_big], timeout=10, on_output=lambda line: None)
    codes = []
    for name in ("py_big", "lua_big"):
        try:
            host.run_source(js_main(f"return String(await tools.{name}({{}}));"),
                            "javascript", "agent.js")
            codes.append("returned")
        except SpellError as err:
            codes.append(err.code)
    assert codes[0] == "script/cross_engine_communication"
    assert codes[1] == codes[0]


# -- a call site read when asked is made within the script's memory, as at every call ----

# A traceback as large as the script likes: each of 60 levels is named by a 4 MiB key
# (load makes the constant), so the call site's text is 60 x 4 MiB, far past 64 MiB.
HUGE_SITE = """local key = string.rep('x', 4 * 1024 * 1024)
local code = "local t = {}\\n" ..
  "t['" .. key .. "'] = function(n)\\n" ..
  "  if n == 0 then local r = tools.t{} return r end\\n" ..
  "  local r = t['" .. key .. "'](n - 1) return r\\nend\\n" ..
  "return t['" .. key .. "']"
key = nil
local f = load(code)()
code = nil
collectgarbage()
local r = f(60)
return r
"""


def test_a_call_site_read_when_asked_is_made_within_the_scripts_memory(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Made at every call, this traceback ran the script out of its memory at the call; read
    when the host asks, it must not be built past the limit either (with the limit lifted,
    it cost the host's process 1 GB for a 64 MiB run, and the run went on)."""
    texts: list[int] = []
    frames_of = LuaScript.frames

    def measured(self: LuaScript, traceback: str | None) -> list[Any]:
        texts.append(len(traceback or ""))
        return frames_of(self, traceback)

    monkeypatch.setattr(LuaScript, "frames", measured)
    run = drive("lua", HUGE_SITE, tools={"t": lambda params: "ok"}, memory_mb=64, timeout=30)
    assert max(texts, default=0) < 64 * 1024 * 1024
    # as when made at every call: the script ran out of its memory
    assert run.step.error.code == "resource/memory_exhaustion", run.step


def _hooked_keep(params: str, trigger: str) -> list[Any]:
    """What a tool got from a trusted script whose own debug.sethook changes the params
    table to hold a Lua function when the prelude calls a function named ``trigger``."""
    got: list[Any] = []

    @tool
    def keep(a: Any = None, b: Any = None, c: Any = None) -> str:
        """Keeps what it got."""
        got.append(a)
        return "ok"

    source = f"""local params = {params}
debug.sethook(function()
  local name = debug.getinfo(2, "n").name
  if name == "{trigger}" then params.a = {{nested = print}} end
end, "c")
local r = tools.keep(params)
debug.sethook()
return r"""
    host = Host([keep], sandbox="trusted", timeout=10, on_output=lambda line: None)
    try:
        host.run_source(source, "lua", "agent.lua")
    except SpellError:
        pass  # refusing the changed parameters is right too
    return got


def _plain_values(got: list[Any]) -> bool:
    return all(value == 1 or (value.__class__ in (int, float, str, bool, dict, list)
                              and "Lua" not in repr(value)) for value in got)


@pytest.mark.parametrize("trigger", ["flat", "flat_call", "called", "text", "traceback"])
def test_a_trusted_scripts_debug_hook_cannot_change_flat_params_after_their_check(
        trigger: str) -> None:
    # flat parameters are read and checked in one walk: what leaves is what was checked
    assert _plain_values(_hooked_keep("{a = 1, b = 2}", trigger))


@pytest.mark.xfail(strict=True, reason="pre-existing, trusted sandbox only: a script's own "
                   "debug.sethook runs between the prelude's check of parameters that are not "
                   "flat (check_table) and the host's reading of the table (_convert), so it "
                   "can change them: a tool got a live Lua table (a dict holding a Lua "
                   "function before)")
def test_a_trusted_scripts_debug_hook_cannot_hand_a_tool_live_lua_objects() -> None:
    assert _plain_values(_hooked_keep("{a = 1, b = 2, c = {1}}", "text"))


MONITORED = """local x = 1
local co = coroutine.wrap(function()
  local done, e = pcall(tools.fails, {n = 1})
  return done
end)
local r = co()
local done = pcall(tools.fails, {n = 2, a = 'x'})
return r
"""


def monitored_sites(path: Path) -> list[Any]:
    from host.monitor import Monitor

    monitor = Monitor(path)
    host = Host([fails], monitor=monitor, on_output=lambda line: None, timeout=10)
    assert host.run_source(MONITORED, "lua", "agent.lua") is False
    monitor.flush()
    sites = sorted((r["line"], r["file"], r["function"], r["code"], r["handled"])
                   for r in monitor.records())
    monitor.close()
    return sites


def test_a_monitor_records_each_caught_failure_at_its_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lazy = monitored_sites(tmp_path / "lazy.db")
    assert [r[:2] for r in lazy] == [(3, "agent.lua"), (7, "agent.lua")]
    eager(monkeypatch)
    assert lazy == monitored_sites(tmp_path / "eager.db")
