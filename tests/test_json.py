"""Errors as JSON: the round trip for every variant, and clear errors for bad input."""

from __future__ import annotations

import json

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from bridge import BridgeError, Frame, SpellError, ToolError, variants
from bridge.errors import MAX_CAUSE_DEPTH
from tests.strategies import error_chains, errors, json_values


def assert_same_error(back: SpellError, sent: SpellError) -> None:
    """Equal class, fields, message, severity, retry policy, frames, context and causes."""
    pairs = list(zip(back.chain(), sent.chain(), strict=True))
    for got, want in pairs:
        assert type(got) is type(want)
        assert got.fields == want.fields
        assert got.message == want.message
        assert got.severity is want.severity
        assert (got.retryable, got.retry_after) == (want.retryable, want.retry_after)
        assert got.frames == want.frames
        assert got.context == want.context


@pytest.mark.parametrize("variant", variants(), ids=lambda v: f"{v.category}/{v.kind}")
def test_round_trip_of_every_variant(variant):
    @settings(max_examples=8, deadline=None)
    @given(errors(variant))
    def check(err):
        text = err.to_json()
        data = json.loads(text)
        assert set(data) >= {"category", "kind", "message", "severity", "fields", "frames",
                             "cause", "context"}
        assert (data["category"], data["kind"]) == (variant.category, variant.kind)
        assert_same_error(SpellError.from_json(text), err)

    check()


@settings(max_examples=60, deadline=None)
@given(error_chains(depth=3))
def test_round_trip_of_three_deep_cause_chains_with_frames_of_every_language(err):
    back = SpellError.from_json(err.to_json(indent=2))
    assert len(list(back.chain())) == 3
    assert_same_error(back, err)
    assert back.__cause__ is back.cause  # causes come back as real __cause__


def test_frames_of_all_languages_survive():
    frames = [
        Frame("javascript", "agent.js", 12, 5, "main", "await tools.lookup({})"),
        Frame("host", "tool boundary", None, None, "lookup"),
        Frame("lua", "helpers.lua", 3, None, "lookup", "return tools.search{q = q}"),
        Frame("python", "tools.py", 40, 9, "search", "raise ValueError(q)"),
    ]
    err = ToolError.NotFound(tool_name="search", frames=frames)
    assert SpellError.from_json(err.to_json()).frames == frames


def test_a_plain_python_cause_comes_back_as_python_exception():
    try:
        raise ToolError.ExecutionFailed(tool_name="t", reason="r") from LookupError("gone")
    except ToolError as exc:
        back = SpellError.from_json(exc.to_json())
    assert back.cause.code == "runtime/python_exception"
    assert back.cause.fields == {"exception_type": "LookupError", "exception_message": "gone"}


def test_minimal_hand_written_json_is_accepted():
    err = SpellError.from_json(
        '{"category": "tool", "kind": "timeout", "fields": {"tool_name": "s", "duration": 2}}')
    assert str(err) == "Tool timeout: s after 2.0s" and err.frames == []


def _good(**changes) -> dict:
    data = json.loads(ToolError.Timeout(tool_name="s", duration=2.0).to_json())
    data.update(changes)
    return data


BAD_INPUTS = {
    "not json": ("{", "$", "not valid JSON"),
    "not an object": ("[1, 2]", "$", "expected an error object, got array"),
    "a string": ('"tool/timeout"', "$", "got string"),
    "unknown key": (_good(kindd="x"), "$.kindd", "unknown key 'kindd'"),
    "missing category": ({"kind": "timeout"}, "$.category", "'category' must be a string"),
    "unknown category": (_good(category="magic"), "$.category", "unknown category 'magic'"),
    "unknown kind": (_good(kind="slow"), "$.kind", "unknown kind 'slow' for category 'tool'"),
    "fields not object": (_good(fields=[1]), "$.fields", "'fields' must be an object"),
    "missing field": (_good(fields={"tool_name": "s"}), "$.fields.duration",
                      "missing field 'duration'"),
    "wrong field type": (_good(fields={"tool_name": "s", "duration": "2"}), "$.fields.duration",
                         "Input should be a valid number"),
    "unknown field": (_good(fields={"tool_name": "s", "duration": 2, "x": 1}), "$.fields.x",
                      "unknown field 'x'"),
    "field named like an argument": (  # was a TypeError out of the constructor
        _good(fields={"tool_name": "s", "duration": 2, "retryable": True}),
        "$.fields.retryable", "unknown field 'retryable'"),
    "field named cause": (_good(fields={"tool_name": "s", "duration": 2, "cause": "x"}),
                          "$.fields.cause", "unknown field 'cause'"),
    "bad severity": (_good(severity="loud"), "$.severity", "unknown severity 'loud'"),
    "severity wrong type": (_good(severity=[1]), "$.severity", "severity must be"),
    "message wrong type": (_good(message=3), "$.message", "'message' must be a string"),
    "retryable wrong type": (_good(retryable="yes"), "$.retryable", "must be a boolean"),
    "frames not list": (_good(frames={"file": "x"}), "$.frames", "bad frame"),
    "frame bad language": (_good(frames=[{"language": "cobol", "file": "x"}]),
                           "$.frames[0].language", "bad frame"),
    "frame bad line": (_good(frames=[{"language": "lua", "file": "x", "line": "3"}]),
                       "$.frames[0].line", "bad frame"),
    "frame unknown key": (_good(frames=[{"language": "lua", "file": "x", "lien": 3}]),
                          "$.frames[0].lien", "bad frame"),
    "context wrong type": (_good(context={"error_id": 7}), "$.context.error_id", "bad context"),
    "context bad time": (_good(context={"timestamp": "yesterday"}), "$.context.timestamp",
                         "bad context"),
    "bad cause": (_good(cause={"category": "tool", "kind": "timeout", "fields": {}}),
                  "$.cause.fields.tool_name", "missing field"),
    "cause not object": (_good(cause="boom"), "$.cause", "expected an error object"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_gives_a_clear_bridge_error(name):
    raw, path, words = BAD_INPUTS[name]
    text = raw if isinstance(raw, str) else json.dumps(raw)
    with pytest.raises(BridgeError.DeserializationFailed) as info:
        SpellError.from_json(text)
    err = info.value
    assert err.category == "bridge"
    assert err.fields["path"] == path
    assert words in err.fields["reason"]
    assert str(err).startswith(f"Cannot read error JSON at {path}: ")


def test_bytes_and_non_text_input():
    err = ToolError.NotFound(tool_name="x")
    assert SpellError.from_json(err.to_json().encode()).fields == err.fields
    with pytest.raises(BridgeError.DeserializationFailed, match="not valid JSON"):
        SpellError.from_json(b"\xff\xfe")
    with pytest.raises(BridgeError.DeserializationFailed, match="not valid JSON"):
        SpellError.from_json(None)  # type: ignore[arg-type]


def test_a_cause_chain_too_deep_is_refused_not_a_recursion_error():
    data: dict = {"category": "tool", "kind": "not_found", "fields": {"tool_name": "x"}}
    for _ in range(MAX_CAUSE_DEPTH + 5):
        data = {"category": "tool", "kind": "not_found", "fields": {"tool_name": "x"},
                "cause": data}
    with pytest.raises(BridgeError.DeserializationFailed, match="cause chain deeper"):
        SpellError.from_dict(data)


ARBITRARY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(), c, max_size=3))


@st.composite
def edited_error_json(draw: st.DrawFn) -> dict:
    """An error's JSON with up to two top-level keys dropped or set to any JSON value:
    some are still errors (an optional key went), most are not."""
    data = json.loads(draw(error_chains(depth=2, min_depth=1)).to_json())
    for key in draw(st.lists(st.sampled_from(sorted(data)), max_size=2, unique=True)):
        if draw(st.booleans()):
            del data[key]
        else:
            data[key] = draw(json_values)
    return data


@settings(max_examples=300, deadline=None)
@given(st.one_of(ARBITRARY_JSON, edited_error_json()))
def test_any_json_is_read_as_the_error_it_says_or_refused_clearly(value):
    try:
        back = SpellError.from_json(json.dumps(value))
    except BridgeError.DeserializationFailed as refusal:  # never a raw exception
        assert refusal.fields["path"].startswith("$")
        return
    event("accepted")
    # what it read is what the JSON says...
    written = json.loads(back.to_json())
    for key in ("category", "kind", "cause"):
        if key in value:
            assert written[key] == value[key], key
    if isinstance(value.get("message"), str):  # null or none: the variant's own message
        assert back.message == value["message"]
    assert written["frames"] == (value.get("frames") or [])  # null or none: no frames
    given_fields = value.get("fields") or {}  # null or none: the defaults, if any
    assert {name: written["fields"][name] for name in given_fields} == given_fields
    # ...and writes and reads back as itself: class, fields, message, frames, causes
    assert_same_error(SpellError.from_json(back.to_json()), back)
