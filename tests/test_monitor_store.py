"""The error store (host.monitor.store), its records and its writer, on real SQLite files."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import time
from pathlib import Path

import pytest

from bridge import SpellError, StorageError, ToolError
from bridge.frames import Frame
from host.monitor.records import RECORD_KEYS, make_record
from host.monitor.store import SCHEMA_VERSION, Store
from host.monitor.writer import Writer

HOUR = 3600.0


def failure(tool: str = "search", line: int = 7, message: str = "down") -> SpellError:
    err = ToolError.ExecutionFailed(tool_name=tool, reason=message)
    err.frames = [Frame("lua", "agent.lua", line, 3, "main", "tools.search{}"),
                  Frame("python", "tools.py", 12, None, tool, None)]
    return err


def test_a_record_has_every_key_and_the_whole_error(tmp_path: Path):
    store = Store(tmp_path / "errors.db")
    record = make_record(failure(), run_id="r1", handled=True)
    assert tuple(record) == RECORD_KEYS
    assert (record["engine"], record["file"], record["line"], record["tool"]) == (
        "lua", "agent.lua", 7, "search")
    store.write([record])
    (back,) = store.records()
    assert back == json.loads(json.dumps(record))  # what went in, as JSON
    assert SpellError.from_dict(back["error"]).frames[0].line == 7


def test_the_fingerprint_ignores_lines_and_messages_but_not_the_code_or_the_place():
    def fingerprint(err: SpellError) -> str:
        return make_record(err)["fingerprint"]

    same = fingerprint(failure())
    assert fingerprint(failure(line=99, message="down for 3 s, request id 81723")) == same
    assert fingerprint(failure(tool="weather")) != same
    other_code = ToolError.Timeout(tool_name="search", duration=1.0)
    other_code.frames = failure().frames
    assert fingerprint(other_code) != same


def test_a_custom_fingerprint_can_extend_the_default():
    plain, custom, extended = failure(), failure(), failure()
    custom.context.metadata["fingerprint"] = ["tenant-a"]
    extended.context.metadata["fingerprint"] = ["{{ default }}", "tenant-a"]
    prints = [make_record(e)["fingerprint"] for e in (plain, custom, extended)]
    assert len(set(prints)) == 3


def test_groups_are_new_then_ongoing_then_regressed_after_a_quiet_period(tmp_path: Path):
    store = Store(tmp_path / "errors.db", quiet_before_regression=HOUR)
    now = time.time()
    for when in (now - 3 * HOUR, now - 2.9 * HOUR):
        store.write([make_record(failure(), when=when)])
    (group,) = store.groups()
    assert (group["status"], group["count"]) == ("ongoing", 2)
    store.write([make_record(failure(), when=now)])
    (group,) = store.groups()
    assert (group["status"], group["count"], group["regressed_at"]) == ("regressed", 3, now)
    store.write([make_record(failure(tool="weather"), when=now)])
    assert sorted(g["status"] for g in store.groups()) == ["new", "regressed"]


def test_filters_and_prefix_ids(tmp_path: Path):
    store = Store(tmp_path / "errors.db")
    now = time.time()
    records = [make_record(failure(), when=now - 2 * HOUR),
               make_record(ToolError.Timeout(tool_name="x", duration=1.0), when=now)]
    store.write(records)
    assert [r["code"] for r in store.records()] == ["tool/timeout", "tool/execution_failed"]
    assert [r["code"] for r in store.records(since=now - HOUR)] == ["tool/timeout"]
    assert len(store.records(code="tool")) == 2
    assert store.records(code="tool/timeout")[0]["id"] == records[1]["id"]
    assert store.records(component="tool:search")[0]["id"] == records[0]["id"]
    assert store.record(records[0]["id"][:10])["id"] == records[0]["id"]
    with pytest.raises(StorageError) as info:
        store.record("nope")
    assert info.value.code == "storage/not_found"


def test_rollups_count_what_the_records_say(tmp_path: Path):
    store = Store(tmp_path / "errors.db")
    now = time.time()
    store.write([make_record(failure(), when=now) for _ in range(5)]
                + [make_record(failure(), when=now, recovered=True, recovery="retry")],
                [(now, "tool", "search", "lua", 2, 1, 0.01)] * 5)
    rows = store.rollup(now - HOUR)
    assert sum(r["count"] for r in rows) == 6
    assert {(r["recovered"], r["recovery"], r["count"]) for r in rows} == {
        (0, "", 5), (1, "retry", 1)}
    (calls,) = store.calls(now - HOUR)
    assert (calls["count"], calls["failures"], round(calls["seconds"], 6)) == (10, 5, 0.05)


def test_retention_by_age_and_by_rows(tmp_path: Path):
    store = Store(tmp_path / "errors.db")
    now = time.time()
    store.write([make_record(failure(), when=now - day * 86400) for day in range(10)])
    assert store.prune(max_age=5.5 * 86400, now=now) == 4
    assert store.prune(max_rows=2) == 4
    assert [round((now - r["timestamp"]) / 86400) for r in store.records()] == [0, 1]


@pytest.mark.parametrize("content, code", [
    (b"this is not a database, just text" * 100, "storage/corrupted"),
])
def test_a_file_that_is_not_a_store_is_refused_clearly(tmp_path: Path, content, code):
    path = tmp_path / "errors.db"
    path.write_bytes(content)
    with pytest.raises(StorageError) as info:
        Store(path)
    assert info.value.code == code
    assert str(path) in info.value.message
    assert path.read_bytes() == content  # nothing lost


def test_a_foreign_sqlite_file_is_refused_and_left_alone(tmp_path: Path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(StorageError) as info:
        Store(path)
    assert info.value.code == "storage/corrupted"
    assert "invoices" in info.value.message
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("invoices",)]


def test_a_store_from_a_newer_polyspell_is_refused(tmp_path: Path):
    path = tmp_path / "errors.db"
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StorageError) as info:
        Store(path)
    assert "newer polyspell" in info.value.message


def test_a_read_only_place_is_unavailable(tmp_path: Path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        import os

        if os.access(folder, os.W_OK):  # root writes anywhere: nothing to test
            pytest.skip("this user can write to a read-only folder")
        with pytest.raises(StorageError) as info:
            Store(folder / "errors.db")
        assert info.value.code == "storage/unavailable"
    finally:
        folder.chmod(0o700)


def test_a_place_that_cannot_hold_the_file_is_unavailable(tmp_path: Path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(StorageError) as info:
        Store(tmp_path / "a-file" / "errors.db")
    assert info.value.code == "storage/unavailable"
    assert "a-file" in info.value.message


# -- the writer -----------------------------------------------------------------------


def test_the_writer_writes_in_batches_off_the_callers_thread(tmp_path: Path):
    store = Store(tmp_path / "errors.db")
    writer = Writer(store)
    records = [make_record(failure()) for _ in range(300)]
    for record in records:
        writer.put(record)
    assert writer.flush()
    assert len(store.records(limit=1000)) == 300
    deadline = time.monotonic() + 2  # without a flush, within the interval
    writer.put(make_record(failure()))
    while len(store.records(limit=1000)) < 301 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(store.records(limit=1000)) == 301


def test_a_burst_past_the_bound_is_counted_as_dropped_never_lost_silently(tmp_path: Path):
    store = Store(tmp_path / "errors.db")
    writer = Writer(store, max_pending=10, interval=60)  # nothing written meanwhile
    for _ in range(25):
        writer.put(make_record(failure()))
    assert writer.dropped == 15
    writer.flush()
    assert len(store.records()) == 10
    assert store.dropped() == 15


def test_a_failing_store_never_fails_the_caller_and_says_so_once(tmp_path: Path, caplog):
    store = Store(tmp_path / "errors.db")
    writer = Writer(store)
    store.close()  # every write now fails
    for _ in range(3):
        writer.put(make_record(failure()))
        writer.flush()
    assert writer.lost == 3
    assert writer.failure is not None and writer.failure.category == "storage"
    assert caplog.text.count("could not record errors") == 1


def _write_many(path: str, start: int, n: int) -> None:
    store = Store(path)
    writer = Writer(store)
    for i in range(n):
        writer.put(make_record(failure(line=start + i)))
    writer.flush()


def test_two_processes_writing_the_same_file_lose_nothing(tmp_path: Path):
    path = str(tmp_path / "errors.db")
    Store(path).close()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_many, args=(path, k * 1000, 400))
               for k in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    store = Store(path)
    assert len(store.records(limit=10_000)) == 800
    (group,) = store.groups()
    assert group["count"] == 800


_KILLED_WRITER = """
import sys, time
sys.path.insert(0, {root!r})
from bridge import ToolError
from host.monitor.records import make_record
from host.monitor.store import Store
from host.monitor.writer import Writer

writer = Writer(Store({path!r}))
for i in range(100_000):
    err = ToolError.ExecutionFailed(tool_name="t", reason=str(i))
    writer.put(make_record(err, when=time.time()))
    print(i, time.time(), flush=True)
    time.sleep(0.005)
"""


def test_a_writer_killed_9_loses_at_most_its_flush_window(tmp_path: Path):
    import signal
    import subprocess
    import sys

    from host.monitor.writer import FLUSH_INTERVAL
    from tests.cli import ROOT

    path = str(tmp_path / "errors.db")
    Store(path).close()
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER.format(root=str(ROOT), path=path)],
        stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    put: list[float] = []
    while len(put) < 150:  # about a second of records
        line = child.stdout.readline()
        assert line, "the writer ended early"
        put.append(float(line.split()[1]))
    os.kill(child.pid, signal.SIGKILL)
    killed = time.time()
    child.wait()
    kept = len(Store(path).records(limit=100_000))
    # every record put a flush window (and a margin for a loaded machine) before the kill
    # is in the file; the ones after may be lost, never more
    assert kept >= sum(when < killed - FLUSH_INTERVAL - 0.5 for when in put)
    assert kept <= len(put) + 1
