"""Statistics, trends, advice and predictions (host.monitor.analysis) on a generated
history: records and counts with controlled timestamps, written through Store.write into
a real SQLite file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge import ConfigurationError, NetworkError, SpellError, ToolError
from bridge.frames import Frame
from host.monitor import Monitor
from host.monitor.analysis import chart, parse_duration, parse_since, predict, stats, trends
from host.monitor.records import make_record
from host.monitor.store import Store
from host.recovery import Breakers, CircuitBreaker

HOUR = 3600.0
DAY = 24 * HOUR
NOW = 1_800_000_000.0 + 0.75 * HOUR  # 45 minutes into an hour


def failure(tool: str = "search", *, timeout: bool = False, line: int = 7) -> SpellError:
    err: SpellError
    if timeout:
        err = NetworkError.Timeout(endpoint=f"https://{tool}.example", duration=5.0)
    else:
        err = ToolError.ExecutionFailed(tool_name=tool, reason="down")
    err.frames = [Frame("lua", "agent.lua", line, 3, "main", None),
                  Frame("python", "tools.py", 12, None, tool, None)]
    return err


def record(when: float, tool: str = "search", **options) -> dict:
    timeout = options.pop("timeout", False)
    return make_record(failure(tool, timeout=timeout), tool=tool, when=when, **options)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "errors.db", quiet_before_regression=DAY)


def history(store: Store) -> None:
    """Over the last day: search failed 10 times (handled) two hours ago, weather timed
    out 5 times (run-ending) half an hour ago of 13 calls; two days ago, 3 more."""
    store.write([record(NOW - 2 * HOUR, handled=True) for _ in range(10)]
                + [record(NOW - 0.5 * HOUR, "weather", timeout=True) for _ in range(5)]
                + [record(NOW - 2 * DAY, handled=True) for _ in range(3)],
                [(NOW - 0.5 * HOUR, "tool", "weather", "lua", 13, 5, 2.6),
                 (NOW - 2 * HOUR, "tool", "search", "lua", 40, 10, 4.0),
                 (NOW - 2 * HOUR, "run", "agent.lua", "lua", 20, 5, 10.0)])


def test_stats_count_the_window_by_severity_component_engine_and_code(store: Store):
    history(store)
    summary = stats(store, "24h", now=NOW)
    json.dumps(summary, allow_nan=False)  # strict JSON
    assert summary["total"] == 15 and summary["hours"] == 25
    assert summary["rate_per_hour"] == round(15 / 25, 3)
    assert summary["severity"] == {"error": 15}
    assert summary["by_component"] == {"tool:search": 10, "tool:weather": 5}
    assert summary["by_engine"] == {"lua": 15}
    assert summary["by_code"] == {"tool/execution_failed": 10, "network/timeout": 5}
    assert (summary["handled"], summary["unhandled"]) == (10, 5)
    assert summary["tools"]["weather"] == {
        "count": 13, "failures": 5, "failure_rate": round(5 / 13, 4), "mean_seconds": 0.2,
        "codes": {"network/timeout": 5}}
    assert summary["runs"] == {"count": 20, "failures": 5, "failure_rate": 0.25}
    top = summary["top_groups"]
    assert [(g["component"], g["count"], g["total"], g["status"]) for g in top] == [
        ("tool:search", 10, 13, "regressed"), ("tool:weather", 5, 5, "ongoing")]
    assert top[0]["first_seen"].startswith("2027-01-13") and top[0]["last_seen"]
    # impact: an unhandled error 0.5, a handled one half of it
    assert summary["impact"]["total"] == pytest.approx(5 * 0.5 + 10 * 0.25)
    assert stats(store, "7d", now=NOW)["total"] == 18
    assert stats(store, "1h", now=NOW)["total"] == 5  # the hour it began in, and this one


def test_a_flaky_tool_is_advised_with_its_evidence(store: Store):
    history(store)
    advice = {a["kind"]: a for a in stats(store, "24h", now=NOW)["recommendations"]}
    flaky = advice["flaky_tool"]
    assert flaky["message"] == ("tool weather fails 38% of calls, mostly network/timeout: "
                                "raise its timeout or add a fallback")
    assert flaky["evidence"] == {"calls": 13, "failures": 5, "failure_rate": 0.3846,
                                 "codes": {"network/timeout": 5}}
    assert "failing_runs" not in advice  # 25% of runs: not past half
    assert advice["regression"]["message"].endswith("regressed after 2 quiet days")
    # search fails 25% of 40 calls, not with a timeout: other advice
    (search,) = [a for a in stats(store, "24h", now=NOW)["recommendations"]
                 if a["subject"] == "search"]
    assert search["message"].endswith("add a fallback or a circuit breaker")


def test_a_retry_that_rarely_helps_is_advised(store: Store):
    retries = [record(NOW - HOUR, handled=True, recovered=False, recovery="retry")
               for _ in range(49)]
    retries.append(record(NOW - HOUR, handled=True, recovered=True, recovery="retry"))
    store.write(retries, [(NOW - HOUR, "recovery", "retry", "", 50, 49, 0.0)])
    summary = stats(store, "24h", now=NOW)
    assert summary["recovery"]["retry"]["success_rate"] == 0.02
    assert summary["recovery"]["retry"]["tools"] == {
        "search": {"count": 50, "recovered": 1, "success_rate": 0.02}}
    (advice,) = [a for a in summary["recommendations"] if a["kind"] == "useless_recovery"]
    assert advice["message"] == ("retries of search succeed 2% of the time: retrying does "
                                 "not help")
    assert advice["evidence"] == {"attempts": 50, "recovered": 1, "success_rate": 0.02}


def test_a_retry_that_helps_is_not_advised(store: Store):
    store.write([record(NOW - HOUR, handled=True, recovered=True, recovery="retry")
                 for _ in range(10)], [(NOW - HOUR, "recovery", "retry", "", 10, 0, 0.0)])
    summary = stats(store, "24h", now=NOW)
    assert summary["recovery"]["retry"]["success_rate"] == 1.0
    assert not [a for a in summary["recommendations"] if a["kind"] == "useless_recovery"]


def test_a_regression_after_quiet_days_is_advised(store: Store):
    store.write([record(NOW - 4 * DAY)])
    store.write([record(NOW - DAY)])  # quiet for 3 days, less the hour's last 15 min
    (advice,) = [a for a in stats(store, "24h", now=NOW)["recommendations"]
                 if a["kind"] == "regression"]
    (group,) = store.groups()
    assert advice["message"] == (f"group {group['fingerprint']} (tool/execution_failed "
                                 f"in tool:search) regressed after 3 quiet days")
    assert 2.9 < advice["evidence"]["quiet_days"] <= 3.0
    assert stats(store, "24h", now=NOW + 2 * DAY)["recommendations"] == []  # outside


def test_dropped_records_are_counted_and_advised(store: Store):
    store.add_dropped(7)
    summary = stats(store, "24h", now=NOW)
    assert summary["dropped"] == 7
    assert [a["evidence"] for a in summary["recommendations"]] == [{"dropped": 7}]


def test_trends_count_per_bucket_and_say_the_direction(store: Store):
    day_start = (NOW // DAY) * DAY
    writes = [record(day_start - 3 * DAY + HOUR) for _ in range(2)]
    writes += [record(day_start - DAY + HOUR) for _ in range(2)]
    writes += [record(NOW - 10) for _ in range(12)]
    store.write(writes, [(NOW - 10, "tool", "search", "lua", 24, 12, 1.0)])
    trend = trends(store, "7d", "1d", now=NOW)
    json.dumps(trend, allow_nan=False)
    assert len(trend["buckets"]) == 7 and trend["total"] == 16
    assert [slot["errors"] for slot in trend["buckets"]][-1] == 12
    assert sum(slot["errors"] for slot in trend["buckets"][:-1]) == 4
    assert trend["buckets"][-1]["failure_rate"] == 0.5
    assert trend["direction"] == "rising"
    assert trend["evidence"] == {"last_bucket": 12, "median_before": 0}
    lines = chart(trend, width=24)
    assert len(lines) == 7
    assert "#" * 24 in lines[-1] and " 12 (" in lines[-1] and "failed 50%" in lines[-1]
    assert all(line.isascii() and "\x1b" not in line for line in lines)
    hourly = trends(store, "6h", "1h", now=NOW)
    assert [slot["errors"] for slot in hourly["buckets"]] == [0, 0, 0, 0, 0, 12]


def test_predict_decays_old_failures_and_weighs_recent_ones(store: Store):
    # a week ago every call failed; today none did
    store.write(counts=[(NOW - 6 * DAY, "tool", "search", "lua", 10, 10, 1.0),
                        (NOW - 0.5 * HOUR, "tool", "search", "lua", 10, 0, 1.0)])
    answer = predict(store, tool="search", now=NOW)
    old = 0.5 ** ((NOW - (int((NOW - 6 * DAY) // HOUR) + 0.5) * HOUR) / DAY)
    new = 0.5 ** ((NOW - (int((NOW - 0.5 * HOUR) // HOUR) + 0.5) * HOUR) / DAY)
    expected = (10 * old + 0.1) / (10 * old + 10 * new + 1)
    assert answer["likelihood"] == round(expected, 4) and answer["level"] == "low"
    assert answer["model"] == "rules"
    (evidence,) = answer["evidence"]
    assert (evidence["rule"], evidence["calls"], evidence["failures"]) == (
        "recent_failure_rate", 20, 10)
    # the other way round: likely to fail
    store.write(counts=[(NOW - 0.5 * HOUR, "tool", "weather", "lua", 10, 9, 1.0),
                        (NOW - 6 * DAY, "tool", "weather", "lua", 10, 0, 1.0)])
    assert predict(store, tool="weather", now=NOW)["level"] == "high"
    never = predict(store, tool="unknown", now=NOW)
    assert never["likelihood"] == 0.1 and never["evidence"][0]["calls"] == 0


def test_predict_counts_an_open_breaker_and_a_regression(store: Store):
    store.write(counts=[(NOW - HOUR, "tool", "search", "lua", 100, 0, 1.0)])
    calm = predict(store, tool="search", now=NOW)["likelihood"]
    breakers = Breakers()
    breakers.breaker("search", CircuitBreaker())
    breakers.force_open("search")
    opened = predict(store, tool="search", now=NOW, breakers=breakers)
    assert opened["likelihood"] == 0.95
    assert [e["rule"] for e in opened["evidence"]] == ["recent_failure_rate", "open_breaker"]
    store.write([record(NOW - 5 * DAY)])
    store.write([record(NOW - HOUR)])  # regressed
    regressed = predict(store, tool="search", now=NOW)
    assert regressed["likelihood"] == round(1 - (1 - calm) * 0.8, 4)
    assert regressed["evidence"][-1]["rule"] == "regression"


def test_predict_for_a_script_and_a_pluggable_model(tmp_path: Path):
    monitor = Monitor(tmp_path / "errors.db", predictor=lambda answer: {
        "likelihood": 0.5 if answer["history"] else 0.0})
    try:
        assert monitor.store is not None
        monitor.store.write(counts=[(NOW - HOUR, "run", "agent.lua", "lua", 4, 4, 1.0)])
        answer = monitor.predict(script="agent.lua", now=NOW)
        assert (answer["likelihood"], answer["model"], answer["level"]) == (
            0.5, "<lambda>", "high")
        assert answer["rules_likelihood"] == round(
            (4 * 0.5 ** ((NOW - (int((NOW - HOUR) // HOUR) + 0.5) * HOUR) / DAY) + 0.1)
            / (4 * 0.5 ** ((NOW - (int((NOW - HOUR) // HOUR) + 0.5) * HOUR) / DAY) + 1), 4)
        monitor.predictor = lambda answer: 7
        with pytest.raises(ConfigurationError) as caught:
            monitor.predict(script="agent.lua", now=NOW)
        assert caught.value.fields["key"] == "predictor"
    finally:
        monitor.close()


def test_monitor_methods_read_its_store(tmp_path: Path):
    monitor = Monitor(tmp_path / "errors.db")
    try:
        assert monitor.store is not None
        history(monitor.store)
        assert monitor.stats("24h", now=NOW)["total"] == 15
        assert len(monitor.trends("7d", "1d", now=NOW)["buckets"]) == 7
        assert len(monitor.records(limit=5)) == 5
        newest = monitor.records(limit=1)[0]
        assert monitor.record(newest["id"][:6])["id"] == newest["id"]
        assert len(monitor.groups()) == 2
    finally:
        monitor.close()


@pytest.mark.parametrize("text", ["", "yesterday", "5", "-3h", "0d", "3 parsecs",
                                  "2026-13-01", "1e400h", "nan"])
def test_a_bad_duration_or_date_names_its_flag(text: str):
    with pytest.raises(ConfigurationError) as caught:
        parse_since(text)
    assert caught.value.code == "configuration/invalid_value"
    assert caught.value.fields["key"] == "--since"
    with pytest.raises(ConfigurationError) as caught:
        parse_duration(text)
    assert caught.value.fields["key"] == "--window"


def test_durations_and_dates():
    assert parse_duration("30m") == 1800 and parse_duration("7d") == 7 * DAY
    assert parse_since("24h", now=NOW) == NOW - DAY
    assert parse_since("2027-01-15", now=NOW) == 1_800_000_000.0 - 1_800_000_000.0 % DAY
    assert parse_since("2027-01-15T08:00:00+02:00") == parse_since("2027-01-15T06:00")


@pytest.mark.parametrize("bucket", ["30m", "90m", "0h"])
def test_a_bucket_is_whole_hours(store: Store, bucket: str):
    with pytest.raises(ConfigurationError) as caught:
        trends(store, "7d", bucket, now=NOW)
    assert caught.value.fields["key"] == "--bucket"


def test_predict_needs_one_subject(store: Store):
    for subjects in ({}, {"tool": "a", "script": "b"}):
        with pytest.raises(ConfigurationError):
            predict(store, **subjects)
