"""The polyglot traceback as text: order, sources, causes, collapsing and bounds."""

from __future__ import annotations

from bridge import Frame, ScriptError, SpellError, ToolError
from bridge.render import MAX_FRAMES, MAX_MESSAGE_CHARS, render_text

PATH = [
    Frame("javascript", "agent.js", 12, 5, "main", "  const r = await tools.lookup({q});"),
    Frame("host", "<tool call>", None, None, "lookup"),
    Frame("lua", "helpers.lua", 3, None, "lookup", "return tools.search{q = q}"),
    Frame("python", "/srv/tools.py", 40, 9, "search", "raise ValueError(q)"),
]


def test_frames_outermost_first_with_sources_and_the_error_last():
    err = ToolError.ExecutionFailed(tool_name="search", reason="ValueError: q", frames=PATH)
    assert render_text(err).splitlines() == [
        "Traceback (most recent call last):",
        "  javascript agent.js:12:5, in main",
        "    const r = await tools.lookup({q});",
        "  host <tool call>, in lookup",
        "  lua helpers.lua:3, in lookup",
        "    return tools.search{q = q}",
        "  python /srv/tools.py:40:9, in search",
        "    raise ValueError(q)",
        "tool/execution_failed: Tool execution failed: search - ValueError: q",
    ]
    assert err.to_text() == render_text(err)


def test_causes_come_first_as_python_prints_them():
    inner = ToolError.NotFound(tool_name="x", frames=PATH[-1:])
    outer = ScriptError.Lua(error="boom", script="helpers.lua", frames=PATH[2:3])
    outer.__cause__ = inner
    text = render_text(outer)
    first, second = text.split(
        "\n\nThe above exception was the direct cause of the following exception:\n\n")
    assert first.endswith("tool/not_found: Tool not found: x")
    assert second.endswith("script/lua: Lua error in helpers.lua: boom")


def test_repeated_frames_collapse_like_python():
    frame = Frame("lua", "r.lua", 2, None, "recurse", "return recurse(n + 1)")
    err = ScriptError.ResourceExhaustion(language="lua", resource_type="stack",
                                         frames=[PATH[0], *[frame] * 50])
    lines = render_text(err).splitlines()
    assert lines.count("  lua r.lua:2, in recurse") == 3
    assert "  [Previous line repeated 47 more times]" in lines


def test_deep_stacks_and_huge_messages_are_cut_with_a_marker():
    frames = [Frame("lua", "deep.lua", n, None, f"f{n}") for n in range(1, 1001)]
    err = ToolError.NotFound("x" * (MAX_MESSAGE_CHARS * 3), tool_name="t", frames=frames)
    text = render_text(err)
    assert f"[... {1000 - MAX_FRAMES} frames not shown]" in text
    assert "deep.lua:1," in text and "deep.lua:1000," in text and "deep.lua:500," not in text
    assert f"[... {MAX_MESSAGE_CHARS * 2} more characters]" in text
    assert len(text) < 10_000


def test_polyspell_frames_are_hidden_unless_verbose():
    import bridge.errors

    internal = Frame("python", bridge.errors.__file__, 10, None, "from_dict")
    err = ToolError.NotFound(tool_name="t", frames=[PATH[0], internal])
    assert "from_dict" not in render_text(err)
    assert "errors.py:10, in from_dict" in render_text(err, verbose=True)


def test_an_error_without_frames_is_one_line():
    assert render_text(SpellError.wrap(KeyError("k"))) == "runtime/python_exception: KeyError: 'k'"


def test_colour_marks_parts_and_otherwise_changes_nothing():
    import re

    err = ToolError.ExecutionFailed(tool_name="search", reason="boom", frames=PATH)
    coloured = render_text(err, color=True)
    assert "\033[1;31mtool/execution_failed\033[0m" in coloured
    assert re.sub(r"\033\[[\d;]*m", "", coloured) == render_text(err)
    assert "\033[" not in render_text(err)
