"""Deadlines that interrupt JavaScript where it runs, with no clock read per call.

quickjs asks its runtime's interrupt handler, every 10,000 ticks of script code, whether
to stop; if it says yes, the script ends with an uncatchable ``InternalError:
interrupted``. The binding's own handler reads the process CPU clock, a system call of
about 0.6 us, at the start of every call into JS with a time limit: two or three such
calls are a tool round trip's largest single cost. An :class:`Alarm` is a handler that
reads no clock at all:

- the handler is libc's ``strcmp(runtime, flag)``: ``flag`` is a copy of the runtime's
  first bytes up to their first NUL (its allocator's function pointers, fixed when the
  runtime was made), so it compares equal (0: go on) until the flag's first byte is
  changed (not 0: stop). It runs in C, holding no lock and needing no GIL;
- one thread of the process (the alarm clock) changes the flag of each context whose
  deadline has passed, and :meth:`Alarm.ring` does it at once, from any thread (an
  engine told to stop).

So the deadline is wall-clock time itself, not CPU time scaled by the number of cores, and
a busy loop ends within moments of it (the clock thread's wake-up, and its GIL, permitting)
or of ``stop()``. A script cannot reach the flag: it is host memory that only this module
writes. Where the binding's layout is not the one known (:mod:`engines.javascript_bytecode`)
:func:`install` answers None, and the engine keeps the binding's CPU-time limit.
"""

from __future__ import annotations

import ctypes
import heapq
import os
import threading
import time
from typing import Any

from engines import javascript_bytecode as capi

_HEAD = 16  # bytes of the runtime looked at for the NUL that ends the flag's copy
_COMPACT_FLOOR = 256  # entries the clock's heap may hold before stale ones are dropped
# the longest the clock waits at once (seconds): a far deadline (none: inf) is waited for in
# such steps, as a wait longer than the platform's time_t would raise, ending the thread
_LONGEST_WAIT = 3600.0


class Alarm:
    """The interrupt of one quickjs context: off until its deadline passes, or it is rung.

    Used from the context's thread (:meth:`arm`, :meth:`remove`), except :meth:`ring` and
    :attr:`rang`, which any thread may use.
    """

    __slots__ = ("_deadline", "_entry", "_first", "_flag", "_rung", "_runtime")

    def __init__(self, runtime: int, head: bytes) -> None:
        self._runtime = runtime
        self._first = head[0]
        self._flag = ctypes.create_string_buffer(head, len(head) + 1)  # NUL-ended
        self._deadline: float | None = None  # when it goes off (None: not armed)
        # its one live entry in the clock's heap, (time, number), or None: an entry comes
        # up no later than the deadline, and a deadline moved later keeps it (it is put
        # back then), so arming again for a run's every step costs no entry and no wake-up
        self._entry: tuple[float, int] | None = None
        self._rung = False  # rung: it stays set off for the script

    def arm(self, deadline: float, *, own: bool = False) -> None:
        """Go off at ``deadline`` (``time.monotonic()``), not before: off from now on,
        unless it was rung (the script is stopped) and this is not for the engine's
        ``own`` work (its output, its error), which gets until ``deadline`` even so, or
        ``deadline`` is NaN (gone off at once)."""
        with _clock.lock:
            if (self._rung and not own) or deadline != deadline:
                # rung; or NaN, which the clock's heap cannot order (it would keep others'
                # earlier deadlines from coming up): a deadline that has passed
                self._deadline = None
                self._set_off()
                return
            self._flag[0] = self._first
            self._deadline = deadline
            if self._entry is None or deadline < self._entry[0]:
                _clock.add(deadline, self)
            if self._rung and not own:  # rung meanwhile by this very thread (a signal
                self._deadline = None   # handler that stops the engine): off after all
                self._set_off()

    def ring(self) -> None:
        """Interrupt the script now, and at every arming after (any thread)."""
        with _clock.lock:
            self._rung = True
            self._deadline = None
            self._set_off()

    def _set_off(self) -> None:  # (under the clock's lock)
        self._flag[0] = (self._first + 1) & 0xFF  # any other first byte: strcmp is not 0

    @property
    def rang(self) -> bool:
        """Whether the alarm is set off (its deadline passed, or it was rung)."""
        return self._flag.raw[0] != self._first

    def remove(self) -> None:
        """Take the handler off the runtime (on its thread, while the context lives: the
        runtime must not read the flag once it is freed), and the deadline off the clock
        (its entry is stale from now: dropped when the clock's heap is compacted, not
        kept there, with the alarm, until its time comes)."""
        with _clock.lock:
            self._deadline = None
            self._entry = None
        capi.library().JS_SetInterruptHandler(self._runtime, None, None)


_strcmp: int | None = None
_check: Any = None  # strcmp, called from Python as quickjs calls it


def install(ctx: Any) -> Alarm | None:
    """Make an :class:`Alarm` the interrupt handler of the fresh context ``ctx`` (on its
    thread, before it runs code); None where the binding is not the one known. The
    context must then get no time limit of the binding's: the binding takes the handler
    off at the end of each call with one."""
    global _strcmp, _check
    lib = capi.library()
    pointers = None if lib is None else capi.pointers(lib, ctx)
    if pointers is None:
        return None
    if _strcmp is None:
        _strcmp = ctypes.cast(ctypes.CDLL(None).strcmp, ctypes.c_void_p).value or 0
        if _strcmp:
            _check = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)(_strcmp)
    runtime = pointers[0]
    head = ctypes.string_at(runtime, _HEAD)
    end = head.find(b"\0")
    if end <= 0 or not _strcmp:  # no NUL near (strcmp would read past the flag), or no byte
        return None
    alarm = Alarm(runtime, head[:end])
    flag = ctypes.addressof(alarm._flag)
    if _check(runtime, flag) != 0:  # what the handler answers now: it must be "go on"
        return None
    lib.JS_SetInterruptHandler(runtime, _strcmp, flag)
    return alarm


class _Clock:
    """The one thread that sets alarms off at their deadlines (started on first use)."""

    def __init__(self) -> None:
        # re-entrant: stop() (ring) may run in a signal handler on a thread that holds it
        # (arming), which a plain lock would deadlock; arm() looks again after it
        self.lock = threading.RLock()
        self._changed = threading.Condition(self.lock)
        self._heap: list[tuple[float, int, Alarm]] = []
        self._count = 0  # numbers the entries (and breaks ties: entries never compare alarms)
        self._compact_at = _COMPACT_FLOOR
        self._thread: threading.Thread | None = None

    def add(self, when: float, alarm: Alarm) -> None:
        """An entry for ``alarm`` at ``when``, its live one (under the lock): an older one
        is stale, dropped when it comes up, or when stale ones fill the heap."""
        self._count += 1
        alarm._entry = (when, self._count)
        heapq.heappush(self._heap, (when, self._count, alarm))
        if len(self._heap) > self._compact_at:
            live = [entry for entry in self._heap if entry[2]._entry == entry[:2]]
            heapq.heapify(live)
            self._heap = live
            self._compact_at = max(_COMPACT_FLOOR, 3 * len(live))
        if self._heap[0][2] is alarm:  # the earliest now: the thread waits for it instead
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="polyspell JavaScript alarm clock")
                self._thread.start()
            self._changed.notify()

    def _run(self) -> None:
        with self.lock:
            while True:
                heap = self._heap
                if not heap:
                    self._changed.wait()
                    continue
                when, number, alarm = heap[0]
                now = time.monotonic()
                if now < when:
                    self._changed.wait(min(when - now, _LONGEST_WAIT))
                    continue
                heapq.heappop(heap)
                if alarm._entry != (when, number):
                    continue  # stale: the alarm has an earlier entry of its own
                alarm._entry = None
                deadline = alarm._deadline
                if deadline is None:
                    continue  # rung, or removed
                if now >= deadline:
                    alarm._deadline = None
                    alarm._set_off()
                else:  # armed again since, for later: its entry goes back, for then
                    self.add(deadline, alarm)


_clock = _Clock()


def _after_fork() -> None:
    """A forked child has no alarm thread (nor, perhaps, a free lock): a clock of its own,
    started when its first alarm is armed, or its scripts' deadlines would never ring."""
    global _clock
    _clock = _Clock()


os.register_at_fork(after_in_child=_after_fork)
