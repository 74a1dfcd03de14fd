"""Red team, fourth pass, on issue 17's data fast paths: a hostile script's data read by
the host (Lua's unpack, JS's numbers() placeholders, pydantic-core's reader and writer)
gives what the slow paths gave, and no script code runs while the host reads it.

Real engines throughout (lupa, quickjs); the JS cases compare each outcome with the
fast path switched off (tests/test_data_fast_paths.py's fast_and_slow)."""

from __future__ import annotations

import json
import math
import random
import struct
from typing import Any

import pydantic_core
import pytest

from bridge import SpellError
from host import Host, tool
from tests.test_data_fast_paths import fast_and_slow

pytestmark = pytest.mark.usefixtures("lua_version")


@tool
def kinds(values: Any) -> Any:
    """What it was given: each value's type name (a Lua function would show here)."""
    return [type(value).__name__ for value in values] if isinstance(values, list) \
        else type(values).__name__


def lua_run(source: str) -> Any:
    host = Host([kinds], timeout=5, on_output=lambda line: None)
    try:
        return ("value", host.run_source(source, "lua", "agent.lua"))
    except SpellError as exc:
        return ("error", exc.code, str(exc).splitlines()[0])


# A metatable's __len on an array the prelude checked: Lua 5.5's table.unpack calls it
# even with both bounds given, and the host reads arrays with unpack (engines/lua.py,
# _convert_array), from Python, after the check: the script's code would run there,
# outside the prelude, and could change the array between the check and the read.
LEN_TRAPS = {
    "throws": "function() error('__len ran') end",
    "loops": "function() while true do end end",
    "lies": "function() return 2 end",
    "swaps a function in": "function(t) rawset(t, 2, print) return 3 end",
    "makes a cycle": "function(t) rawset(t, 2, t) return 3 end",
}


@pytest.mark.parametrize("trap", LEN_TRAPS, ids=list(LEN_TRAPS))
@pytest.mark.parametrize("where", ["result", "params", "nested"])
def test_lua_arrays_are_read_without_their_len_metamethod(trap: str, where: str) -> None:
    source = f"local t = setmetatable({{1, 2.5, 3}}, {{__len = {LEN_TRAPS[trap]}}})\n" + {
        "result": "return t",
        "params": "return tools.kinds{values = t}",
        "nested": "return {a = {t}, b = t}",
    }[where]
    expected = {"result": [1, 2.5, 3], "params": ["int", "float", "int"],
                "nested": {"a": [[1, 2.5, 3]], "b": [1, 2.5, 3]}}[where]
    assert lua_run(source) == ("value", expected)


def test_lua_an_array_keeps_its_metatable_after_the_host_read_it(lua_version: str) -> None:
    source = """local mt = {__len = function() return 42 end}
local t = setmetatable({1, 2, 3}, mt)
tools.kinds{values = t}
local u = {t}
tools.kinds{values = u}
return {#t, getmetatable(t) == mt and 1 or 0}
"""
    # (LuaJIT, as Lua 5.1, has no __len for tables)
    assert lua_run(source) == ("value", [3 if lua_version == "luajit" else 42, 1])


def test_lua_a_long_array_with_a_len_trap_is_read_whole_piece_by_piece() -> None:
    # more values than one unpack reads (engines/lua.py _UNPACK_PIECE): each piece raw
    source = """local t = {} for i = 1, 40000 do t[i] = i end
setmetatable(t, {__len = function(t) rawset(t, 20000, print) return 7 end})
local seen = tools.kinds{values = t}
return {#seen, seen[20000], rawget(t, 20000) == 20000 and 1 or 0}
"""
    assert lua_run(source) == ("value", [40000, "int", 1])
