"""A compromised worker against its host (issue 14, red team).

Each test plays a worker whose script escaped its engine into the worker's Python (real
worker processes: ``tests.misbehaving_worker``, which sends what it is told to), and
checks that the host lets it do no more than an engine in the host could: the data it
sends is bounded as the engines bound theirs, what it queued for a later step never
answers another run, and it has no descriptor of the host's terminal to write to.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge import SpellError
from bridge.data import MAX_DEPTH
from engines import Failed, Finished, Limits
from engines.process import WorkerPool
from host import Host, tool
from tests.procs import alive, children, wait_until

ROOT = Path(__file__).resolve().parent.parent
SECRET = "TOP-SECRET-LINE of the host"


@tool
def add(a: int, b: int) -> int:
    """Python, in the host."""
    return a + b


@pytest.fixture(scope="module")
def bad_pool() -> Iterator[WorkerPool]:
    with WorkerPool(1, memory_mb=64, entry="tests.misbehaving_worker") as pool:
        yield pool


def step_of(pool: WorkerPool, how: str, arg: str = "") -> tuple[object, int | None]:
    engine = pool.make_engine("lua", limits=Limits(timeout=20, memory_mb=64))
    try:
        step = engine.start(f"--misbehave:{how} {arg}", "agent.lua", None, [],
                            time.monotonic() + 20)
        return step, engine.pid
    finally:
        engine.close()


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


# -- data no engine sends --------------------------------------------------------------


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 900])
def test_a_result_nested_deeper_than_any_engine_sends_is_refused(bad_pool, levels):
    # an engine refuses a result past MAX_DEPTH; the decoder alone let ~990 levels in
    step, _ = step_of(bad_pool, "deep", str(levels))
    assert isinstance(step, Failed) and step.error.code == "bridge/protocol_violation"
    assert f"nested more than {MAX_DEPTH} levels deep" in str(step.error)


def test_a_result_as_deep_as_an_engine_sends_still_crosses(bad_pool):
    step, _ = step_of(bad_pool, "deep", str(MAX_DEPTH))
    assert isinstance(step, Finished)
    depth, value = 0, step.result
    while isinstance(value, list):
        depth, value = depth + 1, value[0] if value else None
    assert depth == MAX_DEPTH


def test_the_deepest_result_a_real_engine_sends_crosses_in_process_mode(worker_pool):
    source = ("local t = {} local c = t\nfor i = 1, %d do local n = {} c[1] = n c = n end\n"
              "return t")
    host = Host(isolation=worker_pool, on_output=lambda line: None, memory_mb=64)
    result = host.run_source(source % (MAX_DEPTH - 1), "lua")  # MAX_DEPTH tables
    depth = 0
    while isinstance(result, list):
        depth, result = depth + 1, result[0] if result else None
    assert depth == MAX_DEPTH - 1  # the innermost table is empty: {} (a dict)
    with pytest.raises(SpellError) as info:  # one more: the engine refuses it, as in threads
        host.run_source(source % MAX_DEPTH, "lua")
    assert info.value.code == "script/cross_engine_communication"


def test_tool_params_nested_deeper_than_any_engine_sends_never_reach_the_tool(bad_pool):
    calls = []

    @tool
    def record(**params: object) -> None:
        """Would see the params."""
        calls.append(params)

    request = f'[1, "record", {{"x": {nested(MAX_DEPTH + 5)}}}, null, [], "tool"]'
    host = Host([record], engine_factory=bad_pool.make_engine, timeout=20, memory_mb=64)
    with pytest.raises(SpellError) as info:
        host.run_source(f'--misbehave:send ["S", true, [], [{request}]]', "lua")
    assert info.value.code == "bridge/protocol_violation"
    assert "params nested more than" in str(info.value)
    assert calls == []


@pytest.mark.parametrize("line", ["true", "1.0"])
def test_a_frame_equal_to_a_checked_one_but_for_its_line_s_type_is_checked(bad_pool, line):
    """The host keeps the frames it checked, by their items (a call site sends the same
    frames at each call): 1, true and 1.0 are equal keys, yet only 1 is a line."""
    frame = '["lua", "agent.lua", 1, null, "main chunk", "x()"]'
    good = f'["S", true, [], [[1, "record", {{}}, null, [{frame}], "tool"]]]'
    step, _ = step_of(bad_pool, "send", good)
    assert step.__class__.__name__ == "Suspended" and step.requests[0].frames[0].line == 1
    forged = good.replace(", 1, null,", f", {line}, null,")
    step, _ = step_of(bad_pool, "send", forged)
    assert isinstance(step, Failed) and step.error.code == "bridge/protocol_violation"
    assert "line" in str(step.error)


def test_an_error_whose_data_nests_deeper_than_an_engine_sends_is_refused_briefly(bad_pool):
    # pydantic refused it too, but deep in its recursion, with a path 13 kB long as reason
    error = json.dumps({"category": "script", "kind": "runtime_error",
                        "fields": {"language": "lua", "error": "x"},
                        "context": {"metadata": {"k": []}}}).replace("[]", nested(900))
    step, _ = step_of(bad_pool, "send", f'["X", true, [], {error}, null]')
    assert isinstance(step, Failed) and step.error.code == "bridge/protocol_violation"
    assert "an error nested more than" in str(step.error)
    assert len(step.error.to_json()) < 5000


def test_a_worker_cannot_decide_retries_severity_or_the_run_an_error_is_filed_under(
        bad_pool):
    # an engine's errors carry their kind's defaults and no context but its two marks;
    # a worker's said a plan should retry its task (after the delay it chose), how severe
    # it was, and that it belonged to another run
    cause = {"category": "tool", "kind": "execution_failed",
             "fields": {"tool_name": "t", "reason": "r"}, "retryable": True,
             "context": {"correlation_id": "another-run"}}
    error = {"category": "script", "kind": "runtime_error",
             "fields": {"language": "lua", "error": "boom"}, "retryable": True,
             "retry_after": 3600, "severity": "critical", "cause": cause,
             "context": {"correlation_id": "another-run", "operation": "forged",
                         "metadata": {"raised_by": "script", "planted": 1}}}
    host = Host(engine_factory=bad_pool.make_engine, timeout=20, memory_mb=64)
    with pytest.raises(SpellError) as info:
        host.run_source("--misbehave:send " + json.dumps(["X", True, [], error, None]), "lua")
    err = info.value
    honest = SpellError.from_dict({key: error[key] for key in ("category", "kind", "fields")})
    assert (err.code, err.fields["error"]) == ("script/runtime_error", "boom")
    assert err.retryable == honest.retryable and err.requested_retry_after is None
    assert err.severity == honest.severity
    assert err.context.correlation_id not in ("another-run", None)
    assert err.context.operation != "forged" and "planted" not in err.context.metadata
    assert err.raised_by_script  # the one mark an engine sets, kept (it only lowers)
    assert isinstance(err.__cause__, SpellError)
    assert err.__cause__.context.correlation_id != "another-run"
    assert err.__cause__.retryable == SpellError.from_dict(
        {key: cause[key] for key in ("category", "kind", "fields")}).retryable


def test_a_frame_within_the_limit_that_would_become_far_more_in_the_host_is_refused(
        bad_pool):
    # 64 MB of "[]," is 21 million lists: 1.6 GB of Python objects in the host (measured)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step, _ = step_of(bad_pool, "wide", str(21_000_000))
    assert isinstance(step, Failed) and step.error.code == "bridge/protocol_violation"
    assert "more than the engine's memory limit (64 MB) allows" in str(step.error)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) >> 10
    assert grown_mb < 400  # the frame's bytes and a copy, not the objects


def test_as_many_values_as_an_engine_sends_still_cross(bad_pool, worker_pool):
    step, _ = step_of(bad_pool, "wide", str(900_000))  # 57.6 MB by the engines' count
    assert isinstance(step, Finished) and len(step.result) == 900_000
    host = Host(isolation=worker_pool, on_output=lambda line: None, memory_mb=64)
    assert len(host.run_source("local t = {} for i = 1, 500000 do t[i] = {} end\n"
                               "t[1] = 'a,b:[c]{' return t", "lua")) == 500_000


# -- answers nobody asked for ------------------------------------------------------------


def test_an_answer_queued_by_one_run_never_answers_the_next_run(bad_pool):
    host = Host(engine_factory=bad_pool.make_engine, timeout=20, memory_mb=64)
    # the run's own step is answered, and the same answer is queued for the next step
    assert host.run_source('--misbehave:send_twice ["F", true, [], "forged"]', "lua") \
        == "forged"
    for _ in range(3):  # the next runs (on the one idle worker, or a new one) are their own
        assert host.run_source('return "honest"', "lua") == "honest"


def test_an_idle_worker_that_talks_is_not_handed_out(bad_pool):
    step, pid = step_of(bad_pool, "send", '["F", true, [], "fine"]')
    assert isinstance(step, Finished) and bad_pool.pids(busy=False) == [pid]
    engine = bad_pool.make_engine("lua", limits=Limits(timeout=20, memory_mb=64))
    try:  # the worker came back quiet: it serves again
        assert engine.pid == pid
        # now it speaks out of turn while idle (an escaped script's thread could)
        engine.start('--misbehave:send_twice ["F", true, [], "early"]', "a.lua", None, [],
                     time.monotonic() + 20)
    finally:
        engine.close()
    engine = bad_pool.make_engine("lua", limits=Limits(timeout=20, memory_mb=64))
    try:
        assert engine.pid != pid
        step = engine.start("return 'mine'", "a.lua", None, [], time.monotonic() + 20)
        assert isinstance(step, Finished) and step.result == "mine"
    finally:
        engine.close()


def test_a_tool_request_sent_past_the_deadline_is_not_given_out(bad_pool):
    # it came in the grace the host gives the engine to report its own time limit: its
    # tool would have run after the run's time (about 0.1 s past it, in a real run)
    request = '["S", true, [], [[1, "record", {}, null, [], "tool"]]]'
    step_of(bad_pool, "send", '["F", true, [], "warm"]')  # a worker ready, and idle
    engine = bad_pool.make_engine("lua", limits=Limits(timeout=0.3, memory_mb=64))
    try:
        step = engine.start(f"--misbehave:late 0.5 {request}", "agent.lua", None, [],
                            time.monotonic() + 0.3)
        pid = engine.pid
    finally:
        engine.close()
    assert isinstance(step, Failed), step
    assert step.error.code == "script/resource_exhaustion"
    assert step.error.fields["resource_type"] == "time"
    assert pid is not None and wait_until(lambda pid=pid: not alive(pid))


def test_a_message_cut_off_then_silence_is_a_protocol_violation_at_the_deadline(bad_pool):
    # 2 s: under load a worker may need a second to start and send the first bytes
    engine = bad_pool.make_engine("lua", limits=Limits(timeout=2.0, memory_mb=64))
    try:
        step = engine.start("--misbehave:stalled", "agent.lua", None, [],
                            time.monotonic() + 2.0)
        pid = engine.pid
    finally:
        engine.close()
    assert isinstance(step, Failed) and step.error.code == "bridge/protocol_violation"
    assert "cut off after 17 bytes" in str(step.error)
    assert pid is not None and wait_until(lambda pid=pid: not alive(pid))


def test_a_tool_request_before_the_deadline_is_answered(bad_pool):
    request = '["S", true, [], [[1, "record", {}, null, [], "tool"]]]'
    engine = bad_pool.make_engine("lua", limits=Limits(timeout=20, memory_mb=64))
    try:
        step = engine.start(f"--misbehave:late 0.2 {request}", "agent.lua", None, [],
                            time.monotonic() + 20)
    finally:
        engine.close()
    assert step.__class__.__name__ == "Suspended" and step.requests[0].tool == "record"


def test_a_pool_that_recycles_after_one_run_gives_no_run_a_worker_another_used():
    """What an escaped script can still do: stay in its worker, which serves the pool's
    next runs (up to RECYCLE_AFTER). Scripts that must not meet get a pool whose workers
    serve one run each."""
    with WorkerPool(1, memory_mb=64, recycle_after=1) as pool:
        seen: list[list[int]] = []

        @tool
        def serving() -> None:
            """Records the worker that serves the run calling it."""
            seen.append(pool.pids(busy=True))

        host = Host([serving], isolation=pool, memory_mb=64, on_output=lambda line: None)
        for _ in range(3):
            host.run_source("tools.serving{}", "lua")
        assert [len(pids) for pids in seen] == [1, 1, 1]
        assert len({pids[0] for pids in seen}) == 3, seen


def test_the_longest_timeout_a_host_takes_works_in_process_mode(worker_pool):
    # poll() takes a C int of milliseconds (24.8 days): 1e9 s overflowed it, and every
    # run failed as a protocol violation of the worker's (thread mode ran it)
    from host.host import MAX_TIMEOUT

    for isolation in ("thread", worker_pool):
        host = Host(isolation=isolation, timeout=MAX_TIMEOUT, memory_mb=64,
                    on_output=lambda line: None)
        assert host.run_source("return 5", "lua") == 5


# -- what a worker may write to ----------------------------------------------------------


def test_a_worker_keeps_no_descriptor_but_its_socket_and_the_null_device(bad_pool):
    step, _ = step_of(bad_pool, "descriptors")
    assert isinstance(step, Finished)
    null = os.stat(os.devnull)
    kinds = {fd: (kind, rdev) for fd, kind, _dev, _ino, rdev in step.result}
    for fd in (0, 1, 2):  # stdin, stdout and (since it was ready) stderr
        assert kinds.pop(fd) == ("char", null.st_rdev), step.result
    assert [kind for kind, _ in kinds.values()] == ["socket"], step.result


def test_a_worker_cannot_write_on_the_hosts_stderr(tmp_path):
    program = tmp_path / "host_program.py"
    program.write_text(textwrap.dedent("""
        from engines.process import WorkerPool
        from host import Host

        with WorkerPool(1, memory_mb=64, entry="tests.misbehaving_worker") as pool:
            host = Host(engine_factory=pool.make_engine, timeout=20, memory_mb=64)
            print(host.run_source("--misbehave:stderr Error: FORGED by the worker", "lua"))
    """))
    done = subprocess.run([sys.executable, str(program)], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "done"  # the worker did write (to the null device)
    assert "FORGED" not in done.stderr


# -- what a worker's error may show ------------------------------------------------------


def test_an_error_from_a_worker_shows_no_line_of_a_host_file_it_names(bad_pool, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text(f"{SECRET}\n")
    frames = [{"language": "lua", "file": str(secret), "line": 1, "function": "steal"},
              {"language": "lua", "file": str(ROOT / "host" / "runner.py"), "line": 1}]
    error = {"category": "script", "kind": "runtime_error",
             "fields": {"language": "lua", "error": "boom"}}
    request = json.dumps(["X", True, [], {**error, "frames": frames}, None])
    host = Host(engine_factory=bad_pool.make_engine, timeout=20, memory_mb=64)
    with pytest.raises(SpellError) as info:
        host.run_source(f"--misbehave:send {request}", "lua")
    err = info.value
    assert err.code == "script/runtime_error", err
    files = [frame.file for frame in err.frames]
    assert str(secret) in files and str(ROOT / "host" / "runner.py") in files, files
    shown = "\n".join(["".join(traceback.format_exception(err)), err.to_text(),
                       err.to_json()])
    assert SECRET not in shown
    runner_lines = (ROOT / "host" / "runner.py").read_text().splitlines()
    assert runner_lines[0].strip() not in shown  # no line of the host's own file either


@pytest.mark.parametrize("language", ["python", "host"])
def test_a_frame_that_says_it_is_pythons_shows_no_line_of_a_file_it_names(
        bad_pool, tmp_path, language):
    # the host's traceback would read the named file from disk (linecache), with the
    # host's privileges: a confined worker (no file access) reading ~/.ssh/id_rsa
    secret = tmp_path / "id_rsa"
    secret.write_text(f"{SECRET}\n")
    frames = [{"language": language, "file": str(secret), "line": 1, "function": "steal"},
              {"language": "lua", "file": "agent.lua", "line": 1}]
    error = {"category": "script", "kind": "runtime_error", "frames": frames,
             "fields": {"language": "lua", "error": "boom"}}
    host = Host(engine_factory=bad_pool.make_engine, timeout=20, memory_mb=64)
    with pytest.raises(SpellError) as info:
        host.run_source("--misbehave:send " + json.dumps(["X", True, [], error, None]), "lua")
    err = info.value
    assert str(secret) in [frame.file for frame in err.frames]  # kept, as data
    shown = "".join(traceback.format_exception(err))
    assert f"<not loaded by the host: {secret}>" in shown
    assert SECRET not in shown + err.to_text() + err.to_json()


def test_an_error_read_from_json_shows_no_line_of_a_file_its_python_frame_names(tmp_path):
    from bridge.pytraceback import attach_python_traceback

    secret = tmp_path / "id_rsa"
    secret.write_text(f"{SECRET}\n")
    data = {"category": "script", "kind": "lua", "fields": {"error": "x"},
            "frames": [{"language": "python", "file": str(secret), "line": 1},
                       {"language": "lua", "file": "agent.lua", "line": 1}]}
    err = attach_python_traceback(SpellError.from_json(json.dumps(data)))
    assert SECRET not in "".join(traceback.format_exception(err))


def test_a_real_python_frame_still_shows_its_line():
    from bridge import Frame, ScriptError
    from bridge.pytraceback import attach_python_traceback

    here = str(Path(__file__).resolve())  # a loaded module's file: its lines show
    line = test_a_real_python_frame_still_shows_its_line.__code__.co_firstlineno
    err = ScriptError.RuntimeError(language="lua", error="x", frames=[
        Frame("python", here, line, None, "f", None), Frame("lua", "agent.lua", 1, None,
                                                            None, None)])
    shown = "".join(traceback.format_exception(attach_python_traceback(err)))
    assert "def test_a_real_python_frame_still_shows_its_line" in shown, shown


# -- workers that die, over and over ------------------------------------------------------


def test_runs_that_each_kill_their_worker_leave_nothing_behind(bad_pool):
    host = Host(engine_factory=bad_pool.make_engine, timeout=20, memory_mb=64)
    pids = set()
    for _ in range(8):  # each one starts a worker: 8 are enough to see a leak grow
        with pytest.raises(SpellError) as info:
            host.run_source("--misbehave:segfault", "lua")
        assert info.value.code == "runtime/worker_died"
        assert info.value.fields["signal"] == "SIGSEGV"
        pids.add(info.value.fields["pid"])
    assert len(pids) == 8  # each run had a worker of its own, replaced after the crash
    assert host.run_source("return 'still here'", "lua") == "still here"
    assert len(bad_pool.pids()) <= bad_pool.size + 1
    assert not (pids & set(children()))  # each dead worker was reaped: no zombie left


def test_runs_that_crash_their_workers_among_others_on_one_pool(bad_pool):
    import threading

    host = Host([add], engine_factory=bad_pool.make_engine, timeout=20, memory_mb=64)
    outcomes: dict[int, object] = {}

    def run(index: int) -> None:
        source = "--misbehave:segfault" if index % 3 == 0 else \
            f"return tools.add{{a = {index}, b = 1000}}"
        try:
            outcomes[index] = host.run_source(source, "lua")
        except SpellError as err:
            outcomes[index] = err.code

    threads = [threading.Thread(target=run, args=(index,)) for index in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert outcomes == {index: "runtime/worker_died" if index % 3 == 0 else index + 1000
                        for index in range(12)}


def test_two_hosts_each_with_its_own_pool_end_only_their_workers():
    first = Host([add], isolation="process", on_output=lambda line: None)
    second = Host([add], isolation="process", on_output=lambda line: None)
    try:
        assert first.run_source("return tools.add{a = 1, b = 2}", "lua") == 3
        assert second.run_source("return tools.add{a = 2, b = 2}", "lua") == 4
        assert first.pool is not None and second.pool is not None
        mine = set(first.pool.pids())
        assert mine and not mine & set(second.pool.pids())
        first.close()
        assert second.run_source("return tools.add{a = 3, b = 3}", "lua") == 6
        assert all(wait_until(lambda pid=pid: not alive(pid)) for pid in mine)
    finally:
        first.close()
        second.close()


def test_interpreter_exit_with_a_run_in_progress_leaves_no_worker(tmp_path):
    program = tmp_path / "exits.py"
    program.write_text(textwrap.dedent("""
        import sys, threading, time
        from host import Host

        host = Host(isolation="process", timeout=60, on_output=lambda line: None)
        threading.Thread(target=lambda: host.run_source("while true do end", "lua"),
                         daemon=True).start()
        while not host.pool.pids(busy=True):
            time.sleep(0.05)
        print(" ".join(map(str, host.pool.pids())), flush=True)
        sys.exit(0)  # the run still in progress, its worker busy
    """))
    began = time.monotonic()
    done = subprocess.run([sys.executable, str(program)], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - began < 20  # it did not wait for the run's 60 s
    pids = [int(pid) for pid in done.stdout.split()]
    assert pids and all(wait_until(lambda pid=pid: not alive(pid)) for pid in pids)


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_interpreter_exit_stops_a_run_still_in_progress_and_waits_for_it(isolation):
    # A daemon thread running Python code when the interpreter finalizes is ended where
    # it stands, and inside pydantic-core that aborts the process ("FATAL: exception not
    # rethrown", seen once in a few full runs of the test above): exit stops the run and
    # waits (EXIT_WAIT at most) for its thread to end first.
    import host.runner as runner

    host = Host(isolation=isolation, timeout=60, on_output=lambda line: None)
    raised: list[BaseException] = []

    def run() -> None:
        try:
            host.run_source("while true do end", "lua")
        except BaseException as exc:
            raised.append(exc)

    threading.Thread(target=run, daemon=True).start()
    assert wait_until(lambda: any(r.control.in_tool_kind is None and r._thread is not None
                                  for r in list(runner._running)))
    time.sleep(0.2)  # inside the loop
    runs = list(runner._running)
    began = time.monotonic()
    runner._wait_at_exit()
    assert time.monotonic() - began < runner.EXIT_WAIT + 0.5
    assert all(not r._thread.is_alive() for r in runs), "exit did not wait for the run"
    assert wait_until(lambda: bool(raised))
    assert isinstance(raised[0], SpellError) and raised[0].code == "script/resource_exhaustion"
    host.close()


def test_a_worker_cannot_undo_its_death_with_the_host(tmp_path):
    """An escaped script clears the parent-death signal, then keeps the worker busy (no
    read, so no EOF): the host killed with SIGKILL must still take it along."""
    from tests.test_confine import walls_offered

    if "seccomp" not in walls_offered():
        pytest.skip(f"this kernel offers {walls_offered()} only")
    program = tmp_path / "host_program.py"
    program.write_text(textwrap.dedent("""
        import json, time
        from engines.process import WorkerPool
        from host import Host

        pool = WorkerPool(1, memory_mb=64, entry="tests.misbehaving_worker")
        host = Host(engine_factory=pool.make_engine, timeout=20, memory_mb=64)
        print(json.dumps([host.run_source("--misbehave:outlive", "lua"), pool.pids()]),
              flush=True)
        time.sleep(600)
    """))
    host = subprocess.Popen([sys.executable, str(program)], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        said, pids = json.loads(host.stdout.readline() if host.stdout else "null")
    finally:
        host.kill()
        host.wait()
    assert said == [-1, 1], said  # prctl(PR_SET_PDEATHSIG, 0) refused: EPERM
    assert pids and all(wait_until(lambda pid=pid: not alive(pid)) for pid in pids)


def test_a_worker_cannot_set_its_resource_limits_again(bad_pool):
    """Not even with CAP_SYS_RESOURCE (a host run as root): setrlimit and prlimit64 with
    a new limit are refused by the seccomp filter; reading a limit still works."""
    from tests.test_confine import walls_offered

    if "seccomp" not in walls_offered():
        pytest.skip(f"this kernel offers {walls_offered()} only")
    step, _ = step_of(bad_pool, "unbound")
    assert isinstance(step, Finished)
    raised, lowered, limits = step.result
    # Python reads EPERM from setrlimit as ValueError; lowering is allowed unfiltered
    assert (raised, lowered) == ("ValueError", "ValueError")
    assert limits[0] == limits[1] != resource.RLIM_INFINITY


def test_a_socket_descriptor_past_fd_setsize_still_serves(bad_pool):
    # the host's checks on a worker's socket must not use select() (FD_SETSIZE: 1024)
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    if limits[1] != resource.RLIM_INFINITY and limits[1] < 1200:
        pytest.skip(f"at most {limits[1]} descriptors here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(limits[0], 1200), limits[1]))
    held = []
    try:
        while True:
            fd = os.open(os.devnull, os.O_RDONLY)
            held.append(fd)
            if fd > 1100:
                break
        with WorkerPool(1, memory_mb=64, entry="tests.misbehaving_worker") as pool:
            host = Host(engine_factory=pool.make_engine, timeout=20, memory_mb=64)
            for _ in range(3):
                assert host.run_source("return 7", "lua") == 7
            assert len(pool.pids()) == 1  # the one worker served all three
            assert all(worker.sock.fileno() > 1024 for worker in pool._workers)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)
