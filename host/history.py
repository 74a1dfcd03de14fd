"""The recovery history: what recovery did in a run or a task, as a bounded list of events.

Every retry, fallback tried, breaker refusal, restart and degraded answer is one event::

    {"action": "retry", "tool": "search", "attempt": 1, "delay": 0.1,
     "error": "tool/execution_failed", "at": "2026-12-03T14:44:13.512+00:00"}

``action`` is ``retry``, ``fallback``, ``breaker_refused``, ``restart`` or ``degraded``;
``tool`` the tool the policy protects (for a coordinator's task retry: the task's script);
``attempt`` the try that failed (1-based; for a fallback, how many errors came before it);
``delay`` the seconds waited before the next try (``None`` when nothing was waited);
``error`` the code of the error that made recovery act; ``at`` when (UTC, ISO 8601). A
fallback event also says which option it went to: ``option`` is the option's tool name,
``value``, ``cached`` or ``endpoint <url>``.

A history keeps at most :data:`MAX_EVENTS` events, so that a script retrying in a loop
cannot fill the memory: past that, the first half is kept, the newest events replace the
older ones of the second half, and :attr:`RecoveryHistory.dropped` counts the events left
out. Where the history is written out (``context.metadata["recovery"]``, ``polyspell run
--json``, a plan report), ``recovery_dropped`` carries that count when it is not 0.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

MAX_EVENTS = 1000

ACTIONS = ("retry", "fallback", "breaker_refused", "restart", "degraded")


def recovery_event(action: str, tool: str, attempt: int, error: str,
                   delay: float | None = None, option: str | None = None) -> dict[str, Any]:
    """One event of a recovery history (see the module docstring)."""
    event: dict[str, Any] = {
        "action": action, "tool": tool, "attempt": attempt,
        "delay": None if delay is None else round(delay, 6), "error": error,
        "at": datetime.now(UTC).isoformat()}
    if option is not None:
        event["option"] = option
    return event


class RecoveryHistory(list):
    """A list of recovery events that keeps at most ``limit`` of them (see the module
    docstring); :attr:`dropped` counts the ones it left out."""

    def __init__(self, limit: int = MAX_EVENTS) -> None:
        super().__init__()
        self.limit = max(2, limit)
        self.dropped = 0
        self.total = 0  # events ever added, kept or dropped: it only grows

    def add(self, event: dict[str, Any]) -> dict[str, Any]:
        """Keep ``event`` (the newest), dropping the oldest of the second half when full."""
        self.total += 1
        if len(self) >= self.limit:
            del self[self.limit // 2]  # a memmove of a few hundred pointers
            self.dropped += 1
        self.append(event)
        return event

    def absorb(self, events: list[dict[str, Any]], dropped: int = 0) -> None:
        """Add another history's events (a task's try) and its count of dropped ones."""
        for event in events:
            self.add(event)
        self.dropped += dropped
        self.total += dropped

    def as_json(self) -> dict[str, Any]:
        """``{"recovery": [...]}``, with ``recovery_dropped`` when some were dropped: the
        keys written beside a result or an error."""
        out: dict[str, Any] = {"recovery": list(self)}
        if self.dropped:
            out["recovery_dropped"] = self.dropped
        return out
