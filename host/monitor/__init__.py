"""Error monitoring: every error recorded, grouped and counted over time.

``Host(monitor=Monitor())`` (or ``monitor=True``, or a path) records every error that
ends a tool call (handled by the script or not), a run or a task try, and every
recovery with its outcome, into a SQLite file, off the runs' path:

- :mod:`host.monitor.records`: what one record holds, and its fingerprint (its group);
- :mod:`host.monitor.store`: the SQLite file (WAL, schema versions, groups, rollups,
  retention), safe with several processes;
- :mod:`host.monitor.writer`: the background writer (batches, a bounded queue);
- :mod:`host.monitor.recorder`: the hook observers that feed it (the monitor is a user of
  the one hook dispatcher, see :mod:`host.hooks`);
- :mod:`host.monitor.alerts`: alert rules evaluated on each record, and their channels
  (``Monitor(alerts=...)``);
- :mod:`host.monitor.metrics`: Prometheus metrics (``Monitor.metrics``,
  ``Monitor.serve``), counted in memory as the recorder goes;
- :mod:`host.monitor.export`: OpenTelemetry span events and Sentry events.

Where the file is: ``path``, else ``$POLYSPELL_ERRORS_DB``, else ``errors.db`` in
polyspell's folder of the user's state directory (:func:`default_path`).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge import ConfigurationError, SpellError
from host.hooks import Hook
from host.monitor.metrics import Counts
from host.monitor.recorder import Recorder
from host.monitor.store import QUIET_BEFORE_REGRESSION, Store
from host.monitor.writer import MAX_PENDING, Writer

if TYPE_CHECKING:
    from host.monitor.alerts import AlertEngine

logger = logging.getLogger("polyspell")

ENV_VAR = "POLYSPELL_ERRORS_DB"
MAX_AGE = 30 * 86400.0  # seconds a record is kept by default
MAX_ROWS = 1_000_000  # records kept by default


def default_path() -> Path:
    """``$POLYSPELL_ERRORS_DB``, else ``polyspell/errors.db`` in the user's state
    directory: ``$XDG_STATE_HOME`` or ``~/.local/state`` (Linux and the like),
    ``~/Library/Application Support`` (macOS), ``%LOCALAPPDATA%`` (Windows)."""
    given = os.environ.get(ENV_VAR)
    if given:
        return Path(given).expanduser()
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = home / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_STATE_HOME") or home / ".local" / "state")
    return base / "polyspell" / "errors.db"


class Monitor:
    """Records the errors of the hosts it is given to (see the module docstring).

    ``max_age`` (seconds) and ``max_rows`` bound what is kept (pruned when the monitor
    opens the file and then hourly); a group silent for ``quiet_before_regression``
    seconds that comes back is ``regressed``; ``max_pending`` records may wait for the
    writer (more are counted as dropped). A file that cannot be used is a ``storage/...``
    error with ``strict``; without it (a run must never fail for its monitor), the
    monitor says so once on the ``polyspell`` logger and counts what it does not record.
    ``alerts``: the alert rules and channels (:func:`host.monitor.alerts.as_alert_config`:
    a list of rules, an ``AlertConfig``, a ``Config`` with ``[alerts]``, True for the
    defaults), evaluated on each record as it is made (:attr:`alerts`, the engine).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 max_age: float | None = MAX_AGE, max_rows: int | None = MAX_ROWS,
                 quiet_before_regression: float = QUIET_BEFORE_REGRESSION,
                 max_pending: int = MAX_PENDING, strict: bool = False,
                 alerts: Any = None, predictor: Any = None) -> None:
        self.path = str(default_path() if path is None else Path(path))
        self.predictor = predictor  # replaces predict's rules (host.monitor.analysis)
        self.max_age, self.max_rows = max_age, max_rows
        self.failure: SpellError | None = None
        self.store: Store | None = None
        try:
            self.store = Store(self.path, quiet_before_regression=quiet_before_regression)
            self.store.prune(max_age=max_age, max_rows=max_rows)
        except SpellError as err:
            if strict:
                raise
            self.failure = err
            logger.error("polyspell cannot record errors in %s: %s (the runs go on, "
                         "unrecorded)", self.path, err.message)
        self.writer = Writer(self.store, max_pending=max_pending,
                             maintenance=self.prune) if self.store is not None else None
        self.quiet_before_regression = quiet_before_regression
        self._recorder = Recorder(self.writer) if self.writer is not None else None
        self.counts = Counts()  # the live metrics, in memory (see host.monitor.metrics)
        if self._recorder is not None:
            self._recorder.on_run.append(self.counts.records)
            self._recorder.on_count.append(self.counts.count)
        self._registry: Any = None
        self._servers: list[Any] = []
        self.alerts: AlertEngine | None = None
        self.use_alerts(alerts)

    def use_alerts(self, alerts: Any) -> None:
        """Evaluate ``alerts`` (as ``Monitor(alerts=)`` takes them) on every record from
        now on, unless the monitor has alerts already (``Host(config=)`` gives its file's
        ``[alerts]`` this way: the monitor's own win). Before the monitor's :attr:`hooks`
        are registered (its breaker observer is one of them)."""
        config_module = sys.modules.get("host.config")  # a Config was made: it is loaded
        if alerts is None or alerts is False or (
                config_module is not None and isinstance(alerts, config_module.Config)
                and alerts.alerts is None):
            return  # no alerts: their models (and recovery's, for webhooks) never load
        from host.monitor.alerts import AlertEngine, LastSeen, as_alert_config

        config = as_alert_config(alerts)
        if config is None or self.alerts is not None or self._recorder is None \
                or self.store is None or self.writer is None:
            return
        reader = self.store.last_seen if self.path == ":memory:" else LastSeen(self.path)
        self.alerts = AlertEngine(config, last_seen=reader,
                                  record=self.writer.put, quiet=self.quiet_before_regression)
        self._recorder.on_record = self.alerts.observe

    @property
    def hooks(self) -> list[Hook]:
        """The observers that feed the monitor (none if its file cannot be used)."""
        if self._recorder is None:
            return []
        alerts = [] if self.alerts is None else self.alerts.hooks()
        return [*self._recorder.hooks(), *alerts, *self.counts.hooks()]

    @property
    def metrics(self) -> Any:
        """This monitor's ``prometheus_client`` registry (its own, not the process's
        default), made on first use: the errors, runs, tool calls and recoveries of the
        hosts it monitors since it was made (see :mod:`host.monitor.metrics`)."""
        if self._registry is None:
            from host.monitor.metrics import LiveCollector, registry_of

            self._registry = registry_of(LiveCollector(self.counts, lambda: self.dropped))
        return self._registry

    def serve(self, port: int = 9464, addr: str = "127.0.0.1") -> Any:
        """Serve :attr:`metrics` at ``http://addr:port/metrics`` in a daemon thread (port
        0: any free one) until :meth:`close`: the :class:`host.monitor.metrics.
        MetricsServer` (its ``url``). A bad or busy port is a ``configuration`` error."""
        from host.monitor.metrics import MetricsServer

        server = MetricsServer(self.metrics, port, addr)
        self._servers.append(server)
        return server

    def add_listener(self, listener: Any) -> None:
        """Have ``listener(records, ctx)`` called with each run's records as the run ends
        (``ctx`` its ``RunFinishedContext``; None for records that went out before it),
        on the observers' thread: how exporters get them."""
        if self._recorder is not None:
            self._recorder.on_run.append(listener)

    @property
    def dropped(self) -> int:
        """Records not recorded in this process: the queue was full, or the file failed."""
        writer = self.writer
        return 0 if writer is None else writer.dropped + writer.lost

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Send the alerts raised so far and write every record made so far; False if it
        took longer than ``timeout``."""
        sent = True if self.alerts is None else self.alerts.flush(timeout)
        return (True if self.writer is None else self.writer.flush(timeout)) and sent

    def prune(self) -> int:
        """Delete what is older than ``max_age`` or past ``max_rows``: the records
        deleted."""
        if self.store is None:
            return 0
        return self.store.prune(max_age=self.max_age, max_rows=self.max_rows)

    # -- reading (host.monitor.analysis) ---------------------------------------------

    def _store(self) -> Store:
        if self.store is None:
            raise self.failure or SpellError.wrap(RuntimeError("no store"), "storage")
        return self.store

    def records(self, **filters: Any) -> list[dict[str, Any]]:
        """The newest records first (``since``, ``code``, ``component``, ``group``,
        ``limit``: :meth:`Store.records`)."""
        return self._store().records(**filters)

    def record(self, record_id: str) -> dict[str, Any]:
        """The record ``record_id`` (or a unique prefix of it)."""
        return self._store().record(record_id)

    def groups(self, **filters: Any) -> list[dict[str, Any]]:
        """The groups, the most recently seen first (``since``, ``limit``)."""
        return self._store().groups(**filters)

    def stats(self, window: str | float = "24h", **options: Any) -> dict[str, Any]:
        """What happened over ``window``: :func:`host.monitor.analysis.stats`."""
        from host.monitor.analysis import stats

        return stats(self._store(), window, **options)

    def trends(self, window: str | float = "7d", bucket: str | float = "1d",
               **options: Any) -> dict[str, Any]:
        """Counts per bucket over ``window``: :func:`host.monitor.analysis.trends`."""
        from host.monitor.analysis import trends

        return trends(self._store(), window, bucket, **options)

    def predict(self, *, tool: str | None = None, script: str | None = None,
                breakers: Any = None, **options: Any) -> dict[str, Any]:
        """How likely the next call of ``tool`` (or run of ``script``) fails, with the
        evidence: :func:`host.monitor.analysis.predict` (``breakers``: a host's, to
        count an open breaker; the monitor's ``predictor`` replaces the rules)."""
        from host.monitor.analysis import predict

        return predict(self._store(), tool=tool, script=script, breakers=breakers,
                       predictor=self.predictor, **options)

    def close(self) -> None:
        """Send the alerts, write what is queued, stop serving metrics and close the
        file."""
        for server in self._servers:
            server.close()
        self._servers.clear()
        if self.alerts is not None:
            self.alerts.close()
        if self.writer is not None:
            self.writer.close()
        if self.store is not None:
            self.store.close()

    def __repr__(self) -> str:
        return f"Monitor({self.path!r})"


def as_monitor(value: Any) -> Monitor | None:
    """``Host(monitor=...)``: a :class:`Monitor`, a path, True (the default file), or
    None/False (none)."""
    if value is None or value is False:
        return None
    if value is True:
        return Monitor()
    if isinstance(value, Monitor):
        return value
    if isinstance(value, (str, os.PathLike)):
        return Monitor(value)
    raise ConfigurationError.InvalidValue(
        key="monitor", value=repr(value)[:200],
        reason="monitor is a Monitor, a path to its file, True (the default file) or None")


__all__ = ["ENV_VAR", "MAX_AGE", "MAX_ROWS", "Monitor", "Store", "as_monitor",
           "default_path"]
