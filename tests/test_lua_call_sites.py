"""A Lua tool call's site is read from the script's stack only when something asks for it
(issue 17): a successful call never needs it. Read while the call waits, it must be what
the eager traceback of every call gave (the prelude with that traceback switched back on
is the reference), from every place a script calls a tool: tail calls, deep stacks,
coroutines of its own, pcall, tools.call; and a failed call's error (host side and script
side) must name the same lines either way."""

from __future__ import annotations

from typing import Any

import pytest

import engines.lua as lua_engine
from bridge import SpellError, ToolError
from host import Host, tool
from tests.engine_driver import drive

# every test on each Lua version (tests/conftest.py: lua_version)
pytestmark = pytest.mark.usefixtures("lua_version")

LAZY = ("co_yield(REQUEST, text(name), nil, nil, true,",
        "co_yield(REQUEST, text(name), problem, nil, params,")
EAGER = ("co_yield(REQUEST, text(name), nil, traceback(nil, 3, true), true,",
         "co_yield(REQUEST, text(name), problem, traceback(nil, 3, true), params,")


def eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every engine made from now on takes the call site at every call, as before."""
    text = lua_engine.PRELUDE
    for lazy, eager_call in zip(LAZY, EAGER, strict=True):
        assert text.count(lazy) == 1, lazy
        text = text.replace(lazy, eager_call)
    monkeypatch.setattr(lua_engine, "PRELUDE", text)
    lua_engine.prelude_bytecode.cache_clear()


@pytest.fixture(autouse=True)
def fresh_prelude() -> Any:
    lua_engine.prelude_bytecode.cache_clear()
    yield
    lua_engine.prelude_bytecode.cache_clear()


SITES = {
    "plain": "local r = tools.t{a = 1}\nreturn r",
    "tail call": "return tools.t{a = 1}",
    "no params": "local r = tools.t()\nreturn r",
    "nested params": "local r = tools.t{a = {1, {b = 2}}}\nreturn r",
    "tools.call": "local r = tools.call('t', {a = 1})\nreturn r",
    "pcall": "local ok, r = pcall(tools.t, {a = 1})\nreturn r",
    "deep": """local function f(n)
  if n == 0 then local r = tools.t{n = n} return r end
  local r = f(n - 1)
  return r
end
return f(40)""",
    "coroutine": """local co = coroutine.wrap(function(x)
  local r = tools.t{x = x}
  return r
end)
local r = co(1)
return r""",
    "coroutine tail call": "local r = coroutine.wrap(function() return tools.t{} end)()\nreturn r",
    "coroutines nested": """local outer = coroutine.wrap(function()
  local inner = coroutine.wrap(function()
    local r = tools.t{depth = 2}
    return r
  end)
  local r = inner()
  return r
end)
local r = outer()
return r""",
    "deep in a coroutine": """local function f(n)
  if n == 0 then local r = tools.t{} return r end
  local r = f(n - 1)
  return r
end
local r = coroutine.wrap(f)(30)
return r""",
    "a loop": "local s = 0\nfor i = 1, 3 do\n  s = s + #tools.t{i = i}\nend\nreturn s",
    "bad params": "local r = tools.t{a = print}\nreturn r",
}


def sites_of(source: str) -> list[Any]:
    run = drive("lua", source, tools={"t": lambda params: "ok"})
    outcome = run.step.result if hasattr(run.step, "result") else run.error.code
    return [outcome, [(r.tool, [(f.file, f.line, f.function, f.source) for f in r.frames])
                      for r in run.requests]]


@pytest.mark.parametrize("source", SITES.values(), ids=SITES.keys())
def test_a_call_site_found_when_asked_is_the_one_found_at_every_call(
        source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    lazy = sites_of(source)
    eager(monkeypatch)
    assert lazy == sites_of(source)
    if "return tools.t" not in source:  # (LuaJIT keeps no trace of a tail call)
        assert all(frames for _, frames in lazy[1])  # a site was found for every request


@tool
def fails(n: int = 0) -> str:
    """Always fails."""
    raise ToolError.ExecutionFailed(tool_name="fails", error=f"no {n}")


def failure(source: str) -> Any:
    host = Host([fails], timeout=10, on_output=lambda line: None)
    try:
        result = host.run_source(source, "lua", "agent.lua")
    except SpellError as err:
        return ("raised", err.code, str(err),
                [(f.language, f.file, f.line, f.function) for f in err.frames])
    return ("returned", result)


FAILING = {
    "uncaught": "local x = 1\nlocal r = tools.fails{n = 1}\nreturn r",
    "tail call": "return tools.fails{n = 2}",
    "caught and shown": """local ok, err = pcall(function()
  local r = tools.fails{n = 3}
  return r
end)
return {ok, err.kind, err.traceback}""",
    "in a coroutine": """local co = coroutine.wrap(function()
  local r = tools.fails{n = 4}
  return r
end)
local r = co()
return r""",
    "deep": """local function f(n)
  if n == 0 then local r = tools.fails{n = 5} return r end
  local r = f(n - 1)
  return r
end
return f(25)""",
}


@pytest.mark.parametrize("source", FAILING.values(), ids=FAILING.keys())
def test_a_failed_call_names_the_same_lines_either_way(source: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    lazy = failure(source)
    eager(monkeypatch)
    assert lazy == failure(source)
    if lazy[0] == "raised" and "return tools" not in source:  # (a tail call has no line)
        # the host's error walks through the script's line
        assert any(frame[1] == "agent.lua" and frame[2] for frame in lazy[3])
