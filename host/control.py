"""The stop state of one run, in one place.

A run is *running* until someone asks it to stop (:meth:`RunControl.request_stop`, with
the error that says why: the first reason wins); the reason is *delivered* when the
script is handed it at a tool call; the run has *ended* when its thread is done, or when
the host *gave up* on it (its deadline passed, its caller was cancelled). The run and
whoever drives it (the coordinator's tasks) read this one object instead of keeping flags
of their own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import anyio

    from bridge import SpellError

RunState = Literal["running", "stop_requested", "delivered", "ended"]


class RunControl:
    """Whether a run should stop, why, whether the script was told, and whether it ended."""

    def __init__(self) -> None:
        self.reason: SpellError | None = None  # why a stop was requested (the first reason)
        self.delivered = False  # the script has been handed the reason at a tool call
        self.given_up = False  # the host stopped waiting: nothing the run does is reported
        self.ended = threading.Event()  # the run's thread is done, or the host gave up
        # what the run's thread is in: None, "sync" (a sync Python tool, which nothing
        # stops before it returns) or "async" (waiting for an async tool on the event loop)
        self.in_tool_kind: Literal["sync", "async"] | None = None
        self._scope: anyio.CancelScope | None = None  # the async tool in progress
        self._waiting: threading.Event | None = None  # set to stop waiting for a sync tool
        # set by a stop request or give-up, never cleared: ends every sleep(), on any thread
        self._wake = threading.Event()

    @property
    def state(self) -> RunState:
        """Where the run stands, as one word."""
        if self.ended.is_set():
            return "ended"
        if self.reason is None:
            return "running"
        return "delivered" if self.delivered else "stop_requested"

    def request_stop(self, reason: SpellError) -> bool:
        """Ask the run to stop with ``reason``; False if a stop was already requested.

        An async tool in progress is cancelled at once; the script gets ``reason`` at its
        next tool call.
        """
        if self.reason is not None:
            return False
        self.reason = reason
        self._interrupt()
        return True

    def deliver(self) -> SpellError | None:
        """The reason to hand the script at a tool call (marking it delivered), if any."""
        if self.reason is not None:
            self.delivered = True
        return self.reason

    def give_up(self) -> None:
        """The host stops waiting for the run: it has ended for everyone but its thread."""
        self.given_up = True
        self.ended.set()
        self._interrupt()

    def _interrupt(self) -> None:
        """End what the run's thread waits for: an async tool, a timed sync tool, a delay."""
        self._wake.set()
        if self._scope is not None:
            self._scope.cancel()
        if self._waiting is not None:
            self._waiting.set()

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` on the run's thread (a retry's delay); False, at once, if the
        run is asked to stop or given up on meanwhile."""
        return not self._wake.wait(seconds)

    @contextmanager
    def in_tool(self, kind: Literal["sync", "async"]) -> Iterator[None]:
        """Mark the run's thread as inside a Python tool of ``kind`` (see :attr:`in_tool_kind`)."""
        self.in_tool_kind = kind
        try:
            yield
        finally:
            self.in_tool_kind = None

    @contextmanager
    def async_scope(self, scope: anyio.CancelScope) -> Iterator[None]:
        """The cancel scope of the async tool in progress: a stop or give-up cancels it."""
        self._scope = scope
        if self.reason is not None or self.given_up:
            scope.cancel()
        try:
            yield
        finally:
            self._scope = None

    @contextmanager
    def waiting(self, wake: threading.Event) -> Iterator[None]:
        """The run's thread waits on ``wake`` for a sync tool running on another thread:
        a stop request or give-up sets it, so the wait ends at once."""
        self._waiting = wake
        if self.reason is not None or self.given_up:
            wake.set()
        try:
            yield
        finally:
            self._waiting = None
