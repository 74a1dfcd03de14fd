"""One run of one script: drives its engine and answers its tool calls.

The conversation with the engine (see ``engines.base``) runs on one thread, the run's
own. Each tool call goes through the run's pipeline (:mod:`host.calls`); sync tools are
called right there on the run's thread, without a thread hop, which is what keeps a tool
round trip within microseconds; async tools go to the host's event loop. That thread is
a daemon thread: once the host has given up on a run (its deadline passed, its caller was
cancelled, Ctrl-C), the run's engines are told to stop, and what cannot stop (a JS busy
loop until its CPU limit, a long Lua C call, a sync tool that does not return) finishes
in the background without keeping the process alive.
Every error a tool raises is decorated, once per boundary, with the whole path: the
script's call site, a host frame for the boundary, and the tool's own Python frames
(:meth:`ScriptRun.at_boundary`, applied by the pipeline's ``boundary`` layer).
"""

from __future__ import annotations

import atexit
import contextvars
import functools
import inspect
import math
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

import engines
from bridge import ConfigurationError, Frame, ScriptError, SpellError, ToolError
from bridge.envelope import error_envelope, resolve_refs
from bridge.errors import describe_exception
from bridge.names import closest, did_you_mean, listed
from bridge.pytraceback import attach_python_traceback
from bridge.randomness import random_bits
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
from engines.base import crossing_error
from host.calls import (
    DeadlineReached,
    Layer,
    Timeouts,
    ToolCall,
    boundary,
    boundary_error,
    pipeline,
    script_data,
)
from host.control import RunControl
from host.data import crossing, to_script_data
from host.history import RecoveryHistory, recovery_event
from host.lines import log_script_line
from host.steer import AskHuman, StopRun
from host.tools import (
    STATE_EXPORT,
    STATE_RESTORE,
    ScriptTool,
    Tool,
    ToolRegistry,
    build_engine,
    load_library,
    preview,
    steered,
)

if TYPE_CHECKING:  # pydantic is imported when the first policy is made
    from bridge.context import ErrorContext
    from host.hooks import Dispatcher
    from host.libraries import Libraries, Root
    from host.recovery import Breakers, ToolRecovery
    from host.recovery.degrade import DegradationState
    from host.recovery.script import ScriptRecovery
    from host.steer import StopOutcome

# Seconds the host waits past the deadline for the engine to report the time limit itself
# (with the script line it stopped at) before it reports it without.
DEADLINE_GRACE = 0.25
# Events kept in a run's recovery history (run.recovery); later ones are only counted.
# Tools files calling each other (JS -> Lua -> JS ...) nest no deeper than this.
MAX_TOOL_DEPTH = 64


def _random_hex_id() -> str:
    """What ``uuid.uuid4().hex`` gives (128 random bits as a version 4 UUID), without
    importing uuid, which imports platform: a run's start does not pay for them."""
    raw = bytearray(random_bits(64).to_bytes(8, "big") + random_bits(64).to_bytes(8, "big"))
    raw[6] = raw[6] & 0x0F | 0x40  # the version
    raw[8] = raw[8] & 0x3F | 0x80  # the variant (RFC 4122)
    return raw.hex()


class EngineFactory(Protocol):
    """Makes the engine for a language with a run's limits and sandbox
    (``Host(engine_factory=...)``; the default is :func:`engines.make_engine`)."""

    def __call__(self, language: str, *, limits: Limits, sandbox: Sandbox) -> Engine: ...


# Errors a run remembers having handed to its scripts, to give back the very error when one
# is rethrown (see ScriptRun._ref); the oldest are forgotten past this many.
MAX_HANDED_ERRORS = 1024
MAX_LISTED = 200  # tool names a tool/not_found error's fields carry at most

class ScriptRun:
    """One run: its engines, deadline, control, error refs and correlation id.

    Tools files (:class:`ScriptTool`) get an engine each, on the run's thread, made at
    their first call and closed with the run (or thrown away and made again: a timeout,
    a restart); a call into one is driven like the script itself, nested inside the tool
    call that made it. Every tool call goes through the
    run's pipeline (:mod:`host.calls`).
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
        on_output: Callable[[str], None] | None,
        engine_factory: EngineFactory = engines.make_engine,
        layers: Sequence[Layer] = (),
        recovery: Mapping[str, ToolRecovery] | None = None,
        breakers: Breakers | None = None,
        caches: dict[str, Any] | None = None,
        degradation: DegradationState | None = None,
        on_human_input: Callable[[str], Any] | None = None,
        hooks: Dispatcher | None = None,
        libraries: Libraries | None = None,
        library_roots: Sequence[Root] = (),
    ) -> None:
        self.source = source
        self.language = language
        self.filename = filename
        self.args = args
        self.tools = tools
        self.limits = limits
        self.sandbox = sandbox
        self.on_output = on_output
        self.engine_factory = engine_factory
        self.correlation_id = _random_hex_id()
        self.task_id: str | None = None  # set by a coordinator: the task and plan it runs
        self.plan_id: str | None = None
        self.deadline = math.inf
        self.control = RunControl()
        self.layers = list(layers)
        self.recovery_policies = recovery or {}
        self.breakers = breakers  # the host's circuit breakers, shared by its runs
        self.caches = {} if caches is None else caches  # the host's fallback caches
        # what recovery did in this run: events, bounded (see host.history)
        self.recovery = RecoveryHistory()
        self.degradation = degradation  # the host's degradation levels, if it has them
        self.cleanup_errors: list[SpellError] = []  # what the run's cleanups raised
        # tool -> {why it answered degraded (an error code, "level <name>"): times}
        self.degraded_reasons: dict[str, dict[str, int]] = {}
        self.failed_fast: SpellError | None = None  # a fail-fast tool's error that stopped it
        # who answers a tool's AskHuman (see host.steer); None: no one
        self.on_human_input = on_human_input
        self.stopped: StopOutcome | None = None  # a tool's StopRun that ended the run
        self.hooks = hooks  # the host's hooks (host.hooks), None when it has none
        # the hooks that ran for the run itself (not for one tool call): its error's path
        self.hook_path: list[dict[str, Any]] = []
        self.tool_times: Any = None  # by tool, for run_finished observers
        if hooks is not None:
            from host.hooks.layer import ToolTimes

            self.tool_times = ToolTimes()
        self._cancelled = False  # cancel() stopped it (for cancellation_finished)
        self._cleanups: list[Callable[[SpellError | None], Any]] = []
        self._paths: dict[str, Callable[[ToolCall], Any]] = {}  # tool name -> its pipeline
        # tool name -> the tool, for the tools whose pipeline is only the boundary (see _plain)
        self._plain_tools: dict[str, tuple[Tool, Any]] = {}  # and its kwargs_validator
        self._plain_functions: dict[str, ScriptTool] = {}  # tools files' (see _plain_call)
        # ref -> the error handed out under it, oldest first (an OrderedDict: forgetting the
        # oldest is O(1), where a dict's first key is found past every one removed before)
        self._refs: OrderedDict[int, SpellError] = OrderedDict()
        self._ref_of: dict[int, int] = {}  # id(error) -> its ref (the error is in _refs)
        self._libraries: dict[str, Engine] = {}  # tools file -> its engine in this run
        self._active: dict[str, int] = {}  # tools file -> calls into it in progress
        self._restarts: dict[str, int] = {}  # tools file -> restarts by a Restart policy
        self._reloads: dict[str, int] = {}  # tools file -> engines of it thrown away
        self._timed_out: set[str] = set()  # tools files whose engine a timeout stopped
        self._ended: dict[str, str] = {}  # tools file -> the code of what ended its engine
        # the tools files whose state is kept across restarts (Restart(state="keep") on one
        # of their functions), and the state each exported after its last good call
        self._keeps = _keeping(tools, self.recovery_policies)
        self._kept: dict[str, Any] = {}
        self._bound = math.inf  # the deadline of the innermost tools-file call (or the run's)
        self._depth = 0  # tool calls into tools files in progress
        self._token: anyio.lowlevel.EventLoopToken | None = None  # the host's event loop
        self._engines: list[Engine] = []  # every engine of the run, to stop them
        self._outcome: Any = None  # what _drive came to (an _Escaped if it raised)
        self._thread: threading.Thread | None = None  # the run's thread, once started
        self._script_recovery: ScriptRecovery | None = None  # recovery.retry/fallback
        # require: the host's libraries (their cache), the roots this run searches in
        # order, and the modules it loaded (file name -> text: shown in tracebacks)
        self.libraries = libraries
        self.library_roots = list(library_roots)
        self.modules: dict[str, str] = {}
        self._roots_of: dict[str, list[Root]] = {}  # tools file -> its roots

    def cancel(self, error: SpellError, *, announce: bool = True) -> None:
        """Stop the run with ``error`` (e.g. ``async_execution/task_cancelled``).

        Call it from the event loop, at any time. The error is raised in the script at its
        next tool call (after its ``on_cancel`` handlers / ``signal`` listeners), so its
        cleanup runs; an async tool in progress is cancelled. The run then ends with this
        error even if the script swallows it. A script that never calls a tool again runs
        until its end or its time limit. The first reason given wins.

        ``cancellation_started`` observers are told at once, ``cancellation_finished``
        observers as the cancelled run ends. With ``announce`` false they are not: the
        caller fires them itself (the coordinator, once per task, see
        :mod:`host.hooks.points`).
        """
        first = self.control.request_stop(error)
        hooks = self.hooks
        if first and hooks is not None and announce:
            self._cancelled = True
            if hooks.has("cancellation_started"):
                from host.hooks import CancellationContext

                hooks.observe("cancellation_started",
                              CancellationContext(self.correlation_id, error), self.hook_path,
                              self._token)

    @property
    def cancelled(self) -> SpellError | None:
        """The error the run was cancelled with, if it was."""
        return self.control.reason

    @property
    def degraded(self) -> list[str]:
        """The tools that answered degraded in this run (``degraded`` events of its
        recovery history; ``degraded_reasons`` counts why, even past the history's cap),
        in the order they first did."""
        return list(self.degraded_reasons)

    def on_cleanup(self, fn: Callable[[SpellError | None], Any]) -> Callable[..., Any]:
        """Register a cleanup, ``fn(error)``: run once when the run ends, however it ends
        (``error``: the unified error it failed with, the exception that ended it, or
        None when it succeeded), the last registered first, before the run's
        result or error leaves :meth:`execute`. ``fn`` may be async. A cleanup that raises
        does not stop the others: its error is kept in ``run.cleanup_errors`` and, when the
        run failed, in its error's ``context.metadata["cleanup_errors"]`` (the run's own
        error is the one raised); when the run succeeded, the first such error is raised
        in place of the result."""
        if not callable(fn):
            raise ConfigurationError.InvalidValue(key="on_cleanup", value=repr(fn)[:200],
                                                  reason="a cleanup must be callable")
        self._cleanups.append(fn)
        return fn

    async def _clean_up(self, error: BaseException | None) -> None:
        """Run the cleanups (once, last first), shielded from the caller's cancellation."""
        cleanups, self._cleanups = self._cleanups[::-1], []
        with anyio.CancelScope(shield=True):
            for fn in cleanups:
                try:
                    outcome = fn(error)
                    if inspect.isawaitable(outcome):
                        await outcome
                except Exception as exc:  # kept; never masks the run's own outcome
                    self.cleanup_errors.append(SpellError.wrap(exc))
        if self.cleanup_errors and isinstance(error, SpellError):
            metadata = {**error.context.metadata,
                        "cleanup_errors": [e.to_dict() for e in self.cleanup_errors]}
            error.context = error.context.model_copy(update={"metadata": metadata})

    async def execute(self) -> Any:
        """Run the script to its end; its result, or the unified error it failed with.

        The script runs on a daemon thread of the run's own. If this is cancelled (or
        interrupted) before the run ends, or the run is stuck past its deadline, the
        host gives up on it at once: see :meth:`_give_up`. The run's cleanups
        (:meth:`on_cleanup`) run before its result or error leaves.
        """
        if self.hooks is not None:
            return await self._execute_hooked(self.hooks)
        return await self._execute_cleaned()

    async def _execute_cleaned(self) -> Any:
        if self.degradation is not None:
            self.degradation.running(self)
        try:
            result = await self._execute()
        except BaseException as exc:
            if self._cleanups:
                await self._clean_up(exc)
            raise
        finally:
            if self.degradation is not None:
                self.degradation.ended(self)
        if self._cleanups:
            await self._clean_up(None)
            if self.cleanup_errors:
                raise self.cleanup_errors[0]
        return result

    async def _execute_hooked(self, hooks: Dispatcher) -> Any:
        """:meth:`execute` with the run's hooks: ``run_started``, then the run; an error
        escaping it goes to ``script_error`` observers and ``after_script_error``
        controllers (which may recover with a result or rethrow another error); then
        ``run_finished``. The hooks that ran are in the run's error's hook path."""
        from host.hooks import RunContext
        from host.hooks.points import copy_data

        self._token = anyio.lowlevel.current_token()
        began = time.perf_counter()
        if hooks.has("run_started"):
            hooks.observe("run_started", RunContext(
                self.correlation_id, self.filename, self.language, copy_data(self.args),
                self.task_id, self.plan_id), self.hook_path, self._token)
        try:
            result = await self._execute_cleaned()
        except SpellError as err:
            if hooks.has("script_error") or hooks.has("after_script_error"):
                result, error = await anyio.to_thread.run_sync(self._script_failed, err)
            else:
                result, error = None, err
        else:
            error = None
        if self._cancelled and hooks.has("cancellation_finished"):
            from host.hooks import CancellationContext

            hooks.observe("cancellation_finished", CancellationContext(
                self.correlation_id, self.control.reason), self.hook_path, self._token)
        if hooks.has("run_finished"):
            hooks.observe_lazily(  # its tool counts are made on the observers' thread
                "run_finished", _run_finished, (
                    self.correlation_id, self.filename, self.language, copy_data(result),
                    error, time.perf_counter() - began, self.tool_times, self.task_id,
                    self.plan_id),
                self.hook_path, self._token, failed=error is not None)
        with anyio.CancelScope(shield=True):  # its observers catch up, for a short while
            await anyio.to_thread.run_sync(hooks.catch_up)
        if error is not None:
            if self.hook_path:
                from host.hooks.layer import add_hook_path

                add_hook_path(error, self.hook_path)
            raise error
        return result

    def _script_failed(self, err: SpellError) -> tuple[Any, SpellError | None]:
        """``script_error`` observers and ``after_script_error`` controllers on ``err``:
        the run's result and error after them (on a worker thread)."""
        from host.hooks import Recover, Rethrow, ScriptErrorContext
        from host.hooks.layer import _checked, _rethrown

        hooks = self.hooks
        assert hooks is not None
        context = ScriptErrorContext(self.correlation_id, self.filename, self.language, err)
        hooks.observe("script_error", context, self.hook_path, self._token)
        if not hooks.has("after_script_error"):
            return None, err
        try:
            action, hook = hooks.decide("after_script_error", context, self.hook_path,
                                        self._token)
            if isinstance(action, Recover):
                return _checked(action.result, hook, "Recover"), None
            if isinstance(action, Rethrow):
                new = _rethrown(action, err, hook)
                if new is not err:
                    self._decorate(new)
                return None, new
        except SpellError as failure:  # the controller failed: its error, the run's as cause
            if failure.__cause__ is None:
                failure.__cause__ = err
            return None, self._decorate(failure)
        return None, err

    async def _execute(self) -> Any:
        self.deadline = self._bound = time.monotonic() + self.limits.timeout
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
            outcome = self._decorate(self.out_of_time())
        if isinstance(outcome, _Escaped):
            raise outcome.exception
        if isinstance(outcome, SpellError):
            self._attach_trace(outcome)
            _preserve_stack(outcome)
            if any(frame.language != "python" for frame in outcome.frames):
                attach_python_traceback(outcome, self.sources())
            _attach_to_causes(outcome, self.sources)
            raise outcome
        return outcome

    def sources(self) -> dict[str, str]:
        """The text of every file this run loaded, by name: the only text ever shown as a
        script frame's source."""
        sources = {tool.filename: tool.source for tool in self.tools
                   if isinstance(tool, ScriptTool)}
        sources.update(self.modules)
        sources[self.filename] = self.source
        return sources

    def _give_up(self) -> None:
        """Stop waiting for the run, and stop what of it can be stopped (on the event loop).

        Nothing is waited for: the engines are told to stop (Lua within about 20 ms; JS
        before its next step, a busy loop only at its own CPU limit), an async tool in
        progress is cancelled, a sync tool runs to its end and its result is dropped.
        The run's thread is a daemon thread, so whatever still runs keeps no process alive.
        """
        control = self.control
        if control.ended.is_set():  # the run's thread is done: nothing to stop
            return
        control.give_up()  # the anyio worker waiting for the run is free at once
        self._stop_engines(async_cancelled=True)

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
        _running.add(self)
        thread.start()
        self.control.ended.wait()
        return self._outcome

    def _run_thread(self) -> None:
        try:
            self._outcome = self._drive()
        except BaseException as exc:  # handed to the waiting task, as anyio's worker did
            self._outcome = _Escaped(exc)
        finally:
            _running.discard(self)
            self.control.ended.set()

    def _stop_at_exit(self) -> None:
        """Interpreter exit with the run in progress (on a thread the program did not wait
        for): its engines are told to stop, and :func:`_wait_at_exit` waits a moment for
        its thread to end (not for an async tool: nothing cancels it here)."""
        if not self.control.ended.is_set():
            self._stop_engines(async_cancelled=False)

    def _stop_engines(self, *, async_cancelled: bool) -> None:
        """Tell the run's engines to stop (``Engine.stop`` may be called from any thread);
        when that ends the run's thread in a moment (or the async tool it waits for was
        cancelled), interpreter exit waits for it (:func:`_wait_at_exit`)."""
        stopping = [engine.stop() for engine in list(self._engines)]
        thread, kind = self._thread, self.control.in_tool_kind
        if thread is not None and ((async_cancelled and kind == "async")
                                   or (any(stopping) and kind != "sync")):
            _stopping.add(thread)

    def _drive(self) -> Any:
        control = self.control
        if control.reason is not None:  # cancelled before it began
            return self._decorate(control.reason)
        try:
            engine = self._engine(self.language)
        except SpellError as err:
            return err
        try:
            step = self._received(engine.start(self.source, self.filename, self.args,
                                               self._infos(), self.deadline))
            step = self._converse(engine, step, self.deadline)
        except Exception as exc:  # a bug in an engine must still end as a unified error
            why = describe_exception(exc, qualified=False)
            return self._decorate(SpellError.wrap(
                exc, "runtime", "internal_error", reason=f"{self.language} engine failed: {why}"))
        finally:
            broken = _close_all([engine, *self._libraries.values()])
        if broken is not None:  # the run went well, then an engine failed to close
            why = describe_exception(broken, qualified=False)
            return self._decorate(SpellError.wrap(
                broken, "runtime", "internal_error",
                reason=f"{self.language} engine failed to close: {why}"))
        if control.given_up:  # nobody reads the outcome
            return None
        if self.stopped is not None:  # a tool's StopRun: its result, whatever the script did
            return self.stopped.result
        if control.reason is not None:  # even if the script swallowed it and went on
            return self._decorate(control.reason)
        if isinstance(step, Failed):
            return self._decorate(step.error)
        return step.result

    def _engine(self, language: str) -> Engine:
        """A new engine for ``language``, from the host's engine factory."""
        engine = build_engine(self.engine_factory, language, self.limits, self.sandbox)
        self._engines.append(engine)
        if self.control.given_up:  # given up on while this engine was being made
            engine.stop()
        return engine

    def _output(self, line: str) -> None:
        if not self.control.given_up:  # a run already reported (or interrupted) prints no more
            if self.on_output is not None:
                self.on_output(line)
            else:  # the default: a record of the polyspell.script logger
                log_script_line(line, self.correlation_id, self.task_id, self.language)
            hooks = self.hooks
            if hooks is not None and hooks.has("output"):
                from host.hooks import OutputContext

                hooks.observe("output", OutputContext(self.correlation_id, line),
                              self.hook_path, self._token, keep_ok=False)

    def _received(self, step: Step) -> Step:
        """An engine's step, taken in: the lines it printed go out, and a failure's error
        is the original where the script rethrew an error this run handed it."""
        if step.output:
            for line in step.output:
                self._output(line)
        if step.__class__ is Failed:
            step.error = resolve_refs(step.error, self._refs.get)  # type: ignore[union-attr]
        return step

    def _infos(self) -> list[ToolInfo]:
        return [ToolInfo(t.name, t.description) for t in self.tools]

    def _converse(self, engine: Engine, step: Step, deadline: float,
                  roots: Sequence[Root] | None = None) -> Finished | Failed:
        """Answer the engine's tool calls until the script (or the called function) ends,
        by ``deadline`` (``roots``: where a tools file's require searches)."""
        outer, engine.direct = engine.direct, functools.partial(self._direct, engine.language)
        try:
            return self._conversed(engine, step, deadline, roots)
        finally:
            engine.direct = outer  # (only this loop answers at once: not a load, a restore)

    def _conversed(self, engine: Engine, step: Step, deadline: float,
                   roots: Sequence[Root] | None) -> Finished | Failed:
        """:meth:`_converse`'s loop, with the engine answering plain tools' calls."""
        control, answer, resume, language = self.control, self._answer, engine.resume, \
            engine.language  # (looked up once: this loop is every tool call's)
        while step.__class__ is Suspended:
            if control.given_up:  # no tool runs for a run nobody waits for
                return Failed(self.out_of_time(language))
            if control.delivered:  # it was told and still calls tools: stop it here
                return Failed(control.reason)  # type: ignore[arg-type]
            requests = step.requests  # type: ignore[union-attr]
            if len(requests) == 1:  # the usual step (always, in Lua): no comprehension
                replies = [answer(requests[0], language, roots)]
            else:
                replies = [answer(request, language, roots) for request in requests]
            recovering = self._script_recovery
            if recovering is not None and recovering.delays:  # retries of the script's own
                recovering.wait(replies)
            step = resume(replies, deadline)
            if step.output or step.__class__ is Failed:  # _received, inlined: the hot loop
                self._received(step)
        return step  # type: ignore[return-value]

    def _answer(self, request: ToolRequest, caller: str,
                roots: Sequence[Root] | None = None) -> ToolReply:
        """One request through the pipeline: the tool's result, or its error's envelope."""
        if request.kind != "tool":
            if request.kind == "module":
                return self._module(request, roots)
            return self._recover(request, caller)
        reply = self._direct(caller, request)  # a plain tool's or function's, fused
        if reply is not None:
            return reply
        name = request.tool
        tool = self.tools.get(name)
        path = self._paths.get(name) or self._path(name, tool)
        # a call made inside a tools-file function ends by that function's deadline
        call = ToolCall(name, tool, request.params, request.problem, caller, request,
                        self._depth, self, self._bound, time.perf_counter())
        try:
            return ToolReply(request.id, result=path(call))
        except SpellError as err:
            return ToolReply(request.id, error=error_envelope(err, ref=self._ref))

    def _direct(self, caller: str, request: ToolRequest) -> ToolReply | None:
        """The reply to ``request`` if it is a plain tool's or tools-file function's call
        (the fused paths), made right in the engine's step (:attr:`engines.Engine.direct`)
        exactly as :meth:`_conversed` would make it; None for any other call, or when that
        loop has something to do first (the run is stopped or given up on; for a Python
        tool, which runs right here, a tools file's call narrowed the deadline)."""
        control = self.control
        if request.kind != "tool" or request.problem is not None \
                or control.reason is not None or control.given_up:
            return None
        name = request.tool  # (no tool's name is given to another)
        plain = self._plain_tools.get(name)
        if plain is not None:
            return self._plain(request, plain, caller) if self._bound >= self.deadline \
                else None
        function = self._plain_functions.get(name)
        return None if function is None else self._plain_call(request, function, caller)

    def _plain(self, request: ToolRequest, plain: tuple[Tool, Any], caller: str
               ) -> ToolReply:
        """A call of a plain tool (:attr:`Tool.plain`) whose pipeline is only the boundary,
        fused: what ``boundary``, :meth:`_invoke`, :meth:`Tool.invoke` and ``run_python``
        do for it, without the call's value or the layers' calls while nothing fails.

        The caller has checked what those steps check first (the run's stop request, the
        parameters' problem, a deadline no narrower than the run's: the function runs
        right here). Whatever it raises is handled as they handle it, with the call's
        value made then (its ``started`` taken before validation, as theirs is).
        """
        started = time.perf_counter()
        control = self.control
        running = False  # whether the function runs (only its own StopRun/AskHuman steer)
        tool, validator = plain
        params = request.params
        try:
            if validator is not None and params.__class__ is dict:  # validate(), inlined
                try:
                    args, kwargs = (), validator(params).__dict__
                except Exception as exc:
                    error = tool.invalid(params, exc)
                    if error is exc:
                        raise
                    raise error from None
            else:
                args, kwargs = tool.arguments(tool.validate(params))
            control.in_tool_kind = "sync"  # as run_python: nothing stops this thread now
            running = True
            try:
                result = tool.fn(*args, **kwargs)
            finally:
                control.in_tool_kind = None
            running = False
            kind = result.__class__
            if kind is str or kind is float or kind is bool or result is None:
                return ToolReply(request.id, result)  # (to_script_data's own first look)
            return ToolReply(request.id, to_script_data(result, caller, "result", 0,
                                                        self.limits.memory_mb))
        except BaseException as exc:
            call = ToolCall(request.tool, tool, request.params, None, caller, request,
                            self._depth, self, self._bound, started)
            return self._plain_failed(request, call, exc, running)

    def _plain_call(self, request: ToolRequest, function: ScriptTool, caller: str
                    ) -> ToolReply:
        """A call of a tools file's function whose pipeline is only the boundary, fused:
        what ``boundary``, :meth:`_invoke`, :meth:`ScriptTool.invoke` and
        :meth:`call_library` do for it, the call's value made only if it fails (the caller
        has checked the run's stop request and the parameters' problem; this runs on the
        run's thread)."""
        started = time.perf_counter()
        try:
            return ToolReply(request.id, self._call_function(function, request.params, caller,
                                                             self._bound, started))
        except BaseException as exc:
            call = ToolCall(request.tool, function, request.params, None, caller, request,
                            self._depth, self, self._bound, started)
            return self._plain_failed(request, call, exc, False)

    def _plain_failed(self, request: ToolRequest, call: ToolCall, exc: BaseException,
                      steers: bool) -> ToolReply:
        """The reply to a fused call (:meth:`_plain`) that raised ``exc``: what the
        pipeline makes of it (Tool.invoke's steering, for what the function raised
        (``steers``), not its parameters' validation or its result's check; _invoke's
        deadline; the boundary)."""
        if steers and isinstance(exc, StopRun | AskHuman):
            try:
                return ToolReply(request.id, result=steered(call, exc))
            except BaseException as raised:
                failure = boundary_error(call, raised)
        elif isinstance(exc, DeadlineReached) and not exc.deadline < self._bound:
            failure = boundary_error(call, self.out_of_time())
        else:  # (not raised again here: its traceback stays where the tool raised it)
            failure = boundary_error(call, exc)
        if not isinstance(failure, SpellError):  # KeyboardInterrupt: it ends the run
            raise failure
        return ToolReply(request.id, error=error_envelope(failure, ref=self._ref))

    def _recover(self, request: ToolRequest, caller: str) -> ToolReply:
        """A step of the script's own ``recovery.retry``/``recovery.fallback`` (see
        host.recovery.script): the host decides, and waits, on the run's thread."""
        if self._script_recovery is None:
            from host.recovery.script import ScriptRecovery

            self._script_recovery = ScriptRecovery(self)
        try:
            return ToolReply(request.id, result=self._script_recovery.answer(request, caller))
        except SpellError as err:
            return ToolReply(request.id, error=error_envelope(err, ref=self._ref))

    def _module(self, request: ToolRequest, roots: Sequence[Root] | None = None
                ) -> ToolReply:
        """A ``require`` or ``import``: the module's file and text, found and read by the
        host in the library roots (the run's; ``roots``: a tools file's), or a "not
        found" message (see host.libraries)."""
        from host.libraries import Libraries, answer, script_root

        if self.libraries is None:
            self.libraries = Libraries(script_dir=False)
        params = request.params
        if roots is None and isinstance(params, dict) and params.get("importer") is None:
            # a JavaScript import or require by the script itself: where the script is
            script = self.library_roots[:1] == [script_root(self.filename)]
            request.params = {**params, "importer": [0, os.path.basename(self.filename)]
                              if script else None}
        return answer(self.libraries, request,
                      self.library_roots if roots is None else roots, self._ref,
                      self.modules)

    def _tool_roots(self, tool: ScriptTool) -> list[Root] | None:
        """The roots a tools file's require searches: its own folder first (as a script's),
        then the host's roots (None: the run has no libraries)."""
        if self.libraries is None:
            return None
        roots = self._roots_of.get(tool.filename)
        if roots is None:
            roots = self._roots_of[tool.filename] = self.libraries.roots_for(tool.filename)
        return roots

    @property
    def current_deadline(self) -> float:
        """The deadline of what runs now: the innermost tools-file call's (a timeout may
        have narrowed it), else the run's."""
        return self._bound

    def handed_error(self, ref: int) -> SpellError | None:
        """The error this run handed a script under ``ref`` (see :meth:`_ref`), if any."""
        return self._refs.get(ref)

    def _path(self, name: str, tool: Any) -> Callable[[ToolCall], Any]:
        """The pipeline of calls to ``name``, built on its first call and kept for the run;
        a layer that fails to set up for it (its ``applies`` or ``wrap`` raised) makes
        every call of it a configuration error the script can catch, not an internal error
        of the engine."""
        try:
            layers = self._layers_for(name)
            path = pipeline(layers, self._invoke, tool)
            if tool is not None:  # a name no tool has is not kept: a script makes up many
                self._paths[name] = path
            if len(layers) == 2 and not layers[1].applies(tool):  # [boundary, Timeouts()]
                if isinstance(tool, Tool) and tool.plain:  # see _plain
                    self._plain_tools[name] = (tool, tool.kwargs_validator)
                elif isinstance(tool, ScriptTool):  # see _plain_call
                    self._plain_functions[name] = tool
            return path
        except Exception as exc:
            why = describe_exception(exc, qualified=False)

            def refused(call: ToolCall) -> Any:
                raise ConfigurationError.InvalidValue(
                    key="layers", value=name,
                    reason=f"a layer failed to set up for the tool {name!r}: {why}")

            path = pipeline([boundary], refused, tool)
            if tool is not None:
                self._paths[name] = path
            return path

    def call_tool(self, name: str, call: ToolCall) -> Any:
        """Call another tool with ``call``'s parameters, from the same call site, through
        that tool's own pipeline (a fallback option): its result, or its unified error."""
        tool = self.tools.get(name)
        path = self._paths.get(name) or self._path(name, tool)
        return path(ToolCall(name, tool, call.params, call.problem, call.caller, call.frames,
                             call.depth, self, self._bound, time.perf_counter()))

    def _layers_for(self, name: str) -> list[Layer]:
        """A tool's layers, outermost first: the boundary, the host's layers, the tool's
        recovery policies (see host.recovery), then its own timeout."""
        policy = self.recovery_policies.get(name)
        if policy is None and self.degradation is not None:
            from host.recovery import ToolRecovery

            policy = ToolRecovery()  # no policy of its own: the host's levels still apply
        if policy is None:
            own: list[Layer] = []
        else:
            if self.breakers is None:
                from host.recovery import Breakers

                self.breakers = Breakers()
            own = policy.layers(name, self.breakers, self.caches, self.tools,
                                self.degradation)
        # a host's layer may answer in a tool's place: what it returns must be data a
        # script can hold, checked like a tool's result (no check without them: fast path)
        checked = [script_data] if self.layers else []
        hooks = self.hooks
        if hooks is not None and hooks.tool_calls:  # none registered: no layer, no cost
            from host.hooks.layer import ToolCallHooks

            checked.insert(0, ToolCallHooks(hooks))
        return [boundary, *checked, *self.layers, *own, Timeouts()]

    def record_recovery(self, action: str, tool: str, attempt: int, err: SpellError | None,
                        delay: float | None = None, option: str | None = None, **more: Any
                        ) -> dict[str, Any]:
        """Add an event to the run's recovery history (``run.recovery``, see
        :mod:`host.history`) and return it; ``err`` None for an event no error caused (a
        degradation level's), ``more`` its own keys (``level``...)."""
        event = recovery_event(action, tool, attempt, None if err is None else err.code,
                               delay, option)
        event.update(more)
        hooks = self.hooks
        if hooks is not None and action in ("retry", "fallback", "degraded") \
                and hooks.has(action):
            from host.hooks import RecoveryContext

            hooks.observe(action, RecoveryContext(
                self.correlation_id, tool, attempt, event["delay"], event["error"],
                option, err), self.hook_path, self._token, keep_ok=False)
        if action == "degraded":  # kept apart from the history, which may drop it
            reasons = self.degraded_reasons.setdefault(tool, {})
            why = event["error"] or f"level {more.get('level')}"
            reasons[why] = reasons.get(why, 0) + 1
        return self.recovery.add(event)

    def attach_recovery(self, err: SpellError) -> None:
        """Attach the run's recovery history so far to an error that escapes recovery:
        ``context.metadata["recovery"]`` (and ``recovery_dropped``), rendered under its
        traceback. Nothing when the history is empty."""
        if not self.recovery:
            return
        metadata = {**err.context.metadata, **self.recovery.as_json()}
        if not self.recovery.dropped:
            metadata.pop("recovery_dropped", None)
        err.context = err.context.model_copy(update={"metadata": metadata})

    def _attach_trace(self, err: SpellError) -> None:
        """The run's whole recovery history on the error the run fails with: in its
        metadata and, as typed attempts, in its execution trace."""
        if not self.recovery:
            return
        from bridge.context import RecoveryAttempt

        self.attach_recovery(err)
        context = err.context
        trace = context.execution_trace.model_copy(update={
            "recovery_attempts": [RecoveryAttempt.model_validate(e) for e in self.recovery],
            "recovery_dropped": self.recovery.dropped})
        err.context = context.model_copy(update={"execution_trace": trace})

    def _invoke(self, call: ToolCall) -> Any:
        """The innermost step of every call: the run's stop request, then the tool."""
        if self.control.reason is not None:
            raise self.control.deliver()  # type: ignore[misc]
        if call.tool is None:
            raise self._not_found(call.name)
        try:
            return call.tool.invoke(call)
        except DeadlineReached as reached:
            if reached.deadline < self._bound:
                raise  # a layer's own deadline: that layer reports it
        # the run's own deadline, or that of the tools-file call this call was made in:
        # the engine stops the script (or that function) at its next step
        raise self.out_of_time()

    def out_of_time(self, language: str | None = None) -> SpellError:
        """The error of this run's time limit, in ``language`` (the run's by default): what
        every place that finds the limit reached raises, or hands the script."""
        return ScriptError.ResourceExhaustion(language=language or self.language,
                                              resource_type="time", limit=self.limits.timeout)

    def _not_found(self, name: str) -> SpellError:
        """``tool/not_found`` for ``name``, with the tool it was likely meant to be and the
        names of the tools there are (in its fields, for scripts, and in its message)."""
        available = sorted(tool.name for tool in self.tools)
        meant = closest(name, available)
        hint = did_you_mean(meant)
        tools = f"tools: {listed(available)}" if available else "no tools are registered"
        return ToolError.NotFound(f"Tool not found: {name} ({hint}{tools})", tool_name=name,
                                  did_you_mean=meant, available=available[:MAX_LISTED])

    def call_library(self, tool: ScriptTool, call: ToolCall) -> Any:
        """Call a tools file's function in its engine, answering its own tool calls.

        The engine stops the function at the call's deadline (a timeout layer's, or the
        run's), and the tools it calls end by it too. Past a layer's deadline this raises
        :class:`DeadlineReached` for that layer, and the engine, which a time limit ends,
        is thrown away: the file is loaded again at its next call (see
        :mod:`host.recovery.restart`). After a good call of a file that keeps its state,
        the state it exports is kept for a restart.
        """
        if threading.current_thread() is not self._thread:
            # an engine is driven by one thread at a time (quickjs crashes the process
            # otherwise): a layer that calls next on a thread of its own is refused here
            raise ConfigurationError.InvalidValue(
                key="layers", value=tool.name,
                reason=f"a layer called {tool.name!r}, a function of {tool.filename}, on "
                       f"another thread than its run's: a tools file's functions run on "
                       f"the run's thread (call next there)")
        if call.problem is not None:
            raise crossing_error(call.problem, call.caller, tool.language)
        return self._call_function(tool, call.params, call.caller, call.deadline,
                                   call.started)

    def _call_function(self, tool: ScriptTool, params: Any, caller: str, deadline: float,
                       started: float) -> Any:
        """:meth:`call_library` once the call is known to be on the run's thread with
        parameters that could be read: by ``deadline``, from ``caller``, ``started`` then."""
        if self._depth >= MAX_TOOL_DEPTH:
            raise ScriptError.ResourceExhaustion(
                language=tool.language, resource_type="stack", current_usage=self._depth,
                limit=MAX_TOOL_DEPTH)
        # the call's deadline (a timeout's) if a layer narrowed it: the engine stops there
        if deadline > self.deadline:
            deadline = self.deadline
        filename = tool.filename
        engine = self._libraries.get(filename)
        if engine is None or not engine.usable:
            engine = self._library(tool, deadline)
        active = self._active
        outer, self._bound = self._bound, deadline
        self._depth += 1
        active[filename] = active.get(filename, 0) + 1
        try:
            step = engine.call(tool.function, params, deadline)
            if step.__class__ is not Finished or step.output:  # it called a tool, or printed
                step = self._converse(engine, self._received(step), deadline,
                                      self._tool_roots(tool))
            failed = None
            if isinstance(step, Failed):
                failed = step.error
                if step.problem is not None:  # its result has no JSON form: name the caller
                    failed = crossing_error(step.problem, tool.language, caller)
                    failed.frames = step.error.frames
                failed = self._decorate(failed, tool)
            elif filename in self._keeps and active[filename] == 1:
                failed = self._snapshot(engine, tool, deadline)
        finally:
            self._depth -= 1
            self._bound = outer
            active[filename] -= 1
        if failed is None:
            return crossing(step.result, tool.language, caller)  # type: ignore[union-attr]
        if not engine.usable:
            self._ended.setdefault(filename, failed.code)
        if deadline < self.deadline and not engine.usable and time.monotonic() >= deadline:
            # a timeout stopped the engine (it cannot go on): it is loaded again at the
            # file's next call, once no other call into it is in progress
            self._timed_out.add(filename)
        if filename in self._timed_out and not active[filename]:
            self._timed_out.discard(filename)
            self._discard(tool, ToolError.Timeout(tool_name=tool.name,
                                                  duration=round(time.perf_counter()
                                                                 - started, 3)))
        if deadline < self.deadline and time.monotonic() >= deadline and (
                not engine.usable or _out_of_time(failed)):
            raise DeadlineReached(deadline)  # the layer that set it reports it
        raise failed

    # -- tools-file engines: loading, restarts, kept state ---------------------------

    def _library(self, tool: ScriptTool, deadline: float) -> Engine:
        """The run's engine for ``tool``'s file, loaded at its first call (and again after
        a restart, then given the state the file kept, if it keeps its state)."""
        engine = self._libraries.get(tool.filename)
        if engine is not None:
            if engine.usable:
                return engine
            # ended by a limit earlier in this run, and not restarted: one clear error
            # (the engine would answer with its old error, or a protocol breach)
            raise self._decorate(ScriptError.RuntimeError(
                language=tool.language,
                error=f"the engine of {tool.filename} was ended earlier in this run "
                      f"({self._ended.get(tool.filename, 'a limit')}): its functions cannot "
                      f"run again in this run",
                reason="give the function a Restart policy to load the file again"), tool)
        engine = self._libraries[tool.filename] = self._engine(tool.language)
        try:
            roots = self._tool_roots(tool)
            load_library(engine, tool.source, tool.filename, self._infos(), deadline,
                         self._output,
                         modules=lambda request: self._module(request, roots))
            if tool.filename in self._kept:
                self._restore(engine, tool, self._kept[tool.filename], deadline)
        except SpellError:
            if deadline < self.deadline and time.monotonic() >= deadline:
                self._drop(tool.filename)
                raise DeadlineReached(deadline) from None
            if self._reloads.get(tool.filename):  # a reload failed: the next call tries again
                self._drop(tool.filename)
            raise
        return engine

    def _restore(self, engine: Engine, tool: ScriptTool, state: Any, deadline: float) -> None:
        """Hand a reloaded engine the state its file exported (``polyspell_restore``)."""
        step = self._received(engine.call(STATE_RESTORE, state, deadline))
        if isinstance(step, Finished):
            return
        cause = step.error if isinstance(step, Failed) else None
        why = cause.message if cause is not None else "it called a tool"
        raise ConfigurationError.LoadFailed(
            path=tool.filename, cause=cause, frames=cause.frames if cause else [],
            reason=f"{STATE_RESTORE} failed to take back the state it kept: {why}")

    def _snapshot(self, engine: Engine, tool: ScriptTool, deadline: float
                  ) -> SpellError | None:
        """Keep the state ``tool``'s file exports (``polyspell_state``) after a good call;
        the error that call then fails with if the state cannot be kept."""
        step = self._received(engine.call(STATE_EXPORT, None, deadline))
        if isinstance(step, Finished):
            self._kept[tool.filename] = step.result
            return None
        if isinstance(step, Failed):
            cause = step.error
            why = (str(step.problem) + " (the state must be JSON-like data)"
                   if step.problem is not None else cause.message)
        else:
            cause, why = None, "it called a tool (it must only return the state)"
        return self._decorate(ConfigurationError.InvalidValue(
            key=f"{tool.filename}:{STATE_EXPORT}", value=tool.filename, cause=cause,
            reason=f"{STATE_EXPORT} of {tool.filename} did not give a state to keep: {why}"),
            tool)

    def library_broken(self, tool: ScriptTool, err: SpellError) -> bool:
        """Whether ``err``, out of a call of ``tool``, left the file's engine broken (see
        :mod:`host.recovery.restart`): the engine ended, or it observed a memory or stack
        limit, or the function raised ``agent/state_corruption`` itself."""
        engine = self._libraries.get(tool.filename)
        if engine is None:  # thrown away (a timeout): the next call loads it again
            return False
        if not engine.usable:
            return True
        if id(err) in self._ref_of:  # a tool it called raised it: not this file's state
            return False
        if err.code == "agent/state_corruption":
            return True
        if err.raised_by_script:  # a limit the script only claims
            return False
        return err.code == "resource/memory_exhaustion" or (
            err.code == "script/resource_exhaustion"
            and err.fields.get("resource_type") in ("memory", "stack"))

    def restarts(self, tool: ScriptTool) -> int:
        """How often a Restart policy restarted ``tool``'s file in this run."""
        return self._restarts.get(tool.filename, 0)

    def restart_library(self, tool: ScriptTool, err: SpellError, *, keep: bool) -> bool:
        """Throw away the engine of ``tool``'s file, broken by ``err``; its next call loads
        the file again, with the state it kept if ``keep``, else as new. Recorded in the
        run's recovery history. False (nothing done) while another call into the file is
        in progress: its engine stays for that call."""
        if self._active.get(tool.filename):
            return False
        if not keep:
            self._kept.pop(tool.filename, None)
        self._restarts[tool.filename] = self.restarts(tool) + 1
        self._discard(tool, err)
        return True

    def _discard(self, tool: ScriptTool, err: SpellError) -> None:
        """Throw away the engine of ``tool``'s file and record it as a restart."""
        reloads = self._reloads[tool.filename] = self._reloads.get(tool.filename, 0) + 1
        self._ended.pop(tool.filename, None)
        self._drop(tool.filename)
        self.record_recovery("restart", tool.name, reloads, err)

    def _drop(self, filename: str) -> None:
        engine = self._libraries.pop(filename, None)
        if engine is None:
            return
        try:
            self._engines.remove(engine)
        except ValueError:
            pass
        try:
            engine.close()
        except Exception:  # a broken engine that fails to close is gone all the same
            pass

    def await_on_loop(self, fn: Callable[..., Any], args: tuple, kwargs: dict,
                      deadline: float) -> Any:
        """Await an async tool's ``fn`` on the host's event loop, until ``deadline``
        (see :func:`host.calls.run_python`)."""
        with self.control.in_tool("async"):  # _give_up cancels it
            try:
                return anyio.from_thread.run(self._await, fn, args, kwargs, deadline,
                                             token=self._token)
            except _Raised as raised:
                exc = raised.exc
        raise exc  # outside the except clause: its __context__ stays the tool's

    async def _await(self, fn: Callable[..., Any], args: tuple, kwargs: dict,
                     deadline: float) -> Any:
        with anyio.move_on_after(deadline - time.monotonic()) as scope, \
                self.control.async_scope(scope):  # a stop request or give-up cancels it
            try:
                return await fn(*args, **kwargs)
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:  # even SystemExit: it must not stop the event loop
                raise _Raised(exc) from None
        if self.control.reason is not None:  # handed to the script, as at a tool call
            raise self.control.deliver()  # type: ignore[misc]
        raise DeadlineReached(deadline)

    def _ref(self, err: SpellError) -> int:
        """The ref ``err`` is handed to a script under: random, not ``id(err)``.

        A script sees the refs of the errors it is handed and may throw any number as a
        ref. An address would tell it where the heap is, and errors made one after the
        other lie close together: it could guess the ref of an error only a tools file
        was handed and get that error back. A random 53-bit number (exact in a JS number)
        cannot be guessed from the ones it saw.

        The run remembers the newest :data:`MAX_HANDED_ERRORS` errors it handed out: a
        script catching failures in a loop cannot make it hold every one (hundreds of MB).
        A forgotten error rethrown is what the script's copy says, like any error a script
        makes (its Python frames and cause are gone).
        """
        ref = self._ref_of.get(id(err))
        if ref is None:
            ref = random_bits(53)  # (exact in a JS number)
            while ref in self._refs:
                ref = random_bits(53)
            if len(self._refs) >= MAX_HANDED_ERRORS:  # forget the oldest
                del self._ref_of[id(self._refs.popitem(last=False)[1])]
            self._refs[ref] = err
            self._ref_of[id(err)] = ref  # _refs keeps err alive: its id stays its own
        return ref

    # -- decoration -----------------------------------------------------------------

    def at_boundary(self, err: SpellError, call: ToolCall) -> None:
        """Give a tool's error the path through this boundary, and the boundary's context.

        The path is the calling script's call site, a host frame for the boundary, then
        the error's own frames: where the tool raised it, or the path it brought from a
        deeper boundary (a tools file's function calling a tool). Each boundary is added
        once per error: the error records the depth of the outermost boundary it crossed
        in this run (:class:`_Crossed`), so an error rethrown through several levels gets
        each level once, and one rethrown again at a level it already crossed gets nothing
        more. An error that crossed in another run keeps that path when the other run
        was inside this call (a tool running a script of its own), and otherwise starts
        again from its own frames with this run's context (a tool raising one shared
        instance in every run: the earlier run's path is not this one's).
        """
        crossed = getattr(err, _CROSSED, None)
        reset = False
        if crossed is None or (crossed.run != self.correlation_id
                               and crossed.when >= call.started):
            own = err.own_frames()
        elif crossed.run == self.correlation_id:
            if crossed.depth <= call.depth:
                return  # already has its path from here inwards
            own = err.own_frames()
        else:  # its path and context are those of an earlier call in another run
            own = crossed.own
            reset = True
        setattr(err, _CROSSED, _Crossed(self.correlation_id, call.depth, time.perf_counter(),
                                        own if crossed is None else crossed.own))
        err.frames = [*call.frames, _boundary_frame(call.name), *own]
        site = call.frames[-1] if call.frames else None
        # the context is made when it is read (most caught failures never are): the same
        # context, from the call's facts taken now
        err.update_context(functools.partial(
            _boundary_context, reset, self.correlation_id, self.filename, call.name, site,
            call.params))

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


@functools.lru_cache(maxsize=256)
def _boundary_frame(name: str) -> Frame:
    """The host's frame of a boundary of calls to tool ``name`` (frames are immutable:
    one per name serves every error)."""
    return Frame("host", "<tool call>", None, None, name)


def _boundary_context(reset: bool, run_id: str, filename: str, name: str, site: Frame | None,
                      params: Any, context: ErrorContext) -> ErrorContext:
    """An error's context once it crossed the boundary of a call of tool ``name`` in run
    ``run_id`` made at ``site`` (see :meth:`ScriptRun.at_boundary`); ``reset``: its
    context is that of an earlier call in another run, whose run it no longer names."""
    from bridge.context import CallFrame, ExecutionTrace, FileLocation, ToolComponent

    if reset:
        metadata = {k: v for k, v in context.metadata.items() if k not in _PRESERVED}
        context = context.model_copy(update={"correlation_id": None, "metadata": metadata})
    step = CallFrame(function_name=name,
                     file_location=site and FileLocation(file=site.file, line=site.line,
                                                         column=site.column),
                     parameters=preview(params))
    if context.correlation_id is None:  # not yet given the run's context: where it happened
        return context.model_copy(update={
            "correlation_id": run_id,
            "component": ToolComponent(tool_name=name),
            "operation": f"tool call from {site.file if site else filename}",
            "execution_trace": ExecutionTrace(  # the call's hooks stay (host.hooks)
                call_stack=[step],
                hook_execution_path=context.execution_trace.hook_execution_path),
        })
    # an outer boundary: the call stack grows outwards
    trace = context.execution_trace
    return context.model_copy(update={"execution_trace": trace.model_copy(
        update={"call_stack": [step, *trace.call_stack]})})


# The attribute in which an error records the outermost tool boundary it has crossed
# (see ScriptRun.at_boundary).
_CROSSED = "_polyspell_crossed"


class _Crossed(NamedTuple):
    """The outermost tool boundary an error crossed: in which run, at which depth, and
    the error's own frames before its first boundary (where a tool raised it)."""

    run: str  # the run's correlation id
    depth: int
    when: float  # time.perf_counter() at the crossing (a ToolCall's clock)
    own: list[Frame]


# What _preserve_stack keeps of the run an error left: an earlier run's, in an error
# that crosses again in another run, is not this run's.
_PRESERVED = ("execution_path", "preserved_stack_trace", "source_engine")


def _run_finished(run_id: str, script: str, language: str, result: Any, error: Any,
                  duration: float, tool_times: Any, task_id: str | None,
                  plan_id: str | None) -> Any:
    from host.hooks import RunFinishedContext

    return RunFinishedContext(run_id, script, language, result, error, duration,
                              tool_times.stats(), task_id, plan_id)


def _out_of_time(err: SpellError) -> bool:
    """Whether ``err`` is an engine's time limit (not one a script raised itself)."""
    return (err.code == "script/resource_exhaustion" and not err.raised_by_script
            and err.fields.get("resource_type") == "time")


def _keeping(tools: ToolRegistry, policies: Mapping[str, Any]) -> set[str]:
    """The tools files one of whose functions has ``Restart(state="keep")``."""
    files = set()
    for name, policy in policies.items():
        restart = getattr(policy, "restart", None)
        tool = tools.get(name)
        if restart is not None and restart.state == "keep" and isinstance(tool, ScriptTool):
            files.add(tool.filename)
    return files


def _close_all(engines_: list[Engine]) -> Exception | None:
    """Close every engine, even when one fails to; the first failure, if any."""
    first = None
    for engine in engines_:
        try:
            engine.close()
        except Exception as exc:  # a bug in an engine: the others still close
            first = first or exc
    return first


class _Raised(Exception):
    """Carries what an async tool raised, whatever it is (``SystemExit``,
    ``KeyboardInterrupt``...), from the event loop to the engine's thread, where
    :meth:`ScriptRun._answer` treats it as any tool's exception."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__()
        self.exc = exc


# The threads of runs given up on that were told to stop and end in a moment (a Lua
# script stops within about 20 ms): interpreter exit waits for them, EXIT_WAIT seconds
# at most in all. A daemon thread still running Python code when the interpreter
# finalizes is ended where it stands, and where that is inside pydantic-core (building
# the run's error) the process aborts ("FATAL: exception not rethrown"). Runs still in
# progress at exit (_running: on a thread the program left running) are stopped then
# and waited for the same way.
_stopping: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
_running: weakref.WeakSet[ScriptRun] = weakref.WeakSet()
EXIT_WAIT = 1.0


def _wait_at_exit() -> None:
    for run in list(_running):
        run._stop_at_exit()
    ends = time.monotonic() + EXIT_WAIT
    for thread in list(_stopping):
        thread.join(max(0.0, ends - time.monotonic()))


atexit.register(_wait_at_exit)


class _Escaped:
    """An exception that escaped ``_drive`` on the run's thread, for the awaiting task."""

    def __init__(self, exception: BaseException) -> None:
        self.exception = exception


def _attach_to_causes(err: SpellError, sources: Callable[[], dict[str, str]]) -> None:
    """Give each unified error of ``err``'s cause chain that passed through a script (a
    tool's error handed to a script, which raised another with it as cause) its frames
    as a Python traceback and note, as the outermost error has: its own traceback is
    polyspell's plumbing only, so pytest and ``traceback`` showed a bare message."""
    cause, depth = err.__cause__, 0
    while isinstance(cause, SpellError) and depth < MAX_CAUSES_ATTACHED:
        if any(frame.language != "python" for frame in cause.frames):
            attach_python_traceback(cause, sources())
        cause, depth = cause.__cause__, depth + 1


MAX_CAUSES_ATTACHED = 32


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
    script = next((f for f in reversed(err.frames) if f.is_script), None)
    if script is not None:
        metadata["source_engine"] = {"language": script.language, "script": script.file}
    err.context = err.context.model_copy(update={"metadata": metadata})


