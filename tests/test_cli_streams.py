"""What the CLI writes where, and the exit code of bad command lines.

stdout holds only the result (``run`` and ``plan``, with or without ``--json``): what
Python code prints during a run goes to stderr. Numbers out of range, non-finite limits,
a directory given as the script and a Ctrl-C while tools load are usage errors or an
interruption, never ``runtime/internal_error``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli import polyspell
from tests.conftest import EXTENSION, pick

NOISY_TOOLS = (
    "import sys\nfrom host import tool\n\nprint('noise while importing')\n\n"
    "@tool\ndef noisy(n: int) -> int:\n    \"\"\"Prints, then answers.\"\"\"\n"
    "    print('debug from tool', n)\n    sys.stdout.write('raw write\\n')\n"
    "    sys.stdout.flush()\n    return n + 1\n")


def _noisy(tmp_path: Path, language: str) -> tuple[Path, Path]:
    tools = tmp_path / "noisy_tools.py"
    tools.write_text(NOISY_TOOLS)
    script = tmp_path / f"noisy{EXTENSION[language]}"
    script.write_text(pick(language, "return tools.noisy{n = 41}",
                           "async function main() { return await tools.noisy({n: 41}); }"))
    return tools, script


@pytest.mark.parametrize("as_json", [True, False])
def test_run_stdout_holds_only_the_result_when_a_tool_prints(language, tmp_path, as_json):
    tools, script = _noisy(tmp_path, language)
    out = polyspell("run", script, "--tools", tools, *(["--json"] if as_json else []))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == ({"ok": True, "result": 42} if as_json else 42)
    assert "debug from tool 41" in out.stderr and "raw write" in out.stderr
    assert "noise while importing" in out.stderr


@pytest.mark.parametrize("as_json", [True, False])
def test_plan_stdout_holds_only_the_report_when_a_tool_prints(language, tmp_path, as_json):
    tools, script = _noisy(tmp_path, language)
    plan = tmp_path / "p.toml"
    plan.write_text(f'[[task]]\nid = "a"\nscript = "{script.name}"\n')
    out = polyspell("plan", plan, "--tools", tools, *(["--json"] if as_json else []))
    assert out.returncode == 0, out.stderr
    if as_json:
        (line,) = out.stdout.splitlines()  # exactly one JSON object
        report = json.loads(line)
        assert [(t["id"], t["status"], t["result"]) for t in report["tasks"]] == [
            ("a", "succeeded", 42)]
    else:
        assert "debug from tool" not in out.stdout and "raw write" not in out.stdout
        assert "noise while importing" not in out.stdout
    assert "debug from tool 41" in out.stderr


def test_a_failing_run_keeps_printed_noise_off_stdout(language, tmp_path):
    tools, script = _noisy(tmp_path, language)
    script.write_text(pick(language, "tools.noisy{n = 1}\nerror('no')",
                           "async function main() { await tools.noisy({n: 1});"
                           " throw new Error('no'); }"))
    out = polyspell("run", script, "--tools", tools, "--json")
    assert out.returncode == 1
    assert json.loads(out.stdout)["ok"] is False


# -- limits out of range are usage errors -------------------------------------------------

@pytest.mark.parametrize("option,value", [
    ("--memory-mb", "99999999999999999999"), ("--memory-mb", "9999999999999"),
    ("--timeout", "inf"), ("--timeout", "nan"), ("--timeout", "1e400"),
    ("--timeout", "1e300"),
])
def test_run_limits_out_of_range_exit_2(language, tmp_path, option, value):
    script = tmp_path / f"a{EXTENSION[language]}"
    script.write_text(pick(language, "return 1", "async function main() { return 1; }"))
    out = polyspell("run", script, option, value)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("configuration/invalid_value: ")
    assert "internal_error" not in out.stderr and out.stdout == ""
    out = polyspell("run", script, option, value, "--json")
    assert out.returncode == 2
    assert json.loads(out.stdout)["error"]["kind"] == "invalid_value"


@pytest.mark.parametrize("value,code", [("99999999999999999999", 0), ("0", 2), ("-1", 2),
                                        ("1e3", 2), ("x", 2)])
def test_plan_max_concurrency_out_of_range(value, code):
    out = polyspell("plan", "scripts/plans/succeeded.toml", "--max-concurrency", value)
    assert out.returncode == code, out.stderr
    assert "internal_error" not in out.stderr


@pytest.mark.parametrize("field", ["timeout = inf", "timeout = nan", "timeout = 1e300"])
def test_a_plans_timeout_out_of_range_is_a_bad_plan(tmp_path, field):
    (tmp_path / "a.lua").write_text("return 1")
    (tmp_path / "p.toml").write_text(f'[[task]]\nid = "a"\nscript = "a.lua"\n{field}\n')
    out = polyspell("plan", tmp_path / "p.toml")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "configuration/invalid_plan" in out.stderr and "field 'timeout'" in out.stderr


# -- a directory as the script; Ctrl-C while tools import --------------------------------

def test_a_directory_given_as_the_script_or_tools_file_is_a_usage_error(language, tmp_path):
    folder = tmp_path / f"x{EXTENSION[language]}"
    folder.mkdir()
    for args in (["run", folder], ["run", folder, "--json"],
                 ["run", tmp_path / "missing.lua"], ["plan", folder], ["tools", "--tools", folder]):
        out = polyspell(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert "internal_error" not in out.stderr + out.stdout
    out = polyspell("run", folder)
    assert "is a directory, not a file" in out.stderr
    (tmp_path / "a.lua").write_text("return 1")
    (tmp_path / "p.toml").write_text(f'[[task]]\nid = "a"\nscript = "{folder.name}"\n')
    out = polyspell("plan", tmp_path / "p.toml")
    assert out.returncode == 2 and "is a directory, not a file" in out.stderr


@pytest.mark.parametrize("command", ["run", "plan", "tools"])
def test_a_keyboard_interrupt_while_tools_import_is_an_interruption(tmp_path, command):
    tools = tmp_path / "ki.py"
    tools.write_text("raise KeyboardInterrupt\n")
    (tmp_path / "a.lua").write_text("return 1")
    (tmp_path / "p.toml").write_text('[[task]]\nid = "a"\nscript = "a.lua"\n')
    target = {"run": [tmp_path / "a.lua"], "plan": [tmp_path / "p.toml"], "tools": []}[command]
    out = polyspell(command, *target, "--tools", tools)
    assert out.returncode == 130, out.stderr
    assert out.stderr.strip().endswith("polyspell: interrupted")
    assert out.stdout == ""
