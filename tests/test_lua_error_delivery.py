"""A tool's error reaches a Lua script as before through the engine's fast ways (issue 17:
a caught failure's cost).

- The usual error envelope is handed to the prelude flat (its levels' scalars and fields
  as values; the prelude builds the tables) instead of as tables lupa builds: the script
  must see the same error table (code, message, fields, cause chain, ref, traceback,
  metatable), the same refusals (ints past the version's range, lone surrogates, the
  memory limit) and the same uncaught error, whichever way it went; each envelope runs
  both ways and the two are compared.
- A call site's traceback is made with registry._LOADED emptied (Lua 5.4 and 5.5 look for
  every level's function in it): the same frames as with it in place, and Lua's own
  argument errors still name library functions afterwards.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest

import engines.lua as lua_engine
from bridge import SpellError
from engines.base import Failed, Finished, Limits, Suspended, ToolInfo, ToolReply

# every test on each Lua version (tests/conftest.py: lua_version)
pytestmark = pytest.mark.usefixtures("lua_version")

DUMP = """
local function dump(v)
  local t = type(v)
  if t == "string" then return string.format("%q", v) end
  if t == "number" then
    return (math.type and math.type(v) or "number") .. ":" .. string.format("%.17g", v)
  end
  if t ~= "table" then return tostring(v) end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local out = {}
  for _, k in ipairs(keys) do out[#out + 1] = tostring(k) .. "=" .. dump(rawget(v, k)) end
  return "{" .. table.concat(out, ",") .. "}"
end
"""

CAUGHT = DUMP + """
local cancelled = {}
on_cancel(function(e) cancelled[#cancelled + 1] = e.code end)
local function call()
  local r = tools.t{a = 1}
  return r
end
local ok, e = pcall(call)
local seen = {dump(e), tostring(e), type(e) == "table" and e.code or "", type(getmetatable(e)),
              select(2, pcall(setmetatable, e, {}))}
if type(e) == "table" then
  local c, n = e, 0
  while type(c) == "table" do
    n = n + 1
    seen[#seen + 1] = tostring(c) .. " | " .. tostring(c.code) .. " | " .. tostring(c.ref)
    seen[#seen + 1] = tostring(rawequal(c.traceback, e.traceback))
    c = rawget(c, "cause")
  end
  seen[#seen + 1] = n
  seen[#seen + 1] = tostring(e.cause ~= nil and rawequal(e.fields, e.cause.fields))
end
seen[#seen + 1] = table.concat(cancelled, ",")
return seen
"""

UNCAUGHT = """
local function call()
  local r = tools.t{a = 1}
  return r
end
local x = call()
return x
"""


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


def chain(n: int) -> dict:
    envelope = None
    for i in range(n):
        envelope = level(envelope, message=f"level {i}", ref=i)
    assert envelope is not None
    return envelope


PARAMS, LIST = {"reason": "no"}, [1, 2]
FIELD_VALUES = {"none": None, "yes": True, "no": False, "zero": 0, "neg": -1,
                "max": 2**53, "min": -(2**53), "half": 1.5, "negzero": -0.0,
                "inf": math.inf, "nan": math.nan, "empty": ""}

# name -> (envelope, whether it goes flat)
ENVELOPES: dict[str, tuple[Any, bool]] = {
    "usual": (level(inner()), True),
    "no cause": (level(), True),
    "empty fields": (level(fields={}), True),
    "four levels": (chain(4), True),
    "five levels (the long way)": (chain(5), False),
    "eight fields": (level(fields={f"f{i}": i for i in range(8)}), True),
    "nine fields (the long way)": (level(fields={f"f{i}": i for i in range(9)}), False),
    "scalar fields": (level(fields=dict(list(FIELD_VALUES.items())[:8])), True),
    "more scalar fields": (level(inner(fields=dict(list(FIELD_VALUES.items())[8:]))), True),
    "unicode": (level(message="é€𝄞 ünïcödé", fields={"clé": "välüe 𝄞"}), True),
    "big strings": (level(inner(message="m" * 200_000), message="x" * 100_000,
                          fields={"k" * 1000: "v" * 300_000}), True),
    "retry after a float": (level(retryable=True, retry_after=2.5), True),
    "retry after an int": (level(retryable=True, retry_after=3), True),
    "no ref": (level(inner(ref=None), ref=None), True),
    "a large ref": (level(ref=2**53 - 1), True),
    "cancelled": (level(category="async_execution", kind="task_cancelled",
                        name="AsyncError", fields={"task_id": "x"}), True),
    "nested fields (the long way)": (level(fields={"a": {"b": [1, 2, {"c": None}]}}), False),
    "a list field": (level(inner(fields={"xs": [1, "two", 3.0, None, True]})), True),
    "a dict field (a call's parameters)": (level(inner(), fields={
        "tool_name": "t", "parameters": {"reason": "no", "n": 3, "x": None, "ok": True},
        "execution_time": 0.5}), True),
    "long strings in a list field": (level(fields={"xs": ["s" * 100, "t" * 10, ""]}), True),
    "a big dict field": (level(fields={"p": {f"k{i}": i for i in range(40)}}), True),
    "an empty list and dict": (level(fields={"a": [], "d": {}}), True),
    "a dict field holding a list (the long way)": (level(fields={"p": {"a": [1]}}), False),
    "the same parameters in two levels (the long way)": (
        level(level(fields={"p": PARAMS}), fields={"p": PARAMS}), False),
    "the same list twice in a level (the long way)": (
        level(fields={"a": LIST, "b": LIST}), False),
    "a lone surrogate in a parameter (the long way)": (
        level(fields={"p": {"k": "\ud800"}}), False),
    "an int past 64 bits in a list field (the long way)": (level(fields={"p": [2**64]}),
                                                           False),
    "a tuple in a dict field (the long way)": (level(fields={"p": {"t": (1,)}}), False),
    "a non-str key in a dict field (the long way)": (level(fields={"p": {1: 2}}), False),
    "fields not a dict (the long way)": (level(fields=None), False),
    "a missing key (the long way)": ({k: v for k, v in level().items() if k != "ref"}, False),
    "an extra key (the long way)": ({**level(), "extra": 1}, False),
    "not a table at all (the long way)": ("just text", False),
    "a lone surrogate in the message": (level(message="bad \ud800 text"), False),
    "a lone surrogate in a key": (level(inner(fields={"\udcff": 1})), False),
    "a lone surrogate in a value": (level(fields={"k": "\udfff"}), False),
    "an int past 64 bits in a field": (level(fields={"n": 2**64}), False),
    "an int past 53 bits in a field": (level(fields={"n": 2**53 + 1}), True),
    "an int past 64 bits as ref": (level(inner(ref=2**70)), False),
    "a bool as retryable... not": (level(retryable=1), False),
    "a non-str key": (level(fields={1: "x"}), False),
    "a tuple field": (level(fields={"t": (1, 2)}), False),
}


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


def both_ways(monkeypatch: pytest.MonkeyPatch, source: str, envelope: Any, **options: Any
              ) -> tuple[Any, Any, int]:
    """``source`` run with the flat handoff, then the long way: both outcomes and how many
    replies went flat."""
    flat = []
    put_error = lua_engine.LuaEngine._put_error

    def counted(self: Any, *args: Any) -> Any:
        step = put_error(self, *args)
        flat.append(step is not None)
        return step

    monkeypatch.setattr(lua_engine.LuaEngine, "_put_error", counted)
    fast = drive(source, envelope, **options)
    monkeypatch.setattr(lua_engine, "_flat_envelope", lambda envelope, ints: None)
    slow = drive(source, envelope, **options)
    return fast, slow, sum(flat)


def same(a: Any, b: Any) -> bool:
    """Equal, NaN included (it crosses back as a float)."""
    return repr(a) == repr(b)


@pytest.mark.parametrize("name", ENVELOPES)
def test_the_script_sees_the_same_error_whichever_way_the_envelope_went(
        name: str, monkeypatch: pytest.MonkeyPatch, lua_version: str) -> None:
    envelope, flat = ENVELOPES[name]
    if lua_version == "luajit" and name == "an int past 53 bits in a field":
        flat = False  # LuaJIT holds ints to 53 bits: refused, both ways
    fast, slow, went_flat = both_ways(monkeypatch, CAUGHT, envelope)
    assert same(fast, slow)
    assert went_flat == (1 if flat else 0)
    result = fast[0]
    if type(envelope) is dict and flat:  # a table the script caught, with the error's code
        assert isinstance(result, list) and result[2] == (f"{envelope['category']}/"
                                                          f"{envelope['kind']}")


@pytest.mark.parametrize("name", ENVELOPES)
def test_the_flat_envelope_is_sized_as_the_long_way_sizes_it(name: str) -> None:
    envelope, _ = ENVELOPES[name]
    for ints in (lua_engine._INT64, lua_engine._INT53):
        flat = lua_engine._flat_envelope(envelope, ints)
        if flat is not None:
            assert flat[1] == lua_engine._envelope_size(envelope, ints)


def test_a_fields_dict_met_twice_goes_the_long_way(monkeypatch: pytest.MonkeyPatch) -> None:
    shared = {"tool_name": "t"}
    source = ("local ok, e = pcall(tools.t, {})\n"
              "return {e.fields.tool_name, e.cause.fields.tool_name}")
    fast, slow, went_flat = both_ways(monkeypatch, source, level(level(fields=shared),
                                                                 fields=shared))
    assert fast == slow and fast[0] == ["t", "t"] and went_flat == 0


@pytest.mark.parametrize("name", ["usual", "four levels", "cancelled", "unicode",
                                  "an int past 64 bits in a field",
                                  "a lone surrogate in the message",
                                  "nested fields (the long way)"])
def test_an_uncaught_error_is_the_same_whichever_way(name: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    fast, slow, _ = both_ways(monkeypatch, UNCAUGHT, ENVELOPES[name][0])
    assert same(fast, slow)
    if name.startswith("an int past"):  # refused as it crosses: no script line to name
        assert fast[0][0] == "script/cross_engine_communication" and fast[0][3] == []
    else:
        assert fast[0][3] == [("agent.lua", 6, "main chunk"), ("agent.lua", 3, "call")]


@pytest.mark.parametrize("size_mb", [20, 6])
def test_an_error_past_the_memory_limit_is_refused_the_same_either_way(
        size_mb: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # 2 x 20 MiB: past the 16 MiB limit before anything is built (the flat way refuses it
    # itself); 2 x 6 MiB: passes that check, and does not fit once built; and a small one
    # that cannot fit beside the 12 MiB the script holds
    big = "z" * (size_mb * 2**20)
    envelope = level(inner(message=big), message=big)
    fast, slow, went_flat = both_ways(monkeypatch, CAUGHT, envelope, memory_mb=16)
    assert same(fast, slow) and went_flat == 1
    assert fast[0][0] == "resource/memory_exhaustion"
    assert ("did not fit" in fast[0][1]) == (size_mb == 20)
    hog = "local hog = string.rep('h', 12 * 2^20)\n" + CAUGHT
    fast, slow, _ = both_ways(monkeypatch, hog, level(message="y" * 3 * 2**20),
                              memory_mb=16)
    assert same(fast, slow)
    assert fast[0][0] == "resource/memory_exhaustion"


def test_a_failing_loop_sees_each_error_as_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    source = """
local seen = {}
for i = 1, 5 do
  local ok, e = pcall(tools.t, {i = i})
  seen[i] = e.message .. "/" .. tostring(e.ref) .. "/" .. tostring(e.cause and e.cause.ref)
end
return seen
"""
    engine = lua_engine.LuaEngine()
    deadline = time.monotonic() + 10
    try:
        step = engine.start(source, "agent.lua", None, [ToolInfo("t", "")], deadline)
        n = 0
        while isinstance(step, Suspended):
            n += 1
            envelope = level(inner(ref=n * 10) if n % 2 else None, message=f"m{n}", ref=n)
            step = engine.resume([ToolReply(step.requests[0].id, error=envelope)], deadline)
        assert isinstance(step, Finished)
        assert step.result == ["m1/1/10", "m2/2/nil", "m3/3/30", "m4/4/nil", "m5/5/50"]
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
    envelope = ENVELOPES["usual"][0]
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


# -- data holding one list or dict in two places ----------------------------------------
# lupa's recursive table_from builds the second one wrongly (an empty table, another
# table, a cycle, or a "lost reference" error): such data crosses as JSON would carry it,
# each place a copy of its own, bounded by the memory limit however often it is shared.

X, Y = {"k": 1, "l": [1, "two"]}, [1, 2]
SHARED = {
    "a dict in two keys": {"a": X, "b": X},
    "in two levels": {"a": {"p": X}, "b": {"p": X}},
    "a list twice in a list": [Y, Y],
    "deeper, then nearer (lost reference)": {"a": {"b": {"p": X}}, "c": X},
    "in tuples": [(X, X), (Y,)],
    "in a large dict": {f"k{i}": Y for i in range(40)},
    "beside a lone surrogate": {"a": {"s": "\ud800", "x": X}, "b": X},
}


def handed(value: Any, *, memory_mb: int = 64, error: bool = False) -> Any:
    """What the script makes of ``value`` handed to it as a tool's result (or in an
    error's fields): its dump, or the failure's code and text."""
    reply = {"error": level(fields={"v": value})} if error else {"result": value}
    source = DUMP + ("local ok, e = pcall(tools.t, {})\nreturn dump(e.fields.v)" if error
                     else "return dump(tools.t())")
    engine = lua_engine.LuaEngine(limits=Limits(timeout=10, memory_mb=memory_mb))
    deadline = time.monotonic() + 10
    try:
        step = engine.start(source, "agent.lua", None, [ToolInfo("t", "")], deadline)
        assert isinstance(step, Suspended)
        step = engine.resume([ToolReply(step.requests[0].id, **reply)], deadline)
        if isinstance(step, Finished):
            return step.result
        assert isinstance(step, Failed)
        return step.error.code, str(step.error)
    finally:
        engine.close()


def unshared(value: Any) -> Any:
    """``value`` as JSON carries it (lone surrogates as U+FFFD, as Lua gets them)."""
    text = json.dumps(value).replace("\\ud800", "\\ufffd")
    return json.loads(text)


@pytest.mark.parametrize("error", [False, True], ids=["result", "error field"])
@pytest.mark.parametrize("name", SHARED)
def test_data_holding_a_list_or_dict_twice_reaches_the_script_whole(
        name: str, error: bool) -> None:
    seen = handed(SHARED[name], error=error)
    assert seen == handed(unshared(SHARED[name]), error=error)
    # each place whole: no empty table, X's list as often as X is there
    assert isinstance(seen, str) and "{}" not in seen
    assert seen.count("l={") == json.dumps(SHARED[name]).count('"l": [')


def test_data_shared_at_every_level_is_refused_by_the_memory_limit_not_copied_on() -> None:
    # 2**40 places for one list: small in Python, far past any limit as copies of it
    dag: Any = [1]
    for _ in range(40):
        dag = [dag, dag]
    for error in (False, True):
        code, text = handed({"d": dag}, memory_mb=16, error=error)
        assert code == "resource/memory_exhaustion" and "did not fit in the 16 MiB" in text
    assert handed([Y] * 1000, memory_mb=16).count(":2}") == 1000  # many places, yet it fits


def test_a_list_inside_itself_is_refused_as_too_deep_even_when_shared() -> None:
    cycle: list = [1]
    cycle.append(cycle)
    loop: dict = {"s": Y}  # met again inside its own cycle, after the walk of it ended
    loop["me"] = loop
    holder: dict = {"a": Y}
    holder["b"] = [Y, holder]
    for value in (cycle, {"a": Y, "b": Y, "c": cycle}, {"a": [cycle, cycle]}, loop, holder):
        code, text = handed(value)
        assert code == "script/cross_engine_communication"
        assert "nested more than 100 levels deep" in text
