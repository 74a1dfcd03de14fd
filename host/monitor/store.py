"""The error store: one SQLite file (WAL), safe with several processes writing at once.

Tables (schema version :data:`SCHEMA_VERSION`, upgraded in place by :data:`MIGRATIONS`):

- ``errors``: one row per record (see :mod:`host.monitor.records`), the error's JSON
  (compressed with zlib when it is long); indexed by time, code, component and
  fingerprint;
- ``groups``: one row per fingerprint: first and last seen, count, status (``new``,
  ``ongoing``, ``regressed`` when it comes back after a quiet period);
- ``rollup``: counts per hour and per (code, severity, component, engine, tool,
  handled, recovered, recovery, fingerprint), written with the records, so that
  statistics and trends over a million records read a few thousand rows;
- ``calls``: per hour, the tool calls, runs, task tries and recoveries (by strategy):
  how many, how many failed, their seconds, so that a rate of failure has its
  denominator;
- ``frames``: the frames of errors, once per group and place (schema 2): a record's
  JSON names its frames by key when they are the same as an earlier record's of its
  group (an error that keeps coming back comes back from the same place), which makes
  a record a few times cheaper to write and smaller; :meth:`Store.record` gives it back
  whole, exactly;
- ``durations``: per hour and tool, how many calls took at most each bound of
  ``host.hooks.DURATION_BUCKETS`` (``le``, upper bounds as Prometheus writes them, the
  last one infinite; schema 3), for the store's ``polyspell_tool_duration_seconds``;
- ``meta``: what the file is (``app``), and what could not be recorded (``dropped``).

Every failure is a unified ``storage/...`` error naming the file.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bridge import StorageError
from bridge.jsontext import json_bytes, unicode_text
from host.hooks.points import DURATION_BUCKETS
from host.monitor.records import RECORD_KEYS

APP = "polyspell-errors"
SCHEMA_VERSION = 3
COMPRESS_OVER = 1024  # bytes of a record's JSON past which it is compressed (zlib's setup
# costs more than it saves on a small one; a JSON text starts with "{", zlib's with 0x78)
BUCKET_BOUNDS = (*DURATION_BUCKETS, math.inf)  # the ``le`` of each duration bucket
MIN_SHARED_FRAMES = 3  # an error with fewer frames keeps them in its own JSON
MAX_PLACES = 5_000  # places kept in memory to compare with (per store; ~1 KB each)
BUSY_TIMEOUT = 10.0  # seconds a writer waits for another process's transaction
QUIET_BEFORE_REGRESSION = 24 * 3600.0  # a group silent this long that comes back regressed

_COLUMNS = ("id", "ts", "code", "category", "kind", "severity", "message", "component",
            "engine", "tool", "file", "line", "function", "run_id", "task_id", "plan_id",
            "fingerprint", "handled", "recovered", "recovery", "impact", "error")
_SEVERITY = {"trace": 0, "info": 1, "warning": 2, "error": 3, "critical": 4, "fatal": 5}
_GROUP_KEYS = ("fingerprint", "code", "component", "engine", "tool", "file", "function",
               "message", "first_seen", "last_seen", "count", "status", "regressed_at")
_ROLLUP_KEYS = ("hour", "code", "severity", "component", "engine", "tool", "handled",
                "recovered", "recovery", "fingerprint", "count", "impact")
_SEVERITY_NAMES = {number: name for name, number in _SEVERITY.items()}

MIGRATIONS: list[str] = [
    # version 1
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE errors (
        id TEXT PRIMARY KEY, ts REAL NOT NULL, code TEXT NOT NULL, category TEXT NOT NULL,
        kind TEXT NOT NULL, severity INTEGER NOT NULL, message TEXT NOT NULL,
        component TEXT NOT NULL, engine TEXT, tool TEXT, file TEXT, line INTEGER,
        function TEXT, run_id TEXT, task_id TEXT, plan_id TEXT,
        fingerprint TEXT NOT NULL, handled INTEGER NOT NULL, recovered INTEGER NOT NULL,
        recovery TEXT, impact REAL NOT NULL, error BLOB NOT NULL);
    CREATE INDEX errors_by_time ON errors (ts);
    CREATE INDEX errors_by_code ON errors (code, ts);
    CREATE INDEX errors_by_component ON errors (component, ts);
    CREATE INDEX errors_by_fingerprint ON errors (fingerprint, ts);
    CREATE TABLE groups (
        fingerprint TEXT PRIMARY KEY, code TEXT NOT NULL, component TEXT NOT NULL,
        engine TEXT, tool TEXT, file TEXT, function TEXT, message TEXT NOT NULL,
        first_seen REAL NOT NULL, last_seen REAL NOT NULL, count INTEGER NOT NULL,
        status TEXT NOT NULL, regressed_at REAL);
    CREATE INDEX groups_by_last_seen ON groups (last_seen);
    CREATE TABLE rollup (
        hour INTEGER NOT NULL, code TEXT NOT NULL, severity INTEGER NOT NULL,
        component TEXT NOT NULL, engine TEXT NOT NULL, tool TEXT NOT NULL,
        handled INTEGER NOT NULL, recovered INTEGER NOT NULL, recovery TEXT NOT NULL,
        fingerprint TEXT NOT NULL, count INTEGER NOT NULL, impact REAL NOT NULL,
        PRIMARY KEY (hour, code, severity, component, engine, tool, handled, recovered,
                     recovery, fingerprint)) WITHOUT ROWID;
    CREATE TABLE calls (
        hour INTEGER NOT NULL, what TEXT NOT NULL, name TEXT NOT NULL, engine TEXT NOT NULL,
        count INTEGER NOT NULL, failures INTEGER NOT NULL, seconds REAL NOT NULL,
        PRIMARY KEY (hour, what, name, engine)) WITHOUT ROWID;
    """,
    # version 2: the frames of a group's errors, once
    """
    CREATE TABLE frames (key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL,
                         data BLOB NOT NULL);
    CREATE INDEX frames_by_fingerprint ON frames (fingerprint);
    """,
    # version 3: how long tool calls took, in the buckets of the duration histogram
    """
    CREATE TABLE durations (
        hour INTEGER NOT NULL, tool TEXT NOT NULL, engine TEXT NOT NULL, le REAL NOT NULL,
        count INTEGER NOT NULL, PRIMARY KEY (hour, tool, engine, le)) WITHOUT ROWID;
    """,
]


def _failure(path: str, exc: BaseException, operation: str) -> StorageError:
    """The unified error of a SQLite failure on ``path``."""
    text = str(exc)
    if isinstance(exc, sqlite3.DatabaseError) and (
            "not a database" in text or "malformed" in text or "file is encrypted" in text):
        return StorageError.Corrupted(key=path, reason=f"not a readable SQLite file ({text})")
    if "readonly" in text or "read-only" in text or "unable to open" in text \
            or isinstance(exc, OSError):
        return StorageError.Unavailable(backend=f"sqlite {path}",
                                        reason=f"cannot {operation} it: {text}")
    if "locked" in text or "busy" in text:
        return StorageError.Conflict(key=path, reason=f"{operation}: {text}")
    return StorageError.OperationFailed(reason=f"{path}: {operation}: {text}",
                                        operation=operation)


class Store:
    """An error store in the SQLite file ``path`` (made, with its folders, if missing).

    One connection per store, used by one thread at a time (the store's lock); several
    stores, in this process or others, may use the same file.
    """

    def __init__(self, path: str | os.PathLike[str], *,
                 quiet_before_regression: float = QUIET_BEFORE_REGRESSION) -> None:
        self.path = str(path)
        self.quiet_before_regression = quiet_before_regression
        self._lock = threading.Lock()
        # fingerprint -> [(frames as JSON data, their key)]: what this store wrote
        self._places: dict[str, list[tuple[list[Any], str, bytes]]] = {}
        self._place_count = 0
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT,
                                       isolation_level=None, check_same_thread=False)
        except (sqlite3.Error, OSError) as exc:
            raise _failure(self.path, exc, "open") from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except StorageError:
            self._db.close()
            raise
        except sqlite3.Error as exc:
            self._db.close()
            raise _failure(self.path, exc, "open") from None

    # -- schema -----------------------------------------------------------------------

    def _migrate(self) -> None:
        db = self._db
        with self._transaction("open"):
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = {row[0] for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if version == 0 and tables:
                raise StorageError.Corrupted(
                    key=self.path, reason="a SQLite file of something else (tables "
                    f"{', '.join(sorted(tables))[:200]}), not a polyspell error store")
            if version > len(MIGRATIONS):
                raise StorageError.OperationFailed(
                    reason=f"{self.path}: its schema is version {version}, from a newer "
                           f"polyspell (this one reads up to {len(MIGRATIONS)}): upgrade "
                           "polyspell, or use another file", operation="open")
            if version and db.execute("SELECT value FROM meta WHERE key = 'app'"
                                      ).fetchone() != (APP,):
                raise StorageError.Corrupted(key=self.path,
                                             reason="not a polyspell error store")
            for number in range(version, len(MIGRATIONS)):
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        db.execute(statement)
                if number == 0:
                    db.execute("INSERT INTO meta VALUES ('app', ?), ('dropped', '0')", (APP,))
            if version < len(MIGRATIONS):
                db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")

    @contextmanager
    def _transaction(self, operation: str) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``: the file's write lock at once, so
        that two processes never deadlock upgrading a read lock)."""
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _failure(self.path, exc, operation) from None
            try:
                yield db
            except BaseException as exc:
                db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise _failure(self.path, exc, operation) from None
                raise
            else:
                try:
                    db.execute("COMMIT")
                except sqlite3.Error as exc:
                    db.execute("ROLLBACK")
                    raise _failure(self.path, exc, operation) from None

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise _failure(self.path, exc, "read") from None

    def close(self) -> None:
        """Close the file (what is written stays)."""
        with self._lock:
            self._db.close()

    # -- writing ----------------------------------------------------------------------

    def write(self, records: Iterable[dict[str, Any]] = (),
              counts: Iterable[tuple[Any, ...]] = ()) -> None:
        """Write ``records`` (see :mod:`host.monitor.records`) and ``counts`` (``(when,
        what, name, engine, count, failures, seconds)``: tool calls, a run, a task try,
        a recovery; tool calls may add their counts by duration, as
        ``ToolCallStats.buckets``) in one transaction, with their groups and hourly
        rollups."""
        shared: dict[str, tuple[str, bytes]] = {}  # frames new to the file: key -> row
        rows = [self._row(record, shared) for record in records]
        counted: dict[tuple[int, str, str, str], list[float]] = {}
        timed: dict[tuple[int, str, str, float], int] = {}
        for when, what, name, engine, count, failures, seconds, *buckets in counts:
            # a name is text SQLite writes as UTF-8: a script's file name that is not
            # UTF-8 (surrogate escapes) as U+FFFD, as its records have it
            key = (int(when // 3600), what, unicode_text(name) if isinstance(name, str)
                   else name, engine or "")
            total = counted.setdefault(key, [0, 0, 0.0])
            total[0] += count
            total[1] += failures
            total[2] += seconds
            if buckets and buckets[0]:  # a tool's calls by duration
                for le, n in zip(BUCKET_BOUNDS, buckets[0], strict=False):
                    if n:
                        bucket = (key[0], name, key[3], le)
                        timed[bucket] = timed.get(bucket, 0) + n
        if not rows and not counted:
            return
        with self._transaction("write") as db:
            db.executemany("INSERT OR IGNORE INTO frames VALUES (?, ?, ?)",
                           [(key, *row) for key, row in shared.items()])
            db.executemany(f"INSERT OR IGNORE INTO errors VALUES "
                           f"({', '.join('?' * len(_COLUMNS))})", rows)
            rolled: dict[tuple[Any, ...], list[float]] = {}
            batch: dict[str, list[tuple[Any, ...]]] = {}  # the rows of each group
            for row in rows:
                batch.setdefault(row[16], []).append(row)
                key = (int(row[1] // 3600), row[2], row[5], row[7], row[8] or "",
                       row[9] or "", row[17], row[18], row[19] or "", row[16])
                total = rolled.setdefault(key, [0, 0.0])
                total[0] += 1
                total[1] += row[20]
            for group_rows in batch.values():
                self._group(db, sorted(group_rows, key=lambda row: row[1]))
            db.executemany(
                "INSERT INTO rollup VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO UPDATE SET count = count + excluded.count, "
                "impact = impact + excluded.impact",
                [(*key, n, impact) for key, (n, impact) in rolled.items()])
            db.executemany(
                "INSERT INTO calls VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO UPDATE SET count = count + excluded.count, "
                "failures = failures + excluded.failures, seconds = seconds + excluded.seconds",
                [(*key, *totals) for key, totals in counted.items()])
            db.executemany(
                "INSERT INTO durations VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT DO UPDATE SET count = count + excluded.count",
                [(*key, n) for key, n in timed.items()])

    def _group(self, db: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
        """Count ``rows`` (one group's, oldest first) in their group: a group seen again
        after a quiet period is ``regressed``."""
        fingerprint = rows[0][16]
        found = db.execute("SELECT last_seen FROM groups WHERE fingerprint = ?",
                           (fingerprint,)).fetchone()
        if found is None:
            first = rows[0]
            db.execute("INSERT INTO groups VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, 'new', "
                       "NULL)", (fingerprint, first[2], first[7], first[8], first[9],
                                 first[10], first[12], first[6], first[1], first[1]))
            last_seen, rows = first[1], rows[1:]
        else:
            last_seen = found[0]
        regressed_at = None
        for row in rows:  # the newest quiet period that ended within this batch
            if row[1] - last_seen >= self.quiet_before_regression:
                regressed_at = row[1]
            last_seen = max(last_seen, row[1])
        if not rows:
            return
        newest = rows[-1]
        db.execute("UPDATE groups SET last_seen = max(last_seen, ?), "
                   "first_seen = min(first_seen, ?), count = count + ?, message = ?, "
                   "status = CASE WHEN ? IS NOT NULL THEN 'regressed' "
                   "WHEN status = 'new' THEN 'ongoing' ELSE status END, "
                   "regressed_at = coalesce(?, regressed_at) WHERE fingerprint = ?",
                   (newest[1], rows[0][1], len(rows), newest[6], regressed_at, regressed_at,
                    fingerprint))

    def add_dropped(self, count: int) -> None:
        """Count ``count`` records that could not be recorded (a full queue)."""
        if count:
            with self._transaction("write") as db:
                db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? "
                           "WHERE key = 'dropped'", (count,))

    def prune(self, *, max_age: float | None = None, max_rows: int | None = None,
              now: float | None = None) -> int:
        """Delete records older than ``max_age`` seconds and the oldest past ``max_rows``
        (and the rollups and groups last seen before the age): the records deleted."""
        now = time.time() if now is None else now
        deleted = 0
        with self._transaction("prune") as db:
            if max_age is not None:
                cutoff = now - max_age
                deleted += db.execute("DELETE FROM errors WHERE ts < ?", (cutoff,)).rowcount
                db.execute("DELETE FROM rollup WHERE hour < ?", (int(cutoff // 3600),))
                db.execute("DELETE FROM calls WHERE hour < ?", (int(cutoff // 3600),))
                db.execute("DELETE FROM durations WHERE hour < ?", (int(cutoff // 3600),))
                db.execute("DELETE FROM groups WHERE last_seen < ?", (cutoff,))
            if max_rows is not None:
                total = db.execute("SELECT count(*) FROM errors").fetchone()[0]
                if total > max_rows:
                    deleted += db.execute(
                        "DELETE FROM errors WHERE id IN (SELECT id FROM errors ORDER BY ts "
                        "LIMIT ?)", (total - max_rows,)).rowcount
            if deleted:  # the frames of groups with no record left
                db.execute("DELETE FROM frames WHERE NOT EXISTS (SELECT 1 FROM errors "
                           "WHERE errors.fingerprint = frames.fingerprint)")
        if deleted:
            with self._lock:
                self._places.clear()  # what was deleted is written again when it comes
                self._place_count = 0
        return deleted

    # -- records as rows ----------------------------------------------------------------

    def _row(self, record: dict[str, Any], shared: dict[str, tuple[str, bytes]]
             ) -> tuple[Any, ...]:
        """The row of ``record``: its error's frames (and its causes') named by key when
        they are a place of its group already written (``shared`` gets the new ones)."""
        fingerprint = record["fingerprint"]
        data = self._shared_frames(record["error"], fingerprint, shared)
        blob = json_bytes(data)
        if len(blob) > COMPRESS_OVER:
            blob = zlib.compress(blob, 1)
        return (record["id"], float(record["timestamp"]), record["code"],
                record["category"], record["kind"], _SEVERITY.get(record["severity"], 3),
                record["message"], record["component"], record["engine"], record["tool"],
                record["file"], record["line"], record["function"], record["run_id"],
                record["task_id"], record["plan_id"], fingerprint,
                int(bool(record["handled"])), int(bool(record["recovered"])),
                record["recovery"], float(record["impact"]), blob)

    def _shared_frames(self, data: Any, fingerprint: str,
                       shared: dict[str, tuple[str, bytes]], depth: int = 0) -> Any:
        """``data`` (an error's JSON) with its frames, and its causes', as keys."""
        if not isinstance(data, dict) or depth > 50:
            return data
        frames = data.get("frames")
        cause = data.get("cause")
        if not (isinstance(frames, list) and len(frames) >= MIN_SHARED_FRAMES) \
                and not isinstance(cause, dict):
            return data
        out = dict(data)
        if isinstance(frames, list) and len(frames) >= MIN_SHARED_FRAMES:
            out["frames"] = self._place(frames, fingerprint, shared)
        if isinstance(cause, dict):
            out["cause"] = self._shared_frames(cause, fingerprint, shared, depth + 1)
        return out

    def _place(self, frames: list[Any], fingerprint: str,
               shared: dict[str, tuple[str, bytes]]) -> str:
        """The key of ``frames`` in the ``frames`` table (written with the batch):
        compared as data first, so that a place seen before costs no encoding."""
        places = self._places.setdefault(fingerprint, [])
        for known, key, blob in places:
            if known == frames:
                # written again with each batch that uses it (INSERT OR IGNORE): another
                # process may have pruned the group meanwhile
                shared[key] = (fingerprint, blob)
                return key
        text = json_bytes(frames)
        import hashlib  # here: a run that records nothing does not load it

        key = "f" + hashlib.blake2b(text, digest_size=12).hexdigest()
        blob = zlib.compress(text, 6)
        shared[key] = (fingerprint, blob)
        if self._place_count < MAX_PLACES and len(places) < 50:
            places.append((frames, key, blob))
            self._place_count += 1
        return key

    def _record(self, row: tuple[Any, ...], found: dict[str, Any]) -> dict[str, Any]:
        """The record of ``row``, its error whole (``found``: frames read so far)."""
        out = dict(zip(_COLUMNS, row, strict=True))
        out["ts"] = out["timestamp"] = out["ts"]
        out = {key: out[key] for key in RECORD_KEYS}
        out["severity"] = _SEVERITY_NAMES.get(out["severity"], str(out["severity"]))
        out["handled"], out["recovered"] = bool(out["handled"]), bool(out["recovered"])
        try:
            blob = out["error"]
            if blob[:1] != b"{":
                blob = zlib.decompress(blob)
            data = json.loads(blob.decode("utf-8", "surrogatepass"))
        except (zlib.error, ValueError) as exc:
            raise StorageError.Corrupted(key=f"{self.path} record {out['id']}",
                                         reason=f"its error cannot be read ({exc})") from None
        level = data
        for _ in range(100):
            if not isinstance(level, dict):
                break
            key = level.get("frames")
            if isinstance(key, str):  # a key: the frames are in the frames table
                if key not in found:
                    rows = self._read("SELECT data FROM frames WHERE key = ?", (key,))
                    if not rows:
                        raise StorageError.Corrupted(
                            key=f"{self.path} record {out['id']}",
                            reason=f"its frames {key} are missing")
                    found[key] = zlib.decompress(rows[0][0]).decode("utf-8",
                                                                   "surrogatepass")
                level["frames"] = json.loads(found[key])
            level = level.get("cause")
        out["error"] = data
        return out

    # -- reading ----------------------------------------------------------------------

    def dropped(self) -> int:
        """Records that could not be recorded, in all."""
        rows = self._read("SELECT value FROM meta WHERE key = 'dropped'")
        return int(rows[0][0]) if rows else 0

    def records(self, *, since: float | None = None, code: str | None = None,
                component: str | None = None, group: str | None = None,
                limit: int = 100) -> list[dict[str, Any]]:
        """The newest records first, filtered (``code`` a ``category/kind`` or a
        ``category``)."""
        where, args = ["1"], []
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        if code is not None:
            where.append("(code = ? OR category = ?)")
            args += [code, code]
        if component is not None:
            where.append("component = ?")
            args.append(component)
        if group is not None:
            where.append("fingerprint = ?")
            args.append(group)
        rows = self._read(f"SELECT * FROM errors WHERE {' AND '.join(where)} "
                          f"ORDER BY ts DESC LIMIT ?", [*args, limit])
        found: dict[str, Any] = {}
        return [self._record(row, found) for row in rows]

    def record(self, record_id: str) -> dict[str, Any]:
        """The record ``record_id`` (or a unique prefix of it)."""
        rows = self._read("SELECT * FROM errors WHERE id >= ? AND id < ? LIMIT 2",
                          (record_id, record_id + "\uffff"))
        if len(rows) != 1 or not record_id:
            raise StorageError.NotFound(
                key=record_id, store=self.path if not rows else
                f"{self.path} (several records start with it)")
        return self._record(rows[0], {})

    def groups(self, *, since: float | None = None, limit: int = 100
               ) -> list[dict[str, Any]]:
        """Groups, the most recently seen first."""
        rows = self._read(f"SELECT {', '.join(_GROUP_KEYS)} FROM groups "
                          "WHERE last_seen >= ? ORDER BY last_seen DESC LIMIT ?",
                          (since if since is not None else 0, limit))
        return [dict(zip(_GROUP_KEYS, row, strict=True)) for row in rows]

    def groups_of(self, fingerprints: Sequence[str]) -> list[dict[str, Any]]:
        """The groups of ``fingerprints`` (those that still exist)."""
        out: list[dict[str, Any]] = []
        for start in range(0, len(fingerprints), 500):  # SQLite's bound on parameters
            chunk = list(fingerprints[start:start + 500])
            rows = self._read(f"SELECT {', '.join(_GROUP_KEYS)} FROM groups WHERE "
                              f"fingerprint IN ({', '.join('?' * len(chunk))})", chunk)
            out += [dict(zip(_GROUP_KEYS, row, strict=True)) for row in rows]
        return out

    def seen_before(self, fingerprint: str, when: float) -> float | None:
        """The end of the last hour before ``when``'s in which ``fingerprint`` was seen
        (from the rollups: how long a group that came back had been quiet), or None."""
        rows = self._read("SELECT max(hour) FROM rollup WHERE fingerprint = ? AND hour < ?",
                          (fingerprint, int(when // 3600)))
        return None if not rows or rows[0][0] is None else (rows[0][0] + 1) * 3600.0

    def last_seen(self, fingerprint: str) -> float | None:
        """When the group ``fingerprint`` was last seen; None if it never was."""
        rows = self._read("SELECT last_seen FROM groups WHERE fingerprint = ?",
                          (fingerprint,))
        return rows[0][0] if rows else None

    def rollup(self, since: float, until: float | None = None) -> list[dict[str, Any]]:
        """The hourly rollup rows from ``since`` (seconds since the epoch)."""
        until = time.time() if until is None else until
        rows = self._read("SELECT * FROM rollup WHERE hour >= ? AND hour <= ?",
                          (int(since // 3600), int(until // 3600)))
        out = [dict(zip(_ROLLUP_KEYS, row, strict=True)) for row in rows]
        for row in out:
            row["severity"] = _SEVERITY_NAMES.get(row["severity"], str(row["severity"]))
        return out

    def rollup_totals(self, since: float, until: float | None = None,
                      by: Sequence[str] = ()) -> list[tuple[Any, ...]]:
        """The rollup from ``since`` summed in SQLite by the columns ``by`` (of the
        rollup's): rows of ``(*by, count, impact, handled, recovered)`` (a million
        records' statistics without a row per hour reaching Python)."""
        unknown = [name for name in by if name not in _ROLLUP_KEYS[:10]]
        if unknown:
            raise ValueError(f"not a rollup column: {unknown}")
        until = time.time() if until is None else until
        columns = "".join(f"{name}, " for name in by)
        group = f" GROUP BY {', '.join(by)}" if by else ""
        rows = self._read(f"SELECT {columns}sum(count), sum(impact), sum(count * handled), "
                          f"sum(count * recovered) FROM rollup WHERE hour >= ? AND "
                          f"hour <= ?{group}", (int(since // 3600), int(until // 3600)))
        if "severity" in by:
            at = list(by).index("severity")
            rows = [(*row[:at], _SEVERITY_NAMES.get(row[at], str(row[at])), *row[at + 1:])
                    for row in rows]
        return [row for row in rows if row[len(by)] is not None]

    def calls(self, since: float, until: float | None = None) -> list[dict[str, Any]]:
        """The hourly counts of tool calls, runs, tasks and recoveries from ``since``."""
        until = time.time() if until is None else until
        rows = self._read("SELECT * FROM calls WHERE hour >= ? AND hour <= ?",
                          (int(since // 3600), int(until // 3600)))
        keys = ("hour", "what", "name", "engine", "count", "failures", "seconds")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def durations(self, since: float, until: float | None = None) -> list[dict[str, Any]]:
        """The hourly counts of tool calls by duration from ``since``: ``{hour, tool,
        engine, le, count}``, ``le`` the upper bound of the bucket (``inf`` for the last)."""
        until = time.time() if until is None else until
        rows = self._read("SELECT * FROM durations WHERE hour >= ? AND hour <= ?",
                          (int(since // 3600), int(until // 3600)))
        keys = ("hour", "tool", "engine", "le", "count")
        return [dict(zip(keys, row, strict=True)) for row in rows]


