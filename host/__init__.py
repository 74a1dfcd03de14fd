"""polyspell's host: what users touch (``Host``, ``@tool``, the coordinator, the CLI).

``from host import Host, tool`` and ``from host import Coordinator, Task``. Names are
imported on first use so that the CLI starts without loading what a command does not need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bridge import wrap
    from host.calls import Layer, ToolCall
    from host.coordinator import Coordinator, PlanReport, TaskReport
    from host.host import Host
    from host.plan import Plan, Task, load_plan
    from host.recovery import (
        Breakers,
        CircuitBreaker,
        Degradation,
        DegradationLevel,
        Fallback,
        Restart,
        Retry,
        Timeout,
        ToolRecovery,
    )
    from host.steer import AskHuman, StopRun, ToolContext
    from host.tools import Tool, ToolRegistry, tool

_EXPORTS = {"Host": "host.host", "tool": "host.tools", "Tool": "host.tools",
            "ToolRegistry": "host.tools", "Coordinator": "host.coordinator",
            "PlanReport": "host.coordinator", "TaskReport": "host.coordinator",
            "Plan": "host.plan", "Task": "host.plan", "load_plan": "host.plan",
            "Retry": "host.recovery", "ToolRecovery": "host.recovery",
            "CircuitBreaker": "host.recovery", "Breakers": "host.recovery",
            "Timeout": "host.recovery", "Fallback": "host.recovery",
            "Degradation": "host.recovery", "DegradationLevel": "host.recovery",
            "Restart": "host.recovery",
            "ToolCall": "host.calls", "Layer": "host.calls",
            "StopRun": "host.steer", "AskHuman": "host.steer", "ToolContext": "host.steer",
            "wrap": "bridge"}  # the table of tool exceptions -> unified errors


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'host' has no attribute {name!r}")


__all__ = ["AskHuman", "Breakers", "CircuitBreaker", "Coordinator", "Degradation",
           "DegradationLevel", "Fallback", "Host", "Layer", "Plan", "PlanReport", "Restart",
           "Retry", "StopRun", "Task", "TaskReport", "Timeout", "Tool", "ToolCall",
           "ToolContext", "ToolRecovery", "ToolRegistry", "load_plan", "tool", "wrap"]
