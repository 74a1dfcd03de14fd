"""``polyspell plan`` as users run it, on the example plans: table, outcome, JSON, exit codes."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bridge import SpellError
from host import PlanReport
from tests.cli import POLYSPELL, environment, polyspell

ROOT = Path(__file__).resolve().parent.parent
PLANS = ROOT / "scripts" / "plans"


def report_of(*args: str | Path) -> tuple[int, PlanReport]:
    out = polyspell("plan", *args, "--json")
    (line,) = out.stdout.splitlines()  # exactly one JSON object
    return out.returncode, PlanReport.model_validate(json.loads(line))


@pytest.mark.parametrize("plan,outcome,code", [
    ("succeeded", "succeeded", 0),
    ("cascading", "cascading_failure", 1),
    ("partial", "partial_failure", 1),
    ("all_failed", "all_failed", 1),
    ("degraded", "partial_failure", 1),
])
def test_each_example_plan_has_its_outcome_and_exit_code(plan, outcome, code):
    returncode, report = report_of(PLANS / f"{plan}.toml")
    assert (report.outcome, returncode) == (outcome, code)


_DURATION = re.compile(r"\b\d+\.\d+s\b")


@pytest.mark.parametrize("plan", ["cascading", "degraded"])
def test_an_example_plan_prints_the_same_in_process_isolation(plan):
    """Table, outcome, decision, root causes and tracebacks: the same text in both modes,
    durations aside (a worker's start counts in its first task's)."""
    shown = {}
    for mode in ("thread", "process"):
        out = polyspell("plan", PLANS / f"{plan}.toml", "--isolation", mode, "--no-record")
        shown[mode] = (out.returncode, _DURATION.sub("<t>", out.stdout),
                       _DURATION.sub("<t>", out.stderr))
    assert shown["process"] == shown["thread"]
    assert "Traceback (most recent call last):" in shown["thread"][1] + shown["thread"][2]


def test_the_succeeded_example_mixes_lua_and_javascript():
    _, report = report_of("scripts/plans/succeeded.toml")
    assert {t.engine for t in report.tasks} == {"lua", "javascript"}
    assert report.results["publish"] == {
        "title": "Two capitals",
        "body": "Lisbon is the capital of Portugal, on the Tagus. Paris is the capital of "
                "France, on ..."}


def test_the_cascading_example_prints_the_table_outcome_and_root_cause():
    out = polyspell("plan", "scripts/plans/cascading.toml")
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["task", "engine", "status", "attempts", "duration"]
    rows = {line.split()[0]: line.split()[1:4] for line in lines[1:6]}
    assert rows == {"fetch_lisbon": ["lua", "succeeded", "1"],
                    "fetch_atlantis": ["lua", "failed", "1"],
                    "summarize": ["javascript", "cancelled", "0"],
                    "publish": ["lua", "cancelled", "0"],
                    "count": ["javascript", "succeeded", "1"]}
    assert "outcome: cascading_failure (plan capitals, strategy cancel_dependents, 3 of 5 " \
           "tasks did not succeed" in out.stdout
    assert "root causes: fetch_atlantis" in lines
    assert "propagation: fetch_atlantis -> summarize, summarize -> publish" in lines
    # the root cause's polyglot traceback: Lua script, tool boundary, Python tool
    assert "  lua scripts/plans/fetch.lua:3, in download" in lines
    assert "  host <tool call>, in fetch" in lines
    assert lines[-1] == ("tool/execution_failed: Tool execution failed: fetch - "
                         "LookupError: no source named 'atlantis'")
    assert "\x1b[" not in out.stdout  # no colour when not a terminal
    assert out.stderr == ""  # no progress when not a terminal


def test_json_report_carries_unified_errors():
    _, report = report_of("scripts/plans/cascading.toml")
    assert (report.root_causes, report.propagation) == (
        ["fetch_atlantis"], ["fetch_atlantis -> summarize", "summarize -> publish"])
    err = SpellError.from_dict(report.task("fetch_atlantis").error)
    assert err.code == "tool/execution_failed"
    assert err.cause.fields["exception_type"] == "LookupError"
    summarize = report.task("summarize")
    assert (summarize.error["kind"], summarize.caused_by) == ("task_cancelled",
                                                              ["fetch_atlantis"])


def test_strategy_and_concurrency_can_be_overridden():
    code, report = report_of("scripts/plans/cascading.toml", "--strategy", "isolate",
                             "--max-concurrency", "1")
    assert (code, report.strategy, report.outcome) == (1, "isolate", "partial_failure")
    assert report.task("summarize").result["missing"] == [
        "fetch_atlantis: tool/execution_failed"]
    assert report.task("publish").status == "succeeded"


@pytest.mark.parametrize("args,message", [
    (["--max-concurrency", "0"], "field 'max_concurrency': Input should be greater than"),
    (["--tools", "nowhere.py"], "File not found: nowhere.py"),
])
def test_bad_options_exit_2(args, message):
    out = polyspell("plan", "scripts/plans/succeeded.toml", *args)
    assert out.returncode == 2
    assert message in out.stderr
    assert out.stdout == ""


def test_a_bad_plan_exits_2_naming_the_problem_and_where(tmp_path):
    plan = tmp_path / "bad.toml"
    plan.write_text('[[task]]\nid = "a"\nscript = "a.lua"\nafter = ["b"]\n')
    out = polyspell("plan", plan)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        f"configuration/invalid_plan: Invalid plan bad: task 'a' runs after unknown task 'b' "
        f"(at {plan}: task 'a', field 'after')")
    assert "Traceback" not in out.stderr  # a configuration error, not a crash
    out = polyspell("plan", plan, "--json")
    assert out.returncode == 2
    assert json.loads(out.stdout)["error"]["kind"] == "invalid_plan"
    assert polyspell("plan", "scripts/plans/succeeded.toml", "--strategy", "x").returncode == 2
    assert polyspell("plan").returncode == 2


def test_tools_come_from_the_command_line_too(tmp_path):
    (tmp_path / "t.py").write_text("from host import tool\n\n@tool\ndef twice(n: int) -> int:\n"
                                   "    return 2 * n\n")
    (tmp_path / "a.lua").write_text("return tools.twice{n = args.n}")
    (tmp_path / "p.toml").write_text('[[task]]\nid = "a"\nscript = "a.lua"\nargs = {n = 21}\n')
    code, report = report_of(tmp_path / "p.toml", "--tools", tmp_path / "t.py")
    assert (code, report.results) == (0, {"a": 42})


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_progress_is_shown_on_a_terminal():
    leader, follower = pty.openpty()
    proc = subprocess.Popen([*POLYSPELL, "plan", "scripts/plans/cascading.toml"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=follower,
                            env=environment({"COLUMNS": "120"}))
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(60) == 1
    os.close(leader)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))
    assert "fetch_atlantis (lua) failed after" in text
    assert "summarize (javascript) cancelled after" in text
    assert "plan capitals" in text


def test_lines_printed_by_concurrent_tasks_are_written_whole(tmp_path):
    (tmp_path / "t.py").write_text("from host import tool\n\n@tool\ndef tick() -> bool:\n"
                                   "    return True\n")
    (tmp_path / "talk.lua").write_text(
        "for batch = 1, 20 do\n"
        "  for i = 1, 100 do print(args.name .. ' line ' .. batch * 1000 + i) end\n"
        "  tools.tick{}\nend\n"
        "print(args.name .. ' first\\n' .. args.name .. ' second')\n")
    (tmp_path / "talk.js").write_text(
        "async function main(a) {\n"
        "  for (let batch = 1; batch <= 20; batch++) {\n"
        "    for (let i = 1; i <= 100; i++) console.log(`${a.name} line ${batch * 1000 + i}`);\n"
        "    await tools.tick();\n  }\n"
        "  console.log(`${a.name} first\\n${a.name} second`);\n}\n")
    names = [f"{language}{n}" for language in ("lua", "js") for n in range(4)]
    (tmp_path / "p.toml").write_text("".join(
        f'[[task]]\nid = "{name}"\nscript = "talk.{name[:-1]}"\nargs = {{name = "{name}"}}\n'
        for name in names))
    out = polyspell("plan", tmp_path / "p.toml", "--tools", tmp_path / "t.py")
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stderr.splitlines()
    whole = re.compile(r"\[(\w+)\] (\w+) (line \d+|first|second)")
    broken = [line for line in lines if not (m := whole.fullmatch(line)) or m[1] != m[2]]
    assert broken == [], broken[:5]
    assert len(lines) == len(names) * 2002
