"""The translators' fast paths (issue 17) give what their general paths give.

Lua's ``_parse`` and ``script_traceback`` have a one-scan path for a traceback without
tail-call markers in a script without modules, and both translators convert short digit
runs with ``int`` directly: these tests feed both paths the same odd texts (non-ASCII
digits, numbers past ``MAX_POSITION``, long and blank lines, odd whitespace) and compare.
"""

from __future__ import annotations

import random
import re

import pytest

from bridge.frames import MAX_POSITION, MAX_SOURCE_LINE, position, source_excerpt
from bridge.javascript import read_stack
from bridge.lua import LuaScript, function_name

SOURCE = "\n".join(["local x = 1", "   ", "y" * (MAX_SOURCE_LINE + 50), *["f()"] * 20])
NUMBERS = ["1", "2", "3", "23", "0", "99", "\u0663", "1\u0663", "999999999", "1000000000",
           str(MAX_POSITION), str(MAX_POSITION + 1), "9" * 12, "0" * 20 + "3"]
LUA_LINES = ["stack traceback:", "\t[C]: in ?", "agent.lua:", "\tother.lua:3: in x", "",
             "\tagent.lua:{n}: in function 'f'", " \x0b agent.lua:{n}: in local 'g'\r",
             "\x1cagent.lua:{n}: in main chunk  ", "\u2003agent.lua:{n}:",
             "\tagent.lua:{n} no colon", "\tagent.lua:{n}: in function <agent.lua:{n}>",
             "   ", "\x0b\x0c", "\tagent.lua: in function <agent.lua:{n}>",
             "agent.lua:{n}:{n}: in upvalue 'a:b'", "\t\tagent.lua:{n}::"]


def lua_tracebacks(seed: int, count: int) -> list[str]:
    """Random tracebacks of ``agent.lua`` lines and others, without tail-call markers."""
    rng = random.Random(seed)
    return ["\n".join(rng.choice(LUA_LINES).format(n=rng.choice(NUMBERS))
                      for _ in range(rng.randint(0, 9))) for _ in range(count)]


def slow_script_traceback(script: LuaScript, traceback: str) -> str | None:
    """script_traceback's general path: forced by a module no traceback mentions."""
    general = LuaScript(script.filename, script.source)
    general.add_module("never-named.lua", "")
    return general.script_traceback(traceback)


@pytest.mark.parametrize("seed", range(5))
def test_lua_fast_paths_match_the_general_ones(seed: int) -> None:
    for traceback in lua_tracebacks(seed, 400):
        script = LuaScript("agent.lua", SOURCE)
        assert script._parse(traceback) == script._parse_lines(traceback), traceback
        assert script.script_traceback(traceback) == slow_script_traceback(script, traceback)


def entry_scan(script: LuaScript, traceback: str) -> list[tuple[int | None, str]]:
    """(line, function) of each frame line, found as the translator found them before
    its scan served script_traceback too: ``^\\s*file:(\\d+):(.*)$`` over the text."""
    entry = re.compile(rf"^\s*{re.escape(script.prefix)}(\d+):(.*)$", re.MULTILINE)
    return [(position(number), function_name(what))
            for number, what in reversed(entry.findall(traceback))]


@pytest.mark.parametrize("seed", range(5, 8))
def test_lua_one_scan_finds_the_frames_the_entry_pattern_found(seed: int) -> None:
    for traceback in lua_tracebacks(seed, 400):
        script = LuaScript("agent.lua", SOURCE)
        frames = script.frames(traceback)
        assert [(f.line, f.function) for f in frames] == entry_scan(script, traceback)


def test_lua_script_traceback_rescans_another_traceback() -> None:
    script = LuaScript("agent.lua", SOURCE)
    first, second = "\tagent.lua:1: in main chunk", "\tagent.lua:3: in local 'g'"
    script.frames(first)
    assert script.script_traceback(second) == "stack traceback:\n" + second
    assert script.script_traceback(first) == "stack traceback:\n" + first


def test_lua_frames_refuse_what_position_refuses() -> None:
    script = LuaScript("agent.lua", SOURCE)
    text = "\n".join(f"\tagent.lua:{n}: in function 'f'" for n in NUMBERS)
    lines = [frame.line for frame in script.frames(text)]
    assert lines == [position(n) for n in reversed(NUMBERS)]
    assert None in lines and 999999999 in lines  # some refused, the longest short one kept


def test_lua_long_source_line_is_cut() -> None:
    frames = LuaScript("agent.lua", SOURCE).frames("\tagent.lua:3: in main chunk")
    assert frames[0].source == source_excerpt(SOURCE.splitlines()[2])
    assert len(frames[0].source) < MAX_SOURCE_LINE + 10
    assert LuaScript("agent.lua", SOURCE).frames("\tagent.lua:2: in x")[0].source == ""


@pytest.mark.parametrize("line", NUMBERS)
@pytest.mark.parametrize("column", ["1", "7", "\u0667", "9" * 11])
def test_js_positions_match_position(line: str, column: str) -> None:
    stack = f"    at f (<input>:{line}:{column})\n    at <eval> (<input>:2:1)\n"
    frames, _ = read_stack(stack, "agent.js", SOURCE.splitlines())
    inner = frames[-1]
    assert (inner.line, inner.column) == (position(line), position(column))
    number = position(line)
    expected = (source_excerpt(SOURCE.splitlines()[number - 1], position(column))
                if number is not None and 0 < number <= len(SOURCE.splitlines()) else None)
    assert inner.source == expected
    assert frames[0].source is None  # line 2 is blank


def test_the_lua_traceback_scan_finds_each_line_the_line_anchored_pattern_finds() -> None:
    # the scan searches for a line break then the file's name (a literal first character
    # is found by scanning for it); a pattern anchored at each line's start is the spec
    script = LuaScript("deep.lua", "return 1\n")
    spec = re.compile(r"^([^\S\n]*deep\.lua:(?:(\d+):([^\n]*)|[^\n]*))", re.MULTILINE)
    pieces = ["deep.lua:", "\n", "\t", " ", "12", ":", "x", "\r", "deep.lua:7: in f",
              "\u2028", "\x0b", "\u0663", "stack traceback:", "other.lua:3:"]
    rng = random.Random(17)
    texts = ["", "\n", "deep.lua:1: x", "\tdeep.lua:2: in main chunk\n"]
    texts += ["".join(rng.choices(pieces, k=rng.randint(0, 14))) for _ in range(3000)]
    for text in texts:
        assert script._own_scan(text) == spec.findall(text), text


# The frames' loop reads a line's number and function once per line text
# (bridge.lua._KNOWN_LINES, by the file's scan): what it remembers must never leak into
# another file's reading, another script's source lines, or survive being emptied wrongly.


def general_frames(script: LuaScript, traceback: str) -> list:
    """The frames by the line-by-line path (forced: a module no traceback names)."""
    general = LuaScript(script.filename, script.source, short_src=script.short_src)
    general.add_module("never-named.lua", "")
    return general.frames(traceback)


def test_a_remembered_line_is_read_again_for_another_file_name() -> None:
    # the same text is a frame of deep.lua's line 12, and a line (not a frame) of a
    # file Lua calls "deep.lua:12"
    text = "stack traceback:\n\tdeep.lua:12: in function 'f'\n\tdeep.lua:12:3: in x"
    source = "\n".join(f"line{n}()" for n in range(1, 20))
    for _ in range(2):
        for name in ("deep.lua", "deep.lua:12", "deep.lua"):
            script = LuaScript(name, source)
            frames = script.frames(text)
            assert frames == general_frames(script, text), name
            assert script.script_traceback(text) == slow_script_traceback(script, text)
    assert [f.line for f in LuaScript("deep.lua", source).frames(text)] == [12, 12]
    assert [f.line for f in LuaScript("deep.lua:12", source).frames(text)] == [3]


def test_a_remembered_line_takes_each_script_s_own_source() -> None:
    text = "stack traceback:\n\tagent.lua:30: in local 'g'\n\tagent.lua:2: in main chunk"
    long_source = "\n".join(f"call{n}()" for n in range(1, 41))
    for source in (long_source, "a()\nb()\nc()", long_source, "x = 1\n\n   y = 2   "):
        script = LuaScript("agent.lua", source)
        frames = script.frames(text)
        assert frames == general_frames(script, text)
    assert LuaScript("agent.lua", long_source).frames(text)[1].source == "call30()"
    assert LuaScript("agent.lua", "a()\nb()").frames(text)[1].source is None


@pytest.mark.parametrize("seed", range(3))
def test_the_remembered_lines_emptied_when_full_read_the_same(seed: int,
                                                             monkeypatch) -> None:
    import bridge.lua

    monkeypatch.setattr(bridge.lua, "MAX_KNOWN_LINES", 3)
    monkeypatch.setattr(bridge.lua, "_KNOWN_LINES", {})
    for traceback in lua_tracebacks(seed, 300):
        script = LuaScript("agent.lua", SOURCE)
        assert script.frames(traceback) == general_frames(script, traceback), traceback
        assert len(bridge.lua._KNOWN_LINES) <= 3


def test_odd_lines_read_the_same_through_the_remembered_reading() -> None:
    # lone surrogates, CR, forged frame text inside a function's name, long names,
    # numbers past MAX_POSITION and non-ASCII digits, each read twice (the second time
    # from what was remembered)
    lines = ["\tagent.lua:2: in function 'a\ud800b'", "\tagent.lua:3: in local 'x\r'",
             "\tagent.lua:1: in function 'agent.lua:99: in main chunk'",
             "\tagent.lua:4: in field '" + "n" * 5000 + "'",
             f"\tagent.lua:{MAX_POSITION + 1}: in upvalue 'u'", "\tagent.lua:\u0663: in f",
             "\tagent.lua:0: in f", "\tagent.lua:5:", "agent.lua: in ?", "\tagent.lua:6: \ud800"]
    text = "stack traceback:\n" + "\n".join(lines)
    for _ in range(2):
        script = LuaScript("agent.lua", "one()\ntwo()\n\ud800three()\n" + "y" * 400)
        frames = script.frames(text)
        assert frames == general_frames(script, text)
        assert script.script_traceback(text) == slow_script_traceback(script, text)
    assert [f.function for f in frames][-3:] == [
        "agent.lua:99: in main chunk", "x\r", "a\ud800b"]
    # a long line is read every time, never kept
    import bridge.lua

    assert lines[3] not in bridge.lua._KNOWN_LINES and lines[0] in bridge.lua._KNOWN_LINES


def test_the_remembered_lines_read_the_same_from_many_threads(monkeypatch) -> None:
    import threading

    import bridge.lua

    monkeypatch.setattr(bridge.lua, "MAX_KNOWN_LINES", 5)
    tracebacks = lua_tracebacks(11, 200)
    expected = [general_frames(LuaScript("agent.lua", SOURCE), t) for t in tracebacks]
    failures = []

    def work() -> None:
        for traceback, frames in zip(tracebacks, expected, strict=True):
            if LuaScript("agent.lua", SOURCE).frames(traceback) != frames:
                failures.append(traceback)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def without_context(data: dict) -> dict:
    """An error's JSON less its context (an id and a time of its own)."""
    return {key: value for key, value in data.items() if key != "context"}


def test_a_real_deep_lua_error_translates_as_by_the_general_path() -> None:
    # a real engine's traceback, 20 frames deep (Lua keeps 10 + 11 levels), translated
    # twice by the fast path (the second time from remembered lines) and by the general one
    import lupa.lua54 as lupa

    from bridge.lua import thrown_error
    from bridge.patterns import patterns

    source = "\n".join([f"function f{n}() local x = f{n + 1}() return x end" for n in range(1, 20)]
                       + ["function f20() error('deep failure') end", "local r = f1() return r"])
    runtime = lupa.LuaRuntime(register_eval=False, register_builtins=False)
    capture = runtime.eval("function(src) local chunk = load(src, '@deep.lua') "
                           "local msg, tb xpcall(chunk, function(m) msg = m "
                           "tb = debug.traceback(nil, 2) end) return msg, tb end")
    message, traceback = capture(source)
    general = LuaScript("deep.lua", source)
    general.add_module("never-named.lua", "")
    slow = thrown_error(general, message, "string", None, traceback, patterns=patterns)
    for _ in range(2):
        fast = thrown_error(LuaScript("deep.lua", source), message, "string", None, traceback,
                            patterns=patterns)
        assert fast.frames == slow.frames
        assert without_context(fast.to_dict()) == without_context(slow.to_dict())
    assert [f.line for f in fast.frames][-3:] == [18, 19, 20]
    assert fast.frames[-1].source == "function f20() error('deep failure') end"
    assert fast.fields["script_line"] == 20


def test_js_frames_read_the_same_when_their_parts_are_remembered(monkeypatch) -> None:
    """read_stack remembers what it read from a frame's parts (line, column, name): a
    stack read again, under another file name or source, or after the memory was emptied
    when full, gives the frames a first reading gives; long names are not remembered."""
    import bridge.javascript as js

    names = ["f", "<eval>", "", "a.b", "x" * 600, "polyspell$x", "\u0663"]
    rng = random.Random(7)
    stacks = ["\n".join(f"    at {rng.choice(names)} ({rng.choice(['<input>', 'b.js'])}:"
                        f"{rng.choice(NUMBERS)}:{rng.choice(NUMBERS)})"
                        for _ in range(rng.randint(1, 6))) for _ in range(200)]
    sources = [SOURCE.splitlines(), ["one"], None]

    def expected(stack: str) -> list[tuple]:  # each frame's reading, made by hand
        return [(position(line), position(column), {"<eval>": "<script>", "": "<anonymous>"}
                 .get(function, function))
                for function, _, line, column in reversed(js._FRAMES.findall(stack))
                if not function.startswith("polyspell$")]

    monkeypatch.setattr(js, "MAX_KNOWN_AT", 64)  # emptied often
    for stack in stacks:
        for name in ("agent.js", "b.js"):
            for lines in sources:
                first = read_stack(stack, name, lines)[0]
                again = read_stack(stack, name, lines)[0]  # from memory
                assert again == first
                assert [(f.line, f.column, f.function) for f in again] == expected(stack)
                assert len(js._KNOWN_AT) <= 64
    assert not any(len(found[0]) > 512 for found in js._KNOWN_AT)
