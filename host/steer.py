"""Tools that steer their run: stop it with a result, ask a person, see the call's context.

The exceptions of llmist's gadgets, and its abort signal, for Python tools:

- ``raise StopRun(result)``: the run ends at once with ``result`` (JSON-like data), as its
  result, not as an error. The run's stop (:class:`host.control.RunControl`) carries it:
  the calling script gets ``async_execution/task_cancelled`` at this call, so its
  ``on_cancel`` handlers / ``signal`` listeners, ``pcall`` and ``finally`` run, and the run
  ends with ``result`` whatever the script does next (a later tool call fails at once; a
  value it returns is dropped), as a cancellation does. The run's cleanups
  (``run.on_cleanup``) run, seeing no error.
- ``raise AskHuman(question)``: the run waits for a person's answer, which becomes the
  tool's result (a string). The host's ``on_human_input(question)`` answers (sync or
  async, run as a tool is: within the call's deadline, ended by a stop of the run);
  ``polyspell run`` on a terminal asks on stderr and reads a line from stdin. With no one
  to ask, the call fails with ``tool/dependency_error`` (dependency ``human input``).
- A parameter annotated :class:`ToolContext` (never part of the tool's schema) receives
  the call's context: its :class:`AbortSignal` turns aborted when the run is asked to stop
  or the call's deadline passes, so a long sync tool can stop cooperatively.
"""

from __future__ import annotations

import inspect
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from bridge import AsyncExecutionError, ConfigurationError, SpellError, ToolError
from bridge.errors import describe_exception
from host.lines import shown_text

if TYPE_CHECKING:
    from host.calls import ToolCall
    from host.control import RunControl

HUMAN_INPUT = "human input"  # the dependency a tool/dependency_error names when no one answers


class StopRun(Exception):
    """Raised by a tool: end the run now with ``result`` (JSON-like data) as its result."""

    def __init__(self, result: Any = None) -> None:
        super().__init__(result)
        self.result = result


class AskHuman(Exception):
    """Raised by a tool: pause the run for a person's answer to ``question``; the answer
    (a string) is the tool's result."""

    def __init__(self, question: str) -> None:
        super().__init__(question)
        self.question = question


class Caller(NamedTuple):
    """Who made a tool call: the script's language and its call site (file, line)."""

    language: str
    file: str | None
    line: int | None


class AbortSignal:
    """Whether the call should stop: the run was asked to stop (cancelled, stopped, given
    up on) or the call's deadline passed. Read it from any thread."""

    __slots__ = ("_control", "_deadline")

    def __init__(self, control: RunControl, deadline: float) -> None:
        self._control = control
        self._deadline = deadline

    @property
    def aborted(self) -> bool:
        """True once the run is asked to stop or the call's deadline has passed."""
        control = self._control
        return (control.reason is not None or control.given_up
                or time.monotonic() >= self._deadline)

    @property
    def reason(self) -> BaseException | None:
        """Why it aborted: the run's stop reason, else the deadline (as the exception
        :meth:`throw_if_aborted` raises); None while not aborted."""
        control = self._control
        if control.reason is not None:
            return control.reason
        if control.given_up or time.monotonic() >= self._deadline:
            from host.calls import DeadlineReached

            return DeadlineReached(self._deadline)
        return None

    def throw_if_aborted(self) -> None:
        """Raise :attr:`reason` if aborted: the run's stop error, or the deadline, which
        the call reports as its timeout (``tool/timeout``, or the run's time limit)."""
        reason = self.reason
        if reason is not None:
            raise reason

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, ending early when the run is asked to stop; True if
        aborted by then (a cooperative tool's pause between steps)."""
        left = min(seconds, self._deadline - time.monotonic())
        if left > 0:
            self._control.sleep(left)
        return self.aborted


@dataclass(frozen=True, slots=True)
class ToolContext:
    """The context of one tool call, handed to a Python tool that declares a parameter
    annotated ``ToolContext`` (never part of its schema or its validation)."""

    tool: str  # the tool's name
    signal: AbortSignal
    deadline: float  # the time.monotonic() instant the call must end by
    run_id: str  # the run's correlation id
    caller: Caller

    @property
    def time_left(self) -> float:
        """Seconds until :attr:`deadline`."""
        return self.deadline - time.monotonic()


def tool_context(call: ToolCall) -> ToolContext:
    """The :class:`ToolContext` of ``call``."""
    # the innermost frame that knows its line (a Lua tail call's frame does not)
    site = next((f for f in reversed(call.frames) if f.line is not None),
                call.frames[-1] if call.frames else None)
    return ToolContext(tool=call.name, signal=AbortSignal(call.run.control, call.deadline),
                       deadline=call.deadline, run_id=call.run.correlation_id,
                       caller=Caller(call.caller, site.file if site else None,
                                     site.line if site else None))


def stop_run(call: ToolCall, stop: StopRun) -> SpellError:
    """Stop ``call``'s run with ``stop.result``; the error to hand the calling script.

    A result that is not JSON-like fails the call instead (``bridge/type_conversion``
    naming it), and the run goes on. A run already stopping keeps its first reason.
    """
    from host.calls import as_script_data

    try:
        result = as_script_data(call, stop.result, "StopRun result")
    except SpellError as err:
        err.__cause__ = stop
        return err
    run = call.run
    control = run.control
    if control.reason is None:
        where = _site(call)
        reason = AsyncExecutionError.TaskCancelled(
            task_id=run.correlation_id, cancellation_source=f"tool {call.name}",
            reason=f"the tool {call.name} stopped the run{where} with its result")
        if control.request_stop(reason):
            run.stopped = StopOutcome(call.name, result)
    return control.deliver()  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class StopOutcome:
    """How a tool stopped a run (``run.stopped``): which tool, with what result."""

    tool: str
    result: Any


def ask_human(call: ToolCall, question: Any) -> str:
    """The answer of a person to ``question`` for ``call``: the run's ``on_human_input``,
    run as a tool is (within the call's deadline, ended by a stop of the run).

    ``tool/dependency_error`` (dependency ``human input``) when no one can be asked, the
    function fails or answers something other than a string; ``configuration/
    invalid_value`` for a question that is not a string.
    """
    from host.calls import run_python

    if not isinstance(question, str):
        raise ConfigurationError.InvalidValue(
            key="AskHuman", value=repr(question)[:200],
            reason=f"the question of AskHuman is a string, not {type(question).__name__}")
    run = call.run
    answer_fn = run.on_human_input
    if answer_fn is None:
        raise ToolError.DependencyError(
            tool_name=call.name, dependency=HUMAN_INPUT,
            error=f"no one to ask {_quote(question)}: give Host(on_human_input=fn), or run "
                  f"polyspell on a terminal (stdin a TTY)")
    try:
        answer = run_python(call, answer_fn, (question,), {},
                            inspect.iscoroutinefunction(answer_fn), interruptible=True)
    except SpellError:
        raise
    except Exception as exc:
        from host.calls import DeadlineReached

        if isinstance(exc, DeadlineReached):
            raise
        raise ToolError.DependencyError(
            tool_name=call.name, dependency=HUMAN_INPUT,
            error=f"on_human_input failed: {describe_exception(exc, qualified=False)}",
        ) from exc
    if not isinstance(answer, str):
        raise ToolError.DependencyError(
            tool_name=call.name, dependency=HUMAN_INPUT,
            error=f"on_human_input answered a {type(answer).__name__}, not a string")
    return answer


def _quote(question: str) -> str:
    return repr(question if len(question) <= 80 else question[:77] + "...")


def _site(call: ToolCall) -> str:
    site = call.frames[-1] if call.frames else None
    return f" (called at {site.file}:{site.line})" if site and site.line else ""


MAX_QUESTION_CHARS = 4000  # shown on a terminal, at most


def printable(question: str) -> str:
    """``question`` as safe to show on a terminal: control characters (escape sequences
    a script's text could carry into the question) shown escaped, newlines and tabs kept,
    at most :data:`MAX_QUESTION_CHARS` characters."""
    return shown_text(question, limit=MAX_QUESTION_CHARS, keep="\n\t")


class TerminalInput:
    """``polyspell run``'s ``on_human_input`` on a terminal: the question on stderr, the
    answer one line of stdin. One question at a time (runs of a plan may ask together)."""

    def __init__(self, stdin: Any, stderr: Any) -> None:
        self._stdin = stdin
        self._stderr = stderr
        self._lock = threading.Lock()

    def __call__(self, question: str) -> str:
        with self._lock:
            self._stderr.write(f"polyspell: {printable(question)}\n> ")
            self._stderr.flush()
            line = self._stdin.readline()
        if not line:
            raise EOFError("stdin was closed before an answer")
        return line.rstrip("\r\n")
