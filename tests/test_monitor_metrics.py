"""Prometheus metrics of a monitor: scraped over HTTP from the real endpoint (Monitor.serve
and ``polyspell metrics``) after real Lua and JS runs, parsed with prometheus_client's
parser."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

prometheus_client = pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from bridge import ConfigurationError, SpellError  # noqa: E402
from host import Host  # noqa: E402
from host.hooks import CircuitContext  # noqa: E402
from host.monitor import Monitor  # noqa: E402
from host.monitor.metrics import OTHER, Counts, StoreCollector, registry_of  # noqa: E402
from host.monitor.store import Store  # noqa: E402
from tests.cli import POLYSPELL, environment  # noqa: E402
from tests.conftest import EXTENSION, pick  # noqa: E402
from tests.test_hook_failures import shaky_tool  # noqa: E402
from tests.test_hooks import add, boom  # noqa: E402

LUA = """
for i = 1, 5 do tools.add({a = i, b = 1}) end
tools.shaky({n = 1})
for i = 1, 3 do pcall(tools.boom, {reason = 'r'}) end
return tools.boom({reason = 'fatal'})
"""
JS = """async function main(args) {
  for (let i = 1; i <= 5; i++) await tools.add({a: i, b: 1});
  await tools.shaky({n: 1});
  for (let i = 1; i <= 3; i++) { try { await tools.boom({reason: 'r'}); } catch (e) {} }
  return await tools.boom({reason: 'fatal'});
}"""
POLICIES = {"shaky": {"retry": {"attempts": 2, "initial": 0, "jitter": 0, "on": "any"}},
            "boom": {"breaker": {"failure_threshold": 2, "recovery_timeout": 60}}}


def run_agent(monitor: Monitor, language: str) -> None:
    host = Host([add, boom, shaky_tool()], monitor=monitor, recovery=POLICIES)
    with pytest.raises(SpellError):
        host.run_source(pick(language, LUA, JS), language,
                        f"agent{EXTENSION[language]}")
    host.hooks.flush()
    assert monitor.flush()


def scrape(url: str) -> dict[str, dict[tuple, float]]:
    """``{sample name: {sorted label items: value}}`` of a real scrape of ``url``."""
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = \
                sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


@pytest.fixture
def monitor(tmp_path: Path):
    monitor = Monitor(tmp_path / "errors.db")
    yield monitor
    monitor.close()


def test_a_scrape_of_monitor_serve_counts_the_runs(monitor, language):
    run_agent(monitor, language)
    server = monitor.serve(0)
    assert server.url.startswith("http://127.0.0.1:")
    got = scrape(server.url)
    # 3 caught + 1 fatal call of boom: 2 failed in the tool, then the breaker refused 2;
    # and shaky's first try, which the retry answered for
    assert value(got, "polyspell_errors_total", category="tool", kind="execution_failed",
                 engine=language, component="tool", severity="error") == 3
    assert value(got, "polyspell_errors_total", category="runtime",
                 kind="circuit_breaker_open", engine=language, component="tool",
                 severity="warning") == 2
    assert value(got, "polyspell_tool_calls_total", tool="add", outcome="success") == 5
    assert value(got, "polyspell_tool_calls_total", tool="boom", outcome="failure") == 4
    assert value(got, "polyspell_tool_calls_total", tool="shaky", outcome="success") == 1
    assert value(got, "polyspell_runs_total", engine=language, outcome="failure") == 1
    assert value(got, "polyspell_runs_total", engine=language, outcome="success") == 0
    assert value(got, "polyspell_error_recoveries_total", strategy="retry",
                 outcome="recovered") == 1
    assert value(got, "polyspell_circuit_state", tool="boom") == 2  # open
    assert value(got, "polyspell_tool_duration_seconds_count", tool="add") == 5
    assert value(got, "polyspell_tool_duration_seconds_bucket", tool="add", le="+Inf") == 5
    assert value(got, "polyspell_tool_duration_seconds_bucket", tool="add", le="1.0") == 5
    assert 0 < value(got, "polyspell_tool_duration_seconds_sum", tool="add") < 1
    # the fatal error (run-ending) weighs more than the handled ones
    assert value(got, "polyspell_user_impact_score_count", severity="warning") == 2
    assert value(got, "polyspell_user_impact_score_sum", severity="warning") > 0
    assert value(got, "polyspell_monitor_dropped_total") == 0
    # no label holds an id, a message or a file name
    labels = {v for series in got.values() for key in series for _, v in key}
    assert not any("agent" in v or "fatal" in v or "-" in v for v in labels), labels


def test_two_monitors_have_registries_of_their_own(tmp_path, language):
    first, second = Monitor(tmp_path / "a.db"), Monitor(tmp_path / "b.db")
    try:
        run_agent(first, language)
        assert first.metrics is not second.metrics
        assert first.metrics is not prometheus_client.REGISTRY
        served = second.serve(0)
        got = scrape(served.url)
        assert value(got, "polyspell_tool_calls_total", tool="add", outcome="success") == 0
        assert prometheus_client.REGISTRY.get_sample_value(
            "polyspell_tool_calls_total", {"tool": "add", "outcome": "success"}) is None
    finally:
        first.close()
        second.close()
    with pytest.raises(httpx.TransportError):  # close() stopped the server
        httpx.get(served.url, timeout=2)


def test_label_values_are_bounded_and_cannot_forge_lines():
    counts = Counts(max_tools=3)
    for n in range(10):
        counts.count((0, "tool", f"tool{n}", "lua", 2, 1, 0.1))
    hostile = 'lua"} 1\npolyspell_forged_total 99\n#'
    counts.records([{"category": "tool", "kind": "x" * 1000, "engine": hostile,
                     "component": "tool:a\nb", "severity": "error", "impact": 0.5}])
    for n in range(200):
        counts.circuit(CircuitContext(f"breaker{n}", "closed", "open"))
    text = prometheus_client.generate_latest(registry_of(_Fixed(counts))).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert not any(line.startswith("polyspell_forged") for line in text.splitlines())
    tools = {s.labels["tool"] for s in families["polyspell_tool_calls"].samples}
    assert tools == {"tool0", "tool1", "tool2", OTHER}
    other = [s.value for s in families["polyspell_tool_calls"].samples
             if s.labels == {"tool": OTHER, "outcome": "failure"}]
    assert other == [7]  # tool3..tool9 counted, as "other"
    (error,) = families["polyspell_errors"].samples
    assert error.labels["engine"] == hostile[:80]  # escaped by the format, then read back
    assert len(error.labels["kind"]) == 80
    assert error.labels["component"] == "tool"  # the type, not the name
    assert len({s.labels["tool"] for s in families["polyspell_circuit_state"].samples}) == 1


class _Fixed:
    def __init__(self, counts: Counts) -> None:
        self.counts = counts

    def collect(self):
        yield from self.counts.families()


@pytest.mark.parametrize("port", [-1, 65536, "http", True, "9464x"])
def test_a_bad_port_is_a_configuration_error(monitor, port):
    with pytest.raises(ConfigurationError) as info:
        monitor.serve(port)
    assert info.value.code == "configuration/invalid_value"
    assert info.value.fields["key"] == "port"


def test_a_port_in_use_is_a_clear_error(monitor):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError) as info:
            monitor.serve(port)
    assert info.value.code == "configuration/invalid_value"
    assert f"127.0.0.1:{port}" in info.value.message and "in use" in info.value.message


def test_the_store_collector_counts_what_every_writer_recorded(tmp_path):
    path = tmp_path / "errors.db"
    for language in ("lua", "javascript"):  # two monitors, as two processes would be
        monitor = Monitor(path)
        run_agent(monitor, language)
        monitor.close()
    reader = Monitor(path)
    try:
        registry = registry_of(StoreCollector(reader.store))
        sample = registry.get_sample_value
        for language in ("lua", "javascript"):
            assert sample("polyspell_runs_total",
                          {"engine": language, "outcome": "failure"}) == 1
            assert sample("polyspell_errors_total", {
                "category": "tool", "kind": "execution_failed", "engine": language,
                "component": "tool", "severity": "error"}) == 3
        assert sample("polyspell_tool_calls_total", {"tool": "add", "outcome": "success"}) == 10
        assert sample("polyspell_tool_duration_seconds_count", {"tool": "add"}) == 10
        # the store keeps the buckets: ten fast calls are in every bucket from 1 s on
        assert sample("polyspell_tool_duration_seconds_bucket",
                      {"tool": "add", "le": "1.0"}) == 10
        assert sample("polyspell_tool_duration_seconds_bucket",
                      {"tool": "add", "le": "+Inf"}) == 10
        assert sample("polyspell_error_recoveries_total",
                      {"strategy": "retry", "outcome": "recovered"}) == 2
        assert sample("polyspell_monitor_store_up", {}) == 1
    finally:
        reader.close()


def test_the_store_histogram_places_each_call_in_its_bucket(tmp_path):
    """Counts written as the recorder writes them, by duration bucket, come back in the
    right cumulative buckets; calls counted with no buckets (before schema 3) stay in
    +Inf only, so the buckets never claim more than was measured."""
    from host.hooks import DURATION_BUCKETS

    store = Store(tmp_path / "errors.db")
    now = time.time()
    fast = [0] * (len(DURATION_BUCKETS) + 1)
    fast[0], fast[DURATION_BUCKETS.index(0.5)], fast[-1] = 3, 2, 1  # <=1 ms, <=0.5 s, >10 s
    store.write(counts=[(now, "tool", "search", "lua", 6, 0, 20.0, tuple(fast)),
                        (now, "tool", "search", "lua", 4, 1, 1.0)])  # 4 with no buckets
    store.close()
    reader = Store(tmp_path / "errors.db")
    try:
        sample = registry_of(StoreCollector(reader)).get_sample_value

        def bucket(le: str) -> float | None:
            return sample("polyspell_tool_duration_seconds_bucket",
                          {"tool": "search", "le": le})

        assert (bucket("0.001"), bucket("0.25"), bucket("0.5"), bucket("10.0"),
                bucket("+Inf")) == (3, 3, 5, 5, 10)
        assert sample("polyspell_tool_duration_seconds_count", {"tool": "search"}) == 10
        assert sample("polyspell_tool_duration_seconds_sum", {"tool": "search"}) == 21.0
    finally:
        reader.close()


def _start_cli(*args: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([*POLYSPELL, "metrics", *args], stderr=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, env=environment())
    line = process.stderr.readline()
    if "serving" not in line:
        process.kill()
        _, err = process.communicate()
        pytest.fail(f"polyspell metrics did not start: {line}{err}")
    return process, line.split(" at ", 1)[1].split()[0]


def test_polyspell_metrics_serves_the_store(tmp_path):
    path = tmp_path / "errors.db"
    for language in ("lua", "javascript"):
        monitor = Monitor(path)
        run_agent(monitor, language)
        monitor.close()
    process, url = _start_cli("--port", "0", "--errors-db", str(path))
    try:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        got = scrape(url)
        assert value(got, "polyspell_runs_total", engine="lua", outcome="failure") == 1
        assert value(got, "polyspell_runs_total", engine="javascript", outcome="failure") == 1
        assert value(got, "polyspell_tool_calls_total", tool="boom", outcome="failure") == 8
        monitor = Monitor(path)  # a later run is in the next scrape
        run_agent(monitor, "lua")
        monitor.close()
        got = scrape(url)
        assert value(got, "polyspell_runs_total", engine="lua", outcome="failure") == 2
    finally:
        process.terminate()
        process.communicate(timeout=10)


@pytest.mark.parametrize("port", ["65536", "abc", "-5"])
def test_polyspell_metrics_with_a_bad_port_exits_2(tmp_path, port):
    done = subprocess.run([*POLYSPELL, "metrics", f"--port={port}", "--errors-db",
                           str(tmp_path / "e.db")], capture_output=True, text=True,
                          env=environment(), timeout=60)
    assert done.returncode == 2
    assert "configuration/invalid_value" in done.stderr and "port" in done.stderr


def test_polyspell_metrics_on_a_port_in_use_exits_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([*POLYSPELL, "metrics", "--port", str(port), "--errors-db",
                               str(tmp_path / "e.db")], capture_output=True, text=True,
                              env=environment(), timeout=60)
    assert done.returncode == 2
    assert "in use" in done.stderr and str(port) in done.stderr
    assert "Traceback" not in done.stderr


def test_polyspell_metrics_on_a_foreign_file_is_a_storage_error(tmp_path):
    foreign = tmp_path / "foreign.db"
    foreign.write_bytes(b"not sqlite at all" * 100)
    started = time.monotonic()
    done = subprocess.run([*POLYSPELL, "metrics", "--port", "0", "--errors-db", str(foreign)],
                          capture_output=True, text=True, env=environment(), timeout=60)
    assert time.monotonic() - started < 60
    assert done.returncode == 1
    assert "storage/corrupted" in done.stderr and str(foreign) in done.stderr


def test_a_store_that_cannot_be_read_scrapes_as_down(tmp_path, caplog):
    import sqlite3

    from host.monitor.store import Store

    path = tmp_path / "errors.db"
    store = Store(path)
    try:
        registry = registry_of(StoreCollector(store))
        assert registry.get_sample_value("polyspell_monitor_store_up", {}) == 1
        other = sqlite3.connect(path)
        other.execute("DROP TABLE calls")  # another program broke the file
        other.close()
        text = prometheus_client.generate_latest(registry).decode()
        assert "polyspell_monitor_store_up 0.0" in text
        assert "polyspell_runs_total" not in text
        assert str(path) in caplog.text
    finally:
        store.close()


def test_a_bad_address_is_a_configuration_error(monitor):
    with pytest.raises(ConfigurationError) as info:
        monitor.serve(0, addr="no such host.invalid")
    assert info.value.code == "configuration/invalid_value"
    assert info.value.fields["key"] == "addr"


def test_without_prometheus_client_metrics_say_how_to_install_it(tmp_path):
    db = str(tmp_path / "e.db")
    code = ("import sys; sys.modules['prometheus_client'] = None\n"
            "from host.cli import main\n"
            f"sys.exit(main(['metrics', '--port', '0', '--errors-db', {db!r}]))")
    done = subprocess.run([POLYSPELL[0], "-c", code], capture_output=True, text=True,
                          env=environment(), timeout=60)
    assert done.returncode == 2
    assert "configuration/usage" in done.stderr
    assert "polyspell[monitoring]" in done.stderr and "Traceback" not in done.stderr


def test_a_tools_file_with_thousands_of_tools_cannot_blow_up_the_labels(monitor, tmp_path):
    many = tmp_path / "many.py"
    many.write_text("from host import tool\n" + "".join(
        f"\n@tool\ndef t{n}() -> int:\n    \"\"\"Tool {n}.\"\"\"\n    return {n}\n"
        for n in range(260)))
    host = Host([str(many)], monitor=monitor)
    assert host.run_source("local s = 0 for i = 0, 259 do s = s + tools['t' .. i]() end "
                           "return s", "lua", "many.lua") == sum(range(260))
    host.hooks.flush()
    got = scrape(monitor.serve(0).url)
    tools = {dict(key)["tool"] for key in got["polyspell_tool_calls_total"]}
    assert len(tools) == 201 and "other" in tools
    assert value(got, "polyspell_tool_calls_total", tool="other", outcome="success") == 60
    assert len({dict(key)["tool"] for key in got["polyspell_tool_duration_seconds_count"]}) \
        == 201
