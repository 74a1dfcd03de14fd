"""Tool-call hooks: the layer of the tool-call pipeline that runs them, and the seed's
error handler (``Host(on_tool_error=fn)``).

The layer sits just inside the boundary (outside recovery: ``after_tool_call`` sees what
recovery made of the call) and is added only when a tool-call hook is registered. For
each call::

    tool_call_started observers, before_tool_call controllers
      -> Proceed (the changed params, validated again by the tool) | Skip | Fail
    the call (the rest of the pipeline)
    after_tool_call controllers -> Continue | Recover | Retry (bounded) | Rethrow
    on_tool_error(error, tool_name, error_type, params) -> True (go on) | False (stop the run)
    tool_call_finished observers

Every controller that ran for the call (and ``on_tool_error``) is in its error's
``context.execution_trace.hook_execution_path``. Observers see the call on the host's
observer thread while the run goes on (see :mod:`host.hooks.delivery`): one that fails
is in the run's hook path, which a failed run's error carries.

A controller's ``Retry`` goes through :data:`RETRY` (a :class:`host.recovery.Retry`):
at most its ``attempts`` tries in all and ``max_elapsed`` seconds, the delay the action's
(or the policy's), waited through the run's control (it ends at once when the run is
asked to stop), recorded in the run's recovery history; past the bound the outcome stands.
"""

from __future__ import annotations

import array
import bisect
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from bridge import HookError, SpellError
from bridge.errors import describe_exception
from host.calls import as_spell_error, failure_to_recover
from host.data import check_room, not_json_like
from host.hooks.actions import Fail, Recover, Rethrow, Retry, Skip
from host.hooks.dispatch import MAX_PATH, Dispatcher, Hook, Record, hook_failure, record
from host.hooks.points import (
    DURATION_BUCKETS,
    Caller,
    ToolCallContext,
    ToolCallStats,
    ToolResultContext,
    copy_data,
)

if TYPE_CHECKING:
    from host.calls import Next, ToolCall

_RETRY: Any = None


def hook_retry() -> Any:
    """The bound of controllers' retries: ``Retry(attempts=3, max_elapsed=30)``, no
    backoff of its own (a ``Retry()`` action without a delay retries at once)."""
    global _RETRY
    if _RETRY is None:
        from host.recovery import Retry as RetryPolicy

        _RETRY = RetryPolicy(attempts=3, max_elapsed=30.0, backoff="fixed", initial=0.0,
                             jitter=0.0, on="any")
    return _RETRY


def hook_delay(action: Retry, attempt: int) -> float:
    """The seconds to wait before a controller's ``Retry`` after try ``attempt``: its
    ``delay``, else :func:`hook_retry`'s; one that is not a number from 0 to the
    policy's ``max_delay`` is that ``max_delay``."""
    policy = hook_retry()
    delay = action.delay
    if delay is None:
        delay = policy.delay(attempt)
    if (isinstance(delay, bool) or not isinstance(delay, (int, float))
            or not 0 <= delay <= policy.max_delay):
        delay = policy.max_delay
    return float(delay)


def error_type(err: SpellError) -> str:
    """``parse``, ``validation``, ``timeout`` or ``execution``: what kind of failure."""
    if err.code == "tool/invalid_parameters":
        return str(err.fields.get("error_type") or "validation")
    if err.code == "tool/timeout":
        return "timeout"
    return "execution"


def add_hook_path(err: SpellError, records: list[Record]) -> None:
    """Append ``records`` to ``err``'s ``context.execution_trace.hook_execution_path``."""
    from bridge import HookExecution

    context = err.context
    trace = context.execution_trace
    room = MAX_PATH - len(trace.hook_execution_path)  # one error raised again and again
    if room <= 0:
        return
    path = [*trace.hook_execution_path, *(HookExecution(**r) for r in records[:room])]
    err.context = context.model_copy(update={
        "execution_trace": trace.model_copy(update={"hook_execution_path": path})})


def _pinned(call: ToolCall) -> ToolCall:
    """``call`` with its call site read now, on the run's thread while the call waits (an
    engine may read it from the script's stack only then): its contexts are made later,
    on the observers' thread."""
    call.site = call.frames
    return call


def _caller(call: ToolCall) -> Caller:
    site = call.frames[-1] if call.frames else None
    if site is None:
        return Caller(call.caller)
    return Caller(call.caller, site.file, site.line, site.column, site.function)


def _with_params(call: ToolCall, context: Any, params: Any) -> Any:
    """The context the next controller sees after a ``Proceed(params)``: its copy of the
    params, counted first against the run's memory (one list held in many places would
    be copied once a place: see host.data.check_room)."""
    check_room(params, call.caller, call.run.limits.memory_mb, "Proceed's params")
    return context._replace(params=copy_data(params))


class ToolCallHooks:
    """The layer of a host's tool-call hooks (see the module docstring)."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    def __call__(self, call: ToolCall, next: Next) -> Any:
        return self.wrap(next)(call)

    def wrap(self, next: Next) -> Next:
        """The hooked step before ``next``."""
        d = self.dispatcher
        if d.on_tool_error is None and not d.by_point.get("before_tool_call") \
                and not d.by_point.get("after_tool_call"):
            return self._observed(next)

        def hooked(call: ToolCall) -> Any:
            records: list[Record] = []
            stopping = call.run.control.reason  # the run's stop, handed out again and again
            try:
                return self._call(call, next, records)
            except SpellError as err:
                if records and err is not stopping:
                    add_hook_path(err, records)
                raise

        return hooked

    def _observed(self, next: Next) -> Next:
        """The step before ``next`` when only observers watch tool calls: it counts the
        call for ``run_finished`` and queues its events, whose contexts are made on the
        observers' thread (a call that simply succeeds: none for ``failures_only``
        observers).

        What cannot change during the host's life is decided here, once per tool's path:
        hooks are registered when the dispatcher is made, and one that is switched off
        leaves its point's list in place (so a list read here stays current), and only
        ever takes a point's successes away. A call that succeeds then costs one timing
        and one append (monitoring's price on every call).
        """
        d = self.dispatcher
        counting = d.has("run_finished")  # run_finished observers are never switched off
        started = d.by_point.get("tool_call_started")
        finished = d.by_point.get("tool_call_finished")
        successes = d.wants_successes("tool_call_finished")
        clock = time.perf_counter

        def observed(call: ToolCall) -> Any:
            run = call.run
            if started:
                d.observe_lazily("tool_call_started", _started_context,
                                 (run.correlation_id, call.name, call.params, _pinned(call)),
                                 run.hook_path, run._token, keep_ok=False)
            history = run.recovery
            recoveries = history.total
            try:
                result = next(call)
            except BaseException as exc:
                err = failure_to_recover(call, exc)  # the run's end passes untouched
            else:
                duration = clock() - call.started
                if counting:
                    times = run.tool_times.get(call.name)
                    if times is None or len(times) >= FOLD_AFTER:
                        times = run.tool_times.times(call.name)
                    times.append(duration)
                if finished:
                    recovered = history.total != recoveries
                    if recovered or (successes and d.wants_successes("tool_call_finished")):
                        d.observe_lazily("tool_call_finished", _result_context, (
                            run.correlation_id, call.name, call.params, _pinned(call), result, None,
                            duration, 1, None), run.hook_path, run._token, keep_ok=False,
                            failed=recovered)
                return result
            duration = clock() - call.started
            if counting:
                run.tool_times.failed(call.name, duration)
            if finished:
                d.observe_lazily("tool_call_finished", _result_context, (
                    run.correlation_id, call.name, call.params, _pinned(call), None, err,
                    duration, 1, None), run.hook_path, run._token, keep_ok=False)
            raise err

        return observed

    def _call(self, call: ToolCall, next: Next, records: list[Record]) -> Any:
        d = self.dispatcher
        run = call.run
        token = run._token
        caller = _caller(call)
        recoveries = run.recovery.total
        before = d.has("before_tool_call")
        if before or d.has("tool_call_started"):
            context = ToolCallContext(run.correlation_id, call.name, copy_data(call.params),
                                      caller, call.depth)
            d.observe("tool_call_started", context, run.hook_path, token, keep_ok=False)
            if before:
                try:
                    action, hook = d.decide("before_tool_call", context, records, token,
                                            partial(_with_params, call))
                    if isinstance(action, Skip):
                        result = _checked(action.result, hook, "Skip", call)
                        self._finished(call, result, None, 1, records, token,
                                       recoveries=recoveries)
                        return result
                    if isinstance(action, Fail):
                        raise _fail_error(call, action, hook)
                    if action.params is not None:  # Proceed with changed parameters
                        _checked(action.params, hook, "Proceed", call, "params")
                        call.params, call.problem = action.params, None
                except SpellError as failed:  # a Fail, or a controller that failed
                    self._finished(call, None, failed, 1, records, token,
                                   recoveries=recoveries)
                    raise
        attempt, recovered = 1, None
        while True:
            result = err = None
            try:
                result = next(call)
            except BaseException as exc:
                err = failure_to_recover(call, exc)  # the run's end passes untouched
            if err is not None and err is run.control.reason:
                break  # the run is stopping: nothing to decide, nothing to handle
            if not d.has("after_tool_call"):
                break
            context = ToolResultContext(
                run.correlation_id, call.name, copy_data(call.params), caller, call.depth,
                copy_data(result), err, None if err is None else error_type(err),
                time.perf_counter() - call.started, attempt)
            try:
                action, hook = d.decide("after_tool_call", context, records, token)
                if isinstance(action, Retry):
                    if self._may_retry(call, action, attempt, err):
                        attempt += 1
                        continue
                elif isinstance(action, Recover):
                    result = _checked(action.result, hook, "Recover", call)
                    recovered, err = err, None
                elif isinstance(action, Rethrow):
                    err = _rethrown(action, err, hook)
            except SpellError as failed:  # a controller that failed: the call's error
                if err is not None and failed.__cause__ is None:
                    failed.__cause__ = err  # what it was deciding about
                result, err = None, failed
            break
        if err is not None and d.on_tool_error is not None \
                and err is not run.control.reason:
            self._handle(call, err, records, token)
        self._finished(call, result, err, attempt, records, token, recovered, recoveries)
        if err is not None:
            raise err
        return result

    def _may_retry(self, call: ToolCall, action: Retry, attempt: int,
                   err: SpellError | None) -> bool:
        """Wait before the controller's retry, if :func:`hook_retry`'s bound allows it."""
        policy = hook_retry()
        delay = hook_delay(action, attempt)
        elapsed = time.perf_counter() - call.started
        if attempt >= policy.attempts or elapsed + delay > policy.max_elapsed \
                or delay >= call.time_left:
            return False
        run = call.run
        run.record_recovery("retry", call.name, attempt, err, delay)
        return run.control.sleep(delay) or run.control.reason is None

    def _handle(self, call: ToolCall, err: SpellError, records: list[Record],
                token: Any) -> None:
        """The seed's error handler: False stops the run with ``err``."""
        d = self.dispatcher
        hook: Hook = d.on_tool_error  # type: ignore[assignment]
        began = time.perf_counter()
        try:
            go_on = d_run(hook, (err, call.name, error_type(err), copy_data(call.params)),
                          token)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            failure = hook_failure(hook, exc, time.perf_counter() - began)
            records.append(record(hook, "failed", began, failure))
            if failure.__cause__ is None:  # past its budget: the error it was handling
                failure.__cause__ = err
            raise failure  # noqa: B904 - its cause is set
        if not isinstance(go_on, bool):
            failure = HookError.InvalidResult(
                hook_name=hook.name, hook_point="on_tool_error",
                reason=f"it returned {go_on!r:.120}; on_tool_error returns True (go on) or "
                       f"False (stop the run with the error)")
            records.append(record(hook, "invalid", began, failure))
            raise failure from err  # the error it was handling
        records.append(record(hook, "continue" if go_on else "stop_run", began))
        control = call.run.control
        if not go_on and control.reason is None:
            call.run.failed_fast = err  # a stop of its own, not a cancellation
            control.request_stop(err)

    def _finished(self, call: ToolCall, result: Any, err: SpellError | None,
                  attempt: int, records: list[Record], token: Any,
                  recovered: SpellError | None = None, recoveries: int = 0) -> None:
        d = self.dispatcher
        duration = time.perf_counter() - call.started
        if d.has("run_finished"):
            if err is None:
                call.run.tool_times.times(call.name).append(duration)
            else:
                call.run.tool_times.failed(call.name, duration)
        if d.has("tool_call_finished"):
            d.observe_lazily("tool_call_finished", _result_context, (
                call.run.correlation_id, call.name, call.params, _pinned(call), result, err,
                duration, attempt, recovered), call.run.hook_path, token, keep_ok=False,
                failed=err is not None or recovered is not None
                or call.run.recovery.total != recoveries)


FOLD_AFTER = 65536  # a tool's call times kept before they are folded into its counts


class ToolTimes(dict):
    """A run's tool calls, for ``run_finished``: by tool, the seconds of its latest calls
    (an array a call appends to: the cheapest count), folded into its counts every
    :data:`FOLD_AFTER` calls so that a long run stays small."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, list[Any]] = {}  # calls, failures, seconds, buckets

    def times(self, tool: str) -> array.array:
        """The array of ``tool``'s latest call times (folded first when full)."""
        times = self.get(tool)
        if times is None:
            times = self[tool] = array.array("d")
        elif len(times) >= FOLD_AFTER:
            self._fold(tool, times)
        return times

    def failed(self, tool: str, seconds: float) -> None:
        """One call of ``tool`` that failed."""
        self.times(tool).append(seconds)
        self._counts(tool)[1] += 1

    def stats(self) -> dict[str, ToolCallStats]:
        """Every tool's :class:`ToolCallStats` so far."""
        for tool, times in self.items():
            self._fold(tool, times)
        return {tool: ToolCallStats(calls, failures, seconds, tuple(buckets))
                for tool, (calls, failures, seconds, buckets) in self.counts.items()}

    def _counts(self, tool: str) -> list[Any]:
        counts = self.counts.get(tool)
        if counts is None:
            counts = self.counts[tool] = [0, 0, 0.0, [0] * (len(DURATION_BUCKETS) + 1)]
        return counts

    def _fold(self, tool: str, times: array.array) -> None:
        counts = self._counts(tool)
        counts[0] += len(times)
        counts[2] += sum(times)
        ordered = sorted(times)  # then one bisection per bucket, not one per call
        buckets, below = counts[3], 0
        for index, bound in enumerate(DURATION_BUCKETS):
            at_most = bisect.bisect_right(ordered, bound)
            buckets[index] += at_most - below
            below = at_most
        buckets[-1] += len(ordered) - below
        del times[:]


def _started_context(run_id: str, tool: str, params: Any, call: ToolCall
                     ) -> ToolCallContext:
    return ToolCallContext(run_id, tool, copy_data(params), _caller(call), call.depth)


def _result_context(run_id: str, tool: str, params: Any, call: ToolCall, result: Any,
                    err: SpellError | None, duration: float, attempt: int,
                    recovered: SpellError | None) -> ToolResultContext:
    return ToolResultContext(run_id, tool, copy_data(params), _caller(call), call.depth,
                             copy_data(result), err,
                             None if err is None else error_type(err), duration, attempt,
                             recovered)


def d_run(hook: Hook, args: tuple, token: Any) -> Any:
    """Run the error handler ``hook`` (taking the arguments tuple) within its budget."""
    from host.hooks.dispatch import run_hook

    return run_hook(hook, args, token)


def _checked(value: Any, hook: Hook | None, action: str, call: ToolCall | None = None,
             what: str = "result") -> Any:
    """``value`` if it is JSON-like data a script can hold, else ``hook/invalid_result``
    (one that cannot even be looked at, a mapping of the hook's whose ``items`` raises,
    too: the hook's answer is at fault, not the tool); ``resource/memory_exhaustion`` if
    it holds one list in so many places that its copies pass the run's memory limit
    (given the ``call`` it answers, for a script)."""
    name = hook.name if hook is not None else "?"
    point = hook.point if hook is not None else ""
    try:
        unfit = not_json_like(value, what)
    except Exception as exc:
        raise HookError.InvalidResult(
            hook_name=name, hook_point=point,
            reason=f"{action}'s {what} cannot be read "
                   f"({describe_exception(exc, qualified=False)}): a script receives "
                   f"JSON-like data") from exc
    if unfit is None:
        if call is not None:  # for a script: within its memory, however often it holds a list
            check_room(value, call.caller, call.run.limits.memory_mb, f"{action}'s {what}")
        return value
    raise HookError.InvalidResult(
        hook_name=name, hook_point=point,
        reason=f"{action}'s {unfit.path} {unfit.why}: a script receives JSON-like data")


def _fail_error(call: ToolCall, action: Fail, hook: Hook | None) -> SpellError:
    error = action.error
    name = hook.name if hook is not None else "?"
    if isinstance(error, SpellError):
        return error
    if isinstance(error, str):
        return HookError.Rejected(hook_name=name, hook_point="before_tool_call", reason=error)
    if isinstance(error, BaseException):
        return as_spell_error(call, error)
    return HookError.InvalidResult(
        hook_name=name, hook_point="before_tool_call",
        reason=f"Fail's error is {error!r:.120}: a SpellError, an exception or a string")


def _rethrown(action: Rethrow, err: SpellError | None, hook: Hook | None) -> SpellError:
    name = hook.name if hook is not None else "?"
    point = hook.point if hook is not None else "after_tool_call"
    new = action.error
    if new is None:
        if err is not None:
            return err
        return HookError.InvalidResult(
            hook_name=name, hook_point=point,
            reason="Rethrow() after a call that succeeded: give the error to fail with")
    if isinstance(new, str):
        new = HookError.Rejected(hook_name=name, hook_point=point, reason=new)
    elif not isinstance(new, SpellError):
        if not isinstance(new, BaseException):
            return HookError.InvalidResult(
                hook_name=name, hook_point=point,
                reason=f"Rethrow's error is {new!r:.120}: a SpellError, an exception or a "
                       f"string")
        new = SpellError.wrap(new)
    if err is not None and new is not err and new.__cause__ is None:
        new.__cause__ = err  # the original error as its cause
        new._cause_view = None
    return new
