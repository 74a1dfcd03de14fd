"""Hooks: observers and controllers around every run, tool call and error.

``from host import hooks``::

    @hooks.observer("tool_call_finished")
    def log_call(ctx: hooks.ToolResultContext) -> None:
        print(ctx.tool, ctx.duration, ctx.error)

    @hooks.controller("after_tool_call", priority=10)
    def no_timeouts(ctx):
        if ctx.error_type == "timeout":
            return hooks.Recover("n/a")

    Host(tools, hooks=[log_call, no_timeouts])

- :mod:`host.hooks.points`: the one list of points (:data:`POINTS`) and their contexts.
- :mod:`host.hooks.actions`: what controllers answer.
- :mod:`host.hooks.dispatch`: :func:`observer`, :func:`controller`, :class:`Hook` and
  the :class:`Dispatcher` (time budgets, isolation, switch-off, chaining; the
  coordinator's listeners, the third kind of hook, and :meth:`Dispatcher.notify`).
- :mod:`host.hooks.layer`: the tool-call layer and ``Host(on_tool_error=...)``.
- :mod:`host.hooks.presets` (``hooks.presets``): ready-made observers, ``logging()``,
  ``timing()``, ``error_logging()``, ``monitoring()``, ``silent()``, ``merge(...)``.
- :mod:`host.hooks.files`: ``--hooks-file`` and ``[hooks]`` of a config file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from host.hooks.actions import Continue, Fail, Proceed, Recover, Rethrow, Retry, Skip
from host.hooks.dispatch import (
    CONTROLLER_TIMEOUT,
    OBSERVER_TIMEOUT,
    SWITCH_OFF_AFTER,
    Dispatcher,
    Hook,
    controller,
    observer,
)
from host.hooks.points import (
    CONTROLLER_POINTS,
    DURATION_BUCKETS,
    FAILURE_POINTS,
    LISTENER_POINTS,
    NOT_FIRED_YET,
    OBSERVER_POINTS,
    POINTS,
    Caller,
    CancellationContext,
    CircuitContext,
    OutputContext,
    RecoveryContext,
    RunContext,
    RunFinishedContext,
    ScriptErrorContext,
    TaskContext,
    ToolCallContext,
    ToolCallStats,
    ToolResultContext,
)

if TYPE_CHECKING:
    from host.hooks import presets


def __getattr__(name: str) -> Any:
    # hooks.presets is imported when first used: a host that only registers observers (the
    # monitor's, for every recorded run of the command line) does not load them
    if name == "presets":
        import importlib

        return importlib.import_module("host.hooks.presets")
    raise AttributeError(f"module 'host.hooks' has no attribute {name!r}")


__all__ = ["CONTROLLER_POINTS", "CONTROLLER_TIMEOUT", "DURATION_BUCKETS", "FAILURE_POINTS",
           "LISTENER_POINTS", "NOT_FIRED_YET", "OBSERVER_POINTS", "OBSERVER_TIMEOUT", "POINTS",
           "SWITCH_OFF_AFTER", "Caller", "CancellationContext", "CircuitContext", "Continue",
           "Dispatcher", "Fail", "Hook", "OutputContext", "Proceed", "Recover", "RecoveryContext",
           "Rethrow", "Retry", "RunContext", "RunFinishedContext", "ScriptErrorContext", "Skip",
           "TaskContext", "ToolCallContext", "ToolCallStats", "ToolResultContext", "controller",
           "observer", "presets"]
