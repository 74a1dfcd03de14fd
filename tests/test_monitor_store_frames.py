"""The store keeps a group's frames once (schema 2) and gives every record back exactly."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from bridge import SpellError, StorageError, ToolError
from bridge.frames import Frame
from host.monitor.records import make_record
from host.monitor.store import MIGRATIONS, SCHEMA_VERSION, Store


def deep(line: int = 7, depth: int = 20, message: str = "down") -> SpellError:
    cause = ToolError.Timeout(tool_name="search", duration=1.0)
    cause.frames = [Frame("python", "tools.py", 30 + i, None, f"inner{i}", "x = 1")
                    for i in range(5)]
    err = ToolError.ExecutionFailed(tool_name="search", reason=message)
    err.frames = [Frame("lua", "agent.lua", line + i, 3, f"step{i}", f"local v{i} = 1")
                  for i in range(depth)]
    err.__cause__ = cause
    return SpellError.from_dict(json.loads(json.dumps(err.to_dict())))


def as_json(record: dict) -> dict:
    return json.loads(json.dumps(record))


def test_records_sharing_frames_come_back_exactly(tmp_path: Path):
    store = Store(tmp_path / "errors.db")
    same = [make_record(deep(message=f"down {n}"), tool="search") for n in range(3)]
    other_place = make_record(deep(line=50), tool="search")  # same group, other lines
    store.write(same[:2])
    store.write([same[2], other_place])
    for record in [*same, other_place]:
        assert store.record(record["id"]) == as_json(record)
    assert sorted(r["id"] for r in store.records()) == sorted(
        r["id"] for r in [*same, other_place])
    db = sqlite3.connect(tmp_path / "errors.db")
    # two places of the error, one of its cause: three rows for four records
    assert db.execute("SELECT count(*) FROM frames").fetchone() == (3,)
    sizes = [n for (n,) in db.execute("SELECT length(error) FROM errors")]
    assert max(sizes) < 1500  # the frames are not in each record


def test_a_new_store_reads_what_another_wrote_and_prune_drops_unused_frames(
        tmp_path: Path):
    first = make_record(deep(), tool="search", when=time.time() - 10 * 86400)
    Store(tmp_path / "errors.db").write([first])
    again = Store(tmp_path / "errors.db")
    second = make_record(deep(), tool="search")
    again.write([second])
    assert again.record(first["id"]) == as_json(first)
    assert again.record(second["id"]) == as_json(second)
    assert again.prune(max_age=86400) == 1
    db = sqlite3.connect(tmp_path / "errors.db")
    assert db.execute("SELECT count(*) FROM frames").fetchone() == (2,)  # still used
    assert again.prune(max_rows=0) == 1
    assert db.execute("SELECT count(*) FROM frames").fetchone() == (0,)
    third = make_record(deep(), tool="search")
    again.write([third])  # written again, though this store wrote them before
    assert again.record(third["id"]) == as_json(third)


def test_a_version_1_file_is_upgraded(tmp_path: Path):
    path = tmp_path / "errors.db"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute("INSERT INTO meta VALUES ('app', 'polyspell-errors'), ('dropped', '0')")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    store = Store(path)
    record = make_record(deep(), tool="search")
    store.write([record])
    assert store.record(record["id"]) == as_json(record)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone() == (
        SCHEMA_VERSION,)


def test_a_record_whose_frames_are_missing_or_garbled_is_a_storage_error(tmp_path: Path):
    path = tmp_path / "errors.db"
    store = Store(path)
    record = make_record(deep(), tool="search")
    store.write([record])
    db = sqlite3.connect(path)
    db.execute("DELETE FROM frames")
    db.commit()
    with pytest.raises(StorageError) as caught:
        store.record(record["id"])
    assert caught.value.code == "storage/corrupted" and str(path) in caught.value.message
    db.execute("UPDATE errors SET error = x'00ff'")
    db.commit()
    with pytest.raises(StorageError) as caught:
        store.records()
    assert caught.value.code == "storage/corrupted"
