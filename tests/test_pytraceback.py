"""Script frames in Python's own tracebacks: traceback module, notes, and pytest."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import traceback

import pytest

from bridge import SpellError, ToolError
from host import Host, tool
from tests.conftest import pick


@tool
def explode(reason: str) -> None:
    raise ValueError(reason)


def failing_run(language: str) -> SpellError:
    source = pick(language,
                  'local function go()\n  local r = tools.explode{reason = "kaput"}\n'
                  "  return r\nend\nlocal r = go()\nreturn r\n",
                  'async function go() {\n  return await tools.explode({reason: "kaput"});\n}\n'
                  "async function main() { return await go(); }\n")
    host = Host([explode], on_output=lambda line: None)
    with pytest.raises(ToolError) as info:
        host.run_source(source, language, f"mem_agent.{language}")
    return info.value


def test_traceback_module_shows_script_frames_as_real_entries(language):
    err = failing_run(language)
    text = "".join(traceback.format_exception(err))
    entry = f'File "mem_agent.{language}", line 2, in go [{language}]'
    assert entry in text
    # the script's own source line, from a script that was never a file on disk
    assert "tools.explode" in text.split(entry, 1)[1].splitlines()[1]
    assert 'File "<tool call>"' in text
    assert "raise ValueError(reason)" in text
    assert "^^^" not in text.split(entry, 1)[1].splitlines()[1]  # no made-up carets
    # the script frames come after the host's (innermost last, as Python prints)
    assert text.index("test_pytraceback.py") < text.index(entry)


def test_the_polyglot_path_is_also_a_note(language):
    err = failing_run(language)
    (note,) = [n for n in err.__notes__ if n.startswith("Polyglot traceback")]
    assert f"{language} mem_agent.{language}:2" in note
    assert "host <tool call>, in explode" in note


def test_frames_are_unchanged_and_json_still_round_trips(language):
    err = failing_run(language)
    frames = err.frames
    assert [f.language for f in frames][-1] == "python"
    assert SpellError.from_json(err.to_json()).frames == frames


def test_pytest_shows_the_script_line(tmp_path):
    test_file = tmp_path / "test_agent_fails.py"
    test_file.write_text(textwrap.dedent('''
        from host import Host, tool

        @tool
        def explode(reason: str) -> None:
            raise ValueError(reason)

        def test_agent():
            source = 'local x = 1\\nlocal r = tools.explode{reason = "kaput"}\\nreturn r\\n'
            Host([explode], on_output=print).run_source(source, "lua", "pytest_agent.lua")
    '''))
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                          str(test_file)], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert out.returncode == 1
    assert "pytest_agent.lua:2" in out.stdout
    assert 'local r = tools.explode{reason = "kaput"}' in out.stdout
