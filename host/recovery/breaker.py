"""``CircuitBreaker``: stop calling a service that keeps failing, and find out when it is back.

The policy (:class:`CircuitBreaker`, a pydantic model: a ``breaker = {...}`` table of a
config file) says when a tool's breaker opens and closes; the state lives in a
:class:`Breaker`, one per tool name, held by the :class:`Breakers` of a ``Host`` (or a
``Coordinator``) and so shared by every run and task it makes::

    closed ──(failure_threshold consecutive failures, or failure_ratio of the calls
              of the last `window` seconds, at least minimum_calls of them)──> open
    open ──(recovery_timeout seconds later, at the next call)──> half_open
    half_open: at most half_open_calls probes in flight, every other caller refused at
               once; success_threshold successful probes ──> closed; a failed probe
               ──> open again (for a fresh recovery_timeout)

``window`` is seconds (not calls): the ratio is over the calls that *ended* in the last
``window`` seconds, counted in 20 buckets (so the oldest twentieth of the window may
already be forgotten); the memory it takes does not grow with the call rate.
``half_open_calls`` bounds the probes *in flight*: when a probe ends and the breaker is
still half-open (``success_threshold`` not reached yet), the next caller is a probe.

Only the tool's own failures count (:func:`counts_against`): ``tool/execution_failed``
(the tool raised), ``tool/timeout``, provider and network unavailability and timeouts, a
tools file's script error. A caller's mistake (``tool/invalid_parameters``,
``tool/not_found``), a refusal (``runtime/circuit_breaker_open`` of a breaker further in),
a cancellation or the run's own stop request, the run's time limit and a deadline set by
an outer layer (a total timeout: the caller's budget ran out, not the tool) count as
neither failure nor success: the consecutive count is left as it is and a probe that ends
so gives its place back without deciding.

A refused call raises ``runtime/circuit_breaker_open`` (``service``: the tool;
``opened_duration``: seconds since the breaker left closed) without calling the tool. It
is retryable with ``retry_after`` = the seconds left until half-open; while half-open, the
seconds the probe in flight has left before its deadline (at most ``recovery_timeout``).
A breaker forced open (:meth:`Breakers.force_open` without a duration) refuses as not
retryable until it is reset.

The state is guarded by one lock per breaker, held only while a call is admitted or its
outcome recorded, **never while the protected call runs**; a call through a closed breaker
is admitted without taking it. A call admitted before a transition (a slow call still
running when the breaker opened) is not counted after it: each state change starts a new
generation and an outcome is recorded only in the generation that admitted the call.

Wiring (what a host does)::

    host.breakers = Breakers()                        # one per Host / Coordinator
    layer = host.breakers.layer_for("search", CircuitBreaker(failure_threshold=3))
    # `layer` goes into the tool's pipeline between retry and the attempt timeout; it is a
    # host.calls layer: layer(call, next), layer.applies(tool) (only the tool "search"),
    # layer.wrap(next)
    host.breakers.state("search")       # "closed" | "open" | "half_open"
    host.breakers.snapshot()            # {"search": {"state": ..., counts...}}
    host.breakers.reset("search"); host.breakers.force_open("search")

Active health check: with ``health_check = "tool_name"`` (a Python tool of the host), while
the breaker is open a daemon thread calls that tool every ``health_check_interval`` seconds
with no parameters (``{}``), outside any run, within the tool's own timeout (else the
interval); the first call that returns without raising closes the breaker (announced as
any change). The thread holds the breaker only by a weak reference: it ends when the
breaker closes (at once) or when the host that holds it is collected (within an interval). A
check still running when the next is due makes that one skip: at most one check in flight
per breaker, a check that never returns costs one thread. A breaker forced open without a
duration is not closed by its health check (only :meth:`Breakers.reset` closes it).
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from bridge import SpellError
from bridge.hierarchy import RuntimeCircuitBreakerOpen
from host.calls import DeadlineReached, as_spell_error, ends_the_run
from host.recovery.model import Policy

if TYPE_CHECKING:
    from host.calls import Invocable, Next, ToolCall

State = Literal["closed", "open", "half_open"]
CLOSED: State = "closed"
OPEN: State = "open"
HALF_OPEN: State = "half_open"

MAX_SECONDS = 1e9  # as host.host.MAX_TIMEOUT: finite for every wait
MAX_COUNT = 1_000_000

# The failures that are the tool's (or the service behind it) own: see counts_against.
TOOL_FAULTS = frozenset({
    "tool/execution_failed", "tool/timeout", "tool/dependency_error",
    "provider/unavailable", "provider/timeout",
    "network/timeout", "network/connection", "network/dns_resolution",
    "storage/unavailable",
    "script/lua", "script/javascript", "script/runtime_error",  # a tools file's own error
})


def counts_against(err: SpellError) -> bool:
    """Whether ``err``, out of a tool call, is a failure of the tool (its breaker counts it).

    The codes of :data:`TOOL_FAULTS`, an HTTP status of 500 and above, and a tools file
    running out of memory or stack; not the run's time limit (``script/resource_exhaustion``
    of ``time``), a rate limit (the service is answering: ``Retry`` honours its
    ``retry_after``), a caller's mistake, a refusal or a cancellation.
    """
    code = err.code
    if code in TOOL_FAULTS:
        return True
    if code == "network/http_status":
        return int(err.fields.get("status", 0)) >= 500
    if code == "script/resource_exhaustion":
        return err.fields.get("resource_type") != "time"
    return False


class CircuitBreaker(Policy):
    """When a tool's breaker opens and closes (see the module docstring).

    ``failure_threshold`` consecutive failures open it (None: only the ratio does);
    ``failure_ratio`` (None: off), ``window`` (seconds) and ``minimum_calls`` open it on
    the share of failed calls; ``recovery_timeout`` seconds later it is half-open and
    admits ``half_open_calls`` probes at a time; ``success_threshold`` successful probes
    close it. While it is open, ``health_check`` (a Python tool's name) is called every
    ``health_check_interval`` seconds, and its first success closes it.
    """

    policy_name: ClassVar[str] = "breaker"

    failure_threshold: int | None = Field(5, ge=1, le=MAX_COUNT)
    recovery_timeout: float = Field(30.0, gt=0, le=MAX_SECONDS, allow_inf_nan=False)
    half_open_calls: int = Field(1, ge=1, le=MAX_COUNT)
    success_threshold: int = Field(1, ge=1, le=MAX_COUNT)
    failure_ratio: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    window: float = Field(60.0, gt=0, le=MAX_SECONDS, allow_inf_nan=False)
    minimum_calls: int = Field(10, ge=1, le=MAX_COUNT)
    health_check: str | None = Field(None, min_length=1)
    health_check_interval: float = Field(5.0, gt=0, le=MAX_SECONDS, allow_inf_nan=False)

    @model_validator(mode="after")
    def _opens_somehow(self) -> CircuitBreaker:
        if self.failure_threshold is None and self.failure_ratio is None:
            raise ValueError("a breaker with neither failure_threshold nor failure_ratio "
                             "would never open")
        return self


class _Window:
    """Calls and failures of the last ``seconds``, in :attr:`BUCKETS` buckets of time."""

    BUCKETS = 20

    def __init__(self, seconds: float) -> None:
        self.width = seconds / self.BUCKETS
        self.buckets: deque[list[int]] = deque()  # [bucket index, calls, failures]
        self.calls = 0
        self.failures = 0

    def _forget(self, index: int) -> None:
        buckets = self.buckets
        oldest = index - self.BUCKETS + 1
        while buckets and buckets[0][0] < oldest:
            _, calls, failures = buckets.popleft()
            self.calls -= calls
            self.failures -= failures

    def record(self, now: float, failed: bool) -> None:
        index = int(now / self.width)
        self._forget(index)
        buckets = self.buckets
        if buckets and buckets[-1][0] == index:
            last = buckets[-1]
            last[1] += 1
            last[2] += failed
        else:
            buckets.append([index, 1, int(failed)])
        self.calls += 1
        self.failures += failed

    def counts(self, now: float) -> tuple[int, int]:
        """(calls, failures) of the window ending ``now``."""
        self._forget(int(now / self.width))
        return self.calls, self.failures

    def clear(self) -> None:
        self.buckets.clear()
        self.calls = self.failures = 0


# A permit: (generation, is_probe). The outcome of the call it admitted is recorded only
# if the breaker is still in that generation.
Permit = tuple[int, bool]
# What a breaker is doing: (state, generation, open until). One tuple, replaced whole
# under the lock, so that a reader without the lock sees a consistent phase.
_Phase = tuple[State, int, float]

Listener = Callable[[str, State, State], None]  # (tool name, old state, new state)
MAX_LISTENER_ERRORS = 100  # the newest errors listeners raised, kept to be looked at


def _notify(fn: Listener, name: str, old: State, new: State,
            errors: deque[SpellError]) -> None:
    """Call listener ``fn``; an error it raises is kept in ``errors``, never raised: a
    listener's bug must not replace the outcome of the call that changed the state, nor
    end the health check thread that closed the breaker."""
    try:
        fn(name, old, new)
    except Exception as exc:
        errors.append(SpellError.wrap(exc))


class Breaker:
    """The state of one tool's circuit breaker (see the module docstring).

    :meth:`admit` before the call (raises the refusal), :meth:`release` after it with
    its outcome: True (success), False (the tool's failure), None (neither).
    """

    def __init__(self, name: str, policy: CircuitBreaker, *,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Listener | None = None,
                 health: HealthCheck | None = None,
                 health_timeout: float | None = None) -> None:
        self.name = name
        self.policy = policy
        self.clock = clock
        self.on_change = on_change
        # what on_change raised (kept, never raised into the breaker's caller)
        self.listener_errors: deque[SpellError] = deque(maxlen=MAX_LISTENER_ERRORS)
        # the active health check (policy.health_check's tool, callable with no arguments)
        self.health = health
        self.health_timeout = health_timeout or policy.health_check_interval
        self._checker: threading.Thread | None = None  # its thread, while there is one
        self._check_call: threading.Thread | None = None  # the last check's call
        self._checks_wake = threading.Event()  # ends the checker's wait at once
        weakref.finalize(self, self._checks_wake.set)  # the breaker is gone: it ends too
        self._lock = threading.Lock()
        self._phase: _Phase = (CLOSED, 0, math.inf)
        self._fast: Permit | None = (0, False)  # the permit while closed, else None
        self._window = _Window(policy.window) if policy.failure_ratio is not None else None
        self._consecutive = 0  # failures in a row while closed
        self._open_since = 0.0  # when it left closed
        self._forced = False  # held open until reset
        self._probes = 0  # probes in flight while half-open
        self._probe_deadlines: list[float] = []  # their calls' deadlines
        self._probe_successes = 0
        self._opened = 0  # times it opened
        self._refused = 0
        # successes are counted without the lock, to keep the closed path lock-free: two
        # threads ending at the same instant may count one (a statistic, never a decision)
        self._successes = 0
        self._failures = 0

    @property
    def state(self) -> State:
        """``closed``, ``open`` or ``half_open`` (open past its recovery_timeout reads
        ``half_open``: the next call is a probe)."""
        state, _, until = self._phase
        if state == OPEN and not self._forced and self.clock() >= until:
            return HALF_OPEN
        return state

    # -- a call --------------------------------------------------------------------------

    def admit(self, deadline: float = math.inf) -> Permit:
        """Let a call through, or raise ``runtime/circuit_breaker_open``.

        ``deadline`` (the call's, ``time.monotonic`` based) tells refused callers how long
        a probe may still take.
        """
        fast = self._fast
        if fast is not None:  # closed: no lock
            return fast
        return self._admit_slowly(deadline)

    def _admit_slowly(self, deadline: float) -> Permit:
        now = self.clock()
        change = refused = None
        with self._lock:
            state, generation, until = self._phase
            if state == CLOSED:
                return generation, False
            if state == OPEN and (self._forced or now < until):
                self._refused += 1
                refused = (now - self._open_since, None if self._forced else until - now)
            else:
                if state == OPEN:  # recovery_timeout is over: try the service again
                    change = (OPEN, HALF_OPEN)
                    generation = self._enter(HALF_OPEN, math.inf)
                if self._probes < self.policy.half_open_calls:
                    self._probes += 1
                    self._probe_deadlines.append(deadline)
                else:
                    self._refused += 1
                    left = min(self._probe_deadlines, default=now) - now
                    refused = (now - self._open_since,
                               max(0.0, min(left, self.policy.recovery_timeout)))
        if change is not None:
            self._announce(*change)
        if refused is not None:  # the error is made outside the lock
            opened_for, retry_after = refused
            raise RuntimeCircuitBreakerOpen(
                service=self.name, opened_duration=round(opened_for, 3),
                retryable=retry_after is not None, retry_after=retry_after)
        return generation, True

    def release(self, permit: Permit, outcome: bool | None) -> None:
        """Record how the call ``permit`` admitted ended: True succeeded, False failed
        (the tool's fault), None neither (see :func:`counts_against`)."""
        generation, probe = permit
        if not probe:
            if outcome is None:
                return
            if outcome is True:
                self._successes += 1
                if not self._consecutive and self._window is None:
                    return  # nothing to reset: no lock
        now = self.clock()
        change = None
        with self._lock:
            if outcome is False:
                self._failures += 1
            elif outcome and probe:
                self._successes += 1
            if generation != self._phase[1]:
                return  # admitted before the last change of state: no say in this one
            if probe:
                change = self._probe_ended(outcome, now)
            elif outcome:
                self._consecutive = 0
                if self._window is not None:
                    self._window.record(now, False)
            else:
                change = self._failed_while_closed(now)
        if change is not None:
            self._announce(*change)

    def _failed_while_closed(self, now: float) -> tuple[State, State] | None:
        policy = self.policy
        self._consecutive += 1
        trips = policy.failure_threshold is not None and \
            self._consecutive >= policy.failure_threshold
        window = self._window
        if window is not None:
            window.record(now, True)
            calls, failures = window.counts(now)
            trips = trips or (calls >= policy.minimum_calls and
                              failures >= policy.failure_ratio * calls)  # type: ignore[operator]
        if not trips:
            return None
        self._open_since = now
        self._open(now)
        return CLOSED, OPEN

    def _probe_ended(self, outcome: bool | None, now: float) -> tuple[State, State] | None:
        self._probes -= 1
        if self._probe_deadlines:  # which probe ended does not matter: a bound, not a match
            self._probe_deadlines.remove(max(self._probe_deadlines))
        if outcome is None:
            return None  # its place goes to the next caller
        if outcome is False:
            self._open(now)
            return HALF_OPEN, OPEN
        self._probe_successes += 1
        if self._probe_successes < self.policy.success_threshold:
            return None
        self._close()
        return HALF_OPEN, CLOSED

    # -- transitions (under the lock) ----------------------------------------------------

    def _enter(self, state: State, until: float) -> int:
        generation = self._phase[1] + 1
        self._phase = (state, generation, until)
        self._fast = (generation, False) if state == CLOSED else None
        self._probes = 0
        self._probe_deadlines.clear()
        self._probe_successes = 0
        return generation

    def _open(self, now: float) -> None:
        self._opened += 1
        self._enter(OPEN, now + self.policy.recovery_timeout)

    def _close(self) -> None:
        self._forced = False
        self._consecutive = 0
        if self._window is not None:
            self._window.clear()
        self._enter(CLOSED, math.inf)

    def _announce(self, old: State, new: State) -> None:
        if new == OPEN:
            self._start_health_checks()
        elif new == CLOSED:
            self._checks_wake.set()
        if self.on_change is not None:
            _notify(self.on_change, self.name, old, new, self.listener_errors)

    # -- the active health check ---------------------------------------------------------

    def _start_health_checks(self) -> None:
        """Start the checker thread, unless there is no check or it runs already."""
        if self.health is None or self.policy.health_check is None:
            return
        with self._lock:
            if self._checker is not None:
                return
            thread = self._checker = threading.Thread(
                target=_check_while_open,
                args=(weakref.ref(self), self._checks_wake, self.policy.health_check_interval),
                name=f"polyspell health check {self.name}", daemon=True)
        thread.start()

    def _healthy(self, generation: int) -> None:
        """The health check succeeded in ``generation``: close, if nothing changed since."""
        with self._lock:
            state, now_generation, _ = self._phase
            if state != OPEN or now_generation != generation or self._forced:
                return
            self._close()
        self._announce(OPEN, CLOSED)

    # -- by hand -------------------------------------------------------------------------

    def reset(self) -> None:
        """Close the breaker and forget its counts of failures (not its totals)."""
        with self._lock:
            old = self._phase[0]
            self._close()
        if old != CLOSED:
            self._announce(old, CLOSED)

    def force_open(self, seconds: float | None = None) -> None:
        """Open the breaker now: for ``seconds`` (then half-open as usual), or, with None,
        until :meth:`reset` (refusals are then not retryable)."""
        if seconds is not None and not (0 < seconds <= MAX_SECONDS):
            raise ValueError(f"seconds must be in (0, {MAX_SECONDS:g}], not {seconds!r}")
        now = self.clock()
        with self._lock:
            old = self._phase[0]
            if old == CLOSED:
                self._open_since = now
            self._opened += 1
            self._enter(OPEN, math.inf if seconds is None else now + seconds)
            self._forced = seconds is None
        if old != OPEN:
            self._announce(old, OPEN)

    def snapshot(self) -> dict[str, Any]:
        """The breaker's state and counts, as JSON-like data."""
        now = self.clock()
        with self._lock:
            state, _, until = self._phase
            window = self._window.counts(now) if self._window is not None else None
            return {
                "state": self.state,
                "forced": self._forced,
                "consecutive_failures": self._consecutive,
                "window_calls": None if window is None else window[0],
                "window_failures": None if window is None else window[1],
                "open_for": None if state == CLOSED else round(now - self._open_since, 6),
                "half_open_in": (round(until - now, 6) if state == OPEN and not self._forced
                                 and until > now else None),
                "probes_in_flight": self._probes,
                "probe_successes": self._probe_successes,
                "times_opened": self._opened,
                "refused": self._refused,
                "successes": self._successes,
                "failures": self._failures,
            }


# -- the active health check ----------------------------------------------------------------

HealthCheck = Callable[[], Any]  # the check: returns (healthy) or raises (not yet)


def _check_while_open(ref: weakref.ref[Breaker], wake: threading.Event,
                      interval: float) -> None:
    """The checker thread of a breaker (see the module docstring): it holds the breaker
    only while it looks at it, so that a host dropped takes its breakers along. However
    it ends, the breaker no longer counts it as its checker (else no check would start
    when it opens again)."""
    try:
        _checks(ref, wake, interval)
    finally:
        breaker = ref()
        if breaker is not None:
            with breaker._lock:
                if breaker._checker is threading.current_thread():
                    breaker._checker = None


def _checks(ref: weakref.ref[Breaker], wake: threading.Event, interval: float) -> None:
    while True:
        wake.wait(interval)
        breaker = ref()
        if breaker is None:
            return
        with breaker._lock:
            state, generation, _ = breaker._phase
            if state == CLOSED:
                breaker._checker = None  # under the lock: a reopening starts a new one
                return
            wake.clear()
            due = state == OPEN and not breaker._forced and breaker.health is not None
            # one check in flight per breaker, whichever checker thread started it: a
            # check that hangs is not joined by another at each reopening
            pending = breaker._check_call
            if due and (pending is None or not pending.is_alive()):
                done = threading.Event()
                healthy: list[bool] = []
                pending = breaker._check_call = threading.Thread(
                    target=_run_check, args=(breaker.health, healthy, done),
                    name="polyspell health check call", daemon=True)
                timeout = breaker.health_timeout
            else:
                pending = None
        del breaker  # not held while the check runs or while waiting
        if pending is None:
            continue
        pending.start()
        if done.wait(timeout) and healthy:
            breaker = ref()
            if breaker is None:
                return
            breaker._healthy(generation)
            del breaker


def _run_check(check: HealthCheck, healthy: list[bool], done: threading.Event) -> None:
    try:
        check()
        healthy.append(True)
    except BaseException:  # any failure: not healthy yet
        pass
    finally:
        done.set()


# -- the layer ------------------------------------------------------------------------------


def outcome_of(call: ToolCall, exc: BaseException) -> bool | None:
    """False when ``exc`` out of ``call`` is the tool's failure, None when it is not."""
    if isinstance(exc, SpellError):
        if exc is call.run.control.reason:  # the run was stopped (a cancellation...)
            return None
        return False if counts_against(exc) else None
    if isinstance(exc, DeadlineReached) or ends_the_run(exc):
        return None  # an outer layer's budget, or the run ending
    # a tool's own exception: the unified error the boundary will make of it
    return False if counts_against(as_spell_error(call, exc)) else None


class BreakerLayer:
    """The layer of one tool's breaker in its pipeline (see :mod:`host.calls`).

    A refusal is recorded in the run's recovery history (``run.recovery``:
    ``breaker_refused``, with the refusal's code).
    """

    def __init__(self, breaker: Breaker) -> None:
        self.breaker = breaker

    def applies(self, tool: Invocable | None) -> bool:
        """Only in the path of the breaker's own tool."""
        return tool is not None and tool.name == self.breaker.name

    def __call__(self, call: ToolCall, next: Next) -> Any:
        return self.wrap(next)(call)

    def wrap(self, next: Next) -> Next:
        """``next`` behind the breaker."""
        admit = self.breaker.admit
        release = self.breaker.release

        def through_breaker(call: ToolCall) -> Any:
            try:
                permit = admit(call.deadline)
            except RuntimeCircuitBreakerOpen as refused:
                _record_refusal(call, refused)
                raise
            try:
                result = next(call)
            except BaseException as exc:
                release(permit, outcome_of(call, exc))
                raise
            release(permit, True)
            return result

        return through_breaker


def _record_refusal(call: ToolCall, refused: SpellError) -> None:
    call.run.record_recovery("breaker_refused", call.name, 1, refused)


class Breakers:
    """The circuit breakers of one host, by tool name, shared by all its runs and tasks.

    ``clock`` (``time.monotonic`` by default) is every breaker's; ``on_change(name, old,
    new)`` is called on every change of state (outside the breaker's lock), e.g. to
    announce it as an event.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 on_change: Listener | None = None) -> None:
        self.clock = clock
        self.on_change = on_change
        self._listeners: list[Listener] = []  # add_listener's, after on_change
        # the newest errors the listeners raised (kept, never raised into a call)
        self.listener_errors: deque[SpellError] = deque(maxlen=MAX_LISTENER_ERRORS)
        self._breakers: dict[str, Breaker] = {}
        self._lock = threading.Lock()

    def add_listener(self, fn: Listener) -> None:
        """Also call ``fn(name, old, new)`` on every change of state of every breaker
        (outside the breaker's lock; e.g. the host's degradation levels)."""
        self._listeners.append(fn)

    def _announce(self, name: str, old: State, new: State) -> None:
        errors = self.listener_errors
        if self.on_change is not None:
            _notify(self.on_change, name, old, new, errors)
        for fn in list(self._listeners):  # one listener's bug does not silence the next
            _notify(fn, name, old, new, errors)

    def breaker(self, name: str, policy: CircuitBreaker, *,
                health: HealthCheck | None = None,
                health_timeout: float | None = None) -> Breaker:
        """The breaker of tool ``name``, made with ``policy`` on first use.

        The same name always gives the same breaker; a different policy for it is
        refused (one tool, one breaker state, one policy). ``health`` is the call of the
        policy's ``health_check`` tool (``health_timeout``: its time limit), kept by the
        breaker the first time it is given.
        """
        with self._lock:
            found = self._breakers.get(name)
            if found is None:
                found = self._breakers[name] = Breaker(name, policy, clock=self.clock,
                                                       on_change=self._announce)
            elif found.policy != policy:
                raise ValueError(f"tool {name!r} already has a breaker with another policy")
            if found.health is None and health is not None:
                found.health_timeout = health_timeout or policy.health_check_interval
                found.health = health
            return found

    def layer_for(self, name: str, policy: CircuitBreaker, *,
                  health: HealthCheck | None = None,
                  health_timeout: float | None = None) -> BreakerLayer:
        """The layer that puts tool ``name``'s breaker in its pipeline."""
        return BreakerLayer(self.breaker(name, policy, health=health,
                                         health_timeout=health_timeout))

    def __getitem__(self, name: str) -> Breaker:
        return self._breakers[name]

    def __contains__(self, name: object) -> bool:
        return name in self._breakers

    def __iter__(self) -> Any:
        return iter(list(self._breakers))

    def state(self, name: str) -> State:
        """``closed``, ``open`` or ``half_open`` (KeyError: the tool has no breaker)."""
        return self._breakers[name].state

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every breaker's state and counts, by tool name (see :meth:`Breaker.snapshot`)."""
        return {name: breaker.snapshot() for name, breaker in list(self._breakers.items())}

    def reset(self, name: str) -> None:
        """Close tool ``name``'s breaker and forget its failures."""
        self._breakers[name].reset()

    def force_open(self, name: str, seconds: float | None = None) -> None:
        """Open tool ``name``'s breaker: for ``seconds``, or until :meth:`reset`."""
        self._breakers[name].force_open(seconds)
