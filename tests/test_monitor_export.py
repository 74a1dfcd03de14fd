"""Export: OpenTelemetry span events (the real SDK, an in-memory span exporter) and the
Sentry recipe (the real sentry-sdk, a capturing transport: no network), after real Lua and
JS runs whose error crossed a Python tool."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge import SpellError
from host import Host
from host.monitor import Monitor
from tests.conftest import EXTENSION, pick
from tests.test_hooks import boom

SOURCE = {
    "lua": "local function ask()\n  local answer = tools.boom({reason = 'kaput'})\n"
           "  return answer\nend\n"
           "pcall(tools.boom, {reason = 'caught'})\nlocal answer = ask()\nreturn answer\n",
    "javascript": "async function ask() {\n  return await tools.boom({reason: 'kaput'});\n}\n"
                  "async function main(args) {\n"
                  "  try { await tools.boom({reason: 'caught'}); } catch (e) {}\n"
                  "  return await ask();\n}\n",
}


def fail(host: Host, language: str) -> SpellError:
    with pytest.raises(SpellError) as info:
        host.run_source(SOURCE[language], language, f"agent{EXTENSION[language]}")
    return info.value


@pytest.fixture
def monitor(tmp_path: Path):
    monitor = Monitor(tmp_path / "errors.db")
    yield monitor
    monitor.close()


# -- OpenTelemetry --------------------------------------------------------------------


@pytest.fixture
def spans():
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_each_recorded_error_is_an_exception_event_of_its_runs_span(monitor, spans,
                                                                    language):
    from opentelemetry.trace import StatusCode

    from host.monitor.export import OpenTelemetryExporter

    provider, exporter = spans
    OpenTelemetryExporter(monitor, tracer_provider=provider)
    host = Host([boom], monitor=monitor)
    err = fail(host, language)
    host.hooks.flush()
    (span,) = exporter.get_finished_spans()
    assert span.name == "polyspell.run"
    assert span.attributes["polyspell.engine"] == language
    assert span.attributes["polyspell.run_id"] == err.context.correlation_id
    assert span.status.status_code == StatusCode.ERROR
    assert span.start_time <= span.end_time
    caught, fatal = sorted(span.events, key=lambda event: event.timestamp)
    for event in (caught, fatal):
        assert event.name == "exception"
        assert event.attributes["exception.type"] == "tool/execution_failed"
        assert event.attributes["polyspell.tool"] == "boom"
        assert event.attributes["polyspell.engine"] == language
        assert len(event.attributes["polyspell.fingerprint"]) == 16
        assert span.start_time <= event.timestamp <= span.end_time
    assert [caught.attributes["polyspell.handled"], fatal.attributes["polyspell.handled"]] \
        == [True, False]
    assert "kaput" in fatal.attributes["exception.message"]
    trace = fatal.attributes["exception.stacktrace"]
    # the polyglot traceback, as polyspell run prints it (less the hook path made later)
    assert err.to_text().startswith(trace)
    assert f"agent{EXTENSION[language]}" in trace and "in boom" in trace
    assert "RuntimeError" in trace  # the Python cause
    assert fatal.attributes["polyspell.line"] == pick(language, 2, 2)


def test_a_run_without_errors_makes_no_span(monitor, spans, language):
    from host.monitor.export import OpenTelemetryExporter

    provider, exporter = spans
    OpenTelemetryExporter(monitor, tracer_provider=provider)
    host = Host([boom], monitor=monitor)
    assert host.run_source(pick(language, "return 1", "async function main() { return 1; }"),
                           language, f"ok{EXTENSION[language]}") == 1
    host.hooks.flush()
    assert exporter.get_finished_spans() == ()


def test_add_error_event_goes_on_the_current_span(spans, language):
    from host.monitor.export import add_error_event

    provider, exporter = spans
    tracer = provider.get_tracer("app")
    host = Host([boom])
    with tracer.start_as_current_span("answer"):
        err = fail(host, language)
        add_error_event(err)
    (span,) = exporter.get_finished_spans()
    (event,) = span.events
    assert event.attributes["exception.type"] == "tool/execution_failed"
    assert event.attributes["exception.stacktrace"] == err.to_text()
    assert event.attributes["polyspell.engine"] == language
    assert event.attributes["polyspell.file"] == f"agent{EXTENSION[language]}"


# -- Sentry -----------------------------------------------------------------------------


@pytest.fixture
def sentry():
    """sentry_sdk with a transport that keeps the events (no network)."""
    sentry_sdk = pytest.importorskip("sentry_sdk")
    from sentry_sdk.transport import Transport

    from host.monitor.export import sentry_before_send

    events: list[dict] = []

    class Capture(Transport):
        def capture_envelope(self, envelope):
            event = envelope.get_event()
            if event is not None:
                events.append(event)

    sentry_sdk.init(dsn="https://public@sentry.invalid/1", transport=Capture,
                    before_send=sentry_before_send, default_integrations=False,
                    auto_enabling_integrations=False)
    try:
        yield sentry_sdk, events
    finally:
        sentry_sdk.get_client().close()
        # no DSN: nothing is sent by later tests; and no default integrations, whose
        # threading one would wrap every thread the rest of the session starts (a later
        # test's segfault was inside that wrapper once)
        sentry_sdk.init(default_integrations=False, auto_enabling_integrations=False)


def test_sentry_sees_the_polyglot_frames_and_the_cause_chain(sentry, language):
    sentry_sdk, events = sentry
    err = fail(Host([boom]), language)
    try:
        raise err
    except SpellError:
        sentry_sdk.capture_exception()
    sentry_sdk.flush()
    (event,) = events
    values = event["exception"]["values"]
    *causes, main = values
    assert main["type"] == "tool/execution_failed" and "kaput" in main["value"]
    assert causes and causes[0]["type"] == "runtime/python_exception"  # the oldest first
    assert main["mechanism"]["type"] in ("generic", "polyspell")
    frames = main["stacktrace"]["frames"]
    script = [f for f in frames if f["filename"] == f"agent{EXTENSION[language]}"]
    assert script and script[-1]["lineno"] == 2 and script[-1]["function"] == "ask"
    assert {f["platform"] for f in script} == {pick(language, "other", "javascript")}
    assert "tools.boom" in script[-1]["context_line"]
    python = [f for f in causes[0]["stacktrace"]["frames"] if f["function"] == "boom"]
    assert python and python[0]["platform"] == "python" and python[0]["in_app"]
    assert event["tags"]["polyspell.code"] == "tool/execution_failed"
    assert event["tags"]["polyspell.engine"] == language
    assert event["level"] == "error"
    assert len(event["fingerprint"][0]) == 16


def test_a_monitors_records_go_to_sentry_handled_ones_too(monitor, sentry, language):
    from host.monitor.export import sentry_event

    sentry_sdk, events = sentry
    monitor.add_listener(lambda records, ctx: [
        sentry_sdk.capture_event(sentry_event(record)) for record in records])
    host = Host([boom], monitor=monitor)
    fail(host, language)
    host.hooks.flush()
    sentry_sdk.flush()
    assert len(events) == 2
    handled = sorted(event["exception"]["values"][-1]["mechanism"]["handled"]
                     for event in events)
    assert handled == [False, True]
    assert {event["contexts"]["polyspell"]["file"] for event in events} == {
        f"agent{EXTENSION[language]}"}
    assert monitor.flush()  # Sentry groups them as the monitor does
    assert {event["fingerprint"][0] for event in events} == {
        record["fingerprint"] for record in monitor.store.records()}


def test_other_events_pass_sentry_before_send_unchanged(sentry):
    sentry_sdk, events = sentry
    try:
        raise ValueError("plain")
    except ValueError:
        sentry_sdk.capture_exception()
    sentry_sdk.flush()
    (event,) = events
    assert event["exception"]["values"][-1]["type"] == "ValueError"
    assert "polyspell.code" not in event.get("tags", {})
