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
from tests.test_engine_lua import drive

ROOT = Path(__file__).resolve().parent.parent
RUN = """
import sys
from host import Host
try:
    print(Host(timeout=1, on_output=lambda line: None).run_source(sys.argv[1], "lua", "gc.lua"))
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
def test_no_finalizer_gets_in_through_a_metatable_of_the_prelude(case: str) -> None:
    out = subprocess.run([sys.executable, "-c", RUN, FINALIZERS[case]], capture_output=True,
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
def test_script_code_in_metamethods_stays_under_the_time_limit(source: str) -> None:
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
