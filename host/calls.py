"""The tool call as one pipeline: one value per call, one way to invoke a tool, and layers.

Every tool call a script makes travels the same way, whatever the tool is::

    runner ── ToolCall ──> boundary ──> layer ... ──> timeouts ──> tool.invoke(call)

- :class:`ToolCall` is the call as a value: what was asked (tool, parameters, or the
  :class:`~engines.Problem` that kept them from crossing), who asked (the caller's language
  and call-site frames, the depth of tools-file calls around it) and the run it belongs to
  (its context and control).
- :class:`Invocable` is the one protocol of everything a script can call: a Python tool
  (``host.tools.Tool``) and a function of a Lua or JavaScript tools file
  (``host.tools.ScriptTool``) both implement ``invoke(call)``.
- A :data:`Layer` is ``layer(call, next) -> result``: it may look at or change the call,
  call ``next`` (once, several times, or not at all) and see its result or error.
  Recovery, hooks and monitoring are layers or users of layers. The runner applies
  :func:`boundary` outermost (it gives every error the path through this boundary, once)
  and :class:`Timeouts` innermost; with no other layer the call costs what it did before
  there were layers.

Deadlines are one mechanism: a call carries the instant it must end by
(``call.deadline``, the run's own unless a layer narrows it), and invoking a Python
function honours it (:func:`run_python`). A layer that narrows the deadline recognises
its own expiry by :class:`DeadlineReached` and turns it into its error.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from bridge import Frame, SpellError, ToolError, wrap
from bridge.errors import describe_exception
from bridge.wrapping import MappingFailed
from engines import Problem, ToolRequest
from host.data import preview, to_script_data

if TYPE_CHECKING:
    from host.control import RunControl
    from host.runner import ScriptRun


class Invocable(Protocol):
    """What a script can call: a Python tool or a tools file's function."""

    name: str
    description: str
    timeout: float | None

    def invoke(self, call: ToolCall) -> Any:
        """Carry out ``call``; its result as data the calling script can hold."""
        ...


@dataclass(slots=True)
class ToolCall:
    """One tool call, from the script's request to the tool's answer."""

    name: str  # the tool asked for
    tool: Invocable | None  # None: no tool of that name (the boundary still applies)
    params: Any  # JSON-like data, as the script passed it
    problem: Problem | None  # why the parameters could not be read, if they could not
    caller: str  # the calling engine's language
    # the script's call site: its frames, or the request they are read from when first
    # asked for (see engines.base.ToolRequest: while the call waits, which it does until
    # the pipeline has answered; a call that nothing asks about never reads them)
    site: list[Frame] | ToolRequest
    depth: int  # calls into tools files in progress around this one
    run: ScriptRun  # the run's context (correlation id, files) and control
    deadline: float  # time.monotonic() instant the call must end by
    started: float = field(default_factory=time.perf_counter)

    @property
    def frames(self) -> list[Frame]:
        """The script's call site, outermost first."""
        site = self.site
        if site.__class__ is list:
            return site  # type: ignore[return-value]
        frames = self.site = site.frames  # type: ignore[union-attr]
        return frames

    @property
    def time_left(self) -> float:
        """Seconds until the call's deadline."""
        return self.deadline - time.monotonic()


Next = Callable[[ToolCall], Any]
Layer = Callable[[ToolCall, Next], Any]


def pipeline(layers: Sequence[Layer], invoke: Next, tool: Invocable | None = None) -> Next:
    """``invoke`` wrapped in ``layers``, the first outermost: the path of calls to ``tool``.

    A layer may say it has nothing to do for a tool (``layer.applies(tool)`` false: the
    timeouts of a tool without one), and it is left out of that tool's path; a layer that
    can wrap ``next`` itself (``layer.wrap(next)``, as the built-in ones do) costs one call
    less per layer. Neither changes what the layer does.
    """
    call = invoke
    for layer in reversed(layers):
        applies = getattr(layer, "applies", None)
        if applies is not None and not applies(tool):
            continue
        wrap = getattr(layer, "wrap", None)
        call = wrap(call) if wrap is not None else _bind(layer, call)
    return call


def _bind(layer: Layer, inner: Next) -> Next:
    def step(call: ToolCall) -> Any:
        return layer(call, inner)

    return step


class DeadlineReached(Exception):
    """A Python tool did not return by ``deadline`` (raised by :func:`run_python`).

    The layer that set that deadline turns it into its own error; the run's own deadline
    is the run's time limit.
    """

    def __init__(self, deadline: float) -> None:
        super().__init__(deadline)
        self.deadline = deadline


class Timeouts:
    """The layer of timeouts: a call must answer within ``seconds``, or the tool's own
    ``timeout`` (``@tool(timeout=...)``) when no ``seconds`` are given.

    One mechanism for every timeout (a tool's own, a recovery policy's per attempt and in
    total): it narrows the call's deadline when its limit ends before the deadline the
    call already has, and a call that overruns it is ``tool/timeout``. A sync tool then
    runs on a pooled daemon thread and is left to finish in the background (Python cannot
    stop a thread); an async tool is cancelled; a tools file's function is stopped by its
    engine, which is then thrown away (the file is loaded again at its next call), and
    the tools it calls meanwhile end by the same deadline.
    """

    def __init__(self, seconds: float | None = None) -> None:
        self.seconds = seconds

    def applies(self, tool: Invocable | None) -> bool:
        """Whether there is a limit to keep: a fixed one, or the tool's own."""
        return self.seconds is not None or (tool is not None and tool.timeout is not None)

    def __call__(self, call: ToolCall, next: Next) -> Any:
        timeout = self.seconds
        if timeout is None:
            timeout = call.tool.timeout if call.tool is not None else None
        if timeout is None:
            return next(call)
        deadline = time.monotonic() + timeout
        if deadline > call.deadline:  # an outer limit (the run's) ends first: it applies
            return next(call)
        outer, call.deadline = call.deadline, deadline
        try:
            return next(call)
        except DeadlineReached as reached:
            if reached.deadline != deadline:
                raise
            raise ToolError.Timeout(tool_name=call.name, duration=timeout) from None
        finally:
            call.deadline = outer


def boundary(call: ToolCall, next: Next) -> Any:
    """The layer that gives every error out of a call the path through this boundary.

    A tool's exception becomes ``tool/execution_failed`` (its frames: where the tool
    raised it; its cause: the exception); then the run adds the calling script's call
    site and a host frame for the boundary (see ``ScriptRun.at_boundary``), once per
    boundary an error crosses. ``KeyboardInterrupt`` (and the event loop cancelling the
    run) pass untouched: they end the run rather than fail the call.
    """
    return _wrap_boundary(next)(call)


def _wrap_boundary(next: Next) -> Next:
    def through_boundary(call: ToolCall) -> Any:
        try:
            return next(call)
        except BaseException as exc:
            raise boundary_error(call, exc)  # noqa: B904 - the error keeps its own cause

    return through_boundary


boundary.wrap = _wrap_boundary  # type: ignore[attr-defined]


def boundary_error(call: ToolCall, exc: BaseException) -> BaseException:
    """The error to raise out of ``call`` for ``exc``, with this boundary's path."""
    if ends_the_run(exc):
        return exc
    error = as_spell_error(call, exc)
    call.run.at_boundary(error, call)
    return error


def as_spell_error(call: ToolCall, exc: BaseException) -> SpellError:
    """The unified error ``exc`` out of ``call`` stands for: itself if it is one, else the
    error the exception table maps it to (:data:`bridge.wrap`: ``TimeoutError`` is
    ``tool/timeout``, an ``httpx`` 429 ``provider/rate_limited``...), else
    ``tool/execution_failed``; either way its frames are where the tool raised it and its
    cause is the exception. Layers that decide on errors (retry, breakers) decide on this."""
    if isinstance(exc, SpellError):
        return exc
    elapsed = time.perf_counter() - call.started
    why = ""
    try:
        mapped = wrap.lookup(exc, tool_name=call.name, elapsed=elapsed)
    except MappingFailed as failed:  # a broken entry must not break the call's error
        mapped, why = None, f" ({failed})"
    if mapped is not None:
        return mapped
    return ToolError.wrap(exc, tool_name=call.name,
                          reason=describe_exception(exc, qualified=False) + why,
                          parameters=preview(call.params), execution_time=elapsed)


def script_data(call: ToolCall, next: Next) -> Any:
    """The layer, just inside :func:`boundary` when a host has layers of its own, that
    checks what the layers answer as a tool's result is checked (``to_script_data``):
    a set or an object a layer returns is ``bridge/type_conversion``, an error the script
    can catch, not a reply its engine refuses, failing the run."""
    return as_script_data(call, next(call))


def as_script_data(call: ToolCall, value: Any, what: str = "result") -> Any:
    """``value``, answered for ``call``, as data its script can hold: :func:`to_script_data`
    for the calling engine, counted against the run's memory limit (``what`` names it in
    an error)."""
    return to_script_data(value, call.caller, what, 0, call.run.limits.memory_mb)


def failure_to_recover(call: ToolCall, exc: BaseException) -> SpellError:
    """The unified error a recovery layer decides on, for ``exc`` out of ``next(call)``;
    re-raises what no layer may recover from: the run ending, and an outer layer's
    deadline (a total timeout: no time left to recover in, and that layer reports it)."""
    if ends_the_run(exc) or isinstance(exc, DeadlineReached):
        raise exc
    return as_spell_error(call, exc)


def ends_the_run(exc: BaseException) -> bool:
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


# -- running a Python function within a deadline ------------------------------------------


def run_python(call: ToolCall, fn: Callable[..., Any], args: tuple, kwargs: dict,
               is_async: bool, *, interruptible: bool = False) -> Any:
    """Call a Python tool's function for ``call``, within ``call.deadline``.

    The one place a Python function runs for a script: a sync function on the run's own
    thread when only the run's deadline applies (the run's end stops waiting for it: the
    fast path), else on a pooled daemon thread waited for until the deadline; an async
    function on the host's event loop, cancelled at the deadline. Past the deadline it
    raises :class:`DeadlineReached`; a stop request ends the wait for a timed sync tool or
    an async one with the stop's reason. ``interruptible`` runs a sync function on a
    worker even under the run's deadline alone, so that a stop request ends the wait.
    """
    run = call.run
    if is_async:
        return run.await_on_loop(fn, args, kwargs, call.deadline)
    control = run.control
    control.in_tool_kind = "sync"  # nothing stops this thread before the tool returns
    try:
        if call.deadline >= run.deadline and not interruptible:
            return fn(*args, **kwargs)
        return _WORKERS.run(fn, args, kwargs, call.deadline, control)
    finally:
        control.in_tool_kind = None


class _DaemonWorkers:
    """Daemon threads for sync tools that have a timeout, kept for reuse while there is work.

    Daemon threads, so that a tool that never returns keeps no process alive; reused, so
    that a timed call costs a queue hand-off rather than a new thread. A worker waits
    ``IDLE`` seconds for more work and then ends.
    """

    IDLE = 30.0

    def __init__(self) -> None:
        self._work: queue.SimpleQueue[tuple[Callable[[], Any], Future]] = queue.SimpleQueue()
        self._idle = 0
        self._lock = threading.Lock()

    def run(self, fn: Callable[..., Any], args: tuple, kwargs: dict, deadline: float,
            control: RunControl) -> Any:
        """``fn(*args, **kwargs)`` on a worker, waited for until ``deadline`` or until the
        run is asked to stop (then the script gets the stop's reason, as at a tool call)."""
        future: Future = Future()
        wake = threading.Event()
        future.add_done_callback(lambda _: wake.set())
        with self._lock:
            if self._idle:
                self._idle -= 1
            else:
                threading.Thread(target=self._serve, name="polyspell tool worker",
                                 daemon=True).start()
        self._work.put((lambda: fn(*args, **kwargs), future))
        with control.waiting(wake):
            wake.wait(max(0.0, deadline - time.monotonic()))
        if future.done():
            return future.result()
        if control.reason is not None:  # the tool finishes in the background
            raise control.deliver()  # type: ignore[misc]
        raise DeadlineReached(deadline)

    def _serve(self) -> None:
        while True:
            try:
                work, future = self._work.get(timeout=self.IDLE)
            except queue.Empty:
                with self._lock:
                    if self._idle and self._work.empty():
                        self._idle -= 1
                        return
                continue
            try:
                future.set_result(work())
            except BaseException as exc:  # handed to the caller, whatever it is
                future.set_exception(exc)
            del work, future
            with self._lock:
                self._idle += 1


_WORKERS = _DaemonWorkers()
