"""Red team, fourth pass, on issue 17's data fast paths: a hostile script's data read by
the host (Lua's unpack, JS's numbers() placeholders, pydantic-core's reader and writer)
gives what the slow paths gave, and no script code runs while the host reads it.

Real engines throughout (lupa, quickjs); the JS cases compare each outcome with the
fast path switched off (tests/test_data_fast_paths.py's fast_and_slow)."""

from __future__ import annotations

import enum
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


# JS: numbers() placeholders (MARK + "[" + k) spliced back where they belong, with the
# fast path on and off alike: strings that look like placeholders, long (stashed) strings
# beside arrays, arrays met twice, toJSON, a getter or toJSON calling a tool (a nested
# conversion) while the outer one has placeholders, subclasses, frozen and typed arrays,
# Proxies whose length or ownKeys lie, big and tiny doubles.
JS_CASES = {
    "top level": "return Array.from({length: 20}, (_, i) => i - 0.5);",
    "echoed": "return await E(Array.from({length: 20}, (_, i) => -i));",
    "look-alike strings": "const a = Array.from({length: 20}, (_, i) => i); return {s: "
    "'\"\\\\u0000abc:[0\"', t: '[0', a, u: '\\u0000x:[1', b: a, long: 'x'.repeat(20000) + '[',"
    " c: [a, [a]], d: '\\u0000'.repeat(3)};",
    "stashed strings between": "const a = Array.from({length: 20}, (_, i) => i * 1e20); "
    "const r = await E({long: '\\u0000'.repeat(17000), a, s: '\"[0\"', x: [a, "
    "'y'.repeat(17000), a]}); return [r.a, r.x[0], r.x[2], r.s, r.long.length, r.x[1].length];",
    "toJSON": "const a = Array.from({length: 20}, (_, i) => i); return {o: {toJSON() "
    "{ return a; }}, p: {toJSON() { return [a, {toJSON() { return a; }}]; }}};",
    "a getter calls a tool": "const a = Array.from({length: 20}, (_, i) => i); "
    "const b = Array(20).fill(2); Object.defineProperty(b, 2, {get() { E({inner: a, "
    "s: 'z'.repeat(17000)}); return 5; }}); return await E({b, a, c: [b]});",
    "a toJSON calls a tool": "const a = Array.from({length: 20}, (_, i) => i); "
    "const o = {toJSON() { E({inner: [a, a]}); return [a, 'q']; }}; "
    "return await E({x: [a, o, a]});",
    "subclass, frozen, typed": "class A extends Array {}; const s = A.from({length: 20}, "
    "(_, i) => i); s.extra = 'e'; const f = Object.freeze(Array(20).fill(3)); "
    "return await E({s, f, t: new Float64Array(20), u: [new Uint8Array(3)]});",
    "negative zero": "const r = await E({a: Array(20).fill(-0)}); "
    "return [Object.is(r.a[0], -0), String(1 / r.a[1])];",
    "doubles": "const a = [1e21, 1e-7, 123456789012345680000, 2**53+2, -(2**60), 5e-324, "
    "...Array(16).fill(0.1)]; const r = await E({a}); return r.a.map((x, i) => x === a[i]);",
    "length flips": "let n = 0; const p = new Proxy(Array(20).fill(1), {get(t, k) { "
    "if (k === 'length') { n++; return n === 1 ? 20 : 18; } return t[k]; }}); "
    "return [await E({p}), n];",
    "ownKeys lie": "const p = new Proxy(Array(20).fill(1), {ownKeys() { return ['length', "
    "'0', 'x']; }}); return await E({p});",
    "one array many times": "const a = Array(16).fill(1); const parts = []; "
    "for (let i = 0; i < 5000; i++) parts.push(a); return (await E({parts})).parts.length;",
}


@pytest.mark.parametrize("language", ["javascript"])
@pytest.mark.parametrize("case", JS_CASES, ids=list(JS_CASES))
def test_js_number_placeholders_land_where_they_belong(case: str, language: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    source = ("const E = (v) => tools.echo({values: v});\n"
              f"async function main() {{ {JS_CASES[case]} }}")
    fast, slow = fast_and_slow(source, monkeypatch)
    assert fast == slow
    assert fast[0] == "value", fast


@pytest.mark.parametrize("language", ["javascript"])
@pytest.mark.parametrize("depth", [0, 58, 62, 70])
def test_js_a_getter_throwing_deep_in_the_stack_gives_the_same_frames(
        depth: int, language: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # numbers() adds frames under the getter (apply, numbers, check): the script's frames
    # near the stack's 64-frame limit are the same as JSON.stringify's own read gives
    source = f"""function deep(n) {{
  if (n === 0) {{
    const a = Array(20).fill(1);
    Object.defineProperty(a, 3, {{get() {{ throw new TypeError('getter failed'); }}}});
    return tools.take({{values: a}});
  }}
  return deep(n - 1);
}}
async function main() {{
  return await deep({depth});
}}"""
    fast, slow = fast_and_slow(source, monkeypatch)
    assert fast == slow
    assert fast[0] == "error"


def js_number_text(x: float) -> str:
    """``x`` as JSON.stringify writes it (shortest digits; JS's exponent form)."""
    text = repr(x)
    if "e" in text:
        mantissa, exponent = text.split("e")
        mantissa = mantissa.removesuffix(".0")
        power = int(exponent)
        text = f"{mantissa}e{'+' if power > 0 else '-'}{abs(power)}"
    elif text.endswith(".0"):
        text = text[:-2]
    return text


@pytest.mark.parametrize("language", ["javascript"])
def test_pydantic_core_reads_and_writes_js_doubles_exactly(language: str) -> None:
    # the long poll's reader (from_json) and the tool list's writer (to_json) against
    # Python's json on doubles of every exponent, subnormals and extremes included
    rng = random.Random(17)
    values = [-0.0, 0.0, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
              2.0**53, 2.0**53 + 2, 1e21, 1e-7, 0.1]
    while len(values) < 50000:
        x = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        if math.isfinite(x):
            values.append(x)
    text = "[" + ",".join(js_number_text(x) for x in values) + "]"
    read = pydantic_core.from_json(text, cache_strings=False)
    assert [(x, math.copysign(1, x)) for x in read] == [
        (x, math.copysign(1, x)) for x in json.loads(text)]
    written = json.loads(pydantic_core.to_json(values))
    assert [(x, math.copysign(1, x)) for x in written] == [
        (x, math.copysign(1, x)) for x in values]


@pytest.mark.parametrize("language", ["javascript"])
@pytest.mark.parametrize("text", [r'"\ud800"', r'"\udc00x"', r'"\ud800\u0041"',
                                  r'{"\ud800":1}', r'"\ud800\udc00\udc00"'])
def test_pydantic_core_refuses_the_lone_surrogates_json_reads(text: str,
                                                              language: str) -> None:
    # _read_state falls back to json on ValueError: a lone surrogate must be refused
    # (never read as U+FFFD), so that json reads it as it always did
    with pytest.raises(ValueError):
        pydantic_core.from_json(text, cache_strings=False)
    assert json.loads(text)


# A tool's list result through the list-of-ints fast paths (host.data, lupa's copy, the
# JS writer): refused where it was refused before (same place named), passed whole else.
class One(enum.IntEnum):
    ONE = 1


RESULT_LISTS = [
    ([1, 2**64], "result[1]"), ([-(2**63) - 1, 1], "result[0]"), ([True, 2**64], "result[1]"),
    ([1.0, 2**64], "result[1]"), ([2**63 - 1, -(2**63)], None), ([1, One.ONE], None),
    ([], None), ([7] * 100_000, None),
]


@pytest.mark.parametrize("language", ["lua", "javascript"])
@pytest.mark.parametrize(("value", "refused_at"), RESULT_LISTS,
                         ids=[str(i) for i in range(len(RESULT_LISTS))])
def test_a_tools_list_of_ints_is_refused_or_passed_as_before(
        value: list, refused_at: str | None, language: str, lua_version: str) -> None:
    @tool
    def give() -> Any:
        """Gives the list."""
        return value

    limit = 2**63 - 1 if language == "lua" and lua_version != "luajit" else 2**53 - 1
    if refused_at is None and any(abs(x) > limit + (x < 0) for x in value):
        refused_at = "result[0]"
    host = Host([give], timeout=10, on_output=lambda line: None)
    source = ("local r = tools.give{} return {n = #r, r = r}" if language == "lua" else
              "async function main() { const r = await tools.give({}); "
              "return {n: r.length, r}; }")
    try:
        seen = host.run_source(source, language, "agent.lua" if language == "lua"
                               else "agent.js")
    except SpellError as exc:
        assert refused_at is not None, exc
        assert exc.code == "script/cross_engine_communication"
        assert f"python -> {language} - " in str(exc) and " is an integer " in str(exc)
    else:
        assert refused_at is None, seen
        empty = {} if language == "lua" else []  # (an empty Lua table reads as {})
        assert seen == {"n": len(value), "r": [int(x) for x in value] or empty}
        assert all(type(x) is int for x in seen["r"])


@pytest.mark.xfail(strict=True, reason="pre-existing: an int past 2**53 in a tool's list for "
                   "LuaJIT is named by the engine's walk with Lua's index (result[2] for the "
                   "second value: engines/lua.py _check_data), one past 2**63 by host.data "
                   "with Python's (result[1]), for every Lua")
def test_luajit_names_a_tools_too_large_int_as_the_other_luas_do(lua_version: str) -> None:
    if lua_version != "luajit":
        pytest.xfail("the other Luas: the case is LuaJIT's")

    @tool
    def give() -> Any:
        """Gives an int past 2**53 second."""
        return [1, 2**60]

    host = Host([give], timeout=10, on_output=lambda line: None)
    with pytest.raises(SpellError) as caught:
        host.run_source("return tools.give{}", "lua", "agent.lua")
    assert "python -> lua - result[1] is an integer" in str(caught.value)


def test_lua_unpacked_pieces_keep_every_value_exactly(lua_version: str) -> None:
    # _convert_array's sum only says a piece holds numbers and booleans: the values are
    # the piece's own (ints past 2**53 whose sum rounds, -0.0, inf + -inf, "1", booleans)
    if lua_version == "luajit":
        big = "2^53, -(2^53), 2^53, 2^52 + 1"  # (its numbers are doubles)
        expected_big = [2**53, -(2**53), 2**53, 2**52 + 1]
    else:
        big = "math.maxinteger, math.mininteger, (1 << 53) + 1, math.maxinteger - 1"
        expected_big = [2**63 - 1, -(2**63), 2**53 + 1, 2**63 - 2]
    source = f"""local t = {{{big}, -0.0, 1e308, 1e308, true, false}}
for i = 10, 40 do t[i] = i end
local u = {{1, 2, "1", 3}}
for i = 5, 40 do u[i] = i end
return {{t = t, u = u}}
"""
    kind, value = lua_run(source)
    assert kind == "value", value
    t = value["t"]
    assert t[:4] == expected_big and all(type(x) is int for x in t[:4])
    assert t[4] == 0 and t[5:7] == [1e308, 1e308]
    if lua_version != "luajit":  # (LuaJIT's integral numbers come as ints)
        assert math.copysign(1, t[4]) == -1
    assert t[7:9] == [True, False] and t[9:] == list(range(10, 41))
    assert value["u"] == [1, 2, "1", *range(3, 4), *range(5, 41)]


# numbers() took any RangeError whose message starts with "too many arguments" for
# Reflect.apply's own: a getter that threw one once was swallowed (JSON.stringify's second
# read then gave the data); only the error Reflect.apply itself throws (its raw stack's
# first frames) sends the array the usual way now.
@pytest.mark.parametrize("language", ["javascript"])
def test_js_a_getter_throwing_a_look_alike_range_error_once_is_not_swallowed(
        language: str, monkeypatch: pytest.MonkeyPatch) -> None:
    source = """async function main() {
  let n = 0;
  const a = Array(20).fill(1);
  Object.defineProperty(a, 3, {get() {
    if (n++ === 0) throw new RangeError('too many arguments (mine)');
    return 7;
  }});
  return await tools.take({values: a});
}"""
    fast, slow = fast_and_slow(source, monkeypatch)
    assert slow[0] == "error"
    assert fast == slow
    # an engine's own RangeError, but a getter's (Reflect.apply in the script's code)
    own = source.replace("throw new RangeError('too many arguments (mine)')",
                         "Reflect.apply(Math.max, null, {length: 70000})")
    fast, slow = fast_and_slow(own, monkeypatch)
    assert slow[0] == "error" and "too many arguments" in slow[3]
    assert fast == slow
