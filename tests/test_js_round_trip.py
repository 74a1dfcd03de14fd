"""The JavaScript tool round trip's shortcuts (issue 17, fourth pass) against the long way.

Differential, as tests/test_redteam_round_trip.py is for Lua: the same script through the
engine as it is and with the shortcut switched off (the prelude's check of an object's
prototype before its three ``instanceof`` looks; the params of a poll looked through for
ints past 2**53 instead of its text for runs of 16 digits) must give the same requests,
results and errors. And the request's text is the prelude's alone: a script that replaces
the methods a template literal or a Map would call cannot forge a request's id, call site
or kind.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

import engines.javascript as js_engine
from tests.engine_driver import Run, drive

SHORTCUT = "prototype !== OBJECT_PROTOTYPE &&"


def js_main(body: str) -> str:
    return "async function main() {\n" + body + "\n}\n"


def echo(params: Any) -> Any:
    return params


def seen(run: Run) -> Any:
    """What a run gave, as data: each request and how the run ended."""
    requests = [(r.id, r.tool, r.kind, r.params, r.problem and r.problem.message,
                 [(f.file, f.line, f.function) for f in r.frames]) for r in run.requests]
    if hasattr(run.step, "result"):
        return requests, "result", run.step.result
    err = run.step.error  # type: ignore[union-attr]
    return requests, err.code, str(err), [(f.file, f.line) for f in err.frames]


def without_prototype_look(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every engine made from now on checks every object with the three instanceof."""
    text = js_engine.PRELUDE
    assert text.count(SHORTCUT) == 1, SHORTCUT
    monkeypatch.setattr(js_engine, "PRELUDE", text.replace(SHORTCUT, "true &&"))


PARAMS = {
    "plain": "{a: 1, b: 'x', c: true, d: null}",
    "nested": "{a: {b: [1, {c: 2}]}, d: []}",
    "a map": "new Map([[1, 2]])",
    "a map inside": "{m: new Map([[1, 2]])}",
    "a set inside": "{s: new Set([1])}",
    "a promise inside": "{p: Promise.resolve(1)}",
    "a map subclass": "(() => { class M extends Map {} return {m: new M()}; })()",
    "a plain object made a map": "{m: Object.setPrototypeOf({a: 1}, Map.prototype)}",
    "an array made a set": "{s: Object.setPrototypeOf([1, 2], Set.prototype)}",
    "no prototype": "{n: Object.assign(Object.create(null), {a: 1})}",
    "a proxy of a map": "{m: new Proxy(new Map(), {})}",
    "a proxy of an object": "{p: new Proxy({a: 1}, {})}",
    "a class instance": "(() => { class P { constructor() { this.x = 1; } } "
                        "return {p: new P()}; })()",
    "a date": "{d: new Date(0)}",
    "NaN inside": "{a: {b: NaN}}",
    "undefined inside": "{a: undefined}",
    "a function inside": "{f() {}}",
    "deep": "(() => { let v = 1; for (let i = 0; i < 150; i++) v = {v}; return v; })()",
}


@pytest.mark.parametrize("params", PARAMS.values(), ids=PARAMS.keys())
def test_the_prototype_look_refuses_and_passes_what_instanceof_did(
        params: str, monkeypatch: pytest.MonkeyPatch) -> None:
    source = js_main(f"try {{ return await tools.t({params}); }} "
                     f"catch (e) {{ return 'caught ' + e.message; }}")
    now = seen(drive("javascript", source, tools={"t": echo}))
    without_prototype_look(monkeypatch)
    assert now == seen(drive("javascript", source, tools={"t": echo}))


NUMBERS = {
    "flat": "{a: 2 ** 60, b: -(2 ** 54), c: 2 ** 53, d: 1}",
    "nested": "{a: [1, 2 ** 60], b: {c: {d: -(2 ** 60)}}}",
    "16 digits within 2**53": "{a: 1000000000000000, b: [9007199254740991]}",
    "floats": "{a: 1.5, b: 1e300, c: -0}",
    "a problem": "{a: 2 ** 60, f() {}}",
    "several at once": "await Promise.all([tools.t({a: 2 ** 60}), tools.t({b: [2 ** 61]}), "
                       "tools.t({c: 3})])",
    "a toJSON's number": "{toJSON() { return 2 ** 60; }}",
    "a toJSON's numbers": "await Promise.all([tools.t({toJSON() { return 2 ** 60; }}), "
                          "tools.t({toJSON() { return -(2 ** 61); }})])",
    "a result past 2**53": "2 ** 60",
    "a result within": "[2 ** 53, -(2 ** 53), 1000000000000000]",
    "a result nested": "({a: [1, {b: -(2 ** 70)}], c: 'x'.repeat(20)})",
}


@pytest.mark.parametrize("params", NUMBERS.values(), ids=NUMBERS.keys())
def test_polls_read_with_c_ints_give_what_the_careful_reading_gives(
        params: str, monkeypatch: pytest.MonkeyPatch) -> None:
    call = params if params.startswith(("await", "2", "[", "(")) else f"await tools.t({params})"
    source = js_main(f"try {{ return {call}; }} catch (e) {{ return 'caught ' + e.message; }}")
    now = seen(drive("javascript", source, tools={"t": echo}))
    for request in now[0]:
        for value in _numbers(request[3]):
            assert type(value) is float or abs(value) <= 2**53, request  # JS's own doubles
    # every poll read with the Python-level int parser
    monkeypatch.setattr(js_engine, "_native_scan", js_engine._scan)
    before = seen(drive("javascript", source, tools={"t": echo}))
    assert now == before
    assert [type(v) for v in _numbers(now[2])] == [type(v) for v in _numbers(before[2])]


def _numbers(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [n for item in value.values() for n in _numbers(item)]
    if isinstance(value, list):
        return [n for item in value for n in _numbers(item)]
    return [value] if type(value) in (int, float) else []


# Each replaces what the prelude's request text could have been made with, then calls.
FORGERS = {
    "String.prototype.concat": """
      const concat = String.prototype.concat;
      String.prototype.concat = function (...parts) {
        if (parts.length >= 5) return '1,[9,"    at forged (<input>:999:1)\\\\n"],["retry"],{}';
        return concat.apply(this, parts);
      };""",
    "Map's methods": """
      Map.prototype.get = function () { return 0; };
      Map.prototype.set = function () { return this; };
      Object.defineProperty(Map.prototype, "size", {get() { return 0; }});""",
    "Function.prototype.bind": """
      const bind = Function.prototype.bind;
      let leaked = null;
      Function.prototype.bind = function (...args) {
        if (leaked === null) leaked = this;
        return bind.apply(this, args);
      };
      tools.other;  // a tool function made after the script's bind
      if (leaked !== null) {
        leaked.call({name: "t", json: '["retry"]'}, {opts: null});
      }""",
    "Object.prototype's setters": """
      for (const key of ["0", "1", "2", "length", "site"]) {
        Object.defineProperty(Object.prototype, key, {set() {}, get() { return "x"; },
                                                      configurable: true});
      }""",
}


@pytest.mark.parametrize("forger", FORGERS.values(), ids=FORGERS.keys())
def test_a_script_cannot_forge_a_requests_text(forger: str) -> None:
    source = js_main("const first = await tools.t({a: 1});\n" + forger + "\n"
                     "const second = await tools.t({a: 2});\n"
                     "const third = await tools.t({a: 3});\n"
                     "return [first.a, second.a, third.a];")
    run = drive("javascript", source, tools={"t": echo})
    assert run.result == [1, 2, 3]
    assert [(r.tool, r.kind, r.params) for r in run.requests] == [
        ("t", "tool", {"a": 1}), ("t", "tool", {"a": 2}), ("t", "tool", {"a": 3})]
    lines = [[(f.file, f.line, f.function) for f in r.frames] for r in run.requests]
    last = source.count("\n", 0, source.index("tools.t({a: 3})")) + 1
    assert lines == [[("agent.js", 2, "main")], [("agent.js", last - 1, "main")],
                     [("agent.js", last, "main")]]


# -- a plain result: finished at once, and read without the time limit ------------------

PLAIN_RESULT = ('if (value === null || (typeof value !== "object" && typeof value !== '
                '"function")) {')
PLAIN_POLL = 'if (record.state !== "finished") return 0;'


def the_long_way_for_results(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every engine made from now on waits for a job to finish with any value, and reads
    every result with the time limit set."""
    text = js_engine.PRELUDE
    assert text.count(PLAIN_RESULT) == 1 and text.count(PLAIN_POLL) == 1
    monkeypatch.setattr(js_engine, "PRELUDE", text.replace(PLAIN_RESULT, "if (false) {")
                        .replace(PLAIN_POLL, "if (true) return 0;"))


RESULTS = {
    "int": "return p.n;", "float": "return 1.5;", "-0": "return -0;", "1e21": "return 1e21;",
    "past 2**53": "return 2 ** 60;", "NaN": "return NaN;", "Infinity": "return -Infinity;",
    "true": "return true;", "null": "return null;", "undefined": "return;",
    "a string": "return 'x\\n\"';", "an object": "return {a: p.n};",
    "a bigint": "return 10n;", "a symbol": "return Symbol('s');",
    "a function": "return function f() {};",
    "a promise": "return Promise.resolve(p.n);",
    "a thenable": "return {then(resolve) { resolve(p.n + 1); }};",
    "a toJSON": "return {toJSON() { console.log('toJSON'); return 7; }};",
    "a throw": "throw new TypeError('no');",
    "a call it does not wait for": "tools.t({a: p.n}).then((r) => console.log('got', r.a));\n"
                                   "return p.n;",
    "a job before it returns": "Promise.resolve().then(() => console.log('job'));\n"
                               "return p.n;",
    "a busy job after": "Promise.resolve().then(() => { for (;;) {} });\nreturn p.n;",
}


def call_export(body: str) -> Any:
    """A tools file's function with ``body``, called twice: each call's outcome as data."""
    from engines import Finished, Limits, ToolInfo
    from tests.engine_driver import converse, make_engine

    engine = make_engine("javascript", limits=Limits(timeout=0.5))
    deadline = time.monotonic() + 0.5
    try:
        source = "exports.f = function f(p) {\n" + body + "\n};\n"
        step = engine.load(source, "lib.js", [ToolInfo("t")], deadline)
        assert isinstance(step, Finished), step
        outcomes = []
        for n in (1, 2):
            step = engine.call("f", {"n": n}, deadline)
            run = converse(engine, step, {"t": echo}, deadline, Run(step))
            outcomes.append((*seen(run), run.output))
            if not engine.usable:
                break
        return outcomes
    finally:
        engine.close()


@pytest.mark.parametrize("body", RESULTS.values(), ids=RESULTS.keys())
def test_a_tools_files_plain_result_is_what_the_long_way_gives(
        body: str, monkeypatch: pytest.MonkeyPatch) -> None:
    now = call_export(body)
    the_long_way_for_results(monkeypatch)
    before = call_export(body)
    if "for (;;)" in body:  # the time limit, both ways (its elapsed time differs)
        assert [o[1] for o in now] == [o[1] for o in before] == ["script/resource_exhaustion"]
        return
    assert now == before


@pytest.mark.parametrize("body", RESULTS.values(), ids=RESULTS.keys())
def test_a_scripts_plain_result_is_what_the_long_way_gives(
        body: str, monkeypatch: pytest.MonkeyPatch) -> None:
    source = "function main(args) {\n  const p = {n: 1};\n" + body + "\n}\n"
    now = seen(drive("javascript", source, tools={"t": echo}, timeout=0.5))
    the_long_way_for_results(monkeypatch)
    before = seen(drive("javascript", source, tools={"t": echo}, timeout=0.5))
    if "for (;;)" in body:
        assert now[1] == before[1] == "script/resource_exhaustion"
        return
    assert now == before


def test_json_for_the_prelude_is_what_json_writes() -> None:
    """engines.javascript._encode (one C encoder per thread) against the JSONEncoder it
    stands for: the same text, or the same error, and no trace of a failure after it."""
    cycle: list[Any] = []
    cycle.append(cycle)
    looped: dict[str, Any] = {}
    looped["x"] = [looped]
    deep: list[Any] = []
    inner = deep
    for _ in range(5000):
        inner.append([])
        inner = inner[0]
    shared = [1]
    values = ["a\u00e9\ud800", 1, 1.5, None, True, {"a": [1, {"b": "c"}]}, [], {},
              math.nan, {"a": math.inf}, {1: 2}, {(1,): 2}, {"s": {1}}, cycle, looped,
              2**70, -0.0, 1e300, {"a": b"x"}, deep, [shared, shared], {"k": shared}]
    for value in values + values:  # again: a failure leaves nothing behind
        outcomes = []
        for encode in (js_engine._encode, js_engine._encode_slowly):
            try:
                outcomes.append(encode(value))
            except Exception as exc:  # the error is what is compared
                outcomes.append((type(exc), str(exc)))
        assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("body", ["return p.a;", "return {a: p.a};", "return NaN;",
                                  "throw new TypeError('no');",
                                  "return Promise.resolve(p.a);"],
                         ids=["plain", "object", "no JSON form", "throws", "async"])
def test_a_tools_files_calls_leave_nothing_behind(body: str) -> None:
    """Each call of a tools file's function made a record of its activation that stayed
    in the engine (about 400 bytes of its memory limit a call, for good)."""
    from engines import Limits
    from tests.engine_driver import make_engine

    engine = make_engine("javascript", limits=Limits(timeout=60))
    deadline = time.monotonic() + 60
    try:
        engine.load("exports.f = function f(p) {\n" + body + "\n};\n", "lib.js", [],
                    deadline)

        def used_after(calls: int) -> int:
            for n in range(calls):
                engine.call("f", {"a": n}, deadline)
            context = engine._ctx  # type: ignore[attr-defined]
            context.gc()
            return int(context.memory()["memory_used_size"])

        first = used_after(1000)
        assert used_after(5000) - first < 20_000  # the records would be about 2 MB
    finally:
        engine.close()
