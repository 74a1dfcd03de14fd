"""The text report of ``polyspell plan`` (issue 18): every task that did not succeed says
its error's code and message, and a dependent of ``isolate`` that failed says which failed
input it ran with."""

from __future__ import annotations

from pathlib import Path

from tests.cli import polyspell

PLANS = Path(__file__).resolve().parent.parent / "scripts" / "plans"

ISOLATE = """[plan]
name = "iso"
strategy = "isolate"

[[task]]
id = "up"
script = "up.lua"

[[task]]
id = "down"
script = "down.js"
after = ["up"]
"""


def section(text: str) -> list[str]:
    """The lines of the report's "did not succeed" section."""
    lines = text.splitlines()
    start = lines.index("did not succeed:") + 1
    return lines[start:lines.index("", start)]


def test_every_task_that_did_not_succeed_says_its_error() -> None:
    out = polyspell("plan", PLANS / "cascading.toml", "--no-record", "--color", "never")
    assert out.returncode == 1
    rows = section(out.stdout)
    assert [row.split()[:2] for row in rows] == [
        ["fetch_atlantis", "failed"], ["summarize", "cancelled"], ["publish", "cancelled"]]
    assert rows[0].endswith("tool/execution_failed: Tool execution failed: fetch - "
                            "LookupError: no source named 'atlantis' (a root cause: its "
                            "traceback is below)")
    assert "async_execution/task_cancelled: Task cancelled: summarize - dependency " \
           "'fetch_atlantis' did not succeed" in rows[1]


def test_an_isolate_dependent_that_failed_says_it_ran_with_a_failed_input(
        tmp_path: Path) -> None:
    (tmp_path / "up.lua").write_text('error("no data today")\n')
    (tmp_path / "down.js").write_text(
        "function main(args) {\n  return args.inputs.up.value.toUpperCase();\n}\n")
    (tmp_path / "plan.toml").write_text(ISOLATE)
    out = polyspell("plan", tmp_path / "plan.toml", "--no-record", "--color", "never")
    rows = section(out.stdout)
    assert rows[1].split()[:3] == ["down", "failed", "script/javascript:"]
    assert rows[1].endswith("(it ran with the failed input of up)")
    assert rows[0].endswith("no data today (a root cause: its traceback is below)")


def test_a_scripts_message_cannot_forge_lines_of_the_report(tmp_path: Path) -> None:
    (tmp_path / "up.lua").write_text(
        'error("x\\n  down  succeeded  all fine\\n\\27[32mgreen")\n')
    (tmp_path / "down.js").write_text("function main(args) { return 1; }\n")
    (tmp_path / "plan.toml").write_text(ISOLATE)
    out = polyspell("plan", tmp_path / "plan.toml", "--no-record", "--color", "never")
    rows = section(out.stdout)
    assert len(rows) == 1 and rows[0].startswith("  up  failed")
    assert "\\n  down  succeeded" in rows[0] and "\x1b" not in rows[0]
