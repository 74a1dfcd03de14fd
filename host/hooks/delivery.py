"""Observers' delivery: in order, on a thread of the host's, off the run's path.

An observer cannot change the run, so the run never waits for it: at a point, the run
only queues the event (well under a microsecond), and one daemon thread per dispatcher
calls the observers, in the order the events happened, while the run goes on.

- At its end the run gives its observers up to :data:`FLUSH_GRACE` seconds
  (:meth:`Delivery.flush`) to see every event it queued, ``run_finished`` included, so
  that when ``host.run`` returns they have (and the run's hook path, where failures are
  recorded, is complete); what slower observers have not seen by then they see in the
  background, after the run.
- Past :data:`MAX_PENDING` waiting events (observers far slower than the run), an event
  is dropped rather than waited for: memory stays bounded and a run's time is its own.
  Dropped events are counted (:attr:`Delivery.dropped`) and logged, never lost silently.

A sync observer past its budget cannot be stopped (Python cannot stop a thread): the
first look that finds it there (at the next event, or while the run's end waits)
abandons the thread to it, records ``hook/timeout`` and starts a new thread, which
resumes with the next observer of the same event. An observer that returns past its
budget is a ``hook/timeout`` too. Async observers run on the run's event loop
(``token``), within their budget.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from host.hooks.dispatch import Dispatcher, Hook, Record

logger = logging.getLogger("polyspell")

MAX_PENDING = 10_000  # events waiting for the observers: past it, dropped and counted
FLUSH_GRACE = 1.0  # seconds a run's end gives its observers to catch up
POLL = 0.01  # seconds between the observers' looks at the queue while events come
IDLE_AFTER = 10  # looks that found nothing before waiting to be woken
IDLE_CHECK = 5.0  # seconds between an idle thread's looks at whether its host is gone


class _Event(NamedTuple):
    point: str
    make: Callable[..., Any]  # make(*args) is the context: made here, off the run's path
    args: tuple
    records: list[Record] | None  # where the observers' records go (a hook path)
    token: Any  # the event loop of async observers (None: a loop of their own)
    keep_ok: bool  # record observers that did fine too (else failures only)
    failed: bool  # what it tells failed (else failures_only observers skip it)


class _InFlight(NamedTuple):
    event: _Event
    context: Any
    hook: Hook
    observers: list[Hook]  # the event's: those after index are still to run
    index: int  # of hook in observers (not a copy of the rest per observer: n² for n)
    began: float  # perf_counter
    deadline: float  # monotonic
    generation: int  # of the thread running it


class Delivery:
    """The observers of one :class:`host.hooks.Dispatcher` (see the module docstring)."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        # not a strong reference: a host no longer used is freed at once, and its idle
        # thread then ends (see _serve)
        self._dispatcher = weakref.ref(dispatcher)
        # while events come, the thread takes them in batches every POLL seconds, so that
        # an event costs the run an append, not a wake-up of another thread
        self._pending: deque[Any] = deque()
        self._wake = threading.Event()
        self._idle = False  # the thread waits to be woken (set it, then wake it)
        self._lock = threading.Lock()
        self._generation = 0  # the thread serving the queue: older ones were abandoned
        self._started = False
        self._current: _InFlight | None = None
        self.dropped = 0  # events dropped: the observers were too far behind
        self._overflowing = False

    def put(self, point: str, make: Callable[..., Any], args: tuple,
            records: list[Record] | None, token: Any, keep_ok: bool,
            failed: bool = True) -> None:
        """Queue one event for ``point``'s observers, whose context is ``make(*args)``
        (the run's only cost: the context is made on the observers' thread); with
        :data:`MAX_PENDING` waiting, drop it (counted, and logged once per overflow)."""
        if not self._started:
            self._start(None)
        self._abandon_if_stuck()
        if len(self._pending) >= MAX_PENDING:
            if not self._overflowing:
                self._overflowing = True
                logger.warning("polyspell's observers are far behind the runs (%d events "
                               "waiting): events are dropped until they catch up",
                               MAX_PENDING)
            self.dropped += 1
            return
        self._overflowing = False
        self._pending.append(_Event(point, make, args, records, token, keep_ok, failed))
        if self._idle:
            self._idle = False
            self._wake.set()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the observers have seen every event queued so far (each within
        its budget: a stuck one is abandoned), or ``timeout`` seconds: whether they have.
        Call it off the event loop."""
        if not self._started:
            return True
        done = threading.Event()
        self._pending.append(done)
        self._idle = False
        self._wake.set()
        end = None if timeout is None else time.monotonic() + timeout
        while not done.wait(self._wait_for()):
            self._abandon_if_stuck()
            if end is not None and time.monotonic() >= end:
                return False
        return True

    # -- the delivery thread -----------------------------------------------------------

    def _start(self, resume: tuple[_Event, list[Hook]] | None) -> None:
        with self._lock:
            if self._started and resume is None:
                return  # another caller started it meanwhile
            self._generation += 1
            generation = self._generation
            self._started = True
        threading.Thread(target=_serve, args=(weakref.ref(self), generation, resume),
                         daemon=True, name="polyspell observers").start()

    def _serve_until_idle(self, generation: int) -> threading.Event | None:
        """Deliver what comes until nothing has come for a while: then the event to wait
        on (the thread is idle), or None if this thread was abandoned."""
        looks = 0
        while True:
            while self._pending:
                item = self._pending.popleft()  # this thread is the only one taking
                if isinstance(item, threading.Event):  # a flush
                    item.set()
                elif not self._deliver(item, None, generation):
                    return None  # abandoned to an observer past its budget
                looks = 0
            self._wake.clear()
            if self._pending:
                continue
            if looks < IDLE_AFTER:
                looks += 1
                self._wake.wait(POLL)
                continue
            self._idle = True
            if self._pending:  # came in before it was seen idle
                self._idle = False
                continue
            return self._wake

    def _deliver(self, event: _Event, observers: list[Hook] | None, generation: int
                 ) -> bool:
        """Run ``observers`` (None: all of the event's point) on ``event``; False if
        this thread was abandoned meanwhile."""
        d = self._dispatcher()
        if d is None:
            return True
        if observers is None:
            observers = list(d.by_point.get(event.point, ()))
            if not event.failed:
                observers = [hook for hook in observers if not hook.failures_only]
        if not observers:
            return True
        try:
            context = event.make(*event.args)
        except Exception:  # e.g. a tool changing the result it returned meanwhile
            logger.exception("polyspell could not make the context of %s for its observers",
                             event.point)
            return True
        for index, hook in enumerate(observers):
            began = time.perf_counter()
            self._current = _InFlight(event, context, hook, observers, index, began,
                                      time.monotonic() + hook.timeout, generation)
            failure: BaseException | None = None
            try:
                d.run_observer(hook, context, event.token)
            except BaseException as exc:  # an observer's bug changes nothing of the run
                failure = exc
            elapsed = time.perf_counter() - began
            with self._lock:
                if self._generation != generation:
                    return False  # booked as past its budget by who abandoned it
                self._current = None
            d.book(hook, failure, elapsed, began, event.records, event.keep_ok)
        return True

    def _wait_for(self) -> float:
        """Seconds to wait before looking for a stuck observer again."""
        current = self._current
        if current is None:
            return 0.05
        return min(0.05, max(0.001, current.deadline - time.monotonic()))

    def _abandon_if_stuck(self) -> None:
        current = self._current
        if current is None or time.monotonic() < current.deadline:
            return
        with self._lock:
            if self._current is not current or self._generation != current.generation:
                return
            self._current = None
            self._generation += 1  # the stuck thread sees it when (if) its hook returns
        d = self._dispatcher()
        if d is not None:
            d.book(current.hook, None, float("inf"), current.began, current.event.records,
                   False)
        self._start((current.event._replace(make=given, args=(current.context,)),
                     current.observers[current.index + 1:]))


def _serve(ref: weakref.ref[Delivery], generation: int,
           resume: tuple[_Event, list[Hook]] | None) -> None:
    """The observers' thread. It holds its delivery only while it delivers, so that a
    host no longer used is collected, and then its idle thread ends."""
    delivery = ref()
    if delivery is None or (resume is not None and not delivery._deliver(*resume,
                                                                          generation)):
        return
    while True:
        wake = delivery._serve_until_idle(generation)
        if wake is None:
            return
        del delivery
        while not wake.wait(IDLE_CHECK):
            if ref() is None:
                return
        delivery = ref()
        if delivery is None:
            return


def given(context: Any) -> Any:
    """The ``make`` of an event whose context is made already: the context itself."""
    return context
