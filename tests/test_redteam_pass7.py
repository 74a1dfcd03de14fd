"""Red team, pass 7: tool-made Python data holding one list (or dict, tuple, model) in many
places, on its way to a script (issue 17, the data-bound fixes).

JSON writes such data out once for each place, as each engine gets it: one list held twice
at each of 40 levels is 2**40 places, a few hundred bytes in Python. Every copy the host
makes for a script is bounded by the run's memory limit; these tests name each way in
(results, errors, models, a worker process) and show that the data under that bound still
crosses whole. Real engines; memory_mb=16 keeps each refusal well under a second or two.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from pydantic import BaseModel

import bridge.errors as errors
from bridge import SpellError
from bridge.hierarchy import ToolError
from host import Host, StopRun, hooks, tool
from tests.conftest import pick

_VARIANT: list[type[ToolError]] = []


def shared_fields(**fields: Any) -> ToolError:
    """An error of a tool author's own variant, made on first use (at import, it would be
    in every other module's list of variants: the catalog's test compares it with the
    CLI's) and forgotten when this module's tests end."""
    if not _VARIANT:
        _VARIANT.append(type("SharedFields", (ToolError,), {
            "__annotations__": {"data": "Any"}, "data": None, "__module__": __name__},
            kind="redteam7_shared", template="shared fields"))
    return _VARIANT[0](**fields)


@pytest.fixture(autouse=True, scope="module")
def _forget_the_variant() -> Iterator[None]:
    yield
    errors._VARIANTS.pop(("tool", "redteam7_shared"), None)


def doubled(levels: int, leaf: Any = None) -> Any:
    """One value held twice at each of ``levels`` levels."""
    value = [1, "x"] if leaf is None else leaf
    for _ in range(levels):
        value = [value, value]
    return value


@tool
def error_with(levels: int, wide: bool = False) -> int:
    """Raise an error whose field (set after it was made, as a tool author may) is shared."""
    err = shared_fields(data=1)
    if wide:  # more fields than the flat form takes: the fields go as one JSON text
        err.fields.update({f"f{i}": i for i in range(40)})
    err.fields["data"] = doubled(levels)
    raise err


@tool
def error_long(n: int) -> int:
    """Raise an error whose field is a long list of ints (no sharing)."""
    err = shared_fields(data=1)
    err.fields["data"] = list(range(n))
    raise err


@tool
def nested_tuple(depth: int, width: int) -> object:
    """Dicts nested ``depth`` deep, each with a plain list; a tuple at the bottom."""
    value: object = {"t": (1, 2)}
    for _ in range(depth):
        value = {"big": list(range(width)), "next": value}
    return value


class Node(BaseModel):
    kids: list[Node] = []
    tag: str = "n"


@tool
def model(levels: int) -> Node:
    """A model whose submodel is held twice at each level."""
    node = Node()
    for _ in range(levels):
        node = Node(kids=[node, node])
    return node


class Frozen(Mapping):
    """A read-only mapping (not a dict)."""

    def __init__(self, data: dict) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


class Level(enum.IntEnum):
    LOW = 1


@tool
def shaped(shape: str, levels: int) -> object:
    """One value shared at each of ``levels`` levels, in the given shape."""
    if shape == "tuple":
        value: Any = (1, "x")
        for _ in range(levels):
            value = (value, value)
        return value
    if shape == "mapping":
        value = Frozen({"a": 1})
        for _ in range(levels):
            value = Frozen({"l": value, "r": value})
        return value
    if shape == "enum":
        return {"d": doubled(levels, [Level.LOW])}
    raise StopRun({"d": doubled(levels)})  # "stop"


@tool
async def later(levels: int) -> object:
    """An async tool's shared result."""
    return {"d": doubled(levels)}


TOOLS = [error_with, error_long, nested_tuple, model, shaped, later]


def _run(language: str, lua: str, js: str, **options: Any) -> Any:
    host = Host(TOOLS, on_output=lambda line: None, memory_mb=16, timeout=20,  # type: ignore[arg-type]
                **options)
    return host.run_source(pick(language, lua, js), language)


def _caught(language: str, lua_call: str, js_call: str, **options: Any) -> Any:
    """What a script that calls and catches sees: "ok", or the failure's code."""
    return _run(language,
                f"local ok, e = pcall(function() return {lua_call} end)\n"
                "if ok then return 'ok' end return e.code",
                f"async function main() {{ try {{ await {js_call}; return 'ok'; }} "
                "catch (e) { return e.code; } }", **options)


# -- errors: their fields were JSON-encoded whole for JavaScript (and for a worker) ----------

@pytest.mark.parametrize("wide", [False, True], ids=["flat", "many fields"])
def test_a_tool_error_holding_one_list_in_many_places_is_a_memory_error(
        language: str, wide: bool) -> None:
    # before: JavaScript's _flat_error (and the long way, _settlement) wrote 2**40 places
    # of JSON until the host ran out of memory; Lua copies within its limit and fails
    w = "true" if wide else "false"
    with pytest.raises(SpellError) as caught:
        _caught(language, f"tools.error_with{{levels = 40, wide = {w}}}",
                f"tools.error_with({{levels: 40, wide: {w}}})")
    assert caught.value.code == "resource/memory_exhaustion"
    assert "the tool's error did not fit" in caught.value.message
    assert "16 MiB" in caught.value.message


def test_a_shared_error_field_is_refused_before_a_worker_is_sent_it() -> None:
    # before: the wire's encoder wrote it out place by place (engines/wire.py frame)
    for language in ("lua", "javascript"):
        with pytest.raises(SpellError) as caught:
            _caught(language, "tools.error_with{levels = 40}",
                    "tools.error_with({levels: 40})", isolation="process")
        assert caught.value.code == "resource/memory_exhaustion", language
        assert "the tool's error did not fit" in caught.value.message
    # a few places: each whole, as in-process
    assert _run("javascript", "", "async function main() { try { await tools.error_with("
                "{levels: 2}); } catch (e) { return e.fields.data[1][0][1]; } }",
                isolation="process") == "x"


@pytest.mark.parametrize("wide", [False, True], ids=["flat", "many fields"])
def test_an_error_field_shared_a_few_times_crosses_whole(language: str, wide: bool) -> None:
    w = "true" if wide else "false"
    seen = _run(language,
                f"local ok, e = pcall(tools.error_with, {{levels = 2, wide = {w}}})\n"
                "local d = e.fields.data return {e.code, d[1][2][2], d[2][1][1], #d}",
                f"async function main() {{ try {{ await tools.error_with({{levels: 2, "
                f"wide: {w}}}); }} catch (e) {{ const d = e.fields.data; "
                "return [e.code, d[0][1][1], d[1][0][0], d.length]; } }")
    assert seen == ["tool/redteam7_shared", "x", 1, 2]


def test_a_long_error_field_still_crosses_whole(language: str) -> None:
    # past what goes flat in JavaScript (_FLAT_ROOM): the long way, within the limit
    assert _run(language, "local ok, e = pcall(tools.error_long, {n = 200000}) "
                "return {#e.fields.data, e.fields.data[200000]}",
                "async function main() { try { await tools.error_long({n: 200000}); } "
                "catch (e) { return [e.fields.data.length, e.fields.data[199999]]; } }"
                ) == [200_000, 199_999]


# -- results: every copy counted once, as made ---------------------------------------------

def test_a_tuple_under_nested_dicts_is_not_counted_once_a_level(language: str) -> None:
    # 90 lists of 1000 ints (~0.7 MB as counted) with a tuple at the bottom: each level's
    # failed look for plain data used to keep what it counted, 90 times the data: refused
    # as past 16 MiB. It fits, and crosses whole.
    seen = _run(language,
                "local r = tools.nested_tuple{depth = 90, width = 1000} local n = 0\n"
                "while r.big do n = n + #r.big r = r.next end return {n, r.t[2]}",
                "async function main() { let r = await tools.nested_tuple({depth: 90, "
                "width: 1000}); let n = 0; while (r.big) { n += r.big.length; r = r.next; } "
                "return [n, r.t[1]]; }")
    assert seen == [90_000, 2]


def test_a_model_sharing_a_submodel_is_counted_before_its_dump(language: str) -> None:
    # before: model_dump wrote the shared submodel out 2**40 times (a hang)
    assert _caught(language, "tools.model{levels = 40}",
                   "tools.model({levels: 40})") == "resource/memory_exhaustion"
    assert _run(language, "local m = tools.model{levels = 2} "
                "return {m.kids[2].kids[1].tag, #m.kids[1].kids[2].kids}",
                "async function main() { const m = await tools.model({levels: 2}); "
                "return [m.kids[1].kids[0].tag, m.kids[0].kids[1].kids.length]; }"
                ) == ["n", 0]


@pytest.mark.parametrize("shape", ["tuple", "mapping", "enum"])
def test_shared_results_of_every_shape_are_a_catchable_memory_error(
        language: str, shape: str) -> None:
    assert _caught(language, f"tools.shaped{{shape = '{shape}', levels = 40}}",
                   f"tools.shaped({{shape: '{shape}', levels: 40}})"
                   ) == "resource/memory_exhaustion"
    assert _run(language, f"local t = tools.shaped{{shape = '{shape}', levels = 2}} "
                "return #t ~= 0 or t.d ~= nil or t.l ~= nil",
                f"async function main() {{ const t = await tools.shaped({{shape: '{shape}', "
                "levels: 2}); return t !== null; }") is True


def test_an_async_tools_shared_result_is_a_catchable_memory_error(language: str) -> None:
    assert _caught(language, "tools.later{levels = 40}",
                   "tools.later({levels: 40})") == "resource/memory_exhaustion"


def test_a_stop_run_result_held_in_many_places_is_a_memory_error(language: str) -> None:
    with pytest.raises(SpellError) as caught:
        _run(language, "return tools.shaped{shape = 'stop', levels = 40}",
             "async function main() { return await tools.shaped({shape: 'stop', "
             "levels: 40}); }")
    assert caught.value.code == "resource/memory_exhaustion"


# -- JavaScript: no script forges the memory error of a tool's result ----------------------

@pytest.mark.parametrize("getter", [
    "throw null",
    "throw new InternalError('out of memory')",
    "const a = []; for (;;) a.push(new Array(1e5).fill(1))",
], ids=["null", "forged text", "fills memory"])
def test_a_then_getter_cannot_make_a_results_memory_error(getter: str) -> None:
    # the promise's resolve calls Object.prototype.then's getter: what it throws rejects
    # the call's promise (the script catches it), never the host's "did not fit"
    source = ("async function main() { Object.defineProperty(Object.prototype, 'then', "
              f"{{ get() {{ {getter}; }}, configurable: true }}); let out; "
              "try { await tools.shaped({shape: 'tuple', levels: 2}); out = 'ok'; } "
              "catch (e) { out = 'caught ' + String(e); } "
              "delete Object.prototype.then; return out; }")
    try:
        seen = _run("javascript", "", source)
    except SpellError as err:
        assert "did not fit" not in err.message, err
        return
    assert seen.startswith("caught") or seen == "ok"


# -- a run's args: the host's check walked each place, then JSON wrote each out --------------

def test_args_holding_one_list_in_many_places_are_a_memory_error(language: str) -> None:
    for options in ({}, {"isolation": "process"}):
        host = Host([], on_output=lambda line: None, memory_mb=16, **options)  # type: ignore[arg-type]
        with pytest.raises(SpellError) as caught:
            host.run_source(pick(language, "return 1", "async function main() { return 1; }"),
                            language, args={"d": doubled(40)})
        assert caught.value.code == "resource/memory_exhaustion", options
        assert "did not fit" in caught.value.message
    seen = Host([], on_output=lambda line: None).run_source(pick(
        language, "return {args.d[2][1][2], #args.d}",
        "async function main(args) { return [args.d[1][0][1], args.d.length]; }"),
        language, args={"d": doubled(2)})
    assert seen == ["x", 2]


def test_the_args_check_still_names_what_a_shared_list_holds_at_each_depth() -> None:
    from bridge import ConfigurationError

    host = Host([], on_output=lambda line: None)
    bad = [1, {1, 2}]
    with pytest.raises(ConfigurationError) as caught:
        host.run_source("return 1", "lua", args={"a": [bad, bad], "b": bad})
    assert "args.a[0][1]" in caught.value.message
    deep: Any = [1]
    for _ in range(95):
        deep = [deep]
    # fine 1 level down, too deep 10 levels down: looked at once per depth, not once
    with pytest.raises(ConfigurationError) as caught:
        host.run_source("return 1", "lua", args={"a": deep, "b": [[[[[[[[[[deep]]]]]]]]]]})
    assert "nested more than 100 levels deep" in caught.value.message
    assert "args.b" in caught.value.message


# -- a hook's answer in a tool's place: it does not pass the script_data layer ---------------

@pytest.mark.parametrize("levels, seen", [(40, "resource/memory_exhaustion"), (2, "x")])
def test_a_hooks_skip_result_held_in_many_places_is_bounded(
        language: str, levels: int, seen: str) -> None:
    # before: JavaScript's _settlement wrote 2**40 places of JSON (a hang); Lua copied
    # within its limit but failed the run, which the script could not catch
    @hooks.controller("before_tool_call")
    def cached(ctx: Any) -> Any:
        return hooks.Skip({"d": doubled(levels)})

    host = Host([later], hooks=[cached], on_output=lambda line: None, memory_mb=16)
    assert host.run_source(pick(
        language, "local ok, r = pcall(tools.later, {levels = 0})\n"
                  "if ok then return r.d[2][1][2] end return r.code",
        "async function main() { try { return (await tools.later({levels: 0})).d[1][0][1]; }"
        " catch (e) { return e.code; } }"), language) == seen


@pytest.mark.parametrize("levels, seen", [(40, "resource/memory_exhaustion"), (2, "x")])
def test_a_hooks_proceed_params_held_in_many_places_are_bounded(
        language: str, levels: int, seen: str) -> None:
    # before: the next controller's context copied the params once a place (a hang)
    @hooks.controller("before_tool_call")
    def widen(ctx: Any) -> Any:
        return hooks.Proceed(params={"levels": 0, "d": doubled(levels)})

    @hooks.controller("before_tool_call")
    def look(ctx: Any) -> Any:
        return hooks.Skip({"d": ctx.params["d"][1][0][1]})

    host = Host([later], hooks=[widen, look], on_output=lambda line: None, memory_mb=16)
    assert host.run_source(pick(
        language, "local ok, r = pcall(tools.later, {levels = 0})\n"
                  "if ok then return r.d end return r.code",
        "async function main() { try { return (await tools.later({levels: 0})).d; }"
        " catch (e) { return e.code; } }"), language) == seen
