"""The recovery examples of scripts/recovery run as the README shows them."""

from __future__ import annotations

import json

from tests.cli import ROOT, polyspell

FOLDER = ROOT / "scripts" / "recovery"
TOOLS = FOLDER / "tools.py"


def test_a_flaky_search_is_retried_until_it_answers():
    done = polyspell("run", FOLDER / "flaky.lua", "--tools", TOOLS)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [  # a script's own output goes to stderr
        "lua coroutines: first hit", "lua coroutines: second hit",
        "search was called 3 times"]
    assert done.stdout == "2\n"  # its result to stdout


def test_a_rate_limit_is_waited_out_as_long_as_the_service_asked():
    done = polyspell("run", FOLDER / "rate_limited.js", "--tools", TOOLS)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["ACME at 12.5, after waiting at least 0.5 s"]
    assert done.stdout == "12.5\n"


def test_a_dead_service_is_refused_by_its_breaker_and_replaced_by_its_fallback():
    done = polyspell("run", FOLDER / "breaker.lua", "--tools", TOOLS, "--json")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[:4] == [f"{city}: mild (backup source)"
                         for city in ("Paris", "Lisbon", "Oslo", "Rome")]
    assert lines[4] == "the dead service was called 2 times for 4 cities"
    assert json.loads(done.stdout)["ok"] is True


def test_an_optional_service_that_is_down_leaves_the_run_degraded_not_failed():
    done = polyspell("run", FOLDER / "degraded.js", "--tools", TOOLS)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        city: {"weather": f"{city}: mild (backup source)", "headlines": []}
        for city in ("Paris", "Oslo", "Rome")}
    assert done.stderr.splitlines() == [
        "the news service was called 1 time(s)",
        "polyspell: ran degraded: headlines answered [] "
        "(3 calls: network/connection, runtime/circuit_breaker_open)"]


def test_when_every_option_fails_the_traceback_says_what_recovery_tried():
    done = polyspell("run", FOLDER / "exhausted.lua", "--tools", TOOLS)
    assert done.returncode == 1
    tail = done.stderr.splitlines()[-5:]
    assert tail == [
        "    local issues = tools.archive{year = year}",
        "  host <tool call>, in archive",
        "runtime/all_fallbacks_failed: All fallbacks failed: 1 options attempted",
        "  errors in the order tried: network/connection (archive), tool/timeout "
        "(archive_mirror)",
        "recovery: archive retried 1x (0.05 s; network/connection), then fell back to "
        "archive_mirror (after network/connection)"]


def test_a_script_retries_and_falls_back_by_itself_and_json_shows_what_was_done():
    done = polyspell("run", FOLDER / "in_script.js", "--tools", TOOLS, "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["result"] == {"meaning": "spell: a form of words with magic power",
                             "archive": ["(the archive is down: nothing from 1999)"]}
    assert [(e["action"], e["tool"], e["error"]) for e in out["recovery"]] == [
        ("retry", "lookup", "tool/timeout"), ("retry", "lookup", "tool/timeout"),
        ("retry", "archive", "network/connection"),
        ("fallback", "archive", "network/connection"),
        ("fallback", "archive", "runtime/all_fallbacks_failed")]
    assert [e["delay"] for e in out["recovery"][:3]] == [0.05, 0.05, 0.05]


def test_a_broken_tools_file_is_restarted_with_its_state_and_a_stuck_one_stopped():
    done = polyspell("run", FOLDER / "notes_agent.lua", "--tools", FOLDER / "notes.lua",
                     "--memory-mb", "16", "--config", FOLDER / "notes.toml", "--json")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["first\t1", "second\t2", "third\t3",
                                        "spin\ttool/timeout"]
    out = json.loads(done.stdout)
    assert out["result"] == 4  # the notes kept across the restart: first, second, ...
    assert [(e["action"], e["tool"], e["error"]) for e in out["recovery"]] == [
        ("restart", "add_note", "resource/memory_exhaustion"),
        ("restart", "spin", "tool/timeout"), ("retry", "spin", "tool/timeout"),
        ("restart", "spin", "tool/timeout")]
