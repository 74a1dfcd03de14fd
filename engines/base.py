"""The small interface every script engine implements (like httpx's transports).

A run is a conversation between the host and an engine, one step at a time:

    step = engine.start(source, filename, args, tools, deadline)
    while isinstance(step, Suspended):          # the script called tools
        replies = [answer(request) for request in step.requests]
        step = engine.resume(replies, deadline)
    # step is Finished(result) or Failed(error)

A tools file (``helpers.lua``, ``helpers.js``) is a library instead: ``load`` runs it and
answers the names of the functions it exports; each ``call`` of one is an *activation* of
its own, driven the same way (``call``, then ``resume`` while it is suspended). Calls may
nest: while one activation waits for a tool, that tool may call into the same engine
again; a reply resumes the activation whose request it answers.

Scripts never call Python: a tool call suspends the script (Lua: the script's coroutine
yields; JS: the call returns a Promise and control returns to the host), so no Python
callable is ever entered from script code and no Python object ever enters an engine.
Only JSON-like data crosses: None, bool, int, float, str, list, dict with str keys.

An engine object is used from one thread only (quickjs requires it); the host gives each
engine a thread of its own. The one exception is :meth:`Engine.stop`, which any thread
may call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from bridge import Frame, SpellError

Sandbox = Literal["constrained", "trusted"]


@dataclass(frozen=True)
class Limits:
    """What a run may use. Exceeding one fails the run with a resource error."""

    timeout: float = 30.0  # wall-clock seconds for the whole run
    memory_mb: int = 256  # per engine
    stack_kb: int = 1024  # JS stack; Lua uses its own limit (about 500,000 nested calls)


@dataclass(frozen=True)
class ToolInfo:
    """A tool as scripts see it through ``tools.list()``."""

    name: str
    description: str = ""


@dataclass
class ToolRequest:
    """A script asked for a tool; the host answers with a :class:`ToolReply` of the same id."""

    id: int
    tool: str
    params: Any = None  # JSON-like data, as the script passed it
    # Why the parameters could not be read (a function, a cycle, a non-string key...);
    # the host then answers with tool/invalid_parameters (error_type "parse").
    problem: str | None = None
    frames: list[Frame] = field(default_factory=list)  # the script's call site, outermost first


@dataclass
class ToolReply:
    """The host's answer to one request: a result, or an error envelope (see bridge.envelope)."""

    id: int
    result: Any = None
    error: dict[str, Any] | None = None


@dataclass
class Suspended:
    """The script waits for these tool calls (Lua: always one; JS: one or more)."""

    requests: list[ToolRequest]


@dataclass
class Finished:
    """The script completed; ``result`` is JSON-like data."""

    result: Any = None


@dataclass
class Failed:
    """The script failed; ``error`` is already a unified error whose frames point at the script."""

    error: SpellError


Step = Suspended | Finished | Failed


class Engine(ABC):
    """One sandboxed interpreter, running one script at a time."""

    language: ClassVar[Literal["lua", "javascript"]]
    extensions: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        *,
        limits: Limits = Limits(),
        sandbox: Sandbox = "constrained",
        on_output: Callable[[str], None] = lambda line: None,
        resolve_ref: Callable[[int], SpellError | None] = lambda ref: None,
    ) -> None:
        self.limits = limits
        self.sandbox = sandbox
        self.on_output = on_output  # receives each line of print / console.log
        self.resolve_ref = resolve_ref  # maps an error envelope's ref back to the original

    @abstractmethod
    def start(
        self, source: str, filename: str, args: Any, tools: list[ToolInfo], deadline: float
    ) -> Step:
        """Compile and run ``source`` (named ``filename`` in frames) until it suspends or ends.

        ``args`` is the global ``args`` (and, in Lua, the chunk's ``...``); ``None``, no
        data, is an empty table (Lua) or object (JS), never nil/null. A tools file's
        ``load`` gets an empty ``args`` too. If the script
        defines a global ``main``, it is called with ``args`` and its (awaited) return value
        is the result; otherwise the chunk's return value (JS: ``undefined``/None).
        ``deadline`` is a ``time.monotonic()`` instant: pure script code still running then
        is stopped with ``script/resource_exhaustion`` (resource_type ``time``).
        """

    @abstractmethod
    def load(self, source: str, filename: str, tools: list[ToolInfo], deadline: float) -> Step:
        """Run a tools file; it finishes with the sorted names of the functions it exports.

        Lua: the functions of the table the chunk returns; JavaScript: those assigned to
        the global ``exports`` object.
        """

    @abstractmethod
    def call(self, function: str, params: Any, deadline: float) -> Step:
        """Call an exported function of the loaded tools file with ``params`` (its argument)."""

    @abstractmethod
    def resume(self, replies: list[ToolReply], deadline: float) -> Step:
        """Deliver tool results or errors to the activation that asked and run it on.

        ``replies`` answer the requests of one :class:`Suspended` step, all of them.
        A script error fails only its activation; a limit (time, memory) ends the engine.
        """

    def stop(self) -> bool:
        """Ask the engine to end its script as soon as it can; callable from any thread.

        For a run the host has given up on (its deadline passed, or its caller was
        cancelled or interrupted): the step in progress, or the next one, fails with the
        time limit. How soon depends on the engine; one that cannot stop keeps running
        until its own limit, on a thread that does not keep the process alive. Returns
        whether a step in progress ends within moments (the host then lets it end before
        the interpreter exits).
        """
        return False

    def close(self) -> None:  # noqa: B027 - engines without resources need nothing here
        """Free the interpreter; the engine is not used again."""
