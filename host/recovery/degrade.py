"""``Degrade``: an optional tool that fails answers a degraded value; degradation levels.

**An optional tool** (``optional = true`` in its ``[tools.<name>]`` table, ``degraded =
<value>`` the value it then answers, ``null`` by default) never fails a call for a failure
of its own or of the service behind it: when the call fails after the tool's other
policies (its breaker refused it, its fallbacks all failed, its retries ran out, it simply
failed), the call answers ``degraded`` instead. The layer is the outermost of the tool's
policies (outside the fallback). What degrades (:func:`degradable`): the failures a
breaker counts (:func:`host.recovery.breaker.counts_against`: the tool raised, timed out,
its service is unavailable, a tools file's own error), any ``provider/*`` or
``network/*`` error (rate limits and authentication too), ``tool/resource_limit_exceeded``,
``runtime/circuit_breaker_open``, ``runtime/retries_exhausted``, and
``runtime/all_fallbacks_failed`` when the tool's own first error degrades. Never: a
cancellation or the run's own stop request, the run's time limit, the script's mistakes
(``tool/invalid_parameters``, ``tool/not_found``, ``bridge/*``: parameters that cannot
cross), ``configuration/*``, ``security/*``, ``runtime/internal_error``, a ``fail``
level's refusal (raised before the optional tool is considered).

Each degraded answer is recorded in the run's recovery history (``run.recovery``: action
``degraded``, the tool, the error's code); ``run.degraded`` lists the tools that answered
degraded in the run.

**Degradation levels** (``[degradation] levels = [...]``, ``Host(degradation=...)``): an
ordered list of levels, each ``{name, when_open, mode}``. The host is at the last level
whose ``when_open`` is at most the number of its circuit breakers that are not closed
(open or half-open); below the first level it runs normally. The level is entered and
left as breakers change state (the breakers' own announcements, so it follows
``Breakers.force_open``/``reset`` too), each change announced to the listeners of
``host.degradation.on_change(fn)`` and recorded in the recovery history of every run in
progress (action ``degradation``, with ``level`` and ``previous``). What a level's
``mode`` does to every tool call of the host's runs (each mode does what the weaker ones
do, and the levels' modes may not get weaker as ``when_open`` grows):

- ``cached``: a tool with a ``{cached = true}`` fallback option answers the cached good
  result for the same parameters (within the option's ``max_age``) without being called,
  recorded as a ``fallback``; without one it is called as usual;
- ``skip_optional``: also, an optional tool answers its ``degraded`` value without being
  called, recorded as ``degraded``;
- ``fail``: every call fails at once, optional tools too: the host has stopped calling
  tools. The error is ``runtime/circuit_breaker_open`` (the host's own circuit, opened by
  its tools' breakers): ``service`` the tool, not retryable, ``opened_duration`` the
  seconds since the level was entered, ``context.metadata["degradation"]`` the level and
  the open breakers (``{"level": "fail", "open_breakers": ["a", "b", "c"]}``).

``mode`` may be left out when ``name`` is one of the modes (``{name = "cached",
when_open = 1}``).
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bridge import SpellError
from host.calls import failure_to_recover
from host.history import RecoveryHistory
from host.recovery.breaker import (
    CLOSED,
    MAX_COUNT,
    MAX_LISTENER_ERRORS,
    State,
    counts_against,
)
from host.recovery.model import Policy

if TYPE_CHECKING:
    from host.calls import Next, ToolCall
    from host.recovery.breaker import Breakers
    from host.recovery.fallback import Cache, Fallback
    from host.runner import ScriptRun

Mode = Literal["cached", "skip_optional", "fail"]
MODES: tuple[Mode, ...] = ("cached", "skip_optional", "fail")  # weakest first

# Codes that degrade besides the breaker's (see the module docstring).
_ALSO_DEGRADE = frozenset({"tool/resource_limit_exceeded", "runtime/circuit_breaker_open",
                           "runtime/retries_exhausted"})


def degradable(call: ToolCall, err: SpellError) -> bool:
    """Whether ``err``, out of ``call``'s pipeline, lets an optional tool answer degraded."""
    if err is call.run.control.reason:  # the run is stopping (a cancellation, a time limit)
        return False
    if err.code == "runtime/all_fallbacks_failed":
        first = err.__cause__
        return not isinstance(first, SpellError) or degradable(call, first)
    return (counts_against(err) or err.category in ("provider", "network")
            or err.code in _ALSO_DEGRADE)


class DegradationLevel(BaseModel):
    """One level: its ``name``, the number of breakers not closed that enter it
    (``when_open``), and what it does (``mode``; the name when left out)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64)
    when_open: int = Field(ge=1, le=MAX_COUNT)
    mode: Mode

    @model_validator(mode="before")
    @classmethod
    def _mode_from_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "mode" not in data:
            if data.get("name") not in MODES:
                raise ValueError(f"a level needs a mode: one of {', '.join(MODES)} (it may "
                                 f"be left out when the level's name is one of them)")
            return {**data, "mode": data["name"]}
        return data


class Degradation(Policy):
    """The host's degradation levels (``[degradation] levels = [...]``), see the module
    docstring: ``when_open`` strictly increasing, names distinct, modes never weaker."""

    policy_name: ClassVar[str] = "degradation"

    levels: list[DegradationLevel] = Field(min_length=1, max_length=32)

    @field_validator("levels")
    @classmethod
    def _ordered(cls, levels: list[DegradationLevel]) -> list[DegradationLevel]:
        for before, after in itertools.pairwise(levels):
            if after.when_open <= before.when_open:
                raise ValueError(f"levels: when_open must grow from level to level "
                                 f"({before.name!r}: {before.when_open}, {after.name!r}: "
                                 f"{after.when_open})")
            if MODES.index(after.mode) < MODES.index(before.mode):
                raise ValueError(f"levels: a level's mode may not be weaker than the one "
                                 f"before it ({after.name!r} ({after.mode}) after "
                                 f"{before.name!r} ({before.mode}))")
        names = [level.name for level in levels]
        if len(set(names)) != len(names):
            raise ValueError("levels: every level needs a name of its own")
        return levels


Listener = Callable[[dict[str, Any]], Any]


class DegradationState:
    """Where a host stands among its degradation levels (``host.degradation``).

    It follows the host's breakers (:meth:`breaker_changed` is a listener of its
    :class:`~host.recovery.breaker.Breakers`). ``level`` is the current
    :class:`DegradationLevel` (None: normal); ``history`` the changes so far, as events
    ``{"level", "previous", "tool", "open", "at", "seq"}`` (a
    :class:`~host.history.RecoveryHistory`: bounded, ``history.dropped`` counts the
    changes left out); ``listener_errors`` the
    errors listeners raised (kept, never raised into the breaker's caller). Thread-safe:
    one lock guards the state, and no lock is held while listeners run (so two changes
    on two threads may reach listeners out of order: ``seq`` gives the true order).
    """

    def __init__(self, policy: Degradation | None = None) -> None:
        self.policy = policy
        self.level: DegradationLevel | None = None
        # bounded as a run's history is (host.history): a host whose breakers flap for
        # weeks keeps the first changes and the newest, and counts the ones dropped
        self.history = RecoveryHistory()
        self._changes = 0  # changes of level so far (an event's seq)
        # the newest errors listeners raised (bounded: a listener failing on every change
        # of a host that lives for weeks must not grow it forever)
        self.listener_errors: deque[SpellError] = deque(maxlen=MAX_LISTENER_ERRORS)
        self._open: set[str] = set()
        self._entered = time.monotonic()  # when the current level was entered
        self._listeners: list[Listener] = []
        self._runs: weakref.WeakSet[ScriptRun] = weakref.WeakSet()
        self._breakers: Breakers | None = None  # the breakers followed (follow)
        self._lock = threading.Lock()

    @property
    def open(self) -> list[str]:
        """The tools whose breakers are not closed, sorted."""
        with self._lock:
            return sorted(self._open)

    def on_change(self, fn: Listener) -> Listener:
        """Call ``fn(event)`` on every change of level (see :attr:`history` for the event)."""
        if not callable(fn):
            from bridge import ConfigurationError

            raise ConfigurationError.InvalidValue(key="degradation.on_change",
                                                  value=repr(fn)[:200],
                                                  reason="a listener must be callable")
        self._listeners.append(fn)
        return fn

    def follow(self, breakers: Breakers) -> None:
        """Follow ``breakers`` (a host's): count the ones not closed now, and recount at
        each of their changes of state."""
        with self._lock:
            self._breakers = breakers
        breakers.add_listener(self.breaker_changed)
        for name in breakers:
            state = breakers.state(name)
            if state != CLOSED:
                self.breaker_changed(name, CLOSED, state)

    def breaker_changed(self, name: str, old: State, new: State) -> None:
        """A breaker changed state: recount, and announce a change of level.

        The breaker's state is read now, under this lock, rather than taken from ``new``:
        breakers announce outside their locks, so two changes on two threads (an opening,
        then a probe or health check closing it) may arrive in either order, and the
        opening heard last would hold the host at a level (a ``fail`` one: refusing every
        call, so that no breaker could change again) while no breaker is open."""
        with self._lock:
            breakers = self._breakers
            if breakers is not None and name in breakers:
                new = breakers.state(name)
            if new == CLOSED:
                self._open.discard(name)
            else:
                self._open.add(name)
            level = self._level_for(len(self._open))
            previous = self.level
            if level == previous:
                return
            self.level = level
            self._entered = time.monotonic()
            event = {"level": None if level is None else level.name,
                     "previous": None if previous is None else previous.name,
                     "tool": name, "open": sorted(self._open),
                     "at": datetime.now(UTC).isoformat(), "seq": self._changes + 1}
            self._changes += 1
            self.history.add(event)
            runs = list(self._runs)
            listeners = list(self._listeners)
        for run in runs:
            run.record_recovery("degradation", name, 0, None, level=event["level"],
                                previous=event["previous"])
        for fn in listeners:
            try:
                fn(dict(event))
            except Exception as exc:  # a listener's bug never breaks the call that changed
                self.listener_errors.append(SpellError.wrap(exc))

    def refusal(self, tool: str) -> SpellError:
        """The error of a call refused at a ``fail`` level: ``runtime/circuit_breaker_open``
        (the host's own circuit, opened by its tools' breakers) for ``tool``, not retryable,
        ``opened_duration`` the seconds since the level was entered, and
        ``context.metadata["degradation"]``: the level and the open breakers."""
        from bridge.hierarchy import RuntimeCircuitBreakerOpen

        with self._lock:
            level = self.level
            entered = self._entered
            open_now = sorted(self._open)
        err = RuntimeCircuitBreakerOpen(
            service=tool, opened_duration=round(time.monotonic() - entered, 3),
            retryable=False)
        metadata = {**err.context.metadata, "degradation": {
            "level": None if level is None else level.name, "open_breakers": open_now}}
        err.context = err.context.model_copy(update={"metadata": metadata})
        return err

    def _level_for(self, open_count: int) -> DegradationLevel | None:
        current = None
        for level in self.policy.levels if self.policy is not None else []:
            if level.when_open <= open_count:
                current = level
        return current

    def running(self, run: ScriptRun) -> None:
        """``run`` is in progress: record the changes of level in its history."""
        with self._lock:
            self._runs.add(run)

    def ended(self, run: ScriptRun) -> None:
        """``run`` has ended."""
        with self._lock:
            self._runs.discard(run)


class DegradeLayer:
    """A tool's degradation: what the host's current level says, then, for an optional
    tool, its degraded value in place of a failure (see the module docstring)."""

    def __init__(self, optional: bool, value: Any, state: DegradationState | None,
                 fallback: Fallback | None, cache: Cache) -> None:
        self.optional = optional
        self.value = value
        self.state = state
        self.cached = next((option for option in fallback.options if option.cached), None) \
            if fallback is not None else None
        self.cache = cache

    def __call__(self, call: ToolCall, next: Next) -> Any:
        level = self.state.level if self.state is not None else None
        if level is not None:
            rank = MODES.index(level.mode)
            if level.mode == "fail":
                raise self.state.refusal(call.name)  # type: ignore[union-attr]
            if self.cached is not None:
                from host.recovery.fallback import _MISSING, cached_result

                kept = cached_result(self.cache, self.cached, call.params)
                if kept is not _MISSING:
                    call.run.record_recovery("fallback", call.name, 0, None, option="cached",
                                             level=level.name)
                    return kept
            if self.optional and rank >= MODES.index("skip_optional"):
                call.run.record_recovery("degraded", call.name, 0, None, level=level.name)
                return self.value
        if not self.optional:
            return next(call)
        try:
            return next(call)
        except BaseException as exc:
            err = failure_to_recover(call, exc)
            if not degradable(call, err):
                raise
        call.run.record_recovery("degraded", call.name, 1, err)
        return self.value
