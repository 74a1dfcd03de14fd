"""``polyspell errors ...`` and the recording of ``polyspell run`` and ``plan``, on real
subprocesses after real runs of failing Lua and JS scripts, into real SQLite files."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from bridge import SpellError
from tests.cli import polyspell

RECORD = {"id", "timestamp", "code", "category", "kind", "severity", "message", "component",
          "engine", "tool", "file", "line", "run_id", "task_id", "fingerprint", "handled",
          "recovered", "error"}
GROUP = {"fingerprint", "code", "count", "first_seen", "last_seen", "status"}


def strict(text: str):
    """One strict JSON document (NaN and Infinity refused)."""
    def refuse(name: str):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def run(city: str, script: str = "agent.lua", *options: str | Path):
    return polyspell("run", f"scripts/{script}", f"city={city}", "--tools",
                     "scripts/tools.py", *options)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store after real runs: Atlantis twice in Lua and twice in JS (weather fails and
    ends the run), Lisbon once in Lua (it succeeds); every run fails to translate, and
    handles it."""
    path = tmp_path_factory.mktemp("store") / "errors.db"
    outcomes = [run("Atlantis", "agent.lua", "--errors-db", path).returncode,
                run("Atlantis", "agent.lua", "--errors-db", path).returncode,
                run("Atlantis", "agent.js", "--errors-db", path).returncode,
                run("Atlantis", "agent.js", "--errors-db", path).returncode,
                run("Lisbon", "agent.lua", "--errors-db", path).returncode]
    assert outcomes == [1, 1, 1, 1, 0]
    return path


def errors(*args: str | Path, db: Path | None = None):
    extra = ("--errors-db", db) if db is not None else ()
    return polyspell("errors", *args, *extra)


def test_list_json_is_every_record_with_the_contracts_keys(db: Path):
    out = errors("list", "--json", db=db)
    assert out.returncode == 0, out.stderr
    records = strict(out.stdout)
    assert isinstance(records, list) and len(records) == 9
    assert all(RECORD <= set(record) for record in records)
    weather = [r for r in records if r["tool"] == "weather"]
    assert sorted(r["engine"] for r in weather) == ["javascript"] * 2 + ["lua"] * 2
    assert {(r["code"], r["handled"], r["file"], r["line"]) for r in weather} == {
        ("tool/execution_failed", False, "scripts/agent.lua", 7),
        ("tool/execution_failed", False, "scripts/agent.js", 7)}
    translate = [r for r in records if r["tool"] == "translate"]
    assert len(translate) == 5 and all(r["handled"] for r in translate)
    assert records == sorted(records, key=lambda r: -r["timestamp"])  # newest first
    assert SpellError.from_dict(weather[0]["error"]).code == "tool/execution_failed"


def test_list_as_a_table_and_its_filters(db: Path):
    out = errors("list", db=db)
    assert out.returncode == 0 and out.stderr == ""
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "TIME", "(UTC)"] and len(lines) == 10
    assert sum("ended run" in line for line in lines) == 4
    assert sum("scripts/agent.js:7" in line for line in lines) == 2

    def ids(*filters: str) -> list[str]:
        found = errors("list", "--json", *filters, db=db)
        assert found.returncode == 0, found.stderr
        return [r["id"] for r in strict(found.stdout)]

    assert len(ids("--code", "tool/not_found")) == 5
    assert len(ids("--code", "tool")) == 9  # a category
    assert len(ids("--component", "tool:weather")) == 4
    assert len(ids("--since", "1h")) == 9 and ids("--since", "2099-01-01") == []
    assert len(ids("--limit", "2")) == 2
    group = strict(errors("list", "--json", "--component", "tool:weather", db=db).stdout
                   )[0]["fingerprint"]
    assert len(ids("--group", group)) == 2  # a group is one engine's


def test_show_prints_the_traceback_as_run_does(db: Path):
    records = strict(errors("list", "--json", "--component", "tool:weather", db=db).stdout)
    lua = next(r for r in records if r["engine"] == "lua")
    out = errors("show", lua["id"][:8], db=db)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith(f"error {lua['id']} at ")
    assert "outcome: ended run" in text and "where: scripts/agent.lua:7 in describe" in text
    assert f"run: {lua['run_id']}" in text
    assert "Traceback (most recent call last):" in text
    assert "  lua scripts/agent.lua:7, in describe" in text
    assert "python scripts/tools.py" in text
    assert text.rstrip().endswith("tool/execution_failed: Tool execution failed: weather - "
                                  "LookupError: no weather station in 'Atlantis'")
    shown = strict(errors("show", lua["id"], "--json", db=db).stdout)
    assert isinstance(shown, dict) and shown["id"] == lua["id"] and RECORD <= set(shown)


def test_groups_and_stats(db: Path):
    groups = strict(errors("groups", "--json", db=db).stdout)
    assert isinstance(groups, list) and all(GROUP <= set(g) for g in groups)
    assert sum(g["count"] for g in groups) == 9
    assert {g["status"] for g in groups} <= {"new", "ongoing"}
    table = errors("groups", db=db).stdout.splitlines()
    assert table[0].startswith("GROUP") and len(table) == len(groups) + 1

    summary = strict(errors("stats", "--json", "--window", "24h", db=db).stdout)
    assert isinstance(summary, dict)
    assert (summary["total"], summary["handled"], summary["unhandled"]) == (9, 5, 4)
    assert summary["by_engine"] == {"lua": 5, "javascript": 4}
    assert summary["tools"]["weather"]["failures"] == 4
    assert summary["tools"]["weather"]["count"] == 5
    assert summary["runs"] == {"count": 5, "failures": 4, "failure_rate": 0.8}
    kinds = {a["subject"]: a for a in summary["recommendations"]}
    assert kinds["weather"]["message"].startswith("tool weather fails 80% of calls")
    assert kinds["translate"]["message"] == (
        "tool translate fails 100% of calls, mostly tool/not_found: no such tool: fix the "
        "name the scripts call, or give its tools file")
    assert kinds["runs"]["evidence"] == {"count": 5, "failures": 4, "failure_rate": 0.8}
    text = errors("stats", db=db).stdout
    assert text.startswith("errors in the last 24h")
    assert "  - tool weather fails 80% of calls, mostly tool/execution_failed" in text
    assert "    evidence: calls 5, failures 4, failure_rate 0.8" in text


def test_trends_draw_a_chart_without_colour(db: Path):
    out = errors("trends", "--window", "7d", "--bucket", "1d", db=db)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "errors per 1d over the last 7d (UTC): 9"
    bars = lines[1:8]
    assert [line.count("#") for line in bars] == [0] * 6 + [40]
    assert all("\x1b" not in line for line in lines)
    assert lines[8].startswith("trend: rising")
    trend = strict(errors("trends", "--json", db=db).stdout)
    assert [b["errors"] for b in trend["buckets"]] == [0] * 6 + [9]


def test_predict_a_tool_and_a_script(db: Path):
    out = errors("predict", "weather", db=db)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("tool weather: the next call fails with likelihood ")
    assert "recent_failure_rate: 4 of 5 calls failed in the last 7d" in out.stdout
    answer = strict(errors("predict", "weather", "--json", db=db).stdout)
    assert answer["level"] == "high" and answer["model"] == "rules"
    script = strict(errors("predict", "--script", "scripts/agent.js", "--json",
                           db=db).stdout)
    assert script["evidence"][0]["calls"] == 2 and script["evidence"][0]["failures"] == 2


def test_prune_keeps_the_newest(tmp_path: Path, db: Path):
    copy = tmp_path / "copy.db"
    source = sqlite3.connect(db)
    source.backup(target := sqlite3.connect(copy))
    source.close()
    target.close()
    out = errors("prune", "--max-rows", "2", "--json", db=copy)
    assert out.returncode == 0, out.stderr
    assert strict(out.stdout)["deleted"] == 7
    assert len(strict(errors("list", "--json", db=copy).stdout)) == 2
    text = errors("prune", "--max-age", "30d", db=copy)
    assert text.stdout.startswith("pruned 0 records from ")


def test_run_records_by_default_into_the_environments_file(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    db = Path(os.environ["POLYSPELL_ERRORS_DB"])
    out = polyspell("run", "scripts/agent.lua", "city=Atlantis", "--tools",
                    "scripts/tools.py", env={"HOME": str(home)})
    assert out.returncode == 1
    assert db.exists() and str(db).startswith(str(Path(os.environ["POLYSPELL_ERRORS_DB"])))
    assert len(strict(errors("list", "--json").stdout)) == 2
    assert list(home.iterdir()) == []  # nothing under the user's home


def test_no_record_writes_nothing(tmp_path: Path):
    db = tmp_path / "never.db"
    out = run("Atlantis", "agent.js", "--errors-db", db, "--no-record")
    assert out.returncode == 1 and not db.exists()
    listed = errors("list", "--json", db=db)
    assert strict(listed.stdout) == [] and not db.exists()  # reading makes no file


def test_plan_records_its_tasks(tmp_path: Path):
    db = tmp_path / "plan.db"
    out = polyspell("plan", "scripts/plans/partial.toml", "--errors-db", db)
    assert out.returncode == 1, out.stderr
    summary = strict(errors("stats", "--json", db=db).stdout)
    assert summary["total"] >= 1 and summary["tasks"]["count"] == 3
    assert summary["tasks"]["failures"] == 1


@pytest.mark.parametrize("store", ["garbage", "foreign", "newer", "under_a_file"])
def test_a_broken_store_never_fails_a_run_and_says_so_once(tmp_path: Path, store: str):
    db = broken(tmp_path, store)
    ok = run("Lisbon", "agent.lua", "--errors-db", db)
    assert ok.returncode == 0 and strict(ok.stdout)["city"] == "Lisbon"
    said = [line for line in ok.stderr.splitlines() if "cannot record errors" in line]
    assert len(said) == 1 and str(db) in said[0]
    failed = run("Atlantis", "agent.lua", "--errors-db", db)
    assert failed.returncode == 1 and "tool/execution_failed" in failed.stderr
    assert sum("cannot record errors" in line for line in failed.stderr.splitlines()) == 1


def broken(tmp_path: Path, store: str) -> Path:
    """A store that cannot be used, of the kind named."""
    db = tmp_path / "errors.db"
    if store == "garbage":
        db.write_bytes(b"not a database at all" * 100)
    elif store == "foreign":
        other = sqlite3.connect(db)
        other.execute("CREATE TABLE users (name TEXT)")
        other.commit()
        other.close()
    elif store == "newer":
        polyspell("errors", "prune", "--errors-db", db)  # a real store, made by prune
        newer = sqlite3.connect(db)
        newer.execute("PRAGMA user_version = 99")
        newer.commit()
        newer.close()
    else:
        (tmp_path / "file").write_text("")
        db = tmp_path / "file" / "errors.db"
    return db


@pytest.mark.parametrize(("store", "code"), [
    ("garbage", "storage/corrupted"), ("foreign", "storage/corrupted"),
    ("newer", "storage/operation_failed"), ("under_a_file", "storage/unavailable")])
def test_errors_on_a_broken_store_is_its_storage_error(tmp_path: Path, store: str,
                                                       code: str):
    db = broken(tmp_path, store)
    for action in ("list", "stats", "groups", "prune"):
        out = errors(action, db=db)
        assert out.returncode == 1 and out.stdout == ""
        assert out.stderr.startswith(f"{code}: ") and str(db) in out.stderr
        assert "Traceback" not in out.stderr
    out = errors("list", "--json", db=db)
    document = strict(out.stdout)
    assert document["ok"] is False and f"{document['error']['category']}/" \
        f"{document['error']['kind']}" == code


def test_a_read_only_store(tmp_path: Path):
    folder = tmp_path / "ro"
    folder.mkdir()
    db = folder / "errors.db"
    polyspell("errors", "prune", "--errors-db", db)
    folder.chmod(0o500)
    db.chmod(0o400)
    try:
        if os.access(db, os.W_OK):
            pytest.skip("this user can write to a read-only file")
        out = errors("list", db=db)
        assert out.returncode == 1 and out.stderr.startswith("storage/")
        assert str(db) in out.stderr
        ran = run("Atlantis", "agent.lua", "--errors-db", db)
        assert ran.returncode == 1
        assert sum("cannot record errors" in line for line in ran.stderr.splitlines()) == 1
    finally:
        folder.chmod(0o700)
        db.chmod(0o600)


@pytest.mark.parametrize(("args", "key", "hint"), [
    (("list", "--since", "yesterday"), "--since", "ISO 8601"),
    (("groups", "--since", "3 parsecs"), "--since", "ISO 8601"),
    (("list", "--code", "tool/not_fuond"), "--code", "tool/not_found"),
    (("list", "--code", "nonsense"), "--code", "polyspell catalog"),
    (("list", "--limit", "0"), "--limit", "positive"),
    (("stats", "--window=-1h"), "--window", "positive duration"),
    (("trends", "--bucket", "30m"), "--bucket", "whole number of hours"),
    (("trends", "--window", "soon"), "--window", "positive duration"),
    (("prune", "--max-age", "old"), "--max-age", "positive duration"),
    (("prune", "--max-rows", "-1"), "--max-rows", "zero or more"),
])
def test_bad_input_is_a_configuration_error_naming_the_flag(tmp_path: Path, args, key, hint):
    db = tmp_path / "errors.db"
    out = errors(*args, db=db)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("configuration/invalid_value: ")
    assert key in out.stderr and hint in out.stderr and "Traceback" not in out.stderr
    document = strict(errors(*args, "--json", db=db).stdout)
    assert document["error"]["fields"]["key"] == key
    assert not db.exists() or args[0] == "prune"


def test_predict_needs_a_tool_or_a_script(tmp_path: Path):
    for args in (("predict",), ("predict", "weather", "--script", "a.lua")):
        out = errors(*args, db=tmp_path / "errors.db")
        assert out.returncode == 2 and out.stderr.startswith("configuration/usage")


def test_a_show_of_an_unknown_id(db: Path):
    out = errors("show", "zzzz", db=db)
    assert out.returncode == 1 and out.stderr.startswith("storage/not_found: ")


HOSTILE_LUA = r"""
function main(args)
  local ok = pcall(tools.boom, {reason = "x\nFORGED: polyspell says all is well\27[2J\27[31m"})
  error("top\nFORGED LINE\27]0;title\7 " .. string.rep("A", 5000))
end
"""
HOSTILE_TOOLS = '''
from host import tool

@tool
def boom(reason: str) -> str:
    raise RuntimeError(reason)
'''


def test_a_hostile_scripts_strings_cannot_forge_lines_or_escape(tmp_path: Path):
    script = tmp_path / "evil\nFORGED.lua"
    script.write_text(HOSTILE_LUA)
    tools = tmp_path / "tools.py"
    tools.write_text(HOSTILE_TOOLS)
    db = tmp_path / "errors.db"
    out = polyspell("run", script, "--tools", tools, "--errors-db", db)
    assert out.returncode == 1, out.stderr
    records = strict(errors("list", "--json", db=db).stdout)
    assert len(records) == 2
    assert any("FORGED LINE" in r["message"] for r in records)  # kept whole as data
    outputs = [errors(action, db=db).stdout for action in ("list", "groups", "stats")]
    outputs += [errors("show", r["id"], db=db).stdout for r in records]
    for text in outputs:
        assert "\x1b" not in text and "\x07" not in text
        assert not [line for line in text.splitlines() if line.startswith("FORGED")]
