"""The fast paths for structured data (issue 17) give what the slow paths gave: the same
data, of the same types, and for data that cannot cross the same error (code, message,
path). Each fast path is compared with its slow path in the same test (the fast one
switched off with monkeypatch), in both languages, on real engines."""

from __future__ import annotations

import enum
import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engines.javascript as javascript_engine
import engines.lua as lua_engine
import host.data as host_data
from bridge import SpellError
from bridge.data import MAX_DEPTH
from engines.base import Suspended
from host import Host, tool
from host.data import to_script_data

INT64 = (-(2**63), 2**63 - 1)


def typed(value: Any) -> Any:
    """``value`` with every scalar's type beside it (1 == 1.0 == True in Python)."""
    if isinstance(value, dict):
        return ("dict", [(type(k).__name__, k, typed(v)) for k, v in value.items()])
    if isinstance(value, list | tuple):
        return (type(value).__name__, [typed(v) for v in value])
    return (type(value).__name__, repr(value))


def outcome(fn: Any, *args: Any) -> Any:
    """What ``fn(*args)`` came to: its value (typed) or its error (class, code, message)."""
    try:
        return ("value", typed(fn(*args)))
    except SpellError as exc:
        return ("error", type(exc).__name__, exc.code, str(exc))


def nested(levels: int) -> list:
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


class Colour(enum.IntEnum):
    RED = 1


class Name(str):
    pass


def cyclic() -> list:
    value: list = [1]
    value.append(value)
    return value


# Plain data (the fast path copies it) and data that is not (the slow path says why).
RESULTS = [
    [], {}, [1, 2, 3], ["a", None, True, 1.5, float("nan")], {"a": [1, "x", None]},
    [{"id": i, "name": f"item {i}"} for i in range(50)],
    [1] * 40 + [2**53 + 1], [1] * 40 + [-(2**53) - 2], [2**63], [0, -(2**63) - 1],
    {"a": {"b": [1, {"c": 2**70}]}}, {"a": {1: "x"}}, {"a": {Name("k"): 1}},
    [1, {2, 3}], [1, (2, 3)], [True, 2**64], [1, Colour.RED], [Name("x"), "y"],
    nested(MAX_DEPTH), nested(MAX_DEPTH + 1), {"x": nested(MAX_DEPTH)}, cyclic(),
    [1, object()], {"a": [1, 2], "b": {"c": b"bytes"}},
]


@pytest.mark.parametrize("language", ["lua", "javascript"])
@pytest.mark.parametrize("value", RESULTS, ids=range(len(RESULTS)))
def test_tool_results_copied_fast_or_slow_alike(value: Any, language: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fast = outcome(to_script_data, value, language)
    monkeypatch.setattr(host_data, "_plain_copy", lambda *args: None)
    assert fast == outcome(to_script_data, value, language)


def test_a_plain_result_is_a_copy() -> None:
    value = {"a": [1, 2], "b": {"c": "d"}}
    copy = to_script_data(value, "lua")
    assert copy == value and copy is not value and copy["a"] is not value["a"]


shared = ["s" * 50, "t"]
LUA_HANDOFFS = [
    [1, 2, 3], ["a" * 41, "b" * 40, None, 1.5, True], {"k": "v" * 100, "n": [1, 2]},
    [shared, shared, {"x": shared}], [{"id": i, "name": "x" * i} for i in range(60)],
    [1, 2**63], [1, -(2**63) - 1], {"a": [1, {"b": 2**64}]}, {"a": {1: 2}}, [1, (2, 3)],
    [1, {3}], nested(MAX_DEPTH), nested(MAX_DEPTH + 1), cyclic(), [Name("x")], [Colour.RED],
]


@pytest.mark.parametrize("ints", [INT64, (-(2**53), 2**53)], ids=["lua", "luajit"])
@pytest.mark.parametrize("value", LUA_HANDOFFS, ids=range(len(LUA_HANDOFFS)))
def test_lua_plain_size_is_what_the_checking_walk_counts(value: Any, ints: tuple) -> None:
    size = lua_engine._plain_size(value, ints, 0, set())
    try:
        expected = lua_engine._check_data(value, "args", 0, {}, ints)
    except (lua_engine._NotData, lua_engine._Shared):
        expected = None
    if size is not None:
        assert size == expected
    if LUA_HANDOFFS.index(value) < 5:  # plain data is found plain; held twice, it is not
        assert (size is None) == (value == [shared, shared, {"x": shared}])  # see _unshared


@tool
def echo(values: Any) -> Any:
    """Gives its parameter back."""
    return values


@tool
def take(values: Any) -> Any:
    """Says what it was given: the values, typed."""
    return repr(typed(values))


@pytest.fixture
def host() -> Host:
    return Host([echo, take], timeout=20, on_output=lambda line: None)


def run(host: Host, language: str, lua: str, js: str) -> Any:
    return host.run_source(lua if language == "lua" else js, language,
                           "agent.lua" if language == "lua" else "agent.js")


def script_line(error: SpellError, file: str) -> int | None:
    """The line of the innermost frame of the script's own file."""
    return [frame for frame in error.frames if frame.file == file][-1].line


@pytest.mark.parametrize("length", [1, 2, 16383, 16384, 16385, 40000])
def test_lua_arrays_cross_whole_at_every_length(host: Host, length: int) -> None:
    # unpack reads 16384 values a call: the pieces' edges, and a piece of one value
    source = f"""
local data = {{}}
for i = 1, {length} do
  if i % 3 == 0 then data[i] = "s" .. i elseif i % 7 == 0 then data[i] = {{i, {{k = i}}}}
  else data[i] = i end
end
local back = tools.echo{{values = data}}
return {{#back, back[#back], tools.take{{values = data}}}}
"""
    expected = [i if i % 3 and i % 7 else f"s{i}" if i % 3 == 0 else [i, {"k": i}]
                for i in range(1, length + 1)]
    count, last, seen = host.run_source(source, "lua", "agent.lua")
    assert (count, last) == (length, expected[-1])
    assert seen == repr(typed(expected))


def test_lua_arrays_built_out_of_order_and_as_results(host: Host) -> None:
    source = """
local t = {}
for i = 300, 1, -1 do t[i] = i * 2 end  -- integer keys in the hash part
local f = {}
f[1] = 0.5 f[2] = "x" f[3] = false
return {t = t, f = f, e = {}, d = tools.echo{values = t}}
"""
    result = host.run_source(source, "lua", "agent.lua")
    assert result == {"d": [i * 2 for i in range(1, 301)], "e": {}, "f": [0.5, "x", False],
                      "t": [i * 2 for i in range(1, 301)]}


@pytest.mark.parametrize("tail", ["true", "false", "0.5", "1e308", "-1e308", "0/0",
                                  "math.maxinteger", "math.mininteger", "'x'", "{1}",
                                  "{k = 'é'}"])
def test_lua_arrays_of_numbers_and_one_other_value_cross_exactly(host: Host, tail: str) -> None:
    # Python adds a piece's values to see that it holds only numbers and booleans (then
    # nothing more is looked at): overflowing floats, 64-bit ints, and one value that stops
    # the sum anywhere in the piece
    for at in (1, 150, 300):
        source = f"""
local data = {{}}
for i = 1, 300 do data[i] = i % 2 == 0 and 1e308 or math.maxinteger end
data[{at}] = {tail}
local back = tools.echo{{values = data}}
return {{tools.take{{values = data}}, back[{at}] ~= back[{at}] or back[{at}] == data[{at}]
         or type(back[{at}]) == "table"}}
"""
        seen, same = host.run_source(source, "lua", "agent.lua")
        values = [1e308 if i % 2 == 0 else 2**63 - 1 for i in range(1, 301)]
        values[at - 1] = host.run_source(f"return {{{tail}}}", "lua", "x.lua")[0]
        assert seen.replace("nan", "NaN") == repr(typed(values)).replace("nan", "NaN")
        assert same is True


@pytest.mark.parametrize(("make", "problem"), [
    ("data[16385] = print", "params.values[16385] is a function"),
    ("data[16387] = 1", "params.values is an array with holes"),
    ("data.x = 1", "params.values mixes string and integer keys"),
    ("data[0] = 1", "params.values has a integer key"),
    ("data[9000] = {1, {nil, 2}}", "params.values[9000][2] is an array with holes"),
])
def test_lua_params_that_cannot_cross_still_name_the_place(host: Host, make: str,
                                                           problem: str) -> None:
    source = f"""local data = {{}}
for i = 1, 16385 do data[i] = i end
{make}
tools.echo{{values = data}}
"""
    with pytest.raises(SpellError) as info:
        host.run_source(source, "lua", "agent.lua")
    assert problem in str(info.value)
    assert script_line(info.value, "agent.lua") == 4


@pytest.mark.parametrize("scan", ["fast", "slow"])
def test_js_integers_past_2_53_come_as_the_same_doubles(host: Host, scan: str,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    if scan == "slow":
        monkeypatch.setattr(javascript_engine, "_beyond_safe", lambda value: True)
    source = """async function main() {
  const values = [1, 2 ** 53, -(2 ** 53), 2 ** 53 + 2, -(2 ** 60), 7, {n: 2 ** 60},
    Array.from({length: 400}, (_, i) => i)];  // a text long enough to be read natively
  return [await tools.take({values}), values, Array.from({length: 20000}, (_, i) => i)];
}"""
    seen, values, many = host.run_source(source, "javascript", "agent.js")
    expected = [1, 2**53, -(2**53), float(2**53 + 2), float(-(2**60)), 7, {"n": float(2**60)},
                list(range(400))]
    assert seen == repr(typed(expected))
    assert typed(values) == typed(expected)
    assert typed(many) == typed(list(range(20000)))


def test_js_ints_are_read_natively_only_when_none_is_past_2_53() -> None:
    long = "[" + ",".join(map(str, range(300))) + ",{\"n\":9007199254740993}]"
    assert javascript_engine._read_state(long)[-1] == {"n": float(2**53 + 1)}
    assert type(javascript_engine._read_state(long.replace("993}", "992}"))[-1]["n"]) is int
    assert not javascript_engine._beyond_safe([0, 0, {"values": [2**53, -(2**53)]}, "x"])
    assert javascript_engine._beyond_safe([0, 0, {"values": [1, 2**53 + 1]}])
    assert javascript_engine._beyond_safe({"a": [{"b": [[-(2**53) - 1]]}]})
    assert not javascript_engine._beyond_safe([True, 1.5e300, None, "9" * 30])


LONG = 20000


def test_js_long_strings_cross_exactly(host: Host) -> None:
    source = f"""async function main() {{
  let rope = "ab";
  while (rope.length < {LONG}) rope = rope + rope + "c";  // concatenation: a rope
  const quoted = '"\\\\\\n\\u0001é😀'.repeat({LONG} / 10);
  const lone = "x".repeat({LONG}) + "\\ud800";
  const lookAlike = "\\u0000" + "0123456789abcdef:0";
  const values = {{rope, quoted, lone, lookAlike, list: [quoted, rope, {{deep: lone}}]}};
  const back = await tools.echo({{values}});
  return [await tools.take({{values}}), back.rope === rope && back.quoted === quoted
    && back.lone === lone && back.lookAlike === lookAlike && back.list[2].deep === lone,
    values];
}}"""
    rope = "ab"
    while len(rope) < LONG:
        rope = rope + rope + "c"
    quoted = '"\\\n\x01é😀' * (LONG // 10)
    lone = "x" * LONG + "\ud800"
    expected = {"rope": rope, "quoted": quoted, "lone": lone,
                "lookAlike": "\0" + "0123456789abcdef:0", "list": [quoted, rope, {"deep": lone}]}
    seen, same, result = host.run_source(source, "javascript", "agent.js")
    assert seen == repr(typed(expected))
    assert same is True
    assert typed(result) == typed(expected)


def test_js_long_strings_in_params_without_a_json_form_still_name_the_place(host: Host
                                                                            ) -> None:
    source = f"""async function main() {{
  const text = "y".repeat({LONG});
  await tools.echo({{values: [text, text, () => 1]}});
}}"""
    with pytest.raises(SpellError) as info:
        host.run_source(source, "javascript", "agent.js")
    assert "params.values[2] is a function" in str(info.value)
    assert script_line(info.value, "agent.js") == 3


def test_js_long_strings_in_a_thrown_errors_fields_stay_text(host: Host) -> None:
    # json() for the prelude's own use (error fields) never hands strings over by a mark
    source = f"""async function main() {{
  try {{
    await tools.echo({{values: {{}}, extra: "z".repeat({LONG})}});
  }} catch (e) {{
    return [e.kind, typeof e.fields.parameters === "object" || typeof e.fields.parameters];
  }}
}}"""
    kind, _ = host.run_source(source, "javascript", "agent.js")
    assert kind == "invalid_parameters"


# Lua's flat parameters (issue 17): a few string keys with numbers, booleans or text leave
# the script as keys and values, not as a table; the request must be what the table path
# (check_table, then _from_lua) makes of the same parameters. The slow path is switched on
# by a prelude whose MAX_FLAT lets no table through.
FLAT_PARAMS = [
    "{a = 1, b = 2}", "{}", "{z = 'x', a = true, m = 1.5, b = false}", "{a = 1}",
    "{z = 1, a = 2}", "{['\u00e9'] = 1, z = 2}", "{['\u00e9'] = 1}", "{b = 'x', B = 'y'}",
    "{['\u00e9'] = '\u00fc', ['\\0k'] = 'v\\0', [''] = ''}", "{a = 0/0, b = -0.0}",
    "{a = math.huge, b = -math.huge}", "{a = math.maxinteger, b = math.mininteger}",
    "{a = 2^53 + 1, b = 1e300}", "{a = '\\xff'}", "{['\\xff'] = 1}", "{a = print}",
    "{a = 1, b = 2, c = 3, d = 4, e = 5, f = 6, g = 7, h = 8}",
    "{a = 1, b = 2, c = 3, d = 4, e = 5, f = 6, g = 7, h = 8, i = 9}",
    "{1, 2}", "{a = {}}", "{[1.5] = 1}", "{a = coroutine.create(print)}",
    "setmetatable({a = 1}, {__index = function() error('no') end, __pairs = error})",
]


def lua_request(params: str, slow: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    """What a Lua engine hands the host for ``tools.t(params)``: the request's name,
    params (typed), problem and call site, or the step it came to instead."""
    assert "local MAX_FLAT = 8" in lua_engine.PRELUDE
    if slow:
        monkeypatch.setattr(lua_engine, "PRELUDE", lua_engine.PRELUDE.replace(
            "local MAX_FLAT = 8", "local MAX_FLAT = -1"))
    lua_engine.prelude_bytecode.cache_clear()
    try:
        engine = lua_engine.LuaEngine()
        source = f"local x = 1\nlocal r = tools.t({params})\nreturn r\n"
        step = engine.start(source, "agent.lua", {}, [], time.monotonic() + 10)
    finally:
        monkeypatch.undo()
        lua_engine.prelude_bytecode.cache_clear()
    if not isinstance(step, Suspended):
        return type(step).__name__, getattr(step, "error", None) and step.error.code
    [request] = step.requests
    return (request.tool, typed(request.params), request.problem,
            [(f.file, f.line, f.function) for f in request.frames])


@pytest.mark.parametrize("params", FLAT_PARAMS)
def test_lua_flat_params_are_what_the_table_path_makes(params: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    fast = lua_request(params, False, monkeypatch)
    assert fast == lua_request(params, True, monkeypatch)
    if isinstance(fast[1], tuple) and fast[1][0] == "dict":  # keys in code point order
        keys = [key for _, key, _ in fast[1][1]]
        assert keys == sorted(keys)
    if len(fast) == 4:
        assert fast[3] == [("agent.lua", 2, "main chunk")]


def test_lua_flat_params_count_against_the_data_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # a flat table's strings count as the table walk counts them: past the budget the run
    # stops with the same error, on either path
    source = "local s = string.rep('x', 3 * 2^20)\nreturn tools.echo{values = s, a = s, b = s}\n"
    host = Host([echo], memory_mb=4, timeout=20, on_output=lambda line: None)
    codes = []
    for slow in (False, True):
        if slow:
            monkeypatch.setattr(lua_engine, "PRELUDE", lua_engine.PRELUDE.replace(
                "local MAX_FLAT = 8", "local MAX_FLAT = -1"))
        lua_engine.prelude_bytecode.cache_clear()
        try:
            with pytest.raises(SpellError) as info:
                host.run_source(source, "lua", "agent.lua")
        finally:
            monkeypatch.undo()
            lua_engine.prelude_bytecode.cache_clear()
        codes.append((info.value.code, str(info.value)))
    assert codes[0] == codes[1]
    assert codes[0][0] == "resource/memory_exhaustion"


# JS arrays of at least 16 finite numbers skip JSON.stringify's replacer (MIN_NUMBERS in the
# prelude): each case is run with that path and with it switched off (numbers() never
# called), and must give the same value, or the same error at the same line. `log`
# records what script code ran (getters, traps, toJSON), in order.
JS_ARRAYS = [
    "Array.from({length: 100}, (_, i) => i)",
    "Array.from({length: 20}, (_, i) => i * 1.5 - 7)",
    "[-0, 0, 2 ** 53, -(2 ** 53), 2 ** 53 + 2, -(2 ** 60), 1e21, 5e-324, 1.7976931348623157e308,"
    " ...Array(16).fill(3)]",
    "[...Array(16).fill(1), NaN, 2]",
    "[...Array(16).fill(1), Infinity]",
    "[-Infinity, ...Array(16).fill(1)]",
    "(() => { const a = Array(20).fill(1); delete a[5]; return a; })()",
    "(() => { const a = Array(18).fill(1); a[30] = 2; return a; })()",
    "Array(20)",
    "[...Array(16).fill(1), 'x']",
    "[...Array(16).fill(1), null]",
    "[...Array(16).fill(1), true]",
    "[...Array(16).fill(1), undefined]",
    "[...Array(16).fill(1), [2]]",
    "[...Array(16).fill(1), {}]",
    "[...Array(16).fill(1), () => 1]",
    "[...Array(16).fill(1), Symbol('s')]",
    "[...Array(16).fill(1), 10n]",
    "[...Array(16).fill(1), new Number(5)]",
    "[...Array(16).fill(1), new Map()]",
    "[...Array(16).fill(1), {toJSON() { log.push('toJSON'); return 4; }}]",
    "(() => { Array.prototype.toJSON = function () { log.push('array toJSON'); "
    "return this.length; }; return Array(20).fill(2); })()",
    "(() => { Array.prototype.toJSON = function () { return [NaN, ...this]; }; "
    "return Array(20).fill(2); })()",
    "(() => { const a = Array(20).fill(1); Object.defineProperty(a, 3, {get() "
    "{ log.push('get 3'); return 7; }}); return a; })()",
    "(() => { const a = Array(20).fill(1); Object.defineProperty(a, 3, {get() "
    "{ log.push(new Error('here').stack); return 7; }}); return a; })()",
    "(() => { const a = Array(20).fill(1); Object.defineProperty(a, 3, {get() "
    "{ throw new TypeError('getter failed'); }}); return a; })()",
    "(() => { const a = Array(20).fill(1); Object.defineProperty(a, 3, {get() "
    "{ throw new RangeError('too many arguments in function call'); }}); return a; })()",
    "(() => { Object.defineProperty(Array.prototype, 5, {get() { log.push('proto 5'); "
    "return 9; }, set() { log.push('set 5'); }, configurable: true}); "
    "const a = Array(20).fill(1); delete a[5]; return a; })()",
    "new Proxy(Array(20).fill(1), {get(t, k) { log.push(String(k)); return t[k]; }})",
    "new Proxy(Array(20).fill(1), {get(t, k) { return k === '7' ? 'seven' : t[k]; }})",
    "Array(65535).fill(1)",
    "Array(65536).fill(1)",
    "new Proxy([], {get(t, k) { return k === 'length' ? 70000 : 1; }})",
    "(() => { const a = Array(20).fill(1); a.push(a); return a; })()",
    "(() => { const a = Array(20).fill(1); return [a, a, {b: a}]; })()",
    "(() => { let v = Array(20).fill(1); for (let i = 0; i < 98; i++) v = [v]; return v; })()",
    "(() => { let v = Array(20).fill(1); for (let i = 0; i < 99; i++) v = [v]; return v; })()",
]


def js_outcome(source: str, **options: Any) -> Any:
    host = Host([echo, take], timeout=20, on_output=lambda line: None, **options)
    try:
        return ("value", host.run_source(source, "javascript", "agent.js"))
    except SpellError as exc:
        return ("error", type(exc).__name__, exc.code, str(exc), script_line(exc, "agent.js"),
                [(frame.file, frame.line, frame.function) for frame in exc.frames])


def fast_and_slow(source: str, monkeypatch: pytest.MonkeyPatch, **options: Any) -> list:
    outcomes = []
    for slow in (False, True):
        if slow:
            switched = javascript_engine.PRELUDE.replace(
                "const placeholder = numbers(value);", "const placeholder = null;")
            assert switched != javascript_engine.PRELUDE
            monkeypatch.setattr(javascript_engine, "PRELUDE", switched)
        try:
            outcomes.append(js_outcome(source, **options))
        finally:
            monkeypatch.undo()
    return outcomes


@pytest.mark.parametrize("values", JS_ARRAYS, ids=range(len(JS_ARRAYS)))
def test_js_number_arrays_cross_fast_or_slow_alike(values: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    source = f"""async function main() {{
  const log = [];
  const values = {values};
  const seen = await tools.take({{values}});
  return [seen, log];
}}"""
    fast, slow = fast_and_slow(source, monkeypatch)
    assert fast == slow
    if values.startswith("Array.from({length: 100}"):
        assert fast == ("value", [repr(typed(list(range(100)))), []])


def test_js_number_arrays_in_params_and_results_count_against_the_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 5 arrays of 60,000 numbers: 64 bytes a value, past a 16 MiB run's budget
    source = """async function main() {
  const a = Array(60000).fill(1);
  const fits = await tools.take({values: [a, a]});
  await tools.take({values: [a, a, a, a, a]});
}"""
    fast, slow = fast_and_slow(source, monkeypatch, memory_mb=16)
    assert fast == slow
    assert fast[0] == "error" and fast[2] == "resource/memory_exhaustion", fast
    assert "needs more than" in fast[3] or "memory" in fast[3], fast
    # a tool's result from a JS tools file takes the same path
    source = """async function main() { return Array.from({length: 300}, (_, i) => i * 3); }"""
    assert fast_and_slow(source, monkeypatch) == [("value", list(range(0, 900, 3)))] * 2


def test_js_number_arrays_echoed_back_exactly(host: Host) -> None:
    source = """async function main() {
  const values = [...Array.from({length: 1000}, (_, i) => i - 500), 0.5, -0, 2 ** 53 + 2,
    -(2 ** 60), 1e300];
  const back = await tools.echo({values});
  return back.length === values.length && back.every((v, i) => Object.is(v, values[i]) ||
    (v === 0 && values[i] === 0));
}"""
    assert host.run_source(source, "javascript", "agent.js") is True


def test_js_digit_runs_are_found_in_any_text() -> None:
    # a long text is looked through for 16 digits in a row (as bytes): non-ASCII text, a
    # lone surrogate, and digits in a string (a false alarm: read again, still right)
    filler = ",".join(["1"] * 400)
    for text, last in [(f'[{filler},"é😀\\ud800",9007199254740993]', float(2**53 + 1)),
                       (f'[{filler},"é😀",9007199254740992]', 2**53),
                       (f'[{filler},"x\ud800",-9007199254740993]', float(-(2**53) - 1)),
                       (f'[{filler},"12345678901234567",5]', 5)]:
        state = javascript_engine._read_state(text)
        assert state[-1] == last and type(state[-1]) is type(last), text


def test_js_a_getter_read_for_the_fast_path_throws_as_from_json(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # caught by the script, and not: the same error, message, frames (JS_ARRAYS has the
    # stack a getter sees)
    caught = """async function main() {
  const a = Array(20).fill(1);
  Object.defineProperty(a, 3, {get() { throw new TypeError("getter failed"); }});
  try {
    await tools.take({values: a});
  } catch (e) {
    return [e.name, e.message, e.stack];
  }
}"""
    fast, slow = fast_and_slow(caught, monkeypatch)
    assert fast == slow
    assert fast[1][1].endswith("TypeError: getter failed"), fast
    uncaught = """async function main() {
  const a = Array(20).fill(1);
  Object.defineProperty(a, 3, {get() { throw new TypeError("getter failed"); }});
  await tools.take({values: a});
}"""
    fast, slow = fast_and_slow(uncaught, monkeypatch)
    assert fast == slow and fast[0] == "error" and fast[4] == 4, fast


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
                    lambda inner: st.lists(inner, max_size=5)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=5), max_leaves=40))
def test_js_long_poll_text_reads_as_python_json_reads_it(value: Any) -> None:
    # a poll's text past _SMALL_TEXT is parsed by pydantic-core, else (a lone surrogate)
    # by json: both must give what json gives, types and all (ints past 2**53 as doubles)
    filler = list(range(400))
    for text in (json.dumps([0, filler, value], ensure_ascii=False, separators=(",", ":")),
                 json.dumps([0, filler, value], separators=(",", ":"))):
        expected = json.JSONDecoder(parse_int=javascript_engine._js_number).decode(text)
        assert typed(javascript_engine._read_state(text)) == typed(expected)


@pytest.mark.parametrize("values", [
    [], list(range(-500, 500)), [True, False, 1, 2.5], [Colour.RED, 2, -0.0, 5e-324, 1e300],
    [2**53, 2**53 + 1, -(2**70), 1.7976931348623157e308, 0.1, 1e16, 1e-7],
    [1.0, float("nan")], [float("inf"), 1], [1e308, 1e308], [1, "x"], [1, [2]], [1, None]])
def test_js_number_lists_are_settled_as_json_writes_them(values: list) -> None:
    # a list of finite numbers is written by pydantic-core, any other by json: the text
    # JSON.parse reads gives the same values (or the same refusal: NaN, Infinity)
    from engines.base import ToolReply

    how, text = javascript_engine._settlement(ToolReply(1, result=values))
    try:
        expected = (1, json.loads(javascript_engine._encode(values)))
    except ValueError:
        expected = (2, None)
    assert (how, json.loads(text) if how == 1 else None) == expected
    if how == 1:
        assert typed(json.loads(text)) == typed(json.loads(javascript_engine._encode(values)))


SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
           | st.text() | st.sampled_from(["\ud800", "a\udfff", "\u2028\x00", "é"])
           | st.sampled_from([Colour.RED, ("t",), b"x", {1}]))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=6) | st.sampled_from(["__proto__", "\ud800", 1]),
                       SCALARS, max_size=18))
def test_js_small_dicts_are_written_as_json_writes_them(value: dict) -> None:
    # a tools-file call's params and a tool's dict result: a small dict of scalars is
    # written by pydantic-core, anything else by json; JSON.parse gives the same values,
    # and what json refuses (NaN, an enum, a tuple...) is refused alike
    try:
        expected = javascript_engine._encode(value)
    except (TypeError, ValueError) as exc:
        with pytest.raises(type(exc)):
            javascript_engine._json_text(value)
        return
    text = javascript_engine._json_text(value)
    assert typed(json.loads(text)) == typed(json.loads(expected))


@pytest.mark.parametrize("values", [[1, 2**64], [-(2**63) - 1] + [1] * 40, [2**63 - 1, -(2**63)]])
def test_lua_lists_of_ints_past_64_bits_are_refused_as_before(values: list) -> None:
    # a list of ints alone is handed to lupa, which refuses one past 64 bits as it copies:
    # the same error as a list the check walks first (a float after the ints)
    from engines.base import Failed
    from tests.engine_driver import drive

    outcomes = []
    for extra in ([], [0.5]):
        run = drive("lua", "local e = tools.give{} return #e",
                    tools={"give": lambda params, v=values + extra: v})
        if isinstance(run.step, Failed):
            outcomes.append((run.error.code, str(run.error)))
        else:
            outcomes.append(run.result - len(extra))
    assert outcomes[0] == outcomes[1]
    if all(-(2**63) <= v < 2**63 for v in values):
        assert outcomes[0] == len(values)
    else:
        assert "is an integer too large for Lua (64 bits)" in outcomes[0][1], outcomes


HOOK_BACK = """
import sys, time
from engines import Limits, ToolInfo, ToolReply, Suspended, Failed
from engines.lua import LuaEngine
engine = LuaEngine(limits=Limits(timeout=1.0), lua_version=sys.argv[2])
deadline = time.monotonic() + 1.0
step = engine.start(sys.argv[1], "agent.lua", None, [ToolInfo("take", "")], deadline)
while isinstance(step, Suspended):
    step = engine.resume([ToolReply(r.id, result=1) for r in step.requests], deadline)
print(step.error.code if isinstance(step, Failed) else step)
"""


@pytest.mark.parametrize("version", ["5.5", "5.4", "luajit"])
@pytest.mark.parametrize("where", ["script", "coroutine", "pcall", "nested"])
def test_lua_the_hook_is_back_after_an_array_is_checked_without_it(where: str,
                                                                   version: str) -> None:
    # the prelude checks an array of 256 to 65,536 numbers with the count hook off: it is
    # on again for the script's next loop, in the script's coroutine or its own (the engine
    # alone: a host would give up on the run at the deadline even if its thread spun on)
    call = "tools.take{values = data}"
    body = {"script": f"{call} while true do end",
            "coroutine": f"coroutine.wrap(function() {call} while true do end end)()",
            "pcall": f"pcall(function() {call} while true do end end)",
            "nested": "tools.take{values = {data, {data}}} while true do end"}[where]
    source = f"local data = {{}} for i = 1, 60000 do data[i] = i end\n{body}\n"
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", HOOK_BACK, source, version],
                         capture_output=True, text=True, timeout=30,
                         cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == "script/resource_exhaustion", out.stdout + out.stderr
