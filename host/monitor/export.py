"""Export for teams that already run OpenTelemetry or Sentry: polyspell's errors with their
polyglot frames and cause chains, where those tools would otherwise see one Python frame.

**OpenTelemetry** (when ``opentelemetry-api`` is installed): an error becomes an
``exception`` span event with ``exception.type`` = the code (``tool/execution_failed``),
``exception.message``, ``exception.stacktrace`` = the polyglot traceback (as ``polyspell
run`` prints it), plus ``polyspell.*`` attributes (engine, tool, component, severity,
fingerprint, handled, recovered, recovery, file, line). Two ways:

- :func:`add_error_event`: on a span of yours (default: the current span), from the
  code that runs the agent::

      with tracer.start_as_current_span("answer"):
          try:
              host.run("agent.lua")
          except SpellError as err:
              add_error_event(err)
              raise

- :class:`OpenTelemetryExporter`: every error a monitor records, one ``polyspell.run``
  span per run that had errors (its start and end the run's, status ERROR if the run
  failed), an event per record at the time it happened::

      monitor = Monitor()
      OpenTelemetryExporter(monitor)  # the global tracer provider, or tracer_provider=
      host = Host(tools, monitor=monitor)

**Sentry**: :func:`sentry_before_send` turns a ``SpellError`` that ``sentry_sdk`` captured
into Sentry's exception model: the cause chain as exception values (the oldest cause
first, as Sentry wants), each with its frames, outermost first, each frame with its
``platform`` (``python``, ``javascript``; Lua, which Sentry does not know, is ``other``),
``filename``, ``lineno``, ``colno``, ``function``, ``context_line`` and ``in_app``
(polyspell's own frames are not); the event gets polyspell's tags and its fingerprint.
:func:`sentry_event` makes the same event from a SpellError, or a stored record's
``error``, for ``sentry_sdk.capture_event``::

    sentry_sdk.init(dsn=..., before_send=sentry_before_send)
    try:
        host.run("agent.lua")
    except SpellError as err:
        sentry_sdk.capture_exception(err)

    # or every error a monitor records, handled ones included:
    monitor.add_listener(lambda records, ctx: [
        sentry_sdk.capture_event(sentry_event(record)) for record in records])
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from bridge import SpellError
from bridge.frames import Frame, is_internal
from host.monitor.records import component_of, fingerprint, script_site

if TYPE_CHECKING:
    from host.monitor import Monitor

logger = logging.getLogger("polyspell")

SPAN_NAME = "polyspell.run"
SENTRY_PLATFORMS = {"python": "python", "javascript": "javascript"}  # else "other"
SENTRY_LEVELS = {"trace": "debug", "info": "info", "warning": "warning", "error": "error",
                 "critical": "fatal", "fatal": "fatal"}
RECORD_ATTRIBUTES = ("engine", "tool", "component", "severity", "fingerprint", "handled",
                     "recovered", "recovery", "file", "line", "run_id")


def _error_of(value: Any) -> tuple[SpellError, dict[str, Any]]:
    """``(the error, its record's attributes)`` of a SpellError or a record."""
    if isinstance(value, SpellError):
        engine, file, line, function = script_site(value)
        component = component_of(value)
        tool = value.fields.get("tool_name")
        tool = tool if isinstance(tool, str) else None
        return value, {
            "engine": engine, "tool": tool, "component": component,
            "severity": str(value.severity), "file": file, "line": line,
            "fingerprint": fingerprint(value, engine=engine, tool=tool,
                                       component=component, file=file, function=function),
            "run_id": value.context.correlation_id}
    return SpellError.from_dict(value["error"]), {key: value.get(key)
                                                  for key in RECORD_ATTRIBUTES}


def event_attributes(value: Any) -> dict[str, Any]:
    """The attributes of the ``exception`` event of a SpellError or a record (see the
    module docstring): OpenTelemetry's ``exception.*`` and polyspell's own."""
    err, known = _error_of(value)
    attributes: dict[str, Any] = {
        "exception.type": err.code,
        "exception.message": err.message,
        "exception.stacktrace": err.to_text(),
    }
    for key, item in known.items():
        if item is not None:  # OpenTelemetry attributes have no null
            attributes[f"polyspell.{key}"] = item
    return attributes


def add_error_event(err: SpellError, span: Any = None, *, handled: bool | None = None,
                    timestamp: float | None = None) -> None:
    """Add ``err`` as an ``exception`` event to ``span`` (default: the current span)."""
    from opentelemetry import trace

    span = trace.get_current_span() if span is None else span
    attributes = event_attributes(err)
    if handled is not None:
        attributes["polyspell.handled"] = handled
    span.add_event("exception", attributes,
                   timestamp=None if timestamp is None else int(timestamp * 1e9))


class OpenTelemetryExporter:
    """Exports every error ``monitor`` records as span events (see the module docstring):
    one ``polyspell.run`` span per run that had errors, made on the observers' thread as
    the run ends (records that went out before it: a span of their own)."""

    def __init__(self, monitor: Monitor, *, tracer_provider: Any = None) -> None:
        from opentelemetry import trace

        self.tracer = trace.get_tracer("polyspell", tracer_provider=tracer_provider)
        monitor.add_listener(self)

    def __call__(self, records: list[dict[str, Any]], ctx: Any) -> None:
        """A run's records (the monitor's listener)."""
        if not records:
            return
        from opentelemetry.trace import Status, StatusCode

        now = time.time()
        duration = getattr(ctx, "duration", None) or 0.0
        first = min(record["timestamp"] for record in records)
        start = min(first, now - duration)
        attributes = {"polyspell.run_id": records[0]["run_id"] or ""}
        if ctx is not None:
            attributes.update({"polyspell.script": ctx.script, "polyspell.engine": ctx.language})
        span = self.tracer.start_span(SPAN_NAME, attributes=attributes,
                                      start_time=int(start * 1e9))
        try:
            for record in records:
                try:
                    event = event_attributes(record)
                except SpellError as err:  # a record whose error cannot be read back
                    event = {"exception.type": record["code"],
                             "exception.message": record["message"],
                             "polyspell.export_error": err.message}
                span.add_event("exception", event, timestamp=int(record["timestamp"] * 1e9))
            failed = getattr(ctx, "error", None)
            if failed is not None or ctx is None:
                code = failed.code if isinstance(failed, SpellError) else records[-1]["code"]
                span.set_status(Status(StatusCode.ERROR, code))
        finally:
            span.end(end_time=int(max(now, start) * 1e9))


# -- Sentry ---------------------------------------------------------------------------


def sentry_frame(frame: Frame) -> dict[str, Any]:
    """One frame in Sentry's form."""
    out: dict[str, Any] = {
        "filename": frame.file, "abs_path": frame.file,
        "function": frame.function or "<main>",
        "platform": SENTRY_PLATFORMS.get(frame.language, "other"),
        "in_app": not is_internal(frame) and frame.language != "host",
        "vars": {},
    }
    if frame.line is not None:
        out["lineno"] = frame.line
    if frame.column is not None:
        out["colno"] = frame.column
    if frame.source is not None:
        out["context_line"] = frame.source
    if frame.language not in SENTRY_PLATFORMS:
        out["module"] = frame.language  # the language shows next to the file in Sentry
    return out


def sentry_exception_values(err: SpellError, *, handled: bool = False
                            ) -> list[dict[str, Any]]:
    """``err`` and its causes as Sentry's exception values: the oldest cause first, the
    error itself last (with the mechanism: handled or not)."""
    values = []
    for each in reversed(list(err.chain())):
        values.append({
            "type": each.code, "value": each.message, "module": "polyspell",
            "stacktrace": {"frames": [sentry_frame(frame) for frame in each.frames]},
        })
    values[-1]["mechanism"] = {"type": "polyspell", "handled": handled}
    return values


def sentry_event(value: Any, *, handled: bool | None = None) -> dict[str, Any]:
    """A Sentry event (for ``sentry_sdk.capture_event``) of a SpellError or a stored
    record (see :mod:`host.monitor.records`)."""
    err, known = _error_of(value)
    if handled is None:
        handled = bool(known.get("handled", False))
    tags = {f"polyspell.{key}": str(known[key]) for key in
            ("engine", "tool", "component", "recovery") if known.get(key) is not None}
    return {
        "level": SENTRY_LEVELS.get(str(err.severity), "error"),
        "exception": {"values": sentry_exception_values(err, handled=handled)},
        "fingerprint": [known["fingerprint"]] if known.get("fingerprint") else
        ["{{ default }}"],
        "tags": {"polyspell.code": err.code, "polyspell.category": err.category, **tags},
        "contexts": {"polyspell": {
            "error_id": err.context.error_id, "run_id": known.get("run_id"),
            "file": known.get("file"), "line": known.get("line"),
            "handled": handled, "recovered": known.get("recovered")}},
    }


def sentry_before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    """A ``before_send`` for ``sentry_sdk.init``: a captured SpellError shows with its
    polyglot frames and cause chain (other events pass unchanged)."""
    exc_info = hint.get("exc_info") if isinstance(hint, dict) else None
    err = exc_info[1] if exc_info else None
    if not isinstance(err, SpellError):
        return event
    try:
        theirs = (event.get("exception") or {}).get("values") or [{}]
        mechanism = theirs[-1].get("mechanism")  # the SDK's: how it was captured
        ours = sentry_event(err, handled=bool(mechanism and mechanism.get("handled")))
        if mechanism:
            ours["exception"]["values"][-1]["mechanism"] = mechanism
    except Exception:  # never lose the event for a bug of ours
        logger.exception("polyspell could not convert an error for Sentry")
        return event
    event["exception"] = ours["exception"]
    event.setdefault("fingerprint", ours["fingerprint"])
    event["level"] = ours["level"]
    event.setdefault("tags", {}).update(ours["tags"])
    event.setdefault("contexts", {}).update(ours["contexts"])
    return event


__all__ = ["OpenTelemetryExporter", "add_error_event", "event_attributes", "sentry_before_send",
           "sentry_event", "sentry_exception_values", "sentry_frame"]
