"""The error language polyspell speaks in Python, Lua and JavaScript.

Imports neither ``host`` nor ``engines``: it is the vocabulary both speak.
"""

from bridge import hierarchy
from bridge.context import (
    AgentComponent,
    AsyncContext,
    BridgeComponent,
    CallFrame,
    EnvironmentInfo,
    ErrorContext,
    EventComponent,
    EventEmission,
    ExecutionTrace,
    FileLocation,
    HookComponent,
    HookExecution,
    ScriptComponent,
    SystemComponent,
    ToolComponent,
    UserContext,
    WorkflowComponent,
)
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

__all__ = [
    "AgentComponent", "AgentError", "AsyncContext", "AsyncExecutionError", "BridgeComponent",
    "BridgeError", "CallFrame", "ConfigurationError", "CrossEngineCoordinationError",
    "EnvironmentInfo", "ErrorContext", "EventComponent", "EventEmission", "EventError",
    "ExecutionTrace", "FileLocation", "Frame", "HookComponent", "HookError", "HookExecution",
    "NetworkError", "ProviderError", "ResourceError", "ScriptComponent", "ScriptError",
    "SecurityError", "Severity", "SpellError", "SpellRuntimeError", "StorageError",
    "SystemComponent", "ToolComponent", "ToolError", "UserContext", "WorkflowComponent",
    "WorkflowError", "categories", "category_class", "hierarchy", "python_frames",
    "variant_class", "variants",
]
