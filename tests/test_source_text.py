"""Source text as it is: Lua sources that are not UTF-8, minified lines in tracebacks, and
the sandbox's hints on what it removed (issue 15, items 5 and 6).

Real engines and real files; the end-to-end tests run in both isolation modes.
"""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path

import pytest

from bridge import ConfigurationError, ScriptError
from bridge.frames import CUT, MAX_SOURCE_LINE, source_excerpt
from engines.lua import SANDBOX_HINTS
from host import Host
from tests.cli import polyspell

LATIN1 = b'local s = "caf\xe9"\nlocal n = #s\n'


def quiet_host(**kwargs: object) -> Host:
    return Host(on_output=lambda line: None, **kwargs)  # type: ignore[arg-type]


# -- Lua source that is not UTF-8 ------------------------------------------------------


@pytest.mark.usefixtures("isolation")
def test_a_latin1_lua_script_runs_with_its_bytes_as_they_are(tmp_path: Path) -> None:
    script = tmp_path / "latin.lua"
    script.write_bytes(LATIN1 + b"return {n = n, last = s:byte(4), same = s == 'caf\\xe9'}\n")
    with quiet_host() as host:
        result = host.run(script)
    assert result == {"n": 4, "last": 0xE9, "same": True}


@pytest.mark.usefixtures("isolation")
def test_a_latin1_line_in_a_traceback_shows_the_replacement_character(tmp_path: Path) -> None:
    script = tmp_path / "latin.lua"
    script.write_bytes(LATIN1 + b'error("no \xe9 here")\n')
    with quiet_host() as host, pytest.raises(ScriptError.Lua) as caught:
        host.run(script)
    err = caught.value
    assert err.frames[-1].line == 3
    assert err.frames[-1].source == 'error("no \ufffd here")'
    assert err.fields["script_line"] == 3
    json.dumps(err.to_dict(), allow_nan=False).encode("utf-8")  # strict, encodable JSON
    shown = "".join(traceback.format_exception(err))
    assert 'error("no \ufffd here")' in shown


def test_a_latin1_module_and_tools_file_load_as_bytes(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "accents.lua").write_bytes(b'return {word = "na\xefve"}\n')
    tools = tmp_path / "tools.lua"
    tools.write_bytes(b'return {mark = function() return #"\xe9t\xe9" end}\n')
    script = tmp_path / "main.lua"
    script.write_text('local a = require "accents"\n'
                      'return {len = #a.word, fourth = a.word:byte(3), mark = tools.mark()}\n')
    with quiet_host(libraries=[lib], tools=[tools]) as host:
        assert host.run(script) == {"len": 5, "fourth": 0xEF, "mark": 3}


@pytest.mark.parametrize("suffix", [".js", ".mjs"])
def test_a_javascript_file_that_is_not_utf8_is_refused_clearly(tmp_path: Path,
                                                               suffix: str) -> None:
    script = tmp_path / f"latin{suffix}"
    script.write_bytes(b'const s = "caf\xe9";\n')
    with quiet_host() as host, pytest.raises(ConfigurationError.LoadFailed) as caught:
        host.run(script)
    assert "not UTF-8 text" in str(caught.value)


def test_a_surrogate_that_stands_for_no_byte_is_still_not_lua_source() -> None:
    with quiet_host() as host, pytest.raises(ScriptError.CompilationFailed) as caught:
        host.run_source('local s = "\ud800"\n', "lua")
    assert "lone surrogate" in str(caught.value)


def test_the_cli_runs_a_latin1_script(tmp_path: Path) -> None:
    script = tmp_path / "latin.lua"
    script.write_bytes(LATIN1 + b"return n\n")
    done = polyspell("run", str(script), "--no-record")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "4"


# -- minified lines --------------------------------------------------------------------


def test_an_excerpt_keeps_the_text_around_the_column() -> None:
    line = "  " + "".join(chr(ord("a") + i % 26) for i in range(2000)) + "  "
    assert source_excerpt("  short line  ") == "short line"
    assert source_excerpt("   ") is None
    start = source_excerpt(line)
    assert start is not None and start.startswith("abc") and start.endswith(CUT)
    middle = source_excerpt(line, 1000)
    assert middle is not None and middle.startswith(CUT) and middle.endswith(CUT)
    assert line[999] in middle and len(middle) == MAX_SOURCE_LINE + 2 * len(CUT)
    assert middle[len(CUT):-len(CUT)] in line
    end = source_excerpt(line, 2001)
    assert end is not None and end.startswith(CUT) and end.endswith(line.rstrip()[-20:])
    assert source_excerpt(line, 10**9) == end  # a column past the line: its end


@pytest.mark.usefixtures("isolation")
def test_a_minified_javascript_frame_shows_the_text_around_its_column(tmp_path: Path) -> None:
    filler = "function f(x){return x+1};" * 200
    script = tmp_path / "bundle.min.js"
    script.write_text(filler + "function boom(){throw new Error('deep here')};boom();\n")
    with quiet_host() as host, pytest.raises(ScriptError.Javascript) as caught:
        host.run(script)
    err = caught.value
    inner = err.frames[-1]
    assert inner.function == "boom" and inner.line == 1 and inner.column > len(filler)
    assert inner.source is not None and "throw new Error('deep here')" in inner.source
    assert inner.source.startswith(CUT) and len(inner.source) <= MAX_SOURCE_LINE + 2 * len(CUT)
    data = err.to_dict()
    assert all(len(frame["source"]) <= MAX_SOURCE_LINE + 2 * len(CUT)
               for frame in data["frames"] if frame["source"])
    assert "throw new Error('deep here')" in "".join(traceback.format_exception(err))


def test_a_minified_lua_line_shows_its_start_cut() -> None:
    source = "local function f(x) return x + 1 end " * 100 + "local t = nil; local y = t.x\n"
    with quiet_host() as host, pytest.raises(ScriptError.Lua) as caught:
        host.run_source(source, "lua", "bundle.lua")
    frame = caught.value.frames[-1]
    assert frame.source is not None and frame.source.startswith("local function f(x)")
    assert frame.source.endswith(CUT) and len(frame.source) == MAX_SOURCE_LINE + len(CUT)
    shown = "".join(traceback.format_exception(caught.value))
    assert source[:MAX_SOURCE_LINE + 1] not in shown  # no line of the bundle printed whole


# -- the sandbox's hints ---------------------------------------------------------------


@pytest.mark.parametrize("code, name, lua_message", [
    ("local f = io.open('x')", "io", "attempt to index a nil value (global 'io')"),
    ("debug.traceback()", "debug", "attempt to index a nil value (global 'debug')"),
    ("loadfile('x')", "loadfile", "attempt to call a nil value (global 'loadfile')"),
    ("dofile('x')", "dofile", "attempt to call a nil value (global 'dofile')"),
    ("os.execute('ls')", "os.execute", "attempt to call a nil value (field 'execute')"),
    ("local home = os.getenv('HOME')", "os.getenv",
     "attempt to call a nil value (field 'getenv')"),
    ("local f = string.dump(print)", "string.dump", "attempt to call a nil value (field 'dump')"),
    ("package.path = package.path .. ';x/?.lua'", "package.path",
     "attempt to concatenate a nil value (field 'path')"),
    ("package.loadlib('x', 'y')", "package.loadlib",
     "attempt to call a nil value (field 'loadlib')"),
])
def test_a_script_failing_on_what_the_sandbox_removed_gets_one_line_of_hint(
        code: str, name: str, lua_message: str) -> None:
    with quiet_host() as host, pytest.raises(ScriptError.Lua) as caught:
        host.run_source(code + "\n", "lua", "agent.lua")
    message, hint = caught.value.fields["error"].split("\n")
    assert message == lua_message  # Lua's own words first
    assert hint == SANDBOX_HINTS[name] and "sandbox" in hint
    assert caught.value.category == "script" and caught.value.fields["script_line"] == 1


def test_the_hints_say_what_to_do_instead() -> None:
    assert "--sandbox trusted" in SANDBOX_HINTS["io"]
    assert "--lib DIR" in SANDBOX_HINTS["package.path"]
    assert "tool" in SANDBOX_HINTS["os.execute"]


def test_no_hint_for_a_field_of_another_table_or_in_the_trusted_sandbox() -> None:
    with quiet_host() as host, pytest.raises(ScriptError.Lua) as caught:
        host.run_source("local t = {}\nt.execute()\n", "lua")
    assert caught.value.fields["error"] == "attempt to call a nil value (field 'execute')"
    with quiet_host(sandbox="trusted") as host, pytest.raises(ScriptError.Lua) as caught:
        host.run_source("local x = nil\nx.y = io.nothing.z\n", "lua")
    assert "\n" not in caught.value.fields["error"]


def test_the_cli_shows_the_hint_under_the_message(tmp_path: Path) -> None:
    script = tmp_path / "agent.lua"
    script.write_text("local text = io.read('a')\n")
    done = polyspell("run", str(script), "--no-record")
    assert done.returncode != 0
    assert "attempt to index a nil value (global 'io')" in done.stderr
    assert "\n    (this is polyspell's sandbox: io is removed;" in done.stderr


# -- a file name that is not UTF-8 (red team) ---------------------------------------------


@pytest.mark.usefixtures("isolation")
def test_a_latin1_file_name_is_recorded_by_the_monitor(tmp_path: Path) -> None:
    """Python carries a file name that is not UTF-8 with surrogate escapes; SQLite (text
    is UTF-8) must not see them: the error is recorded, its name with U+FFFD."""
    from host.monitor import Monitor

    folder = os.fsdecode(bytes(tmp_path)) + os.fsdecode(b"/caf\xe9")
    os.mkdir(folder)
    script = Path(folder) / "agent.lua"
    script.write_bytes(b'error("boom")\n')
    monitor = Monitor(tmp_path / "errors.db")
    try:
        with quiet_host(monitor=monitor) as host, pytest.raises(ScriptError):
            host.run(script)
        assert monitor.flush()
        (record,) = monitor.store.records(limit=10)
        assert record["file"].endswith("caf\ufffd/agent.lua")
        assert "caf\ufffd/agent.lua" in record["message"]
    finally:
        monitor.close()
