"""The monitor's observers: what turns hook events into records and counts.

They run on the host's observers' thread (see :mod:`host.hooks.delivery`), never on a
run's: a run pays for a tool call that fails, or that recovery answered for, one queued
event, and nothing for a call that simply succeeds (``failures_only``; its count comes
with ``run_finished``). What they observe:

- ``tool_call_finished`` (failures only): the call's error, kept with its run until the
  run ends, when it is known whether the script handled it (the run went on) or it
  ended the run; a controller's ``Recover`` is recorded as recovered (``hook``);
- ``retry``, ``fallback``, ``degraded``: the error recovery acted on, kept until the
  call it happened in finishes: recovered (by that strategy) if the call then succeeded;
- ``run_finished``: the run's count and its tools' counts; the run's error if no tool
  call's was it; then every record of the run goes to the writer (one per error: an
  error that crossed nested calls, a tools file's call inside a call, is one);
- ``task_finished``: the task try's count.

A run keeps at most :data:`MAX_PER_RUN` records waiting for its end; past it they go
out at once, as handled (the run was still going when they happened). At most
:data:`MAX_RUNS` runs wait so (an interrupted run never tells its end): past it, the
oldest one's records go out as they are.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bridge import SpellError
from host.hooks import (
    Hook,
    RecoveryContext,
    RunFinishedContext,
    TaskContext,
    ToolResultContext,
    observer,
)
from host.monitor.records import impact, make_record

if TYPE_CHECKING:
    from host.monitor.writer import Writer

logger = logging.getLogger("polyspell")

MAX_PER_RUN = 1000  # records a run keeps until its end
MAX_RUNS = 1000  # runs whose records wait for their end (an interrupted run never ends)
BUDGET = 5.0  # seconds an observer of the monitor may take (a record of a deep error: ms)


class Recorder:
    """Records what its observers see into ``writer`` (see the module docstring)."""

    def __init__(self, writer: Writer,
                 on_record: Callable[[dict[str, Any]], Any] | None = None) -> None:
        self.writer = writer
        self.on_record = on_record  # called with each record as it is made (alerts)
        self._lock = threading.Lock()  # one monitor may serve several hosts' threads
        self._runs: dict[str, list[dict[str, Any]]] = {}  # run id -> its records
        self._recovering: dict[tuple[str, str], list[tuple[str, SpellError]]] = {}
        # what else the monitor feeds (metrics, exporters), on this same thread: a run's
        # records with its context (None: records that went out before the run's end),
        # and each count as the writer gets it
        self.on_run: list[Callable[[list[dict[str, Any]], RunFinishedContext | None],
                                   Any]] = []
        self.on_count: list[Callable[[tuple[Any, ...]], Any]] = []

    def hooks(self) -> list[Hook]:
        """The observers to register (``Host(monitor=...)`` does)."""
        budget = BUDGET
        hooks = [
            observer("tool_call_finished", failures_only=True, timeout=budget,
                     name="monitor.tool_call_finished")(self.tool_call_finished),
            *(observer(action, name=f"monitor.{action}", timeout=budget)(
                self._recovery(action)) for action in ("retry", "fallback", "degraded")),
            observer("run_finished", name="monitor.run_finished", timeout=budget)(
                self.run_finished),
            observer("task_finished", name="monitor.task_finished", timeout=budget)(
                self.task_finished),
        ]
        for hook in hooks:  # recording is not one of the run's hooks in its tracebacks
            hook.traced = False
        return hooks

    # -- the observers ------------------------------------------------------------------

    def tool_call_finished(self, ctx: ToolResultContext) -> None:
        """A call that failed, or that recovery or a controller answered for."""
        caller = ctx.caller
        site = (caller.language, caller.file, caller.line, caller.function)
        engine = caller.language
        with self._lock:
            for action, failure in self._recovering.pop((ctx.run_id, ctx.tool), ()):
                recovered = ctx.error is None
                self._keep(ctx.run_id, make_record(
                    failure, handled=True, recovered=recovered, recovery=action,
                    tool=ctx.tool, run_id=ctx.run_id, engine=engine, site=site))
                self._count(_recovery_count(action, recovered))
            if ctx.recovered_from is not None:
                self._keep(ctx.run_id, make_record(
                    ctx.recovered_from, handled=True, recovered=True, recovery="hook",
                    tool=ctx.tool, run_id=ctx.run_id, engine=engine, site=site))
                self._count(_recovery_count("hook", True))
            if ctx.error is not None:
                self._keep(ctx.run_id, make_record(
                    ctx.error, handled=True, tool=ctx.tool, run_id=ctx.run_id,
                    engine=engine, site=site))

    def _recovery(self, action: str) -> Any:
        def recovery(ctx: RecoveryContext) -> None:
            """Recovery acted on ``ctx.failure``: its outcome comes with the call's end."""
            if isinstance(ctx.failure, SpellError):  # not a degradation level's change
                with self._lock:
                    waiting = self._recovering.setdefault((ctx.run_id, ctx.tool), [])
                    if len(waiting) < MAX_PER_RUN:
                        waiting.append((action, ctx.failure))
                    else:  # its outcome is not waited for: recorded as not recovered
                        record = make_record(
                            ctx.failure, handled=True, recovery=action, tool=ctx.tool,
                            run_id=ctx.run_id)
                        self.writer.put(record)
                        self._tell([record], None)

        return recovery

    def run_finished(self, ctx: RunFinishedContext) -> None:
        """The run's counts, its error, and its records, now complete."""
        now = time.time()
        self._count((now, "run", ctx.script, ctx.language, 1, int(ctx.error is not None),
                     ctx.duration))
        for tool, stats in ctx.tool_calls.items():
            self._count((now, "tool", tool, ctx.language, stats.calls, stats.failures,
                         stats.seconds, stats.buckets))
        with self._lock:
            records = self._runs.pop(ctx.run_id, [])
            made = len(records)  # those seen by on_record as they were kept
            for key in [key for key in self._recovering if key[0] == ctx.run_id]:
                for action, failure in self._recovering.pop(key):  # a script's own retry
                    records.append(make_record(
                        failure, handled=True, recovered=ctx.error is None,
                        recovery=action, tool=key[1], run_id=ctx.run_id,
                        engine=ctx.language))
        error = ctx.error
        if isinstance(error, SpellError):
            ended = {each.context.error_id for each in error.chain()}
            final = None
            for record in records:
                # the same occurrence: the error the call ended with, or one made of it on
                # its way out (the boundary's, the script's rethrow), sharing a cause
                if not record["recovered"] and not ended.isdisjoint(_chain_ids(record)):
                    record["handled"] = False  # it ended the run after all
                    record["impact"] = impact(record["severity"], handled=False,
                                              recovered=False)
                    record["error"] = final = final or error.to_dict()  # its whole way
            if final is None:
                records.append(make_record(error, run_id=ctx.run_id, engine=ctx.language))
        if ctx.task_id is not None:  # a coordinator's task: its records say which
            for record in records:
                record["task_id"] = record["task_id"] or ctx.task_id
                record["plan_id"] = record["plan_id"] or ctx.plan_id
        # one error crossing nested calls (a tools file's call inside a call) is one
        # occurrence: its outermost record, the last made, is kept
        unique = {record["error"]["context"]["error_id"]: record for record in records}
        if self.on_record is not None:
            seen = {record["error"]["context"]["error_id"] for record in records[:made]}
            for record in records[made:]:
                if record["error"]["context"]["error_id"] not in seen:
                    seen.add(record["error"]["context"]["error_id"])
                    self.on_record(record)
        for record in unique.values():
            self.writer.put(record)
        self._tell(list(unique.values()), ctx)

    def task_finished(self, ctx: TaskContext) -> None:
        """One try of a coordinator task."""
        self._count((time.time(), "task", ctx.script, ctx.language, 1,
                     int(ctx.status != "succeeded"), ctx.duration or 0.0))

    # -- helpers ------------------------------------------------------------------------

    def _keep(self, run_id: str, record: dict[str, Any]) -> None:
        kept = self._runs.get(run_id)
        if kept is None:
            if len(self._runs) >= MAX_RUNS:  # a run that never told its end (interrupted)
                oldest = next(iter(self._runs))
                forgotten = self._runs.pop(oldest)
                for each in forgotten:
                    self.writer.put(each)
                self._tell(forgotten, None)
            kept = self._runs[run_id] = []
        if self.on_record is not None:  # once per error: the innermost record of one
            error_id = record["error"]["context"]["error_id"]  # crossing nested calls
            if all(each["error"]["context"]["error_id"] != error_id for each in kept):
                self.on_record(record)
        if len(kept) < MAX_PER_RUN:
            kept.append(record)
        else:
            self.writer.put(record)  # as handled: the run was still going
            self._tell([record], None)

    def _count(self, item: tuple[Any, ...]) -> None:
        self.writer.count(item)
        for listener in self.on_count:
            try:
                listener(item)
            except Exception:  # metrics must not cost the store its counts
                logger.exception("polyspell monitor: %r failed", listener)

    def _tell(self, records: list[dict[str, Any]], ctx: RunFinishedContext | None) -> None:
        for listener in self.on_run:
            try:
                listener(records, ctx)
            except Exception:  # an exporter must not cost the store its records
                logger.exception("polyspell monitor: %r failed", listener)


def _chain_ids(record: dict[str, Any]) -> set[str]:
    """The error ids of a record's error and its causes."""
    ids, data = set(), record["error"]
    while isinstance(data, dict):
        ids.add(data.get("context", {}).get("error_id"))
        data = data.get("cause")
    return ids


def _recovery_count(strategy: str, recovered: bool) -> tuple[Any, ...]:
    """The count of one recovery: ``failures`` 1 if the call failed all the same."""
    return (time.time(), "recovery", strategy, "", 1, int(not recovered), 0.0)
