"""The small interface every script engine implements (like httpx's transports).

A run is a conversation between the host and an engine, one step at a time:

    step = engine.start(source, filename, args, tools, deadline)
    while isinstance(step, Suspended):          # the script called tools
        replies = [answer(request) for request in step.requests]
        step = engine.resume(replies, deadline)
    # step is Finished(result) or Failed(error)

Steps are data only (they pickle, and can cross a pipe): each carries the lines the
script printed since the last one (``step.output``), and the error of a :class:`Failed`
may stand for an error the host handed the script (a rethrown envelope): the host swaps
it for the original with ``bridge.envelope.resolve_refs(step.error, lookup)``.

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

from bridge import BridgeError, Frame, ResourceError, ScriptError, SpellError
from bridge.patterns import PatternRegistry
from bridge.patterns import patterns as process_patterns

Sandbox = Literal["constrained", "trusted"]


@dataclass(frozen=True)
class EngineSpec:
    """What the host needs to know about an engine's language, declared once per engine.

    The registry (``engines.spec_of``), the CLI, messages and the host's data rules all
    read these instead of naming languages.
    """

    name: str  # the canonical name: "lua", "javascript" (frames and errors name it so)
    display_name: str  # as people write it: "Lua", "JavaScript"
    aliases: tuple[str, ...]  # other names a user may give ("js")
    extensions: tuple[str, ...]  # script files in this language, by suffix (lower case)
    engine: str  # "module:Class" of the Engine, imported on first use
    exports: str  # where a tools file puts the functions it exports, for messages
    # whether this language's engines hold floats that are not finite (Lua numbers do;
    # JavaScript data crosses as JSON, which has none): such a float in a tools file's
    # result passes to the caller only when both engines hold them
    non_finite_numbers: bool = False
    # whether an empty table reads as {} where a list may be meant (Lua has one table type)
    empty_table_ambiguous: bool = False
    # the bits of the integers this language's numbers hold exactly (a sign bit apart):
    # a tool's result with a larger integer is refused, never rounded
    integer_bits: int = 53
    # whether a source may be any bytes, not only UTF-8 text (Lua's may: a Latin-1 string
    # literal is legal Lua); the host carries bytes that are not UTF-8 as surrogate
    # escapes, which the engine turns back into the same bytes
    byte_source: bool = False


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


@dataclass(frozen=True)
class Problem:
    """Why a value has no JSON form and cannot cross, as facts the host builds errors from.

    ``message`` is the whole sentence (``params.f is a function``); ``path`` says where in
    the value (``params.f``), ``data_type`` what the engine found there: for a result, the
    value's type in the engine's language (``function``, ``table``, ``object``, ``bigint``,
    ``int``...); for tool parameters the same, except that a cycle is ``cycle`` and a
    table with a key that cannot cross (Lua) is ``key``.
    """

    path: str
    data_type: str
    message: str

    def __str__(self) -> str:
        return self.message


# The kinds of request an engine makes (ToolRequest.kind): a tool call, and the reserved
# kinds only an engine's prelude makes (never from a tool name a script gives).
REQUEST_KINDS = ("tool", "recovery", "module")


RequestKind = Literal["tool", "recovery", "module"]


@dataclass(init=False)
class ToolRequest:
    """A script asked for a tool; the host answers with a :class:`ToolReply` of the same id.

    An engine may find the call site only when it is asked for (``site``, called with the
    request's id when ``frames`` is first read: a successful call never needs it), from
    the script's stack, which is the call's until the reply is delivered. So read it on
    the engine's thread, before the reply (the host does: a call's frames are taken when
    its ToolCall reads them, while the call waits). Read, copied or pickled, a request is
    data, as every step (a Lua engine reads the sites still waiting as it closes).
    """

    id: int
    tool: str
    params: Any = None  # JSON-like data, as the script passed it
    # Why the parameters could not be read (a function, a cycle, a non-string key...);
    # the host then answers with tool/invalid_parameters (error_type "parse"), or, for a
    # tools file's function, script/cross_engine_communication (crossing_error).
    problem: Problem | None = None
    frames: list[Frame] = field(default_factory=list)  # the script's call site, outermost first
    # "tool": a tool call (``tool`` names it); "recovery": a step of the script's own
    # recovery.retry/recovery.fallback (``tool`` names the step; see host.recovery.script),
    # which only the prelude makes: no tool name a script gives reaches this kind.
    # "module": the script's ``require`` or ``import`` (``tool`` is the module's name;
    # ``params`` None for Lua, JavaScript's say where the importing file is);
    # the host answers with ``{"file": name, "source": text}`` (the engine loads that text
    # under that name: engines never open files) or ``{"missing": [files looked for]}``
    # (see host.libraries). Only the prelude's require makes one, like "recovery".
    kind: RequestKind = "tool"

    def __init__(self, id: int, tool: str, params: Any = None, problem: Problem | None = None,
                 frames: list[Frame] | None = None, kind: RequestKind = "tool",
                 site: Callable[[int], list[Frame]] | None = None) -> None:
        self.id, self.tool, self.params, self.problem, self.kind = id, tool, params, problem, kind
        self._frames = frames if frames is not None or site is not None else []
        self._site = site

    def __reduce__(self) -> tuple[Any, ...]:  # the frames travel, never the engine
        return ToolRequest, (self.id, self.tool, self.params, self.problem, self.frames,
                             self.kind)


def _request_frames(request: ToolRequest) -> list[Frame]:
    frames = request._frames  # type: ignore[attr-defined]
    if frames is None:
        site, request._site = request._site, None  # type: ignore[attr-defined]
        frames = request._frames = site(request.id) if site is not None else []  # type: ignore[attr-defined]
    return frames  # type: ignore[no-any-return]


def _set_request_frames(request: ToolRequest, frames: list[Frame]) -> None:
    request._frames, request._site = frames, None  # type: ignore[attr-defined]


# `frames` stays a field of the dataclass (its __eq__ and __repr__ go through this
# property), read from the engine when first asked for (see the class).
ToolRequest.frames = property(  # type: ignore[assignment]
    _request_frames, _set_request_frames, doc="The script's call site, outermost first.")


@dataclass
class ToolReply:
    """The host's answer to one request: a result, or an error envelope (see bridge.envelope)."""

    id: int
    result: Any = None
    error: dict[str, Any] | None = None


# Every step carries only data, so that it can cross a pipe (pickled, or as JSON): the
# lines the script printed since the last step (``output``, in the order printed; the
# shared empty tuple when there are none, so that a tool round trip allocates nothing
# for it), and errors whose envelope refs are left for the host to resolve
# (bridge.envelope.resolve_refs).


@dataclass
class Suspended:
    """The script waits for these tool calls (Lua: always one; JS: one or more)."""

    requests: list[ToolRequest]
    output: tuple[str, ...] = ()


@dataclass
class Finished:
    """The script completed; ``result`` is JSON-like data."""

    result: Any = None
    output: tuple[str, ...] = ()


@dataclass(eq=False)
class Failed:
    """The script failed; ``error`` is already a unified error whose frames point at the script.

    ``problem`` is set when what failed is the script's result, which has no JSON form:
    ``error`` then says so for the host, and the host names the engine that was to receive
    it (``script/cross_engine_communication``, built from the problem).
    """

    error: SpellError
    output: tuple[str, ...] = ()
    problem: Problem | None = None

    def __eq__(self, other: object) -> bool:
        # errors are exceptions, equal only to themselves: a step compares by their data
        if not isinstance(other, Failed):
            return NotImplemented
        return (self.output == other.output and self.problem == other.problem
                and self.error.to_dict() == other.error.to_dict())


Step = Suspended | Finished | Failed

# See Engine.direct: the reply to a request, or None for "not at once".
DirectAnswer = Callable[[ToolRequest], ToolReply | None]


SANDBOX_HINT_START = "(this is polyspell's sandbox: "


def sandbox_hint(text: str) -> str:
    """The one line an error gets when a script ran into something the sandbox leaves out
    (every engine's, and the host's for modules): ``text`` says what, and what to do."""
    return f"{SANDBOX_HINT_START}{text})"


def crossing_error(problem: Problem, source: str, target: str) -> SpellError:
    """``script/cross_engine_communication``: a value of ``source``'s has no form ``target``
    can receive, as ``problem`` says (its message, and what was found there).

    The one way this error is made from a problem: the engines for a result that cannot
    reach Python (``target`` ``python``), the host for parameters or a result on their
    way between two engines.
    """
    return ScriptError.CrossEngineCommunication(
        from_engine=source, to_engine=target, error=problem.message,
        data_type=problem.data_type)


def did_not_fit(language: str, what: str, memory_mb: int,
                frames: list[Frame] | None = None) -> SpellError:
    """``resource/memory_exhaustion``: ``what`` the host handed a script (its args, a
    tool's result or error) did not fit in the ``memory_mb`` its engine may use.

    The one message of this failure, whichever engine (or worker process) refused it."""
    return ResourceError.MemoryExhaustion(
        location=language, available=memory_mb * 2**20, frames=frames or [],
        description=f"{what} did not fit in the {memory_mb} MiB of memory the script may "
                    f"use")


def protocol_violation(reason: str) -> SpellError:
    """``bridge/protocol_violation``: the host broke the step protocol (a reply to a request
    the engine is not waiting for, a call with no tools file loaded, a closed engine).

    Every engine fails a breach with this error, so the host sees one error for one fault.
    """
    return BridgeError.ProtocolViolation(reason=reason)


def misdirected(request: ToolRequest, reply: ToolReply) -> SpellError:
    """The protocol violation of a reply :attr:`Engine.direct` made for another request
    than the one the engine offered it (every engine that takes ``direct`` checks)."""
    return protocol_violation(
        f"the host answered request {request.id} with the reply to {reply.id}")


class Engine(ABC):
    """One sandboxed interpreter, running one script at a time.

    An engine takes only data (its limits and sandbox) and gives only data (steps): what
    scripts print comes in each step's ``output``, and the host resolves error refs.
    """

    spec: ClassVar[EngineSpec]  # the language it runs, as the registry knows it
    language: ClassVar[str]  # spec.name, set for each class that declares a spec
    extensions: ClassVar[tuple[str, ...]]  # spec.extensions, likewise

    # The patterns the engine's translator reads plain-string errors of older scripts
    # with (bridge.patterns); by default the process's registry, which users extend with
    # ``patterns.add(...)``. Set another registry on an engine to give it its own.
    patterns: PatternRegistry = process_patterns

    # The host's answer to a tool call that needs nothing of its loop between steps (a
    # plain tool's or tools-file function's: ScriptRun._direct in host/runner.py), set
    # while the host's loop runs the engine. An engine that takes it offers it each tool
    # call made alone, with nothing printed before it, and delivers the reply it gets in
    # the same step, running the script on; None sends the request out in a Suspended
    # step, as usual. A step's round through the host costs more than the call itself
    # (issue 17). An engine may ignore it (a worker process's: its tools are elsewhere).
    direct: DirectAnswer | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        spec = cls.__dict__.get("spec")
        if spec is not None:  # code reads engine.language: derived here, never written twice
            cls.language = spec.name
            cls.extensions = spec.extensions

    def __init__(self, *, limits: Limits = Limits(), sandbox: Sandbox = "constrained") -> None:
        self.limits = limits
        self.sandbox = sandbox

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

    @property
    def usable(self) -> bool:
        """Whether the engine can still run code: false once a limit (time, memory...) or
        a broken protocol ended it, or it was closed. A script error fails only its
        activation and leaves the engine usable."""
        return True

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
