"""What the recorded errors say over time: statistics, trends, predictions, advice.

Pure functions over a :class:`~host.monitor.store.Store`, exposed as the
:class:`~host.monitor.Monitor` methods of the same names and by ``polyspell errors``.
They read the hourly pre-aggregates (``rollup``, ``calls``, ``groups``), never the
``errors`` table, so that their cost follows the hours and groups of a window, not its
records (a million records: a few thousand rows). A consequence: a window is made of
whole hours, the hour it begins in included (``since`` in the answers says where it
really began).

- :func:`stats`: total, rate per hour, severities, components, engines, codes, top
  groups, recovery success per strategy, tool failure rates, user impact, dropped
  records, and :func:`recommendations` each with the evidence that triggered it;
- :func:`trends`: the same counts per bucket (``--bucket 1d``), with the direction;
- :func:`predict`: how likely the next call of a tool (or run of a script) is to fail:
  its recent failure rate with exponential decay by age, raised by an open circuit
  breaker or a regressed or new group, with the evidence (rules: the seed's fallback;
  ``Monitor(predictor=fn)`` may replace them).
"""

from __future__ import annotations

import math
import re
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any

from bridge import ConfigurationError
from host.monitor.records import iso
from host.monitor.store import Store

HOUR = 3600.0
DAY = 24 * HOUR
UNITS = {"s": 1.0, "m": 60.0, "h": HOUR, "d": DAY, "w": 7 * DAY}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", re.IGNORECASE)
TOP_GROUPS = 10  # groups shown by stats
_KINDS = ("code", "severity", "component", "engine", "tool", "handled", "recovered",
          "recovery", "fingerprint")
HALF_LIFE = 24 * HOUR  # predict: a failure this old weighs half as much as one now
HISTORY = 7 * DAY  # predict: how far back it looks
MIN_CALLS = 5  # calls of a tool (or recoveries of a strategy) before advice about it
FLAKY = 0.2  # a tool failing at least this often gets advice
USELESS_RETRY = 0.1  # a strategy recovering less often than this gets advice
QUIET_DAYS = 1.0  # a regression after at least this many quiet days is advice

Predictor = Callable[[dict[str, Any]], Any]


# -- windows --------------------------------------------------------------------------


def parse_duration(text: str, *, key: str = "--window") -> float:
    """``"30m"``, ``"24h"``, ``"7d"``, ``"2w"``, ``"90s"``: seconds (> 0); anything else
    is ``configuration/invalid_value`` naming ``key``."""
    found = _DURATION.fullmatch(str(text))
    seconds = float(found[1]) * UNITS[found[2].lower()] if found else 0.0
    if not found or not math.isfinite(seconds) or seconds <= 0:
        raise ConfigurationError.InvalidValue(
            key=key, value=str(text)[:200],
            reason="a positive duration: a number and a unit, s m h d or w (30m, 24h, 7d)")
    return seconds


def parse_since(text: str, *, now: float | None = None, key: str = "--since") -> float:
    """The start of a window: a duration back from now (``24h``) or an ISO 8601 date or
    time (``2026-12-01``, ``2026-12-01T08:00``, UTC unless it says its offset)."""
    now = time.time() if now is None else now
    if _DURATION.fullmatch(str(text)):
        return now - parse_duration(text, key=key)
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):
            moment = datetime.combine(date.fromisoformat(text.strip()), datetime.min.time())
        else:
            moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigurationError.InvalidValue(
            key=key, value=str(text)[:200],
            reason="a duration back from now (30m, 24h, 7d) or an ISO 8601 date or time "
                   "(2026-12-01, 2026-12-01T08:00:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _hours(since: float, until: float) -> tuple[int, int]:
    return int(since // HOUR), int(until // HOUR)


# -- stats ----------------------------------------------------------------------------


def stats(store: Store, window: str | float = "24h", *, now: float | None = None,
          top: int = TOP_GROUPS) -> dict[str, Any]:
    """What happened over ``window`` (a duration, ``"24h"``, or seconds): see the module
    docstring. Strict JSON."""
    now = time.time() if now is None else now
    seconds = parse_duration(window) if isinstance(window, str) else float(window)
    first, last = _hours(now - seconds, now)
    since = first * HOUR
    calls = store.calls(since, now)
    hours = last - first + 1

    # the window's rollup summed over its hours in SQLite: a row per kind of record
    # (code, severity, component, engine, tool, handled, recovered, recovery, group)
    kinds = store.rollup_totals(since, now, _KINDS)
    total = handled = recovered = 0
    impact = 0.0
    severity: Counter[str] = Counter()
    component: Counter[str] = Counter()
    engine: Counter[str] = Counter()
    code: Counter[str] = Counter()
    by_group: Counter[str] = Counter()
    impact_by_component: Counter[str] = Counter()
    tool_codes: dict[str, Counter[str]] = defaultdict(Counter)
    recovered_by: dict[str, dict[str, list[int]]] = defaultdict(dict)  # strategy, tool
    for (each_code, each_severity, each_component, each_engine, tool, _, _, strategy,
         fingerprint, n, weight, n_handled, n_recovered) in kinds:
        total += n
        handled += n_handled
        recovered += n_recovered
        impact += weight
        severity[each_severity] += n
        component[each_component] += n
        engine[each_engine or "none"] += n
        code[each_code] += n
        by_group[fingerprint] += n
        impact_by_component[each_component] += weight
        if tool:
            tool_codes[tool][each_code] += n
            if strategy:
                acted = recovered_by[strategy].setdefault(tool, [0, 0])
                acted[0] += n
                acted[1] += n_recovered

    known = {g["fingerprint"]: g for g in store.groups_of(
        [fingerprint for fingerprint, _ in by_group.most_common(top)])}
    top_groups = []
    for fingerprint, n in by_group.most_common(top):
        group = known.get(fingerprint, {})
        top_groups.append({
            "fingerprint": fingerprint, "code": group.get("code"),
            "component": group.get("component"), "count": n,
            "total": group.get("count"), "first_seen": _iso(group.get("first_seen")),
            "last_seen": _iso(group.get("last_seen")), "status": group.get("status"),
            "regressed_at": _iso(group.get("regressed_at")),
            "message": group.get("message")})

    tools = _rates(calls, "tool", tool_codes)
    recovery = _rates(calls, "recovery")
    for strategy, entry in recovery.items():  # its "failure": the call failed anyway
        entry["recovered"] = entry["count"] - entry["failures"]
        entry["success_rate"] = round(1 - entry["failure_rate"], 4)
        entry["tools"] = {  # from the records: which tools it acted on, how well
            tool: {"count": n, "recovered": ok, "success_rate": round(ok / n, 4)}
            for tool, (n, ok) in sorted(recovered_by.get(strategy, {}).items(),
                                        key=lambda item: -item[1][0])}
    runs = _rates(calls, "run")
    tasks = _rates(calls, "task")
    out = {
        "window": window.strip() if isinstance(window, str) else _window_name(seconds),
        "since": iso(first * HOUR),
        "until": iso(now),
        "hours": hours,
        "total": total,
        "rate_per_hour": round(total / hours, 3),
        "handled": handled,
        "unhandled": total - handled,
        "recovered": recovered,
        "severity": dict(severity.most_common()),
        "by_component": dict(component.most_common()),
        "by_engine": dict(engine.most_common()),
        "by_code": dict(code.most_common()),
        "groups": len(by_group),
        "top_groups": top_groups,
        "recovery": recovery,
        "tools": tools,
        "runs": _summed(runs),
        "tasks": _summed(tasks),
        "impact": {
            "total": round(impact, 3),
            "mean": round(impact / total, 4) if total else 0.0,
            "by_component": {name: round(value, 3)
                             for name, value in impact_by_component.most_common(top)}},
        "dropped": store.dropped(),
    }
    regressed = [group for group in store.groups(since=first * HOUR, limit=1000)
                 if group["status"] == "regressed" and group["regressed_at"] is not None
                 and group["regressed_at"] >= first * HOUR]
    out["recommendations"] = recommendations(out, regressed, store)
    return out


def _rates(calls: Iterable[Mapping[str, Any]], what: str,
           codes: Mapping[str, Counter[str]] | None = None) -> dict[str, dict[str, Any]]:
    """Per name: count, failures, failure rate (and the tool's error codes)."""
    summed: dict[str, list[float]] = {}
    for row in calls:
        if row["what"] == what:
            total = summed.setdefault(row["name"], [0, 0, 0.0])
            total[0] += row["count"]
            total[1] += row["failures"]
            total[2] += row["seconds"]
    out = {}
    for name, (count, failures, seconds) in sorted(
            summed.items(), key=lambda item: (-item[1][1], item[0])):
        entry: dict[str, Any] = {
            "count": int(count), "failures": int(failures),
            "failure_rate": round(failures / count, 4) if count else 0.0,
            "mean_seconds": round(seconds / count, 6) if count else 0.0}
        if codes is not None:
            entry["codes"] = dict(codes.get(name, Counter()).most_common(5))
        out[name] = entry
    return out


def _summed(rates: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    count = sum(entry["count"] for entry in rates.values())
    failures = sum(entry["failures"] for entry in rates.values())
    return {"count": count, "failures": failures,
            "failure_rate": round(failures / count, 4) if count else 0.0}


def _iso(value: float | None) -> str | None:
    return None if value is None else iso(value)


def _window_name(seconds: float) -> str:
    for unit in ("d", "h", "m"):
        if seconds >= UNITS[unit] and seconds % UNITS[unit] == 0:
            return f"{int(seconds // UNITS[unit])}{unit}"
    return f"{seconds:g}s"


# -- recommendations ------------------------------------------------------------------


def recommendations(summary: Mapping[str, Any], groups: Iterable[Mapping[str, Any]] = (),
                    store: Store | None = None) -> list[dict[str, Any]]:
    """Advice drawn from a :func:`stats` answer (and the window's groups, their quiet
    periods read from ``store``), each item ``{"kind", "subject", "message",
    "evidence"}``: the numbers that triggered it."""
    advice: list[dict[str, Any]] = []
    for tool, entry in summary.get("tools", {}).items():
        if entry["count"] >= MIN_CALLS and entry["failure_rate"] >= FLAKY:
            codes = entry.get("codes") or {}
            mostly = max(codes, key=codes.__getitem__) if codes else None
            if mostly in ("network/timeout", "tool/timeout", "network/connection"):
                fix = "raise its timeout or add a fallback"
            elif mostly is not None and mostly.startswith(("network/", "external/")):
                fix = "add a retry with backoff or a fallback"
            elif mostly == "tool/not_found":
                fix = "no such tool: fix the name the scripts call, or give its tools file"
            elif (mostly is not None and mostly.startswith("validation/")) \
                    or mostly == "tool/invalid_parameters":
                fix = "the scripts call it with bad arguments: check its schema"
            else:
                fix = "add a fallback or a circuit breaker"
            why = f", mostly {mostly}" if mostly else ""
            advice.append({
                "kind": "flaky_tool", "subject": tool,
                "message": f"tool {tool} fails {entry['failure_rate']:.0%} of calls{why}: "
                           f"{fix}",
                "evidence": {"calls": entry["count"], "failures": entry["failures"],
                             "failure_rate": entry["failure_rate"], "codes": codes}})
    for strategy, entry in summary.get("recovery", {}).items():
        name = {"retry": "retries", "fallback": "fallbacks", "degraded": "degraded answers",
                "hook": "hooks' recoveries"}.get(strategy, f"{strategy} recoveries")
        verdict = "retrying does not help" if strategy == "retry" else "it does not help"
        subjects = [(f"{name} of {tool}", f"{strategy}:{tool}", each)
                    for tool, each in entry.get("tools", {}).items()]
        subjects = subjects or [(name, strategy, entry)]
        for label, subject, each in subjects:
            if each["count"] >= MIN_CALLS and each["success_rate"] < USELESS_RETRY:
                advice.append({
                    "kind": "useless_recovery", "subject": subject,
                    "message": f"{label} succeed {each['success_rate']:.0%} of the time: "
                               f"{verdict}",
                    "evidence": {"attempts": each["count"], "recovered": each["recovered"],
                                 "success_rate": each["success_rate"]}})
    for group in groups:
        if group.get("status") == "regressed" and group.get("regressed_at") is not None \
                and store is not None:
            quiet = _quiet_days(store, group)
            if quiet is not None and quiet >= QUIET_DAYS:
                advice.append({
                    "kind": "regression", "subject": group["fingerprint"],
                    "message": f"group {group['fingerprint']} ({group['code']} in "
                               f"{group['component']}) regressed after {quiet:.0f} quiet "
                               f"day{'s' if round(quiet) != 1 else ''}",
                    "evidence": {"fingerprint": group["fingerprint"],
                                 "code": group["code"], "count": group["count"],
                                 "first_seen": _iso(group["first_seen"]),
                                 "regressed_at": _iso(group["regressed_at"]),
                                 "quiet_days": round(quiet, 2)}})
    runs = summary.get("runs", {})
    if runs.get("count", 0) >= MIN_CALLS and runs.get("failure_rate", 0) >= 0.5:
        advice.append({
            "kind": "failing_runs", "subject": "runs",
            "message": f"{runs['failure_rate']:.0%} of runs fail: look at the top groups",
            "evidence": dict(runs)})
    if summary.get("dropped"):
        advice.append({
            "kind": "dropped", "subject": "monitor",
            "message": f"{summary['dropped']} records could not be recorded (the writer's "
                       f"queue was full): raise max_pending or record fewer handled errors",
            "evidence": {"dropped": summary["dropped"]}})
    return advice


def _quiet_days(store: Store, group: Mapping[str, Any]) -> float | None:
    """How long a regressed group had been quiet before it came back (from the hourly
    rollups, to the hour), in days."""
    before = store.seen_before(group["fingerprint"], group["regressed_at"])
    return None if before is None else max(0.0, group["regressed_at"] - before) / DAY


# -- trends ---------------------------------------------------------------------------


def trends(store: Store, window: str | float = "7d", bucket: str | float = "1d", *,
           now: float | None = None) -> dict[str, Any]:
    """Errors, failure rates and codes per bucket over ``window`` (buckets are whole
    hours: ``bucket`` at least ``1h``), the newest last, and whether the last bucket is
    above (``rising``) or below (``falling``) the median of the others."""
    now = time.time() if now is None else now
    seconds = parse_duration(window) if isinstance(window, str) else float(window)
    size = parse_duration(bucket, key="--bucket") if isinstance(bucket, str) else float(bucket)
    if size < HOUR or size % HOUR:
        raise ConfigurationError.InvalidValue(
            key="--bucket", value=_window_name(size),
            reason="a whole number of hours (1h, 6h, 1d): records are counted by the hour")
    per = int(size // HOUR)
    count = max(1, math.ceil(seconds / size))
    if count > 1000:
        raise ConfigurationError.InvalidValue(
            key="--bucket", value=_window_name(size),
            reason=f"{count} buckets in {_window_name(seconds)}: at most 1000")
    last = int(now // HOUR)
    first = last - count * per + 1
    calls = store.calls(first * HOUR, now)
    buckets = [{"start": iso((first + k * per) * HOUR), "errors": 0, "unhandled": 0,
                "severity": Counter(), "codes": Counter(), "calls": 0, "failures": 0}
               for k in range(count)]
    for hour, each_severity, each_code, n, _, n_handled, _ in store.rollup_totals(
            first * HOUR, now, ("hour", "severity", "code")):
        slot = buckets[(hour - first) // per]
        slot["errors"] += n
        slot["unhandled"] += n - n_handled
        slot["severity"][each_severity] += n
        slot["codes"][each_code] += n
    for row in calls:
        if row["what"] == "tool":
            slot = buckets[(row["hour"] - first) // per]
            slot["calls"] += row["count"]
            slot["failures"] += row["failures"]
    codes: Counter[str] = Counter()
    for slot in buckets:
        codes.update(slot["codes"])
        hours = per if slot is not buckets[-1] else (now / HOUR - (last - per + 1))
        slot["rate_per_hour"] = round(slot["errors"] / max(hours, 1.0), 3)
        slot["failure_rate"] = round(slot["failures"] / slot["calls"], 4) \
            if slot["calls"] else None
        slot["severity"] = dict(slot["severity"].most_common())
        slot["codes"] = dict(slot["codes"].most_common(5))
    earlier = [slot["errors"] for slot in buckets[:-1]]
    baseline = statistics.median(earlier) if earlier else 0
    baseline = int(baseline) if float(baseline).is_integer() else baseline
    newest = buckets[-1]["errors"]
    direction = "steady"
    if newest > baseline * 1.5 and newest - baseline >= 2:
        direction = "rising"
    elif newest < baseline / 1.5 and baseline - newest >= 2:
        direction = "falling"
    return {"window": window.strip() if isinstance(window, str) else _window_name(seconds),
            "bucket": bucket.strip() if isinstance(bucket, str) else _window_name(size),
            "since": iso(first * HOUR), "until": iso(now),
            "total": sum(slot["errors"] for slot in buckets),
            "buckets": buckets, "codes": dict(codes.most_common(10)),
            "direction": direction,
            "evidence": {"last_bucket": newest, "median_before": baseline}}


def chart(trend: Mapping[str, Any], *, width: int = 40) -> list[str]:
    """A trend as lines of a bar chart readable without colour: one line per bucket,
    ``#`` bars scaled to the largest, the count and the tools' failure rate."""
    buckets = trend["buckets"]
    top = max((slot["errors"] for slot in buckets), default=0)
    lines = []
    for slot in buckets:
        n = slot["errors"]
        bar = "#" * (round(n / top * width) if top else 0)
        if n and not bar:
            bar = "."  # something, however small
        rate = slot["failure_rate"]
        calls = f"  tool calls failed {rate:.0%}" if rate is not None else ""
        stamp = slot["start"][:16].replace("T", " ")
        lines.append(f"{stamp}  {bar:<{width}}  {n:>6} ({slot['rate_per_hour']}/h){calls}")
    return lines


# -- prediction -----------------------------------------------------------------------


def predict(store: Store, *, tool: str | None = None, script: str | None = None,
            now: float | None = None, half_life: float = HALF_LIFE,
            history: float = HISTORY, breakers: Any = None,
            predictor: Predictor | None = None) -> dict[str, Any]:
    """How likely the next call of ``tool`` (or run of ``script``) is to fail, in
    ``[0, 1]``, with the evidence (see the module docstring). ``breakers``: a host's
    :class:`host.Breakers`, when one is at hand (an open breaker refuses the call).
    ``predictor(answer)`` (a pluggable model) gets the rules' answer, with its hourly
    ``history``, and returns a likelihood (or a dict with ``likelihood``)."""
    if (tool is None) == (script is None):
        raise ConfigurationError.InvalidValue(
            key="predict", value=None, reason="name one tool or one script")
    now = time.time() if now is None else now
    what, name = ("tool", tool) if tool is not None else ("run", script)
    rows = [row for row in store.calls(now - history, now)
            if row["what"] == what and row["name"] == name]
    weighted_calls = weighted_failures = 0.0
    calls = failures = 0
    hours = []
    for row in sorted(rows, key=lambda row: row["hour"]):
        age = max(0.0, now - (row["hour"] + 0.5) * HOUR)
        weight = 0.5 ** (age / half_life)
        weighted_calls += weight * row["count"]
        weighted_failures += weight * row["failures"]
        calls += row["count"]
        failures += row["failures"]
        hours.append({"hour": iso(row["hour"] * HOUR), "count": row["count"],
                      "failures": row["failures"]})
    # a few calls say little: a weak prior of one call in ten failing, worth one call
    rate = (weighted_failures + 0.1) / (weighted_calls + 1.0)
    evidence: list[dict[str, Any]] = [{
        "rule": "recent_failure_rate",
        "detail": f"{failures} of {calls} {'calls' if tool else 'runs'} failed in the last "
                  f"{_window_name(history)}; with a half-life of {_window_name(half_life)} "
                  f"the weighted rate is {rate:.0%}",
        "calls": calls, "failures": failures, "weighted_rate": round(rate, 4)}]
    likelihood = rate
    state = _breaker_state(breakers, tool) if tool is not None else None
    if state == "open":
        likelihood = max(likelihood, 0.95)
        evidence.append({"rule": "open_breaker", "detail": f"the circuit breaker of "
                         f"{tool} is open: the next call is refused until it half-opens"})
    elif state == "half_open":
        likelihood = max(likelihood, 0.5)
        evidence.append({"rule": "half_open_breaker",
                         "detail": f"the circuit breaker of {tool} is half-open: the next "
                                   f"call is its trial"})
    key = ("tool", tool) if tool is not None else ("component", f"script:{_base(script)}")
    for group in store.groups(since=now - history, limit=1000):
        if group.get(key[0]) != key[1] or group["last_seen"] < now - DAY:
            continue
        if group["status"] == "regressed":
            likelihood = 1 - (1 - likelihood) * 0.8
            evidence.append({"rule": "regression",
                             "detail": f"group {group['fingerprint']} ({group['code']}) "
                                       f"regressed at {_iso(group['regressed_at'])}",
                             "fingerprint": group["fingerprint"]})
        elif group["status"] == "new":
            likelihood = 1 - (1 - likelihood) * 0.9
            evidence.append({"rule": "new_group",
                             "detail": f"group {group['fingerprint']} ({group['code']}) is "
                                       f"new, first seen {_iso(group['first_seen'])}",
                             "fingerprint": group["fingerprint"]})
    answer: dict[str, Any] = {
        "tool": tool, "script": script, "likelihood": round(likelihood, 4),
        "level": _level(likelihood), "model": "rules", "evidence": evidence,
        "history": hours}
    if predictor is not None:
        given = predictor(dict(answer))
        value = given.get("likelihood") if isinstance(given, Mapping) else given
        if not isinstance(value, (int, float)) or isinstance(value, bool) \
                or not 0 <= value <= 1:
            raise ConfigurationError.InvalidValue(
                key="predictor", value=repr(given)[:200],
                reason="a predictor returns a likelihood in [0, 1] (or a dict with one)")
        answer["rules_likelihood"] = answer["likelihood"]
        answer["likelihood"] = round(float(value), 4)
        answer["level"] = _level(float(value))
        answer["model"] = getattr(predictor, "__name__", type(predictor).__name__)
    return answer


def _level(likelihood: float) -> str:
    return "high" if likelihood >= 0.5 else "medium" if likelihood >= 0.2 else "low"


def _base(script: str | None) -> str:
    return (script or "").replace("\\", "/").rsplit("/", 1)[-1]


def _breaker_state(breakers: Any, tool: str) -> str | None:
    """The state of ``tool``'s breaker in a host's breakers (None: none, or unknown)."""
    if breakers is None:
        return None
    try:
        state = breakers.state(tool) if hasattr(breakers, "state") else None
    except KeyError:  # the tool has no breaker
        return None
    return state if isinstance(state, str) else None


__all__ = ["chart", "parse_duration", "parse_since", "predict", "recommendations",
           "stats", "trends"]
