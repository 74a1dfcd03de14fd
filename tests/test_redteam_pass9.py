"""Red team of JavaScript's alarm (engines/javascript_alarm.py, issue 17's eighth pass), on
the real engines and the real alarm thread: hostile scripts that try to outlive their
deadline or a stop, or to pass their own error off as the time limit; careless hosts
(deadlines that never come, engines dropped unclosed, many engines at once); racing
threads (stop during arming, during the engine's own work, before the context exists).

Time bounds are generous upper bounds for "it ends" on a loaded, shared machine.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import pytest

from engines import Failed, Finished, Limits
from engines import javascript_alarm as alarms
from engines.javascript import JavaScriptEngine

BUSY = "while (true) {}"


def engine(timeout: float = 30, cpu_factor: float = 1.0) -> JavaScriptEngine:
    """A JS engine with an alarm; ``cpu_factor`` 1: its own work after a limit gets 0.25 s."""
    made = JavaScriptEngine(limits=Limits(timeout=timeout))
    made.cpu_factor = cpu_factor
    return made


def timed(busy: JavaScriptEngine, source: str, deadline_in: float, *, bound: float = 3.0,
          filename: str = "a.js") -> tuple[Any, float]:
    """Start ``source`` with a deadline ``deadline_in`` seconds away; a watchdog stops the
    engine once ``bound`` seconds have passed, so a defence that fails makes the test fail
    (with the time it took) instead of hanging it. Answers the step and the seconds."""
    done = threading.Event()

    def watchdog() -> None:
        if not done.wait(bound + 5):
            busy.stop()

    threading.Thread(target=watchdog, daemon=True).start()
    began = time.monotonic()
    try:
        step = busy.start(source, filename, None, [], began + deadline_in)
    finally:
        done.set()
    return step, time.monotonic() - began


def is_time(step: Any) -> bool:
    """Whether ``step`` failed with the time limit."""
    return isinstance(step, Failed) and step.error.code == "script/resource_exhaustion" \
        and step.error.fields.get("resource_type") == "time"


@pytest.fixture
def own_clock(monkeypatch: pytest.MonkeyPatch) -> alarms._Clock:
    """A clock (and thread) of the test's own: one the test breaks is not the process's."""
    clock = alarms._Clock()
    monkeypatch.setattr(alarms, "_clock", clock)
    return clock


# -- careless hosts: deadlines that never come ----------------------------------------

@pytest.mark.parametrize("deadline", [math.inf, 1e300, 1e12])
def test_a_run_with_no_deadline_does_not_stop_the_clock_for_everyone(own_clock, deadline):
    # A host may run with no time limit (a plan with no timeout is float("inf"); a Limits
    # timeout of 1e300). The alarm clock then holds that deadline: once it is the earliest,
    # waiting for it must not end the clock's thread (OverflowError: timestamp out of range),
    # or no JavaScript deadline of the process would ring again.
    forever = engine()
    assert isinstance(forever.start("1", "a.js", None, [], deadline), Finished)
    time.sleep(0.6)  # the prelude's grace (0.25 s) passes: the endless deadline is first
    assert own_clock._thread is not None and own_clock._thread.is_alive()
    step, took = timed(engine(), BUSY, 0.3)
    assert is_time(step) and took < 3, (step, took)
    assert own_clock._thread.is_alive()
    forever.close()
