"""A tool's error reaches a Lua script as before through the engine's fast ways (issue 17:
a caught failure's cost).

- A call site's traceback is made with registry._LOADED emptied (Lua 5.4 and 5.5 look for
  every level's function in it): the same frames as with it in place, and Lua's own
  argument errors still name library functions afterwards.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

import engines.lua as lua_engine
from bridge import SpellError
from engines.base import Failed, Finished, Limits, Suspended, ToolInfo, ToolReply

# every test on each Lua version (tests/conftest.py: lua_version)
pytestmark = pytest.mark.usefixtures("lua_version")

def level(cause: dict | None = None, **changes: Any) -> dict:
    envelope = {"category": "tool", "kind": "execution_failed", "name": "ToolError",
                "message": "Tool 't' failed: ValueError: no",
                "fields": {"tool_name": "t", "reason": "ValueError: no",
                           "parameters": "{'a': 1}", "execution_time": 1.2e-05},
                "retryable": False, "retry_after": None, "ref": 123456789, "cause": cause}
    envelope.update(changes)
    return envelope


def inner(**changes: Any) -> dict:
    return level(None, **{"category": "runtime", "kind": "python_exception",
                          "name": "RuntimeError", "message": "ValueError: no",
                          "fields": {"exception_type": "ValueError",
                                     "exception_message": "no"},
                          "ref": 987654321, **changes})



def drive(source: str, envelope: Any, *, memory_mb: int = 64) -> tuple[Any, list[Any]]:
    """Run ``source``, answering every request with ``envelope``: the outcome (the
    result, or the failure's code, text, fields and frames) and each request's frames."""
    engine = lua_engine.LuaEngine(limits=Limits(timeout=10, memory_mb=memory_mb))
    deadline = time.monotonic() + 10
    sites = []
    try:
        step = engine.start(source, "agent.lua", None, [ToolInfo("t", "")], deadline)
        while isinstance(step, Suspended):
            request = step.requests[0]
            sites.append([(f.file, f.line, f.function) for f in request.frames])
            step = engine.resume([ToolReply(request.id, error=envelope)], deadline)
        if isinstance(step, Finished):
            return step.result, sites
        assert isinstance(step, Failed)
        err: SpellError = step.error
        return (err.code, str(err), repr(err.fields), [
            (f.file, f.line, f.function) for f in err.frames]), sites
    finally:
        engine.close()



# -- call sites made with registry._LOADED emptied ------------------------------------

SWAP = 'if REGISTRY then rawset(REGISTRY, "_LOADED", UNLOADED) end'

SITES = {
    "plain": "local ok, e = pcall(tools.t, {a = 1})\nreturn e.traceback",
    "in a function": """local function f()
  local r = tools.t{a = 1}
  return r
end
local ok, e = pcall(f)
return e.traceback""",
    "a method on a library table": """local lib = string
function lib.helper()
  local r = tools.t{}
  return r
end
local ok, e = pcall(("x").helper)
return e.traceback""",
    "a metamethod": """local t = setmetatable({}, {__index = function(_, k)
  local r = tools.t{k = k}
  return r
end})
local ok, e = pcall(function() return t.x end)
return e.traceback""",
    "a coroutine": """local co = coroutine.wrap(function()
  local r = tools.t{}
  return r
end)
local ok, e = pcall(co)
return e.traceback""",
    "gsub's callback (cannot yield)": """local ok, e = pcall(string.gsub, "a", "a", function()
  return tools.t{}
end)
return tostring(e)""",
    "sort's comparator (cannot yield)": """local ok, e = pcall(table.sort, {3, 1, 2}, function(a, b)
  tools.t{}
  return a < b
end)
return tostring(e)""",
    "argument errors after a site": """local ok, e = pcall(tools.t, {})
local _, m1 = pcall(string.rep)
local _, m2 = pcall(function() return ("x"):rep() end)
local _, m3 = pcall(math.floor, "x")
return {e.traceback, m1, m2, m3}""",
}


@pytest.mark.parametrize("name", SITES)
def test_a_call_site_is_the_same_with_registry_loaded_in_place(
        name: str, monkeypatch: pytest.MonkeyPatch, lua_version: str) -> None:
    lua_engine.prelude_bytecode.cache_clear()
    envelope = level(inner())
    emptied = drive(SITES[name], envelope)
    assert lua_engine.PRELUDE.count(SWAP) == 1
    monkeypatch.setattr(lua_engine, "PRELUDE", lua_engine.PRELUDE.replace(SWAP, ""))
    lua_engine.prelude_bytecode.cache_clear()
    try:
        in_place = drive(SITES[name], envelope)
    finally:
        lua_engine.prelude_bytecode.cache_clear()
    assert emptied == in_place
    if name == "argument errors after a site" and lua_version != "luajit":
        assert "to 'string.rep'" in emptied[0][1] and "to 'math.floor'" in emptied[0][3]


def test_a_site_that_fails_puts_registry_loaded_back(monkeypatch: pytest.MonkeyPatch) -> None:
    made = "    local tb = traceback(co, 3, true)\n"
    assert lua_engine.PRELUDE.count(made) == 1
    for failing in ("error(NOMEM, 0)", "error('not this', 0)"):  # memory, or anything
        monkeypatch.setattr(lua_engine, "PRELUDE", lua_engine.PRELUDE.replace(
            made, made + f"    if rawequal(co, co) then {failing} end\n"))
        lua_engine.prelude_bytecode.cache_clear()
        engine = lua_engine.LuaEngine()
        deadline = time.monotonic() + 10
        try:
            step = engine.start("local ok, e = pcall(tools.t, {})\nreturn tostring(e)",
                                "agent.lua", None, [ToolInfo("t", "")], deadline)
            assert isinstance(step, Suspended)
            assert step.requests[0].frames == []  # the site is unknown
            assert engine._lua.eval("debug.getregistry()._LOADED == package.loaded")
            assert engine._lua.eval("package.loaded.string.rep ~= nil")
        finally:
            engine.close()
            lua_engine.prelude_bytecode.cache_clear()
        monkeypatch.undo()
