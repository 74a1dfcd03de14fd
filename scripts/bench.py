"""polyspell's benchmark: prints a table of medians over repeated runs.

    python scripts/bench.py            # everything
    python scripts/bench.py --quick    # fewer repeats
    python scripts/bench.py --only coordinator    # only the coordinator's rows
    python scripts/bench.py --only monitor        # only the monitor's and its store's rows
    python scripts/bench.py --only isolation      # process isolation against thread mode
    python scripts/bench.py --only modules        # JavaScript import and require
    python scripts/bench.py --only ray            # plans on a local Ray against local
    python scripts/bench.py --only lua            # Lua 5.5, 5.4 and LuaJIT on CPU-bound work
    python scripts/bench.py --only core           # tool calls, data, errors, start-up
    python scripts/bench.py --only data           # lists, dicts and strings across
    python scripts/bench.py --only calls          # only the tool calls' rows of core
    python scripts/bench.py --json > run.json     # the same rows as strict JSON

Rows with a ratio are compared with a naive host measured in the same run (lupa or
quickjs calling a Python function, then the same pydantic validation): the ratio is the
figure to read, the absolute median is information only, as the machine is shared.

Timings on a shared machine are noisy: each row is the median of several repeats, and
per-call costs are differences (a loop of N calls minus the same loop with no call), so
that the script's own start-up is not counted.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

from typing_extensions import TypedDict

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engines import Limits, engine_class, make_engine  # noqa: E402
from engines.process import WorkerPool  # noqa: E402
from host import Breakers, CircuitBreaker, Host, Retry, hooks, tool  # noqa: E402


class Row(NamedTuple):
    """One line of the table: a median, its target, and where the row is compared with a
    baseline measured in the same run, its ratio to that baseline."""

    what: str
    median: float
    unit: str
    target: str
    ratio: float | None = None
    baseline: str | None = None


@tool
def add(a: int, b: int) -> int:
    """Two validated parameters, the smallest realistic tool."""
    return a + b


LUA_LOOP = """
local n = args.n
local total = 0
for i = 1, n do
  if args.call then total = total + tools.add{a = i, b = 1} else total = total + i + 1 end
end
return total
"""
JS_LOOP = """
async function main(args) {
  let total = 0;
  for (let i = 1; i <= args.n; i++) {
    total += args.call ? await tools.add({a: i, b: 1}) : i + 1;
  }
  return total;
}
"""


def median_of(repeats: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(repeats))


def tool_round_trip(host: Host, language: str, source: str, n: int) -> float:
    """Seconds per tool call: a loop of n calls minus the same loop without calls."""
    def timed(call: bool) -> float:
        start = time.perf_counter()
        result = host.run_source(source, language, f"bench.{language}", {"n": n, "call": call})
        elapsed = time.perf_counter() - start
        assert result == sum(range(2, n + 2)), result
        return elapsed

    return (timed(True) - timed(False)) / n


def net_per_call(n: int, with_calls: Callable[[], Any], without: Callable[[], Any],
                 expected: Any = None, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds per call of a loop of ``n`` calls (``with_calls()``, which must return
    ``expected`` unless that is None) less the same loop making none (``without()``): how
    the raw bindings' and the naive hosts' rows are timed, by ``clock``."""
    start = clock()
    result = with_calls()
    spent = clock() - start
    assert expected is None or result == expected, result
    start = clock()
    without()
    return (spent - (clock() - start)) / n


def raw_lua_call(n: int) -> float:
    """Seconds per Lua -> Python call through lupa itself."""
    import lupa.lua55 as lupa

    runtime = lupa.LuaRuntime(register_eval=False, register_builtins=False)
    loop = runtime.eval("function(f, n) local t = 0 for i = 1, n do t = t + f(i, 1) end "
                        "return t end")
    empty = runtime.eval("function(n) local t = 0 for i = 1, n do t = t + i + 1 end "
                         "return t end")
    return net_per_call(n, lambda: loop(lambda a, b: a + b, n), lambda: empty(n))


def raw_js_call(n: int) -> float:
    """Seconds per JS -> Python call through quickjs' add_callable."""
    import quickjs

    context = quickjs.Context()
    context.add_callable("add", lambda a, b: a + b)
    return net_per_call(
        n, lambda: context.eval(f"let t = 0; for (let i = 0; i < {n}; i++) t += add(i, 1); t"),
        lambda: context.eval(f"let u = 0; for (let i = 0; i < {n}; i++) u += i + 1; u"))


# The suspension design alone, with nothing of polyspell's: a script's call suspends it
# (a Lua coroutine yields; a JS promise waits for a job), the host reads the request and
# resumes it with the result (no validation, no checks, no call site): the floor under
# every engine's round trip.
RAW_LUA_SUSPENSION = """
local co_yield, co_resume, co_create = coroutine.yield, coroutine.resume, coroutine.create
local function add(p) local ok, v = co_yield("request", "add", p.a, p.b) return v end
local function body(n) local t = 0 for i = 1, n do t = t + add{a = i, b = 1} end return t end
local co
local function start(n) co = co_create(body) return select(2, co_resume(co, n)) end
local function step(v) return select(2, co_resume(co, true, v)) end
return start, step
"""
RAW_JS_SUSPENSION = """(function () {
  const waiting = { __proto__: null }; let queue = ""; let id = 0;
  globalThis.add = function (params) {
    const { promise, resolve } = Promise.withResolvers();
    waiting[++id] = resolve;
    queue = "[" + id + ",\\"add\\"," + JSON.stringify(params) + "]";
    return promise;
  };
  return [function (i, v) { const r = waiting[i]; delete waiting[i]; r(v); },
          function () { const q = queue; queue = ""; return q; }];
})()"""


def raw_lua_suspension(n: int) -> float:
    """Seconds per call of the suspension design in Lua (RAW_LUA_SUSPENSION)."""
    import lupa.lua55 as lupa

    runtime = lupa.LuaRuntime(register_eval=False, register_builtins=False,
                              unpack_returned_tuples=True)
    start_loop, step = runtime.execute(RAW_LUA_SUSPENSION)
    start = time.perf_counter()
    out = start_loop(n)
    while type(out) is tuple:
        out = step(out[2] + out[3])
    elapsed = time.perf_counter() - start
    assert out == sum(range(2, n + 2)), out
    return elapsed / n


def raw_js_suspension(n: int, time_limit: str = "alarm") -> float:
    """Seconds per call of the suspension design in JS (RAW_JS_SUSPENSION): settle, run
    the jobs (one, then one more call that finds none), poll. ``time_limit``: ``"alarm"``,
    as polyspell runs it (engines.javascript_alarm: the context's interrupt goes off at the
    deadline, and no call reads a clock); ``"clock"``: the binding's CPU-time limit set
    while the jobs run (a job is the script's code; quickjs reads the process CPU clock on
    every call into JS with a limit set), as polyspell does where it has no alarm (a worker
    process); ``"none"``: no limit at all."""
    import json

    import quickjs

    from engines import javascript_alarm

    context = quickjs.Context()
    alarm = javascript_alarm.install(context) if time_limit == "alarm" else None
    if alarm is not None:
        alarm.arm(time.monotonic() + 3600)
    context.set("api", context.eval(RAW_JS_SUSPENSION))
    settle, poll = context.eval("api[0]"), context.eval("api[1]")
    context.eval(f"var result; (async function (n) {{ let t = 0; for (let i = 1; i <= n; "
                 f"i++) t += await add({{a: i, b: 1}}); return t; }})({n})"
                 ".then(v => { result = v; });")
    run_job, limit = context.execute_pending_job, context.set_time_limit
    guarded, unguarded = (1000, -1) if time_limit == "clock" else (-1, -1)
    start = time.perf_counter()
    text = poll()
    while text:
        request = json.loads(text)
        settle(request[0], request[2]["a"] + request[2]["b"])
        limit(guarded)
        while run_job():
            pass
        limit(unguarded)
        text = poll()
    elapsed = time.perf_counter() - start
    assert context.eval("result") == sum(range(2, n + 2))
    if alarm is not None:  # off the runtime before it is freed (see javascript_alarm)
        alarm.remove()
    return elapsed / n


# What two of the JS round trip's guarantees cost, measured by leaving them out of the
# prelude (measurement only: a script's errors would lose their call site, and data
# without a JSON form would be dropped silently): the call site's stack, which the frames
# of the call's errors need, and the check of the parameters' data (json()'s replacer).
JS_LEFT_OUT = {
    "the call site's stack": [("      captureStack(holder, skip);\n      site = holder.stack;",
                               '      site = "    at main (<input>:4:49)";')],
    "the data check": [("        ? json(params, true, true)", "        ? stringify(params)")],
}
JS_LEFT_OUT["both"] = [*JS_LEFT_OUT["the call site's stack"], *JS_LEFT_OUT["the data check"]]


def js_round_trip_without(what: str, n: int) -> float | None:
    """Seconds per JS tool call with JS_LEFT_OUT[what] left out of the prelude (a host and
    engines of their own; the prelude is put back after), or None where the prelude no
    longer has that text."""
    from engines import javascript

    prelude = javascript.PRELUDE
    changed = prelude
    for old, new in JS_LEFT_OUT[what]:
        if old not in changed:
            return None
        changed = changed.replace(old, new)
    javascript.PRELUDE = changed
    try:
        return tool_round_trip(Host([add], on_output=lambda line: None), "javascript",
                               JS_LOOP, n)
    finally:
        javascript.PRELUDE = prelude


AddParams = None  # the naive hosts' pydantic model of add's parameters, made once


def add_params() -> Any:
    """The pydantic model a naive host validates add's parameters with."""
    global AddParams
    if AddParams is None:
        import pydantic

        AddParams = pydantic.create_model("AddParams", a=(int, ...), b=(int, ...))
    return AddParams


def naive_lua_call(n: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds per tool call of a naive Lua host: lupa calls a registered Python function
    with a table, which validates it with pydantic and returns the sum (no sandbox, no
    limits, no unified errors). ``clock``: ``time.thread_time`` for CPU seconds."""
    import lupa.lua55 as lupa

    model = add_params()
    runtime = lupa.LuaRuntime(register_eval=False, register_builtins=False)

    def add_tool(table: Any) -> int:
        params = model.model_validate(dict(table.items()))
        return params.a + params.b

    loop = runtime.eval("function(f, n) local t = 0 for i = 1, n do t = t + f{a = i, b = 1} "
                        "end return t end")
    empty = runtime.eval("function(n) local t = 0 for i = 1, n do t = t + i + 1 end "
                         "return t end")
    return net_per_call(n, lambda: loop(add_tool, n), lambda: empty(n),
                        sum(range(2, n + 2)), clock)


def naive_js_call(n: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds per tool call of a naive JavaScript host: quickjs' add_callable receives
    the parameters as JSON text, validated by pydantic, and returns the sum (``clock``:
    as for :func:`naive_lua_call`)."""
    import quickjs

    model = add_params()
    context = quickjs.Context()

    def add_tool(text: str) -> int:
        params = model.model_validate_json(text)
        return params.a + params.b

    context.add_callable("add", add_tool)
    return net_per_call(
        n, lambda: context.eval(f"let t = 0; for (let i = 1; i <= {n}; i++) "
                                "t += add(JSON.stringify({a: i, b: 1})); t"),
        lambda: context.eval(f"let u = 0; for (let i = 1; i <= {n}; i++) u += i + 1; u"),
        sum(range(2, n + 2)), clock)


def compared(what: str, unit: str, scale: float, target: str, repeats: int,
             measure: Callable[[], float], baseline: str, naive: Callable[[], float],
             pick: Callable[[Any], float] = statistics.median) -> list[Row]:
    """A row and its naive baseline, measured in turn (one of each per repeat, so that
    both see the same load), the row carrying its ratio to the baseline (``pick``: of
    each one's repeats, the median, or the least for a cost that noise only adds to)."""
    pairs = [(measure(), naive()) for _ in range(repeats)]
    ours = pick([p for p, _ in pairs])
    theirs = pick([b for _, b in pairs])
    return [Row(what, ours * scale, unit, target, ours / theirs, baseline),
            Row(f"  {baseline}", theirs * scale, unit, "")]


# Tools files whose function does what the Python tool ``add`` does: a script calling
# one makes a cross-engine hop (JS -> Lua, Lua -> JS), compared with calling ``add``.
HOP_LUA = """
local M = {}
function M.add_lua(p) return p.a + p.b end
return M
"""
HOP_JS = "exports.add_js = function (p) { return p.a + p.b; };\n"


def hop_host(folder: Path, *more: Any, **options: Any) -> Host:
    """A host with the Python tool ``add`` (and ``more`` tools) and the tools files
    ``add_lua``, ``add_js``; ``options`` for Host (``timeout``...)."""
    (folder / "hop.lua").write_text(HOP_LUA)
    (folder / "hop.js").write_text(HOP_JS)
    return Host([add, *more, folder / "hop.lua", folder / "hop.js"],
                on_output=lambda line: None, **options)


def tools_file_call(language: str, n: int) -> float:
    """Seconds per call of a tools file's function by its engine alone (no host): the
    other engine's part of a cross-engine hop."""
    cls = engine_class(language)
    source, name = (HOP_LUA, "add_lua") if language == "lua" else (HOP_JS, "add_js")
    engine = cls(limits=Limits())
    deadline = time.monotonic() + 60
    engine.load(source, f"hop.{'lua' if language == 'lua' else 'js'}", [], deadline)
    start = time.perf_counter()
    for i in range(n):
        step = engine.call(name, {"a": i, "b": 1}, deadline)
    elapsed = time.perf_counter() - start
    assert step.result == n, step  # type: ignore[union-attr]
    engine.close()
    return elapsed / n


def ready_engine(language: str) -> float:
    """Seconds from nothing to a sandboxed engine that has run a trivial script."""
    cls = engine_class(language)
    source = "return 1" if language == "lua" else "1"
    start = time.perf_counter()
    engine = cls(limits=Limits())
    engine.start(source, "ready", None, [], time.monotonic() + 10)
    elapsed = time.perf_counter() - start
    engine.close()
    return elapsed


DEEP = 20  # frames of the error the translation rows translate

LUA_DEEP = "\n".join(
    [f"function f{n}() local x = f{n + 1}() return x end" for n in range(1, DEEP)]
    + [f"function f{DEEP}() error('deep failure') end", "local r = f1() return r"])
JS_DEEP = "\n".join(
    [f"function f{n}() {{ const x = f{n + 1}(); return x; }}" for n in range(1, DEEP)]
    + [f"function f{DEEP}() {{ throw new TypeError('deep failure'); }}",
       "function main() { return f1(); }"])


def deep_lua_error() -> tuple[str, str]:
    """The message and traceback of a real Lua error raised 20 frames deep."""
    import lupa.lua55 as lupa

    runtime = lupa.LuaRuntime(register_eval=False, register_builtins=False)
    capture = runtime.eval("function(src) local chunk = load(src, '@deep.lua') "
                           "local msg, tb xpcall(chunk, function(m) msg = m "
                           "tb = debug.traceback(nil, 2) end) return msg, tb end")
    return capture(LUA_DEEP)


def lua_translation(n: int) -> float:
    """Seconds per Lua error -> unified error, for an error 20 frames deep."""
    from bridge.lua import LuaScript, thrown_error
    from bridge.patterns import patterns

    message, traceback = deep_lua_error()
    start = time.perf_counter()
    for _ in range(n):  # a new script each time: nothing cached from the last error
        err = thrown_error(LuaScript("deep.lua", LUA_DEEP), message, "string", None, traceback,
                           patterns=patterns)
    # Lua's debug.traceback keeps the first 10 and last 11 levels of a deeper stack
    assert len(err.frames) >= DEEP - 3, err.frames
    return (time.perf_counter() - start) / n


def js_translation(n: int) -> float:
    """Seconds per JS error -> unified error, for an error 20 frames deep."""
    import _quickjs

    from bridge.javascript import error_from_report
    from bridge.patterns import patterns

    context = _quickjs.Context()
    # the engine's prelude keeps 64 frames; quickjs' default is 10
    stack = context.eval("Error.stackTraceLimit = 64;\n" + JS_DEEP
                         + "\ntry { main(); } catch (e) { e.stack }")
    report = {"name": "TypeError", "message": "deep failure", "stack": stack}
    start = time.perf_counter()
    for _ in range(n):
        err = error_from_report(report, "deep.js", JS_DEEP.splitlines(), patterns=patterns)
    assert len(err.frames) >= DEEP, err.frames
    return (time.perf_counter() - start) / n


def rendering(n: int) -> float:
    """Seconds to render a 20-frame error as text."""
    from bridge.lua import LuaScript, thrown_error
    from bridge.patterns import patterns

    message, traceback = deep_lua_error()
    err = thrown_error(LuaScript("deep.lua", LUA_DEEP), message, "string", None, traceback,
                       patterns=patterns)
    start = time.perf_counter()
    for _ in range(n):
        err.to_text()
    return (time.perf_counter() - start) / n


@tool
def explode(reason: str) -> None:
    """Fails every time."""
    raise ValueError(reason)


LUA_CATCH = """
local caught = 0
for i = 1, args.n do
  if args.call then
    local ok = pcall(tools.explode, {reason = "no"})
    if not ok then caught = caught + 1 end
  else caught = caught + 1 end
end
return caught
"""
JS_CATCH = """
async function main(args) {
  let caught = 0;
  for (let i = 1; i <= args.n; i++) {
    if (args.call) { try { await tools.explode({reason: "no"}); } catch (e) { caught++; } }
    else caught++;
  }
  return caught;
}
"""


@tool
def cpu() -> float:
    """CPU seconds of the calling run's thread (sync tools run there)."""
    return time.thread_time()


def cpu_timed(source: str, total: str) -> str:
    """A bench loop (LUA_LOOP, JS_CATCH...) that returns, instead of its ``total``, the
    CPU seconds of the run's thread it took (sync tools run there): the cost of the run's
    work, which waiting for the cores on a shared machine does not add to."""
    if "async function main" in source:
        return source.replace(
            f"let {total} = 0;", f"let {total} = 0; const began = await tools.cpu({{}});"
        ).replace(f"return {total};", "return (await tools.cpu({})) - began;")
    return f"local began = tools.cpu{{}}\n{source.replace(f'return {total}', '')}" \
        "return tools.cpu{} - began"


LUA_LOOP_CPU, JS_LOOP_CPU = cpu_timed(LUA_LOOP, "total"), cpu_timed(JS_LOOP, "total")
LUA_CATCH_CPU, JS_CATCH_CPU = cpu_timed(LUA_CATCH, "caught"), cpu_timed(JS_CATCH, "caught")


def run_thread_cpu(host: Host, language: str, source: str, n: int) -> float:
    """CPU seconds of the run's own thread per call of a loop that returns the CPU time it
    took (LUA_LOOP_CPU, LUA_CATCH_CPU...: the same loop without calls subtracted): what the
    run itself pays, whatever other threads of the process do meanwhile."""
    def spent(call: bool) -> float:
        return host.run_source(source, language, "catch", {"n": n, "call": call})

    return (spent(True) - spent(False)) / n


def caught_failure(host: Host, language: str, source: str, n: int) -> float:
    """Seconds per tool failure delivered into the script and caught there."""
    def timed(call: bool) -> float:
        start = time.perf_counter()
        assert host.run_source(source, language, "catch", {"n": n, "call": call}) == n
        return time.perf_counter() - start

    return (timed(True) - timed(False)) / n


FailureModels = None  # the naive hosts' pydantic models of the error's two levels


def failure_models() -> Any:
    """The pydantic models a naive host validates ``explode``'s parameters and its error's
    fields with (the fields of ``tool/execution_failed`` and ``runtime/python_exception``)."""
    global FailureModels
    if FailureModels is None:
        import pydantic

        FailureModels = SimpleNamespace(
            params=pydantic.create_model("ExplodeParams", reason=(str, ...)),
            tool=pydantic.create_model("ToolFields", tool_name=(str, ...),
                                       parameters=(Any, None), execution_time=(float, ...),
                                       reason=(str, ...)),
            cause=pydantic.create_model("CauseFields", exception_type=(str, ...),
                                        exception_message=(str, ...)))
    return FailureModels


def naive_error(exc: Exception, params: Any, started: float) -> dict[str, Any]:
    """The error value polyspell hands a script for ``explode``'s failure, as a naive host
    would make it: both levels' fields validated by pydantic, a message, a random ref each
    (the call site's traceback is the engine's to add)."""
    models = failure_models()
    name, text = type(exc).__name__, str(exc)
    reason = f"{name}: {text}"
    cause = models.cause.model_validate({"exception_type": name,
                                         "exception_message": text}).__dict__
    fields = models.tool.model_validate({"tool_name": "explode", "parameters": params,
                                         "execution_time": time.perf_counter() - started,
                                         "reason": reason}).__dict__
    refs = memoryview(os.urandom(16)).cast("Q").tolist()
    return {"category": "tool", "kind": "execution_failed", "name": "ToolError",
            "message": f"Tool execution failed: explode - {reason}", "fields": fields,
            "retryable": False, "retry_after": None, "ref": refs[0] >> 11,
            "cause": {"category": "runtime", "kind": "python_exception",
                      "name": "RuntimeError", "message": reason, "fields": cause,
                      "retryable": False, "retry_after": None, "ref": refs[1] >> 11,
                      "cause": None}}


def caught_in_lua(runtime: Any, call: Any, n: int) -> float:
    """Seconds per ``pcall(call, {reason = "no"})`` that fails, in lupa ``runtime``,
    the same loop without the calls subtracted (the naive hosts' caught failures)."""
    loop = runtime.eval("function(call, n) local c = 0 for i = 1, n do "
                        "if not pcall(call, {reason = 'no'}) then c = c + 1 end end "
                        "return c end")
    empty = runtime.eval("function(n) local c = 0 for i = 1, n do c = c + 1 end return c end")
    return net_per_call(n, lambda: loop(call, n), lambda: empty(n), n)


def caught_in_js(context: Any, n: int) -> float:
    """Seconds per ``call({reason: 'no'})`` that throws, in quickjs ``context`` (which
    defines ``call``), caught, the same loop without the calls subtracted."""
    return net_per_call(
        n, lambda: context.eval(f"let c = 0; for (let i = 1; i <= {n}; i++) "
                                "{ try { call({reason: 'no'}); } catch (e) { c++; } } c"),
        lambda: context.eval(f"let d = 0; for (let i = 1; i <= {n}; i++) d++; d"), n)


def naive_lua_failure(n: int) -> float:
    """Seconds per caught failure of a naive Lua host doing the work polyspell's makes:
    lupa calls a Python function with a table, validated by pydantic; the tool raises; the
    host makes the same two-level error value (:func:`naive_error`) as Lua tables, the
    script's side adds the call site's traceback and raises it, and ``pcall`` catches it
    (no sandbox, no limits, no host-side error, no rethrow of the original)."""
    import lupa.lua55 as lupa

    models = failure_models()
    runtime = lupa.LuaRuntime(register_eval=False, register_builtins=False,
                              unpack_returned_tuples=True)

    def explode_tool(table: Any) -> tuple[bool, Any]:
        started = time.perf_counter()
        params = dict(table.items())
        try:
            explode(models.params.model_validate(params).reason)
        except Exception as exc:
            return False, runtime.table_from(naive_error(exc, params, started),
                                             recursive=True)
        return True, None

    call = runtime.eval("""function(f) return function(p)
      local ok, e = f(p)
      if ok then return e end
      local tb = debug.traceback(nil, 2)
      e.traceback, e.cause.traceback = tb, tb
      error(e, 0)
    end end""")(explode_tool)
    return caught_in_lua(runtime, call, n)


def naive_js_failure(n: int) -> float:
    """Seconds per caught failure of a naive JavaScript host doing the work polyspell's
    makes: add_callable receives the parameters as JSON text, validated by pydantic; the
    tool raises; the host answers the same error value (:func:`naive_error`) as JSON text,
    which the script's side makes into two ``Error`` objects with the call site's stack and
    throws, and ``catch`` catches."""
    import json

    import quickjs

    models = failure_models()
    context = quickjs.Context()

    def explode_tool(text: str) -> str:
        started = time.perf_counter()
        try:
            explode(models.params.model_validate_json(text).reason)
        except Exception as exc:
            return json.dumps({"ok": False,
                               "error": naive_error(exc, json.loads(text), started)})
        return '{"ok": true, "value": null}'

    context.add_callable("explode", explode_tool)
    context.eval("""
    function made(d, stack) {
      const e = new Error(d.message);
      e.name = d.name; e.category = d.category; e.kind = d.kind; e.fields = d.fields;
      e.retryable = d.retryable; e.retry_after = d.retry_after; e.ref = d.ref;
      e.stack = stack;
      if (d.cause !== null) e.cause = made(d.cause, stack);
      return e;
    }
    function call(params) {
      const reply = JSON.parse(explode(JSON.stringify(params)));
      if (reply.ok) return reply.value;
      throw made(reply.error, new Error().stack);
    }""")
    return caught_in_js(context, n)


def naive_bare_failure(language: str, n: int) -> float:
    """Seconds per caught failure of a naive host that makes no error value at all: the
    tool's exception goes into the script as lupa raises it (a Lua error of the exception),
    or in JS as an ``Error`` of its text that the script's side throws (quickjs 0.17's
    binding cannot let a callable's exception into JS: the process dies with "returned a
    result with an exception set"), and ``pcall`` or ``catch`` catches it."""
    models = failure_models()
    if language == "lua":
        import lupa.lua55 as lupa

        def lua_tool(table: Any) -> None:
            explode(models.params.model_validate(dict(table.items())).reason)

        return caught_in_lua(lupa.LuaRuntime(register_eval=False, register_builtins=False),
                             lua_tool, n)
    import quickjs

    context = quickjs.Context()

    def js_tool(text: str) -> str | None:
        try:
            explode(models.params.model_validate_json(text).reason)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    context.add_callable("explode", js_tool)
    context.eval("function call(p) { const failed = explode(JSON.stringify(p)); "
                 "if (failed !== null) throw new Error(failed); }")
    return caught_in_js(context, n)


REFUSED_CALLS = [0]  # calls that reached the tool behind the open breaker: must stay 0


@tool
def guarded(reason: str) -> None:
    """The tool behind a breaker held open: never called."""
    REFUSED_CALLS[0] += 1


LUA_REFUSED = LUA_CATCH.replace("tools.explode", "tools.guarded")
JS_REFUSED = JS_CATCH.replace("tools.explode", "tools.guarded")


def breaker_host() -> Host:
    """A host whose tool ``guarded`` is behind a breaker forced open."""
    breakers = Breakers()
    layer = breakers.layer_for("guarded", CircuitBreaker(failure_threshold=1))
    breakers.force_open("guarded")
    return Host([guarded], layers=[layer], on_output=lambda line: None)


def refused_call(host: Host, language: str, source: str, n: int) -> float:
    """Seconds per call refused by an open breaker, delivered into the script and caught."""
    per_call = caught_failure(host, language, source, n)
    assert REFUSED_CALLS[0] == 0, "the breaker let a call through"
    return per_call


def refusal_in_layer(n: int) -> float:
    """Seconds per refusal of the breaker layer alone (admit, the error made and raised)."""
    breakers = Breakers()
    step = breakers.layer_for("guarded", CircuitBreaker()).wrap(lambda call: None)
    breakers.force_open("guarded")
    run = SimpleNamespace(record_recovery=lambda *event: None)
    call = SimpleNamespace(deadline=0.0, name="guarded", run=run)
    start = time.perf_counter()
    for _ in range(n):
        try:
            step(call)  # type: ignore[arg-type]
        except Exception:
            pass
    return (time.perf_counter() - start) / n


FLAKY_TIMES: list[float] = []  # when each call of the flaky tool began


@tool
def flaky() -> str:
    """Fails with a retryable error until its fourth call."""
    FLAKY_TIMES.append(time.monotonic())
    if len(FLAKY_TIMES) < 4:
        raise ConnectionError("the service hung up")  # network/connection: retryable
    return "ok"


RETRY_SCHEDULE = Retry(attempts=4, backoff="exponential", initial=0.02, max_delay=1, jitter=0)


def retry_overshoot(host: Host) -> float:
    """Seconds by which the worst of a retried call's three waits passed its schedule
    (0.02, 0.04, 0.08 s: exponential, no jitter), measured between the tries' starts."""
    FLAKY_TIMES.clear()
    assert host.run_source("return tools.flaky{}", "lua") == "ok"
    gaps = [later - earlier for earlier, later in itertools.pairwise(FLAKY_TIMES)]
    schedule = [RETRY_SCHEDULE.delay(attempt) for attempt in (1, 2, 3)]
    assert all(gap >= wait for gap, wait in zip(gaps, schedule, strict=True)), (gaps, schedule)
    return max(gap - wait for gap, wait in zip(gaps, schedule, strict=True))


CONCURRENT_RUNS = 100
RUN_SOURCES = {"lua": "return args.n + 1",
               "javascript": "function main(args) { return args.n + 1; }"}


def concurrent_runs(host: Host, language: str, rounds: int = 3) -> float:
    """Runs per second, ``CONCURRENT_RUNS`` trivial runs of ``language`` at a time (each a
    fresh engine: its context or runtime, its sandbox, its prelude)."""
    import anyio

    source = RUN_SOURCES[language]

    async def one(i: int) -> None:
        assert await host.arun_source(source, language, args={"n": i}) == i + 1

    async def all_runs() -> None:
        for _ in range(rounds):
            async with anyio.create_task_group() as group:
                for i in range(CONCURRENT_RUNS):
                    group.start_soon(one, i)

    start = time.perf_counter()
    anyio.run(all_runs)
    return rounds * CONCURRENT_RUNS / (time.perf_counter() - start)


@functools.cache
def command_env() -> dict[str, str]:
    """The environment of the command line rows: bytecode cached, as for an installed
    package (pip compiles it), in a folder of the bench's own rather than beside the
    sources (PYTHONDONTWRITEBYTECODE, set on some machines, would otherwise compile
    every module on every start: 40% of the command's time here), warmed by one start."""
    import atexit
    import shutil
    import tempfile

    env = {key: value for key, value in os.environ.items()
           if key != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = folder = tempfile.mkdtemp(prefix="polyspell-bench-pyc-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    for command in (["-c", "pass"], ["-m", "host.cli", "run", str(ROOT / "scripts/hello.lua")]):
        subprocess.run([sys.executable, *command], check=True, capture_output=True, cwd=ROOT,
                       env=env)
    return env


def python_pass() -> float:
    """Seconds for ``python -c pass``: the floor of any command line start."""
    env = command_env()
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def cli_hello() -> float:
    """Seconds for ``polyspell run scripts/hello.lua`` as a user types it."""
    env = command_env()
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "host.cli", "run", str(ROOT / "scripts/hello.lua")],
                   check=True, capture_output=True, cwd=ROOT, env=env)
    return time.perf_counter() - start


# -- the coordinator (plans of tasks) ------------------------------------------------------

TRIVIAL = {"lua": "return args.n", "javascript": "function main(args) { return args.n; }"}
CPU_BOUND = {
    "lua": "local x = 0 for i = 1, args.n do x = x + i % 7 end return x",
    "javascript": "function main(args) { let x = 0; "
                  "for (let i = 1; i <= args.n; i++) x += i % 7; return x; }",
}
CPU_LOOPS = {"lua": 12_000_000, "javascript": 4_000_000}  # about 0.3 s each here
EXT = {"lua": ".lua", "javascript": ".js"}


def bench_scripts(folder: Path, sources: dict[str, str], name: str) -> dict[str, Path]:
    """The scripts of one bench plan, one per language, written into ``folder``."""
    paths = {}
    for language, source in sources.items():
        paths[language] = folder / f"{name}{EXT[language]}"
        paths[language].write_text(source)
    return paths


def coordinator_overhead(folder: Path, n: int) -> float:
    """CPU seconds the coordinator adds per task: n trivial tasks run one at a time through
    a plan, minus the same n runs made directly with ``Host.new_run``. The process's CPU
    time, not the wall clock: the overhead is a small difference of two long runs, which
    other processes' load (this machine is shared) moved by 2x between runs."""
    import anyio

    from host import Coordinator, Plan, Task

    script = bench_scripts(folder, TRIVIAL, "trivial")["lua"]
    coordinator = Coordinator(on_output=lambda task, line: None)
    plan = Plan(max_concurrency=1, tasks=[Task(id=f"t{i}", script=script, args={"n": i})
                                          for i in range(n)])
    host = Host(on_output=lambda line: None)

    async def direct() -> None:
        for i in range(n):
            await host.new_run(script, {"n": i, "inputs": {}}, timeout=30.5).execute()

    start = time.process_time()
    anyio.run(direct)
    direct_time = time.process_time() - start
    start = time.process_time()
    report = coordinator.run(plan)
    coordinated_time = time.process_time() - start
    assert report.outcome == "succeeded", report.outcome
    return (coordinated_time - direct_time) / n


def independent_plan(folder: Path, n: int, isolation: str = "thread",
                     executor: Any = None) -> float:
    """Seconds for a plan of n independent trivial tasks, half Lua, half JS (the
    coordinator made and warm first: in process mode, as many workers ready as the plan
    runs at once; on Ray, its actors made)."""
    from host import Coordinator, Plan, Task

    scripts = bench_scripts(folder, TRIVIAL, "trivial")
    plan = Plan(tasks=[Task(id=f"t{i}", script=scripts["lua" if i % 2 else "javascript"],
                            args={"n": i}) for i in range(n)])
    coordinator = Coordinator(on_output=lambda task, line: None, isolation=isolation,
                              executor=executor)
    # warm: in process mode its pool grows to the plan's concurrency once (a long-lived
    # host's state; a worker's start is its own row)
    coordinator.run(Plan(tasks=plan.tasks[:64]))
    start = time.perf_counter()
    report = coordinator.run(plan)
    elapsed = time.perf_counter() - start
    coordinator.close()
    assert report.results == {f"t{i}": i for i in range(n)}
    return elapsed


def cpu_speedup(folder: Path, language: str, executor: Any = None) -> float:
    """Two CPU-bound tasks, each on its own engine (on Ray: its own worker): one after
    the other / at the same time."""
    from host import Coordinator, Plan, Task

    script = bench_scripts(folder, {language: CPU_BOUND[language]}, "cpu")[language]
    tasks = [Task(id=f"cpu{i}", script=script, args={"n": CPU_LOOPS[language]})
             for i in range(2)]
    coordinator = Coordinator(on_output=lambda task, line: None, executor=executor)
    if executor is not None:  # its workers made first (a local coordinator has none)
        coordinator.run(Plan(tasks=[Task(id="warm", script=script, args={"n": 1})]))
    timings = []
    for concurrency in (1, 2):
        start = time.perf_counter()
        report = coordinator.run(Plan(tasks=tasks, max_concurrency=concurrency))
        timings.append(time.perf_counter() - start)
        assert report.outcome == "succeeded", report.outcome
    return timings[0] / timings[1]


LUA_HOOK = "hooks.after_tool_call(function(ctx) end)\n"
JS_HOOK = "hooks.afterToolCall((ctx) => {});\n"


def coordinator_rows(repeats: int) -> list[Row]:
    """The coordinator's rows of the table."""
    import tempfile

    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        coordinator_overhead(folder, 50)  # warm up: engine modules, pydantic models
        independent_plan(folder, 50)
        # the least of the repeats: the overhead is a small difference of two long runs, to
        # which the machine's other work (GC, other processes) only adds. Each repeat of the
        # 1,000-task row runs ten such plans, so that both rows average over as many tasks:
        # the least of seven noisier figures would read lower, and the ratio higher
        scale = compared("coordinator overhead per task, 10,000 tasks (CPU, least)", "ms",
                         1e3, "<= 1.25x", repeats,
                         lambda: coordinator_overhead(folder, 10_000),
                         "the same at 1,000 tasks (ten plans a repeat)",
                         lambda: statistics.mean(coordinator_overhead(folder, 1000)
                                                 for _ in range(10)),
                         pick=min)
        memory = median_of(max(1, repeats // 2), lambda: plan_memory(folder, 10_000, None))
        return [
            ("coordinator overhead per trivial task",
             median_of(repeats, lambda: coordinator_overhead(folder, 300)) * 1e3, "ms", "<= 1"),
            *scale,
            ("plan memory per task, 10,000 tasks (peak RSS growth)", memory * 1e3 / 10_000,
             "KB", "<= 5"),
            ("plan of 1,000 trivial tasks, half Lua half JS",
             median_of(max(3, repeats // 2), lambda: independent_plan(folder, 1000)), "s",
             "<= 3"),
            ("2 CPU-bound Lua tasks: parallel speed-up",
             median_of(3, lambda: cpu_speedup(folder, "lua")), "x", ">= 1.6"),
            ("2 CPU-bound JS tasks: parallel speed-up",
             median_of(3, lambda: cpu_speedup(folder, "javascript")), "x", ">= 1.6"),
        ]


def added_cost(base: Host, other: Host, language: str, source: str, repeats: int
               ) -> tuple[float, float]:
    """Round trips of ``base`` and ``other`` measured in turn: the median of ``base``'s
    and what ``other`` adds to it (median of the differences of each pair), in seconds."""
    pairs = [(tool_round_trip(base, language, source, 20_000),
              tool_round_trip(other, language, source, 20_000)) for _ in range(repeats)]
    return (statistics.median(b for b, _ in pairs),
            statistics.median(o - b for b, o in pairs))


@hooks.observer("tool_call_finished")
def watch_calls(ctx: hooks.ToolResultContext) -> None:
    """The smallest observer."""


@hooks.observer("tool_call_finished", failures_only=True)
def watch_failures(ctx: hooks.ToolResultContext) -> None:
    """The smallest observer of failed calls (none fail here)."""


@hooks.observer("run_finished")
def watch_runs(ctx: hooks.RunFinishedContext) -> None:
    """The smallest run observer: the run counts its tool calls for it."""


@hooks.controller("after_tool_call")
def pass_calls(ctx: hooks.ToolResultContext) -> None:
    """The smallest controller: answers Continue."""


def hooks_rows(repeats: int) -> list[Row]:
    """What hooks add to a tool round trip, each against no hooks in the same run: Python
    hooks to a Lua one; a script's own after_tool_call hook (returning nothing) to its
    language's."""
    us = 1e6
    plain = Host([add], on_output=lambda line: None)
    rows = []
    base, _ = added_cost(plain, plain, "lua", LUA_LOOP, repeats)
    rows.append(("round trip, Lua, no hooks registered", base * us, "us", ""))
    for name, hook in (("one Python observer (tool_call_finished)", watch_calls),
                       ("one observer of failed calls only", watch_failures),
                       ("one run_finished observer (counts calls)", watch_runs),
                       ("one Python controller (after_tool_call)", pass_calls)):
        hooked = Host([add], on_output=lambda line: None, hooks=[hook])
        _, extra = added_cost(plain, hooked, "lua", LUA_LOOP, repeats)
        rows.append((f"  + {name}", extra * us, "us",
                     "<= 2" if "observer" in name else ""))
    for language, loop, hook, name in (("lua", LUA_LOOP, LUA_HOOK, "Lua"),
                                       ("javascript", JS_LOOP, JS_HOOK, "JS")):
        tool_round_trip(plain, language, hook + loop, 2000)  # warm up
        pairs = [(tool_round_trip(plain, language, loop, 20_000),
                  tool_round_trip(plain, language, hook + loop, 20_000))
                 for _ in range(repeats)]
        rows.append((f"  + one {name} script hook (after_tool_call)",
                     statistics.median(o - b for b, o in pairs) * us, "us", "<= 3"))
    return rows


def record_cost(host: Host, n: int) -> float:
    """Seconds to make the record of a tool failure caught in Lua (its JSON is most)."""
    from bridge import SpellError
    from host.monitor.records import make_record

    try:
        host.run_source("local x = tools.explode{reason = 'no'} return x", "lua", "catch")
    except SpellError as err:
        start = time.perf_counter()
        for _ in range(n):
            make_record(err, handled=True, tool="explode", run_id="r", engine="lua")
        return (time.perf_counter() - start) / n
    raise AssertionError("explode did not fail")


def monitor_rows(repeats: int) -> list[Row]:
    """What a Monitor (host.monitor) adds: to a tool round trip when nothing fails, and to
    a failing call on the run's thread, each against no monitor in the same run."""
    import tempfile

    from host.monitor import Monitor

    us = 1e6
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        monitor = Monitor(Path(folder) / "errors.db")
        plain = Host([add, explode, cpu], on_output=lambda line: None)
        watched = Host([add, explode, cpu], on_output=lambda line: None,
                       monitor=monitor)
        for language, source in (("lua", LUA_LOOP), ("javascript", JS_LOOP)):
            base, extra = added_cost(plain, watched, language, source, repeats)
            rows.append((f"round trip, {language}, monitoring off", base * us, "us", ""))
            rows.append(("  + monitoring on (nothing fails), %", extra / base * 100, "%",
                         "<= 3"))
        for language, source in (("lua", LUA_CATCH), ("javascript", JS_CATCH)):
            pairs = [(caught_failure(plain, language, source, 300),
                      caught_failure(watched, language, source, 300))
                     for _ in range(repeats)]
            monitor.flush(60)
            rows.append((f"failing call caught, {language}, no monitor",
                         statistics.median(b for b, _ in pairs) * us, "us", ""))
            rows.append(("  + recorded, wall time (GIL shared with the recorder)",
                         statistics.median(o - b for b, o in pairs) * us, "us", ""))
            cpu_source = LUA_CATCH_CPU if language == "lua" else JS_CATCH_CPU
            pairs = [(run_thread_cpu(plain, language, cpu_source, 300),
                      run_thread_cpu(watched, language, cpu_source, 300))
                     for _ in range(repeats)]
            monitor.flush(60)
            rows.append(("  + recorded, CPU of the run's thread",
                         statistics.median(o - b for b, o in pairs) * us, "us", "<= 50"))

        def recorded_end_to_end() -> float:
            start = time.perf_counter()
            assert watched.run_source(LUA_CATCH, "lua", "catch", {"n": 300, "call": True}) \
                == 300
            watched.hooks.flush()
            monitor.flush(60)
            return (time.perf_counter() - start) / 300

        rows.append(("  Lua failing call, run + record + SQLite write",
                     median_of(repeats, recorded_end_to_end) * us, "us", ""))
        rows.append(("  make_record of that error (observers' thread)",
                     median_of(repeats, lambda: record_cost(plain, 500)) * us, "us", ""))
        monitor.close()
    return rows


# -- the error store (host.monitor) -----------------------------------------------------

STORE_FRAMES = 20  # frames of the error each record holds
MILLION = 1_000_000
BIG_STORE = Path(os.environ.get("TMPDIR", "/tmp")) / "polyspell-bench-1m-errors.db"


def store_records(count: int, start: float, span: float, groups: int = 40
                  ) -> list[dict]:
    """``count`` records of 20-frame errors over ``span`` seconds from ``start``, in
    ``groups`` groups (8 tools, 5 codes), a third of them handled."""
    from bridge import NetworkError, ToolError
    from bridge.frames import Frame
    from host.monitor.records import make_record

    bases = []
    for n in range(groups):
        tool_name = f"tool{n % 8}"
        makers = [lambda t=tool_name: ToolError.ExecutionFailed(tool_name=t, reason="down"),
                  lambda t=tool_name: ToolError.Timeout(tool_name=t, duration=2.0),
                  lambda t=tool_name: NetworkError.Timeout(endpoint=f"https://{t}", duration=5),
                  lambda t=tool_name: NetworkError.HttpStatus(endpoint=f"https://{t}",
                                                              status=503),
                  lambda t=tool_name: ToolError.NotFound(tool_name=t)]
        err = makers[n % 5]()
        err.frames = [Frame("lua" if i % 2 else "python",
                            f"agent{n % 3}.lua" if i % 2 else "tools.py", 10 + i, 3,
                            f"step{i}", f"local x{i} = tools.{tool_name}{{query = q}}")
                      for i in range(STORE_FRAMES)]
        bases.append(make_record(err, tool=tool_name, run_id="bench"))
    step = span / max(1, count)
    out = []
    for i in range(count):
        record = dict(bases[i % groups])
        record["id"] = f"{i:08x}{os.getpid() & 0xffff:04x}{len(out) & 0xffff:04x}"
        record["timestamp"] = start + i * step
        record["handled"] = i % 3 == 0
        out.append(record)
    return out


def store_write_rate(path: Path, records: list[dict], baseline: bool = False) -> float:
    """Records per second written by Store.write in batches of 5000 (``baseline``: as
    schema 1 wrote them: each record's whole error JSON compressed)."""
    from host.monitor import store as store_module

    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    store = store_module.Store(path)
    if baseline:
        import json
        import zlib

        def whole_row(record: dict, shared: dict) -> tuple:
            row = original(record, shared)
            data = json.dumps(record["error"], ensure_ascii=False, allow_nan=False)
            return (*row[:-1], zlib.compress(data.encode("utf-8", "surrogatepass"), 1))

        original = store._row
        store._row = whole_row  # type: ignore[method-assign]
    began = time.perf_counter()
    for start in range(0, len(records), 5000):
        store.write(records[start:start + 5000])
    elapsed = time.perf_counter() - began
    store.close()
    return len(records) / elapsed


def store_size_per_record(path: Path, count: int) -> float:
    """Bytes of the file per record, after a checkpoint (the WAL folded in)."""
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    return pages * size / count


def big_store() -> Path:
    """A store of a million records over 30 days, made once (kept in the temporary
    folder for later runs, by schema version)."""
    from host.monitor.store import SCHEMA_VERSION, Store

    path = BIG_STORE.with_suffix(f".v{SCHEMA_VERSION}.db")
    if path.exists():
        return path
    building = path.with_suffix(".building")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{building}{suffix}").unlink(missing_ok=True)
    store = Store(building)
    now = time.time()
    chunk = 50_000
    for first in range(0, MILLION, chunk):
        records = store_records(chunk, now - 30 * 86400 + first * 30 * 86400 / MILLION,
                                chunk * 30 * 86400 / MILLION)
        for record in records:
            record["id"] = f"{first:08x}{record['id'][8:]}"
        for start in range(0, chunk, 10_000):
            store.write(records[start:start + 10_000])
    store.close()
    import sqlite3

    db = sqlite3.connect(building)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    building.rename(path)
    return path


def stats_seconds(path: Path, window: str) -> float:
    from host.monitor.analysis import stats
    from host.monitor.store import Store

    store = Store(path)
    began = time.perf_counter()
    stats(store, window)
    elapsed = time.perf_counter() - began
    store.close()
    return elapsed


def cli_errors(path: Path, *args: str) -> float:
    """Seconds of ``polyspell errors ARGS --json`` end to end (a new process)."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "host.cli", "errors", *args, "--errors-db",
                    str(path), "--json"], check=True, capture_output=True, cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - began


def store_rows(repeats: int) -> list[Row]:
    """The error store: sustained writing (against schema 1's encoding in the same
    run), size per record, and statistics over a million records."""
    import tempfile

    rows = []
    folder = Path(tempfile.mkdtemp(prefix="polyspell-bench-"))
    records = store_records(50_000, time.time() - 86400, 86400)
    pairs = [(store_write_rate(folder / "new.db", records),
              store_write_rate(folder / "old.db", records, baseline=True))
             for _ in range(max(3, repeats // 2))]
    rows.append((f"store: records written per second ({STORE_FRAMES} frames)",
                 statistics.median(n for n, _ in pairs) / 1000, "k/s", ">= 20"))
    rows.append(("  baseline: each whole error JSON zlib'd (v1)",
                 statistics.median(o for _, o in pairs) / 1000, "k/s", ""))
    store_write_rate(folder / "new.db", records)
    rows.append((f"store: size per record ({STORE_FRAMES}-frame error)",
                 store_size_per_record(folder / "new.db", len(records)) / 1024, "KB",
                 "<= 2"))
    store_write_rate(folder / "old.db", records, baseline=True)
    rows.append(("  baseline: each whole error JSON zlib'd (v1)",
                 store_size_per_record(folder / "old.db", len(records)) / 1024, "KB", ""))
    big = big_store()
    for window in ("24h", "30d"):
        rows.append((f"stats --window {window}, 1,000,000 records, in-process",
                     median_of(repeats, lambda w=window: stats_seconds(big, w)), "s",
                     "<= 1"))
    rows.append(("polyspell errors stats --window 30d (1M), CLI",
                 median_of(repeats, lambda: cli_errors(big, "stats", "--window", "30d")),
                 "s", "<= 1"))
    rows.append(("polyspell errors trends --window 30d (1M), CLI",
                 median_of(repeats, lambda: cli_errors(big, "trends", "--window", "30d")),
                 "s", ""))
    rows.append(("polyspell errors groups (1M records), CLI",
                 median_of(repeats, lambda: cli_errors(big, "groups")), "s", "<= 1"))
    rows.append(("polyspell errors list --limit 50 (1M), CLI",
                 median_of(repeats, lambda: cli_errors(big, "list")), "s", ""))
    for suffix in ("new.db", "old.db"):
        for extra in ("", "-wal", "-shm"):
            Path(f"{folder / suffix}{extra}").unlink(missing_ok=True)
    folder.rmdir()
    return rows


def pool_engine(pool: WorkerPool, language: str, first_step: bool) -> float:
    """Seconds to a ready engine from a pool of prewarmed workers (``first_step``: and to
    the end of its first trivial script, which makes the engine in the worker)."""
    source = "return 1" if language == "lua" else "1"
    start = time.perf_counter()
    engine = pool.make_engine(language, limits=Limits())
    if first_step:
        engine.start(source, "ready", None, [], time.monotonic() + 10)
    elapsed = time.perf_counter() - start
    engine.close()
    time.sleep(0.05)  # the worker settles (drops the engine) before the next take
    return elapsed


def cli_run_hello(isolation: str) -> float:
    """Seconds of ``polyspell run scripts/hello.lua --no-record`` end to end (a new
    process, as a user starts it)."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "host.cli", "run", "scripts/hello.lua",
                    "--no-record", "--isolation", isolation], check=True,
                   capture_output=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - began


def isolation_rows(repeats: int) -> list[Row]:
    """Process isolation against thread mode, in the same run (issue 14's rows)."""
    rows = []
    us, ms = 1e6, 1e3
    with Host([add], on_output=lambda line: None) as threads, \
            Host([add], on_output=lambda line: None, isolation="process") as processes:
        processes.run_source("return 1", "lua")  # the pool is warm
        for language, source in (("lua", LUA_LOOP), ("javascript", JS_LOOP)):
            name = "Lua" if language == "lua" else "JS"
            rows.append((f"tool round trip, {name}, thread mode",
                         median_of(repeats, lambda h=threads, lang=language, src=source:
                                   tool_round_trip(h, lang, src, 5000)) * us, "us", ""))
            rows.append((f"tool round trip, {name}, process mode",
                         median_of(repeats, lambda h=processes, lang=language, src=source:
                                   tool_round_trip(h, lang, src, 5000)) * us, "us", "<= 40"))
    import tempfile

    with tempfile.TemporaryDirectory() as name:
        pairs = [(independent_plan(Path(name), 1000),
                  independent_plan(Path(name), 1000, "process"))
                 for _ in range(max(3, repeats // 2))]
    rows.append(("plan of 1,000 trivial tasks, thread mode",
                 statistics.median(t for t, _ in pairs), "s", ""))
    rows.append(("  process mode, x thread mode", statistics.median(p / t for t, p in pairs),
                 "x", "<= 2"))
    for isolation in ("thread", "process"):
        rows.append((f"polyspell run hello.lua --isolation {isolation}, end to end",
                     median_of(repeats, lambda i=isolation: cli_run_hello(i)) * ms, "ms",
                     "<= 250" if isolation == "process" else ""))
    with WorkerPool(1) as pool:
        pool_engine(pool, "lua", True)  # started and warm
        for language in ("lua", "javascript"):
            rows.append((f"ready engine from the pool, {language}",
                         median_of(repeats * 5, lambda lang=language:
                                   pool_engine(pool, lang, False)) * ms, "ms", "<= 1"))
            rows.append(("  ... and its first trivial script",
                         median_of(repeats * 5, lambda lang=language:
                                   pool_engine(pool, lang, True)) * ms, "ms", ""))
    return rows


def module_run(host: Host, script: Path) -> float:
    began = time.perf_counter()
    host.run(script)
    return time.perf_counter() - began


def modules_rows(repeats: int) -> list[Row]:
    """JavaScript modules (issue 15): a run that brings a library in, against one that does
    not; mustache.js as vendored for the tests, and a graph of 200 small ES modules."""
    import shutil
    import tempfile

    rows = []
    ms = 1e3
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        shutil.copytree(ROOT / "tests" / "vendor" / "mustache", folder / "lib" / "mustache")
        for i in range(200):
            following = f'import {{v{i + 1}}} from "./m{i + 1}.mjs";\n' if i < 199 else ""
            tail = f"v{i + 1} + 1" if i < 199 else "1"
            (folder / "lib" / f"m{i}.mjs").write_text(f"{following}export const v{i} = {tail};\n")
        scripts = {}
        for key, source in {
            "plain.js": "function main() { return 1; }",
            "use_require.js": 'const M = require("mustache");\n'
                              'function main() { return M.render("{{a}}", {a: 1}); }',
            "use_import.mjs": 'import M from "mustache";\n'
                              'export function main() { return M.render("{{a}}", {a: 1}); }',
            "use_graph.mjs": 'import {v0} from "m0.mjs";\nexport function main() { return v0; }',
        }.items():
            scripts[key] = folder / key
            scripts[key].write_text(source)
        with Host(libraries=[folder / "lib"], on_output=lambda line: None) as host:
            for key, label in (("plain.js", "a .js script run, no module"),
                               ("use_require.js", "  ... requiring mustache.js (25 KB)"),
                               ("use_import.mjs", "  ... importing mustache.mjs (23 KB)"),
                               ("use_graph.mjs", "  ... importing a chain of 200 modules")):
                module_run(host, scripts[key])  # read once: the host's cache is warm
                rows.append((label, median_of(repeats * 3, lambda s=scripts[key]:
                                              module_run(host, s)) * ms, "ms", ""))
def rss_mb() -> float:
    """This process's resident memory, in MB (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def plan_memory(folder: Path, n: int, executor: Any) -> float:
    """MB the coordinator's process grows by at most while it runs a plan of n trivial
    tasks (sampled every 10 ms), over what it held before."""
    import threading

    from host import Coordinator, Plan, Task

    script = bench_scripts(folder, TRIVIAL, "trivial")["lua"]
    plan = Plan(tasks=[Task(id=f"t{i}", script=script, args={"n": i}) for i in range(n)])
    coordinator = Coordinator(on_output=lambda task, line: None, executor=executor)
    coordinator.run(Plan(tasks=plan.tasks[:8]))  # its workers made
    before, peak, done = rss_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], rss_mb())

    sampler = threading.Thread(target=sample)
    sampler.start()
    report = coordinator.run(plan)
    done.set()
    sampler.join()
    assert report.outcome == "succeeded", report.outcome
    return max(peak[0], rss_mb()) - before


def ray_rows(repeats: int) -> list[Row]:
    """Plans on a local Ray (2 CPUs here) against the local executor (issue 16's rows)."""
    import tempfile

    from host.ray_executor import RayExecutor

    executor = RayExecutor()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as name:
            folder = Path(name)
            pairs = [(independent_plan(folder, 1000), independent_plan(folder, 1000,
                                                                       executor=executor))
                     for _ in range(max(3, repeats // 2))]
            rows.append(("plan of 1,000 trivial tasks, local executor",
                         statistics.median(t for t, _ in pairs), "s", ""))
            rows.append(("  on a local Ray, x local", statistics.median(r / t for t, r in pairs),
                         "x", "<= 5"))
            for language in ("lua", "javascript"):
                rows.append((f"2 CPU-bound {language} tasks on Ray: speed-up",
                             median_of(3, lambda lang=language: cpu_speedup(
                                 folder, lang, executor)), "x", ">= 1.6"))
            rows.append(("coordinator memory, 10,000-task plan on Ray",
                         plan_memory(folder, 10_000, executor), "MB", "<= 100"))
    finally:
        executor.close()
# CPU-bound Lua: arithmetic and table work, no tool call (the same value on every version).
LUA_CPU = """
local t, total = {}, 0
for i = 1, 1000 do t[i] = i end
for r = 1, args.n do
  for i = 1, 1000 do
    local v = t[i] * 3 + r
    t[i] = v % 1000
    total = total + v % 7
  end
end
return total
"""


def lua_cpu_seconds(host: Host, n: int) -> float:
    """Seconds of a run of LUA_CPU (n rounds of 1,000 items) on the host's Lua."""
    start = time.perf_counter()
    host.run_source(LUA_CPU, "lua", "cpu.lua", {"n": n})
    return time.perf_counter() - start


def lua_versions_rows(repeats: int) -> list[Row]:
    """Each Lua version on CPU-bound work (issue 15): LuaJIT compiles only in a worker
    process (the host kills it at the deadline), interprets in thread mode (its count
    hook does not fire in compiled code, so the time limit needs the interpreter)."""
    n, ms = 2000, 1e3
    rows, seconds, values = [], {}, set()
    with WorkerPool(1) as pool:
        cases = [("5.5", "thread"), ("5.4", "thread"), ("luajit", "thread"),
                 ("5.5", "process"), ("luajit", "process")]
        for version, isolation in cases:
            if version == "luajit" and isolation == "thread":
                # not offered by the host (README: Lua versions): engines made directly,
                # whose JIT compiler is off so that the count hook holds
                factory = functools.partial(make_engine, lua_version="luajit")
                host = Host(timeout=120, on_output=lambda line: None, engine_factory=factory)
            else:
                host = Host(lua_version=version, timeout=120, on_output=lambda line: None,
                            isolation=pool if isolation == "process" else "thread")
            values.add(host.run_source(LUA_CPU, "lua", "cpu.lua", {"n": 10}))  # and warm
            seconds[version, isolation] = median_of(repeats, lambda h=host: lua_cpu_seconds(h, n))
            name = {"5.5": "Lua 5.5", "5.4": "Lua 5.4", "luajit": "LuaJIT"}[version]
            where = "engine, JIT off" if (version, isolation) == ("luajit", "thread") \
                else isolation
            rows.append((f"CPU-bound Lua (2M items), {name}, {where}",
                         seconds[version, isolation] * ms, "ms", ""))
    assert len(values) == 1, values  # the same work, the same value, on every version
    rows.append(("  Lua 5.5 / LuaJIT, engine with JIT off",
                 seconds["5.5", "thread"] / seconds["luajit", "thread"], "x", ""))
    rows.append(("  Lua 5.5 / LuaJIT, process mode (JIT on)",
                 seconds["5.5", "process"] / seconds["luajit", "process"], "x", ""))
    return rows


INTS = 10_000  # the list of integers the data rows move
DICTS = 1_000  # the list of small dicts ({id, name}) they move
MEGABYTE = 1 << 20


class Item(TypedDict):
    """The realistic shape of structured data: a small record."""

    id: int
    name: str


@tool
def take_ints(values: list[int]) -> int:
    """A list of integers, one way."""
    return len(values)


@tool
def echo_ints(values: list[int]) -> list[int]:
    """A list of integers, back to the script."""
    return values


@tool
def take_items(items: list[Item]) -> int:
    """A list of small dicts, one way."""
    return len(items)


@tool
def echo_items(items: list[Item]) -> list[Item]:
    """A list of small dicts, back to the script."""
    return items


@tool
def take_text(text: str) -> int:
    """A long string, one way."""
    return len(text)


# Each script makes its data once, then calls the tool args.n times (or, with no call,
# does the same work on its own copy): the difference is the cost of the crossings.
LUA_INTS = f"local data = {{}} for i = 1, {INTS} do data[i] = i end"
LUA_ITEMS = (f"local data = {{}} for i = 1, {DICTS} do data[i] = {{id = i, "
             f"name = 'item ' .. i}} end")
LUA_DATA = {
    "take_ints": (LUA_INTS, "tools.take_ints{values = data}", "#data"),
    "echo_ints": (LUA_INTS, "#tools.echo_ints{values = data}", "#data"),
    "take_items": (LUA_ITEMS, "tools.take_items{items = data}", "#data"),
    "echo_items": (LUA_ITEMS, "#tools.echo_items{items = data}", "#data"),
    "take_text": (f"local data = string.rep('x', {MEGABYTE})", "tools.take_text{text = data}",
                  "#data"),
}
LUA_DATA_LOOP = """
{make}
local total = 0
for i = 1, args.n do
  if args.call then total = total + {call} else total = total + {alone} end
end
return total
"""
JS_INTS = f"const data = Array.from({{length: {INTS}}}, (_, i) => i + 1);"
JS_ITEMS = (f"const data = Array.from({{length: {DICTS}}}, (_, i) => ({{id: i + 1, "
            f"name: 'item ' + (i + 1)}}));")
JS_DATA = {
    "take_ints": (JS_INTS, "await tools.take_ints({values: data})", "data.length"),
    "echo_ints": (JS_INTS, "(await tools.echo_ints({values: data})).length", "data.length"),
    "take_items": (JS_ITEMS, "await tools.take_items({items: data})", "data.length"),
    "echo_items": (JS_ITEMS, "(await tools.echo_items({items: data})).length", "data.length"),
    "take_text": (f"const data = 'x'.repeat({MEGABYTE});", "await tools.take_text({text: data})",
                  "data.length"),
}
JS_DATA_LOOP = """
async function main(args) {{
  {make}
  let total = 0;
  for (let i = 1; i <= args.n; i++) {{
    total += args.call ? {call} : {alone};
  }}
  return total;
}}
"""


def data_crossing(host: Host, language: str, name: str, n: int) -> float:
    """Seconds per call of the data tool ``name`` (see LUA_DATA, JS_DATA): a loop of n
    calls minus the same loop without calls."""
    make, call, alone = (LUA_DATA if language == "lua" else JS_DATA)[name]
    source = (LUA_DATA_LOOP if language == "lua" else JS_DATA_LOOP).format(
        make=make, call=call, alone=alone)

    def timed(with_call: bool) -> tuple[float, Any]:
        start = time.perf_counter()
        result = host.run_source(source, language, f"data.{language}",
                                 {"n": n, "call": with_call})
        return time.perf_counter() - start, result

    with_calls, total = timed(True)
    alone_time, expected = timed(False)
    assert total == expected, (total, expected)
    return (with_calls - alone_time) / n


@functools.cache
def data_models() -> SimpleNamespace:
    """The pydantic models a naive host validates the data tools' parameters with."""
    import pydantic

    return SimpleNamespace(
        ints=pydantic.create_model("Ints", values=(list[int], ...)),
        items=pydantic.create_model("Items", items=(list[Item], ...)),
        ints_out=pydantic.TypeAdapter(list[int]), items_out=pydantic.TypeAdapter(list[Item]))


def naive_lua_data(shape: str, echo: bool, n: int) -> float:
    """Seconds per call of a naive Lua host moving a list (``"ints"`` or ``"items"``):
    lupa passes the table to a Python function, which converts it to Python data and
    validates it with pydantic (and, echoing, hands the validated list back as a table,
    which the script reads)."""
    import lupa.lua55 as lupa

    models = data_models()
    runtime = lupa.LuaRuntime(register_eval=False, register_builtins=False)
    model = models.ints if shape == "ints" else models.items

    def tool_fn(table: Any) -> Any:
        if shape == "ints":
            params = model.model_validate({"values": list(table["values"].values())})
            values = params.values
        else:
            params = model.model_validate({"items": [dict(item.items()) for item in
                                                     table["items"].values()]})
            values = params.items
        if not echo:
            return len(values)
        return runtime.table_from(values, recursive=True)

    key = "values" if shape == "ints" else "items"
    count = INTS if shape == "ints" else DICTS
    make = LUA_INTS if shape == "ints" else LUA_ITEMS
    use = f"#f{{{key} = data}}" if echo else f"f{{{key} = data}}"
    loop = runtime.eval(f"function(f, n) {make} local t = 0 for i = 1, n do t = t + {use} end "
                        "return t end")
    empty = runtime.eval(f"function(n) {make} local t = 0 for i = 1, n do t = t + #data end "
                         "return t end")
    return net_per_call(n, lambda: loop(tool_fn, n), lambda: empty(n), count * n)


def naive_js_data(shape: str, echo: bool, n: int) -> float:
    """Seconds per call of a naive JavaScript host moving a list: add_callable receives
    JSON text, validated by pydantic's model_validate_json (and, echoing, returns the
    validated list as JSON text, which the script parses)."""
    import quickjs

    models = data_models()
    model = models.ints if shape == "ints" else models.items
    out = models.ints_out if shape == "ints" else models.items_out
    context = quickjs.Context()

    def tool_fn(text: str) -> Any:
        params = model.model_validate_json(text)
        values = params.values if shape == "ints" else params.items
        return out.dump_json(values).decode() if echo else len(values)

    context.add_callable("f", tool_fn)
    key = "values" if shape == "ints" else "items"
    count = INTS if shape == "ints" else DICTS
    make = JS_INTS if shape == "ints" else JS_ITEMS
    call = f"f(JSON.stringify({{{key}: data}}))"
    use = f"JSON.parse({call}).length" if echo else call
    return net_per_call(
        n, lambda: context.eval(f"(() => {{ {make} let t = 0; for (let i = 1; i <= {n}; i++) "
                                f"t += {use}; return t; }})()"),
        lambda: context.eval(f"(() => {{ {make} let t = 0; for (let i = 1; i <= {n}; i++) "
                             "t += data.length; return t; })()"),
        count * n)


def data_rows(repeats: int) -> list[Row]:
    """Structured data across the boundary (issue 17): lists of 10,000 integers and of
    1,000 small dicts, one way and echoed back, and a 1 MB string, each compared with a
    naive host (or, where the target is relative, with the row it is relative to)."""
    host = Host([take_ints, echo_ints, take_items, echo_items, take_text],
                on_output=lambda line: None)
    rows: list[Row] = []
    ms = 1e3
    names = {"lua": "Lua", "javascript": "JS"}
    naive = {"lua": ("naive host: lupa table -> Python + pydantic", naive_lua_data),
             "javascript": ("naive host: quickjs + JSON + pydantic", naive_js_data)}
    for language in ("lua", "javascript"):
        name = names[language]
        baseline, naive_fn = naive[language]
        one_way = functools.partial(data_crossing, host, language, "take_ints", 20)
        rows += compared(f"{INTS:,} ints param, one way, {name}", "ms", ms, "<= 1x", repeats,
                         one_way, baseline, lambda f=naive_fn: f("ints", False, 20))
        rows += compared(f"  ... echoed back, {name}", "ms", ms, "<= 2x", repeats,
                         functools.partial(data_crossing, host, language, "echo_ints", 20),
                         f"polyspell one way, {name}", one_way)
        rows += compared(f"  ... echoed back, {name}, against naive", "ms", ms, "", repeats,
                         functools.partial(data_crossing, host, language, "echo_ints", 20),
                         f"{baseline}, echoing", lambda f=naive_fn: f("ints", True, 20))
        rows += compared(f"{DICTS:,} {{id, name}} dicts, one way, {name}", "ms", ms, "",
                         repeats,
                         functools.partial(data_crossing, host, language, "take_items", 20),
                         baseline, lambda f=naive_fn: f("items", False, 20))
        rows += compared(f"  ... echoed back, {name}", "ms", ms, "", repeats,
                         functools.partial(data_crossing, host, language, "echo_items", 20),
                         f"{baseline}, echoing", lambda f=naive_fn: f("items", True, 20))
    rows += compared("1 MB string param, JS", "ms", ms, "<= 1.5x", repeats,
                     functools.partial(data_crossing, host, "javascript", "take_text", 10),
                     "polyspell, the same from Lua",
                     functools.partial(data_crossing, host, "lua", "take_text", 10))
    return rows


def core_rows(repeats: int, calls_only: bool = False) -> list[Row]:
    """Tool calls, errors and start-up, the rows most users feel (``calls_only``: the
    tool calls' rows alone: round trips, failures, hops and refusals)."""
    import tempfile

    host = Host([add, explode, cpu], on_output=lambda line: None)

    rows: list[Row] = []
    us, ms = 1e6, 1e3
    rows += compared("tool round trip, Lua (sync tool, 2 params)", "us", us, "<= 3x",
                     repeats, lambda: tool_round_trip(host, "lua", LUA_LOOP, 20_000),
                     "naive host: lupa + pydantic", lambda: naive_lua_call(20_000))
    rows += compared("  ... in CPU time, the least of the repeats", "us", us, "<= 3x", repeats,
                     lambda: run_thread_cpu(host, "lua", LUA_LOOP_CPU, 20_000),
                     "  naive host, in CPU time",
                     lambda: naive_lua_call(20_000, time.thread_time), pick=min)
    retrying = Host([add], on_output=lambda line: None,
                    recovery={"add": {"retry": {"attempts": 3}}})
    rows.append(("  the same tool with a retry policy (no retry)",
                 median_of(repeats, lambda: tool_round_trip(retrying, "lua", LUA_LOOP, 20_000))
                 * us, "us", "+ <= 1 or 10%"))
    guarded_add = Host([add], on_output=lambda line: None,
                       recovery={"add": {"retry": {"attempts": 3},
                                         "breaker": {"failure_threshold": 5}}})
    rows.append(("  ... with a retry and a breaker (closed)",
                 median_of(repeats, lambda: tool_round_trip(guarded_add, "lua", LUA_LOOP,
                                                            20_000)) * us,
                 "us", "+ <= 1 or 10%"))
    rows.append(("  raw lupa Lua -> Python call",
                 median_of(repeats, lambda: raw_lua_call(200_000)) * us, "us", ""))
    rows.append(("  the suspension design alone, Lua (floor)",
                 median_of(repeats, lambda: raw_lua_suspension(50_000)) * us, "us", ""))
    rows += compared("tool round trip, JS (sync tool, 2 params)", "us", us, "<= 3x",
                     repeats, lambda: tool_round_trip(host, "javascript", JS_LOOP, 20_000),
                     "naive host: quickjs + JSON + pydantic", lambda: naive_js_call(20_000))
    rows += compared("  ... in CPU time, the least of the repeats", "us", us, "<= 3x", repeats,
                     lambda: run_thread_cpu(host, "javascript", JS_LOOP_CPU, 20_000),
                     "  naive host, in CPU time",
                     lambda: naive_js_call(20_000, time.thread_time), pick=min)
    for what in JS_LEFT_OUT:  # (no row where the prelude no longer has the text)
        cost = [js_round_trip_without(what, 20_000) for _ in range(repeats)]
        if None not in cost:
            rows.append((f"  ... without {what} (measurement only)",
                         statistics.median(cost) * us, "us", ""))  # type: ignore[type-var]
    rows.append(("  raw quickjs JS -> Python call",
                 median_of(repeats, lambda: raw_js_call(200_000)) * us, "us", ""))
    rows.append(("  the suspension design alone, JS, with an alarm (floor)",
                 median_of(repeats, lambda: raw_js_suspension(20_000, "alarm")) * us, "us",
                 ""))
    rows.append(("  ... with the binding's CPU-time limit on its jobs instead",
                 median_of(repeats, lambda: raw_js_suspension(20_000, "clock")) * us, "us",
                 ""))
    for language, target in (("lua", "<= 0.5"), ("javascript", "<= 1")):
        if calls_only:
            break
        ready_engine(language)  # import the engine module outside the timing
        rows.append((f"ready sandboxed engine, {language}",
                     median_of(repeats * 5, lambda lang=language: ready_engine(lang)) * ms,
                     "ms", target))
    if not calls_only:
        rows.append((f"Lua error -> unified error, {DEEP} frames",  # (1 us a frame)
                     median_of(repeats, lambda: lua_translation(500)) * us, "us", "<= 20"))
        rows.append((f"JS error -> unified error, {DEEP} frames",
                     median_of(repeats, lambda: js_translation(500)) * us, "us", "<= 30"))
        rows.append((f"render a {DEEP}-frame error as text",
                     median_of(repeats, lambda: rendering(500)) * us, "us", "<= 200"))
    # a caught failure, and a call refused by an open breaker, against a successful call
    # of the same language measured in the same run (the baseline is polyspell's own)
    # and the ratio a naive host doing the same work has, measured alike (its floor)
    rows += compared("tool failure caught in Lua, per error", "us", us, "<= 5x", repeats,
                     lambda: caught_failure(host, "lua", LUA_CATCH, 2000),
                     "tool round trip, Lua (success)",
                     lambda: tool_round_trip(host, "lua", LUA_LOOP, 20_000))
    rows += compared("  naive host: the same error made and caught, Lua", "us", us, "",
                     repeats, lambda: naive_lua_failure(2000),
                     "  naive host's successful call, Lua", lambda: naive_lua_call(20_000))
    rows.append(("  naive host: the exception as the binding raises it (no error value)",
                 median_of(repeats, lambda: naive_bare_failure("lua", 2000)) * us, "us", ""))
    rows += compared("tool failure caught in JS, per error", "us", us, "<= 5x", repeats,
                     lambda: caught_failure(host, "javascript", JS_CATCH, 2000),
                     "tool round trip, JS (success)",
                     lambda: tool_round_trip(host, "javascript", JS_LOOP, 20_000))
    rows += compared("  naive host: the same error made and caught, JS", "us", us, "",
                     repeats, lambda: naive_js_failure(2000),
                     "  naive host's successful call, JS", lambda: naive_js_call(20_000))
    rows.append(("  naive host: the exception as the binding raises it (no error value)",
                 median_of(repeats, lambda: naive_bare_failure("javascript", 2000)) * us, "us", ""))
    with tempfile.TemporaryDirectory() as name:
        hops = hop_host(Path(name))
        rows += compared("cross-engine hop, JS -> Lua tools file", "us", us, "<= 1.5x",
                         repeats, lambda: tool_round_trip(
                             hops, "javascript", JS_LOOP.replace("tools.add", "tools.add_lua"),
                             20_000),
                         "JS -> Python tool (same host)",
                         lambda: tool_round_trip(hops, "javascript", JS_LOOP, 20_000))
        rows += compared("cross-engine hop, Lua -> JS tools file", "us", us, "<= 1.5x",
                         repeats, lambda: tool_round_trip(
                             hops, "lua", LUA_LOOP.replace("tools.add", "tools.add_js"),
                             20_000),
                         "Lua -> Python tool (same host)",
                         lambda: tool_round_trip(hops, "lua", LUA_LOOP, 20_000))
        rows.append(("  a Lua tools file's function, its engine alone",
                     median_of(repeats, lambda: tools_file_call("lua", 20_000)) * us, "us", ""))
        rows.append(("  a JS tools file's function, its engine alone",
                     median_of(repeats, lambda: tools_file_call("javascript", 20_000)) * us,
                     "us", ""))
    guarded_host = breaker_host()
    rows.append(("call refused by an open breaker, Lua",
                 median_of(repeats, lambda: refused_call(guarded_host, "lua", LUA_REFUSED,
                                                         2000)) * us, "us", "<= 20"))
    rows.append(("call refused by an open breaker, JS",
                 median_of(repeats, lambda: refused_call(guarded_host, "javascript",
                                                         JS_REFUSED, 2000)) * us, "us",
                 "<= 20"))
    rows.append(("  the refusal in the breaker layer alone",
                 median_of(repeats, lambda: refusal_in_layer(20_000)) * us, "us", ""))
    if calls_only:
        return rows
    flaky_host = Host([flaky], on_output=lambda line: None,
                      recovery={"flaky": {"retry": RETRY_SCHEDULE}})
    rows.append(("retry waits past schedule (worst of 3)",
                 median_of(repeats, lambda: retry_overshoot(flaky_host)) * ms, "ms", "<= 10"))
    runs_host = Host(on_output=lambda line: None)
    concurrent_runs(runs_host, "javascript", 1)  # warm: engine modules, thread pools
    concurrent_runs(runs_host, "lua", 1)
    rows += compared(f"JS runs per second, {CONCURRENT_RUNS} at a time", "runs/s", 1,
                     ">= 0.8x", repeats, lambda: concurrent_runs(runs_host, "javascript"),
                     f"Lua runs per second, {CONCURRENT_RUNS} at a time",
                     lambda: concurrent_runs(runs_host, "lua"))
    rows += compared("polyspell run hello.lua, end to end", "ms", ms, "<= 4x", repeats,
                     cli_hello, "python -c pass", python_pass)

    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--only", choices=["core", "calls", "data", "coordinator", "hooks",
                                           "monitor", "isolation", "modules", "ray", "lua"],
                        help="run only this section of the table")
    parser.add_argument("--json", action="store_true",
                        help="print the rows as strict JSON (to compare two runs)")
    options = parser.parse_args()
    repeats = 3 if options.quick else 7
    show = print_json if options.json else print_table
    if options.only in ("core", "calls"):
        show(repeats, core_rows(repeats, calls_only=options.only == "calls"))
        return
    if options.only == "data":
        show(repeats, data_rows(repeats))
        return
    if options.only == "monitor":
        show(repeats, monitor_rows(repeats) + store_rows(repeats))
        return
    if options.only == "coordinator":
        show(repeats, coordinator_rows(repeats))
        return
    if options.only == "hooks":
        show(repeats, hooks_rows(repeats))
        return
    if options.only == "isolation":
        show(repeats, isolation_rows(repeats))
        return
    if options.only == "modules":
        show(repeats, modules_rows(repeats))
        return
    if options.only == "ray":
        show(repeats, ray_rows(repeats))
        return
    if options.only == "lua":
        show(repeats, lua_versions_rows(repeats))
        return
    rows = core_rows(repeats)
    rows += data_rows(repeats)
    rows += hooks_rows(repeats)
    rows += monitor_rows(repeats)
    rows += coordinator_rows(repeats)
    rows += store_rows(repeats)
    rows += isolation_rows(repeats)
    rows += modules_rows(repeats)
    rows += ray_rows(repeats)
    rows += lua_versions_rows(repeats)
    show(repeats, rows)


def machine() -> dict[str, Any]:
    """What the numbers were measured on, and how busy it was."""
    return {"python": platform.python_version(), "cores": os.cpu_count(),
            "platform": f"{platform.machine()} {platform.system()}",
            "load": [round(x, 2) for x in os.getloadavg()]}


def print_table(repeats: int, rows: list[Row]) -> None:
    """The rows as a Markdown table: a row's ratio to its baseline beside its median."""
    about = machine()
    print(f"polyspell bench: medians of {repeats} runs; Python {about['python']}, "
          f"{about['cores']} cores, {about['platform']}, load {about['load'][0]}")
    print(f"| {'what':<46} | {'ratio':>7} | {'median':>10} | {'target':>13} |")
    print(f"|{'-' * 48}|{'-' * 9}|{'-' * 12}|{'-' * 15}|")
    for row in (Row(*r) for r in rows):
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
        print(f"| {row.what:<46} | {ratio:>7} | {row.median:>7.2f} {row.unit:<2} "
              f"| {row.target:>13} |")


def print_json(repeats: int, rows: list[Row]) -> None:
    """The rows as one strict JSON object, for a script comparing two runs."""
    import json
    import math

    def number(value: float | None) -> float | None:
        return value if value is None or math.isfinite(value) else None

    print(json.dumps({"repeats": repeats, "machine": machine(), "rows": [
        {**row._asdict(), "median": number(row.median), "ratio": number(row.ratio)}
        for row in (Row(*r) for r in rows)]}, allow_nan=False, indent=1))


if __name__ == "__main__":
    main()
