"""What the CLI writes where, and the exit code of bad command lines.

stdout holds only the result (``run`` and ``plan``, with or without ``--json``): what
Python code prints during a run goes to stderr. Numbers out of range, non-finite limits,
a directory given as the script and a Ctrl-C while tools load are usage errors or an
interruption, never ``runtime/internal_error``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import EXTENSION, pick

ROOT = Path(__file__).resolve().parent.parent
POLYSPELL = shutil.which("polyspell")
pytestmark = pytest.mark.skipif(POLYSPELL is None, reason="polyspell is not installed")

NOISY_TOOLS = (
    "import sys\nfrom host import tool\n\nprint('noise while importing')\n\n"
    "@tool\ndef noisy(n: int) -> int:\n    \"\"\"Prints, then answers.\"\"\"\n"
    "    print('debug from tool', n)\n    sys.stdout.write('raw write\\n')\n"
    "    sys.stdout.flush()\n    return n + 1\n")


def polyspell(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([POLYSPELL, *map(str, args)], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


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
