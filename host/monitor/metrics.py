"""Prometheus metrics of a monitor: live (what this process's runs did) or from the store
(what every process that wrote the file did).

The metrics (label values bounded: no ids, messages, parameters or file names):

====================================  =========  ============================================
metric                                type       labels
====================================  =========  ============================================
``polyspell_errors_total``            counter    category, kind, engine, component, severity
``polyspell_error_recoveries_total``  counter    strategy, outcome (``recovered``, ``failed``)
``polyspell_tool_calls_total``        counter    tool, outcome (``success``, ``failure``)
``polyspell_tool_duration_seconds``   histogram  tool
``polyspell_runs_total``              counter    engine, outcome (``success``, ``failure``)
``polyspell_circuit_state``           gauge      tool (0 closed, 1 half open, 2 open)
``polyspell_user_impact_score``       summary    severity (sum and count of the records'
                                                 impact, 0 to 1: see ``records.impact``)
``polyspell_monitor_dropped_total``   counter    (records that could not be recorded)
====================================  =========  ============================================

``component`` is the component's *type* (``tool``, ``script``, ``hook``, ``system``...):
the tool's name has its own label in the tool metrics, and a script's or hook's name is a
file name. ``tool`` is bounded by :data:`MAX_TOOLS` distinct names (a hostile tools file
could register thousands; the later ones count as ``other``); every other label by
:data:`MAX_VALUES` distinct values of at most :data:`MAX_LABEL_CHARS` characters.

The live metrics are counted in memory (:class:`Counts`, plain Python, fed by the
monitor's recorder on the observers' thread: a run pays nothing for them); the
``prometheus_client`` registry is only made when asked for (``Monitor.metrics``,
``Monitor.serve``), so that a run that exposes nothing never imports it. The store's
metrics (:class:`StoreCollector`, ``polyspell metrics``) are read from its tables on
each scrape: counters since the store's oldest kept hour; the store keeps no duration
buckets for the hours it counted before schema 3 (those calls are in ``+Inf`` only) nor
breaker states (no ``circuit_state``).

``prometheus-client`` comes with ``pip install 'polyspell[monitoring]'``.
"""

from __future__ import annotations

import bisect
import logging
import socket
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from bridge import ConfigurationError, SpellError
from host.hooks import DURATION_BUCKETS, CircuitContext, Hook, RunFinishedContext, observer
from host.monitor.store import BUCKET_BOUNDS

if TYPE_CHECKING:
    from host.monitor.store import Store

logger = logging.getLogger("polyspell")

MAX_TOOLS = 200  # distinct tool names as label values; the rest count as OTHER
MAX_VALUES = 50  # distinct values of any other label
MAX_LABEL_CHARS = 80
OTHER = "other"
UNKNOWN = "unknown"  # no value (an error outside any engine)
CIRCUIT_STATES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
SEVERITIES = ("trace", "info", "warning", "error", "critical", "fatal")
INSTALL = "pip install 'polyspell[monitoring]'"


class Bounded:
    """The values one label may take: the first ``limit`` distinct ones, then
    :data:`OTHER` (a series never changes name once it has one)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: Any) -> str:
        text = UNKNOWN if value is None or value == "" else str(value)[:MAX_LABEL_CHARS]
        if text in self.seen:
            return text
        if len(self.seen) < self.limit:
            self.seen.add(text)
            return text
        return OTHER


class Counts:
    """What the metrics say, counted in memory (thread-safe, no ``prometheus_client``).

    Fed with records (:meth:`records`), the writer's counts (:meth:`count`), runs' tool
    durations (:meth:`durations`) and breaker changes (:meth:`circuit`)."""

    def __init__(self, *, max_tools: int = MAX_TOOLS) -> None:
        self._lock = threading.Lock()
        self.tool = Bounded(max_tools)  # one bound for the tool label of every metric
        self._bounds: dict[str, Bounded] = {}
        self.errors: dict[tuple[str, ...], float] = {}
        self.recoveries: dict[tuple[str, ...], float] = {}
        self.tool_calls: dict[tuple[str, ...], float] = {}
        self.runs: dict[tuple[str, ...], float] = {}
        self.buckets: dict[str, list[float]] = {}  # tool -> per bucket, then the rest
        self.seconds: dict[str, float] = {}
        self.circuits: dict[str, float] = {}
        self.impact: dict[str, list[float]] = {}  # severity -> [sum, count]
        self.dropped = 0.0

    def label(self, name: str, value: Any) -> str:
        """``value`` as a value of the label ``name`` (bounded)."""
        bound = self._bounds.get(name)
        if bound is None:
            bound = self._bounds[name] = Bounded(MAX_VALUES)
        return bound(value)

    def records(self, records: Iterable[dict[str, Any]], ctx: Any = None) -> None:
        """Count records (see :mod:`host.monitor.records`); ``ctx``, a run's
        ``RunFinishedContext``, brings its tools' durations."""
        label = self.label
        with self._lock:
            for record in records:
                component = str(record.get("component") or "").split(":", 1)[0]
                severity = label("severity", record.get("severity"))
                key = (label("category", record.get("category")),
                       label("kind", record.get("kind")), label("engine", record.get("engine")),
                       label("component", component), severity)
                self.errors[key] = self.errors.get(key, 0) + 1
                total = self.impact.setdefault(severity, [0.0, 0.0])
                total[0] += float(record.get("impact") or 0.0)
                total[1] += 1
        if isinstance(ctx, RunFinishedContext):
            self.durations(ctx)

    def count(self, item: tuple[Any, ...]) -> None:
        """One of the writer's counts: ``(when, what, name, engine, count, failures,
        seconds)`` (and a tool's buckets), ``what`` a ``tool``, a ``run`` or a
        ``recovery``."""
        _, what, name, engine, count, failures, _seconds, *_buckets = item
        with self._lock:
            if what == "tool":
                tool = self.tool(name)
                _add(self.tool_calls, (tool, "success"), count - failures)
                _add(self.tool_calls, (tool, "failure"), failures)
            elif what == "run":
                engine = self.label("engine", engine)
                _add(self.runs, (engine, "success"), count - failures)
                _add(self.runs, (engine, "failure"), failures)
            elif what == "recovery":
                strategy = self.label("strategy", name)
                _add(self.recoveries, (strategy, "recovered"), count - failures)
                _add(self.recoveries, (strategy, "failed"), failures)

    def durations(self, ctx: RunFinishedContext) -> None:
        """The duration buckets of a run's tool calls."""
        with self._lock:
            for name, stats in ctx.tool_calls.items():
                tool = self.tool(name)
                buckets = self.buckets.setdefault(tool, [0.0] * (len(DURATION_BUCKETS) + 1))
                for index, n in enumerate(stats.buckets[:len(buckets)]):
                    buckets[index] += n
                self.seconds[tool] = self.seconds.get(tool, 0.0) + stats.seconds

    def circuit(self, ctx: CircuitContext) -> None:
        """A breaker changed state (the ``circuit_changed`` observer)."""
        with self._lock:
            self.circuits[self.tool(ctx.tool)] = CIRCUIT_STATES.get(ctx.new, 0.0)

    def hooks(self) -> list[Hook]:
        """The observer the monitor adds for breaker states."""
        return [observer("circuit_changed", name="monitor.metrics.circuit_changed")(
            self.circuit)]

    def families(self, *, dropped: float | None = None) -> list[Any]:
        """The metric families now (``prometheus_client`` metric objects)."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            SummaryMetricFamily,
        )
        from prometheus_client.utils import floatToGoString

        def counter(name: str, doc: str, labels: list[str], values: dict[Any, float]
                    ) -> Any:
            family = CounterMetricFamily(name, doc, labels=labels)
            for key, value in sorted(values.items()):
                family.add_metric(list(key), value)
            return family

        with self._lock:
            out = [
                counter("polyspell_errors_total", "Errors recorded (every error that ended "
                        "a tool call, a run or a task try, handled or not).",
                        ["category", "kind", "engine", "component", "severity"],
                        self.errors),
                counter("polyspell_error_recoveries_total", "Recoveries (retry, fallback, "
                        "degraded, hook) and whether the call then succeeded.",
                        ["strategy", "outcome"], self.recoveries),
                counter("polyspell_tool_calls_total", "Tool calls, by outcome.",
                        ["tool", "outcome"], self.tool_calls),
                counter("polyspell_runs_total", "Script runs, by outcome.",
                        ["engine", "outcome"], self.runs),
            ]
            histogram = HistogramMetricFamily(
                "polyspell_tool_duration_seconds", "Tool call durations.", labels=["tool"])
            for tool, buckets in sorted(self.buckets.items()):
                cumulative, total = [], 0.0
                for bound, n in zip(BUCKET_BOUNDS, buckets, strict=True):
                    total += n
                    cumulative.append((floatToGoString(bound), total))
                histogram.add_metric([tool], cumulative, sum_value=self.seconds.get(tool, 0))
            out.append(histogram)
            gauge = GaugeMetricFamily(
                "polyspell_circuit_state", "Circuit breaker state: 0 closed, 1 half open, "
                "2 open.", labels=["tool"])
            for tool, state in sorted(self.circuits.items()):
                gauge.add_metric([tool], state)
            out.append(gauge)
            summary = SummaryMetricFamily(
                "polyspell_user_impact_score", "How much people using the agents felt the "
                "errors: 0 nothing to 1 a fatal error that ended a run (sum and count).",
                labels=["severity"])
            for severity, (score, n) in sorted(self.impact.items()):
                summary.add_metric([severity], count_value=n, sum_value=score)
            out.append(summary)
            drops = CounterMetricFamily("polyspell_monitor_dropped_total",
                                        "Records that could not be recorded (a full queue, "
                                        "a failing store).")
            drops.add_metric([], self.dropped if dropped is None else dropped)
            out.append(drops)
        return out


def _add(table: dict[tuple[str, ...], float], key: tuple[str, ...], n: float) -> None:
    table[key] = table.get(key, 0) + n


class LiveCollector:
    """A ``prometheus_client`` collector of a monitor's :class:`Counts`."""

    def __init__(self, counts: Counts, dropped: Any = None) -> None:
        self.counts = counts
        self.dropped = dropped  # a callable: the monitor's dropped records

    def collect(self) -> Iterator[Any]:
        """The families at this scrape."""
        dropped = None if self.dropped is None else float(self.dropped())
        yield from self.counts.families(dropped=dropped)


class StoreCollector:
    """A ``prometheus_client`` collector reading a store's tables at each scrape: what
    every process that wrote the file counted, since its oldest kept hour."""

    def __init__(self, store: Store, *, max_tools: int = MAX_TOOLS) -> None:
        self.store = store
        self.max_tools = max_tools
        self._failed = False

    def counts(self) -> Counts:
        """The store's counts now (a ``storage/...`` error if it cannot be read)."""
        counts = Counts(max_tools=self.max_tools)
        calls = self.store.calls(0)
        # the oldest names keep theirs: a name never turns into "other" as others come
        first: dict[str, int] = {}
        for row in calls:
            if row["what"] == "tool":
                first[row["name"]] = min(first.get(row["name"], row["hour"]), row["hour"])
        for name in sorted(first, key=lambda name: (first[name], name)):
            counts.tool(name)
        for row in sorted(calls, key=lambda row: row["hour"]):
            counts.count((0, row["what"], row["name"], row["engine"], row["count"],
                          row["failures"], row["seconds"]))
            if row["what"] == "tool":  # every call in +Inf, until its bucket is known
                tool = counts.tool(row["name"])
                buckets = counts.buckets.setdefault(tool, [0.0] * len(BUCKET_BOUNDS))
                buckets[-1] += row["count"]
                counts.seconds[tool] = counts.seconds.get(tool, 0.0) + row["seconds"]
        for row in self.store.durations(0):
            # a bound of another polyspell's buckets counts in the next bound of these
            index = bisect.bisect_left(BUCKET_BOUNDS, row["le"])
            buckets = counts.buckets.get(counts.tool(row["tool"]))
            if buckets is not None and index < len(buckets) - 1:
                n = min(row["count"], buckets[-1])  # never more than the calls counted
                buckets[index] += n
                buckets[-1] -= n
        for row in self.store.rollup(0):
            category, _, kind = row["code"].partition("/")
            n = row["count"]
            key = (counts.label("category", category), counts.label("kind", kind),
                   counts.label("engine", row["engine"]),
                   counts.label("component", row["component"].split(":", 1)[0]),
                   counts.label("severity", row["severity"]))
            counts.errors[key] = counts.errors.get(key, 0) + n
            total = counts.impact.setdefault(key[4], [0.0, 0.0])
            total[0] += row["impact"]
            total[1] += n
        counts.dropped = float(self.store.dropped())
        return counts

    def collect(self) -> Iterator[Any]:
        """The families at this scrape; ``polyspell_monitor_store_up`` 0 (and nothing
        else) if the store cannot be read."""
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("polyspell_monitor_store_up",
                               "1 if the error store could be read at this scrape.")
        try:
            counts = self.counts()
        except SpellError as err:
            if not self._failed:
                logger.error("polyspell metrics cannot read %s: %s", self.store.path,
                             err.message)
            self._failed = True
            up.add_metric([], 0)
            yield up
            return
        self._failed = False
        up.add_metric([], 1)
        yield up
        yield from counts.families()


def registry_of(*collectors: Any) -> Any:
    """A registry of its own (not the process's default one: two monitors never clash)
    holding ``collectors``."""
    prometheus_client = require_prometheus()
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return registry


def require_prometheus() -> Any:
    """``prometheus_client``, or a configuration error saying how to install it."""
    try:
        import prometheus_client
    except ImportError:
        raise ConfigurationError.Usage(
            reason=f"metrics need prometheus-client, which is not installed ({INSTALL})",
            command="metrics") from None
    return prometheus_client


def check_port(port: Any, key: str = "port") -> int:
    """``port`` as a TCP port number (0: any free one), or ``configuration/invalid_value``."""
    number = None
    if isinstance(port, int) and not isinstance(port, bool):
        number = port
    elif isinstance(port, str) and port.strip().isdigit():
        number = int(port.strip())
    if number is None or not 0 <= number <= 65535:
        raise ConfigurationError.InvalidValue(
            key=key, value=str(port)[:100], reason="a port is a whole number from 0 to 65535")
    return number


class MetricsServer:
    """A running ``/metrics`` endpoint (``prometheus_client``'s HTTP server in a daemon
    thread): ``url``, ``port``, :meth:`close`."""

    def __init__(self, registry: Any, port: Any, addr: str = "127.0.0.1") -> None:
        prometheus_client = require_prometheus()
        number = check_port(port)
        try:
            self._server, self._thread = prometheus_client.start_http_server(
                number, addr=addr, registry=registry)
        except socket.gaierror as exc:
            raise ConfigurationError.InvalidValue(
                key="addr", value=str(addr)[:100],
                reason=f"cannot serve metrics on {addr!r}: {exc.strerror or exc}") from None
        except OSError as exc:
            why = "it is in use" if getattr(exc, "errno", None) in (48, 98, 10048) else \
                exc.strerror or str(exc)
            raise ConfigurationError.InvalidValue(
                key="port", value=number,
                reason=f"cannot serve metrics on {addr}:{number}: {why}") from None
        self.addr = addr
        self.port: int = self._server.server_address[1]

    @property
    def url(self) -> str:
        """Where the metrics are: ``http://ADDR:PORT/metrics``."""
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def __repr__(self) -> str:
        return f"MetricsServer({self.url!r})"


__all__ = ["CIRCUIT_STATES", "MAX_TOOLS", "Counts", "LiveCollector", "MetricsServer",
           "StoreCollector", "check_port", "registry_of"]
