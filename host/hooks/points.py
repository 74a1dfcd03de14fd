"""The hook points: one list, and the read-only context each point's hooks receive.

Every point has a name (the same in Python, Lua and JavaScript), a context class (a
read-only named tuple: ``ctx.tool``; ``ctx._replace(...)`` makes a changed copy) and a
kind: *observer* points only tell (their hooks cannot change the run), *controller* points
ask for a decision (a typed action, see :mod:`host.hooks.actions`).

=======================  ==========  =====================  ===============================
point                    kind        context                fired
=======================  ==========  =====================  ===============================
run_started              observer    RunContext             as a run begins
run_finished             observer    RunFinishedContext     as a run ends (result or error)
tool_call_started        observer    ToolCallContext        before each tool call
tool_call_finished       observer    ToolResultContext      after each tool call
script_error             observer    ScriptErrorContext     an error escaping the script
retry                    observer    RecoveryContext        a recovery retry is made
fallback                 observer    RecoveryContext        a fallback option is tried
degraded                 observer    RecoveryContext        a tool answers degraded
circuit_changed          observer    CircuitContext         a breaker changes state
output                   observer    OutputContext          a print / console.log line
cancellation_started     observer*   CancellationContext    a run or a coordinator task is
                                                            told to stop
cancellation_finished    observer*   CancellationContext    the stopped run / task ended
task_started             observer*   TaskContext            as each try of a coordinator
                                                            task starts
task_finished            observer*   TaskContext            as each try of a coordinator
                                                            task ends
task_completed           observer*   TaskContext            once per coordinator task, as
                                                            it ends (however: skipped too)
before_tool_call         controller  ToolCallContext        before each tool call
after_tool_call          controller  ToolResultContext      after each tool call
after_script_error       controller  ScriptErrorContext     an error escaping the script
after_task_failure       controller  TaskContext            a try of a coordinator task
                                                            failed or timed out
=======================  ==========  =====================  ===============================

(*) also the points of the coordinator's listeners (:data:`LISTENER_POINTS`, see
:class:`host.Coordinator`): ``on_task_started`` at ``task_started``,
``on_task_completed`` at ``task_completed``, ``on_cancellation_started`` at
``cancellation_started``, ``on_cancel`` (the cleanups, first) and
``on_cancellation_completed`` at ``cancellation_finished``.

**Cancellation, run and task.** A plain run fires ``cancellation_started`` when
``run.cancel(reason)`` is called and ``cancellation_finished`` as the cancelled run ends
(``task_id`` None). A coordinator task fires them instead at the task level, once per
stop, whether a try was running or not: ``cancellation_started`` when the coordinator
decides to stop it (a strategy cancelled it, or its try ran out of time),
``cancellation_finished`` once its script has stopped and its cleanups ran (``task_id``
the task's, ``run_id`` its try's run, None if none was running); its runs do not fire
them again.

Scripts hook their own tool calls (``engines/lua_prelude.lua``,
``engines/javascript_prelude.js``): the hooks run inside the script's engine, under its
limits, and see ``ctx.tool``, ``ctx.params``, ``ctx.result``, ``ctx.error`` (the error
object the script would receive), ``ctx.duration`` (seconds) and ``ctx.attempt`` (1: the
host's retries happen inside the one call a script sees).

======================  ==================================  ==================================
Python                  Lua                                 JavaScript
======================  ==================================  ==================================
``before_tool_call``    ``hooks.before_tool_call(fn)``      ``hooks.beforeToolCall(fn)``
``after_tool_call``     ``hooks.after_tool_call(fn)``       ``hooks.afterToolCall(fn)``
``tool_call_started``   ``hooks.on("tool_call_started",     ``hooks.on("tool_call_started"`` or
                        fn)``                               ``"toolCallStarted", fn)``
``tool_call_finished``  ``hooks.on("tool_call_finished",    ``hooks.on("tool_call_finished"`` or
                        fn)``                               ``"toolCallFinished", fn)``
``Proceed(params)``     ``{action = "proceed", params =     ``{action: "proceed", params}``
                        ...}``
``Skip(result)``        ``{action = "skip", result = ...}``  ``{action: "skip", result}``
``Continue()``          ``{action = "continue"}``           ``{action: "continue"}``
``Recover(result)``     ``{action = "recover", result =     ``{action: "recover", result}``
                        ...}``
``Rethrow(error)``      ``{action = "rethrow", error =      ``{action: "rethrow", error}``
                        ...}``
======================  ==================================  ==================================

Returning nothing is proceed/continue; anything else is ``hook/invalid_result``. The order
of one call: the script's ``tool_call_started`` observers and ``before_tool_call`` hooks
(before the request leaves the script), then the host's ``tool_call_started`` observers
and ``before_tool_call`` controllers (on the params the script's hooks proceeded with; the
tool validates them as any params), the call, the host's ``after_tool_call`` controllers,
``on_tool_error`` and ``tool_call_finished`` observers, then the script's
``after_tool_call`` hooks and ``tool_call_finished`` observers (the host's observers are
fired there; their delivery may come later). A script's ``skip`` never
reaches the host (the call is not made, as if the script had not made it).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

ErrorType = Literal["parse", "validation", "execution", "timeout"]


class Caller(NamedTuple):
    """Where a tool call was made: the calling script's language and innermost frame."""

    language: str
    file: str | None = None
    line: int | None = None
    column: int | None = None
    function: str | None = None


class RunContext(NamedTuple):
    """``run_started``: a run of ``script`` (its file name) in ``language`` begins;
    ``task_id`` and ``plan_id`` (the plan's name) when a coordinator runs it."""

    run_id: str
    script: str
    language: str
    args: Any
    task_id: str | None = None
    plan_id: str | None = None


DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0)
"""Upper bounds (seconds) of :attr:`ToolCallStats.buckets`; the last bucket is the rest."""


class ToolCallStats(NamedTuple):
    """The calls of one tool in a run: how many, how many failed (the script received an
    error), their seconds in all, and how many took at most each bound of
    :data:`DURATION_BUCKETS` (not cumulative; one more bucket for the slower ones)."""

    calls: int
    failures: int
    seconds: float
    buckets: tuple[int, ...]


class RunFinishedContext(NamedTuple):
    """``run_finished``: the run ended with ``result``, or with ``error`` (a SpellError),
    after ``duration`` seconds; ``tool_calls`` its tool calls, by tool
    (:class:`ToolCallStats`); ``task_id`` and ``plan_id`` when a coordinator runs it."""

    run_id: str
    script: str
    language: str
    result: Any
    error: Any
    duration: float
    tool_calls: dict[str, ToolCallStats] = {}  # the host always gives its own
    task_id: str | None = None
    plan_id: str | None = None


class ToolCallContext(NamedTuple):
    """``tool_call_started`` and ``before_tool_call``: a script calls ``tool`` with
    ``params`` (a copy: changing it changes nothing), from ``caller``; ``depth`` counts
    tools-file calls around it."""

    run_id: str
    tool: str
    params: Any
    caller: Caller
    depth: int


class ToolResultContext(NamedTuple):
    """``tool_call_finished`` and ``after_tool_call``: the call's ``result``, or its
    ``error`` (the unified error) and ``error_type`` (``parse``: the parameters could not
    cross; ``validation``: the tool refused them; ``timeout``; ``execution``: anything
    else); ``duration`` in seconds since the call began; ``attempt`` the try (1-based:
    an ``after_tool_call`` controller's ``Retry`` makes the next); ``recovered_from``
    (``tool_call_finished`` only) the error a controller's ``Recover`` answered for."""

    run_id: str
    tool: str
    params: Any
    caller: Caller
    depth: int
    result: Any
    error: Any
    error_type: ErrorType | None
    duration: float
    attempt: int
    recovered_from: Any = None


class ScriptErrorContext(NamedTuple):
    """``script_error`` and ``after_script_error``: ``error`` escapes the script."""

    run_id: str
    script: str
    language: str
    error: Any


class RecoveryContext(NamedTuple):
    """``retry``, ``fallback`` and ``degraded``: an event of the run's recovery history
    (see :mod:`host.history`): ``attempt`` the try that failed, ``delay`` the seconds
    waited before the next, ``error`` the code of the error recovery acted on, ``option``
    a fallback's option (a tool name, ``value``, ``cached``, ``endpoint <url>``),
    ``failure`` that error itself (a SpellError)."""

    run_id: str
    tool: str
    attempt: int
    delay: float | None
    error: str | None
    option: str | None
    failure: Any = None


class CircuitContext(NamedTuple):
    """``circuit_changed``: the breaker of ``tool`` went from ``old`` to ``new``
    (``closed``, ``open``, ``half_open``)."""

    tool: str
    old: str
    new: str


class OutputContext(NamedTuple):
    """``output``: the script (or a tools file) printed ``line``."""

    run_id: str
    line: str


class CancellationContext(NamedTuple):
    """``cancellation_started`` / ``cancellation_finished``: the run is cancelled
    (``run.cancel(reason)``) with ``reason``, a SpellError. For a coordinator task (see
    the module docstring) ``task_id`` is the task's and ``run_id`` its try's run (None:
    no try was running)."""

    run_id: str | None
    reason: Any
    task_id: str | None = None


class TaskContext(NamedTuple):
    """``task_started``, ``task_finished`` and ``after_task_failure``: try ``attempt``
    (1-based: the task's own ``retry`` or a controller's ``Retry`` makes the next) of a
    coordinator task ``task_id`` running ``script`` (its file name) in ``language``.
    ``task_finished`` and ``after_task_failure`` also have the try's ``status``
    (``succeeded``, ``failed``, ``timed_out``, ``cancelled``), its ``result`` (a copy) or
    ``error`` (a SpellError) and its ``duration`` in seconds.

    ``task_completed``: the task's end, once, however it ended: its final ``status``
    (``skipped`` too), ``result`` (a copy) or ``error``, ``duration`` since its first
    try began (0: it never ran), ``attempt`` its number of tries (0: none), and
    ``report``, its :class:`host.TaskReport`."""

    task_id: str
    script: str
    result: Any = None
    error: Any = None
    duration: float | None = None
    attempt: int = 1
    language: str = ""
    status: str | None = None
    report: Any = None


OBSERVER_POINTS: dict[str, type] = {
    "run_started": RunContext, "run_finished": RunFinishedContext,
    "tool_call_started": ToolCallContext, "tool_call_finished": ToolResultContext,
    "script_error": ScriptErrorContext, "retry": RecoveryContext,
    "fallback": RecoveryContext, "degraded": RecoveryContext,
    "circuit_changed": CircuitContext, "output": OutputContext,
    "cancellation_started": CancellationContext,
    "cancellation_finished": CancellationContext,
    "task_started": TaskContext, "task_finished": TaskContext, "task_completed": TaskContext,
}
"""Observer points and their contexts."""

CONTROLLER_POINTS: dict[str, type] = {
    "before_tool_call": ToolCallContext, "after_tool_call": ToolResultContext,
    "after_script_error": ScriptErrorContext, "after_task_failure": TaskContext,
}
"""Controller points and their contexts."""

POINTS: dict[str, type] = {**OBSERVER_POINTS, **CONTROLLER_POINTS}
"""Every hook point, by name, and the context its hooks receive."""

LISTENER_POINTS: tuple[str, ...] = (
    "task_started", "task_finished", "task_completed", "cancellation_started",
    "cancellation_finished")
"""The points a coordinator fires through :meth:`host.hooks.Dispatcher.notify`: where
listeners (the coordinator's ``on_task_*``/``on_cancel*``) can be registered."""

NOT_FIRED_YET: frozenset[str] = frozenset()
"""Points that can be registered on but that nothing fires yet (none left)."""
FAILURE_POINTS = ("tool_call_finished", "run_finished", "task_finished")
"""Points whose observers may see only failures (``observer(..., failures_only=True)``)."""


def copy_data(value: Any) -> Any:
    """A copy of JSON-like ``value`` (dicts and lists copied, the rest shared), so that
    a hook changing what its context shows changes nothing of the run."""
    kind = type(value)
    if kind is dict or (kind not in _SHARED and isinstance(value, dict)):
        return {key: item if type(item) in _SHARED else copy_data(item)
                for key, item in value.items()}
    if kind is list or (kind not in _SHARED and isinstance(value, list)):
        return [item if type(item) in _SHARED else copy_data(item) for item in value]
    return value


_SHARED = frozenset({str, int, float, bool, type(None)})  # immutable: nothing to copy
