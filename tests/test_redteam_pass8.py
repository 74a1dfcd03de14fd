"""Red team of pass 8's cross-engine fast paths (issue 17), on the real engines:

1. a JavaScript tools file's call told by callExport's answer (engines/javascript.py
   ``JavaScriptEngine.call``): hostile files (getters and Proxies as ``exports``, results
   that run code when read, jobs queued by every means, re-entry, a caught limit) must
   give the host exactly what the poll gives;
2. a tools file's call fused (``ScriptRun._plain_call``): a deadline narrowed by an outer
   call's timeout, recursion to MAX_TOOL_DEPTH between two files, an engine ended by a
   limit and called again, process isolation: the same as through the pipeline;
3. ``_json_text`` (pydantic-core's JSON for params and results): what json refuses is
   refused alike (a layer can hand a tools file any params).
"""

from __future__ import annotations

import time
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import anyio
import pytest

from bridge import SpellError
from engines import javascript as javascript_engine
from engines.base import Finished, Limits
from engines.javascript import JavaScriptEngine
from host import Host, tool
from tests.test_js_tools_file_answer import ended, unheard

# -- 1. callExport's answer ----------------------------------------------------------

FILES = {  # each a tools file whose `f` is called three times; `t` is answered with 7
    "exports read by a getter that prints":
        "const t = {f() { return 1; }};\n"
        "Object.defineProperty(globalThis, 'exports', {get() { console.log('read');"
        " return t; }, configurable: true});",
    "exports read by a getter that calls a tool":
        "const t = {f() { return 2; }};\n"
        "Object.defineProperty(globalThis, 'exports', {get() { tools.t({g: 1}); return t; },"
        " configurable: true});",
    "a Proxy as exports queues a job":
        "globalThis.exports = new Proxy({}, {get(_, k) {"
        " queueMicrotask(() => console.log('trap', k)); return () => 3; }});",
    "Symbol.toPrimitive result":
        "exports.f = () => ({[Symbol.toPrimitive]() { console.log('prim'); return 3; },"
        " valueOf() { return 4; }});",
    "Number.prototype tampered":
        "exports.f = () => { Number.prototype.toString = () => '99';"
        " Number.prototype.valueOf = () => 99; Number.prototype.toJSON = () => 98;"
        " return 3.5; };",
    "exports read by a getter that queues a request, then throws":
        "let n = 0;\nconst t = {f() { return 2; }};\n"
        "Object.defineProperty(globalThis, 'exports', {get() { if (n++ % 2) { tools.t({n});"
        " throw new Error('getter'); } return t; }, configurable: true});",
    "queueMicrotask prints":
        "exports.f = () => { queueMicrotask(() => console.log('m')); return 1; };",
    "a thenable": "exports.f = () => ({then(r) { console.log('then'); r(5); }});",
    "FinalizationRegistry":
        "const reg = new FinalizationRegistry((h) => console.log('fin', h));\n"
        "exports.f = () => { reg.register({}, 1); reg.register([], 2); return 6; };",
    "throws after queuing a request":
        "exports.f = () => { tools.t({x: 1}); throw new Error('after'); };",
    "throws after queuing a job":
        "exports.f = () => { Promise.resolve().then(() => console.log('j')); throw 1; };",
    "async resolving at once": "exports.f = async () => 8;",
    "replaces exports as it runs":
        "let n = 0;\nexports.f = () => { n++; globalThis.exports = {f: () => n * 10}; return n; };",
    "re-enters exports": "exports.g = () => { console.log('g'); return 1; };\n"
                         "exports.f = () => exports.g() + 1;",
    "a resolver left for the next call":
        "let r = null;\nexports.f = () => { if (r) { r(); r = null; return 1; }\n"
        "  new Promise((res) => { r = res; }).then(() => console.log('late')); return 2; };",
    "catches running out of memory":
        "exports.f = () => { try { const a = []; for (;;) a.push(new Array(1e5).fill(1)); }"
        " catch (e) { return 9; } };",
    "runs out of memory and keeps it":
        "const keep = [];\nexports.f = () => { for (;;) keep.push(new Array(1e4).fill(1)); };",
    "numbers at 2**53":
        "let i = 0;\nconst v = [-(2 ** 53), -(2 ** 53) - 2, 2 ** 53 - 1, 2 ** 53 + 1,"
        " 1e15 + 0.5, -1e21, 4294967296.5, -(2 ** 31), 2 ** 32, 0.5 - 0.5];\n"
        "exports.f = () => v[i++ % v.length];",
}


def drive(source: str, quick: bool, calls: int = 3) -> list[Any]:
    """What each call of ``f`` gave (callExport's answer taken or ignored)."""
    engine = JavaScriptEngine(limits=Limits(timeout=10.0, memory_mb=32))
    deadline = time.monotonic() + 10.0
    seen: list[Any] = []
    try:
        loaded = engine.load(source + "\n", "tools.js", [], deadline)
        if not quick:
            unheard(engine)
        seen.append(type(loaded).__name__)
        for _ in range(calls):
            seen.append(ended(engine, engine.call("f", {"a": 1}, deadline), deadline))
    finally:
        engine.close()
    return seen


@pytest.mark.parametrize("name", list(FILES))
def test_a_hostile_file_gets_what_the_poll_says(name: str) -> None:
    calls = 10 if name == "numbers at 2**53" else 3
    assert drive(FILES[name], True, calls) == drive(FILES[name], False, calls)


def test_the_effects_the_fast_path_must_not_lose() -> None:
    # (the defence above only means something if these reach the host at all)
    seen = {name: drive(FILES[name], True) for name in (
        "a Proxy as exports queues a job", "FinalizationRegistry", "a resolver left for the "
        "next call", "exports read by a getter that calls a tool", "re-enters exports")}
    assert seen["a Proxy as exports queues a job"][1][2] == ("trap f",)
    assert any(entry[2] for entry in seen["FinalizationRegistry"][1:])
    assert seen["a resolver left for the next call"][2][2] == ("late",)
    assert seen["exports read by a getter that calls a tool"][1][3] == [("t", {"g": 1})]
    assert seen["re-enters exports"][1] == ("finished", ("int", "2"), ("g",), [])


def test_a_fast_answer_is_never_taken_for_another_activation() -> None:
    # a call answered at once, then calls that fail before their function runs, a load
    # again (activation 0) and a call polled: each is told its own end
    engine = JavaScriptEngine(limits=Limits(timeout=10.0, memory_mb=32))
    deadline = time.monotonic() + 10.0
    source = ("exports.f = (p) => p.n;\nexports.later = (p) => Promise.resolve(p.n);\n"
              "exports.bad = 1;\n")
    try:
        assert isinstance(engine.load(source, "tools.js", [], deadline), Finished)
        steps = [engine.call(name, {"n": n}, deadline) for name, n in (
            ("f", 1), ("bad", 2), ("missing", 3), ("later", 4), ("f", 5))]
        assert [type(s).__name__ for s in steps] == ["Finished", "Failed", "Failed",
                                                     "Finished", "Finished"]
        assert [steps[0].result, steps[3].result, steps[4].result] == [1, 4, 5]
        assert "exports.bad is not a function" in steps[1].error.message
        reloaded = engine.load("exports.f = () => 'again';\n", "tools.js", [], deadline)
        assert isinstance(reloaded, Finished) and reloaded.result == ["f"]
        assert engine.call("f", {}, deadline).result == "again"
    finally:
        engine.close()


# -- 2. tools-file calls fused -------------------------------------------------------

LUA_FILE = """
local M = {}
function M.spin(p) while true do end end
function M.lrec(p) return tools.jrec{n = p.n + 1} end
function M.lmid(p) print("mid", p.a) return tools.j_add{a = p.a, b = 1} * 2 end
function M.lhog(p) local t = {} for i = 1, 1e9 do t[i] = string.rep("x", 64) .. i end end
return M
"""
JS_FILE = """
exports.outer = async function (p) { return await tools.spin({}); };
exports.jrec = async function (p) { return await tools.lrec({n: p.n + 1}); };
exports.jhog = function (p) { const a = []; for (;;) a.push(new Array(1e5).fill(p.n)); };
exports.j_add = function (p) { return p.a + p.b; };
exports.jnest = async function (p) { const x = await tools.lmid({a: p.a}); console.log("x", x);
  return [x, await tools.lmid({a: 10}), tools.j_add === undefined]; };
exports.j_throw = function (p) { throw new RangeError("no " + p.a); };
"""
SCRIPT = {
    "lua": "local out = {}\nfor i, c in ipairs(args.calls) do\n"
           "  local ok, r = pcall(tools[c[1]], c[2])\n"
           "  out[i] = ok and r or {r.code, r.message, r.fields.resource_type}\nend\n"
           "return out",
    "javascript": "async function main(args) {\n  const out = [];\n"
                  "  for (const [name, p] of args.calls) {\n"
                  "    try { out.push(await tools[name](p)); }\n"
                  "    catch (e) {\n"
                  "      out.push([e.code, e.message, e.fields.resource_type ?? null]);\n"
                  "    }\n"
                  "  }\n  return out;\n}",
}


def passthrough(call: Any, next: Any) -> Any:
    return next(call)


def _both(folder: Path, calls: list[tuple[str, dict]], language: str, **options: Any
          ) -> list[Any]:
    """What a host that fuses the files' calls gives (the run's result, the functions it
    fused), checked to be what one that takes the pipeline gives (and prints)."""
    (folder / "lib.lua").write_text(LUA_FILE)
    (folder / "lib.js").write_text(JS_FILE)
    seen = []
    for layers in ([], [passthrough]):
        lines: list[str] = []
        with Host([folder / "lib.lua", folder / "lib.js"], layers=layers,
                  on_output=lines.append, **options) as host:
            run = host.new_run_source(SCRIPT[language], language,
                                      args={"calls": [[n, p] for n, p in calls]})
            seen.append(anyio.run(run.execute))
            seen.append(sorted(run._plain_functions))
        seen.append(lines)
    assert seen[0] == seen[3] and seen[2] == seen[5]  # results and printed lines alike
    assert seen[4] == []  # (the pass-through host fuses nothing)
    return [seen[0], seen[1], seen[2]]


@pytest.mark.parametrize("language", ["lua", "javascript"])
def test_an_outer_timeout_stops_a_fused_inner_call(language: str, tmp_path: Path) -> None:
    started = time.monotonic()
    seen = _both(tmp_path, [("outer", {}), ("j_add", {"a": 1, "b": 2})], language,
                 recovery={"outer": {"timeout": {"total": 0.3}}})
    assert time.monotonic() - started < 8
    assert seen[0][0][0] == "tool/timeout" and seen[0][1] == 3
    assert "spin" in seen[1]  # it was fused


def test_a_file_called_again_inside_its_own_call(tmp_path: Path) -> None:
    # jnest (JS) waits on lmid (Lua), which calls j_add of jnest's own file, answered at
    # once (callExport's answer) while jnest's activation waits
    seen = _both(tmp_path, [("jnest", {"a": 1}), ("j_add", {"a": 1, "b": 2})], "lua")
    assert seen[0] == [[4, 22, False], 3]
    assert seen[2] == ["mid\t1", "x 4", "mid\t10"], seen[2]
    assert {"jnest", "lmid", "j_add"} <= set(seen[1])


def test_recursion_between_two_files_stops_at_max_depth(tmp_path: Path) -> None:
    seen = _both(tmp_path, [("lrec", {"n": 0}), ("j_add", {"a": 1, "b": 2})], "lua")
    assert seen[0][0][0] == "script/resource_exhaustion" and seen[0][0][2] == "stack"
    assert seen[0][1] == 3 and {"lrec", "jrec"} <= set(seen[1])


@pytest.mark.parametrize("hog", ["lhog", "jhog"])
def test_an_engine_ended_by_a_limit_is_not_called_again(hog: str, tmp_path: Path) -> None:
    seen = _both(tmp_path, [(hog, {"n": 1}), (hog, {"n": 2}), ("j_add", {"a": 1, "b": 2})],
                 "javascript", memory_mb=16)
    first, second, third = seen[0]
    assert first[2] == "memory" or first[0] == "resource/memory_exhaustion", first
    if hog == "lhog":  # Lua's engine ends; quickjs's stays usable after out of memory
        assert "was ended earlier in this run" in second[1]
    else:
        assert second == first
    assert third == 3


def test_process_isolation_answers_alike(tmp_path: Path) -> None:
    seen = _both(tmp_path, [("j_add", {"a": 1, "b": 2}), ("j_throw", {"a": 4}),
                            ("j_add", {"a": "x", "b": 2.5})], "lua", isolation="process")
    assert seen[0][0] == 3 and seen[0][2] == "x2.5" and "no 4" in seen[0][1][1]


# -- 3. _json_text ---------------------------------------------------------------------

REFUSED = [[Decimal("1.5")], [1j], [Fraction(1, 3)], [Decimal("sNaN")], [1, Decimal(2)],
           [2 ** 1030, 1.5], {"a": Decimal("1")}, {"a": 1j}]


@pytest.mark.parametrize("value", REFUSED, ids=lambda value: repr(value)[:24])
def test_what_json_refuses_or_writes_pydantic_core_does_alike(value: Any) -> None:
    try:
        expected: Any = javascript_engine._encode(value)
    except (TypeError, ValueError) as exc:
        with pytest.raises(type(exc)):  # (not an OverflowError or InvalidOperation)
            javascript_engine._json_text(value)
        return
    assert javascript_engine._json_text(value) == expected  # ([2**1030, 1.5]: inf in JS)


@pytest.mark.parametrize("params", [[Decimal("1.5")], [1j], [2 ** 1030, 1.5]],
                         ids=lambda value: repr(value)[:24])
def test_a_layers_params_are_refused_as_json_refuses_them(params: Any,
                                                          tmp_path: Path) -> None:
    (tmp_path / "echo.js").write_text("exports.echo = (p) => JSON.stringify(p);\n")

    def rewrite(call: Any, next: Any) -> Any:
        call.params = params
        return next(call)

    host = Host([tmp_path / "echo.js"], layers=[rewrite])
    try:
        result: Any = host.run_source("return tools.echo{x = 1}", "lua", "s.lua")
    except SpellError as err:
        result = err.code
    expected = "[null,1.5]" if isinstance(params[0], int) else \
        "script/cross_engine_communication"
    assert result == expected


def test_tool_results_of_numbers_still_take_the_quick_writer() -> None:
    @tool
    def numbers() -> list:
        return [1, 2.5, True, -0.0, 2 ** 53 - 1]

    assert Host([numbers]).run_source(
        "async function main() {\n  const v = await tools.numbers();\n"
        "  return [v, Object.is(v[3], -0)];\n}",
        "javascript", "s.js") == [[1, 2.5, True, 0, 2 ** 53 - 1], True]


def test_an_error_keeps_params_it_cannot_show(tmp_path: Path) -> None:
    # (found on the way, older than this pass) an error's parameters preview read repr()
    # of the params: an int past Python's 4300 digits raised ValueError out of the run
    (tmp_path / "boom.js").write_text("exports.boom = () => { throw new Error('x'); };\n")

    def rewrite(call: Any, next: Any) -> Any:
        call.params = {"a": 10 ** 5000}
        return next(call)

    with pytest.raises(SpellError) as info:
        Host([tmp_path / "boom.js"], layers=[rewrite]).run_source(
            "return tools.boom{x = 1}", "lua", "s.lua")
    assert info.value.code == "script/javascript"
    steps = info.value.context.execution_trace.call_stack
    assert [step.parameters for step in steps] == ["<dict that cannot be shown: ValueError>"]
