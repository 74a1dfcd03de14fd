"""The prelude read as byte code (engines/javascript_bytecode.py) against the prelude
compiled from its source, as every engine did before: the same globals, frames, errors and
limits, a fresh context for every run, and the source path taken whenever byte code cannot
be used or reading it fails."""

from __future__ import annotations

import importlib.metadata
import threading
import time
from collections.abc import Iterator
from typing import Any

import _quickjs as quickjs
import pytest

from bridge import ToolError
from bridge.envelope import error_envelope
from engines import Failed, Finished, Limits, Step, ToolInfo, ToolReply, ToolRequest
from engines import javascript_bytecode as bytecode
from engines.javascript import PRELUDE, JavaScriptEngine

LIMITS = Limits(timeout=5.0, memory_mb=64)


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Engines compile the prelude from its source (the binding's library unknown)."""
    monkeypatch.setattr(bytecode, "_lib", False)
    yield


def drive(source: str, engine: JavaScriptEngine | None = None, filename: str = "agent.js",
          tools: dict[str, Any] | None = None) -> Step:
    """Run ``source`` to its end, answering each tool request from ``tools``."""
    engine = engine or JavaScriptEngine(limits=LIMITS)
    tools = tools or {}
    deadline = time.monotonic() + engine.limits.timeout
    step = engine.start(source, filename, {"n": 1}, [ToolInfo(n, "") for n in tools], deadline)
    while not isinstance(step, Finished | Failed):
        step = engine.resume([answer(r, tools) for r in step.requests], deadline)
    engine.close()
    return step


def answer(request: ToolRequest, tools: dict[str, Any]) -> ToolReply:
    if request.tool in tools:
        return ToolReply(request.id, result=tools[request.tool](request.params))
    return ToolReply(request.id, error=error_envelope(
        ToolError.NotFound(tool_name=request.tool), ref=lambda err: 1))


def result(source: str, **kwargs: Any) -> Any:
    step = drive(source, **kwargs)
    assert isinstance(step, Finished), step
    return step.result


def error_view(step: Step) -> tuple[Any, ...]:
    """What a failed step says: its error's code, message, fields and frames."""
    assert isinstance(step, Failed), step
    err = step.error
    return err.code, err.message, err.fields, list(err.frames)


def test_byte_code_is_used_with_this_binding() -> None:
    # a binding released after this module was written compiles the prelude as before
    # (slower, the same results): read its module.c (RuntimeData) again before adding its
    # version to KNOWN_BINDINGS
    version = importlib.metadata.version("quickjs-ng")
    if version not in bytecode.KNOWN_BINDINGS:
        pytest.skip(f"quickjs-ng {version}: not a binding whose layout is known")
    assert bytecode.prepare()
    code = bytecode.code_of(PRELUDE)
    assert code is not None and len(code) > len(PRELUDE) // 2
    assert bytecode.code_of(PRELUDE) is code  # made once


GLOBALS = """
function main() {
  return [Object.getOwnPropertyNames(globalThis).join(","), typeof tools, typeof console.log,
          Object.keys(args).join(","), String(tools.add), String(console.log),
          Object.getOwnPropertyNames(Object.getPrototypeOf(tools)).join(",")];
}
"""


def test_the_same_globals_as_the_compiled_prelude(monkeypatch: pytest.MonkeyPatch) -> None:
    read = result(GLOBALS, tools={"add": lambda p: 1})
    monkeypatch.setattr(bytecode, "_lib", False)
    assert result(GLOBALS, tools={"add": lambda p: 1}) == read
    # nothing the engine parked for a moment (the completion, the functions it takes)
    assert [name for name in read[0].split(",") if "polyspell" in name] == []


LEAKS = """
globalThis.leaked = 1;
Array.prototype.push = function () { return 'hijacked'; };
Object.prototype.polluted = true;
JSON.stringify = () => '"forged"';
function main() { return 1; }
"""
SEES = """
function main() {
  return [typeof leaked, [].push(1), ({}).polluted === undefined, JSON.stringify({a: 1})];
}
"""


def test_each_run_has_a_fresh_context() -> None:
    # one engine object, then another: what a script did to its context is never seen
    engine = JavaScriptEngine(limits=LIMITS)
    assert result(LEAKS, engine=engine) == 1
    assert result(SEES, engine=engine) == ["undefined", 1, True, '{"a":1}']
    assert result(LEAKS) == 1
    assert result(SEES) == ["undefined", 1, True, '{"a":1}']


FAILURES = [
    ("function main() {\n  const x = 1;\n  null.f();\n}\n", "agent.js"),
    ("function inner() { throw new TypeError('bad ' + args.n); }\n\nfunction main() {"
     " inner(); }\n", "agent.js"),
    ("async function main() {\n  await tools.add({a: 1});\n  throw new RangeError('r');\n}\n",
     "agent.js"),
    ("const x = ;\n", "agent.js"),
    ("export async function main() {\n  await null;\n  undefinedName;\n}\n", "agent.mjs"),
    ("function main() { return JSON.parse('{'); }\n", "agent.js"),
    ("function main() { return {f() {}}; }\n", "agent.js"),
    ("function main() { return NaN; }\n", "agent.js"),
    ("function main() { const a = []; a.push(a); return a; }\n", "agent.js"),
    ("function main() { return 2 ** 60; }\n", "agent.js"),
    ("function main() { return '\\ud800'; }\n", "agent.js"),
    ("function main() { return {[Symbol('s')]: 1, k: 1n}; }\n", "agent.js"),
    ("function main() { return tools.add({a: NaN}); }\n", "agent.js"),
    ("function main() { tools.nope({}); }\n", "agent.js"),
]


@pytest.mark.parametrize("source,filename", FAILURES)
def test_the_same_errors_and_frames(monkeypatch: pytest.MonkeyPatch, source: str,
                                    filename: str) -> None:
    tools = {"add": lambda p: 1}
    read = drive(source, filename=filename, tools=tools)
    monkeypatch.setattr(bytecode, "_lib", False)
    compiled = drive(source, filename=filename, tools=tools)
    if isinstance(read, Finished):
        assert read == compiled
    else:
        assert error_view(read) == error_view(compiled)


def test_script_frames_point_at_the_script_line() -> None:
    step = drive("function main() {\n  let a = 1;\n  let b = 2;\n  throw new Error('line 4');\n}\n")
    frames = error_view(step)[3]
    assert [(f.file, f.line, f.function) for f in frames] == [("agent.js", 4, "main")]
    assert frames[0].source == "throw new Error('line 4');"


def test_the_limits_apply() -> None:
    busy = JavaScriptEngine(limits=Limits(timeout=0.2, memory_mb=64))
    busy.cpu_factor = 1.0
    step = drive("while (true) {}", engine=busy)
    assert isinstance(step, Failed) and step.error.fields["resource_type"] == "time"
    step = drive("const parts = []; while (true) parts.push(new Array(100000).fill(1));",
                 engine=JavaScriptEngine(limits=Limits(timeout=5, memory_mb=16)))
    assert isinstance(step, Failed)
    assert step.error.code == "resource/memory_exhaustion", step.error
    step = drive("function down(n) { return down(n + 1) + 1 }\ndown(0)")
    assert isinstance(step, Failed) and step.error.fields["resource_type"] == "stack"


class _Starved(JavaScriptEngine):
    """An engine whose contexts have too little memory for the prelude."""

    def _new_context(self) -> Any:
        ctx = super()._new_context()
        ctx.set_memory_limit(64 * 1024)
        return ctx


def test_too_little_memory_for_the_prelude_fails_cleanly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # reading the byte code fails: the engine compiles the source in a new context, which
    # fails as it always did, and the next engine works
    read = drive("function main() { return 1; }", engine=_Starved(limits=LIMITS))
    assert isinstance(read, Failed)
    assert result("function main() { return 1; }") == 1
    monkeypatch.setattr(bytecode, "_lib", False)
    compiled = drive("function main() { return 1; }", engine=_Starved(limits=LIMITS))
    assert error_view(read) == error_view(compiled)


def test_a_failed_read_answers_none_and_leaves_no_exception() -> None:
    ctx = quickjs.Context()
    ctx.set_memory_limit(64 * 1024)
    assert bytecode.evaluate(ctx, PRELUDE) is None
    ctx.set_memory_limit(64 * 1024 * 1024)
    assert ctx.eval("1 + 1") == 2  # no exception left pending in the context


def test_only_a_context_of_the_binding_is_read_into() -> None:
    class Other:
        pass

    assert bytecode.evaluate(Other(), PRELUDE) is None
    assert bytecode.evaluate(None, PRELUDE) is None


def test_an_unknown_binding_compiles_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bytecode, "KNOWN_BINDINGS", ("0.0.0",))
    monkeypatch.setattr(bytecode, "_lib", None)
    assert not bytecode.prepare()
    assert bytecode.evaluate(quickjs.Context(), PRELUDE) is None
    assert result("function main() { return args.n + 1; }") == 2
    monkeypatch.setattr(bytecode, "_lib", None)
    monkeypatch.setattr(bytecode, "_CONTEXT_SIZE", 88)  # a Context of another layout
    assert not bytecode.prepare()


def test_engines_on_many_threads_at_once() -> None:
    # each context is made, read into, run and freed on its own thread, several at once
    results: list[Any] = []
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(10):
                results.append(result("function main() { globalThis.mine = args.n;"
                                      " return mine * 2; }".replace("args.n", str(i * 10 + j))))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(results) == [2 * n for n in range(80)]


def test_tools_files_read_the_byte_code_too() -> None:
    engine = JavaScriptEngine(limits=LIMITS)
    step = engine.load("exports.twice = function (p) { return p.n * 2; };\n", "helpers.js",
                       [], time.monotonic() + 5)
    assert isinstance(step, Finished) and step.result == ["twice"]
    step = engine.call("twice", {"n": 21}, time.monotonic() + 5)
    assert isinstance(step, Finished) and step.result == 42
    engine.close()


def test_close_lets_the_context_go_on_the_engine_thread() -> None:
    # no object of the context stays on the engine once closed: the context is freed by
    # close(), on the engine's thread, not wherever the engine object is dropped later
    engine = JavaScriptEngine(limits=LIMITS)
    assert result("function main() { return 1; }", engine=engine) == 1
    held = [name for name, value in vars(engine).items()
            if type(value).__module__ == quickjs.__name__]
    assert held == []
