"""Hooks and the one dispatcher that runs them.

``@observer(point)`` and ``@controller(point, priority=...)`` make a :class:`Hook` of a
plain or async function taking one context. A host's :class:`Dispatcher` runs them:

- **Observers** are isolated: the run only queues their events, and they see them in
  order on the host's observer thread (:mod:`host.hooks.delivery`) while the run goes on;
  the run waits for them at its end. One that raises, runs past its time budget (default
  :data:`OBSERVER_TIMEOUT`, 100 ms) or is not a hook at all changes nothing of the run.
  Its failure (``hook/execution_failed``, ``hook/timeout``) is recorded in the run's hook
  path and logged on the ``polyspell`` logger; after :data:`SWITCH_OFF_AFTER` failures in
  a row it is switched off for the host's life, with a warning. One that never returns is
  abandoned at its budget (Python cannot stop a thread) and the others go on.
- **Controllers** of a point run one after the other, the highest ``priority`` first
  (equal priorities: in registration order), until one answers something other than
  ``Proceed``/``Continue``: that answer decides, and the controllers after it do not
  run. ``Proceed(params)`` hands the changed parameters to the next controllers and to
  the tool. A controller that raises, runs past its budget (default
  :data:`CONTROLLER_TIMEOUT`) or answers what its point does not take fails the
  operation with ``hook/execution_failed``, ``hook/timeout`` or ``hook/invalid_result``
  (naming the hook and what it returned): a decision that could not be made is an error,
  never a silent default.
- **Listeners** (the coordinator's ``on_task_*``/``on_cancel*`` functions, made
  by :meth:`host.Coordinator.on_task_started` and the like) are the third kind: kept in
  their point's :attr:`Dispatcher.listeners`, they run only where a point is fired
  through :meth:`Dispatcher.notify` (the coordinator's task and cancellation points),
  awaited in order on the caller's event loop, with no time budget (a cleanup may take
  long) and never switched off; one that raises hands its error to the caller's sink
  (a task's ``callback_errors``) and the others still run.

Script-side hooks (``hooks.before_tool_call(fn)`` in Lua, ``hooks.beforeToolCall(fn)`` in
JavaScript...) chain by the same rule, in registration order, inside the script's engine
(see :mod:`host.hooks.points`).
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from bridge import ConfigurationError, HookError, SpellError
from bridge.errors import describe_exception
from host.hooks.actions import AFTER, BEFORE, NAMES, Continue, Proceed, Recover, Rethrow
from host.hooks.delivery import Delivery, given
from host.hooks.points import (
    CONTROLLER_POINTS,
    FAILURE_POINTS,
    LISTENER_POINTS,
    OBSERVER_POINTS,
    POINTS,
)

logger = logging.getLogger("polyspell")

OBSERVER_TIMEOUT = 0.1  # seconds an observer may take
CONTROLLER_TIMEOUT = 1.0  # seconds a controller may take to decide
SWITCH_OFF_AFTER = 3  # an observer failing this many times in a row is switched off
MAX_PATH = 100  # entries of one hook path (a run's own: the failures of frequent points)

# the actions each controller point takes
ACCEPTS: dict[str, tuple[type, ...]] = {
    "before_tool_call": BEFORE, "after_tool_call": AFTER,
    "after_script_error": (Continue, Recover, Rethrow), "after_task_failure": AFTER}


class Hook:
    """A function registered on a hook point (made by :func:`observer`/:func:`controller`).

    Calling it calls the function, so a decorated function stays usable as before.
    """

    def __init__(self, fn: Callable[[Any], Any], point: str, kind: str, *,
                 priority: int = 0, timeout: float | None = None,
                 name: str | None = None, failures_only: bool = False) -> None:
        if not callable(fn):
            raise ConfigurationError.InvalidValue(
                key="hooks", value=repr(fn)[:200],
                reason=f"a hook is a function taking one context, not {type(fn).__name__}")
        _check_point(point, kind, fn)
        if kind == "listener":  # no budget: awaited on the loop, as long as it takes
            timeout = math.inf
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ConfigurationError.InvalidValue(
                key=f"hooks.{point}.priority", value=repr(priority)[:200],
                reason="a controller's priority is an integer")
        budget = (OBSERVER_TIMEOUT if kind == "observer" else CONTROLLER_TIMEOUT) \
            if timeout is None else timeout
        if kind != "listener" and (isinstance(budget, bool)
                                   or not isinstance(budget, (int, float))
                                   or not 0 < budget <= 3600):
            raise ConfigurationError.InvalidValue(
                key=f"hooks.{point}.timeout", value=repr(timeout)[:200],
                reason="a hook's timeout is a number of seconds, more than 0, at most 3600")
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]  # first: it copies __dict__
        self.fn = fn
        self.point = point
        self.kind = kind
        self.priority = priority
        self.timeout = float(budget)
        self.name = name or getattr(fn, "__qualname__", None) or repr(fn)[:80]
        self.is_async = inspect.iscoroutinefunction(fn) or getattr(fn, "is_async", False) is True
        if failures_only and (kind != "observer" or point not in FAILURE_POINTS):
            raise ConfigurationError.InvalidValue(
                key=f"hooks.{point}.failures_only", value="True",
                reason=f"only observers of {', '.join(FAILURE_POINTS)} take failures_only")
        self.failures_only = bool(failures_only)
        # False: an internal observer (the monitor's), left out of an error's hook path
        # when it did fine (a failure of it is still there)
        self.traced = True

    def __call__(self, context: Any) -> Any:
        return self.fn(context)

    def __repr__(self) -> str:
        return f"<{self.kind} {self.name} on {self.point}>"


def _check_point(point: Any, kind: str, fn: Any) -> None:
    if kind == "handler":  # Host(on_tool_error=...): not a point of its own
        return
    if kind == "listener":
        if point in LISTENER_POINTS:
            return
        raise ConfigurationError.InvalidValue(
            key="hooks", value=repr(point)[:200],
            reason=f"a listener can be registered on {', '.join(LISTENER_POINTS)}, "
                   f"not {point!r}")
    where = getattr(fn, "__qualname__", repr(fn)[:80])
    if point in (CONTROLLER_POINTS if kind == "controller" else OBSERVER_POINTS):
        return
    if kind == "observer" and point in CONTROLLER_POINTS:
        reason = (f"{point!r} is a controller point: register {where} with "
                  f"@hooks.controller({point!r}) (observers: {', '.join(OBSERVER_POINTS)})")
    elif kind == "controller" and point in OBSERVER_POINTS:
        reason = (f"{point!r} takes observers only: a controller ({where}) can be registered "
                  f"on {', '.join(CONTROLLER_POINTS)}")
    else:
        reason = f"unknown hook point {point!r} for {where} (the points: {', '.join(POINTS)})"
    raise ConfigurationError.InvalidValue(key="hooks", value=repr(point)[:200], reason=reason)


def observer(point: str, *, timeout: float | None = None, name: str | None = None,
             failures_only: bool = False) -> Callable[[Callable[[Any], Any]], Hook]:
    """Register the decorated function (sync or async, one context argument) as an
    observer of ``point``; ``timeout`` its budget in seconds (default 0.1).
    ``failures_only`` (at ``tool_call_finished``, ``run_finished``, ``task_finished``): it
    sees only what failed, or what recovery or a controller answered for (a retry, a
    fallback, a degraded answer, a ``Recover``); the calls that simply succeed cost the
    run nothing for it."""
    _check_point(point, "observer", f"an observer of {point!r}")
    return lambda fn: Hook(fn, point, "observer", timeout=timeout, name=name,
                           failures_only=failures_only)


def controller(point: str, *, priority: int = 0, timeout: float | None = None,
               name: str | None = None) -> Callable[[Callable[[Any], Any]], Hook]:
    """Register the decorated function (sync or async, one context argument) as a
    controller of ``point``: it returns an action (:mod:`host.hooks.actions`); higher
    ``priority`` runs first; ``timeout`` its budget in seconds (default 1)."""
    _check_point(point, "controller", f"a controller of {point!r}")
    return lambda fn: Hook(fn, point, "controller", priority=priority, timeout=timeout,
                           name=name)


def hook_items(hooks: Any) -> list[Hook]:
    """``Host(hooks=...)`` as a list of hooks: refused, naming the item, if not. Presets
    (and lists of hooks) among the items are flattened by :func:`host.hooks.presets.merge`
    (the same hook or preset given twice is kept once)."""
    if isinstance(hooks, Hook):
        return [hooks]
    try:
        items = list(hooks)
    except TypeError:
        raise ConfigurationError.InvalidValue(
            key="hooks", value=repr(hooks)[:200],
            reason=f"hooks is a list of hooks, not {type(hooks).__name__}") from None
    if any(isinstance(item, (list, tuple)) for item in items):  # presets among them
        from host.hooks.presets import merge

        return list(merge(*items))
    for index, item in enumerate(items):
        if not isinstance(item, Hook):
            raise ConfigurationError.InvalidValue(
                key=f"hooks[{index}]", value=repr(item)[:200],
                reason="not a hook: decorate the function with @hooks.observer(point) or "
                       "@hooks.controller(point)")
    return items


Record = dict[str, Any]  # one hook that ran: hook_name, hook_point, outcome, duration, error


class Dispatcher:
    """Runs a host's hooks: its one place for observers and controllers (see the module
    docstring). ``on_tool_error`` is the seed's error handler (see :mod:`host.hooks.layer`)."""

    def __init__(self, hooks: Iterable[Hook] = (),
                 on_tool_error: Callable[..., Any] | None = None) -> None:
        self.hooks = hook_items(hooks)
        self.by_point: dict[str, list[Hook]] = {}  # observers and controllers
        self.listeners: dict[str, list[Hook]] = {}  # beside them: observe() never runs these
        for hook in self.hooks:
            if hook.kind == "listener":
                self.listen(hook)
            else:
                self.by_point.setdefault(hook.point, []).append(hook)
        for point, registered in self.by_point.items():
            if point in CONTROLLER_POINTS:  # stable: equal priorities keep their order
                registered.sort(key=lambda h: -h.priority)
        self.on_tool_error = None if on_tool_error is None else _error_handler(on_tool_error)
        self._failures: dict[Hook, int] = {}  # failures in a row, per observer
        self._lock = threading.Lock()
        self._successes = self._points_told_of_successes()
        self._delivery = Delivery(self)

    def has(self, point: str) -> bool:
        """Whether any hook is registered on ``point`` (and still switched on)."""
        return bool(self.by_point.get(point))

    def wants_successes(self, point: str) -> bool:
        """Whether an observer of ``point`` is to see what succeeded (one without
        ``failures_only``)."""
        return point in self._successes

    def _points_told_of_successes(self) -> frozenset[str]:
        return frozenset(point for point, registered in self.by_point.items()
                         if any(not hook.failures_only for hook in registered))

    @property
    def tool_calls(self) -> bool:
        """Whether tool calls have anything to dispatch, or to count for ``run_finished``
        (else no layer is added)."""
        return self.on_tool_error is not None or any(self.by_point.get(p) for p in (
            "tool_call_started", "tool_call_finished", "before_tool_call", "after_tool_call",
            "run_finished"))

    # -- observers -------------------------------------------------------------------

    def observe(self, point: str, context: Any, records: list[Record] | None = None,
                token: Any = None, *, keep_ok: bool = True, failed: bool = True) -> None:
        """Hand ``context`` to the observers of ``point``, which see it on the host's
        observer thread, in order, while the run goes on (see :mod:`host.hooks.delivery`);
        nothing they do reaches the caller. Each one that ran is added to ``records`` (a
        hook path; with ``keep_ok`` false, only those that failed: points that fire
        often). ``token``: the event loop of async observers. ``failed`` false: what it
        tells succeeded (no ``failures_only`` observer sees it). Never waits."""
        self._delivery.put(point, given, (context,), records, token, keep_ok, failed)

    def observe_lazily(self, point: str, make: Callable[..., Any], args: tuple,
                       records: list[Record] | None = None, token: Any = None, *,
                       keep_ok: bool = True, failed: bool = True) -> None:
        """:meth:`observe` with the context ``make(*args)``, made on the observers' thread
        (points that fire often: their context costs the run nothing)."""
        self._delivery.put(point, make, args, records, token, keep_ok, failed)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait (off the event loop) until the observers have seen every event so far, or
        ``timeout`` seconds: whether they have (the rest they see later)."""
        return self._delivery.flush(timeout)

    def catch_up(self) -> bool:
        """:meth:`flush` at a run's (or a plan's) end: for at most
        :data:`host.hooks.delivery.FLUSH_GRACE` seconds."""
        from host.hooks import delivery

        return self._delivery.flush(delivery.FLUSH_GRACE)

    @staticmethod
    def run_observer(hook: Hook, context: Any, token: Any) -> Any:
        """``hook(context)`` on this thread, the observers' (see :func:`run_inline`)."""
        return run_inline(hook, context, token)

    def book(self, hook: Hook, failure: BaseException | None, elapsed: float,
             began: float, records: list[Record] | None, keep_ok: bool) -> None:
        """An observer ran for ``elapsed`` seconds and raised ``failure`` (or None):
        past its budget or raising, it failed (recorded, logged, counted); else its
        failures in a row start again."""
        if failure is None and elapsed > hook.timeout:
            failure = _PastBudget()
        if failure is not None:
            self._failed(hook, hook_failure(hook, failure, elapsed), records, began)
            return
        if self._failures.get(hook):
            self._failures[hook] = 0
        if keep_ok and records is not None and hook.traced:
            self._record(records, record(hook, "observed", began))

    @staticmethod
    def _record(records: list[Record], entry: Record) -> None:
        if len(records) < MAX_PATH:
            records.append(entry)

    def _failed(self, hook: Hook, error: SpellError, records: list[Record] | None,
                began: float) -> None:
        if records is not None:
            self._record(records, record(hook, "failed", began, error))
        logger.error("hook %s at %s failed: %s", hook.name, hook.point, error.message)
        with self._lock:
            failures = self._failures[hook] = self._failures.get(hook, 0) + 1
            if failures < SWITCH_OFF_AFTER:
                return
            registered = self.by_point.get(hook.point, [])
            if hook not in registered:
                return
            registered.remove(hook)
            self._successes = self._points_told_of_successes()
        logger.warning("hook %s at %s failed %d times in a row: switched off for this "
                       "host's life", hook.name, hook.point, failures)

    def circuit_changed(self, tool: str, old: str, new: str) -> None:
        """A breaker listener (``Breakers.add_listener``): ``circuit_changed`` observers."""
        from host.hooks.points import CircuitContext

        self.observe("circuit_changed", CircuitContext(tool, old, new), None)

    # -- listeners -------------------------------------------------------------------

    def listen(self, hook: Hook) -> Hook:
        """Add the listener ``hook`` to its point's listeners: the highest ``priority``
        first, equal priorities in registration order."""
        if hook.kind != "listener":
            raise ConfigurationError.InvalidValue(
                key="hooks", value=repr(hook)[:200], reason="not a listener")
        with self._lock:
            listeners = self.listeners.setdefault(hook.point, [])
            listeners.append(hook)
            listeners.sort(key=lambda h: -h.priority)
        return hook

    def fires(self, point: str) -> bool:
        """Whether :meth:`notify` has anything to run at ``point``."""
        return bool(self.listeners.get(point)) or self.has(point)

    async def notify(self, point: str, context: Any,
                     sink: Callable[[SpellError], Any]) -> None:
        """Fire ``point`` from async code: its listeners, awaited one after the other on
        this event loop (an error of one goes to ``sink`` as a SpellError, the next still
        runs), then hands it to its observers (:meth:`observe`, never waiting: this is
        the event loop)."""
        for hook in list(self.listeners.get(point, ())):
            try:
                outcome = hook.fn(context)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception as exc:  # a listener's bug never stops its caller
                sink(SpellError.wrap(exc))
        if self.has(point):
            import anyio.lowlevel

            self.observe(point, context, None, anyio.lowlevel.current_token(),
                         failed=getattr(context, "error", None) is not None)

    # -- controllers -----------------------------------------------------------------

    def decide(self, point: str, context: Any, records: list[Record] | None = None,
               token: Any = None, rebuild: Callable[[Any, Any], Any] | None = None
               ) -> tuple[Any, Hook | None]:
        """The action of the controllers of ``point`` on ``context`` (see the module
        docstring), and the controller that answered it: the first that is not
        ``Proceed``/``Continue``, else ``Proceed`` (with the last changed parameters, and
        the controller that changed them) or ``Continue``. ``rebuild(context, params)``
        makes the context the next controller sees after a ``Proceed(params)``. Raises
        the hook error of a controller that failed to decide."""
        accepts = ACCEPTS[point]
        changed, changer = None, None
        for hook in self.by_point.get(point, ()):
            action = self.ask(hook, context, accepts, records, token)
            if isinstance(action, Proceed):
                if action.params is not None:
                    changed, changer = action.params, hook
                    if rebuild is not None:
                        context = self._rebuilt(rebuild, context, changed, hook)
                continue
            if isinstance(action, Continue):
                continue
            return action, hook
        return (Proceed(changed), changer) if accepts is BEFORE else (Continue(), None)

    @staticmethod
    def _rebuilt(rebuild: Callable[[Any, Any], Any], context: Any, params: Any,
                 hook: Hook) -> Any:
        """The context after ``hook``'s ``Proceed(params)``; params that cannot even be
        copied (a mapping of the hook's whose ``items`` raises) are the hook's invalid
        result, not an error of the operation's."""
        try:
            return rebuild(context, params)
        except SpellError:  # the params' own failure (too large once copied)
            raise
        except Exception as exc:
            raise HookError.InvalidResult(
                hook_name=hook.name, hook_point=hook.point,
                reason=f"its Proceed's params cannot be read "
                       f"({describe_exception(exc, qualified=False)})") from exc

    def ask(self, hook: Hook, context: Any, accepts: tuple[type, ...],
            records: list[Record] | None, token: Any = None) -> Any:
        """One controller's action (None: the point's default), checked."""
        began = time.perf_counter()
        try:
            action = run_hook(hook, context, token)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise  # the user's Ctrl-C while the run waited (a hook's own is HookRaised)
            if isinstance(exc, HookRaised):
                exc = exc.raised
            error = hook_failure(hook, exc, time.perf_counter() - began)
            if records is not None:
                records.append(record(hook, "failed", began, error))
            raise error from (None if isinstance(exc, _PastBudget) else exc)
        if action is None:
            action = accepts[0]()
        if not isinstance(action, accepts):
            error = HookError.InvalidResult(
                hook_name=hook.name, hook_point=hook.point,
                reason=f"it returned {_shown(action)}; at {hook.point} a controller "
                       f"returns one of " + ", ".join(f"hooks.{a.__name__}" for a in accepts)
                       + " (or None)")
            if records is not None:
                records.append(record(hook, "invalid", began, error))
            raise error
        if records is not None:
            records.append(record(hook, NAMES[type(action)], began))
        return action


def _error_handler(fn: Callable[..., Any]) -> Hook:
    """``Host(on_tool_error=fn)`` as a hook taking ``(error, tool_name, error_type,
    params)`` as one tuple, with a controller's budget."""
    check = Hook(fn, "after_tool_call", "controller")  # refuses what is not callable
    if check.is_async:
        async def handler(args: tuple) -> Any:
            return await fn(*args)
    else:
        def handler(args: tuple) -> Any:
            return fn(*args)
    return Hook(handler, "on_tool_error", "handler", name=check.name)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def record(hook: Hook, outcome: str, began: float, error: SpellError | None = None
           ) -> Record:
    """One entry of a hook path (``context.execution_trace.hook_execution_path``)."""
    return {"hook_name": hook.name, "hook_point": hook.point, "outcome": outcome,
            "duration": round(time.perf_counter() - began, 6),
            "error": None if error is None else f"{error.code}: {error.message}"}


def hook_failure(hook: Hook, exc: BaseException, elapsed: float) -> SpellError:
    """The unified error of a hook that raised ``exc`` (or ran past its budget)."""
    if isinstance(exc, HookRaised):
        exc = exc.raised
    if isinstance(exc, _PastBudget):
        return HookError.Timeout(hook_name=hook.name, hook_point=hook.point,
                                 duration=round(hook.timeout, 6))
    return HookError.ExecutionFailed(hook_name=hook.name, hook_point=hook.point,
                                     reason=describe_exception(exc, qualified=False),
                                     cause=exc)


class _PastBudget(Exception):
    """A hook did not return within its time budget."""


class HookRaised(Exception):
    """A hook raised ``raised``, an exception that is not an :class:`Exception`
    (``KeyboardInterrupt``, ``SystemExit``...): a bug of the hook, on the thread that ran
    it, not the user's Ctrl-C, which reaches the run's own thread."""

    def __init__(self, raised: BaseException) -> None:
        super().__init__(raised)
        self.raised = raised


def _guarded(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception:
        raise
    except BaseException as exc:
        raise HookRaised(exc) from exc


def run_hook(hook: Hook, context: Any, token: Any = None) -> Any:
    """``hook(context)`` within its budget: a sync hook on a pooled daemon thread
    (abandoned past its budget), an async one on the host's event loop (``token``), or
    on a loop of its own on such a thread when there is none at hand. Raises what the
    hook raised, or :class:`_PastBudget`."""
    from host.calls import _WORKERS, DeadlineReached

    deadline = time.monotonic() + hook.timeout
    if hook.is_async:
        if token is not None:
            import anyio.from_thread

            return anyio.from_thread.run(_bounded, hook.fn, context, hook.timeout,
                                         token=token)
        fn, args = _own_loop, (hook.fn, context, hook.timeout)
    else:
        fn, args = hook.fn, (context,)
    try:
        return _WORKERS.run(_guarded, (fn, *args), {}, deadline, _NEVER_STOPPED)
    except DeadlineReached:
        raise _PastBudget() from None


def run_inline(hook: Hook, context: Any, token: Any = None) -> Any:
    """``hook(context)`` on this thread (an observer's, see :mod:`host.hooks.delivery`):
    an async hook on the event loop ``token`` (or a loop of its own), within its budget."""
    if not hook.is_async:
        return hook.fn(context)
    if token is not None:
        import anyio.from_thread

        return anyio.from_thread.run(_bounded, hook.fn, context, hook.timeout, token=token)
    return _own_loop(hook.fn, context, hook.timeout)


async def _bounded(fn: Callable[[Any], Any], context: Any, timeout: float) -> Any:
    import anyio

    with anyio.move_on_after(timeout):
        try:
            return await fn(context)
        except (KeyboardInterrupt, SystemExit) as exc:  # the event loop's own to stop on
            raise HookRaised(exc) from exc
    raise _PastBudget()


def _own_loop(fn: Callable[[Any], Any], context: Any, timeout: float) -> Any:
    import anyio

    return anyio.run(_bounded, fn, context, timeout)


def _never_stopped() -> Any:
    from host.control import RunControl

    return RunControl()  # nothing asks it to stop: a hook's wait ends at its budget only


_NEVER_STOPPED = _never_stopped()
