"""The fast paths of making an error (issue 17: a caught tool failure's cost) give what
the slow paths give: the fields that skip pydantic are exactly what its strict
validation and dump return, and everything pydantic refuses is still refused with the
same error; the exception table remembers only classes no entry can match."""

from __future__ import annotations

import math
import typing
from typing import Any

import pytest

from bridge import SpellError, ToolError, variants, wrap
from bridge.errors import Json, _scalar_fields, _scalar_plan, _validate_fields


def _pydantic(variant: type[SpellError], fields: dict[str, Any]) -> Any:
    """What the fields model alone makes of ``fields``: the dump, or the error raised."""
    model = variant.fields_model
    try:
        return model.__pydantic_serializer__.to_python(
            model.__pydantic_validator__.validate_python(fields))
    except Exception as exc:  # compared by type only
        return type(exc)


def _value_for(annotation: Any) -> Any:
    if annotation is Json:
        return {"a": [1, "b", None, 2.5, True, {"c": []}]}
    options = typing.get_args(annotation) or (annotation,)
    kind = next((o for o in options if o is not type(None)), None)
    return {str: "text", int: 7, float: 1.5, bool: True}.get(kind, "text")


def _samples(variant: type[SpellError]) -> list[dict[str, Any]]:
    hints = typing.get_type_hints(variant)
    defaults = getattr(variant, "_field_defaults", {})
    full = {name: _value_for(hints[name]) for name in defaults}
    required = {name: full[name] for name, default in defaults.items() if default is ...}
    out = [full, required]
    for name in defaults:  # each field spoiled in turn, one way or another
        for bad in (math.nan, math.inf, True, 1, 1.0, None, ("t",), {1: "x"}, [math.nan],
                    {"k": {2, 3}}, "\ud800", 2**80, [[[[]]]], {"deep": _nested(40)}):
            out.append({**full, name: bad})
        out.append({key: value for key, value in full.items() if key != name})
    out.append({**full, "no_such_field": 1})
    out.append({**required, "no_such_field": 1})
    return out


def _nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize("variant", variants(), ids=lambda v: f"{v.category}/{v.kind}")
def test_fast_fields_are_what_pydantic_makes_or_left_to_it(variant: type[SpellError]) -> None:
    plan = _scalar_plan(variant)
    for fields in _samples(variant):
        expected = _pydantic(variant, fields)
        if plan is not None:
            fast = _scalar_fields(plan, fields)
            if fast is not None:  # taken: exactly pydantic's dump, keys in its order too
                assert fast == expected and list(fast) == list(expected), fields
                assert type(expected) is dict
        try:
            made = _validate_fields(variant, dict(fields))
        except SpellError as err:
            assert expected is not dict and isinstance(expected, type), (fields, err)
            assert err.code == "bridge/invalid_error"
        else:
            assert made == expected and list(made) == list(expected), fields


def test_the_usual_tool_failure_takes_the_fast_path_with_a_copy_of_its_parameters() -> None:
    params = {"query": "x", "nested": {"items": [1, 2.5, None]}}
    plan = _scalar_plan(ToolError.ExecutionFailed)
    assert plan is not None
    fields = {"tool_name": "t", "reason": "ValueError: no", "parameters": params,
              "execution_time": 0.25}
    fast = _scalar_fields(plan, fields)
    assert fast == _pydantic(ToolError.ExecutionFailed, fields)
    assert fast["parameters"] is not params  # a copy, as pydantic's dump is
    assert fast["parameters"]["nested"] is not params["nested"]
    # what only pydantic decides is left to it, and refused as before
    for spoiled in (math.nan, -math.inf, 3):
        assert _scalar_fields(plan, {**fields, "execution_time": spoiled}) is None
    with pytest.raises(SpellError) as caught:
        ToolError.ExecutionFailed(tool_name="t", reason="r", execution_time=math.nan)
    assert caught.value.code == "bridge/invalid_error"
    with pytest.raises(SpellError) as caught:
        ToolError.ExecutionFailed(tool_name="t", reason="r", typo="x")
    assert "unknown field 'typo'" in caught.value.message


class _Unmapped(Exception):
    pass


def test_the_exception_table_remembers_a_miss_only_until_it_changes() -> None:
    assert wrap.lookup(_Unmapped("a")) is None
    assert wrap.lookup(_Unmapped("b")) is None  # remembered: no entry matched
    wrap.register(_Unmapped, "network/timeout", lambda exc: {"endpoint": "e",
                                                            "duration": 1.0})
    try:
        assert wrap.lookup(_Unmapped("c")).code == "network/timeout"
    finally:
        wrap.unregister(_Unmapped)
    assert wrap.lookup(_Unmapped("d")) is None


def test_a_miss_decided_by_a_code_function_is_not_remembered() -> None:
    calls = []

    def code(exc: BaseException) -> str | None:
        calls.append(exc)
        return "network/timeout" if str(exc) == "slow" else None

    wrap.register(_Unmapped, code, lambda exc: {"endpoint": "e", "duration": 1.0})
    try:
        assert wrap.lookup(_Unmapped("fine")) is None
        assert wrap.lookup(_Unmapped("slow")).code == "network/timeout"
        assert len(calls) == 2
    finally:
        wrap.unregister(_Unmapped)


_DATA = [None, True, 0, -(2**80), 1.5, math.nan, -math.inf, "x", "\ud800", [], {}, [1, [2, [3]]],
         {"a": {"b": [None, 2.5]}}, {1: "x"}, {"a": (1, 2)}, [{1, 2}], {"a": object()},
         {"a": math.nan}, [[math.inf]], _nested(99), _nested(100), _nested(101),
         {"a": _nested(99)}, {"a": _nested(98)}]


@pytest.mark.parametrize("value", _DATA, ids=range(len(_DATA)))
def test_the_plain_check_of_parameters_agrees_with_the_walk_that_names_a_path(value: Any
                                                                              ) -> None:
    from bridge.data import MAX_DEPTH, plain_json_copy
    from host.data import not_json_like, preview

    if type(value) in (list, dict) and plain_json_copy(value, MAX_DEPTH) is not None:
        # plain: the walk finds nothing either, and the copy is the value's
        assert not_json_like(value, "parameters") is None
        assert plain_json_copy(value, MAX_DEPTH) == value
    assert (preview(value) is value) == (len(repr(value)) <= 2000 and isinstance(
        value, dict | list | str | int | float | bool | type(None))
        and not_json_like(value, "parameters") is None)


def _envelopes() -> list[Any]:
    from bridge.envelope import error_envelope

    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise ValueError("outer " + "x" * 300) from inner
    except ValueError as exc:
        wrapped = ToolError.wrap(exc, tool_name="t", reason="r",
                                 parameters={"q": [1, 2.5, None, {"deep": "y"}]})
    made = [error_envelope(wrapped), error_envelope(wrapped, ref=lambda err: 2**53),
            error_envelope(ToolError.Timeout(tool_name="t", duration=1.0, retry_after=2))]
    spoiled = []
    for envelope in made[:2]:
        for key, bad in (("ref", 2**70), ("ref", "1"), ("retry_after", 2**70),
                         ("message", 3), ("fields", []), ("fields", {1: 2}), ("extra", 1),
                         ("fields", {"huge": 2**70}), ("retryable", None)):
            spoiled.append({**envelope, key: bad})
            spoiled.append({**envelope, "cause": {**envelope["cause"], key: bad}})
        spoiled.append({k: v for k, v in envelope.items() if k != "name"})
    shared = dict(made[0])
    shared["cause"] = {**shared["cause"], "fields": shared["fields"]}  # one dict twice
    looped = dict(made[0])
    looped["cause"] = looped  # a cycle: only a pickled envelope could hold one
    return [*made, *spoiled, shared, looped]


@pytest.mark.parametrize("number", range(len(_envelopes())))
def test_an_error_envelope_is_sized_for_lua_as_any_data_is(number: int) -> None:
    from engines.lua import _INT53, _INT64, _envelope_size, _plain_size

    envelope = _envelopes()[number]
    for ints in (_INT64, _INT53):
        size = _envelope_size(envelope, ints)
        if size is not None:  # taken: the same figure, for the same plain data
            assert size == _plain_size(envelope, ints, 0, set())
    if number < 3:
        assert _envelope_size(envelope, _INT64) is not None  # the host's own: taken


def test_wrapping_a_tool_exception_describes_it_once_when_the_reason_is_given() -> None:
    described = []

    class Loud(Exception):
        def __str__(self) -> str:
            described.append(1)
            return "loud"

    err = ToolError.wrap(Loud(), tool_name="t", reason="given")
    assert err.fields["reason"] == "given" and described == []
    assert ToolError.wrap(Loud(), tool_name="t").fields["reason"].endswith("Loud: loud")
    assert described == [1]


def _user_raise() -> None:
    raise ValueError("from user code")


def test_own_frames_are_the_frames_that_are_not_polyspells_made_the_short_way() -> None:
    from bridge.frames import Frame, is_internal

    def slow(err: SpellError) -> list[Frame]:
        return [frame for frame in err.frames if not is_internal(frame)]

    try:
        _user_raise()
    except ValueError as exc:
        wrapped = ToolError.wrap(exc, tool_name="t")  # frames pending: read on first use
    assert wrapped.own_frames() == slow(wrapped)
    assert [f.function for f in wrapped.own_frames()][-1] == "_user_raise"
    try:
        ToolError.ExecutionFailed(tool_name="t", reason="r", execution_time=math.nan)
    except SpellError as refused:  # raised inside bridge: every frame is polyspell's own
        inner = refused
    assert inner.own_frames() == slow(inner)
    assert len(inner.frames) > len(inner.own_frames())  # bridge's own frames left out
    try:
        raise ToolError.ExecutionFailed(tool_name="t", reason="r")
    except SpellError as raised:  # no frames given: its traceback's
        assert raised.own_frames() == slow(raised) and raised.own_frames()
    given = ToolError.ExecutionFailed(tool_name="t", reason="r", frames=[
        Frame("lua", "a.lua", 3), Frame("python", __file__, 1),
        Frame("python", SpellError.__init__.__code__.co_filename, 2)])  # bridge's own
    assert given.own_frames() == slow(given) and len(given.own_frames()) == 2


def _state(err: SpellError) -> dict[str, Any]:
    """Everything an error shows, its context's time left out (made when read)."""
    data: Any = err.to_dict()
    level = data
    while level is not None:
        level.pop("context")
        level = level.get("cause")
    return {"class": type(err), "data": data, "args": err.args, "order": list(err.fields), "dict": {
        k: v for k, v in vars(err).items()
        if k not in ("_created", "_frames_from", "_context", "_cause_view")}}


class _BrokenStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


class _Named(KeyError):
    pass


_Named.__qualname__ = "Elsewhere.Named"


@pytest.mark.parametrize("exc", [ValueError("v"), _BrokenStr(), _Named("k"), OSError(2, "x"),
                                 ValueError("\ud800"), ValueError("x" * 5000)],
                         ids=["plain", "broken-str", "qualname", "oserror", "surrogate", "long"])
def test_wrap_makes_through_the_shortcut_what_the_constructor_makes(exc: Exception) -> None:
    """SpellError.wrap builds its error (and a cause's view, whose fields it makes) without
    the constructor's keywords: the same error as the constructor makes from them."""
    for err in (ToolError.wrap(exc, tool_name="t", parameters={"a": [1]}, execution_time=0.5),
                SpellError.wrap(exc), ToolError.wrap(exc, tool_name="t").cause):
        assert err is not None
        slow = type(err)(frames=err.frames, cause=err.__cause__, **err.fields)
        assert _state(err) == _state(slow)
        assert err.frames == slow.frames and err.__cause__ is slow.__cause__


def test_wrap_keeps_the_constructor_for_what_the_shortcut_does_not_cover() -> None:
    """Fields named like the constructor's keywords, a variant with its own __init__, and
    fields given to a view are still the constructor's to take or refuse."""
    with pytest.raises(TypeError):  # as the constructor refuses a field named "frames"
        ToolError.wrap(ValueError("v"), tool_name="t", frames=[])
    err = ToolError.wrap(ValueError("v"), tool_name="t", severity="critical")
    assert err.severity.name == "CRITICAL"  # a keyword, not a field
    with pytest.raises(SpellError) as refused:  # a view's field of the wrong type
        SpellError.wrap(ValueError("v"), exception_message=3)
    assert refused.value.code == "bridge/invalid_error"
    made = []

    class Own(ToolError, kind="own_init_for_test", template="{tool_name}"):
        tool_name: str

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            made.append(kwargs.get("tool_name"))
            super().__init__(*args, **kwargs)

    try:
        assert ToolError.wrap(ValueError("v"), kind="own_init_for_test",
                              tool_name="t").message == "t"
        assert made == ["t"]
    finally:
        from bridge.errors import _VARIANTS
        _VARIANTS.pop(("tool", "own_init_for_test"), None)
