"""Process isolation: engines in worker processes the host can always kill (issue 14).

Real worker processes throughout (``engines.worker``, and ``tests.misbehaving_worker`` for
a worker that does what a compromised one could); the engine contract runs in both modes
in ``test_engine_contract.py``. What is checked here: a host in process mode gives the
same results, errors, frames and tracebacks as in thread mode; the host ends a run at
its deadline whatever the script does, and survives a worker that crashes, hangs, or
sends anything; workers never outlive their host.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from bridge import ConfigurationError, SpellError, ToolError
from engines import Failed, Finished, Limits, Suspended, ToolInfo, ToolReply
from engines.process import KILL_GRACE, WorkerPool
from engines.worker import MEMORY_MARGIN_MB, RESULT_COPIES
from host import Coordinator, Host, Task, tool
from tests.conftest import EXTENSION, pick
from tests.procs import alive, children, wait_until

ROOT = Path(__file__).resolve().parent.parent
STARTED = threading.Event()


@tool
def add(a: int, b: int) -> int:
    """Python, in the host."""
    return a + b


@tool
def where() -> int:
    """The process the tool runs in."""
    return os.getpid()


@tool
def lookup(key: str) -> str:
    """Fails with a plain Python exception."""
    raise KeyError(key)


@tool
def started() -> bool:
    """The script is running: it calls this, then loops."""
    STARTED.set()
    return True


TOOLS = [add, where, lookup, started]


@pytest.fixture(scope="module")
def process_host() -> Iterator[Host]:
    with Host(TOOLS, isolation="process", on_output=lambda line: None) as host:
        yield host


# -- the same runs in both modes ------------------------------------------------------------


def test_scripts_call_python_tools_that_run_in_the_host(process_host, language):
    source = pick(language,
                  "print('hi', args.n)\nreturn {sum = tools.add{a = args.n, b = 2},"
                  " pid = tools.where{}}",
                  "async function main(args) { console.log('hi', args.n);"
                  " return {sum: await tools.add({a: args.n, b: 2}),"
                  " pid: await tools.where({})}; }")
    lines: list[str] = []
    process_host.on_output = lines.append
    try:
        result = process_host.run_source(source, language, "agent", {"n": 40})
    finally:
        process_host.on_output = lambda line: None
    assert result == {"sum": 42, "pid": os.getpid()}  # the tool ran here, not in the worker
    assert lines == [pick(language, "hi\t40", "hi 40")]


FAILING = {
    "lua": "local function inner(k)\n  return tools.lookup{key = k}\nend\n"
           "local x = inner('a')\nerror('after')",
    "javascript": "function inner(k) {\n  return tools.lookup({key: k});\n}\n"
                  "async function main() { await inner('a'); }",
}
# what differs between two runs of the same script, whatever the mode
VARYING = re.compile(r'"(error_id|timestamp|correlation_id|execution_time)": [^,\n}]+')


def failure(host: Host, source: str, language: str) -> SpellError:
    with pytest.raises(SpellError) as info:
        host.run_source(source, language, f"agent{EXTENSION[language]}")
    return info.value


def test_a_script_error_is_the_same_error_with_the_same_frames_in_both_modes(process_host,
                                                                            language):
    with Host(TOOLS) as threads:
        expected = failure(threads, FAILING[language], language)
    got = failure(process_host, FAILING[language], language)
    assert got.code == expected.code == "tool/execution_failed"
    assert got.frames == expected.frames
    assert got.frames[-1].function == "lookup"
    assert VARYING.sub("", json.dumps(got.to_dict(), indent=1)) == \
        VARYING.sub("", json.dumps(expected.to_dict(), indent=1))
    assert got.to_text(verbose=True) == expected.to_text(verbose=True)
    assert traceback.format_exception(got) == traceback.format_exception(expected)


HELPERS = {
    "lua": "return {twice = function(p) return {n = tools.add{a = p.n, b = p.n}} end,\n"
           "        boom = function(p) error('boom in ' .. p.where) end}",
    "javascript": "exports.twice = async function twice(p) {\n"
                  "  return {n: await tools.add({a: p.n, b: p.n})}; };\n"
                  "exports.boom = function boom(p) { throw new Error('boom in ' + p.where); };",
}


def test_a_tools_file_in_the_other_language_runs_in_a_worker_of_its_own(tmp_path, language):
    other = "javascript" if language == "lua" else "lua"
    helpers = tmp_path / f"helpers{EXTENSION[other]}"
    helpers.write_text(HELPERS[other])
    source = pick(language, "return tools.twice{n = 21}.n",
                  "async function main() { return (await tools.twice({n: 21})).n; }")
    failing = pick(language, "local r = tools.boom{where = 'x'}",
                   "async function main() { await tools.boom({where: 'x'}); }")
    errors = {}
    for isolation in ("thread", "process"):
        with Host([add, helpers], isolation=isolation) as host:
            assert host.run_source(source, language) == 42
            errors[isolation] = failure(host, failing, language)
    assert errors["process"].code == errors["thread"].code
    assert errors["process"].frames == errors["thread"].frames
    assert [f.language for f in errors["process"].frames][-1] == other
    assert errors["process"].to_text() == errors["thread"].to_text()


def test_a_coordinator_runs_its_plan_in_process_mode(tmp_path):
    lua, js = tmp_path / "a.lua", tmp_path / "b.js"
    lua.write_text("return tools.add{a = 1, b = 2}")
    js.write_text("async function main(args) { return args.inputs.a * 10; }")
    with Coordinator([add], isolation="process") as coordinator:
        report = coordinator.run([Task(id="a", script=lua),
                                  Task(id="b", script=js, after=["a"])])
        pids = coordinator._host.pool.pids()
    assert report.outcome == "succeeded"
    assert report.results == {"a": 3, "b": 30}
    assert wait_until(lambda: not any(alive(pid) for pid in pids))


# -- limits enforced from outside ---------------------------------------------------------

PATHOLOGICAL_FIND = 'return string.rep("a", 30000):find(".-.-.-.-.-.-.-b")'


def test_a_pathological_string_find_keeps_a_thread_busy_after_its_run_failed():
    # the probe for the next test: in thread mode the long C call cannot be stopped, and
    # goes on burning a core after the run has failed (in a child, which exits after)
    probe = textwrap.dedent(f"""
        import json, time
        from host import Host
        with Host(timeout=0.5) as host:
            try:
                host.run_source({PATHOLOGICAL_FIND!r}, "lua")
            except Exception as err:
                code = err.code
        before = time.process_time()
        time.sleep(1.0)
        print(json.dumps([code, time.process_time() - before]))
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    code, busy = json.loads(out.stdout.splitlines()[-1])
    assert code == "script/resource_exhaustion"
    assert busy > 0.5  # still running a second later


@pytest.mark.parametrize(("language", "source"), [
    ("lua", PATHOLOGICAL_FIND),
    ("javascript", "while (true) {}"),
])
def test_a_script_that_cannot_be_interrupted_ends_at_its_deadline(language, source):
    with Host(timeout=1.0, isolation="process") as host:
        host.run_source("return 1", "lua")  # a worker is warm
        busy: list[int] = []
        watcher = threading.Thread(target=lambda: wait_until(
            lambda: busy.extend(host.pool.pids(busy=True)) or busy))
        watcher.start()
        began = time.monotonic()
        err = failure(host, source, language)
        took = time.monotonic() - began
        watcher.join()
        assert err.code == "script/resource_exhaustion"
        assert err.fields["resource_type"] == "time"
        assert err.fields["limit"] == 1.0
        assert took < 1.0 + 1.0
        # nothing of it runs on: the worker that ran it is gone (its CPU with it)
        [pid] = busy
        assert wait_until(lambda: not alive(pid), 2.0)


def test_the_next_run_works_after_a_run_hit_its_time_limit():
    with Host(timeout=0.5, isolation="process") as host:
        assert failure(host, PATHOLOGICAL_FIND, "lua").fields["resource_type"] == "time"
        # (its own time: the killed worker's replacement may take longer than 0.5 s to
        # start on a loaded machine, which is not what this test is about)
        run = host.new_run_source("return 6 * 7", "lua", timeout=30)
        assert anyio.run(run.execute) == 42


@pytest.mark.parametrize("signum", [signal.SIGSEGV, signal.SIGKILL])
def test_a_worker_killed_mid_run_fails_the_run_naming_the_signal(language, signum):
    source = pick(language, "tools.started{} while true do end",
                  "async function main() { await tools.started({}); while (true) {} }")
    with Host(TOOLS, timeout=30, isolation="process") as host:
        STARTED.clear()

        def kill() -> None:
            assert STARTED.wait(10)
            time.sleep(0.1)  # back in the script's loop
            [pid] = host.pool.pids(busy=True)
            os.kill(pid, signum)

        killer = threading.Thread(target=kill)
        killer.start()
        began = time.monotonic()
        err = failure(host, source, language)
        killer.join()
        assert time.monotonic() - began < 5
        assert err.code == "runtime/worker_died"
        assert err.fields["signal"] == signum.name
        assert signum.name in str(err)
        assert host.run_source(pick(language, "return tools.add{a = 1, b = 1}",
                                    "async function main() { return tools.add({a: 1, b: 1}); }"),
                               language) == 2


def test_a_cancelled_run_stops_its_worker_at_once(language):
    source = pick(language, "tools.started{} while true do end",
                  "async function main() { await tools.started({}); while (true) {} }")
    with Host(TOOLS, timeout=30, isolation="process") as host:
        STARTED.clear()

        async def main() -> float:
            began = time.monotonic()
            with anyio.move_on_after(0.5):
                await host.arun_source(source, language)
            return time.monotonic() - began

        assert anyio.run(main) < 1.5
        assert wait_until(lambda: not host.pool.pids(busy=True))


def test_stop_from_another_thread_ends_a_step_in_progress(worker_pool, language):
    engine = worker_pool.make_engine(language, limits=Limits(timeout=30, memory_mb=64))
    source = pick(language, "tools.go{} while true do end",
                  "async function main() { await tools.go({}); while (true) {} }")
    try:
        deadline = time.monotonic() + 30
        step = engine.start(source, "agent", None, [ToolInfo("go")], deadline)
        assert isinstance(step, Suspended)
        threading.Timer(0.3, engine.stop).start()
        began = time.monotonic()
        step = engine.resume([ToolReply(step.requests[0].id, result=None)], deadline)
        assert time.monotonic() - began < 1.5
        assert isinstance(step, Failed)
        assert step.error.code == "script/resource_exhaustion"
        assert not engine.usable
    finally:
        engine.close()


def test_the_worker_address_space_is_bounded(worker_pool):
    engine = worker_pool.make_engine("lua", limits=Limits(memory_mb=64))
    try:
        assert isinstance(engine.start("return 1", "a", None, [], time.monotonic() + 10),
                          Finished)
        limits = Path(f"/proc/{engine.pid}/limits").read_text()
    finally:
        engine.close()
    line = next(line for line in limits.splitlines() if line.startswith("Max address space"))
    soft, hard = line.split()[3:5]
    assert int(soft) == int(hard) == (RESULT_COPIES * 64 + MEMORY_MARGIN_MB) << 20


# -- a worker that misbehaves ---------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_pool() -> Iterator[WorkerPool]:
    with WorkerPool(1, memory_mb=64, entry="tests.misbehaving_worker") as pool:
        yield pool


@pytest.mark.parametrize(("how", "code", "says"), [
    ("garbage", "bridge/protocol_violation", "not JSON"),
    ("pickle", "bridge/protocol_violation", "not JSON"),
    ("oversized", "bridge/protocol_violation", "more than the engine's memory limit"),
    ("truncated", "bridge/protocol_violation", "cut off after 17 bytes"),
    ("no_requests", "bridge/protocol_violation", "non-empty list"),
    ("forged_error", "bridge/protocol_violation", "unknown category 'nope'"),
    ("bad_frame", "bridge/protocol_violation", "bad frame: file"),
    ("colliding_field", "bridge/protocol_violation", "unknown field 'retryable'"),
    ("segfault", "runtime/worker_died", "SIGSEGV"),
])
def test_a_worker_that_misbehaves_is_killed_and_its_step_fails_clearly(
        bad_pool, tmp_path, how, code, says):
    pwned = tmp_path / "pwned"  # the file the pickle would create in a host that loads it
    engine = bad_pool.make_engine("lua", limits=Limits(timeout=20, memory_mb=64))
    began = time.monotonic()
    try:
        step = engine.start(f"--misbehave:{how} {pwned}", "agent.lua", None, [],
                            time.monotonic() + 20)
        pid = engine.pid
    finally:
        engine.close()
    assert time.monotonic() - began < 5  # at once, not at the deadline
    assert isinstance(step, Failed)
    assert step.error.code == code, step.error
    assert says in str(step.error)
    assert not pwned.exists()
    assert pid is not None and wait_until(lambda: not alive(pid))


def test_a_worker_that_never_answers_is_killed_at_the_deadline_and_its_grace(bad_pool):
    engine = bad_pool.make_engine("lua", limits=Limits(timeout=0.5, memory_mb=64))
    began = time.monotonic()
    try:
        step = engine.start("--misbehave:hang", "agent.lua", None, [], began + 0.5)
        pid = engine.pid
    finally:
        engine.close()
    took = time.monotonic() - began
    assert 0.5 + KILL_GRACE <= took < 0.5 + KILL_GRACE + 1
    assert isinstance(step, Failed) and step.error.code == "script/resource_exhaustion"
    assert step.error.fields["resource_type"] == "time"
    assert pid is not None and wait_until(lambda: not alive(pid))


def test_a_host_with_a_misbehaving_worker_fails_the_run_and_goes_on(bad_pool):
    host = Host(engine_factory=bad_pool.make_engine, timeout=20, memory_mb=64)
    with pytest.raises(SpellError) as info:
        host.run_source("--misbehave:garbage", "lua")
    assert info.value.code == "bridge/protocol_violation"
    assert host.run_source("return 'fine'", "lua") == "fine"


# -- the pool and the workers' lives ----------------------------------------------------------


def test_workers_outlive_the_threads_that_took_them():
    # the kernel's parent-death signal follows the thread that started a process: workers
    # are started on the pool's own thread, never on a run's
    with WorkerPool(1, memory_mb=64) as pool:
        pids: list[int | None] = []

        def take() -> None:
            engine = pool.make_engine("lua", limits=Limits(memory_mb=128))  # started now
            engine.start("return 1", "a", None, [], time.monotonic() + 10)
            pids.append(engine.pid)
            engine.close()

        thread = threading.Thread(target=take)
        thread.start()
        thread.join()
        time.sleep(0.3)
        [pid] = pids
        assert pid is not None and alive(pid)
        engine = pool.make_engine("lua", limits=Limits(memory_mb=128))
        try:
            assert engine.pid == pid
            assert engine.start("return 2", "a", None, [], time.monotonic() + 10).result == 2
        finally:
            engine.close()


def _run_in(pool: WorkerPool, source: str = "return 1") -> tuple[Any, int | None]:
    """A Lua script run in a worker of ``pool`` (64 MB): its result and the worker's pid."""
    engine = pool.make_engine("lua", limits=Limits(timeout=10, memory_mb=64))
    try:
        step = engine.start(source, "a.lua", None, [], time.monotonic() + 10)
        return (step.result if isinstance(step, Finished) else step), engine.pid
    finally:
        engine.close()


def _two_busy_then_idle(pool: WorkerPool) -> set[int]:
    """Two engines held at once (two workers), then both given back: the pids."""
    first = pool.make_engine("lua", limits=Limits(timeout=10, memory_mb=64))
    second = pool.make_engine("lua", limits=Limits(timeout=10, memory_mb=64))
    pids = {first.pid, second.pid}
    for engine in (first, second):
        assert engine.start("return 1", "a.lua", None, [], time.monotonic() + 10).result == 1
        engine.close()
    assert None not in pids and len(pids) == 2
    return pids  # type: ignore[return-value]


def test_idle_workers_are_ended_and_reaped_after_the_idle_timeout():
    with WorkerPool(1, memory_mb=64, idle_timeout=0.2, min_idle=0) as pool:
        ended = _two_busy_then_idle(pool)
        assert wait_until(lambda: not pool.pids(), 30)  # each 0.2 s after it was given back
        assert wait_until(lambda: not any(alive(pid) for pid in ended))
        assert wait_until(lambda: not set(children()) & ended)  # reaped: no zombie left
        assert _run_in(pool, "return 2")[0] == 2  # the next run still gets a worker


def test_the_idle_timeout_keeps_min_idle_workers_warm():
    with WorkerPool(1, memory_mb=64, idle_timeout=0.2) as pool:  # min_idle: 1
        both = _two_busy_then_idle(pool)
        assert wait_until(lambda: len(pool.pids()) == 1, 30)
        [kept] = pool.pids()
        [gone] = both - {kept}
        assert wait_until(lambda: not alive(gone) and gone not in children())
        time.sleep(0.6)  # three time-outs more
        assert pool.pids() == [kept] and alive(kept)
        assert _run_in(pool) == (1, kept)  # the warm one
        # an engine of another memory limit gets a worker of its own, not kept idle
        engine = pool.make_engine("lua", limits=Limits(timeout=10, memory_mb=32))
        try:
            other = engine.pid
            assert engine.start("return 3", "b.lua", None, [], time.monotonic() + 10).result == 3
        finally:
            engine.close()
        assert other is not None and other != kept
        assert wait_until(lambda: pool.pids() == [kept], 30)
        assert wait_until(lambda: not alive(other) and other not in children())


def test_a_busy_worker_is_never_ended_by_the_idle_timeout():
    with WorkerPool(1, memory_mb=64, idle_timeout=0.2, min_idle=0) as pool:
        engine = pool.make_engine("lua", limits=Limits(timeout=30, memory_mb=64))
        try:
            deadline = time.monotonic() + 30
            step = engine.start("return tools.add{a = 1, b = 2} + 1", "a.lua", None,
                                [ToolInfo("add", "")], deadline)
            assert isinstance(step, Suspended)
            pid = engine.pid
            assert pid is not None
            time.sleep(1.0)  # five time-outs: the worker waits for its host, held by a run
            assert alive(pid) and pid in pool.pids(busy=True)
            step = engine.resume([ToolReply(step.requests[0].id, result=3)], deadline)
            assert isinstance(step, Finished) and step.result == 4
        finally:
            engine.close()
        assert wait_until(lambda: not pool.pids(), 30)  # idle now: it times out
        assert wait_until(lambda: not alive(pid))


@pytest.mark.parametrize("options", [
    {"idle_timeout": 0}, {"idle_timeout": -1.0}, {"idle_timeout": "60"},
    {"idle_timeout": True}, {"idle_timeout": float("inf")}, {"idle_timeout": float("nan")},
    {"min_idle": -1}, {"min_idle": 1.5}])
def test_a_bad_idle_timeout_or_min_idle_is_a_configuration_error(options):
    with pytest.raises(ConfigurationError) as caught:
        WorkerPool(1, **options)
    assert caught.value.code == "configuration/invalid_value"
    assert next(iter(options)) in str(caught.value)


def test_a_worker_is_recycled_after_its_runs_and_after_a_limit():
    with WorkerPool(1, memory_mb=64, recycle_after=2) as pool:
        def run(source: str = "return 1") -> int:
            assert wait_until(lambda: pool.pids(busy=False))  # a worker waits, warm
            engine = pool.make_engine("lua", limits=Limits(timeout=0.3, memory_mb=64))
            try:
                engine.start(source, "a", None, [], time.monotonic() + 0.3)
                assert engine.pid is not None
                return engine.pid
            finally:
                engine.close()

        first, second = run(), run()
        assert first == second  # given back and taken again
        assert wait_until(lambda: not alive(first))  # ended after its second run
        assert run() != first
        limited = run("while true do end")
        assert wait_until(lambda: not alive(limited))  # ended after its limit
        assert run() != limited


def test_closing_a_host_ends_its_workers_and_later_runs_fail_clearly():
    host = Host(isolation="process")
    assert host.run_source("return 1", "lua") == 1
    pids = host.pool.pids()
    assert pids and all(alive(pid) for pid in pids)
    host.close()
    assert wait_until(lambda: not any(alive(pid) for pid in pids))
    with pytest.raises(ConfigurationError) as info:
        host.run_source("return 1", "lua")
    assert info.value.code == "configuration/invalid_value"
    assert "closed" in str(info.value)
    host.close()  # again: nothing


def test_closing_a_host_under_a_run_fails_the_run_at_once_saying_so():
    host = Host(timeout=30, isolation="process")
    errors: list[SpellError] = []

    def run() -> None:
        try:
            host.run_source("while true do end", "lua")
        except SpellError as err:
            errors.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    assert wait_until(lambda: host.pool.pids(busy=True))
    host.close()
    thread.join(5)
    [err] = errors
    assert err.code == "runtime/worker_died"
    assert "its host was closed" in str(err)


def test_a_host_killed_with_sigkill_leaves_no_worker_alive():
    child = textwrap.dedent("""
        import json, sys, threading, time
        from host import Host
        host = Host(timeout=60, isolation="process")
        threading.Thread(target=host.run_source, args=("while true do end", "lua"),
                         daemon=True).start()
        while not host.pool.pids(busy=True) or len(host.pool.pids()) < 2:
            time.sleep(0.05)
        print(json.dumps(host.pool.pids()), flush=True)
        time.sleep(600)
    """)
    process = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE,
                               text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        pids = json.loads(process.stdout.readline())  # type: ignore[union-attr]
        assert len(pids) >= 2 and all(alive(pid) for pid in pids)
    finally:
        process.kill()
        process.wait()
    time.sleep(2)
    assert not [pid for pid in pids if alive(pid)]


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["processes", "", 1])
def test_an_unknown_isolation_is_refused(value):
    with pytest.raises(ConfigurationError) as info:
        Host(isolation=value)
    assert info.value.code == "configuration/invalid_value"
    assert info.value.fields["key"] == "isolation"


def test_process_isolation_and_an_engine_factory_are_refused_together():
    import engines

    with pytest.raises(ConfigurationError) as info:
        Host(isolation="process", engine_factory=engines.make_engine)
    assert "not both" in str(info.value)


def test_a_host_whose_tools_fail_to_load_leaves_no_worker(tmp_path):
    bad = tmp_path / "bad.lua"
    bad.write_text("return {f = function() end,")
    before = set(children(zombies=False))
    with pytest.raises(SpellError):
        Host([bad], isolation="process")
    assert wait_until(lambda: not set(children(zombies=False)) - before)


def test_a_tool_error_crosses_back_as_the_original(process_host, language):
    raised = ToolError.Timeout(tool_name="slow", duration=2.0)

    @tool
    def slow() -> None:
        raise raised

    with Host([slow], isolation="process") as host:
        err = failure(host, pick(language, "local ok, e = pcall(tools.slow, {}) error(e)",
                                 "async function main() { try { await tools.slow({}); }"
                                 " catch (e) { throw e; } }"), language)
    assert err is raised


def test_a_limit_inside_a_nested_call_ends_as_in_thread_mode(language):
    # a limit the engine reports itself (not a kill) leaves the worker to answer the
    # outer activation as the engine does in thread mode
    from tests.test_restart import _host, _run

    results = []
    for isolation in ("thread", "process"):
        host = _host(language, {"bump": {"restart": {"state": "reset"}}}, isolation=isolation)
        with host:
            results.append(_run(host, language, ("nested", {"blow": 1}), ("bump", {}))[0])
    assert results[0][0] == "resource/memory_exhaustion"
    assert results[1] == results[0]


def test_a_worker_exits_when_its_host_end_of_the_socket_closes(worker_pool):
    # the other half of "never outlives the host" (the first is the parent-death signal):
    # a worker waiting for a step exits at EOF
    engine = worker_pool.make_engine("lua", limits=Limits(memory_mb=64))
    try:
        engine.start("return 1", "a", None, [], time.monotonic() + 10)
        pid = engine.pid
        engine._worker.sock.close()  # type: ignore[union-attr]
        assert pid is not None and wait_until(lambda: not alive(pid))
    finally:
        engine.close()


def adds_at_once(host: Host, count: int, b: int = 0) -> list[Any]:
    """``count`` runs at once on ``host``, half Lua, half JS, each adding ``b`` to its own
    number with the Python tool ``add``: their results, in the runs' order."""
    async def main() -> list[Any]:
        results: list[Any] = [None] * count

        async def one(n: int) -> None:
            language = "lua" if n % 2 else "javascript"
            source = pick(language, f"return {{n = tools.add{{a = args.n, b = {b}}}}}",
                          "async function main(args) {"
                          f" return {{n: await tools.add({{a: args.n, b: {b}}})}}; }}")
            results[n] = await host.arun_source(source, language, None, {"n": n})

        async with anyio.create_task_group() as group:
            for n in range(count):
                group.start_soon(one, n)
        return results

    return anyio.run(main)


def test_concurrent_runs_each_get_their_own_worker_and_results(process_host):
    # more runs at once than the pool started with: the extra ones get workers started
    assert adds_at_once(process_host, 8) == [{"n": n} for n in range(8)]
    # as many workers as ran at once, kept for the next runs: never more
    assert len(process_host.pool.pids()) <= 8


def test_a_worker_gets_none_of_the_host_secrets(monkeypatch):
    monkeypatch.setenv("POLYSPELL_TEST_API_KEY", "secret")
    with WorkerPool(1, memory_mb=64, entry="tests.misbehaving_worker") as pool:
        engine = pool.make_engine("lua", limits=Limits(memory_mb=64))
        try:
            step = engine.start("--misbehave:environment POLYSPELL_TEST_API_KEY", "a.lua",
                                None, [], time.monotonic() + 20)
            assert isinstance(step, Finished) and step.result is None
            step = engine.start("--misbehave:environment PYTHONPATH", "a.lua", None, [],
                                time.monotonic() + 20)
            assert str(ROOT) in step.result  # what it needs, it has
        finally:
            engine.close()


def test_a_worker_opens_no_file_socket_or_process_once_ready(tmp_path):
    """Defence in depth (engines.confine): a worker whose script escaped into its Python
    still cannot read the host's files, open a socket or start a process, where the
    kernel offers Landlock and seccomp (this machine's does: the test says if not)."""
    secret = tmp_path / "secret.txt"
    secret.write_text("the host's")
    with WorkerPool(1, memory_mb=64, entry="tests.misbehaving_worker") as pool:
        engine = pool.make_engine("lua", limits=Limits(memory_mb=64))
        try:
            step = engine.start(f"--misbehave:reach_out {secret}", "a.lua", None, [],
                                time.monotonic() + 20)
            walls = engine.walls
        finally:
            engine.close()
    from tests.test_confine import walls_offered

    if not {"landlock fs", "seccomp"} <= set(walls_offered()):
        pytest.skip(f"this kernel offers {walls_offered()} only")
    assert {"no_new_privs", "landlock fs", "seccomp"} <= set(walls)
    assert isinstance(step, Finished)
    assert step.result == {"file": "PermissionError", "socket": "PermissionError",
                           "process": "PermissionError", "fork": "PermissionError"}


# -- where isolation is chosen: the command line and the config file ----------------------


@pytest.mark.parametrize("script", ["scripts/agent.lua", "scripts/agent.js"])
def test_polyspell_run_prints_the_same_in_both_modes(script):
    """--isolation process: the same result, traceback and exit code as in thread mode."""
    from tests.cli import polyspell

    outcomes = {}
    for isolation in ("thread", "process"):
        for city in ("Lisbon", "Atlantis"):
            done = polyspell("run", script, f"city={city}", "--tools", "scripts/tools.py",
                             "--no-record", "--isolation", isolation)
            outcomes.setdefault(isolation, []).append(
                (done.returncode, done.stdout, done.stderr))
    assert outcomes["process"] == outcomes["thread"]
    assert [code for code, _, _ in outcomes["thread"]] == [0, 1]


def test_an_unknown_isolation_is_a_usage_error():
    from tests.cli import polyspell

    done = polyspell("run", "scripts/hello.lua", "--isolation", "vm", "--no-record")
    assert done.returncode == 2
    assert "--isolation" in done.stderr and "vm" in done.stderr


def test_the_config_file_chooses_the_isolation_unless_the_code_does(tmp_path):
    config = tmp_path / "polyspell.toml"
    config.write_text('isolation = "process"\n')
    with Host(config=config) as host:
        assert host.isolation == "process" and host.pool is not None
        assert host.run_source("return 6 * 7", "lua") == 42
    with Host(config=config, isolation="thread") as host:
        assert host.isolation == "thread" and host.pool is None
    with Coordinator(config=config) as coordinator:
        assert coordinator.isolation == "process"
    config.write_text('isolation = "vm"\n')
    with pytest.raises(ConfigurationError) as caught:
        Host(config=config)
    assert "isolation" in caught.value.message


def test_the_pool_keeps_as_many_workers_as_were_busy_at_once():
    """A host running three scripts at once keeps three workers, rather than ending the
    extra ones and starting new ones at every run (a plan of 1,000 tasks ran 8x slower
    that way)."""
    with WorkerPool(1, memory_mb=64) as pool:
        def three() -> list[Any]:
            engines_ = [pool.make_engine("lua", limits=Limits(memory_mb=64)) for _ in range(3)]
            for engine in engines_:
                step = engine.start("return 1", "a.lua", None, [], time.monotonic() + 20)
                assert isinstance(step, Finished)
            pids = [engine.pid for engine in engines_]
            for engine in engines_:
                engine.close()
            return pids

        first = three()
        assert sorted(pool.pids(busy=False)) == sorted(first)
        assert sorted(three()) == sorted(first)  # the same workers served again


def test_the_isolation_fixture_puts_every_host_in_its_mode(isolation, tmp_path):
    """What the modules that run in both modes rely on: a Host made with no isolation of
    its own, a Coordinator's too, takes the fixture's; closing one leaves the others'
    shared workers alone."""
    with Host() as first:
        assert first.isolation == isolation
        assert (first.pool is not None) == (isolation == "process")
    with Coordinator() as coordinator, Host() as second:
        assert coordinator.isolation == isolation
        assert second.run_source("return 1", "lua") == 1


def test_a_plan_runs_with_a_config_that_says_process(tmp_path):
    """The plan's own host shares the coordinator's workers (it used to refuse an engine
    factory beside the config's isolation)."""
    (tmp_path / "polyspell.toml").write_text('isolation = "process"\n')
    (tmp_path / "a.lua").write_text("return 40 + 2\n")
    (tmp_path / "plan.toml").write_text(
        '[plan]\nname = "p"\n[[task]]\nid = "a"\nscript = "a.lua"\n')
    from tests.cli import polyspell

    done = polyspell("plan", "plan.toml", "--config", "polyspell.toml", "--json",
                     "--no-record", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [task] = json.loads(done.stdout)["tasks"]
    assert (task["status"], task["result"]) == ("succeeded", 42)


def test_200_runs_at_once_share_a_bounded_pool_with_nothing_lost_or_crossed():
    """200 concurrent runs in process mode, half Lua, half JS, each calling a Python tool
    with its own number: every result comes back to its own run, and the pool keeps at
    most max_workers workers (not 200 processes)."""
    with WorkerPool(1) as pool, Host([add], isolation=pool, on_output=lambda line: None,
                                     timeout=120) as host:
        assert adds_at_once(host, 200, 1000) == [{"n": n + 1000} for n in range(200)]
        assert len(pool.pids()) <= pool.max_workers + 2  # + what a slow start let past


def test_a_run_at_the_bound_still_gets_the_engine_of_its_tools_file(tmp_path):
    """Every worker busy with a run that needs a second engine (a JS tools file) while it
    holds its own: no run waits for the others forever (past a short wait one more
    worker starts)."""
    (tmp_path / "helpers.js").write_text(
        "exports.double = function double(params) { return params.n * 2; };\n")
    with WorkerPool(1) as pool, Host([str(tmp_path / "helpers.js")], isolation=pool,
                                     on_output=lambda line: None, timeout=60) as host:
        pool.max_workers = 2  # a tiny bound, so that both runs hold all of it

        async def main() -> list[Any]:
            results: list[Any] = [None] * 2

            async def one(n: int) -> None:
                results[n] = await host.arun_source(
                    "return tools.double{n = args.n}", "lua", None, {"n": n})

            async with anyio.create_task_group() as group:
                for n in range(2):
                    group.start_soon(one, n)
            return results

        began = time.monotonic()
        assert anyio.run(main) == [0, 2]
        assert time.monotonic() - began < 30


def test_a_spare_engine_is_fresh_for_each_run():
    """A worker makes the next engine while it waits: it must still be a fresh one, with
    nothing of the previous run's globals (state isolation, as in thread mode)."""
    with WorkerPool(1, memory_mb=64) as pool:
        began = time.monotonic()
        while not pool.pids(busy=False) and time.monotonic() - began < 20:
            time.sleep(0.01)  # its one worker started: every run takes that one
        seen = []
        for _ in range(3):
            engine = pool.make_engine("lua", limits=Limits(memory_mb=64))
            step = engine.start("local before = leaked\nleaked = (leaked or 0) + 1\n"
                                "return before == nil", "a.lua", None, [],
                                time.monotonic() + 20)
            seen.append((engine.pid, step.result if isinstance(step, Finished) else step))
            engine.close()
            time.sleep(0.05)  # the worker makes its spare meanwhile
        assert [result for _, result in seen] == [True, True, True]
        assert len({pid for pid, _ in seen}) == 1  # one worker served them all


def test_idle_workers_stay_bounded_across_memory_limits():
    """Hosts with many different memory limits sharing one pool: the idle workers of all
    limits together stay within max_workers (20 limits used to leave 21 processes)."""
    with WorkerPool(1, memory_mb=64) as pool:
        pool.max_workers = 3
        for n in range(6):
            engine = pool.make_engine("lua", limits=Limits(memory_mb=32 + n))
            step = engine.start("return 1", "a.lua", None, [], time.monotonic() + 20)
            assert isinstance(step, Finished)
            engine.close()
        time.sleep(0.5)  # replacements, if any, have started
        assert len(pool.pids()) <= pool.max_workers


def test_an_engine_factory_of_the_code_wins_over_the_config_file_s_isolation(tmp_path):
    """One rule for Host and Coordinator: a config file's isolation = "process" gives way
    to an engine factory the code passes (the coordinator refused that pair before)."""
    import engines

    config = tmp_path / "polyspell.toml"
    config.write_text('isolation = "process"\n')
    with Host(config=config, engine_factory=engines.make_engine) as host:
        assert (host.isolation, host.pool) == ("thread", None)
    with Coordinator(config=config, engine_factory=engines.make_engine) as coordinator:
        assert coordinator.isolation == "thread"


class _CaughtStarting(WorkerPool):
    """A pool whose spawner is held between starting a worker and taking it in, as when
    the host closes its pool (Ctrl-C) while a worker is started in a dead one's place."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.starting = threading.Event()
        super().__init__(1, idle_timeout=None)

    def _spawn(self, memory_mb: int) -> Any:
        worker = super()._spawn(memory_mb)
        self.started.append(worker.pid)
        self.starting.set()
        time.sleep(0.5)
        return worker


def test_closing_a_pool_ends_the_worker_it_was_starting_before_it_returns():
    pool = _CaughtStarting()
    assert pool.starting.wait(10)
    pool.close()
    [pid] = pool.started
    assert pid not in children(), "close returned with a worker it started still there"
