"""A tool failure delivered into JavaScript (issue 17, fifth pass): the usual envelope goes
flat (engines/javascript.py's ``_flat_error``: its values as the binding's own arguments,
not JSON text), and its errors are made with no stack of their own (the prelude's
``traceless``). Differential: the error a script catches, down to each property's
descriptor, its prototype chain, its stack and its cause chain, is the one the JSON text
gives (``_flat_error`` switched off), for usual and odd envelopes, and under a script that
replaced what the prelude could have used; an envelope the JSON text refuses fails the
run as it did.
"""

from __future__ import annotations

import enum
import math
import time
from typing import Any

import pytest

import engines.javascript as js_engine
from engines.base import Failed, Finished, Limits, Suspended, ToolInfo, ToolReply
from tests.engine_driver import make_engine

# What a script sees of a caught error, as JSON text (ASCII: JSON.stringify escapes a lone
# surrogate), written by the script itself.
DESCRIBE = r"""
function shape(value, depth) {
  if (value === null || (typeof value !== "object" && typeof value !== "function")) {
    return [typeof value, JSON.stringify(value), Object.is(value, -0)];
  }
  if (depth > 40) return "deep";
  const protos = [];
  for (let p = Object.getPrototypeOf(value); p !== null; p = Object.getPrototypeOf(p)) {
    const own = Object.getOwnPropertyDescriptor(p, "constructor");
    protos.push(own && typeof own.value === "function" ? own.value.name : "?");
  }
  const own = Reflect.ownKeys(value).map((key) => {
    const d = Object.getOwnPropertyDescriptor(value, key);
    return [String(key), d.writable, d.enumerable, d.configurable,
            "value" in d ? shape(d.value, depth + 1) : "accessor"];
  });
  const error = value instanceof Error;
  return {protos, own, isError: Error.isError(value), tag: Object.prototype.toString.call(value),
          isArray: Array.isArray(value),
          stack: error ? value.stack : null, name: error ? value.name : null,
          code: error ? value.code : null, text: error ? String(value) : null,
          tool: error ? value instanceof ToolError : null,
          spell: error ? value instanceof SpellError : null};
}
"""


def script(before: str = "", after: str = "") -> str:
    """A script that calls tools.t once, catches what it throws, and describes it."""
    return (DESCRIBE + "async function main() {\n" + before + "\n  let caught;\n"
            "  try {\n    await tools.t({a: 1});\n  } catch (e) {\n    caught = e;\n  }\n"
            + after + "\n  return JSON.stringify([shape(caught, 0), new Error('x').stack,"
            " Error.stackTraceLimit, signal.aborted, signal.reason === caught]);\n}\n")


def call_line(source: str) -> int:
    """The line of the script's ``await tools.t(...)``."""
    return source.count("\n", 0, source.index("await tools.t(")) + 1


def deliver(source: str, envelope: Any, flat: bool,
            monkeypatch: pytest.MonkeyPatch) -> tuple[Any, int]:
    """Run ``source``, answering its first call with ``envelope`` (flat, or as JSON text):
    how the run ended, and how many envelopes went flat."""
    made = []
    original = js_engine._flat_error

    def spy(value: Any) -> Any:
        out = original(value) if flat else None
        made.append(out is not None)
        return out

    monkeypatch.setattr(js_engine, "_flat_error", spy)
    engine = make_engine("javascript", limits=Limits(timeout=5.0, memory_mb=64))
    deadline = time.monotonic() + 5.0
    try:
        step = engine.start(source, "agent.js", None, [ToolInfo("t")], deadline)
        answered = False
        while isinstance(step, Suspended):
            request = step.requests[0]
            assert request.frames[-1].line == call_line(source) or answered
            reply = ToolReply(request.id, result=1) if answered else \
                ToolReply(request.id, error=envelope)
            answered = True
            step = engine.resume([reply], deadline)
    finally:
        engine.close()
        monkeypatch.setattr(js_engine, "_flat_error", original)
    if isinstance(step, Finished):
        return ("finished", step.result), sum(made)
    assert isinstance(step, Failed), step
    return ("failed", step.error.code, str(step.error)), sum(made)


def level(category: str = "tool", kind: str = "execution_failed", name: str = "ToolError",
          message: str = "Tool execution failed: explode - ValueError: no",
          fields: Any = None, cause: Any = None, **rest: Any) -> dict[str, Any]:
    """One level of an envelope, its keys in error_envelope's order."""
    return {"category": category, "kind": kind, "name": name, "message": message,
            "fields": fields, "retryable": rest.get("retryable", False),
            "retry_after": rest.get("retry_after"), "cause": cause,
            "ref": rest.get("ref", 7215514619036443)}


class Color(enum.IntEnum):
    RED = 3


class Text(str):
    pass


def usual() -> dict[str, Any]:
    """What a host sends for a tool that raised ValueError (bench.explode)."""
    return level(fields={"tool_name": "explode", "reason": "ValueError: no",
                         "parameters": {"reason": "no"}, "execution_time": 4.897e-05},
                 cause=level("runtime", "python_exception", "RuntimeError", "ValueError: no",
                             {"exception_type": "ValueError", "exception_message": "no"},
                             ref=5512281462551360))


def chain(depth: int) -> dict[str, Any]:
    out = None
    for i in range(depth):
        out = level(message=f"level {i}", fields={"i": i}, cause=out, ref=i)
    assert out is not None
    return out


FLAT = {  # each goes flat (at least the top level's values)
    "usual": usual(),
    "no fields, no cause": level(),
    "empty fields": level(fields={}),
    "ints": level(fields={"zero": 0, "minus": -1, "int32": 2**31 - 1, "past": 2**31,
                          "low": -2**31, "below": -2**31 - 1, "2**53": 2**53,
                          "past 2**53": 2**53 + 1, "2**64": 2**64, "huge": 10**30,
                          "bool": True, "none": None},
                  retry_after=5, ref=2**53),
    "small ref": level(ref=12, retry_after=2.5),
    "no ref": level(ref=None, retryable=True),
    "floats": level(fields={"-0": -0.0, "tiny": 5e-324, "max": 1.7976931348623157e308,
                            "tenth": 0.1, "whole": 3.0}, retry_after=-0.0),
    "texts": level(message="é中😀 a\0b \"quoted\"\n\u2028", fields={
        "empty": "", "nul": "a\0b", "wide": "é中😀", "long": "x" * 100_000,
        "é": "non-ASCII key"}),
    "a lone surrogate in a value": level(fields={"bad": "a\udc00b", "ok": "fine",
                                                 "nested": ["\ud800"]}),
    "keys": level(fields={"b": 1, "__proto__": {"polluted": True}, "10": 2, "1": 3,
                          "constructor": 4, "toString": 5, "length": 6, "": 7, "0": 8}),
    "nested": level(fields={"list": [1, "a", None, [2, [3, {"b": -0.0}]], {}],
                            "dict": {"x": {"y": {"z": [2**60]}}}, "empty": [],
                            "tuple": (1, 2), "enum": Color.RED, "str subclass": Text("t")}),
    "31 fields": level(fields={f"f{i}": [i] if i % 2 else i for i in range(31)}),
    "32 fields": level(fields={f"f{i}": i for i in range(32)}),
    "40 fields": level(fields={f"f{i}": {"i": i} for i in range(40)}),
    "a deep chain": chain(12),
    "a str subclass message": level(message=Text("m")),
    "unknown name": level(name="Nope", category="agent", kind="execution_failed"),
    "unknown category": level(name="Nope", category="nope", kind="nope", message="m"),
    "cancelled": level("async_execution", "task_cancelled", "AsyncError", "cancelled"),
    "timed out": level("async_execution", "task_timeout", "AsyncError", "too slow",
                       cause=level()),
}

# Not the usual kind: each crosses as JSON text, as before.
AS_JSON = {
    "a lone surrogate in the message": level(message="a\udc00"),
    "a lone surrogate in a key": level(fields={"a\udc00": 1}),
    "an int key": level(fields={1: "one", "b": 2}),
    "a None key": level(fields={None: 1}),
    "a bool ref": level(ref=True),
    "a huge ref": level(ref=2**60),
    "a string ref": level(ref="7"),
    "retryable None": level(retryable=None),
    "retry_after a bool": level(retry_after=True),
    "a missing key": {k: v for k, v in level().items() if k != "retry_after"},
    "a cause that is a list": level(cause=[1]),
    "a cause without keys": level(cause={"message": "m"}),
    "fields a list": level(fields=[1, 2]),
    "a name that is not a string": level(name=3),
}

REFUSED = {  # JSON text refuses these: the run fails as it did
    "NaN in fields": level(fields={"x": math.nan}),
    "inf retry_after": level(retry_after=math.inf),
    "NaN nested": level(fields={"x": [math.nan]}),
    "a set in fields": level(fields={"x": {1}}),
    "NaN in a cause": level(cause=level(fields={"x": -math.inf})),
}


@pytest.mark.parametrize("envelope", FLAT.values(), ids=FLAT.keys())
def test_a_flat_envelope_makes_the_error_the_json_text_made(
        envelope: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    flat, went_flat = deliver(script(), envelope, True, monkeypatch)
    slow, none = deliver(script(), envelope, False, monkeypatch)
    assert (went_flat, none) == (1, 0)
    assert flat == slow
    assert flat[0] == "finished"
    seen, fresh_stack, limit, aborted, reason = __import__("json").loads(flat[1])
    assert f"agent.js:{call_line(script())}:" in seen["stack"]  # the call site's stack
    assert "agent.js:" in fresh_stack and limit == 64  # the stack limit is back
    assert aborted == reason == (envelope["category"] == "async_execution")


@pytest.mark.parametrize("envelope", AS_JSON.values(), ids=AS_JSON.keys())
def test_an_unusual_envelope_goes_as_json_text(
        envelope: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    assert js_engine._flat_error(envelope) is None
    first, went_flat = deliver(script(), envelope, True, monkeypatch)
    second, _ = deliver(script(), envelope, False, monkeypatch)
    assert went_flat == 0 and first == second


@pytest.mark.parametrize("envelope", REFUSED.values(), ids=REFUSED.keys())
def test_an_envelope_without_a_json_form_fails_the_run_as_it_did(
        envelope: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    assert js_engine._flat_error(envelope) is None
    first, _ = deliver(script(), envelope, True, monkeypatch)
    second, _ = deliver(script(), envelope, False, monkeypatch)
    assert first == second and first[0] == "failed"


# Each replaces, before the first error (javascript_errors.js is compiled then), what the
# making of an error could have used; the error must be the JSON text's all the same.
HOSTILE = {
    "Object.prototype's setters": """
      for (const key of ["category", "kind", "fields", "retryable", "retry_after", "ref",
                         "cause", "message", "tool_name", "reason", "parameters", "0", "10",
                         "exception_type", "stack", "polluted"]) {
        Object.defineProperty(Object.prototype, key, {set(v) { this["_" + key] = v; },
          get() { return "forged"; }, configurable: true});
      }""",
    "Object.prototype.__proto__'s setter": """
      Object.defineProperty(Object.prototype, "__proto__", {set(v) { globalThis.hit = v; },
        get() { return null; }, configurable: true});""",
    "Array.prototype's setters": """
      for (const key of ["0", "1", "2"]) {
        Object.defineProperty(Array.prototype, key, {set(v) {}, get() { return "forged"; },
          configurable: true});
      }""",
    "the globals it could call": """
      tools.t;  // (the tool's function is made once: with the Object.defineProperty there was)
      JSON.parse = () => ({category: "forged", kind: "forged", name: "ToolError"});
      Object.setPrototypeOf = () => { throw new Error("forged"); };
      Object.defineProperty = () => { throw new Error("forged"); };
      Reflect.construct = () => ({forged: true});
      Function.prototype.call = function () { return "forged"; };
      Function.prototype.apply = function () { return "forged"; };
      Error.stackTraceLimit = 0;
      Error.captureStackTrace = () => {};""",
    "the classes' prototypes": """
      Object.defineProperty(ToolError.prototype, "stack", {set(v) {}, get() { return "f"; }});
      Object.setPrototypeOf(ToolError, function () { return {forged: true}; });""",
    "Symbol's hooks": """
      Object.defineProperty(Object.prototype, Symbol.toPrimitive,
        {value() { return "forged"; }, configurable: true});
      String.prototype.split = () => ["forged"];
      String.prototype.replace = () => "forged";""",
}


@pytest.mark.parametrize("hostile", HOSTILE.values(), ids=HOSTILE.keys())
@pytest.mark.parametrize("envelope", ["usual", "keys", "nested", "cancelled"])
def test_a_script_that_replaced_things_sees_what_the_json_text_gives(
        hostile: str, envelope: str, monkeypatch: pytest.MonkeyPatch) -> None:
    source = script(before=hostile)
    flat, went_flat = deliver(source, FLAT[envelope], True, monkeypatch)
    slow, _ = deliver(source, FLAT[envelope], False, monkeypatch)
    assert went_flat == 1
    assert flat == slow


def test_the_fields_are_own_data_properties_under_a_scripts_setters(
        monkeypatch: pytest.MonkeyPatch) -> None:
    source = script(before=HOSTILE["Object.prototype's setters"]
                    + HOSTILE["Object.prototype.__proto__'s setter"],
                    after="const fields = caught._fields;  // (the script's setter took them)\n"
                          "return JSON.stringify([Object.keys(fields), "
                          "Object.getPrototypeOf(fields) === Object.prototype, "
                          "Object.getOwnPropertyDescriptor(fields, 'reason').value, "
                          "Object.getOwnPropertyDescriptor(fields.parameters, 'reason').value, "
                          "Object.getOwnPropertyDescriptor(fields, '__proto__')]);")
    envelope = level(fields={"reason": "no", "parameters": {"reason": "yes"},
                             "__proto__": 1})
    outcome, went_flat = deliver(source, envelope, True, monkeypatch)
    assert went_flat == 1
    keys, plain, reason, nested, proto = __import__("json").loads(outcome[1])
    assert keys == ["reason", "parameters", "__proto__"] and plain
    assert (reason, nested) == ("no", "yes")
    assert proto == {"value": 1, "writable": True, "enumerable": True, "configurable": True}


def test_the_usual_tool_failure_goes_flat_through_a_host() -> None:
    from host import Host
    from scripts import bench

    seen: list[bool] = []
    original = js_engine._flat_error

    def spy(value: Any) -> Any:
        out = original(value)
        seen.append(out is not None)
        return out

    js_engine._flat_error = spy
    try:
        host = Host([bench.explode], on_output=lambda line: None)
        assert host.run_source(bench.JS_CATCH, "javascript", "b", {"n": 3, "call": True}) == 3
    finally:
        js_engine._flat_error = original
    assert seen == [True] * 3


def test_a_busy_loop_that_swallows_tool_failures_still_stops() -> None:
    engine = make_engine("javascript", limits=Limits(timeout=0.5, memory_mb=64))
    deadline = time.monotonic() + 0.5
    source = ("async function main() {\n  for (;;) {\n    try { await tools.t({}); }"
              " catch (e) { for (let i = 0; i < 1000; i++) new Error('x'); }\n  }\n}\n")
    try:
        step = engine.start(source, "agent.js", None, [ToolInfo("t")], deadline)
        while isinstance(step, Suspended):
            step = engine.resume([ToolReply(r.id, error=usual()) for r in step.requests],
                                 deadline)
    finally:
        engine.close()
    assert isinstance(step, Failed) and step.error.fields["resource_type"] == "time", step
