"""A JavaScript tools file's call that finishes at once with a plain value is told by the
prelude's callExport itself (no poll, no activation record), and only when no job runs
after it (engines/javascript.py ``JavaScriptEngine.call``). Each function here is called
both ways, the quick answer taken and ignored (then polled, as every call was before), and
the two must agree on everything the host sees: the step, the result and its Python type,
the console lines, the requests, the error, and the calls after it.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from engines.base import Failed, Finished, Limits, Suspended, ToolReply
from engines.javascript import JavaScriptEngine

BODIES = {
    "sum": "return p.a + p.b;",
    "int as double": "return 3.0 * p.a;",
    "minus zero": "return -0;",
    "past int32": "return 2 ** 31;",
    "2**53": "return 2 ** 53;",
    "past 2**53": "return 2 ** 53 + 2;",
    "1e21": "return 1e21;",
    "1e20": "return 1e20;",
    "fraction": "return 0.1 + 0.2;",
    "tiny": "return 5e-324;",
    "nan": "return NaN;",
    "infinity": "return -Infinity;",
    "true": "return p.a === 1;",
    "null": "return null;",
    "undefined": "return undefined;",
    "no return": "state.n++;",
    "text": "return 'x' + p.a;",
    "object": "return {a: p.a};",
    "boxed number": "return new Number(3);",
    "printed first": "console.log('hi', p.a); return 1;",
    "a job prints after": "Promise.resolve().then(() => console.log('late')); return 2;",
    "a job changes state": "Promise.resolve().then(() => { state.n = 40; }); return state.n;",
    "a request left unawaited": "tools.t({x: 1}); return 3;",
    "a job makes a request": "Promise.resolve().then(() => tools.t({x: 2})); return 4;",
    "async": "return p.a + 1;",
    "throws": "throw new TypeError('no ' + p.a);",
    "a job throws": "Promise.reject(new Error('lost')); return 5;",
    "state": "return ++state.n;",
}
ASYNC = {"async"}
# told by callExport's answer (no poll): a plain value, nothing printed, no request, no job
QUICK = {"sum", "int as double", "minus zero", "past int32", "2**53", "past 2**53", "1e21",
         "1e20", "fraction", "tiny", "true", "null", "undefined", "no return", "state"}
POLLED = set(BODIES) - QUICK - {"a job throws"}  # (whether a rejection makes a job: quickjs')


def source() -> str:
    functions = [
        f"exports[{name!r}] = {'async ' if name in ASYNC else ''}function (p) {{ {body} }};"
        for name, body in BODIES.items()]
    return "const state = {n: 0};\n" + "\n".join(functions) + "\n"


def shown(value: Any) -> Any:
    """A result with its type, and nan as something == can compare."""
    if isinstance(value, float) and math.isnan(value):
        return ("nan",)
    return (type(value).__name__, repr(value))


def unheard(engine: JavaScriptEngine) -> None:
    """Make ``engine`` ignore its prelude's quick answers (callExport answering ""): every
    call is polled, as every call was before."""
    call_export = engine._call_export

    def nothing_said(*args: Any) -> Any:
        call_export(*args)
        return ""

    engine._call_export = nothing_said


def ended(engine: JavaScriptEngine, step: Any, deadline: float) -> tuple[Any, ...]:
    """How a call that began with ``step`` ended, its tool requests answered with 7: what
    the host sees of it (the result with its type, or the error; the lines; the
    requests)."""
    requests = []
    while isinstance(step, Suspended):
        requests += [(r.tool, r.params) for r in step.requests]
        step = engine.resume([ToolReply(r.id, result=7) for r in step.requests], deadline)
    if isinstance(step, Finished):
        return ("finished", shown(step.result), step.output, requests)
    assert isinstance(step, Failed), step
    return ("failed", step.error.code, step.error.message, step.output, requests)


def drive(quick: bool, names: list[str]) -> tuple[list[Any], int]:
    """Call each of ``names`` twice in one engine: what each call gave (see :func:`ended`),
    and how many were told by callExport's answer (no poll)."""
    taken = []
    polls = [0]
    engine = JavaScriptEngine(limits=Limits(timeout=5.0, memory_mb=64))
    deadline = time.monotonic() + 5.0
    seen: list[Any] = []
    try:
        engine.load(source(), "tools.js", [], deadline)
        poll = engine._poll

        def counted(*args: Any) -> Any:
            polls[0] += 1
            return poll(*args)

        engine._poll = counted
        if not quick:
            unheard(engine)
        for name in names * 2:
            before = polls[0]
            step = engine.call(name, {"a": 1, "b": 2}, deadline)
            taken.append(polls[0] == before)
            seen.append(ended(engine, step, deadline))
    finally:
        engine.close()
    return seen, sum(taken)


@pytest.mark.parametrize("name", list(BODIES))
def test_a_call_told_at_once_is_what_its_poll_says(name: str) -> None:
    quick, taken = drive(True, [name])
    slow, none = drive(False, [name])
    assert quick == slow
    assert none == 0
    if name in QUICK:
        assert taken == 2, quick
    elif name in POLLED:
        assert taken == 0, quick


def test_calls_in_a_row_keep_their_order_and_state() -> None:
    names = ["state", "a job changes state", "state", "a request left unawaited", "sum",
             "a job makes a request", "no return", "throws", "state", "a job prints after",
             "printed first", "state"]
    quick, taken = drive(True, names)
    slow, _ = drive(False, names)
    assert quick == slow
    assert taken > 0
    assert [entry[1] for entry in quick if entry[0] == "finished"][-1] == ("int", "44")


def test_the_usual_results_read_as_their_json_text_does() -> None:
    seen, _ = drive(True, ["sum", "int as double", "minus zero", "past int32",
                           "past 2**53", "1e21"])
    results = [entry[1] for entry in seen[:6]]
    assert results == [("int", "3"), ("int", "3"), ("int", "0"), ("int", "2147483648"),
                       ("float", "9007199254740994.0"), ("float", "1e+21")]


def test_a_job_left_running_by_a_quick_call_still_has_the_time_limit() -> None:
    engine = JavaScriptEngine(limits=Limits(timeout=0.5, memory_mb=64))
    deadline = time.monotonic() + 0.5
    try:
        engine.load("exports.f = function () { Promise.resolve().then(() => { for (;;) {} });"
                    " return 1; };\n", "tools.js", [], deadline)
        started = time.monotonic()
        step = engine.call("f", {}, deadline)
        assert isinstance(step, Failed), step
        assert step.error.code == "script/resource_exhaustion"
        assert step.error.fields["resource_type"] == "time"
        assert time.monotonic() - started < 5.0
    finally:
        engine.close()


def test_many_quick_calls_keep_no_record_each() -> None:
    """Each call used to keep a record until its poll: the quick ones make none at all, so
    a file called a million times holds no more than one called once."""
    engine = JavaScriptEngine(limits=Limits(timeout=30.0, memory_mb=64))
    deadline = time.monotonic() + 30.0
    try:
        engine.load("exports.f = function (p) { return p.i; };\n"
                    "exports.live = function () { return Object.keys(globalThis).length; };\n",
                    "tools.js", [], deadline)
        engine.call("f", {"i": 0}, deadline)
        before = engine._ctx.memory()["memory_used_size"]
        for i in range(20_000):
            step = engine.call("f", {"i": i}, deadline)
        assert isinstance(step, Finished) and step.result == 19_999
        after = engine._ctx.memory()["memory_used_size"]
        assert after - before < 100_000, (before, after)
    finally:
        engine.close()
