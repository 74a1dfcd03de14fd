"""JavaScript's alarm (engines/javascript_alarm.py): the deadline as wall-clock time and a
stop from any thread, both interrupting a busy loop where it runs, with no clock read per
call into JS. Real quickjs contexts and the real alarm thread throughout; time bounds are
generous upper bounds for "it ends" on a loaded machine (the old CPU-time limit let a busy
loop run up to ``cpu_factor`` times past the deadline, and a stop not at all)."""

from __future__ import annotations

import dis
import linecache
import os
import signal
import sys
import threading
import time
from typing import Any

import anyio

from engines import Failed, Finished, Limits, Suspended, ToolReply
from engines import javascript_alarm as alarms
from engines.javascript import JavaScriptEngine
from host import Host

BUSY = "while (true) {}"


def engine(timeout: float = 30, cpu_factor: float = 20.0) -> JavaScriptEngine:
    """A JS engine whose old CPU-time limit (where there is no alarm) would let a busy
    loop run ``cpu_factor`` times past its deadline: each test fails in bounded time."""
    made = JavaScriptEngine(limits=Limits(timeout=timeout))
    made.cpu_factor = cpu_factor
    return made


def test_the_engine_has_an_alarm_where_the_binding_is_known():
    busy = engine()
    busy.start("1", "a.js", None, [], time.monotonic() + 5)
    assert isinstance(busy._alarm, alarms.Alarm)  # else every test below tests nothing new
    busy.close()
    assert busy._alarm is None


def test_a_busy_loop_ends_at_its_wall_clock_deadline():
    busy = engine(timeout=0.3)
    began = time.monotonic()
    step = busy.start(BUSY, "a.js", None, [], began + 0.3)
    took = time.monotonic() - began
    assert isinstance(step, Failed)
    assert (step.error.code, step.error.fields["resource_type"]) == (
        "script/resource_exhaustion", "time")
    assert step.error.frames[-1].line == 1  # where the loop was interrupted
    assert 0.3 <= took < 3


def test_stop_from_another_thread_ends_a_busy_loop_in_progress():
    busy = engine(timeout=6, cpu_factor=1.0)
    answered: list[bool] = []
    threading.Timer(0.2, lambda: answered.append(busy.stop())).start()
    began = time.monotonic()
    step = busy.start(BUSY, "a.js", None, [], began + 6)
    assert isinstance(step, Failed) and step.error.fields["resource_type"] == "time"
    assert time.monotonic() - began < 3
    assert answered == [True]  # the host may wait for this run's thread at exit
    # stopped for good: the next step fails at once, with no JS run
    again = busy.start("1", "a.js", None, [], time.monotonic() + 30)
    assert isinstance(again, Failed) and again.error.fields["resource_type"] == "time"


def test_a_stop_between_the_deadline_check_and_the_call_is_not_lost():
    # stop() rings from another thread while the engine arms for its step: arming for the
    # script leaves a rung alarm set off; only the engine's own work gets time after it.
    busy = engine()
    busy.start("function main() {}", "a.js", None, [], time.monotonic() + 30)
    alarm = busy._alarm
    assert alarm is not None and not alarm.rang
    alarm.ring()
    alarm.arm(time.monotonic() + 30)
    assert alarm.rang
    alarm.arm(time.monotonic() + 30, own=True)
    assert not alarm.rang


def test_each_engine_ends_at_its_own_deadline_or_stop_on_two_threads():
    soon, later = engine(timeout=0.3), engine(timeout=6, cpu_factor=1.0)
    ended: dict[str, float] = {}
    began = time.monotonic()

    def run(name: str, which: JavaScriptEngine, deadline: float) -> None:
        step = which.start(BUSY, f"{name}.js", None, [], deadline)
        assert isinstance(step, Failed)
        ended[name] = time.monotonic() - began

    threads = [threading.Thread(target=run, args=("soon", soon, began + 0.3)),
               threading.Thread(target=run, args=("later", later, began + 6))]
    for thread in threads:
        thread.start()
    waited = time.monotonic() + 5
    while "soon" not in ended and time.monotonic() < waited:
        time.sleep(0.02)
    assert "soon" in ended and "later" not in ended  # its alarm did not ring the other's
    stopped = time.monotonic() - began
    later.stop()
    for thread in threads:
        thread.join(10)
    assert stopped <= ended["later"] < stopped + 3


def test_an_earlier_deadline_that_passes_while_idle_does_not_interrupt_a_later_one():
    # A tools file's engine is called with each caller's deadline. The clock still holds
    # the first one when it passes; by then the engine was armed again, for a later one.
    tools = engine()
    loaded = tools.load("exports.spin = ({ms}) => { const end = Date.now() + ms;"
                        " while (Date.now() < end) {} return ms; };", "tools.js", [],
                        time.monotonic() + 0.2)
    assert isinstance(loaded, Finished)
    step = tools.call("spin", {"ms": 1}, time.monotonic() + 0.2)
    assert isinstance(step, Finished) and step.result == 1
    time.sleep(0.4)  # the first deadline passes while nothing runs
    step = tools.call("spin", {"ms": 500}, time.monotonic() + 30)
    assert isinstance(step, Finished) and step.result == 500, step


def test_a_deadline_moved_earlier_ends_the_call_then():
    tools = engine()
    tools.load("exports.spin = () => { while (true) {} };", "tools.js", [],
               time.monotonic() + 30)
    began = time.monotonic()
    step = tools.call("spin", {}, began + 0.3)
    assert isinstance(step, Failed) and step.error.fields["resource_type"] == "time"
    assert time.monotonic() - began < 3


def test_a_suspended_script_whose_deadline_passed_fails_with_the_time_limit():
    waiting = engine()
    step = waiting.start("async function main() { await tools.echo({}); while (true) {} }",
                         "a.js", None, [], time.monotonic() + 0.3)
    assert isinstance(step, Suspended)
    time.sleep(0.4)  # the alarm goes off while the script waits for its tool
    step = waiting.resume([ToolReply(step.requests[0].id, result=1)], time.monotonic() + 0.3)
    assert isinstance(step, Failed) and step.error.fields["resource_type"] == "time"
    # the engine's own work after the limit (its output, its error) still ran: its lines
    printing = engine()
    step = printing.start("console.log('before'); " + BUSY, "a.js", None, [],
                          time.monotonic() + 0.2)
    assert isinstance(step, Failed) and step.output == ("before",)


def test_a_script_cannot_pass_its_own_error_off_as_the_time_limit():
    forged = engine()
    step = forged.start("function main() { const e = new Error('interrupted');"
                        " e.name = 'InternalError'; throw e; }", "a.js", None, [],
                        time.monotonic() + 30)
    assert isinstance(step, Failed)
    assert step.error.code != "script/resource_exhaustion", step.error


def test_rearming_many_times_keeps_the_clock_bounded():
    ctx_engine = engine()
    ctx_engine.start("1", "a.js", None, [], time.monotonic() + 30)
    alarm = ctx_engine._alarm
    assert alarm is not None
    far = time.monotonic() + 3600
    for i in range(20_000):  # each deadline earlier: each arming leaves an entry stale
        alarm.arm(far - i)
    assert len(alarms._clock._heap) < 2_000
    for i in range(20_000):  # each later: the entry it has comes up first, and is put back
        alarm.arm(far + i)
    assert len(alarms._clock._heap) < 2_000
    assert not alarm.rang


def test_alarms_removed_before_their_deadline_do_not_pile_up_on_the_clock(monkeypatch):
    """Each engine closed before its deadline (the usual run: 30 s) removes its alarm:
    its entry on the clock is dropped when the heap is next compacted, not held (with
    the alarm) until its deadline."""
    import quickjs

    clock = alarms._Clock()
    monkeypatch.setattr(alarms, "_clock", clock)
    far = time.monotonic() + 3600
    for _ in range(3_000):
        ctx = quickjs.Context()  # (alive until its alarm is removed, as install asks)
        alarm = alarms.install(ctx)
        assert alarm is not None
        alarm.arm(far)
        alarm.remove()
        del ctx
    assert len(clock._heap) < 1_000


def test_a_cancelled_host_run_frees_its_thread_at_once():
    # thread mode: a run given up on (its caller cancelled) rings its JS engine's alarm,
    # so the busy loop's thread ends now instead of spinning on past its deadline
    host = Host(timeout=8, on_output=lambda line: None)

    async def cancelled() -> None:
        with anyio.move_on_after(0.3):
            await host.arun_source(BUSY, "javascript", "spin.js")

    anyio.run(cancelled)
    ends = time.monotonic() + 5
    while any(t.name == "polyspell run spin.js" for t in threading.enumerate()):
        assert time.monotonic() < ends, "the run's thread still spins"
        time.sleep(0.02)


def test_a_forked_child_s_busy_loop_still_ends_at_its_deadline():
    # the parent's alarm thread is not in a child made by fork (multiprocessing's default
    # on Linux): the child's clock is its own
    busy = engine(timeout=0.3)
    busy.start("1", "a.js", None, [], time.monotonic() + 5)  # the parent's clock runs
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if the loop ended at its deadline
        code = 1
        try:
            began = time.monotonic()
            step = engine(timeout=0.3).start(BUSY, "a.js", None, [], began + 0.3)
            if isinstance(step, Failed) and time.monotonic() - began < 3:
                code = 0
        finally:
            os._exit(code)
    ends = time.monotonic() + 10
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > ends:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child's busy loop ran on past its deadline")
        time.sleep(0.02)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_stop_as_a_step_begins_is_not_lost():
    # stop() lands as start() stores the step's deadline (a thread switch there, before the
    # context and its alarm exist): the stop is not undone, and the busy loop ends at once
    # rather than at its deadline
    busy = engine(timeout=4, cpu_factor=1.0)
    start_code = JavaScriptEngine._set_deadline.__code__
    stopped: list[bool] = []

    store = dis.opmap["STORE_ATTR"]

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code is start_code:
            frame.f_trace_opcodes = True

            def opcodes(frame: Any, event: str, arg: Any) -> Any:
                # as the deadline read with _stopped (False) is about to be stored
                if (event == "opcode" and not stopped
                        and frame.f_code.co_code[frame.f_lasti] == store
                        and "self._deadline = deadline" in line_of(frame)):
                    stopped.append(busy.stop())
                return opcodes
            return opcodes
        return None

    began = time.monotonic()
    sys.settrace(tracer)
    try:
        step = busy.start(BUSY, "a.js", None, [], began + 4)
    finally:
        sys.settrace(None)
    assert stopped, "the stop was not injected"
    assert isinstance(step, Failed) and step.error.fields["resource_type"] == "time"
    assert time.monotonic() - began < 2


def line_of(frame: Any) -> str:
    """The source line a traced frame is at (for tests that land a stop on one line)."""
    return linecache.getline(frame.f_code.co_filename, frame.f_lineno)
