"""A script's own recovery: ``recovery.retry(fn, opts)`` and ``recovery.fallback({fn1, fn2})``.

The preludes (``engines/lua_prelude.lua``, ``engines/javascript_prelude.js``) call the
script's functions; every decision and every wait is the host's, here. A script reaches
this handler the way it calls a tool: its engine suspends it with a request, of the
reserved kind ``recovery`` (:attr:`engines.ToolRequest.kind`), which no tool name can make
and which holds only data. The steps (``request.tool``, with ``request.params``):

- ``retry`` ``{opts}``: ``opts`` as a :class:`~host.recovery.Retry` (its data fields; a
  bad one is ``configuration/invalid_value`` naming it, raised in the script at the call);
  answers a session number.
- ``fallback`` ``{count}``: a fallback over ``count`` functions (1 to
  :data:`MAX_FALLBACKS`); answers a session number.
- ``failed`` ``{session, error}``: the session's function failed with ``error``, what the
  script caught, as data (its envelope ``ref``, ``category``, ``kind``, ``message``,
  ``fields``). A retry answers true once the delay is waited (call it again) or false
  (give up: the script raises what it caught); a fallback answers true (call the next)
  or, after the last, fails with ``runtime/all_fallbacks_failed``.

The error decided on is the host's: a ref the run handed out stands for the original
error (its code, ``retryable`` and ``retry_after``), whatever the script did to its copy.
An error the script made itself is read the usual way (a table or object with
``category``/``kind`` as that variant, anything else ``script/lua`` or
``script/javascript``), but is never retryable on its own word and names no
``retry_after``: the default condition (``retryable``) does not retry it, ``on = "any"``
or a list of codes does.

Waits are the run's (``control.sleep``, once a step's requests are answered: the retries
a JS script asks for together wait together, the longest delay): they count against the
run's time, a stop request or the host giving up ends them at once (the stop reason is
then raised in the script, as at a tool call), and a retry whose delay would not end
before the run's deadline is not made: it gives up at once and the script gets the error
it caught, as a tool's retry does. Each retry and fallback is recorded in
``run.recovery``.

A hostile script gains nothing by calling it in a loop: sessions are numbered at random
and at most :data:`MAX_SESSIONS` are kept (the oldest is forgotten, and a forgotten
session retries no more), every wait ends before the run's deadline, and the run's
history is capped (``ScriptRun.record_recovery``).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bridge import ConfigurationError, ScriptError, SpellError
from bridge.envelope import error_envelope, error_from_script
from bridge.jsontext import replaced
from engines import ToolReply
from host.recovery.fallback import all_fallbacks_failed, shortened
from host.recovery.retry import Retry

if TYPE_CHECKING:
    from engines import ToolRequest
    from host.runner import ScriptRun

MAX_SESSIONS = 1024  # retries and fallbacks in progress in one run
MAX_FALLBACKS = 32  # functions of one recovery.fallback (as a tool's Fallback options)
# The Retry fields a script may set (the others are callables, or aliases of these).
SCRIPT_FIELDS = ("attempts", "max_elapsed", "backoff", "initial", "max_delay", "jitter",
                 "on", "except")
LIST_FIELDS = ("on", "except")


@dataclass
class _Retrying:
    policy: Retry
    started: float = field(default_factory=time.monotonic)
    attempt: int = 1


@dataclass
class _FallingBack:
    count: int
    errors: list[SpellError] = field(default_factory=list)


class ScriptRecovery:
    """The recovery sessions of one run, and its answers to the ``recovery`` requests."""

    def __init__(self, run: ScriptRun) -> None:
        self.run = run
        self.sessions: dict[int, _Retrying | _FallingBack] = {}
        self.delays: dict[int, float] = {}  # request id -> the retry's delay, to wait for

    def answer(self, request: ToolRequest, language: str) -> Any:
        """What a ``recovery`` request gets: a result, or a SpellError raised (the reply's
        error, raised in the script at the call)."""
        control = self.run.control
        if control.reason is not None:  # a stopping run is told so here, as at a tool call
            raise control.deliver()  # type: ignore[misc]
        step = request.tool
        if request.problem is not None:  # its options cannot cross (a function, a cycle)
            raise ConfigurationError.InvalidValue(
                key=step, value=request.problem.data_type,
                reason=f"recovery.{step}: {request.problem.message}")
        params = request.params if isinstance(request.params, dict) else {}
        if step == "retry":
            return self._open(_Retrying(_policy(params.get("opts"))))
        if step == "fallback":
            count = params.get("count")
            if count.__class__ is not int or not 1 <= count <= MAX_FALLBACKS:
                raise ConfigurationError.InvalidValue(
                    key="recovery.fallback", value=repr(count)[:200],
                    reason=f"recovery.fallback takes 1 to {MAX_FALLBACKS} functions, "
                           f"not {count!r}")
            return self._open(_FallingBack(count))
        if step == "failed":
            number = params.get("session")
            session = self.sessions.get(number) if number.__class__ is int else None
            if session is None:  # never opened, or forgotten: no more tries
                return False
            err = self._real_error(params.get("error"), request, language)
            if isinstance(session, _Retrying):
                return self._retry(number, session, err, request.id)
            return self._fall_back(number, session, err, request)
        raise ConfigurationError.InvalidValue(key="recovery", value=repr(step)[:200],
                                              reason=f"unknown recovery step {step!r}")

    def _open(self, session: _Retrying | _FallingBack) -> int:
        sessions = self.sessions
        if len(sessions) >= MAX_SESSIONS:  # the oldest (a loop that left it) is forgotten
            del sessions[next(iter(sessions))]
        number = secrets.randbits(53)  # exact in a JS number; not guessable from others
        while number in sessions:
            number = secrets.randbits(53)
        sessions[number] = session
        return number

    def _retry(self, number: int, session: _Retrying, err: SpellError, request_id: int
               ) -> bool:
        run = self.run
        delay = session.policy.next_delay(session.attempt, err,
                                          time.monotonic() - session.started)
        if delay is None or delay >= run.current_deadline - time.monotonic():
            del self.sessions[number]
            if session.attempt > 1:  # it was retried: the history goes with the error
                run.attach_recovery(err)
            return False
        run.record_recovery("retry", _tool_of(err), session.attempt, err, delay)
        self.delays[request_id] = delay  # waited for once the step is answered (wait)
        session.attempt += 1
        return True

    def wait(self, replies: list[ToolReply]) -> None:
        """Wait for the retries ``replies`` answer (after a step's requests are answered).

        One wait, the longest delay, for all the retries of a step (JS may ask for several
        at once: their delays overlap, as they would in the script's own time). A stop
        request or the host giving up ends it at once, and the retries' replies become
        the stop reason (or the time limit), raised in the script at its calls.
        """
        delays, self.delays = self.delays, {}
        run = self.run
        if run.control.sleep(max(delays.values())):
            return
        err = run.control.deliver() or run.out_of_time()
        envelope = error_envelope(err, ref=run._ref)
        for i, reply in enumerate(replies):
            if reply.id in delays:
                replies[i] = ToolReply(reply.id, error=envelope)

    def _fall_back(self, number: int, session: _FallingBack, err: SpellError,
                   request: ToolRequest) -> bool:
        errors = session.errors
        errors.append(err)
        if len(errors) < session.count:
            self.run.record_recovery("fallback", _tool_of(err), len(errors), err)
            return True
        del self.sessions[number]
        failed = all_fallbacks_failed("recovery.fallback", errors, len(errors))
        failed.frames = request.frames  # the script's recovery.fallback call
        raise failed

    def _real_error(self, data: Any, request: ToolRequest, language: str) -> SpellError:
        """The error the script caught: the original, when it is one the run handed out;
        else the script's own, read the usual way, never retryable on its own word."""
        data = data if isinstance(data, dict) else {}
        ref = data.get("ref")
        if ref.__class__ is int:
            original = self.run.handed_error(ref)
            if original is not None:
                return original
        # what the script made itself is kept (a fallback keeps up to 32 per session, in
        # up to MAX_SESSIONS sessions) with its strings shortened: one 1 MB string the
        # script raises again and again costs the engine nothing, the host a copy each
        data = replaced(data, shortened)
        category, kind, message = data.get("category"), data.get("kind"), data.get("message")
        message = message if isinstance(message, str) else None
        if isinstance(category, str) and isinstance(kind, str):
            fields = data.get("fields")
            err = error_from_script({"category": category, "kind": kind, "message": message,
                                     "fields": fields if isinstance(fields, dict) else {}},
                                    request.frames)
        else:
            variant = ScriptError.Lua if language == "lua" else ScriptError.Javascript
            err = variant(error=message or "error", script=self.run.filename,
                          frames=request.frames)
        if not err.retryable and err.requested_retry_after is None:
            return err
        return type(err)(err.message, retryable=False, frames=err.frames,
                         context=err.context, **err.fields)


def _policy(opts: Any) -> Retry:
    """The Retry ``opts`` (a script's table or object) describe: its data fields only."""
    if opts is None:
        opts = {}
    if not isinstance(opts, dict):
        raise ConfigurationError.InvalidValue(
            key="retry", value=repr(opts)[:200],
            reason=f"recovery.retry options must be a table/object, not {type(opts).__name__}")
    unknown = [key for key in opts if key not in SCRIPT_FIELDS]
    if unknown:
        raise ConfigurationError.InvalidValue(
            key=f"retry.{unknown[0]}", value=repr(opts[unknown[0]])[:200],
            reason=f"retry.{unknown[0]}: unknown option; known: {', '.join(SCRIPT_FIELDS)}")
    # an empty Lua table arrives as {}: a list where the field is one
    data = {key: [] if key in LIST_FIELDS and value == {} else value
            for key, value in opts.items()}
    return Retry(**data)  # a bad value: configuration/invalid_value naming the field


def _tool_of(err: SpellError) -> str:
    """The tool an error came from, when a tool boundary said so; else ``script``."""
    return getattr(err.context.component, "tool_name", None) or "script"
