"""``polyspell errors list|show|groups|stats|trends|predict|prune``: the recorded errors
on a terminal, or as one JSON document (``--json``: a list for ``list`` and ``groups``,
an object otherwise).

The file is ``--errors-db PATH``, else ``$POLYSPELL_ERRORS_DB``, else the default
(:func:`host.monitor.default_path`). A file that does not exist reads as empty (it is
not made); one that is not a polyspell error store, is from a newer polyspell, or cannot
be opened is its ``storage/...`` error. Every string a script could have written (a
message, a file name) goes through :func:`host.lines.shown_text`: it cannot forge a line
or send an escape sequence to the terminal.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from bridge import ConfigurationError, SpellError
from host.lines import shown_text
from host.monitor import MAX_AGE, MAX_ROWS, default_path
from host.monitor.analysis import chart, parse_duration, parse_since, predict, stats, trends
from host.monitor.records import iso
from host.monitor.store import Store

ACTIONS = ("list", "show", "groups", "stats", "trends", "predict", "prune")
MESSAGE = 60  # characters of a message in a table row


def run_errors(args: argparse.Namespace) -> int:
    """``polyspell errors ACTION``: the exit code."""
    from host.cli import EXIT_OK, _internal_error, _report_failure

    store = None
    try:
        store = open_store(args.errors_db, create=args.action == "prune")
        out = ACTION_HANDLERS[args.action](store, args)
    except SpellError as err:
        return _report_failure(err, args)
    except Exception as exc:  # a bug of ours: still one unified error, never a traceback
        return _report_failure(_internal_error(exc), args)
    finally:
        if store is not None:
            store.close()
    return EXIT_OK if out is None else out


def open_store(path: str | None, *, create: bool = False) -> Store:
    """The store at ``path`` (default: :func:`default_path`); a missing file reads as
    an empty store, without making it, unless ``create``."""
    where = str(default_path() if path is None else path)
    if not create and not os.path.exists(where) and _may_be_made(where):
        store = Store(":memory:")
        store.path = where  # what a storage error names
        return store
    return Store(where)


def _may_be_made(path: str) -> bool:
    """Whether ``path`` could be a file one day: its nearest existing folder is one (a
    path under a file is the store's error to report)."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    return os.path.isdir(parent)


def _print_json(value: Any) -> None:
    from host.cli import print_json

    print_json(value, indent=2)


def _since(args: argparse.Namespace) -> float | None:
    return None if args.since is None else parse_since(args.since)


def _limit(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise ConfigurationError.InvalidValue(key="--limit", value=args.limit,
                                              reason="a positive number")
    return args.limit


def known_code(code: str) -> str:
    """``code`` if it is a ``category/kind`` of the catalog or a category; else
    ``configuration/invalid_value`` naming ``--code`` with the closest codes."""
    from bridge.errors import categories, variants

    codes = [f"{v.category}/{v.kind}" for v in variants()]
    if code in codes or code in categories():
        return code
    close = difflib.get_close_matches(code, [*codes, *categories()], n=5, cutoff=0.5)
    hint = f"close codes: {', '.join(close)}" if close else \
        "see polyspell catalog for every code"
    raise ConfigurationError.InvalidValue(
        key="--code", value=code[:200], reason=f"no such code or category ({hint})")


def _t(value: Any, limit: int = 200) -> str:
    """A value a script may have written, safe on a terminal line."""
    return "-" if value is None else shown_text(str(value), limit=limit)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
            for row in rows]


def _time(timestamp: float | None) -> str:
    return "-" if timestamp is None else iso(timestamp)[:19].replace("T", " ")


def _outcome(record: Mapping[str, Any]) -> str:
    if record["recovered"]:
        return f"recovered ({_t(record['recovery'], 40)})"
    if record["recovery"]:
        return f"not recovered ({_t(record['recovery'], 40)})"
    return "handled" if record["handled"] else "ended run"


# -- the actions ----------------------------------------------------------------------


def _list(store: Store, args: argparse.Namespace) -> None:
    code = None if args.code is None else known_code(args.code)
    records = store.records(since=_since(args), code=code, component=args.component,
                            group=args.group, limit=_limit(args))
    if args.json:
        _print_json(records)
        return
    if not records:
        print(f"no errors recorded in {_t(store.path)}"
              + (" matching the filters" if any((args.since, code, args.component,
                                                args.group)) else ""), file=sys.stderr)
        return
    rows = [["ID", "TIME (UTC)", "SEVERITY", "CODE", "COMPONENT", "WHERE", "OUTCOME",
             "MESSAGE"]]
    for record in records:
        where = f"{_t(record['file'], 60)}:{record['line']}" if record["file"] else "-"
        rows.append([record["id"], _time(record["timestamp"]), record["severity"],
                     _t(record["code"]), _t(record["component"], 60), where,
                     _outcome(record), _t(record["message"], MESSAGE)])
    print("\n".join(_table(rows)))


def _show(store: Store, args: argparse.Namespace) -> None:
    from host.cli import _color

    record = store.record(args.id)
    if args.json:
        _print_json(record)
        return
    err = SpellError.from_dict(_shown(record["error"]))
    (group,) = store.groups_of([record["fingerprint"]]) or [None]
    where = "-"
    if record["file"]:
        where = f"{_t(record['file'], 120)}:{record['line']}"
        if record["function"]:
            where += f" in {_t(record['function'], 80)}"
    lines = [
        f"error {record['id']} at {iso(record['timestamp'])}",
        f"code: {_t(record['code'])} ({record['severity']}), impact {record['impact']}",
        f"component: {_t(record['component'], 120)}  engine: {_t(record['engine'])}  "
        f"tool: {_t(record['tool'], 120)}",
        f"where: {where}",
        f"run: {_t(record['run_id'])}  task: {_t(record['task_id'])}  "
        f"plan: {_t(record['plan_id'])}",
        f"outcome: {_outcome(record)}",
    ]
    if group is not None:
        lines.append(f"group: {group['fingerprint']} ({group['status']}, {group['count']} "
                     f"times, first seen {_time(group['first_seen'])}, last seen "
                     f"{_time(group['last_seen'])})")
    print("\n".join(lines) + "\n")
    print(err.to_text(verbose=args.verbose, color=_color(sys.stdout)))


def _shown(value: Any) -> Any:
    """An error's JSON with every string safe on a terminal (a script's message with a
    newline and an escape sequence cannot forge a line of the traceback, nor reach the
    terminal)."""
    if isinstance(value, str):
        return shown_text(value, limit=1_000_000, keep="\t")
    if isinstance(value, list):
        return [_shown(item) for item in value]
    if isinstance(value, dict):
        return {key: _shown(item) for key, item in value.items()}
    return value


def _groups(store: Store, args: argparse.Namespace) -> None:
    groups = store.groups(since=_since(args), limit=_limit(args))
    for group in groups:
        for key in ("first_seen", "last_seen", "regressed_at"):
            group[key] = None if group[key] is None else iso(group[key])
    if args.json:
        _print_json(groups)
        return
    if not groups:
        print(f"no groups in {_t(store.path)}", file=sys.stderr)
        return
    rows = [["GROUP", "STATUS", "COUNT", "FIRST SEEN", "LAST SEEN", "CODE", "COMPONENT",
             "MESSAGE"]]
    for group in groups:
        rows.append([group["fingerprint"], group["status"], str(group["count"]),
                     group["first_seen"][:19].replace("T", " "),
                     group["last_seen"][:19].replace("T", " "), _t(group["code"]),
                     _t(group["component"], 60), _t(group["message"], MESSAGE)])
    print("\n".join(_table(rows)))


def _stats(store: Store, args: argparse.Namespace) -> None:
    summary = stats(store, args.window)
    if args.json:
        _print_json(summary)
        return
    print("\n".join(format_stats(summary)))


def _counts(counts: Mapping[str, int], limit: int = 6) -> str:
    items = [f"{_t(name, 60)} {n}" for name, n in list(counts.items())[:limit]]
    more = len(counts) - limit
    return ", ".join(items) + (f" (+{more} more)" if more > 0 else "") if items else "-"


def format_stats(summary: Mapping[str, Any]) -> list[str]:
    """A :func:`host.monitor.analysis.stats` answer as lines for a terminal."""
    impact = summary["impact"]
    lines = [
        f"errors in the last {summary['window']} (since {summary['since'][:16]} UTC, "
        f"{summary['hours']} hours): {summary['total']}, {summary['rate_per_hour']} per hour",
        f"  ended a run {summary['unhandled']}, handled {summary['handled']}, recovered "
        f"{summary['recovered']}; user impact {impact['total']} (mean {impact['mean']}); "
        f"not recorded (dropped) {summary['dropped']}",
        f"  severity:   {_counts(summary['severity'])}",
        f"  components: {_counts(summary['by_component'])}",
        f"  engines:    {_counts(summary['by_engine'])}",
        f"  codes:      {_counts(summary['by_code'])}",
    ]
    for name in ("runs", "tasks"):
        entry = summary[name]
        if entry["count"]:
            lines.append(f"  {name}: {entry['count']}, {entry['failures']} failed "
                         f"({entry['failure_rate']:.0%})")
    if summary["tools"]:
        lines += ["", "tools (calls, failed, mean time, codes):"]
        rows = [[f"  {_t(name, 60)}", str(e["count"]), f"{e['failure_rate']:.0%}",
                 f"{e['mean_seconds'] * 1000:.1f} ms", _counts(e["codes"], 3)]
                for name, e in summary["tools"].items()]
        lines += _table(rows)
    if summary["recovery"]:
        lines += ["", "recovery (attempts, recovered):"]
        rows = [[f"  {_t(name, 40)}", str(e["count"]), f"{e['success_rate']:.0%}",
                 ", ".join(f"{_t(tool, 40)} {t['recovered']}/{t['count']}"
                           for tool, t in list(e["tools"].items())[:4])]
                for name, e in summary["recovery"].items()]
        lines += _table(rows)
    if summary["top_groups"]:
        lines += ["", f"top groups ({summary['groups']} in the window):"]
        rows = [[f"  {g['fingerprint']}", g["status"] or "-", str(g["count"]),
                 _t(g["code"]), _t(g["component"], 40),
                 f"last {(g['last_seen'] or '-')[:16].replace('T', ' ')}",
                 _t(g["message"], 50)] for g in summary["top_groups"]]
        lines += _table(rows)
    lines += ["", "recommendations:" if summary["recommendations"]
              else "recommendations: none"]
    for advice in summary["recommendations"]:
        lines.append(f"  - {_t(advice['message'], 300)}")
        lines.append(f"    evidence: {_evidence(advice['evidence'])}")
    return lines


def _evidence(evidence: Mapping[str, Any]) -> str:
    parts = []
    for key, value in evidence.items():
        if isinstance(value, Mapping):
            value = "{" + _counts(value) + "}"
        parts.append(f"{key} {_t(value, 80)}")
    return ", ".join(parts)


def _trends(store: Store, args: argparse.Namespace) -> None:
    trend = trends(store, args.window, args.bucket)
    if args.json:
        _print_json(trend)
        return
    print("\n".join(format_trends(trend)))


def format_trends(trend: Mapping[str, Any]) -> list[str]:
    """A :func:`host.monitor.analysis.trends` answer: a header, the chart, the verdict."""
    lines = [f"errors per {trend['bucket']} over the last {trend['window']} (UTC): "
             f"{trend['total']}"]
    lines += [f"  {line}" for line in chart(trend)]
    evidence = trend["evidence"]
    lines.append(f"trend: {trend['direction']} (last bucket {evidence['last_bucket']}, "
                 f"median before {evidence['median_before']})")
    if trend["codes"]:
        lines.append(f"codes: {_counts(trend['codes'])}")
    return lines


def _predict(store: Store, args: argparse.Namespace) -> None:
    if (args.tool is None) == (args.script is None):
        raise ConfigurationError.Usage(reason="name a TOOL or --script NAME (one of them)",
                                       command="errors predict")
    answer = predict(store, tool=args.tool, script=args.script)
    if args.json:
        _print_json(answer)
        return
    subject = f"tool {_t(args.tool)}" if args.tool else f"script {_t(args.script)}"
    what = "call" if args.tool else "run"
    print(f"{subject}: the next {what} fails with likelihood {answer['likelihood']:.0%} "
          f"({answer['level']}; {answer['model']})")
    for item in answer["evidence"]:
        print(f"  - {item['rule']}: {_t(item['detail'], 300)}")


def _prune(store: Store, args: argparse.Namespace) -> None:
    max_age = MAX_AGE if args.max_age is None else parse_duration(args.max_age,
                                                                  key="--max-age")
    if args.max_rows is not None and args.max_rows < 0:
        raise ConfigurationError.InvalidValue(key="--max-rows", value=args.max_rows,
                                              reason="zero or more records")
    max_rows = MAX_ROWS if args.max_rows is None else args.max_rows
    started = time.time()
    deleted = store.prune(max_age=max_age, max_rows=max_rows)
    answer = {"path": store.path, "deleted": deleted, "max_age": max_age,
              "max_rows": max_rows}
    if args.json:
        _print_json(answer)
        return
    print(f"pruned {deleted} records from {_t(store.path, 300)} (older than "
          f"{max_age / 86400:g} days or past {max_rows} records) in "
          f"{time.time() - started:.2f}s")


ACTION_HANDLERS = {"list": _list, "show": _show, "groups": _groups, "stats": _stats,
                   "trends": _trends, "predict": _predict, "prune": _prune}

