"""Frames a script forges: which files their source lines come from, and what they cost.

A JS error's ``stack`` is text the script can set, and a Lua traceback carries names a
script chose (chunk names given to ``load``, function names made of any string). Script
frames may name any file and line; Python's traceback machinery must still show only text
the host itself loaded, and building a frame costs the same for any line number.
"""

from __future__ import annotations

import json
import linecache
import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path

import pytest

import host.runner
from bridge import BridgeError, Frame, SpellError
from bridge.frames import MAX_POSITION, frame_from_data
from bridge.pytraceback import UNLOADED_FILE, attach_python_traceback
from host import Host
from tests.conftest import pick

SECRET = "TOP-SECRET-LINE do not show"
RUNNER = host.runner.__file__


def run_error(language: str, source: str, name: str = "agent") -> SpellError:
    with pytest.raises(SpellError) as info:
        Host(on_output=lambda line: None).run_source(source, language,
                                                     f"{name}.{pick(language, 'lua', 'js')}")
    return info.value


def forged_stack_source(language: str, file: str, line: int | str = 1) -> str:
    """A script whose error names ``file`` at ``line`` in its frames."""
    if language == "javascript":
        return (f'const e = new Error("x");\n'
                f'e.stack = "    at steal ({file}:{line}:1)\\n    at <eval> (<input>:1:1)\\n";\n'
                f"throw e;\n")
    # a Lua chunk named after the file, and a function name that forges a traceback line
    return (f'local f = load("error(\'boom\')", {json.dumps("@" + file)})\n'
            f"local t = {{}}\n"
            f't["x\'\\n\\t{file}:{line}: in function \'y"] = function() f() end\n'
            f't["x\'\\n\\t{file}:{line}: in function \'y"]()\n')


def forged_error(language: str, file: str, name: str = "agent") -> SpellError:
    """The error of a run of :func:`forged_stack_source`, checked to name ``file`` (so the
    forgery ran: an error of another cause would show no file and prove nothing)."""
    err = run_error(language, forged_stack_source(language, file), name=name)
    if language == "javascript":
        assert any(frame.file == file for frame in err.frames), err.frames
    else:  # Lua names the forged chunk (shortened if long) in the message, not in a frame
        assert err.fields["error"].endswith(f"{Path(file).name}:1: boom"), err.fields
    return err


def every_text(err: SpellError) -> str:
    """What the error shows through every consumer: traceback, notes, text, JSON."""
    return "\n".join(["".join(traceback.format_exception(err)), err.to_text(),
                      err.to_json(), *getattr(err, "__notes__", [])])


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text(f"{SECRET}\nsecond line\n")
    return path


def test_a_script_cannot_make_tracebacks_show_a_host_file(language, secret_file):
    for file in (str(secret_file), "/etc/passwd"):
        err = forged_error(language, file)
        text = every_text(err)
        assert SECRET not in text
        assert "root:" not in text
        if language == "javascript":  # the frame keeps the name as data, marked in Python's
            assert any(frame.file == file and frame.source is None for frame in err.frames)
            assert f'File "{UNLOADED_FILE.format(file)}", line 1, in steal' in text


def test_a_script_cannot_change_what_tracebacks_show_for_a_python_file(language):
    first = linecache.getline(RUNNER, 1)
    assert first  # the real first line of host/runner.py
    relative = str(Path(RUNNER).relative_to(Path(RUNNER).parent.parent))
    for file in (RUNNER, relative, "os.py"):
        err = forged_error(language, file, name="runner")
        assert '"""One run of one script' not in "".join(traceback.format_exception(err))
    assert linecache.getline(RUNNER, 1) == first
    assert linecache.cache[RUNNER][1] is not None  # still the file's own entry, from disk


def test_the_scripts_own_lines_still_show(language):
    source = pick(language, 'local x = 1\nlocal y = nil\nreturn y.z\n',
                  'const x = 1;\nconst y = null;\ny.z;\n')
    err = run_error(language, source, name="own_lines")
    text = "".join(traceback.format_exception(err))
    assert f'File "own_lines.{pick(language, "lua", "js")}", line 3' in text
    assert pick(language, "return y.z", "y.z;") in text
    linecache.clearcache()  # what a test runner or a debugger may do
    err = run_error(language, source, name="own_lines")
    assert pick(language, "return y.z", "y.z;") in "".join(traceback.format_exception(err))


def test_a_script_cannot_show_another_runs_source(language):
    other = pick(language, f'-- {SECRET}\nerror("x")\n', f'// {SECRET}\nthrow new Error("x");\n')
    run_error(language, other, name="other_run")  # the host loaded it, for another run
    file = f"other_run.{pick(language, 'lua', 'js')}"
    err = forged_error(language, file)
    assert SECRET not in "".join(traceback.format_exception(err))


def test_an_error_read_from_json_shows_no_file_it_names(secret_file):
    data = {"category": "script", "kind": "javascript",
            "message": "x", "fields": {"error": "x"},
            "frames": [{"language": "javascript", "file": str(secret_file), "line": 1}]}
    err = attach_python_traceback(SpellError.from_json(json.dumps(data)))
    assert SECRET not in every_text(err)


def test_pytest_does_not_show_a_file_a_script_names(tmp_path, secret_file):
    test_file = tmp_path / "test_forged.py"
    test_file.write_text(textwrap.dedent(f'''
        from host import Host

        def test_agent():
            source = {forged_stack_source("javascript", str(secret_file))!r}
            Host(on_output=print).run_source(source, "js", "forged.js")
    '''))
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                          str(test_file)], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert out.returncode == 1
    assert "steal" in out.stdout
    assert SECRET not in out.stdout + out.stderr


# -- item 3: forged line numbers -----------------------------------------------------


@pytest.mark.parametrize("line", [10**8, 2**31 - 1, 2**40, "9" * 5000],
                         ids=["1e8", "2**31-1", "2**40", "5000 digits"])
def test_a_forged_line_number_costs_nothing(language, line):
    started = time.monotonic()
    own = pick(language, "agent.lua", "agent.js")  # Lua keeps frames of its own file only
    err = run_error(language, forged_stack_source(language, own, line), name="agent")
    text = "".join(traceback.format_exception(err))
    assert time.monotonic() - started < 5  # before: 4 to 60 s, or OverflowError past 2**31
    forged = [frame for frame in err.frames if frame.function in ("y", "steal")]
    assert forged
    for frame in forged:  # a line past MAX_POSITION is not a line: unknown
        assert frame.line == (line if isinstance(line, int) and line <= MAX_POSITION else None)
    assert err.code == pick(language, "script/lua", "script/javascript")
    assert "Traceback" in text


def test_a_lua_message_with_a_strange_line_number_is_a_script_error():
    for line in ("\\u{B2}", "9" * 5000, str(2**40)):  # a superscript two: isdigit() but no int
        err = run_error("lua", f'error("agent.lua:{line}: boom", 0)')
        assert err.code == "script/lua"


def test_frames_keep_their_real_lines_in_python_tracebacks(language):
    lines = "\n" * 40
    source = lines + pick(language, "local t = nil\nreturn t.x\n", "const t = null;\nt.x;\n")
    err = run_error(language, source, name="real_lines")
    entries = traceback.extract_tb(err.__traceback__)
    script = [entry for entry in entries if entry.filename.startswith("real_lines.")]
    assert [entry.lineno for entry in script][-1] == 42
    assert script[-1].line == pick(language, "return t.x", "t.x;")


def test_frames_from_json_must_have_sane_positions():
    for bad in (-1, MAX_POSITION + 1, 10**100):
        for key in ("line", "column"):
            with pytest.raises(ValueError, match=key):
                frame_from_data({"language": "lua", "file": "a.lua", key: bad})
    assert frame_from_data({"language": "lua", "file": "a.lua", "line": MAX_POSITION}).line \
        == MAX_POSITION
    data = {"category": "script", "kind": "lua", "message": "x", "fields": {"error": "x"},
            "frames": [{"language": "lua", "file": "a.lua", "line": 10**12}]}
    with pytest.raises(BridgeError.DeserializationFailed) as info:
        SpellError.from_json(json.dumps(data))
    assert info.value.fields["path"] == "$.frames[0].line"
    assert "line" in str(info.value)


def test_a_frame_built_in_code_with_an_absurd_line_still_attaches():
    err = SpellError.wrap(ValueError("x"))
    err.frames = [Frame("lua", "a.lua", 2**40, None, "f"), Frame("lua", "a.lua", -5, None, "g")]
    started = time.monotonic()
    text = "".join(traceback.format_exception(attach_python_traceback(err)))
    assert time.monotonic() - started < 5
    assert "in f [lua]" in text and "in g [lua]" in text


@pytest.mark.parametrize("language", ["lua", "javascript"])
def test_a_message_cannot_print_lines_that_pass_for_the_tracebacks_own(language):
    forged = ("bad\\nTraceback (most recent call last):\\n  python /etc/passwd:1, in forged"
              "\\n\\x1b[31mred")
    source = {"lua": f'error("{forged}")',
              "javascript": f'throw new Error("{forged}");'}[language]
    with pytest.raises(SpellError) as info:
        Host([]).run_source(source, language, "forge")
    text = info.value.to_text()
    assert "\x1b" not in text  # no terminal escape reaches the output
    code_line = next(i for i, line in enumerate(text.splitlines())
                     if line.startswith(info.value.code))
    for line in text.splitlines()[code_line + 1:]:
        assert line.startswith("    ") or line.startswith("hook:") or not line, line
    assert text.splitlines().count("Traceback (most recent call last):") == 1
