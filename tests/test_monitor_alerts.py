"""Alerts (host.monitor.alerts): each rule firing or not, grouping, repeat interval,
inhibition by a real breaker, and the channels: logging, a JSON-lines file, a real webhook
server on loopback, a callable; what happens when channels fail; rules from a config file.

Rules that need time (a window, a quiet period) are driven through the alert engine with
generated records (their own timestamps: no sleeping); the others through a real Monitor
and Host running Lua and JavaScript."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from bridge import ConfigurationError, SpellError, ToolError
from host import Host, tool
from host.config import load_config
from host.monitor import Monitor
from host.monitor.alerts import (
    DEFAULT_RULES,
    AlertConfig,
    AlertEngine,
    Channel,
    LastSeen,
    Rule,
    as_alert_config,
)
from host.monitor.records import make_record
from host.monitor.store import Store
from tests.conftest import EXTENSION, pick
from tests.loopback import http_server

NOW = 1_800_000_000.0  # the generated records' clock


def strict(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def record(code: str = "tool/execution_failed", *, tool_name: str = "search",
           when: float = NOW, severity: str | None = None, file: str = "agent.lua",
           function: str = "main", message: str = "it broke") -> dict[str, Any]:
    """A record of an error of ``code`` from ``tool_name`` at ``when``."""
    category, kind = code.split("/")
    fields: dict[str, Any] = {"tool_name": tool_name} if category == "tool" else {}
    if code == "tool/execution_failed":
        fields["reason"] = message
    elif code == "tool/timeout":
        fields["duration"] = 1.0
    elif code == "network/timeout":
        fields.update(endpoint="https://api.example.com", duration=1.0)
    err = SpellError(category=category, kind=kind, severity=severity, **fields)
    return make_record(err, tool=tool_name, engine="lua", when=when,
                       site=("lua", file, 12, function))


def engine(*rules: Rule, repeat: float = 0.0, **kwargs: Any) -> AlertEngine:
    """An engine with ``rules``, sending to nothing but a list (``engine.got``)."""
    got: list[dict[str, Any]] = []
    made = AlertEngine(AlertConfig(rules=list(rules), channels=[got.append],
                                   repeat_interval=repeat), **kwargs)
    made.got = got  # type: ignore[attr-defined]
    return made


def fired(eng: AlertEngine, *records: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for each in records:
        out += eng.observe(each)
    return out


@pytest.fixture
def monitor_with(tmp_path: Path):
    made: list[Monitor] = []

    def make(alerts: Any, name: str = "errors.db") -> Monitor:
        monitor = Monitor(tmp_path / name, alerts=alerts)
        made.append(monitor)
        return monitor

    yield make
    for monitor in made:
        monitor.close()


# -- rules ------------------------------------------------------------------------------


def test_the_default_rules_are_the_seeds():
    config = AlertConfig()
    assert config.rules == list(DEFAULT_RULES)
    severity, rate = config.rules
    assert (severity.kind, severity.min_severity) == ("severity", "critical")
    assert (rate.kind, rate.threshold, rate.window, rate.by) == ("rate", 10, 300.0,
                                                                 "component")
    assert [channel.type for channel in config.channels] == ["logging"]


def test_a_severity_rule_fires_at_once_at_or_above_its_severity():
    eng = engine(Rule(kind="severity", min_severity="critical"))
    assert fired(eng, record(severity="error"), record(severity="warning")) == []
    critical, fatal = fired(eng, record(severity="critical"),
                            record("tool/timeout", severity="fatal"))
    assert critical["severity"] == "critical" and fatal["severity"] == "fatal"
    assert critical["summary"].startswith("critical tool/execution_failed in tool:search "
                                          "(agent.lua:12): ")


def test_a_rate_rule_fires_past_its_threshold_within_its_window():
    eng = engine(Rule(kind="rate", threshold=10, window="5m"), repeat=3600)
    ten = [record(when=NOW + i * 29) for i in range(10)]  # 10 within 261 s
    assert fired(eng, *ten) == []
    alert, = fired(eng, record(when=NOW + 290))
    assert alert["summary"] == "11 errors of tool:search in 5 min"
    assert (alert["count"], alert["window"], alert["first"], alert["last"]) == (
        11, 300.0, NOW, NOW + 290)
    assert alert["key"] == "rate|tool:search|"
    # another component has its own count
    assert fired(eng, *[record(tool_name="weather", when=NOW + 300) for _ in range(5)]) \
        == []


def test_a_rate_rule_forgets_what_left_its_window():
    eng = engine(Rule(kind="rate", threshold=3, window=60))
    # one every 20 s: never more than 3 in a minute
    assert fired(eng, *[record(when=NOW + i * 20) for i in range(10)]) == []
    alert, = fired(eng, record(when=NOW + 190))  # 140, 160, 180, 190
    assert (alert["count"], alert["first"]) == (4, NOW + 140)


def test_a_rate_rule_by_group_counts_each_group_apart():
    eng = engine(Rule(kind="rate", threshold=2, window=60, by="group"))
    mixed = [record("tool/timeout", when=NOW + i) if i % 2 else record(when=NOW + i)
             for i in range(4)]  # two of each group
    assert fired(eng, *mixed) == []
    alert, = fired(eng, record("tool/timeout", when=NOW + 5))
    assert alert["code"] == "tool/timeout" and alert["count"] == 3
    assert alert["key"] == f"rate|tool:search|{alert['fingerprint']}"
    assert alert["summary"].startswith(f"3 errors of group {alert['fingerprint']} "
                                       f"(tool/timeout in tool:search)")


def test_a_new_group_fires_once_and_not_for_a_group_the_store_knows(tmp_path: Path):
    store = Store(tmp_path / "errors.db")
    known = record("tool/timeout", when=NOW - 60)
    store.write([known])
    eng = engine(Rule(kind="new_group"), last_seen=LastSeen(store.path))
    first = record(when=NOW)
    alert, = fired(eng, first, record(when=NOW + 1), record("tool/timeout", when=NOW + 2))
    assert alert["summary"] == "new error group tool/execution_failed in tool:search " \
                               "(agent.lua:12)"
    assert (alert["record_id"], alert["fingerprint"]) == (first["id"], first["fingerprint"])
    store.close()


def test_a_regression_fires_for_a_group_back_after_its_quiet_period(tmp_path: Path):
    store = Store(tmp_path / "errors.db")
    store.write([record(when=NOW - 3 * 86400), record("tool/timeout", when=NOW - 3600)])
    eng = engine(Rule(kind="regression"), last_seen=store.last_seen, quiet=86400.0)
    alert, = fired(eng, record(when=NOW), record("tool/timeout", when=NOW))
    assert alert["summary"] == "tool/execution_failed in tool:search regressed after " \
                               "3 days quiet (agent.lua:12)"
    assert (alert["first"], alert["last"]) == (NOW - 3 * 86400, NOW)
    assert fired(eng, record(when=NOW + 10)) == []  # not quiet any more
    # a rule's own quiet period wins over the monitor's
    short = engine(Rule(kind="regression", quiet="30m"), last_seen=store.last_seen)
    assert [a["code"] for a in fired(short, record("tool/timeout", when=NOW))] == [
        "tool/timeout"]
    store.close()


def test_a_spike_is_this_windows_count_against_the_median_of_the_previous():
    rule = Rule(kind="spike", window=60, factor=3, windows=4, min_count=3)
    eng = engine(rule, repeat=3600)
    steady = [record(when=NOW + w * 60 + i) for w in range(4) for i in range(2)]
    assert fired(eng, *steady) == []  # 2 a minute
    now = NOW + 4 * 60
    assert fired(eng, *[record(when=now + i) for i in range(6)]) == []  # 6: not > 3 * 2
    alert, = fired(eng, record(when=now + 7))
    assert alert["count"] == 7 and alert["window"] == 60.0
    assert alert["summary"] == ("spike: 7 errors of tool:search in 1 min (more than 3 "
                                "times the median of the previous 4)")
    # min_count: one error after silence is no spike
    quiet = engine(rule)
    assert fired(quiet, record(when=NOW), record(when=NOW + 1)) == []


def test_what_an_engine_keeps_is_bounded(monkeypatch):
    import host.monitor.alerts as alerts

    monkeypatch.setattr(alerts, "MAX_KEYS", 50)
    eng = engine(Rule(kind="rate", threshold=3, window=60, by="group"),
                 Rule(kind="spike", window=60, by="group"),
                 Rule(kind="severity", min_severity="error"), Rule(kind="new_group"))
    for i in range(500):
        eng.observe(record(file=f"file{i}.lua", when=NOW + i))
    kept = [eng._groups, eng._sent, *eng._windows]
    assert [len(each) for each in kept] == [50, 50, 50, 50, 0, 0]  # 2 rules: no windows
    assert eng.flush() and len(eng.got) == 1000  # each group: new, and its severity


def test_rules_narrowed_by_codes_and_components():
    eng = engine(Rule(kind="severity", min_severity="error", codes=["network"],
                      components=["tool:search"]))
    assert fired(eng, record(), record("network/timeout", tool_name="weather")) == []
    assert len(fired(eng, record("network/timeout"))) == 1


# -- noise control ----------------------------------------------------------------------


def test_alerts_are_grouped_by_rule_component_and_group_and_repeat_after_the_interval():
    eng = engine(Rule(kind="severity", min_severity="error"), repeat=600)
    one, other = fired(eng, record(when=NOW), record(tool_name="weather", when=NOW))
    assert one["key"] != other["key"]
    assert fired(eng, *[record(when=NOW + i) for i in range(1, 5)]) == []
    assert eng.stats["suppressed"] == 4
    again, = fired(eng, record(when=NOW + 600))
    assert again["key"] == one["key"] and again["suppressed"] == 4
    # a rule's own repeat interval wins
    eng = engine(Rule(kind="severity", min_severity="error", repeat_interval=0), repeat=600)
    assert len(fired(eng, record(), record())) == 2


def test_an_open_breaker_inhibits_the_alerts_of_its_tools_calls(monitor_with, language):
    calls = []

    @tool
    def flaky(n: int) -> int:
        """Always fails."""
        calls.append(n)
        raise RuntimeError("down")

    @tool
    def other(n: int) -> int:
        """Always fails too, without a breaker."""
        raise RuntimeError("down too")

    got: list[dict[str, Any]] = []
    monitor = monitor_with(AlertConfig(
        rules=[Rule(kind="severity", min_severity="warning")], channels=[got.append],
        repeat_interval=0))  # the breaker's refusals are warnings
    host = Host([flaky, other], monitor=monitor, recovery={
        "flaky": {"breaker": {"failure_threshold": 2, "recovery_timeout": 60}}})
    lua = "for i = 1, 5 do pcall(tools.flaky, {n = i}) end\npcall(tools.other, {n = 0})"
    js = ("for (let i = 1; i <= 5; i++) { try { await tools.flaky({n: i}); } catch (e) {} }"
          "\ntry { await tools.other({n: 0}); } catch (e) {}")
    host.run_source(pick(language, lua, f"async function main() {{\n{js}\n}}"), language,
                    f"agent{EXTENSION[language]}")
    assert monitor.flush()
    assert calls == [1, 2]  # then the breaker refused the calls
    records = monitor.store.records(limit=100)
    assert len(records) == 6
    assert [alert["tool"] for alert in got].count("other") == 1
    flaky_alerts = [alert for alert in got if alert["tool"] == "flaky"]
    # the failures before the breaker opened alert; what comes while it is open does not
    assert 1 <= len(flaky_alerts) <= 2
    assert all(alert["code"] == "tool/execution_failed" for alert in flaky_alerts)
    assert monitor.alerts.stats["inhibited"] == 5 - len(flaky_alerts)


def test_a_closed_breaker_stops_inhibiting():
    from host.hooks import CircuitContext

    eng = engine(Rule(kind="severity", min_severity="error"))
    eng.circuit_changed(CircuitContext("search", "closed", "open"))
    eng.circuit_changed(CircuitContext("search", "open", "half_open"))
    assert fired(eng, record()) == []
    eng.circuit_changed(CircuitContext("search", "half_open", "closed"))
    assert len(fired(eng, record())) == 1


# -- through a real host ----------------------------------------------------------------


def test_a_run_alerts_as_its_records_are_made(monitor_with, language, tmp_path: Path):
    @tool
    def deploy(target: str) -> str:
        """Fails, critically for production."""
        raise ToolError.ExecutionFailed(tool_name="deploy", reason=f"cannot reach {target}",
                                        severity="critical" if target == "prod" else None)

    lines = tmp_path / "alerts.jsonl"
    monitor = monitor_with({"channels": [{"type": "file", "path": str(lines)}],
                            "rules": [{"kind": "severity"}, {"kind": "new_group"}]})
    host = Host([deploy], monitor=monitor)
    with pytest.raises(SpellError):
        host.run_source(pick(language, "pcall(tools.deploy, {target = 'test'})\n"
                                       "tools.deploy({target = 'prod'})",
                             "async function main() {\n"
                             "try { await tools.deploy({target: 'test'}); } catch (e) {}\n"
                             "await tools.deploy({target: 'prod'});\n}"),
                        language, f"agent{EXTENSION[language]}")
    assert monitor.flush()
    alerts = [strict(line) for line in lines.read_text().splitlines()]
    assert [(a["rule"], a["severity"]) for a in alerts] == [
        ("new_group", "error"), ("severity", "critical")]
    new, critical = alerts
    assert new["summary"] == (f"new error group tool/execution_failed in tool:deploy "
                              f"(agent{EXTENSION[language]}:{pick(language, 1, 2)})")
    assert critical["summary"].endswith("cannot reach prod")
    stored = {r["id"]: r for r in monitor.store.records()}
    assert stored[critical["record_id"]]["severity"] == "critical"
    assert stored[critical["record_id"]]["handled"] is False  # it ended the run


# -- channels ---------------------------------------------------------------------------


class Receiver(BaseHTTPRequestHandler):
    """Records what is POSTed; answers 500 for the first ``fail_first`` requests."""

    received: list[Any] = []
    headers_seen: list[Any] = []
    fail_first = 0
    delay = 0.0

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        cls = type(self)
        cls.headers_seen.append(dict(self.headers))
        if cls.delay:
            time.sleep(cls.delay)
        if cls.fail_first > 0:
            cls.fail_first -= 1
            self.send_response(500)
            self.end_headers()
            return
        cls.received.append(strict(body.decode()))
        self.send_response(204)
        self.end_headers()


def receiver(fail_first: int = 0, delay: float = 0.0) -> type[Receiver]:
    return type("Receiving", (Receiver,), {"received": [], "headers_seen": [],
                                           "fail_first": fail_first, "delay": delay})


def test_a_webhook_receives_alerts_as_json(monitor_with, language):
    @tool
    def boom(n: int) -> int:
        """Fails."""
        raise RuntimeError(f"boom {n}")

    handler = receiver()
    with http_server(handler) as base:
        monitor = monitor_with({"rules": [{"kind": "new_group"}],
                                "channels": [{"type": "webhook", "url": f"{base}/hook"}]})
        host = Host([boom], monitor=monitor)
        host.run_source(pick(language, "pcall(tools.boom, {n = 1})",
                             "async function main() { try { await tools.boom({n: 1}); } "
                             "catch (e) {} }"), language, f"agent{EXTENSION[language]}")
        assert monitor.flush()
    alert, = handler.received
    assert alert["rule"] == "new_group" and alert["tool"] == "boom"
    assert handler.headers_seen[0]["content-type"] == "application/json"
    assert monitor.alerts.stats["sent"] == 1


def test_a_webhook_that_fails_is_retried_and_one_that_hangs_times_out(caplog):
    rule = Rule(kind="severity", min_severity="error")
    failing = receiver(fail_first=2)
    with http_server(failing) as base:
        eng = AlertEngine(AlertConfig(rules=[rule], channels=[Channel(
            type="webhook", url=f"{base}/hook", retry={"attempts": 3, "initial": 0.01})]))
        alert, = eng.observe(record())
        assert eng.flush()
    assert [got["id"] for got in failing.received] == [alert["id"]]
    assert len(failing.headers_seen) == 3 and eng.stats["sent"] == 1

    hanging = receiver(delay=3.0)
    lost: list[dict[str, Any]] = []
    with http_server(hanging) as base:
        eng = AlertEngine(AlertConfig(rules=[rule], channels=[Channel(
            type="webhook", url=f"{base}/hook", timeout=0.3, retry={"attempts": 2,
                                                                    "initial": 0.01})]),
                          record=lost.append)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, "polyspell.alerts"):
            eng.observe(record())
            assert eng.flush()
        took = time.monotonic() - started
    assert took < 2.5  # two tries of 0.3 s, not the server's 3 s each
    assert eng.stats["failed"] == 1
    lost_record, = lost
    assert lost_record["code"] == "event/emission_failed"
    assert "network/timeout" in lost_record["message"]


def test_a_webhooks_credentials_never_show_in_errors_or_logs(caplog):
    handler = receiver(fail_first=5)
    lost: list[dict[str, Any]] = []
    with http_server(handler) as base:
        url = base.replace("http://", "http://user:hunter2@") + "/hook?token=s3cret"
        eng = AlertEngine(AlertConfig(
            rules=[Rule(kind="severity", min_severity="error")],
            channels=[Channel(type="webhook", url=url, retry={"attempts": 1})]),
            record=lost.append)
        with caplog.at_level(logging.WARNING, "polyspell.alerts"):
            eng.observe(record())
            assert eng.flush()
    text = caplog.text + json.dumps(lost)
    assert "provider/unavailable" in text or "500" in text
    assert "hunter2" not in text and "s3cret" not in text
    assert f"webhook {base}/hook" in text


def test_alerts_in_a_json_lines_file_keep_hostile_text_as_data(tmp_path: Path, caplog):
    lines = tmp_path / "alerts.jsonl"
    hostile = "line\n[polyspell] forged\x1b[31m red \u202e" + "x" * 5000
    eng = AlertEngine(AlertConfig(rules=[Rule(kind="severity", min_severity="error")],
                                  channels=[{"type": "file", "path": str(lines)},
                                            {"type": "logging"}]))
    with caplog.at_level(logging.INFO, "polyspell.alerts"):
        eng.observe(record(message=hostile, file="a\nb.lua"))
        eng.observe(record(tool_name="weather"))
        assert eng.flush()
    text = lines.read_text()
    assert text.isascii() and text.count("\n") == 2
    first, second = (strict(line) for line in text.splitlines())
    assert "forged\x1b[31m" in first["summary"]  # the JSON keeps the text, as data
    assert len(first["summary"]) < 600  # bounded
    assert first["file"] == "a\nb.lua" and second["tool"] == "weather"
    logged = [r.getMessage() for r in caplog.records if r.name == "polyspell.alerts"]
    assert len(logged) == 2 and all("\n" not in m and "\x1b" not in m for m in logged)
    assert "\\n[polyspell] forged\\x1b[31m" in logged[0]


def test_appends_of_several_processes_never_mix(tmp_path: Path):
    import subprocess
    import sys

    lines = tmp_path / "alerts.jsonl"
    code = (
        "import sys\n"
        "from tests.test_monitor_alerts import NOW, record\n"
        "from host.monitor.alerts import AlertConfig, AlertEngine, Rule\n"
        "eng = AlertEngine(AlertConfig(rules=[Rule(kind='severity', min_severity='error')],"
        " channels=[{'type': 'file', 'path': sys.argv[1]}], repeat_interval=0))\n"
        "for i in range(100):\n"
        "    eng.observe(record(message=sys.argv[2] * 5000, when=NOW + i))\n"
        "assert eng.flush()\n")
    root = Path(__file__).parent.parent
    workers = [subprocess.Popen([sys.executable, "-c", code, str(lines), letter], cwd=root)
               for letter in "ab"]
    assert [worker.wait(60) for worker in workers] == [0, 0]
    alerts = [strict(line) for line in lines.read_text().splitlines()]
    assert len(alerts) == 200
    for letter in "ab":
        assert sum(f"{letter * 150}" in alert["summary"] for alert in alerts) == 100


def test_a_channel_that_fails_does_not_lose_the_alert_for_the_others(tmp_path: Path,
                                                                     caplog):
    def broken(alert: dict[str, Any]) -> None:
        raise RuntimeError("the pager is down")

    got: list[dict[str, Any]] = []
    eng = AlertEngine(AlertConfig(rules=[Rule(kind="severity", min_severity="error")],
                                  channels=[broken, got.append]))
    with caplog.at_level(logging.WARNING, "polyspell.alerts"):
        alert, = eng.observe(record())
        assert eng.flush()
    assert got == [alert]
    assert eng.stats == {**eng.stats, "sent": 1, "failed": 0}
    assert "callable test_a_channel_that_fails_does_not_lose_the_alert_for_the_others." \
           "<locals>.broken failed" in caplog.text and "the pager is down" in caplog.text


def test_when_every_channel_fails_an_event_error_is_logged_and_recorded(
        monitor_with, tmp_path: Path, caplog):
    def broken(alert: dict[str, Any]) -> None:
        raise RuntimeError("the pager is down")

    folder_not_file = tmp_path / "a folder"
    folder_not_file.mkdir()
    monitor = monitor_with(AlertConfig(
        rules=[Rule(kind="severity", min_severity="error", codes=["tool"])],
        channels=[broken, {"type": "file", "path": str(folder_not_file)}]))
    with caplog.at_level(logging.ERROR, "polyspell.alerts"):
        alert, = monitor.alerts.observe(record())
        assert monitor.flush() and monitor.flush()
    assert monitor.alerts.stats["failed"] == 1
    lost, = monitor.store.records(code="event")
    assert lost["code"] == "event/emission_failed"
    assert lost["component"] == "event:alert"
    assert alert["id"] in lost["message"] and "the pager is down" in lost["message"]
    assert "storage/unavailable" in lost["message"]
    assert lost["error"]["context"]["metadata"]["alert"]["id"] == alert["id"]
    assert "every channel failed" in caplog.text


def test_the_sender_thread_ends_when_idle_and_comes_back(monkeypatch):
    import host.monitor.alerts as alerts

    monkeypatch.setattr(alerts, "IDLE", 0.05)
    eng = engine(Rule(kind="severity", min_severity="error"))
    eng.observe(record())
    assert eng.flush()
    sender = eng._thread
    assert sender is not None
    sender.join(5)
    assert not sender.is_alive() and eng._thread is None
    eng.observe(record())
    assert eng.flush() and len(eng.got) == 2
    eng.close()
    assert eng._thread is None and eng.flush()
    eng.observe(record())  # after close: dropped, counted
    assert eng.stats["dropped"] == 1 and len(eng.got) == 2


def test_a_full_sender_queue_drops_and_counts(caplog):
    release = threading.Event()
    eng = AlertEngine(AlertConfig(rules=[Rule(kind="severity", min_severity="error")],
                                  channels=[lambda alert: release.wait(5)],
                                  repeat_interval=0), max_queued=2)
    with caplog.at_level(logging.ERROR, "polyspell.alerts"):
        for i in range(6):
            eng.observe(record(when=NOW + i))
    assert eng.stats["dropped"] >= 3
    assert caplog.text.count("dropped alerts") == 1
    release.set()
    assert eng.flush()


# -- configuration ----------------------------------------------------------------------


def test_rules_and_channels_from_a_config_file(tmp_path: Path, monitor_with, language):
    config = tmp_path / "polyspell.toml"
    config.write_text('[alerts]\nrepeat_interval = "1h"\n\n'
                      '[[alerts.rules]]\nkind = "rate"\nthreshold = 2\nwindow = "5m"\n\n'
                      '[[alerts.channels]]\ntype = "file"\npath = "alerts.jsonl"\n')
    loaded = load_config(config).alerts
    assert loaded is not None and loaded.repeat_interval == 3600.0
    assert loaded.rules == [Rule(kind="rate", threshold=2, window=300)]

    @tool
    def boom(n: int) -> int:
        """Fails."""
        raise RuntimeError("boom")

    monitor = monitor_with(None)
    host = Host([boom], monitor=monitor, config=config)
    host.run_source(pick(language, "for i = 1, 4 do pcall(tools.boom, {n = i}) end",
                         "async function main() { for (let i = 1; i <= 4; i++) { "
                         "try { await tools.boom({n: i}); } catch (e) {} } }"),
                    language, f"agent{EXTENSION[language]}")
    assert monitor.flush()
    alert, = [strict(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert alert["summary"] == "3 errors of tool:boom in 5 min"
    assert monitor.alerts.stats["suppressed"] == 1  # the 4th: within the repeat interval
    # the monitor's own alerts win over the file's
    own = monitor_with([Rule(kind="new_group")], name="other.db")
    Host([boom], monitor=own, config=config)
    assert [rule.kind for rule in own.alerts.config.rules] == ["new_group"]


@pytest.mark.parametrize(("toml", "line", "key", "reason"), [
    ('[[alerts.rules]]\nkind = "rate"\nwindow = -5\n', 3, "alerts.rules[0].window",
     "greater than 0"),
    ('[[alerts.rules]]\nkind = "rate"\nthreshhold = 3\n', 3, "alerts.rules[0].threshhold",
     "unknown key 'threshhold' (did you mean 'threshold'?)"),
    ('[[alerts.rules]]\nkind = "sometimes"\n', 2, "alerts.rules[0].kind", "'severity'"),
    ('[[alerts.rules]]\nkind = "severity"\nwindow = "5m"\n', 1, "alerts.rules[0]",
     "window: not a field of a 'severity' rule"),
    ('[[alerts.rules]]\nkind = "rate"\nwindow = "5 weeks"\n', 3, "alerts.rules[0].window",
     "a duration is seconds or a number with s, m, h or d"),
    ('[[alerts.rules]]\nkind = "rate"\ncodes = ["tool/nonsense"]\n', 3,
     "alerts.rules[0].codes", "unknown error code"),
    ('[alerts]\nrepeat_interval = -1\n', 2, "alerts.repeat_interval", "greater than or equal"),
    ('[[alerts.channels]]\ntype = "webhook"\nurl = "file:///etc/passwd"\n', 1,
     "alerts.channels[0]", "an endpoint is an http:// or https:// URL"),
    ('[[alerts.channels]]\ntype = "file"\n', 1, "alerts.channels[0]",
     "a 'file' channel needs path"),
    ('[[alerts.channels]]\ntype = "webhook"\nurl = "http://127.0.0.1:9/"\n'
     'retry = { attempts = 0 }\n', 4, "alerts.channels[0].retry.attempts",
     "greater than or equal to 1"),
    ('[[alerts.channels]]\ntype = "callable"\nfunction = "os.system"\n', 3,
     "alerts.channels[0].function", ""),
])
def test_bad_alert_tables_are_refused_naming_file_line_and_field(tmp_path: Path, toml,
                                                                 line, key, reason):
    config = tmp_path / "polyspell.toml"
    config.write_text(toml)
    with pytest.raises(ConfigurationError) as info:
        load_config(config)
    err = info.value
    assert err.code == "configuration/invalid_value"
    assert err.fields["key"] == key
    assert err.message.startswith(f"{config}:{line}: {key}: ")
    assert reason in err.message


@pytest.mark.parametrize(("given", "key"), [
    ({"kind": "rate", "window": -1}, "rule.window"),
    ({"kind": "spike", "factor": 0}, "rule.factor"),
    ({"kind": "rate", "unknown": 1}, "rule.unknown"),
])
def test_bad_rules_from_python_are_one_unified_error(given, key):
    with pytest.raises(ConfigurationError) as info:
        Rule(**given)
    assert info.value.code == "configuration/invalid_value"
    assert info.value.fields["key"] == key


def test_what_monitor_alerts_accepts(tmp_path: Path):
    assert as_alert_config(None) is None and as_alert_config(False) is None
    assert as_alert_config(True) == AlertConfig()
    assert as_alert_config([{"kind": "new_group"}]).rules == [Rule(kind="new_group")]
    with pytest.raises(ConfigurationError) as info:
        as_alert_config("rules.toml")
    assert info.value.fields["key"] == "alerts"
    with pytest.raises(ConfigurationError) as info:
        AlertConfig(channels=[])
    assert info.value.fields["key"] == "alerts.channels"


def test_a_coordinator_alerts_from_its_config_files_table(tmp_path: Path, monitor_with,
                                                          language):
    from host import Coordinator
    from host.plan import Task

    @tool
    def boom(reason: str) -> str:
        """Always fails."""
        raise RuntimeError(reason)

    config = tmp_path / "polyspell.toml"
    config.write_text('[[alerts.rules]]\nkind = "new_group"\n\n'
                      '[[alerts.channels]]\ntype = "file"\npath = "alerts.jsonl"\n')
    script = tmp_path / f"task{EXTENSION[language]}"
    script.write_text(pick(
        language, "return tools.boom({reason = 'task'})\n",
        "async function main() { return await tools.boom({reason: 'task'}); }\n"))
    monitor = monitor_with(None)
    report = Coordinator([boom], monitor=monitor, config=config).run(
        [Task(id="t", script=str(script))])
    assert report.outcome != "succeeded"
    assert monitor.flush()
    alert, = [strict(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert alert["rule"] == "new_group" and alert["tool"] == "boom"


def test_a_store_that_fails_its_reads_mutes_only_the_rules_that_need_it():
    def broken(fingerprint: str) -> float | None:
        from bridge import StorageError

        raise StorageError.Unavailable(backend="sqlite x.db", reason="disk gone")

    eng = engine(Rule(kind="new_group"), Rule(kind="regression"),
                 Rule(kind="severity", min_severity="error"), last_seen=broken)
    assert [alert["rule"] for alert in fired(eng, record())] == ["severity"]


def test_a_config_without_alerts_does_not_load_the_monitor(tmp_path: Path):
    import subprocess
    import sys

    config = tmp_path / "polyspell.toml"
    config.write_text("[recovery]\nretry = { attempts = 2 }\n")
    code = ("import sys\nfrom host.config import load_config\n"
            f"load_config({str(config)!r})\n"
            "print(sorted(m for m in ('sqlite3', 'host.monitor') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("with_config", [False, True])
def test_a_monitor_without_alerts_never_loads_them(tmp_path: Path, with_config: bool):
    """polyspell run records by default: without alert rules it must not pay for the
    alerts' models (nor recovery's, for webhooks): a third of a second of start-up. (A
    config file loads recovery's models itself: it holds recovery policies.)"""
    import subprocess
    import sys

    config = tmp_path / "polyspell.toml"
    config.write_text("[hooks]\npresets = []\n")
    made = f"config=load_config({str(config)!r})" if with_config else ""
    loader = "from host.config import load_config\n" if with_config else ""
    code = ("import sys\nfrom host import Host\n" + loader +
            "from host.monitor import Monitor\n"
            f"monitor = Monitor({str(tmp_path / 'errors.db')!r})\n"
            f"host = Host(monitor=monitor, {made})\n"
            "assert host.run_source('return 1', 'lua') == 1\n"
            "monitor.close()\n"
            "print(sorted(m for m in ('host.monitor.alerts', 'host.recovery') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).parent.parent)
    expected = "['host.recovery']" if with_config else "[]"
    assert out.stdout.strip() == expected, out.stderr


def test_group_reads_never_wait_for_a_writer(tmp_path: Path):
    import sqlite3

    from bridge import StorageError

    store = Store(tmp_path / "errors.db")
    known = record(when=NOW)
    store.write([known])
    other = sqlite3.connect(tmp_path / "errors.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process writing
    reader = LastSeen(store.path)
    with store._lock:  # this process's writer in a transaction
        started = time.monotonic()
        assert reader(known["fingerprint"]) == NOW
        assert reader("0" * 16) is None
        assert time.monotonic() - started < 0.5
    other.execute("ROLLBACK")
    other.close()
    reader.close()
    store.close()
    with pytest.raises(StorageError) as info:
        LastSeen(str(tmp_path / "missing.db"))("0" * 16)
    assert info.value.code == "storage/unavailable" and "missing.db" in info.value.message
    assert not (tmp_path / "missing.db").exists()
