"""The Lua sandbox against a hostile script: no finalizer, no hook-less code, no shared state.

Lua runs ``__gc`` finalizers with hooks off, so a finalizer that loops can never be stopped;
an object is marked for finalization when ``setmetatable`` gives it a metatable that has a
``__gc`` field at that moment. The sandbox's ``setmetatable`` refuses such metatables; these
tests make sure no other way leads there (the metatables the prelude itself uses, the string
metatable it resets between runs) and that every other way of running code (``__close``,
``__eq``...) stays under the time limit.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from engines.base import Finished, Limits
from engines.lua import LuaEngine
from tests.conftest import NO_CLOSE_ON_LUAJIT, nil_indexed
from tests.test_engine_lua import drive

# every test on each Lua version (tests/conftest.py: lua_version)
pytestmark = pytest.mark.usefixtures("lua_version")

ROOT = Path(__file__).resolve().parent.parent
RUN = """
import sys
from host import Host
try:
    # (LuaJIT runs only in worker processes)
    isolation = "process" if sys.argv[2] == "luajit" else "thread"
    print(Host(timeout=1, on_output=lambda line: None, lua_version=sys.argv[2],
               isolation=isolation).run_source(sys.argv[1], "lua", "gc.lua"))
except Exception as exc:
    print(exc.code)
"""
LOOP = "function() while true do end end"
# Each gets hold of a metatable the prelude uses and gives it a finalizer that never ends.
FINALIZERS = {
    "error_table": f"""
local mt = getmetatable(errors.AgentError{{kind = "x"}})
mt.__gc = {LOOP}
for i = 1, 100 do pcall(error, errors.AgentError{{kind = "x"}}) end
collectgarbage()""",
    "tool_error": f"""
local ok, e = pcall(tools.missing, {{}})
getmetatable(e).__gc = {LOOP}
for i = 1, 20 do pcall(tools.missing, {{}}) end
collectgarbage()""",
    "tools": f"""
local mt = getmetatable(tools)
mt.__gc = {LOOP}
setmetatable({{}}, mt)
collectgarbage()""",
    "stop_value": f"""
local x <close> = setmetatable({{}}, {{__close = function(_, e)
  if type(e) == "table" then getmetatable(e).__gc = {LOOP} end
end}})
while true do end""",
}


@pytest.mark.parametrize("case", list(FINALIZERS))
def test_no_finalizer_gets_in_through_a_metatable_of_the_prelude(case: str,
                                                                   lua_version: str) -> None:
    if lua_version == "luajit" and "<close>" in FINALIZERS[case]:
        pytest.skip(NO_CLOSE_ON_LUAJIT)
    out = subprocess.run([sys.executable, "-c", RUN, FINALIZERS[case], lua_version],
                         capture_output=True,
                         text=True, timeout=20, cwd=ROOT)
    assert out.stdout.split()[-1] in (
        "script/lua", "script/resource_exhaustion", "security/script_safety_violation"), out


def test_the_metatables_of_the_prelude_are_protected() -> None:
    source = """
local ok, e = pcall(tools.missing, {})
local mine = errors.AgentError{kind = "x"}
local denied = pcall(setmetatable, mine, {})
return {getmetatable(mine), getmetatable(e), getmetatable(e.cause or e),
        getmetatable(tools), denied, tostring(mine):match("^agent/x") ~= nil}
"""
    assert drive(source).result == [False, False, False, False, False, True]


def test_a_metatable_that_gets_its_finalizer_later_finalizes_nothing() -> None:
    source = """
ran = false
local mt = {}
local t = setmetatable({}, mt)
mt.__gc = function() ran = true end
t = nil
collectgarbage() collectgarbage()
local ok = pcall(setmetatable, {}, {__gc = false})
return {ran, ok}
"""
    assert drive(source).result == [False, False]


def test_no_function_or_coroutine_has_a_metatable_to_change() -> None:
    source = "return {getmetatable(print) == nil, getmetatable(coroutine.create(print)) == nil," \
             " getmetatable(1) == nil, getmetatable(nil) == nil, getmetatable(true) == nil}"
    assert drive(source).result == [True] * 5


@pytest.mark.parametrize("source", [
    f"local x <close> = setmetatable({{}}, {{__close = {LOOP}}})",
    f"local x <close> = setmetatable({{}}, {{__close = {LOOP}}})\nwhile true do end",
    f"local a = setmetatable({{}}, {{__eq = {LOOP}}})\nlocal b = setmetatable({{}}, "
    f"getmetatable(a))\nreturn a == b",
    f"error(setmetatable({{}}, {{__tostring = {LOOP}}}))",
])
def test_script_code_in_metamethods_stays_under_the_time_limit(source: str,
                                                               lua_version: str) -> None:
    if lua_version == "luajit" and "<close>" in source:
        pytest.skip(NO_CLOSE_ON_LUAJIT)
    started = time.monotonic()
    error = drive(source, timeout=0.3).error
    assert time.monotonic() - started < 5
    assert error.code == "script/resource_exhaustion"


def test_a_script_value_cannot_pose_as_the_prelude_s_own() -> None:
    source = """
local fake = setmetatable({}, {__eq = function() return true end})
local co = coroutine.wrap(function() coroutine.yield(fake, "echo", nil, "tb", {f = print}) end)
local ok = pcall(error, fake)  -- not taken for the value that stops a run
return {rawequal(co(), fake), ok}
"""
    run = drive(source, tools={"echo": lambda params: params})
    assert run.requests == [] and run.result == [True, False]


def test_the_string_metatable_is_lua_s_own_and_is_reset_for_the_next_run() -> None:
    engine = LuaEngine(limits=Limits(timeout=2))
    first = engine.start(
        "local mt = getmetatable('')\n"
        "assert(mt.__index == string and ('x'):upper() == 'X')\n"
        "mt.__index = nil mt.shout = 1\n"
        f"setmetatable(mt, {{__newindex = {LOOP}, __index = {LOOP}}}) return 1",
        "a.lua", None, [], time.monotonic() + 2)
    assert first == Finished(1)
    started = time.monotonic()
    second = engine.start("return {('x'):upper(), getmetatable('').shout == nil,"
                          " getmetatable(getmetatable('')) == nil}",
                          "b.lua", None, [], time.monotonic() + 2)
    assert second == Finished(["X", True, True])
    assert time.monotonic() - started < 2


# -- Lua's own functions keep their behaviour ------------------------------------------------

DEEP = "'return ' .. ('('):rep(1000) .. '1' .. (')'):rep(1000)"
# Each expression is evaluated in a function under pcall, in the sandbox and in a bare Lua 5.5;
# both must give the same (ok, value) pair.
AS_IN_LUA = [
    f"select(2, load({DEEP}))",
    "coroutine.create(1)", "coroutine.wrap({})", "coroutine.resume(1)", "coroutine.resume()",
    "coroutine.close(1)", "coroutine.close(nil)", "coroutine.close(coroutine.running())",
    "coroutine.close()", "coroutine.isyieldable(1)", "coroutine.status()",
    "select(2, coroutine.resume(coroutine.running()))",
    "coroutine.create(setmetatable({}, {__name = 'Thing'}))",
    "pcall()", "xpcall(print)", "xpcall(print, nil)",
    "load()", "load('return 1', {})", "load('return 1', 'c', {})",
    "select(2, load('return 1', 'c', 'x'))", "load('return x', 'c', 't', nil)()",
    "collectgarbage('foo')", "collectgarbage({})", "collectgarbage(1)",
    "collectgarbage('step', 'x')", "collectgarbage('step', 1.5)",
    # Lua 5.5 takes any number with an integer value as the step size
    "type(collectgarbage('step', 1.0))", "type(collectgarbage('step', '2'))",
    # error's level: checked as Lua does, located at the script's call, never the prelude's
    "error('x', 1.5)", "select(2, pcall(error, 'x', 1.5))", "error('x', 'y')",
    "select(2, pcall(error, 'x', 2.0))", "error('x', '1')",
    "select(2, pcall(string.rep))", "select(2, pcall(math.floor, {}))",
    "setmetatable(1, {})", "setmetatable({})", "setmetatable({}, 1)",
    "setmetatable(setmetatable({}, {__metatable = 1}), {})",
    "print(setmetatable({}, {__tostring = function() return {} end}))",
    "coroutine.yield(1)",
    # Lua 5.5: a coroutine may close itself; its resume then returns true
    "select('#', coroutine.resume(coroutine.create(function() "
    "coroutine.close(coroutine.running()) end)))",
    # wrap closes a coroutine that fails (its to-be-closed variables are closed)
    "select(2, pcall(coroutine.wrap(function() local x <close> = setmetatable({}, "
    "{__close = function() closed = true end}) error('e', 0) end))) .. tostring(closed)",
]


def _in_a_function(expression: str) -> str:
    return (f"local ok, value = pcall(function() local r = {expression} return r end)\n"
            "return {ok, tostring(value)}")


@pytest.mark.parametrize("expression", AS_IN_LUA)
def test_lua_s_own_functions_behave_as_in_lua(expression: str, lua_version: str) -> None:
    from engines.lua import lua_module

    if lua_version == "luajit":
        pytest.skip("the sandbox's own built-ins give Lua 5.4's and 5.5's messages, not "
                    "LuaJIT's (README: Lua versions)")
    if lua_version == "5.4" and ("coroutine.close(coroutine.running())" in expression
                                 or "coroutine.close()" in expression):
        pytest.skip("the sandbox closes the running coroutine as Lua 5.5 ('cannot close main "
                    "thread'), where Lua 5.4 refuses it otherwise")
    source = _in_a_function(expression)
    bare = lua_module(lua_version).LuaRuntime()  # the same Lua, unsandboxed
    expected = list(bare.execute("return assert(load(..., '@agent.lua', 't'))()", source).values())
    assert drive(source).result == expected


def test_load_of_a_deeply_nested_chunk_gives_lua_s_message_outside_any_pcall(
        lua_version: str) -> None:
    source = f"local f, message = load({DEEP})\nlocal t = nil\nreturn {{f, message, t.x}}"
    error = drive(source).error
    assert error.fields["error"] == nil_indexed(lua_version, "local 't'")
    assert [f.line for f in error.frames] == [3]
    message = "C stack overflow"
    if lua_version == "luajit":
        message = '[string "return ((((((((((((((((((((((((((((((((((((((..."]:1: chunk has ' \
                  'too many syntax levels'
    assert drive(f"local f, message = load({DEEP}) return {{f == nil, message}}").result == [
        True, message]


def test_closing_the_main_thread_is_an_error_the_script_can_catch(lua_version: str) -> None:
    if lua_version == "luajit":
        pytest.skip(NO_CLOSE_ON_LUAJIT)
    source = "local ok, e = pcall(coroutine.close, coroutine.running())\nreturn {ok, e}"
    assert drive(source).result == [False, "cannot close main thread"]
    error = drive("local x = 1\ncoroutine.close()").error
    assert error.code == "script/lua" and error.fields["error"] == "cannot close main thread"
    assert [f.line for f in error.frames] == [2]


def test_the_host_s_coroutines_cannot_be_resumed_or_closed_by_a_script(
        lua_version: str) -> None:
    if lua_version == "luajit":
        pytest.skip(NO_CLOSE_ON_LUAJIT)
    source = """
local main = coroutine.running()
local co = coroutine.create(function()
  local ok, e = coroutine.resume(main, true, "forged")
  local closed, problem = pcall(coroutine.close, main)
  return {ok, e, coroutine.status(main), closed, problem}
end)
local _, r = coroutine.resume(co)
return r
"""
    assert drive(source).result == [False, "cannot resume non-suspended coroutine", "normal",
                                    False, "cannot close a normal coroutine"]
