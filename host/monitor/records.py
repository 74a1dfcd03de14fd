"""One record per error: what the store keeps, what ``polyspell errors`` shows.

A record is a plain dict (it crosses a queue and a thread, and becomes a row) with the
keys of :data:`RECORD_KEYS`; ``error`` is the whole error as ``SpellError.to_dict()``
gives it (frames, cause chain, context, hook path). :func:`make_record` builds it from
the error and what the monitor knows of the operation it ended.

Grouping follows Sentry's idea: a fingerprint made only of parts that stay the same from
one occurrence to the next (the code, the engine, the tool or component, the innermost
script frame's file and function), never line numbers or messages (which carry ids,
paths and times). ``fingerprint=[...]`` overrides it per error, ``"{{ default }}"``
standing for the default parts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from bridge import Severity, SpellError
from bridge.jsontext import unicode_text

RECORD_KEYS = (
    "id", "timestamp", "code", "category", "kind", "severity", "message", "component",
    "engine", "tool", "file", "line", "function", "run_id", "task_id", "plan_id",
    "fingerprint", "handled", "recovered", "recovery", "impact", "error")
"""The keys of a record (in this order in ``--json`` output)."""

DEFAULT = "{{ default }}"  # in a custom fingerprint: the default parts
SCRIPT_LANGUAGES_EXCLUDED = frozenset({"python", "host"})
MAX_MESSAGE = 2000  # characters of a message kept in its own column (the JSON has it all)


def component_of(err: SpellError, tool: str | None = None) -> str:
    """The component an error belongs to, as one bounded name: ``tool:search``,
    ``script:agent.lua``, ``hook:audit``, ``system:host``... (an error no one placed,
    of a tool: that tool's)."""
    component = err.context.component
    kind = component.type
    if kind == "system" and tool:
        return f"tool:{tool}"
    for name in ("tool_name", "script_id", "hook_name", "agent_id", "workflow_id",
                 "event_type", "subsystem", "bridge_type"):
        value = getattr(component, name, None)
        if value:
            return f"{kind}:{value}"
    return kind


def script_site(err: SpellError) -> tuple[str | None, str | None, int | None, str | None]:
    """``(engine, file, line, function)`` of the innermost script frame of ``err`` or,
    if it has none, of its causes (the script line that failed)."""
    for each in err.chain():
        for frame in reversed(each.frames):  # a frame without a line: Lua's tail calls
            if frame.language not in SCRIPT_LANGUAGES_EXCLUDED and frame.line is not None:
                return frame.language, frame.file, frame.line, frame.function
    return None, None, None, None


def fingerprint(err: SpellError, *, engine: str | None, tool: str | None,
                component: str, file: str | None, function: str | None,
                custom: Sequence[str] | None = None) -> str:
    """The group of an error (see the module docstring): a short hex digest."""
    default = [err.code, engine or "", tool or component, file or "", function or ""]
    parts = default
    if custom:
        parts = []
        for part in custom:
            if part == DEFAULT:
                parts.extend(default)
            else:
                parts.append(str(part))
    import hashlib  # here: a run that records nothing does not load it

    digest = hashlib.blake2b("\x1f".join(parts).encode("utf-8", "surrogatepass"),
                             digest_size=8)
    return digest.hexdigest()


def impact(severity: Severity | str, *, handled: bool, recovered: bool) -> float:
    """How much a person using the agent felt an error of ``severity``, from 0 (nothing)
    to 1 (a fatal error that ended the run): scaled down when the script handled the
    error or recovery answered in its place (the seed's ``user_impact``)."""
    score = min(1.0, max(0.0, (int(Severity.parse(severity)) - int(Severity.INFO)) / 4))
    if recovered:
        score *= 0.2
    elif handled:
        score *= 0.5
    return round(score, 3)


def make_record(err: SpellError, *, handled: bool = False, recovered: bool = False,
                recovery: str | None = None, tool: str | None = None,
                run_id: str | None = None, task_id: str | None = None,
                plan_id: str | None = None, engine: str | None = None,
                when: float | None = None,
                site: tuple[str, str | None, int | None, str | None] | None = None
                ) -> dict[str, Any]:
    """The record of one occurrence of ``err`` (see the module docstring).

    ``handled``: the script caught it (the run went on); ``recovered``: recovery (a
    retry, a fallback, a degraded answer, a hook) answered in its place, ``recovery``
    naming how; ``tool``: the tool call it ended; ``engine``: the run's language when no
    script frame says it; ``when``: seconds since the epoch (default: now); ``site``:
    ``(language, file, line, function)`` of the script line that made the call, when the
    error's frames have none (an error not handed to the script yet).
    """
    site_engine, file, line, function = script_site(err)
    if file is None and site is not None and site[1] is not None:
        site_engine, file, line, function = site
    engine = site_engine or engine
    if tool is None:
        name = err.fields.get("tool_name")
        tool = name if isinstance(name, str) else None
    component = component_of(err, tool)
    # the columns are text a store writes as UTF-8: a name Python read with surrogate
    # escapes (a file name that is not UTF-8) or a careless tool's lone surrogate as U+FFFD
    file, function, tool, component = (
        _text(file), _text(function), _text(tool), _text(component))
    context = err.context
    custom = context.metadata.get("fingerprint")
    if not (isinstance(custom, list) and all(isinstance(p, str) for p in custom)):
        custom = None
    data = err.to_dict()
    return {
        "id": os.urandom(8).hex(),  # 64 random bits, as uuid4 gave (a third the cost)
        "timestamp": time.time() if when is None else when,
        "code": err.code,
        "category": err.category,
        "kind": err.kind,
        "severity": str(err.severity),
        "message": unicode_text(err.message[:MAX_MESSAGE]),
        "component": component,
        "engine": engine,
        "tool": tool,
        "file": file,
        "line": line,
        "function": function,
        "run_id": run_id or context.correlation_id,
        "task_id": task_id,
        "plan_id": plan_id,
        "fingerprint": fingerprint(err, engine=engine, tool=tool, component=component,
                                   file=file, function=function, custom=custom),
        "handled": handled,
        "recovered": recovered,
        "recovery": recovery,
        "impact": impact(err.severity, handled=handled, recovered=recovered),
        "error": data,
    }


def _text(value: Any) -> Any:
    """``value`` as UTF-8 can encode it when it is text (see :func:`unicode_text`)."""
    return unicode_text(value) if isinstance(value, str) else value


def iso(timestamp: float) -> str:
    """Seconds since the epoch as ISO 8601 in UTC (how records show their time)."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")
