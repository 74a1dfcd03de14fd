"""One run of one script: drives its engine and answers its tool calls.

The conversation with the engine (see ``engines.base``) runs on one thread, the run's
own: sync tools are called right there, without a thread hop, which is what keeps a tool
round trip within microseconds; async tools go to the host's event loop. That thread is
a daemon thread: once the host has given up on a run (its deadline passed, its caller was
cancelled, Ctrl-C), the run's engines are told to stop, and what cannot stop (a JS busy
loop until its CPU limit, a long Lua C call, a sync tool that does not return) finishes
in the background without keeping the process alive.
Every error a tool raises is decorated here, once, with the whole path: the script's
call site, a host frame for the boundary, and the tool's own Python frames.
"""

from __future__ import annotations

import atexit
import contextvars
import math
import re
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

import engines
from bridge import BridgeError, Frame, ScriptError, SpellError, ToolError
from bridge.data import MAX_DEPTH
from bridge.envelope import error_envelope
from bridge.errors import describe_exception
from bridge.frames import is_internal
from bridge.pytraceback import attach_python_traceback
from engines import (
    Engine,
    Failed,
    Finished,
    Limits,
    Sandbox,
    Step,
    Suspended,
    ToolInfo,
    ToolReply,
    ToolRequest,
)
from host.tools import ScriptTool, Tool, ToolRegistry, load_library, preview

# Seconds the host waits past the deadline for the engine to report the time limit itself
# (with the script line it stopped at) before it reports it without.
DEADLINE_GRACE = 0.25
# Tools files calling each other (JS -> Lua -> JS ...) nest no deeper than this.
MAX_TOOL_DEPTH = 64


class ScriptRun:
    """The state of one run: its engines, deadline, error refs and correlation id.

    Tools files (:class:`ScriptTool`) get an engine each, on the run's thread, loaded at
    their first call and closed with the run; a call into one is driven like the script
    itself, nested inside the tool call that made it.
    """

    def __init__(
        self,
        *,
        source: str,
        language: str,
        filename: str,
        args: Any,
        tools: ToolRegistry,
        limits: Limits,
        sandbox: Sandbox,
        on_output: Callable[[str], None],
    ) -> None:
        self.source = source
        self.language = language
        self.filename = filename
        self.args = args
        self.tools = tools
        self.limits = limits
        self.sandbox = sandbox
        self.on_output = on_output
        self.correlation_id = uuid.uuid4().hex
        self.deadline = math.inf
        self._refs: dict[int, SpellError] = {}
        self._placed: dict[int, int] = {}  # error id -> the depth of its outermost boundary
        self._libraries: dict[str, Engine] = {}  # tools file -> its engine in this run
        self._depth = 0  # tool calls into tools files in progress
        self._cancel: SpellError | None = None
        self._cancel_told = False  # the script has been handed the cancellation
        self._async_scope: anyio.CancelScope | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None  # the host's event loop
        self._engines: list[Engine] = []  # every engine of the run, to stop them
        self._ended = threading.Event()  # the run's thread is done, or the host gave up
        self._outcome: Any = None  # what _drive came to (an _Escaped if it raised)
        self._thread: threading.Thread | None = None  # the run's thread, once started
        self._in_sync_tool = False  # the run's thread is in a sync Python tool
        self._in_async_tool = False  # the run's thread waits for an async tool
        self._given_up = False

    def cancel(self, error: SpellError) -> None:
        """Stop the run with ``error`` (e.g. ``async_execution/task_cancelled``).

        Call it from the event loop, at any time. The error is raised in the script at its
        next tool call (after its ``on_cancel`` handlers / ``signal`` listeners), so its
        cleanup runs; an async tool in progress is cancelled. The run then ends with this
        error even if the script swallows it. A script that never calls a tool again runs
        until its end or its time limit.
        """
        if self._cancel is None:
            self._cancel = error
            if self._async_scope is not None:
                self._async_scope.cancel()

    @property
    def cancelled(self) -> SpellError | None:
        """The error the run was cancelled with, if it was."""
        return self._cancel

    async def execute(self) -> Any:
        """Run the script to its end; its result, or the unified error it failed with.

        The script runs on a daemon thread of the run's own. If this is cancelled (or
        interrupted) before the run ends, or the run is stuck past its deadline, the
        host gives up on it at once: see :meth:`_give_up`.
        """
        self.deadline = time.monotonic() + self.limits.timeout
        self._token = anyio.lowlevel.current_token()
        with anyio.move_on_after(self.limits.timeout + DEADLINE_GRACE) as scope:
            try:
                # an anyio worker waits for the run's thread: anyio's thread limiter and
                # its way back to the event loop stay as they are for every backend
                outcome = await anyio.to_thread.run_sync(self._wait_for_run_thread,
                                                         abandon_on_cancel=True)
            finally:
                self._give_up()
        if scope.cancelled_caught:  # stuck past the deadline, e.g. in a slow sync tool
            outcome = self._decorate(ScriptError.ResourceExhaustion(
                language=self.language, resource_type="time", limit=self.limits.timeout))
        if isinstance(outcome, _Escaped):
            raise outcome.exception
        if isinstance(outcome, SpellError):
            _preserve_stack(outcome)
            if any(frame.language != "python" for frame in outcome.frames):
                # only text this run loaded is ever shown as a script frame's source
                sources = {tool.filename: tool.source for tool in self.tools
                           if isinstance(tool, ScriptTool)}
                sources[self.filename] = self.source
                attach_python_traceback(outcome, sources)
            raise outcome
        return outcome

    def _give_up(self) -> None:
        """Stop waiting for the run, and stop what of it can be stopped (on the event loop).

        Nothing is waited for: the engines are told to stop (Lua within about 20 ms; JS
        before its next step, a busy loop only at its own CPU limit), an async tool in
        progress is cancelled, a sync tool runs to its end and its result is dropped.
        The run's thread is a daemon thread, so whatever still runs keeps no process alive.
        """
        if self._ended.is_set():  # the run's thread is done: nothing to stop
            return
        self._given_up = True
        self._ended.set()  # the anyio worker waiting for the run is free at once
        stopping = [engine.stop() for engine in list(self._engines)]
        if self._async_scope is not None:
            self._async_scope.cancel()
        thread = self._thread
        if thread is not None and (self._in_async_tool or (any(stopping)
                                                           and not self._in_sync_tool)):
            _stopping.add(thread)  # it ends in a moment: interpreter exit waits for it

    # -- on the run's threads ------------------------------------------------------------

    def _wait_for_run_thread(self) -> Any:
        """Start the run's thread and wait for its outcome (on an anyio worker thread).

        The run's thread, not anyio's worker, runs the engine: anyio's asyncio workers are
        not daemon threads, so interpreter exit would wait for a script that no longer
        matters. This worker only waits, and :meth:`_give_up` frees it.
        """
        context = contextvars.copy_context()  # e.g. which plan task prints
        thread = self._thread = threading.Thread(
            target=context.run, args=(self._run_thread,), name=f"polyspell run {self.filename}",
            daemon=True)
        thread.start()
        self._ended.wait()
        return self._outcome

    def _run_thread(self) -> None:
        try:
            self._outcome = self._drive()
        except BaseException as exc:  # handed to the waiting task, as anyio's worker did
            self._outcome = _Escaped(exc)
        finally:
            self._ended.set()

    def _drive(self) -> Any:
        if self._cancel is not None:  # cancelled before it began
            return self._decorate(self._cancel)
        try:
            engine = self._engine(self.language)
        except SpellError as err:
            return err
        try:
            step = engine.start(self.source, self.filename, self.args, self._infos(),
                                self.deadline)
            step = self._converse(engine, step)
        except Exception as exc:  # a bug in an engine must still end as a unified error
            why = describe_exception(exc, qualified=False)
            return self._decorate(SpellError.wrap(
                exc, "runtime", "internal_error", reason=f"{self.language} engine failed: {why}"))
        finally:
            engine.close()
            for library in self._libraries.values():
                library.close()
        if self._given_up:  # nobody reads the outcome
            return None
        if self._cancel is not None:  # even if the script swallowed it and went on
            return self._decorate(self._cancel)
        if isinstance(step, Failed):
            return self._decorate(step.error)
        return step.result

    def _engine(self, language: str) -> Engine:
        engine = engines.engine_class(language)(
            limits=self.limits, sandbox=self.sandbox, on_output=self._output,
            resolve_ref=self._refs.get)
        self._engines.append(engine)
        if self._given_up:  # given up on while this engine was being made
            engine.stop()
        return engine

    def _output(self, line: str) -> None:
        if not self._given_up:  # a run already reported (or interrupted) prints no more
            self.on_output(line)

    def _infos(self) -> list[ToolInfo]:
        return [ToolInfo(t.name, t.description) for t in self.tools]

    def _converse(self, engine: Engine, step: Step) -> Finished | Failed:
        """Answer the engine's tool calls until the script (or the called function) ends."""
        while isinstance(step, Suspended):
            if self._given_up:  # no tool runs for a run nobody waits for
                return Failed(ScriptError.ResourceExhaustion(
                    language=engine.language, resource_type="time", limit=self.limits.timeout))
            if self._cancel_told:  # it was told and still calls tools: stop it here
                return Failed(self._cancel)  # type: ignore[arg-type]
            replies = [self._answer(request, engine.language) for request in step.requests]
            step = engine.resume(replies, self.deadline)
        return step

    def _answer(self, request: ToolRequest, caller: str) -> ToolReply:
        tool = self.tools.get(request.tool)
        started = time.perf_counter()
        try:
            if self._cancel is not None:
                self._cancel_told = True
                raise self._cancel
            if tool is None:
                raise ToolError.NotFound(tool_name=request.tool)
            if isinstance(tool, ScriptTool):
                result = self._call_script(tool, request, caller)
            else:
                if request.problem is not None:
                    raise ToolError.InvalidParameters(
                        tool_name=request.tool, validation_error=request.problem,
                        error_type="parse")
                result = to_script_data(self._call(tool, tool.validate(request.params)), caller)
            return ToolReply(request.id, result=result)
        except SpellError as err:
            error = err
        except BaseException as exc:  # frames: where the tool failed; cause: the exception
            if _ends_the_run(exc):
                raise
            error = ToolError.wrap(
                exc, tool_name=request.tool, reason=describe_exception(exc, qualified=False),
                parameters=preview(request.params),
                execution_time=time.perf_counter() - started)
        self._at_tool_boundary(error, request)
        return ToolReply(request.id, error=error_envelope(error, ref=self._ref))

    def _call_script(self, tool: ScriptTool, request: ToolRequest, caller: str) -> Any:
        """Call a tools file's function in its engine, answering its own tool calls."""
        if request.problem is not None:
            raise ScriptError.CrossEngineCommunication(
                from_engine=caller, to_engine=tool.language, error=request.problem,
                data_type=_data_type(request.problem))
        if self._depth >= MAX_TOOL_DEPTH:
            raise ScriptError.ResourceExhaustion(
                language=tool.language, resource_type="stack", current_usage=self._depth,
                limit=MAX_TOOL_DEPTH)
        engine = self._libraries.get(tool.filename)
        if engine is None:
            engine = self._libraries[tool.filename] = self._engine(tool.language)
            load_library(engine, tool.source, tool.filename, self._infos(), self.deadline)
        self._depth += 1
        try:
            step = self._converse(engine, engine.call(tool.function, request.params,
                                                      self.deadline))
        finally:
            self._depth -= 1
        if isinstance(step, Failed):
            err = step.error
            if (err.code == "script/cross_engine_communication"
                    and err.fields["to_engine"] == "python"
                    and err.context.correlation_id is None):  # its result has no JSON form
                err = ScriptError.CrossEngineCommunication(
                    from_engine=tool.language, to_engine=caller, error=err.fields["error"],
                    data_type=err.fields["data_type"], frames=err.frames)
            raise self._decorate(err, tool)
        return _crossing(step.result, tool.language, caller)

    def _call(self, tool: Tool, params: Any) -> Any:
        args, kwargs = tool.arguments(params)
        if tool.is_async:
            self._in_async_tool = True  # _give_up cancels it
            try:
                return anyio.from_thread.run(self._call_async, tool, args, kwargs,
                                             self.deadline - time.monotonic(),
                                             token=self._token)
            except _Raised as raised:
                exc = raised.exc
            finally:
                self._in_async_tool = False
            raise exc  # outside the except clause: its __context__ stays the tool's
        self._in_sync_tool = True  # nothing stops this thread before the tool returns
        try:
            if tool.timeout is None:  # the common case, kept short
                return tool.fn(*args, **kwargs)
            if tool.timeout >= self.deadline - time.monotonic():
                return tool.fn(*args, **kwargs)
            return _call_with_timeout(tool, args, kwargs)
        finally:
            self._in_sync_tool = False

    async def _call_async(self, tool: Tool, args: tuple, kwargs: dict, remaining: float) -> Any:
        limit = remaining if tool.timeout is None else min(tool.timeout, remaining)
        with anyio.move_on_after(limit) as scope:
            self._async_scope = scope  # cancel() and _give_up() stop the tool too
            if self._cancel is not None or self._given_up:
                scope.cancel()
            try:
                return await tool.fn(*args, **kwargs)
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:  # even SystemExit: it must not stop the event loop
                raise _Raised(exc) from None
            finally:
                self._async_scope = None
        if self._cancel is not None:
            raise self._cancel
        if scope.cancelled_caught and tool.timeout is not None and tool.timeout <= remaining:
            raise ToolError.Timeout(tool_name=tool.name, duration=tool.timeout)
        # the run's own deadline: the engine stops the script at its next step
        raise ScriptError.ResourceExhaustion(language=self.language, resource_type="time",
                                             limit=self.limits.timeout)

    def _ref(self, err: SpellError) -> int:
        ref = id(err)
        self._refs[ref] = err
        return ref

    # -- decoration -----------------------------------------------------------------

    def _at_tool_boundary(self, err: SpellError, request: ToolRequest) -> None:
        """Give a tool's error the path through this boundary, and the boundary's context.

        The path is the calling script's call site, a host frame for the boundary, then
        the error's own frames: where the tool raised it, or the path it brought from a
        deeper boundary (a tools file's function calling a tool). Each boundary is added
        once per error, so an error rethrown through several levels gets each level once.
        """
        from bridge.context import CallFrame, ExecutionTrace, FileLocation, ToolComponent

        placed = self._placed.get(id(err))
        if placed is not None and placed <= self._depth:
            return  # already has its path from here inwards
        self._placed[id(err)] = self._depth
        boundary = Frame("host", "<tool call>", None, None, request.tool)
        own = [f for f in err.frames if not is_internal(f)]
        err.frames = [*request.frames, boundary, *own]
        site = request.frames[-1] if request.frames else None
        step = CallFrame(function_name=request.tool,
                         file_location=site and FileLocation(file=site.file, line=site.line,
                                                             column=site.column),
                         parameters=preview(request.params))
        context = err.context
        if context.correlation_id is None:  # the innermost boundary: where it happened
            err.context = context.model_copy(update={
                "correlation_id": self.correlation_id,
                "component": ToolComponent(tool_name=request.tool),
                "operation": f"tool call from {site.file if site else self.filename}",
                "execution_trace": ExecutionTrace(call_stack=[step]),
            })
        else:  # an outer boundary: the call stack grows outwards
            trace = context.execution_trace
            err.context = context.model_copy(update={"execution_trace": trace.model_copy(
                update={"call_stack": [step, *trace.call_stack]})})

    def _decorate(self, err: SpellError, tool: ScriptTool | None = None) -> SpellError:
        """Give an error that arose in a script (or in ``tool``'s file) the run's context."""
        from bridge.context import ScriptComponent

        if err.context.correlation_id is None:
            language, filename = (self.language, self.filename) if tool is None else (
                tool.language, tool.filename)
            err.context = err.context.model_copy(update={
                "correlation_id": self.correlation_id,
                "component": ScriptComponent(language=language, script_id=filename),
                "operation": f"run {filename}" if tool is None else f"call {tool.function}",
            })
        return err


class _Raised(Exception):
    """Carries what an async tool raised, whatever it is (``SystemExit``,
    ``KeyboardInterrupt``...), from the event loop to the engine's thread, where
    :meth:`ScriptRun._answer` treats it as any tool's exception."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__()
        self.exc = exc


def _ends_the_run(exc: BaseException) -> bool:
    """Whether an exception out of a tool call ends the run rather than fail the call.

    A tool's exception, of any class (``SystemExit``, ``GeneratorExit``, a bare
    ``BaseException``...), is the tool's failure, which the script can catch; only
    ``KeyboardInterrupt`` (Ctrl-C, or a tool raising it) ends the run and leaves
    ``Host.run`` as it leaves any Python code, and so does the event loop cancelling the
    run (trio's ``Cancelled``; asyncio's reaches this thread as an ``Exception``).
    """
    if isinstance(exc, KeyboardInterrupt):
        return True
    trio = sys.modules.get("trio")
    return trio is not None and isinstance(exc, trio.Cancelled)


# The threads of runs given up on that were told to stop and end in a moment (a Lua
# script stops within about 20 ms): interpreter exit waits for them, EXIT_WAIT seconds
# at most in all. A daemon thread still running Python code when the interpreter
# finalizes is ended where it stands, and where that is inside pydantic-core (building
# the run's error) the process aborts ("FATAL: exception not rethrown").
_stopping: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
EXIT_WAIT = 1.0


def _wait_at_exit() -> None:
    ends = time.monotonic() + EXIT_WAIT
    for thread in list(_stopping):
        thread.join(max(0.0, ends - time.monotonic()))


atexit.register(_wait_at_exit)


class _Escaped:
    """An exception that escaped ``_drive`` on the run's thread, for the awaiting task."""

    def __init__(self, exception: BaseException) -> None:
        self.exception = exception


def _preserve_stack(err: SpellError) -> None:
    """Keep the path and the engine's own stack text in the context (the seed's
    StackTracePreserver): ``execution_path`` (every frame, outermost first, as text),
    ``preserved_stack_trace`` (a script error's stack as the engine wrote it) and
    ``source_engine`` (the innermost script frame's language and file).
    """
    metadata = err.context.metadata
    if "execution_path" in metadata:  # preserved by an earlier run it went through
        return
    metadata = dict(metadata)
    metadata["execution_path"] = [f"{f.language} {f.location} in {f.function or '?'}"
                                  for f in err.frames]
    stack = err.fields.get("stack_trace")
    if isinstance(stack, str) and stack:
        metadata["preserved_stack_trace"] = stack
    script = next((f for f in reversed(err.frames) if f.language in ("lua", "javascript")),
                  None)
    if script is not None:
        metadata["source_engine"] = {"language": script.language, "script": script.file}
    err.context = err.context.model_copy(update={"metadata": metadata})


def _call_with_timeout(tool: Tool, args: tuple, kwargs: dict) -> Any:
    """Run a sync tool on a thread of its own and stop waiting after its timeout.

    Python cannot stop a thread: a tool that overruns finishes in the background and
    its result is dropped.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = tool.fn(*args, **kwargs)
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=target, name=f"polyspell-tool-{tool.name}", daemon=True)
    worker.start()
    worker.join(tool.timeout)
    if worker.is_alive():
        raise ToolError.Timeout(tool_name=tool.name, duration=float(tool.timeout or 0))
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")


def _crossing(value: Any, source: str, target: str) -> Any:
    """A tools file's result on its way to another engine, or cross_engine_communication.

    The engines hold what JSON holds; a float that is not finite only passes between two
    Lua engines (nested in a result it has no JSON form for JavaScript).
    """
    if source == target == "lua":
        return value
    problem = not_json_like(value, "result")
    if problem is not None:  # from an engine, only a float that is not finite
        where, piece, why = problem
        if isinstance(piece, float):
            why = f"is not a finite number, which {target} cannot receive"
        raise ScriptError.CrossEngineCommunication(
            from_engine=source, to_engine=target, data_type=type(piece).__name__,
            error=f"{where} {why}")
    return value


def not_json_like(value: Any, path: str, depth: int = 0) -> tuple[str, Any, str] | None:
    """Where in ``value`` the first piece that has no JSON form is, that piece, and why.

    JSON-like: None, booleans, ints, finite floats, strings, lists (and tuples) and
    mappings with string keys, nested at most ``bridge.data.MAX_DEPTH`` levels. A mapping
    with another key, or a list or mapping nested deeper, is itself the piece.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, value, "is not a finite number")
    if isinstance(value, (Mapping, list, tuple)) and depth >= MAX_DEPTH:
        return path, value, f"is nested more than {MAX_DEPTH} levels deep"
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return path, value, f"has a key that is not a string ({key!r})"
            found = not_json_like(item, f"{path}.{key}", depth + 1)
            if found is not None:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = not_json_like(item, f"{path}[{index}]", depth + 1)
            if found is not None:
                return found
        return None
    return path, value, f"is a {type(value).__name__}"


def _data_type(problem: str) -> str:
    """The kind of value a script's "params.f is a function" problem is about."""
    if problem.startswith("cyclic"):
        return "cycle"
    match = re.search(r" is an? ([\w ]+?)(?:$|,| \(| not)", problem)
    if match:
        return match.group(1)
    return "key" if "key" in problem else "data"


def to_script_data(value: Any, language: str, path: str = "result", depth: int = 0) -> Any:
    """A tool's result as JSON-like data a script can hold; ``bridge/type_conversion`` if not.

    Lists and mappings nested more than ``bridge.data.MAX_DEPTH`` levels deep are
    ``script/cross_engine_communication``, as the engines refuse them themselves.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(type(value), "model_dump"):  # a pydantic model (not imported unless used)
        return to_script_data(value.model_dump(mode="json"), language, path, depth)
    if isinstance(value, (Mapping, list, tuple)) and depth >= MAX_DEPTH:
        raise ScriptError.CrossEngineCommunication(
            from_engine="python", to_engine=language, data_type=type(value).__name__,
            error=f"{path} is nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _unconvertible(f"a {type(key).__name__} key", language, f"{path}")
            out[key] = to_script_data(item, language, f"{path}.{key}", depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [to_script_data(item, language, f"{path}[{i}]", depth + 1)
                for i, item in enumerate(value)]
    raise _unconvertible(type(value).__name__, language, path)


def _unconvertible(data_type: str, language: str, path: str) -> SpellError:
    return BridgeError.TypeConversion(
        data_type=data_type, from_language="python", to_language=language,
        reason=f"{path} is a {data_type}; only null, booleans, numbers, strings, "
               f"lists and string-keyed dicts cross")


