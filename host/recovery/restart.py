"""``Restart``: throw away a tools file's engine whose state is broken, load it again, call again.

Each function of a Lua or JavaScript tools file runs in the run's engine for that file (one
engine per file per run, loaded at the file's first call: ``ScriptRun._libraries``). When a
call leaves that engine broken, :class:`RestartLayer` asks the run to drop it
(:meth:`host.runner.ScriptRun.restart_library`, the one way an engine is thrown away) and
calls the function again: the run loads the file into a new engine, with the same limits
and sandbox, at that call. At most ``max_restarts`` restarts per file per run; then the
error escapes with the run's recovery history attached (``context.metadata["recovery"]``).
Each restart is an event ``{"action": "restart", ...}`` of ``run.recovery``.

A call leaves the engine broken when (:meth:`ScriptRun.library_broken`):

- the engine ended: a limit it cannot go on after (Lua's memory limit ends its engine);
- the engine observed a memory or stack limit in the call (``resource/memory_exhaustion``,
  ``script/resource_exhaustion`` of ``memory`` or ``stack``; JavaScript goes on after
  those, but the file's state may be half-built), not one the script raised itself;
- the function raised ``agent/state_corruption`` itself (not one a tool it called raised
  and it let through: that tool's own file is the one broken).

A call that timed out (an attempt or total :class:`~host.recovery.Timeout`, a tool's
timeout) stops its engine too: that engine is dropped at once, whatever the policies, and
the file is loaded again at its next call (recorded as a ``restart`` with
``tool/timeout``); it does not count against ``max_restarts``. A retry then runs on the
new engine.

``state``: ``"reset"`` loads the file as new. ``"keep"`` hands the new engine the last
state the file exported after a call that succeeded (never the state at the failure,
which is the broken one). A tools file that keeps its state exports two functions, which
are not tools (see :data:`host.tools.STATE_EXPORT`):

- Lua: ``polyspell_state()`` returns the state as JSON-like data, ``polyspell_restore(state)``
  takes it after the file is loaded again (both in the table the file returns);
- JavaScript: ``exports.polyspell_state`` and ``exports.polyspell_restore``, the same.

The host calls ``polyspell_state`` after each successful call of the file's functions
(when no other call into the file is in progress), only for files one of whose functions
has ``Restart(state="keep")``: the cost is one call into the engine and the copy of the
state. A state with no JSON form, or too large for the memory limit, fails that call with
``configuration/invalid_value`` naming the file and ``polyspell_state``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from host.calls import failure_to_recover
from host.recovery.model import Policy

if TYPE_CHECKING:
    from host.calls import Invocable, Next, ToolCall


class Restart(Policy):
    """Reload a broken tools-file engine and call again (``restart = { max_restarts = 2,
    state = "keep" }``); see the module docstring."""

    policy_name: ClassVar[str] = "restart"

    max_restarts: int = Field(1, ge=1, le=100)
    state: Literal["reset", "keep"] = "reset"

    def layer(self) -> RestartLayer:
        """This policy as a layer of a tools-file function's pipeline."""
        return RestartLayer(self)


class RestartLayer:
    """Calls ``next``; when the call left the file's engine broken, has the run drop that
    engine and calls ``next`` again, while the file has restarts left in this run."""

    def __init__(self, policy: Restart) -> None:
        self.policy = policy

    def applies(self, tool: Invocable | None) -> bool:
        """Only functions of tools files have an engine to restart."""
        from host.tools import ScriptTool

        return isinstance(tool, ScriptTool)

    def __call__(self, call: ToolCall, next: Next) -> Any:
        run, tool = call.run, call.tool
        keep = self.policy.state == "keep"
        while True:
            try:
                return next(call)
            except BaseException as exc:
                err = failure_to_recover(call, exc)
            if not run.library_broken(tool, err):  # type: ignore[arg-type]
                raise err
            if (run.restarts(tool) >= self.policy.max_restarts  # type: ignore[arg-type]
                    or call.time_left <= 0
                    or not run.restart_library(tool, err, keep=keep)):  # type: ignore[arg-type]
                run.attach_recovery(err)  # broken, and no restart left: what was tried
                raise err


def check_restart(name: str, tool: Any, policy: Restart) -> None:
    """Refuse a restart policy that cannot apply to tool ``name``, as
    ``configuration/invalid_value`` naming the tool and field: a tool that is not a function
    of a Lua/JS tools file (it has no engine to restart), or ``state = "keep"`` for a file
    that does not export its state."""
    from bridge import ConfigurationError
    from host.tools import STATE_EXPORT, STATE_RESTORE, ScriptTool

    if not isinstance(tool, ScriptTool):
        raise ConfigurationError.InvalidValue(
            key=f"{name}.restart", value=name,
            reason=f"{name}.restart: only a function of a Lua or JavaScript tools file has "
                   f"an engine to restart; {name!r} is a Python tool")
    if policy.state == "keep" and not tool.state_hooks:
        raise ConfigurationError.InvalidValue(
            key=f"{name}.restart.state", value="keep",
            reason=f"{name}.restart.state: 'keep' needs {tool.filename} to export its state: "
                   f"functions {STATE_EXPORT}() and {STATE_RESTORE}(state)")
