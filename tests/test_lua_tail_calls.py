"""Lua tail calls and unnamed functions in frames (issue 9, item 13).

A tail call (``return plan(1)``) replaces the caller's frame: Lua's own traceback marks
the place with ``(...tail calls...)``, and so do the frames, with a marker frame that has
no line. A function Lua gives no name is named by its definition, as Lua's traceback does.
"""

from __future__ import annotations

import traceback

from bridge.frames import Frame
from bridge.lua import LuaScript, function_name
from bridge.pytraceback import attach_python_traceback
from bridge.render import format_frame
from tests.test_engine_lua import drive

TAIL = Frame("lua", "agent.lua", None, None, "(...tail calls...)", None)


def _where(frames: list[Frame]) -> list[tuple[int | None, str | None]]:
    return [(f.line, f.function) for f in frames]


def test_an_error_in_a_tail_called_function_shows_where_calls_were_elided() -> None:
    source = """local function plan(n)
  error("boom")
end
local function run()
  return plan(1)
end
run()
"""
    error = drive(source).error
    assert _where(error.frames) == [(7, "main chunk"), (None, "(...tail calls...)"),
                                    (2, "function <agent.lua:1>")]
    assert error.frames[1] == TAIL
    assert "(...tail calls...)" in error.fields["stack_trace"]


def test_a_tool_called_in_a_tail_call_keeps_the_marker() -> None:
    source = """local function fetch()
  return tools.echo{n = 1}
end
local r = fetch()
return r
"""
    run = drive(source, tools={"echo": lambda params: params})
    assert _where(run.requests[0].frames) == [(4, "main chunk"), (None, "(...tail calls...)")]


def test_an_error_table_made_in_a_tail_call_keeps_the_marker() -> None:
    source = """local function make()
  return errors.AgentError{kind = "execution_failed", reason = "r"}
end
error(make())
"""
    error = drive(source).error
    assert error.code == "agent/execution_failed"
    assert _where(error.frames) == [(4, "main chunk"), (None, "(...tail calls...)")]


def test_calls_without_tail_calls_have_no_marker() -> None:
    source = "local function f()\n  error('x')\nend\nf()\n"
    assert _where(drive(source).error.frames) == [(4, "main chunk"), (2, "f")]


def test_a_function_without_a_name_is_named_by_its_definition() -> None:
    assert function_name("in function <agent.lua:12>") == "function <agent.lua:12>"
    assert function_name("in local 'f'") == "f"
    assert function_name("in main chunk") == "main chunk"


def test_a_marker_of_the_prelude_s_own_tail_calls_is_left_out() -> None:
    script = LuaScript("agent.lua", "a\nb\nc\n")
    text = ("stack traceback:\n\t[C]: in function 'error'\n"
            "\t[polyspell]:40: in function <[polyspell]:38>\n\t(...tail calls...)\n"
            "\tagent.lua:3: in main chunk")
    assert _where(script.frames(text)) == [(3, "main chunk")]


def test_a_marker_frame_renders_and_becomes_a_python_traceback_entry_without_a_line() -> None:
    assert format_frame(TAIL) == ["  lua agent.lua, in (...tail calls...)"]
    error = drive("local function f()\n  error('x')\nend\nlocal function g()\n"
                  "  return f()\nend\ng()\n").error
    attach_python_traceback(error)
    printed = "".join(traceback.format_exception(error))
    assert "in (...tail calls...) [lua]" in printed
    entry = printed.split("in (...tail calls...) [lua]")[1].split("\n")[1]
    assert "error('x')" not in entry and "local function f" not in entry
