"""One run of one script: drives its engine and answers its tool calls.

The conversation with the engine (see ``engines.base``) runs on one worker thread, the
engine's own: sync tools are called right there, without a thread hop, which is what
keeps a tool round trip within microseconds; async tools go to the host's event loop.
Every error a tool raises is decorated here, once, with the whole path: the script's
call site, a host frame for the boundary, and the tool's own Python frames.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread

import engines
from bridge import BridgeError, Frame, ScriptError, SpellError, ToolError
from bridge.envelope import error_envelope
from bridge.frames import is_internal
from bridge.pytraceback import attach_python_traceback, remember_source
from engines import Failed, Limits, Sandbox, Suspended, ToolInfo, ToolReply, ToolRequest
from host.tools import Tool, ToolRegistry, preview

# Seconds the host waits past the deadline for the engine to report the time limit itself
# (with the script line it stopped at) before it reports it without.
DEADLINE_GRACE = 0.25


class ScriptRun:
    """The state of one run: its engine, deadline, error refs and correlation id."""

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
        self._placed: set[int] = set()  # errors whose path through a boundary is set

    async def execute(self) -> Any:
        """Run the script to its end; its result, or the unified error it failed with."""
        self.deadline = time.monotonic() + self.limits.timeout
        with anyio.move_on_after(self.limits.timeout + DEADLINE_GRACE) as scope:
            outcome = await anyio.to_thread.run_sync(self._drive, abandon_on_cancel=True)
        if scope.cancelled_caught:  # stuck past the deadline, e.g. in a slow sync tool
            outcome = self._decorate(ScriptError.ResourceExhaustion(
                language=self.language, resource_type="time", limit=self.limits.timeout))
        if isinstance(outcome, SpellError):
            if any(frame.language != "python" for frame in outcome.frames):
                remember_source(self.filename, self.source)
                attach_python_traceback(outcome)
            raise outcome
        return outcome

    # -- on the engine's thread -----------------------------------------------------

    def _drive(self) -> Any:
        try:
            engine = engines.engine_class(self.language)(
                limits=self.limits, sandbox=self.sandbox, on_output=self.on_output,
                resolve_ref=self._refs.get)
        except SpellError as err:
            return err
        try:
            infos = [ToolInfo(t.name, t.description) for t in self.tools]
            step = engine.start(self.source, self.filename, self.args, infos, self.deadline)
            while isinstance(step, Suspended):
                replies = [self._answer(request) for request in step.requests]
                step = engine.resume(replies, self.deadline)
        except Exception as exc:  # a bug in an engine must still end as a unified error
            return self._decorate(SpellError.wrap(
                exc, "runtime", "internal_error",
                reason=f"{self.language} engine failed: {type(exc).__name__}: {exc}"))
        finally:
            engine.close()
        if isinstance(step, Failed):
            return self._decorate(step.error)
        return step.result

    def _answer(self, request: ToolRequest) -> ToolReply:
        tool = self.tools.get(request.tool)
        started = time.perf_counter()
        try:
            if tool is None:
                raise ToolError.NotFound(tool_name=request.tool)
            if request.problem is not None:
                raise ToolError.InvalidParameters(
                    tool_name=request.tool, validation_error=request.problem,
                    error_type="parse")
            result = self._call(tool, tool.validate(request.params))
            return ToolReply(request.id, result=to_script_data(result, self.language))
        except SpellError as err:
            error = err
        except Exception as exc:  # frames: where the tool failed; cause: the exception
            error = ToolError.wrap(
                exc, tool_name=request.tool, reason=f"{type(exc).__name__}: {exc}",
                parameters=preview(request.params),
                execution_time=time.perf_counter() - started)
        self._at_tool_boundary(error, request)
        return ToolReply(request.id, error=error_envelope(error, ref=self._ref))

    def _call(self, tool: Tool, params: Any) -> Any:
        args, kwargs = tool.arguments(params)
        if tool.timeout is None and not tool.is_async:  # the common case, kept short
            return tool.fn(*args, **kwargs)
        remaining = self.deadline - time.monotonic()
        if tool.is_async:
            return anyio.from_thread.run(self._call_async, tool, args, kwargs, remaining)
        if tool.timeout >= remaining:
            return tool.fn(*args, **kwargs)
        return _call_with_timeout(tool, args, kwargs)

    async def _call_async(self, tool: Tool, args: tuple, kwargs: dict, remaining: float) -> Any:
        limit = remaining if tool.timeout is None else min(tool.timeout, remaining)
        with anyio.move_on_after(limit) as scope:
            return await tool.fn(*args, **kwargs)
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
        """Give a tool's error the whole path and the boundary's context, once per run.

        The path is the script's call site, a host frame for the boundary, then the error's
        own frames: where the tool raised it, or the path it brought from elsewhere.
        """
        from bridge.context import CallFrame, ExecutionTrace, FileLocation, ToolComponent

        if id(err) not in self._placed:
            self._placed.add(id(err))
            boundary = Frame("host", "<tool call>", None, None, request.tool)
            own = [f for f in err.frames if not is_internal(f)]
            err.frames = [*request.frames, boundary, *own]
        if err.context.correlation_id is None:
            site = request.frames[-1] if request.frames else None
            err.context = err.context.model_copy(update={
                "correlation_id": self.correlation_id,
                "component": ToolComponent(tool_name=request.tool),
                "operation": f"tool call from {self.filename}",
                "execution_trace": ExecutionTrace(call_stack=[CallFrame(
                    function_name=request.tool,
                    file_location=site and FileLocation(file=site.file, line=site.line,
                                                        column=site.column),
                    parameters=preview(request.params))]),
            })

    def _decorate(self, err: SpellError) -> SpellError:
        from bridge.context import ScriptComponent

        if err.context.correlation_id is None:
            err.context = err.context.model_copy(update={
                "correlation_id": self.correlation_id,
                "component": ScriptComponent(language=self.language, script_id=self.filename),
                "operation": f"run {self.filename}",
            })
        return err


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


def to_script_data(value: Any, language: str, path: str = "result") -> Any:
    """A tool's result as JSON-like data a script can hold; ``bridge/type_conversion`` if not."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(type(value), "model_dump"):  # a pydantic model (not imported unless used)
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _unconvertible(f"a {type(key).__name__} key", language, f"{path}")
            out[key] = to_script_data(item, language, f"{path}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [to_script_data(item, language, f"{path}[{i}]") for i, item in enumerate(value)]
    raise _unconvertible(type(value).__name__, language, path)


def _unconvertible(data_type: str, language: str, path: str) -> SpellError:
    return BridgeError.TypeConversion(
        data_type=data_type, from_language="python", to_language=language,
        reason=f"{path} is a {data_type}; only null, booleans, numbers, strings, "
               f"lists and string-keyed dicts cross")


