"""Lua errors, as plain data, translated into unified errors (the Lua half of the bridge).

The Lua engine hands over only strings and JSON-like data: error messages such as
``agent.lua:12: attempt to index a nil value (local 'x')``, ``debug.traceback`` text, and
the value a script gave to ``error()`` (already copied into JSON-like data inside Lua).
This module turns them into :class:`~bridge.errors.SpellError` values with script frames.
It imports neither lupa nor the engines, so it can be tested, and reused by a worker
process, on its own.

Lua names a file in messages and tracebacks by its *short source*: the file name, or
``...`` plus its last 56 bytes when the name is 60 bytes or longer. :class:`LuaScript`
keeps both names and matches on the short one. A script's modules (``require``) are
chunks of their own files: :meth:`LuaScript.add_module` registers each one's name and
text, so that its frames, source lines and ``script_line`` are its own.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.envelope import error_from_script
from bridge.errors import SpellError
from bridge.frames import MAX_SOURCE_LINE, Frame, position, source_excerpt
from bridge.hierarchy import ScriptError
from bridge.jsontext import finite
from bridge.patterns import PatternRegistry, recognise

TRACEBACK_HEADER = "stack traceback:"
TAIL_CALLS = "(...tail calls...)"  # where Lua's traceback elided the callers of a tail call
MAX_CACHED_TRACEBACKS = 256
_DESCRIBE_LIMIT = 200


@dataclass
class LuaScript:
    """The script being run, as the translator sees it: its names, its lines, a frame cache.

    ``short_src`` is how Lua itself names the file (see the module docstring); the
    engine asks Lua for it when the file name is long, else it is the file name. The
    modules the script loaded (:meth:`add_module`) are LuaScripts of their own, found by
    their short names in tracebacks and messages.
    """

    filename: str
    source: str
    short_src: str = ""
    language: str = "lua"  # what frames and errors name: the engine's (a Lua version's) name
    _lines: list[str] | None = field(default=None, repr=False)
    _frames: dict[str, tuple[Frame, ...]] = field(default_factory=dict, repr=False)
    _scan: _Scan | None = field(default=None, repr=False)
    # the last traceback _parse scanned, with the lines the scan found: script_traceback,
    # which thrown_error asks for right after the frames, reuses them
    _last_scan: tuple[str, list[str]] | None = field(default=None, repr=False)
    _modules: dict[str, LuaScript] = field(default_factory=dict, repr=False)
    _all_prefixes: tuple[str, ...] | None = field(default=None, repr=False)
    _prefixes_of: str | None = field(default=None, repr=False)  # the short_src they are for

    def __post_init__(self) -> None:
        if not self.short_src:
            self.short_src = self.filename

    @property
    def prefix(self) -> str:
        """What every message and traceback line about this file starts with."""
        return self.short_src + ":"

    def add_module(self, filename: str, source: str, short_src: str = "") -> LuaScript:
        """Register a module's file (the host loaded ``source`` under ``filename``; Lua
        calls it ``short_src``): its frames and messages are then its own. Returns it."""
        module = LuaScript(filename=filename, source=source, short_src=short_src,
                           language=self.language)
        if module.short_src == self.short_src:
            return self
        known = self._modules.get(module.short_src)
        if known is not None and known.source == source:
            return known
        self._modules[module.short_src] = module
        self._scan = self._all_prefixes = self._last_scan = None
        self._frames.clear()
        return module

    def _owner(self, short_src: str) -> LuaScript:
        return self if short_src == self.short_src else self._modules.get(short_src, self)

    def _prefixes(self) -> tuple[str, ...]:
        """What the lines of this script's files start with: its own, then its modules'."""
        prefixes = self._all_prefixes
        # made again when short_src was set after they were made (the engine sets it)
        if prefixes is None or self._prefixes_of is not self.short_src:
            prefixes = self._all_prefixes = (
                self.prefix, *(module.prefix for module in self._modules.values()))
            self._prefixes_of = self.short_src
        return prefixes

    def line_text(self, line: int | None) -> str | None:
        """The source text of a 1-based line, stripped, or None when there is no such line."""
        if line is None:
            return None
        if self._lines is None:
            self._lines = self.source.splitlines()
        if 1 <= line <= len(self._lines):
            return source_excerpt(self._lines[line - 1]) or ""
        return None

    def frame(self, line: int | None, function: str) -> Frame:
        """A Lua frame of this script."""
        return Frame(self.language, self.filename, line, None, function, self.line_text(line))

    def frames(self, traceback: str | None) -> list[Frame]:
        """The script's own frames in ``debug.traceback`` text, outermost first.

        Frames of other chunks (the engine's prelude, ``load``ed strings) and of C
        functions are left out. Where Lua elided the callers of a tail call, a frame
        without a line named ``(...tail calls...)`` stands (for a marker that follows a
        script frame or starts a traceback: the prelude's own tail calls are not the
        script's business). Several tracebacks may be concatenated, innermost first
        (a coroutine's, then the one that resumed it). Results are cached per text,
        since a tool called in a loop gives the same traceback every time.
        """
        if not traceback:
            return []
        cached = self._frames.get(traceback)
        if cached is None:
            if len(self._frames) >= MAX_CACHED_TRACEBACKS:
                self._frames.clear()
            cached = self._frames[traceback] = tuple(self._parse(traceback))
        return list(cached)

    def _parse(self, traceback: str) -> list[Frame]:
        if self._lines is None:
            self._lines = self.source.splitlines()
        if TAIL_CALLS in traceback or self._modules:
            return self._parse_lines(traceback)
        # one scan of the whole traceback finds this file's lines, each with its line
        # number and description when it is a frame ("\tagent.lua:12: in ..."), the
        # other ones ("agent.lua: in ...") with none: script_traceback keeps them all
        found = self._own_lines(traceback)
        self._last_scan = (traceback, found)
        lines, count, file, language = (self._lines, len(self._lines), self.filename,
                                        self.language)
        scan, known = self._scan, _KNOWN_LINES
        frames = []
        for text in found:  # as frame(), without its calls
            # a line's number and function, read from its text before (by this file's
            # scan: the same text splits otherwise for another file's name)
            try:
                seen = known[text]
            except KeyError:
                seen = _read_line(scan, text)
            if seen[0] is not scan:
                seen = _read_line(scan, text)
            _, index, line, name = seen
            if name is None:
                continue  # a line of this file that is not a frame's
            if index < count:  # (a line from 1 to count: see _read_line)
                text = lines[index]  # source_excerpt() inlined for a line needing no cut
                source = (text.strip() if len(text) <= MAX_SOURCE_LINE
                          else source_excerpt(text) or "")
            else:
                source = None
            frames.append(_new_tuple(Frame, (language, file, line, None, name, source)))
        frames.reverse()
        return frames

    def _own_lines(self, traceback: str) -> list[str]:
        """This file's lines in ``traceback`` (leading blanks kept), found in one scan."""
        if self._scan is None:
            self._scan = _scan_pattern(self.prefix)
        return self._scan.lines.findall("\n" + traceback)  # (see _scan_pattern)

    def _own_scan(self, traceback: str) -> list[tuple[str, str, str]]:
        """This file's lines in ``traceback``: (the line, its number, the rest) each, the
        number and rest empty for a line that is not ``file:number:rest``; what
        :meth:`_parse` reads from each line it did not read before."""
        lines = self._own_lines(traceback)
        assert self._scan is not None
        return list(map(self._scan.split, lines))

    def _parse_lines(self, traceback: str) -> list[Frame]:
        """:meth:`_parse` line by line, for a traceback with tail-call markers."""
        frames, after, owner = [], False, self
        for raw in traceback.split("\n"):
            entry = raw.strip()
            found = self._match(entry)
            if found is not None:
                owner, number, what = found
                line = position(number)
                frames.append(Frame(self.language, owner.filename, line, None,
                                    _function_name(what), owner.line_text(line)))
                after = True
            elif entry == TAIL_CALLS:
                if after:
                    frames.append(Frame(self.language, owner.filename, None, None, TAIL_CALLS,
                                        None))
                after = False
            else:
                after = entry == TRACEBACK_HEADER
        frames.reverse()
        return frames

    def _match(self, entry: str) -> tuple[LuaScript, str, str] | None:
        """``"agent.lua:12: in ..."`` (a stripped traceback line) of this script or of one
        of its modules -> (that file's LuaScript, ``"12"``, ``" in ..."``)."""
        for prefix in self._prefixes():
            if entry.startswith(prefix):
                number, sep, rest = entry[len(prefix):].partition(":")
                if sep and number.isdigit():
                    return self._owner(prefix[:-1]), number, rest
        return None

    def split_message(self, message: str) -> tuple[int | None, str]:
        """``"agent.lua:12: boom"`` -> ``(12, "boom")``; other messages come back whole."""
        _, line, rest = self.locate(message)
        return line, rest

    def locate(self, message: str) -> tuple[LuaScript, int | None, str]:
        """The file a message is located in (this script or a module), its line and the
        rest: ``"lib/json.lua:12: boom"`` -> ``(json's LuaScript, 12, "boom")``."""
        prefixes = self._prefixes()
        for prefix in prefixes:
            if message.startswith(prefix):
                number, sep, rest = message[len(prefix):].partition(": ")
                line = position(number) if sep else None
                if line is not None:
                    return (self if prefix is prefixes[0] else self._owner(prefix[:-1]),
                            line, rest)
        return self, None, message

    def script_traceback(self, traceback: str | None) -> str | None:
        """``traceback`` with only this script's lines (and tail-call markers, as in
        :meth:`frames`), as Lua would print it."""
        if not traceback:
            return None
        # no marker to keep: only the lines of this script's file, found in one scan (the
        # one _parse made, when it was for this traceback: it scans only a traceback
        # without markers, and adding a module forgets it)
        last = self._last_scan
        if last is not None and last[0] == traceback:
            return "\n".join([TRACEBACK_HEADER, *last[1]])
        if TAIL_CALLS not in traceback and not self._modules:
            return "\n".join([TRACEBACK_HEADER, *self._own_lines(traceback)])
        prefixes = self._prefixes()
        lines, after = [], False
        for raw in traceback.split("\n"):
            entry = raw.strip()
            if entry.startswith(prefixes):
                lines.append(raw)
                after = True
            elif entry == TAIL_CALLS:
                if after:
                    lines.append(raw)
                after = False
            else:
                after = entry == TRACEBACK_HEADER
        return "\n".join([TRACEBACK_HEADER, *lines])


_new_tuple = tuple.__new__


class _Scan:
    """How the lines of one file's name are found in a traceback, and read (see
    :func:`_scan_pattern`)."""

    def __init__(self, prefix: str) -> None:
        start = rf"[^\S\n]*{re.escape(prefix)}"
        # (the whole line either way: a frame's line, file:(\d+):([^\n]*), is one too)
        self.lines = re.compile(rf"\n({start}[^\n]*)")
        self._line = re.compile(rf"{start}(?:(\d+):([^\n]*)|[^\n]*)")

    def split(self, text: str) -> tuple[str, str, str]:
        """A line :attr:`lines` found -> (the line, its number, the rest), the number
        and rest empty for a line that is not ``file:number:rest``: the groups the
        scan would give had it captured them."""
        found = self._line.fullmatch(text)
        assert found is not None, text
        number, rest = found.groups("")
        return text, number, rest


@functools.lru_cache(maxsize=256)
def _scan_pattern(prefix: str) -> _Scan:
    """The scan for the file ``prefix`` names. Its ``lines`` pattern finds whole
    traceback lines of that file (leading blanks but no line break before the name), as
    :meth:`LuaScript.script_traceback` keeps them; ``split`` reads a line's number and
    the rest when it is a frame's line (``file:12:rest``). The frames are what
    ``^\\s*file:(\\d+):(.*)$`` finds line by line. Each line starts after a line break
    (the text scanned is the traceback after one): a pattern that starts with a literal
    character is searched for by scanning for it, where ``^`` made the regex engine try
    a match at every character. The scan captures the line alone (capturing its number
    and rest too cost a third of the scan: the tuples and their strings), since the
    frames' loop reads each line's text once (:data:`_KNOWN_LINES`)."""
    return _Scan(prefix)


def function_name(what: str) -> str:
    """The function of a traceback line from what follows ``file:line:``.

    ``in function 'f'``, ``in local 'f'``, ``in upvalue 'f'``, ``in method 'm'``,
    ``in field 'f'`` give the quoted name; ``in main chunk`` gives ``main chunk``;
    ``in function <agent.lua:3>`` (a function Lua has no name for: an anonymous one, or
    one reached by a tail call) gives ``function <agent.lua:3>``, as Lua names it.
    """
    what = what.strip()
    if what == "in main chunk":
        return "main chunk"
    start = what.find("'")
    end = what.rfind("'")
    if 0 <= start < end:
        return what[start + 1:end]
    return what.removeprefix("in ").strip() or "?"


# Tracebacks repeat the same few descriptions ("in function 'f'"): worth a cache.
_function_name = functools.lru_cache(maxsize=4096)(function_name)

# What _read_line read from a traceback line's text: the scan that found it (the same
# text splits otherwise for another file's name), its line's index and number, its
# function (None for a line that is not a frame's). A loop fails at the same few places,
# and one lookup of the line's text costs less than reading it (it took two lru_caches'
# lookups a frame); a plain dict emptied when full: its lookup costs a third of an
# lru_cache's.
_KNOWN_LINES: dict[str, tuple[_Scan, int, int | None, str | None]] = {}
MAX_KNOWN_LINES = 4096
MAX_KNOWN_LINE = 512  # longer lines (a script's long function names) are read every time
_NO_INDEX = sys.maxsize  # the index of a line number that is none: past any list's end


def _read_line(scan: _Scan, text: str) -> tuple[_Scan, int, int | None, str | None]:
    """(scan, line index, line number, function) of a line ``scan`` found, remembered in
    :data:`_KNOWN_LINES`. The index is the line number less one, or :data:`_NO_INDEX`
    for a line number that is not a positive one, so that ``index < len(lines)`` says
    whether the source has that line."""
    _, number, what = scan.split(text)
    # (\d matches non-ASCII digits too: position refuses them, and long runs)
    line = position(number) if number else None
    index = line - 1 if line is not None and line > 0 else _NO_INDEX
    read = (scan, index, line, function_name(what)) if number else (scan, _NO_INDEX, None, None)
    if len(text) <= MAX_KNOWN_LINE:
        if len(_KNOWN_LINES) >= MAX_KNOWN_LINES:
            _KNOWN_LINES.clear()
        _KNOWN_LINES[text] = read
    return read


def compilation_failed(script: LuaScript, message: str) -> SpellError:
    """``script/compilation_failed`` for the message ``load`` gave for a syntax error."""
    line, error = script.split_message(message)
    text = script.line_text(line)
    return ScriptError.CompilationFailed(
        language=script.language, error=error, file=script.filename, line=line, source_code=text,
        frames=[script.frame(line, "main chunk")],
    )


def thrown_error(
    script: LuaScript,
    value: Any,
    lua_type: str,
    text: str | None,
    traceback: str | None,
    *,
    patterns: PatternRegistry,
    overflow: int | None = None,
    from_prelude: bool = False,
    hints: Mapping[str, str] | None = None,
) -> SpellError:
    """The unified error for a value a script raised and did not catch.

    ``value`` is the raised value as JSON-like data (a string message, an error table
    read into a dict, any other value copied as data), ``lua_type`` its Lua type,
    ``text`` what ``tostring`` gave for a value with a ``__tostring`` metamethod, and
    ``traceback`` the ``debug.traceback`` taken before the stack unwound. ``overflow`` is
    the stack depth when the engine observed a real stack overflow (its stack full where
    the error was raised), else None: a message alone, which a script can write, says
    nothing about limits. ``from_prelude``: the engine's prelude raised the error table (a
    sandbox violation); a security or resource error of the script's own is marked so.
    ``patterns`` reads plain-string messages of older scripts (``bridge.patterns``). An
    error table from an envelope gives a copy carrying its ref, for the host to resolve
    (``bridge.envelope.resolve_refs``). ``hints``: what the sandbox removed (``"io"``,
    ``"os.execute"``) and what to do instead, for :func:`sandbox_hint`.
    """
    frames = script.frames(traceback)
    if overflow is not None:
        return ScriptError.ResourceExhaustion(
            language=script.language, resource_type="stack", current_usage=overflow, frames=frames)
    if lua_type == "string" and isinstance(value, str):
        owner, line, error = script.locate(value)
        # error("Tool 'x' not found") of old scripts
        recognised = recognise(error, frames, patterns)
        if recognised is not None:
            return recognised
        if hints:
            error = sandbox_hint(error, frames[-1].source if frames else None, hints)
        return ScriptError.Lua(
            error=error, script=owner.filename if line is not None or not frames
            else frames[-1].file, script_line=line or _innermost(frames),
            stack_trace=script.script_traceback(traceback), frames=frames)
    if isinstance(value, Mapping) and "category" in value and "kind" in value:
        own = value.get("traceback")
        own_frames = script.frames(own) if isinstance(own, str) else []
        return error_from_script(value, own_frames or frames, by_script=not from_prelude)
    error = text if text is not None else describe_value(value, lua_type)
    return ScriptError.Lua(
        error=error, script=frames[-1].file if frames else script.filename,
        script_line=_innermost(frames),
        stack_trace=script.script_traceback(traceback), thrown=finite(value), frames=frames)


# What Lua says when a script reaches for something that is not there.
_ABSENT = re.compile(
    r"attempt to (?:index|call|concatenate) a nil value \((global|field) '([A-Za-z_]\w*)'\)$")


def sandbox_hint(error: str, line: str | None, hints: Mapping[str, str]) -> str:
    """Lua's message ``error``, plus one line when it is about something the sandbox removed.

    ``attempt to index a nil value (global 'io')`` names a global; for a field (``os.execute``)
    Lua names only ``execute``, so the table is read from the failing source ``line``.
    ``hints`` maps such names to the line to add.
    """
    found = _ABSENT.search(error)
    if found is None:
        return error
    kind, name = found.groups()
    if kind == "field":
        owner = re.search(rf"\b([A-Za-z_]\w*)\s*[.:]\s*{name}\b", line or "")
        if owner is None:
            return error
        name = f"{owner.group(1)}.{name}"
    hint = hints.get(name)
    return error if hint is None else f"{error}\n{hint}"


def describe_value(value: Any, lua_type: str) -> str:
    """What a script threw, for a message: ``error value 42 (a number)``, ``error object {...}``."""
    if lua_type == "nil":
        return "error value nil"
    if lua_type == "table":
        return f"error object {_shorten(lua_literal(value))}"
    if lua_type in ("function", "userdata", "thread"):  # value is already its description
        return f"error value {_shorten(str(value))}"
    return f"error value {_shorten(lua_literal(value))} (a {lua_type})"


def lua_literal(value: Any) -> str:
    """JSON-like data written the way Lua source would write it: ``{code = 1, "x"}``."""
    if value is None:
        return "nil"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, Mapping):
        parts = [f"{_lua_key(key)} = {lua_literal(item)}" for key, item in value.items()]
        return "{" + ", ".join(parts) + "}"
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(item) for item in value) + "}"
    return str(value)


def _lua_key(key: Any) -> str:
    if isinstance(key, str) and key.isidentifier() and key.isascii():
        return key
    return f"[{lua_literal(key)}]"


def _shorten(text: str) -> str:
    return text if len(text) <= _DESCRIBE_LIMIT else text[: _DESCRIBE_LIMIT - 3] + "..."


def _innermost(frames: list[Frame]) -> int | None:
    return frames[-1].line if frames else None
