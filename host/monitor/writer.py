"""The background writer: records reach the store in batches, off every run's path.

Whoever records only appends to a bounded queue (:data:`MAX_PENDING`); a thread writes
what is there every :data:`FLUSH_INTERVAL` seconds in one transaction, and at exit. A
burst past the bound never blocks a run: what overflows is counted as dropped (kept in
the store's ``meta``, shown by ``polyspell errors stats``), never silently lost. A store
that fails (a full disk, a file made read-only) never fails a run either: the writer says
so once on the ``polyspell`` logger and counts what it could not write.

An abrupt end (``kill -9``) loses at most what came in the last flush interval;
:meth:`Writer.flush` is there for code that needs certainty.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from bridge import SpellError
from host.monitor.store import Store

logger = logging.getLogger("polyspell")

MAX_PENDING = 10_000  # records and counts waiting for the writer: past it, dropped
FLUSH_INTERVAL = 0.1  # seconds between writes
BATCH = 5_000  # records per transaction at most
MAINTENANCE_EVERY = 3600.0  # seconds between two calls of the writer's maintenance


class Writer:
    """Writes records and counts to ``store`` in batches (see the module docstring)."""

    def __init__(self, store: Store, *, max_pending: int = MAX_PENDING,
                 interval: float = FLUSH_INTERVAL,
                 maintenance: Callable[[], Any] | None = None) -> None:
        self.store = store
        self.maintenance = maintenance  # called on the writer's thread, hourly (pruning)
        self._maintained = time.monotonic()
        self.max_pending = max_pending
        self.interval = interval
        self.dropped = 0  # overflowed the queue (also added to the store's count)
        self.lost = 0  # could not be written (the store failed)
        self.failure: SpellError | None = None  # the store's last failure
        self._records: deque[dict[str, Any]] = deque()
        self._counts: deque[tuple[Any, ...]] = deque()
        self._unsaved_drops = 0
        self._wake = threading.Event()
        self._written = threading.Condition()
        self._asked = 0  # flushes asked for, and done
        self._done = 0
        self._closed = False
        self._thread = threading.Thread(target=_run, args=(weakref.ref(self), self._wake),
                                        name="polyspell error writer", daemon=True)
        self._thread.start()
        atexit.register(_flush_at_exit, weakref.ref(self))

    def put(self, record: dict[str, Any]) -> None:
        """Queue one record (dropped, and counted, if too many wait)."""
        if len(self._records) + len(self._counts) >= self.max_pending or self._closed:
            self.dropped += 1
            self._unsaved_drops += 1
            return
        self._records.append(record)

    def count(self, item: tuple[Any, ...]) -> None:
        """Queue one count: ``(when, what, name, engine, count, failures, seconds)``, and
        for a tool its calls by duration (``ToolCallStats.buckets``) last."""
        if len(self._records) + len(self._counts) >= self.max_pending or self._closed:
            return  # counts are statistics: an overflow drops them without a record
        self._counts.append(item)

    @property
    def pending(self) -> int:
        """Records and counts waiting to be written."""
        return len(self._records) + len(self._counts)

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Write everything queued so far; False if it took longer than ``timeout``."""
        with self._written:
            self._asked += 1
            target = self._asked
            self._wake.set()
            return self._written.wait_for(lambda: self._done >= target, timeout)

    def close(self) -> None:
        """Write what is queued and stop; later records are dropped."""
        if not self._closed:
            self.flush()
            self._closed = True
            self._wake.set()

    # -- the writer thread --------------------------------------------------------------

    def _write_some(self) -> None:
        with self._written:
            asked = self._asked
        while self._records or self._counts or self._unsaved_drops:
            records = [self._records.popleft()
                       for _ in range(min(BATCH, len(self._records)))]
            counts = [self._counts.popleft() for _ in range(min(BATCH, len(self._counts)))]
            drops, self._unsaved_drops = self._unsaved_drops, 0
            try:
                self.store.write(records, counts)
                self.store.add_dropped(drops)
            except SpellError as err:
                self.lost += len(records)
                if self.failure is None:  # once, not once per batch
                    logger.error("polyspell could not record errors in %s: %s (the runs "
                                 "go on; what is not recorded is counted)", self.store.path,
                                 err.message)
                self.failure = err
            except Exception as exc:  # a bug of ours must not end the writer
                self.lost += len(records)
                logger.exception("polyspell's error writer failed: %s", exc)
        if self.maintenance is not None \
                and time.monotonic() - self._maintained >= MAINTENANCE_EVERY:
            self._maintained = time.monotonic()
            try:
                self.maintenance()
            except Exception as exc:  # pruning can wait for the next hour
                logger.warning("polyspell could not prune %s: %s", self.store.path, exc)
        with self._written:
            self._done = asked
            self._written.notify_all()


def _run(ref: weakref.ref[Writer], wake: threading.Event) -> None:
    while True:
        writer = ref()
        if writer is None:
            return
        interval, closed = writer.interval, writer._closed
        writer._write_some()
        del writer
        if closed:
            return
        wake.wait(interval)
        wake.clear()


def _flush_at_exit(ref: weakref.ref[Writer]) -> None:
    writer = ref()
    if writer is not None and not writer._closed:
        writer.flush(timeout=5.0)
