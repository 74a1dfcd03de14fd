"""What surrounded an error: where, when, in which component, on which path through the code.

These are the seed's ErrorContext, ComponentIdentifier and ExecutionTrace as pydantic
models, so that a context read back from JSON is validated like everything else.
"""

from __future__ import annotations

import functools
import os
import platform
import socket
import sys
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, PlainSerializer

from bridge.jsontext import finite, finite_number
from bridge.languages import ScriptLanguageName


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


# JSON output is RFC 8259 JSON, with no NaN or Infinity: the fields that may hold a float
# write one that is not finite as null, so that a context dumps as JSON data with no walk
# over all of it afterwards (only data a user or a script gave is looked through)
FiniteInJson = Annotated[float, PlainSerializer(finite_number, when_used="json")]
"""A float field written as null in JSON output when it is not finite."""
JsonData = Annotated[JsonValue, PlainSerializer(finite, when_used="json")]
"""JSON-like data, its floats that are not finite written as null in JSON output."""


# -- which component an error belongs to (the seed's ComponentIdentifier) --------------


class AgentComponent(_Model):
    """An agent, by id and type."""

    type: Literal["agent"] = "agent"
    agent_id: str
    agent_type: str = ""


class ToolComponent(_Model):
    """A tool, by name and category."""

    type: Literal["tool"] = "tool"
    tool_name: str
    category: str = ""


class WorkflowComponent(_Model):
    """A workflow, by id and type."""

    type: Literal["workflow"] = "workflow"
    workflow_id: str
    workflow_type: str = ""


class HookComponent(_Model):
    """A hook, by name and the point it is attached to."""

    type: Literal["hook"] = "hook"
    hook_name: str
    hook_point: str = ""


class EventComponent(_Model):
    """An event emission."""

    type: Literal["event"] = "event"
    event_type: str
    emission_id: str = ""


class ScriptComponent(_Model):
    """A script, by language and id (its file name)."""

    type: Literal["script"] = "script"
    language: ScriptLanguageName
    script_id: str


class BridgeComponent(_Model):
    """The translation layer between languages."""

    type: Literal["bridge"] = "bridge"
    bridge_type: str = ""


class SystemComponent(_Model):
    """Anything of the host itself."""

    type: Literal["system"] = "system"
    subsystem: str = "host"


Component = Annotated[
    AgentComponent
    | ToolComponent
    | WorkflowComponent
    | HookComponent
    | EventComponent
    | ScriptComponent
    | BridgeComponent
    | SystemComponent,
    Field(discriminator="type"),
]


# -- the path that led to the error (the seed's ExecutionTrace) ------------------------


class FileLocation(_Model):
    """A position in a source file."""

    file: str
    line: int | None = None
    column: int | None = None


class CallFrame(_Model):
    """One step of the execution path, e.g. a tool boundary with its parameters."""

    function_name: str
    file_location: FileLocation | None = None
    parameters: JsonData = None
    local_variables: JsonData = None
    execution_time: FiniteInJson | None = None  # seconds


class AsyncContext(_Model):
    """The task an error happened in, when it happened in a coordinated task."""

    task_id: str
    coordination_id: str | None = None
    engine: str | None = None
    async_operation_type: str | None = None


class HookExecution(_Model):
    """One hook that ran on the way to the error: its name, its point, its ``outcome``
    (an observer's ``observed``; a controller's action: ``proceed``, ``skip``, ``fail``,
    ``continue``, ``recover``, ``retry``, ``rethrow``; ``failed`` or ``invalid`` when the
    hook itself failed, then ``error`` is that error as ``code: message``), its duration
    in seconds (see ``host.hooks``)."""

    hook_name: str
    hook_point: str = ""
    outcome: str = ""
    duration: FiniteInJson | None = None
    error: str | None = None


class EventEmission(_Model):
    """One event emitted on the way to the error."""

    event_type: str
    emission_id: str = ""
    timestamp: datetime | None = None


class RecoveryAttempt(_Model):
    """One thing recovery did on the way to the error: a retry, a fallback tried, a
    breaker's refusal, a restart, a degraded answer (an event of the run's recovery
    history; see ``host.history``)."""

    action: str  # retry, fallback, breaker_refused, restart, degraded
    tool: str
    attempt: int
    delay: FiniteInJson | None = None  # seconds waited before the next try
    error: str  # the code of the error recovery acted on
    at: datetime
    option: str | None = None  # a fallback's option: a tool, value, cached, endpoint <url>


class ExecutionTrace(_Model):
    """Everything known about how execution reached the error.

    ``recovery_attempts`` is the run's recovery history (at most ``host.history``'s
    ``MAX_EVENTS``; ``recovery_dropped`` counts the ones left out)."""

    call_stack: list[CallFrame] = Field(default_factory=list)
    async_context: AsyncContext | None = None
    hook_execution_path: list[HookExecution] = Field(default_factory=list)
    event_emission_chain: list[EventEmission] = Field(default_factory=list)
    recovery_attempts: list[RecoveryAttempt] = Field(default_factory=list)
    recovery_dropped: int = 0


class UserContext(_Model):
    """Who the work was done for."""

    user_id: str | None = None
    session_id: str | None = None
    request_id: str | None = None
    attributes: dict[str, JsonData] = Field(default_factory=dict)


class EnvironmentInfo(_Model):
    """The machine and versions the error happened on."""

    polyspell_version: str = ""
    python_version: str = ""
    platform: str = ""
    hostname: str = ""
    pid: int | None = None


@functools.cache
def current_environment() -> EnvironmentInfo:
    """The environment of this process, read once."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        polyspell_version = version("polyspell")
    except PackageNotFoundError:
        polyspell_version = "unknown"
    return EnvironmentInfo(
        polyspell_version=polyspell_version,
        python_version=platform.python_version(),
        platform=sys.platform,
        hostname=socket.gethostname(),
        pid=os.getpid(),
    )


def new_error_id() -> str:
    """A fresh, unique error id."""
    return uuid.uuid4().hex


class ErrorContext(_Model):
    """Where, when and in what an error happened; travels with the error across every boundary."""

    error_id: str = Field(default_factory=new_error_id)
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
    component: Component = Field(default_factory=SystemComponent)
    operation: str = ""
    correlation_id: str | None = None
    user_context: UserContext | None = None
    environment: EnvironmentInfo = Field(default_factory=current_environment)
    metadata: dict[str, JsonData] = Field(default_factory=dict)
    execution_trace: ExecutionTrace = Field(default_factory=ExecutionTrace)
