"""Where a plan's tries run: the coordinator's executors.

The coordinator decides everything about a task (when it starts, its timeout, its retries,
what a failure does to the others, the report); an executor only runs one try of it: it
makes a :class:`TaskRun` for the task's script, which the coordinator executes, stops and
reads like the host's own runs. :class:`LocalExecutor` runs tries on the coordinator's host
(threads or worker processes, as its isolation says): what the coordinator always did.
``host.ray_executor.RayExecutor`` runs them on a Ray cluster. Like httpx's transports: one
small interface, several implementations behind it, nothing above it changes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from bridge import ConfigurationError, SpellError

if TYPE_CHECKING:
    from host.control import RunControl
    from host.coordinator import Coordinator
    from host.history import RecoveryHistory
    from host.host import Host, ScriptSource
    from host.plan import Plan

EXECUTORS = ("local", "ray")


class TaskRun(Protocol):
    """One try of a task, as the coordinator drives it (a :class:`host.runner.ScriptRun`
    is one)."""

    correlation_id: str
    language: str
    task_id: str | None
    plan_id: str | None
    control: RunControl  # .reason: why it was told to stop, if it was
    failed_fast: SpellError | None  # a fail-fast tool's error that stopped it
    recovery: RecoveryHistory

    @property
    def degraded(self) -> list[str]: ...

    def cancel(self, error: SpellError, *, announce: bool = True) -> None: ...

    async def execute(self) -> Any: ...


class Executor(ABC):
    """Runs the tries of a plan's tasks (see the module)."""

    name: ClassVar[str]

    def prepare(self, coordinator: Coordinator, plan: Plan,  # noqa: B027 - nothing here
                host: Host) -> None:
        """Check, before any task starts, that ``plan`` can run here with ``host``, the
        host ``coordinator`` made for it (its tools, settings and files); raise a unified
        error if not."""

    @abstractmethod
    def new_run(self, host: Host, script: Path, args: Any, *, timeout: float,
                lua_version: str | None = None,
                source: ScriptSource | None = None) -> TaskRun:
        """One try of the task whose script is ``script``, with ``args``, stopped by its
        engine's time limit after ``timeout`` seconds at the latest; a Lua script runs on
        ``lua_version`` (None: the host's). ``source`` is the script as
        ``host.host.read_sources`` read it when the plan started (None: read it now)."""

    def finish(self, host: Host) -> None:  # noqa: B027 - nothing held per plan here
        """The plan :meth:`prepare` accepted with ``host`` has ended (every task done)."""

    def close(self) -> None:  # noqa: B027 - nothing to release here
        """Release what the executor holds (connections, remote workers)."""


class LocalExecutor(Executor):
    """Tries run on the coordinator's host, in this process (or its worker processes)."""

    name = "local"

    def new_run(self, host: Host, script: Path, args: Any, *, timeout: float,
                lua_version: str | None = None,
                source: ScriptSource | None = None) -> TaskRun:
        return host.new_run(script, args, timeout=timeout, lua_version=lua_version,
                            source=source)


def as_executor(executor: str | Executor | None, *, ray_address: str | None = None,
                ) -> Executor:
    """The executor ``executor`` names (``"local"``, the default, or ``"ray"``), or
    ``executor`` itself. ``ray_address`` is for Ray: None starts a local Ray, ``"auto"`` or
    ``"host:port"`` joins a running cluster."""
    if isinstance(executor, Executor):
        if ray_address is not None:
            raise ConfigurationError.InvalidValue(
                key="ray_address", value=str(ray_address),
                reason="ray_address is for executor='ray', not for an executor object")
        return executor
    if executor is None or executor == "local":
        if ray_address is not None:
            raise ConfigurationError.InvalidValue(
                key="ray_address", value=str(ray_address),
                reason="ray_address is for the ray executor (executor='ray')")
        return LocalExecutor()
    if executor == "ray":
        from host.ray_executor import RayExecutor

        return RayExecutor(ray_address)
    raise ConfigurationError.InvalidValue(
        key="executor", value=repr(executor)[:200],
        reason=f"an executor is one of {_spoken(EXECUTORS)}, or an Executor")


def _spoken(names: Sequence[str]) -> str:
    return ", ".join(repr(name) for name in names)
