"""The error language polyspell speaks in Python, Lua and JavaScript.

Imports neither ``host`` nor ``engines``: it is the vocabulary both speak.
"""

from typing import Any

from bridge import hierarchy
from bridge.errors import SpellError, categories, category_class, variant_class, variants
from bridge.frames import Frame, python_frames
from bridge.hierarchy import (
    AgentError,
    AsyncExecutionError,
    BridgeError,
    ConfigurationError,
    CrossEngineCoordinationError,
    EventError,
    HookError,
    NetworkError,
    ProviderError,
    ResourceError,
    ScriptError,
    SecurityError,
    SpellRuntimeError,
    StorageError,
    ToolError,
    WorkflowError,
)
from bridge.severity import Severity
from bridge.wrapping import wrap

# The context models are pydantic models: imported when first asked for.
_CONTEXT_NAMES = frozenset({
    "AgentComponent", "AsyncContext", "BridgeComponent", "CallFrame", "EnvironmentInfo",
    "ErrorContext", "EventComponent", "EventEmission", "ExecutionTrace", "FileLocation",
    "HookComponent", "HookExecution", "ScriptComponent", "SystemComponent", "ToolComponent",
    "UserContext", "WorkflowComponent",
})


def __getattr__(name: str) -> Any:
    if name in _CONTEXT_NAMES:
        from bridge import context

        return getattr(context, name)
    raise AttributeError(f"module 'bridge' has no attribute {name!r}")


__all__ = [
    "AgentComponent", "AgentError", "AsyncContext", "AsyncExecutionError", "BridgeComponent",
    "BridgeError", "CallFrame", "ConfigurationError", "CrossEngineCoordinationError",
    "EnvironmentInfo", "ErrorContext", "EventComponent", "EventEmission", "EventError",
    "ExecutionTrace", "FileLocation", "Frame", "HookComponent", "HookError", "HookExecution",
    "NetworkError", "ProviderError", "ResourceError", "ScriptComponent", "ScriptError",
    "SecurityError", "Severity", "SpellError", "SpellRuntimeError", "StorageError",
    "SystemComponent", "ToolComponent", "ToolError", "UserContext", "WorkflowComponent",
    "WorkflowError", "categories", "category_class", "hierarchy", "python_frames",
    "variant_class", "variants", "wrap",
]
