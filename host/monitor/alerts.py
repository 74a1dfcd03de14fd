"""Alerts: rules, as data, evaluated on each record as the monitor makes it.

``Monitor(alerts=...)`` (a list of :class:`Rule`, an :class:`AlertConfig`, True for the
defaults) or a config file's ``[alerts]`` table::

    [alerts]
    repeat_interval = "1h"          # the same alert key is not sent again before it

    [[alerts.rules]]                # anything at or above a severity, at once
    kind = "severity"
    min_severity = "critical"

    [[alerts.rules]]                # more than 10 errors of one component in 5 minutes
    kind = "rate"
    threshold = 10
    window = "5m"
    by = "component"                # or "group"

    [[alerts.rules]]
    kind = "new_group"              # an error group never seen before

    [[alerts.rules]]
    kind = "regression"             # a group back after a quiet period (default: the
                                    # monitor's quiet_before_regression, 24 h)

    [[alerts.rules]]                # this window's count more than factor times the
    kind = "spike"                  # median of the previous `windows` windows
    window = "5m"
    factor = 3
    windows = 6
    min_count = 5

    [[alerts.channels]]
    type = "logging"                # the "polyspell.alerts" logger
    [[alerts.channels]]
    type = "file"                   # JSON lines, appended (relative: to the config file)
    path = "alerts.jsonl"
    [[alerts.channels]]
    type = "webhook"                # httpx POST of the alert as JSON
    url = "https://hooks.example.com/polyspell"
    timeout = 5
    retry = { attempts = 3, initial = 0.2 }

Without rules, the defaults are the seed's: ``critical`` or worse alerts at once, and more
than 10 errors of one component within 5 minutes. Without channels, the ``logging`` one.
Every rule may narrow what it counts with ``codes`` (codes or categories) and
``components``.

Noise control, as Alertmanager does it: an alert's key is (rule, component, group) (a rate
or spike ``by = "component"`` has no group in its key); an alert of a key sent less than
``repeat_interval`` ago is not sent again, but counted (``suppressed``, given with the
next one sent); while a tool's circuit breaker is open (``circuit_changed``, observed on
the one hook dispatcher) the alerts of that tool's calls are inhibited (counted).

Evaluation runs on the monitor's observers' thread (never a run's): windows are kept in
memory, per process (bounded: at most :data:`MAX_KEYS` keys, the least recent
forgotten, each with a deque of at most ``threshold + 1`` times or ``windows + 1``
counts, and at most :data:`MAX_TIMES` items per rule), so a rate counts the errors this
process saw; whether a group is new or regressed is read
from the store for a fingerprint this process has not seen yet. Times are the records'
own timestamps. Sending happens on one sender thread per monitor (started by an alert,
ended after :data:`IDLE` seconds without one), through a bounded queue
(:data:`MAX_QUEUED`; past it an alert is dropped, counted and logged once): a webhook
that hangs holds only that thread, for at most its timeout and retries. A callable
channel runs on that thread too. ``Monitor.flush()`` waits for the alerts raised so far
to be sent; at exit, they are given 5 seconds.

A channel that fails does not keep the alert from the others. When every channel fails,
the alert is lost: that is ``event/emission_failed`` (``event_type = "alert"``), logged on
``polyspell.alerts`` and recorded into the store as an error of its own.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import re
import sqlite3
import statistics
import threading
import time
import uuid
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from bridge import ErrorContext, EventComponent, EventError, Severity, SpellError
from host.lines import shown_text
from host.recovery.model import Policy
from host.recovery.retry import Retry, check_code

logger = logging.getLogger("polyspell.alerts")

MAX_KEYS = 10_000  # alert keys (and groups) kept in memory, the least recent dropped
MAX_TIMES = 1_000_000  # times (or window counts) one rule keeps in memory, over its keys
MAX_QUEUED = 1_000  # alerts waiting for the sender thread
IDLE = 10.0  # seconds without an alert after which the sender thread ends
MAX_TEXT = 200  # characters of a script's text (a file, a message) in a summary
SHOWN = 500  # characters of a summary in a log line
DEFAULT_REPEAT = 3600.0
DEFAULT_WEBHOOK_TIMEOUT = 5.0
SEVERITIES = ("trace", "info", "warning", "error", "critical", "fatal")
_LEVEL = {name: int(Severity.parse(name)) for name in SEVERITIES}

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(value: Any) -> Any:
    """``"5m"``, ``"1h"``, ``"30s"``, ``"2d"`` as seconds; numbers as they are."""
    if isinstance(value, str):
        found = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*([smhd])\s*", value)
        if found is None:
            raise ValueError(f"a duration is seconds or a number with s, m, h or d "
                             f"(\"5m\"), not {value[:50]!r}")
        return float(found.group(1)) * _UNITS[found.group(2)]
    return value


Seconds = Annotated[float, BeforeValidator(_duration)]
SeverityName = Literal["trace", "info", "warning", "error", "critical", "fatal"]
RuleKind = Literal["severity", "rate", "new_group", "regression", "spike"]

# the fields each kind of rule reads (besides kind, name, codes, components, min_severity,
# repeat_interval): a field set on a kind that ignores it is refused, not ignored
_FIELDS: dict[str, set[str]] = {
    "severity": set(),
    "rate": {"threshold", "window", "by"},
    "new_group": set(),
    "regression": {"quiet"},
    "spike": {"window", "by", "factor", "windows", "min_count"},
}


class Rule(Policy):
    """One alert rule (see the module docstring)."""

    policy_name: ClassVar[str] = "rule"

    kind: RuleKind
    name: str | None = Field(None, min_length=1, max_length=100)
    min_severity: SeverityName | None = None  # severity: default critical; others: all
    codes: list[str] = Field(default_factory=list, max_length=100)
    components: list[str] = Field(default_factory=list, max_length=100)
    repeat_interval: Seconds | None = Field(None, ge=0, le=1e9, allow_inf_nan=False)
    threshold: int = Field(10, ge=0, le=10_000)
    window: Seconds = Field(300.0, gt=0, le=1e9, allow_inf_nan=False)
    by: Literal["component", "group"] = "component"
    quiet: Seconds | None = Field(None, gt=0, le=1e9, allow_inf_nan=False)
    factor: float = Field(3.0, gt=0, le=1e6, allow_inf_nan=False)
    windows: int = Field(6, ge=1, le=1000)
    min_count: int = Field(5, ge=1, le=1_000_000)

    @field_validator("codes")
    @classmethod
    def _known_codes(cls, value: list[str]) -> list[str]:
        for code in value:
            check_code(code)
        return value

    @model_validator(mode="after")
    def _fields_of_kind(self) -> Rule:
        ignored = (self.model_fields_set & set().union(*_FIELDS.values())) \
            - _FIELDS[self.kind]
        if ignored:
            raise ValueError(f"{', '.join(sorted(ignored))}: not a field of a "
                             f"{self.kind!r} rule")
        return self

    @property
    def label(self) -> str:
        """The rule's name in alerts: ``name``, else its kind."""
        return self.name or self.kind

    @property
    def floor(self) -> str:
        """The lowest severity the rule counts."""
        return self.min_severity or ("critical" if self.kind == "severity" else "trace")


DEFAULT_RULES = (Rule(kind="severity", min_severity="critical"),
                 Rule(kind="rate", threshold=10, window=300.0))
"""The seed's rules: critical or worse at once; more than 10 errors of a component in
5 minutes."""


class Channel(Policy):
    """Where alerts go: ``logging`` (``logger``), ``file`` (``path``, JSON lines),
    ``webhook`` (``url``, ``timeout``, ``retry``) or, from Python, ``callable``
    (``function``, called with the alert's dict)."""

    policy_name: ClassVar[str] = "channel"

    type: Literal["logging", "file", "webhook", "callable"]
    logger: str | None = Field(None, min_length=1, max_length=200)
    path: str | None = Field(None, min_length=1, max_length=4096)
    url: str | None = Field(None, min_length=1, max_length=2048)
    timeout: Seconds | None = Field(None, gt=0, le=3600, allow_inf_nan=False)
    retry: Retry | None = None
    function: Callable[[dict[str, Any]], Any] | None = None

    @model_validator(mode="after")
    def _fields_of_type(self) -> Channel:
        needs = {"logging": set(), "file": {"path"}, "webhook": {"url"},
                 "callable": {"function"}}[self.type]
        allowed = needs | {"logging": {"logger"}, "file": set(), "webhook": {"timeout", "retry"},
                           "callable": set()}[self.type]
        given = self.model_fields_set - {"type"}
        if given - allowed:
            raise ValueError(f"{', '.join(sorted(given - allowed))}: not a field of a "
                             f"{self.type!r} channel")
        if needs - given:
            raise ValueError(f"a {self.type!r} channel needs {', '.join(sorted(needs))}")
        if self.url is not None:
            from host.recovery.fallback import check_url, httpx_installed

            check_url(self.url)
            if not httpx_installed():
                raise ValueError("a webhook channel needs httpx (pip install httpx)")
        return self

    @property
    def label(self) -> str:
        """The channel as errors name it (a webhook without credentials or query)."""
        if self.type == "webhook":
            from host.recovery.fallback import public_url

            return f"webhook {public_url(self.url or '')}"
        if self.type == "file":
            return f"file {self.path}"
        if self.type == "callable":
            return f"callable {getattr(self.function, '__qualname__', 'function')}"
        return f"logging {self.logger or logger.name}"


def _channel(item: Any) -> Any:
    """A plain callable among channels is a ``callable`` channel."""
    if callable(item) and not isinstance(item, (Channel, type)):
        return Channel(type="callable", function=item)
    return item


class AlertConfig(Policy):
    """Alert rules and channels (see the module docstring): ``rules`` (default: the
    seed's, :data:`DEFAULT_RULES`), ``channels`` (default: ``logging``), and
    ``repeat_interval`` (seconds, or ``"1h"``: a rule's own wins)."""

    policy_name: ClassVar[str] = "alerts"

    rules: list[Rule] = Field(default_factory=lambda: list(DEFAULT_RULES), max_length=100)
    channels: list[Annotated[Channel, BeforeValidator(_channel)]] = Field(
        default_factory=lambda: [Channel(type="logging")], min_length=1, max_length=20)
    repeat_interval: Seconds = Field(DEFAULT_REPEAT, ge=0, le=1e9, allow_inf_nan=False)

    def relative_to(self, folder: str | os.PathLike[str]) -> AlertConfig:
        """This config with its files' relative paths taken from ``folder`` (a config
        file's)."""
        channels = [channel.model_copy(update={"path": str(Path(folder) / channel.path)})
                    if channel.path and not Path(channel.path).is_absolute() else channel
                    for channel in self.channels]
        return self.model_copy(update={"channels": channels})


def as_alert_config(value: Any) -> AlertConfig | None:
    """``Monitor(alerts=...)``: an :class:`AlertConfig`, a list of rules (dicts or
    :class:`Rule`), a mapping (an ``[alerts]`` table), a :class:`host.config.Config` (its
    ``[alerts]``), True (the defaults), or None/False (no alerts)."""
    from bridge import ConfigurationError
    from host.config import Config

    if value is None or value is False:
        return None
    if value is True:
        return AlertConfig()
    if isinstance(value, AlertConfig):
        return value
    if isinstance(value, Config):
        if value.alerts is None:
            return None
        source = value.source
        return value.alerts.relative_to(Path(source).parent) if source else value.alerts
    if isinstance(value, Mapping):
        return AlertConfig(**value)
    if isinstance(value, (list, tuple)):
        return AlertConfig(rules=list(value))
    raise ConfigurationError.InvalidValue(
        key="alerts", value=repr(value)[:200],
        reason="alerts is an AlertConfig, a list of rules, a table, a Config, True (the "
               "default rules) or None")


# -- alerts -----------------------------------------------------------------------------


def _short(text: Any) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= MAX_TEXT else f"{text[:MAX_TEXT]}..."


def _ago(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("min", 60)):
        if seconds >= size:
            value = seconds / size
            return f"{value:.0f} {unit}" if value >= 10 or value == int(value) \
                else f"{value:.1f} {unit}"
    return f"{seconds:.0f} s"


def _summary(rule: Rule, record: dict[str, Any], count: int, window: float | None,
             quiet: float | None) -> str:
    component, code = _short(record["component"]), record["code"]
    where = f" ({_short(record['file'])}:{record['line']})" if record.get("file") else ""
    if rule.kind == "severity":
        return f"{record['severity']} {code} in {component}{where}: " \
               f"{_short(record['message'])}"
    if rule.kind == "new_group":
        return f"new error group {code} in {component}{where}"
    if rule.kind == "regression":
        return f"{code} in {component} regressed after {_ago(quiet or 0)} quiet{where}"
    what = component if rule.by == "component" else f"group {record['fingerprint']} " \
        f"({code} in {component})"
    if rule.kind == "rate":
        return f"{count} errors of {what} in {_ago(window or 0)}"
    return f"spike: {count} errors of {what} in {_ago(window or 0)} " \
           f"(more than {rule.factor:g} times the median of the previous {rule.windows})"


def alert_key(rule: Rule, record: dict[str, Any]) -> str:
    """What groups the alerts of ``rule`` for ``record``: (rule, component, group); a
    rate or spike by component has no group in it."""
    group = record["fingerprint"] if rule.kind not in ("rate", "spike") \
        or rule.by == "group" else ""
    return f"{rule.label}|{record['component']}|{group}"


def make_alert(rule: Rule, record: dict[str, Any], *, count: int = 1,
               window: float | None = None, first: float | None = None,
               quiet: float | None = None) -> dict[str, Any]:
    """The alert ``rule`` raises for ``record`` (a strict-JSON dict)."""
    severity = record["severity"] if rule.kind in ("severity", "new_group", "regression") \
        else "error"
    when = float(record["timestamp"])
    return {
        "id": uuid.uuid4().hex[:16],
        "rule": rule.label,
        "kind": rule.kind,
        "key": alert_key(rule, record),
        "severity": severity,
        "summary": _summary(rule, record, count, window, quiet),
        "record_id": record["id"],
        "code": record["code"],
        "component": record["component"],
        "fingerprint": record["fingerprint"],
        "tool": record.get("tool"),
        "file": record.get("file"),
        "line": record.get("line"),
        "count": count,
        "window": window,
        "first": when if first is None else float(first),
        "last": when,
        "suppressed": 0,
    }


class _Lru(OrderedDict[Any, Any]):
    """An ordered dict of at most ``size`` items, the least recently set dropped."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.size:
            self.popitem(last=False)


class LastSeen:
    """When the store at ``path`` last saw a group (None: never), read on a connection
    of its own: with WAL a read never waits for the writer's transactions, so the
    observers' thread is not held while another process has the file's write lock (a
    :class:`Store` shares one connection, under one lock, with its writer)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def __call__(self, fingerprint: str) -> float | None:
        from bridge import StorageError

        try:
            if self._db is None:  # read-only: this never makes nor changes the file
                uri = f"{Path(self.path).absolute().as_uri()}?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, timeout=1.0,
                                           check_same_thread=False)
            row = self._db.execute("SELECT last_seen FROM groups WHERE fingerprint = ?",
                                   (fingerprint,)).fetchone()
        except sqlite3.Error as exc:
            raise StorageError.Unavailable(backend=f"sqlite {self.path}",
                                           reason=f"cannot read its groups: {exc}") from None
        return None if row is None else float(row[0])

    def close(self) -> None:
        """Close its connection."""
        if self._db is not None:
            self._db.close()
            self._db = None


_STOP = object()


class AlertEngine:
    """Evaluates ``config``'s rules on each record (:meth:`observe`) and sends what fires
    to its channels on its own sender thread (see the module docstring).

    ``last_seen(fingerprint)``: when the store last saw a group (None: never);
    ``record(record)``: where the record of a lost alert goes (the monitor's writer);
    ``quiet``: the default quiet period of a regression.
    """

    def __init__(self, config: AlertConfig, *,
                 last_seen: Callable[[str], float | None] | None = None,
                 record: Callable[[dict[str, Any]], Any] | None = None,
                 quiet: float = 24 * 3600.0, max_queued: int = MAX_QUEUED) -> None:
        self.config = config
        self.last_seen = last_seen
        self.record = record
        self.quiet = quiet
        self.stats = {"fired": 0, "sent": 0, "suppressed": 0, "inhibited": 0,
                      "dropped": 0, "failed": 0}
        self._lock = threading.Lock()
        self._groups = _Lru(MAX_KEYS)  # fingerprint -> last seen
        # per rule: key -> deque of times (rate), of [window, count] (spike); a rule keeps
        # at most MAX_TIMES items over all its keys (and MAX_KEYS keys)
        self._windows = [_Lru(min(MAX_KEYS, max(100, MAX_TIMES // (
            (rule.threshold if rule.kind == "rate" else rule.windows) + 1))))
            for rule in config.rules]
        self._sent = _Lru(MAX_KEYS)  # alert key -> [last sent, suppressed since]
        self._open: set[str] = set()  # tools whose breaker is open
        self._queue: queue.Queue[Any] = queue.Queue(max_queued)
        self._thread: threading.Thread | None = None  # the sender, while there is work
        self._starting = threading.Lock()
        self._told_full = False
        self._closed = False
        atexit.register(_flush_at_exit, weakref.ref(self))

    # -- evaluation (the observers' thread) --------------------------------------------

    def hooks(self) -> list[Any]:
        """The observer of breakers (inhibition), for the host's one dispatcher."""
        from host.hooks import observer

        return [observer("circuit_changed", name="monitor.alerts.circuit_changed")(
            self.circuit_changed)]

    def circuit_changed(self, ctx: Any) -> None:
        """A breaker changed: an open one inhibits its tool's alerts until it closes."""
        with self._lock:
            if ctx.new == "open":
                self._open.add(ctx.tool)
            elif ctx.new == "closed":
                self._open.discard(ctx.tool)

    def observe(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """Evaluate every rule on ``record``; the alerts queued for sending."""
        try:
            with self._lock:
                fired = self._evaluate(record)
        except Exception as exc:  # a bug of ours must never cost the monitor a record
            logger.exception("polyspell could not evaluate alerts: %s", exc)
            return []
        for alert in fired:
            self._enqueue(alert)
        return fired

    def _evaluate(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        when = float(record["timestamp"])
        fingerprint = record["fingerprint"]
        previous = self._groups.get(fingerprint)
        known = True  # whether the group's past is known (a store that fails: not)
        if previous is None and self.last_seen is not None:
            try:
                previous = self.last_seen(fingerprint)
            except SpellError:  # the monitor reports its store's failures itself
                known = False
        self._groups.put(fingerprint, when if previous is None else max(previous, when))
        severity = _LEVEL.get(record["severity"], 3)
        out = []
        for index, rule in enumerate(self.config.rules):
            if severity < _LEVEL[rule.floor] or not _matches(rule, record) \
                    or (not known and rule.kind in ("new_group", "regression")):
                continue
            found = self._fires(index, rule, record, when, previous)
            if found is None:
                continue
            self.stats["fired"] += 1
            if record.get("tool") in self._open:
                self.stats["inhibited"] += 1
                continue
            repeat = self.config.repeat_interval if rule.repeat_interval is None \
                else rule.repeat_interval
            key = alert_key(rule, record)
            sent = self._sent.get(key)
            if sent is not None and when - sent[0] < repeat:
                sent[1] += 1
                self.stats["suppressed"] += 1
                continue
            alert = make_alert(rule, record, **found)  # built only when it is sent
            alert["suppressed"] = 0 if sent is None else sent[1]
            self._sent.put(key, [when, 0])
            out.append(alert)
        return out

    def _fires(self, index: int, rule: Rule, record: dict[str, Any], when: float,
               previous: float | None) -> dict[str, Any] | None:
        """Whether ``rule`` fires for ``record``: None, or what its alert says (count,
        window, first time, quiet period)."""
        kind = rule.kind
        if kind == "severity":
            return {}
        if kind == "new_group":
            return {} if previous is None else None
        if kind == "regression":
            quiet = rule.quiet or self.quiet
            if previous is not None and when - previous >= quiet:
                return {"quiet": when - previous, "first": previous}
            return None
        key = record["component"] if rule.by == "component" else record["fingerprint"]
        windows = self._windows[index]
        if kind == "rate":
            times = windows.get(key)
            if times is None:
                times = deque(maxlen=rule.threshold + 1)
            times.append(when)
            windows.put(key, times)
            while times and times[0] <= when - rule.window:
                times.popleft()
            if len(times) > rule.threshold:
                return {"count": len(times), "window": rule.window, "first": times[0]}
            return None
        # spike: counts per window, the current one against the previous ones' median
        bucket = int(when // rule.window)
        history = windows.get(key)
        if history is None:
            history = deque(maxlen=rule.windows + 1)
        if history and history[-1][0] == bucket:
            history[-1][1] += 1
        elif not history or history[-1][0] < bucket:
            history.append([bucket, 1])
        else:  # a record older than the current window (another thread's): counted there
            for item in history:
                if item[0] == bucket:
                    item[1] += 1
            windows.put(key, history)
            return None
        windows.put(key, history)
        counts = {b: n for b, n in history}
        current = counts[bucket]
        median = statistics.median(counts.get(bucket - i, 0)
                                   for i in range(1, rule.windows + 1))
        if current >= rule.min_count and current > rule.factor * median:
            return {"count": current, "window": rule.window,
                    "first": bucket * rule.window}
        return None

    # -- sending (the sender thread) ---------------------------------------------------

    def _enqueue(self, alert: dict[str, Any]) -> None:
        if self._closed:
            self.stats["dropped"] += 1
            return
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self.stats["dropped"] += 1
            if not self._told_full:
                self._told_full = True
                logger.error("polyspell dropped alerts: %d wait to be sent already "
                             "(a channel is slow); dropped ones are counted",
                             self._queue.maxsize)
            return
        self._sender()

    def _sender(self) -> None:
        """Start the sender thread if there is none (called after a put: a sender going
        idle sees what was put, or is replaced)."""
        with self._starting:
            if self._thread is None:
                self._thread = threading.Thread(target=self._send_all, daemon=True,
                                                name="polyspell alert sender")
                self._thread.start()

    def _send_all(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=IDLE)
            except queue.Empty:
                with self._starting:
                    if self._queue.empty():  # idle: the next alert starts another
                        self._thread = None
                        return
                continue
            try:
                if item is _STOP:
                    with self._starting:
                        self._thread = None
                    return
                if isinstance(item, threading.Event):
                    item.set()
                    continue
                self.send(item)
            except Exception as exc:  # a bug of ours must not end the sender
                logger.exception("polyspell's alert sender failed: %s", exc)
            finally:
                self._queue.task_done()

    def send(self, alert: dict[str, Any]) -> list[SpellError]:
        """Send ``alert`` to every channel (on the calling thread): the failures. When
        every channel failed, the ``event/emission_failed`` error is logged and
        recorded."""
        failures = []
        for channel in self.config.channels:
            try:
                deliver(channel, alert)
            except SpellError as err:
                failures.append((channel, err))
            except Exception as exc:  # a callable's own exception
                failures.append((channel, _unified(exc, channel.label)))
        for channel, err in failures:
            logger.warning("alert %s: channel %s failed: %s", alert["id"], channel.label,
                           shown_text(err.message, limit=SHOWN))
        if failures and len(failures) == len(self.config.channels):
            self.stats["failed"] += 1
            self._lost(alert, failures)
        else:
            self.stats["sent"] += 1
        return [err for _, err in failures]

    def _lost(self, alert: dict[str, Any], failures: list[tuple[Channel, SpellError]]
              ) -> None:
        from host.monitor.records import make_record

        reasons = "; ".join(f"{channel.label}: {err.code}: {err.message[:300]}"
                            for channel, err in failures)
        err = EventError.EmissionFailed(
            event_type="alert",
            reason=f"every channel failed, alert {alert['id']} ({alert['rule']}) is lost: "
                   f"{reasons}",
            context=ErrorContext(component=EventComponent(event_type="alert",
                                                          emission_id=alert["id"]),
                                 metadata={"alert": alert}),
            cause=failures[0][1])
        logger.error("%s", shown_text(err.message, limit=2 * SHOWN))
        if self.record is not None:
            try:
                self.record(make_record(err))
            except Exception as exc:
                logger.warning("polyspell could not record a lost alert: %s", exc)

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every alert queued so far is sent; False after ``timeout``."""
        if self._thread is None and (self._closed or self._queue.empty()):
            return True
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        self._sender()
        return done.wait(timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        """Send what is queued (for at most ``timeout``) and stop the sender; later
        alerts are dropped."""
        self._closed = True  # later alerts are dropped, and counted
        if isinstance(self.last_seen, LastSeen):
            self.last_seen.close()
        self.flush(timeout)
        thread = self._thread
        if thread is not None:
            try:
                self._queue.put(_STOP, timeout=1.0)
            except queue.Full:
                return
            thread.join(1.0)


def _flush_at_exit(ref: weakref.ref[AlertEngine]) -> None:
    engine = ref()
    if engine is not None:  # the alerts of a run's last error, raised as it ended
        engine.flush(timeout=5.0)


def _matches(rule: Rule, record: dict[str, Any]) -> bool:
    if rule.codes and not any(code in (record["code"], record["category"])
                              for code in rule.codes):
        return False
    return not rule.components or record["component"] in rule.components


# -- channels ---------------------------------------------------------------------------

_LEVELS = {"trace": logging.INFO, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL, "fatal": logging.CRITICAL}


def alert_json(alert: dict[str, Any]) -> str:
    """The alert as one line of strict JSON (ASCII: no raw control or bidi character of a
    script's text reaches a terminal that shows the file)."""
    return json.dumps(alert, ensure_ascii=True, allow_nan=False, default=str)


def deliver(channel: Channel, alert: dict[str, Any]) -> None:
    """Send ``alert`` to ``channel``: a failure is a SpellError (the webhook's without its
    URL's credentials or query)."""
    if channel.type == "logging":
        logging.getLogger(channel.logger or logger.name).log(
            _LEVELS.get(alert["severity"], logging.ERROR), "alert %s [%s] %s",
            alert["rule"], alert["severity"], shown_text(alert["summary"], limit=SHOWN))
    elif channel.type == "file":
        _append(channel.path or "", alert_json(alert) + "\n")
    elif channel.type == "webhook":
        _post(channel, alert)
    elif channel.function is not None:
        channel.function(dict(alert))


def _unified(exc: Exception, endpoint: str | None = None) -> SpellError:
    """``exc`` as the unified error the host maps it to (an httpx error: ``network/...``,
    ``provider/...``), else wrapped as it is."""
    from bridge import wrap

    try:
        found = wrap.lookup(exc, tool_name=endpoint)
    except Exception:  # a mapping that fails: the plain wrap
        found = None
    return found if found is not None else SpellError.wrap(exc)


def _append(path: str, line: str) -> None:
    """One ``O_APPEND`` write of the whole line: lines of several processes never mix."""
    from bridge import StorageError

    data = line.encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StorageError.Unavailable(backend=f"file {path}",
                                       reason=f"cannot append an alert: "
                                              f"{exc.strerror or exc}") from None
    if written != len(data):
        raise StorageError.OperationFailed(
            reason=f"{path}: only {written} of {len(data)} bytes of an alert written",
            operation="append")


def _post(channel: Channel, alert: dict[str, Any]) -> None:
    """POST ``alert`` as JSON, each try bounded by the channel's timeout as a whole,
    retried as its :class:`Retry` says (default: 3 tries)."""
    import anyio
    import httpx

    from host.recovery.fallback import exchange, public_url, redact

    url = channel.url or ""
    public = public_url(url)
    limit = channel.timeout or DEFAULT_WEBHOOK_TIMEOUT
    policy = channel.retry or Retry(attempts=3, initial=0.2, max_delay=2.0,
                                    max_elapsed=limit * 3 + 5)
    content = alert_json(alert).encode()
    started = time.monotonic()
    attempt = 1
    while True:
        try:
            anyio.run(exchange, url, content, limit, time.monotonic() + limit,
                      httpx.URL(url).host, public)
            return
        except httpx.HTTPError as exc:
            redact(exc, url, public)
            err = _unified(exc, public)
        except SpellError as err_:
            err = err_
        delay = policy.next_delay(attempt, err, time.monotonic() - started,
                                  owner="alerts.channels.retry")
        if delay is None:
            raise err
        time.sleep(delay)
        attempt += 1


__all__ = ["DEFAULT_RULES", "AlertConfig", "AlertEngine", "Channel", "LastSeen", "Rule",
           "alert_json",
           "alert_key", "as_alert_config", "deliver", "make_alert"]
