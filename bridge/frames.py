"""One entry of a polyglot traceback, whatever language it came from."""

from __future__ import annotations

import functools
import importlib.util
import itertools
import linecache
import os
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from bridge.languages import is_script_language, languages

# A frame's language: "python", "host", or a script language its engine registered (see
# bridge.languages). LANGUAGES, every one known now, is read through __getattr__ below.
Language = str
# The largest line or column a frame may hold. Script frames are read from text a script
# can write (a JS error's ``stack``, a Lua function's name inside a traceback), so their
# numbers are bounded like any other input: far beyond any real source, yet small enough
# that every consumer (a C ``int`` in Python's code objects and tracebacks) takes them.
MAX_POSITION = 2**30
_MAX_DIGITS = len(str(MAX_POSITION))
# A run of ASCII digits shorter than this is always a valid position (at most
# 999,999,999 < MAX_POSITION): translators' hot loops convert such a run with ``int``
# directly and call :func:`position` only for the rare longer one.
SHORT_DIGITS = _MAX_DIGITS - 1


def __getattr__(name: str) -> Any:
    if name == "LANGUAGES":  # the old constant: now the languages registered so far
        return languages()
    raise AttributeError(f"module 'bridge.frames' has no attribute {name!r}")


# The characters of a source line a frame keeps: a longer line (minified code) is cut to
# the text around the failing column, so neither a traceback nor an error's JSON carries
# a whole bundle per frame.
MAX_SOURCE_LINE = 160
CUT = "..."


def source_excerpt(text: str, column: int | None = None) -> str | None:
    """A source line as a frame shows it: stripped, None when blank.

    A line longer than :data:`MAX_SOURCE_LINE` keeps the text around ``column`` (1-based,
    as engines count; its start when there is none), with :data:`CUT` where text was left
    out on either side.
    """
    if len(text) <= MAX_SOURCE_LINE:
        return text.strip() or None
    end = len(text.rstrip())
    first = end - len(text[:end].lstrip())  # the first character that is not blank
    if end - first <= MAX_SOURCE_LINE:
        return text[first:end] or None
    at = first if column is None else min(max(column - 1, first), end - 1)
    start = max(first, min(at - MAX_SOURCE_LINE // 2, end - MAX_SOURCE_LINE))
    stop = start + MAX_SOURCE_LINE
    return (CUT if start > first else "") + text[start:stop] + (CUT if stop < end else "")


def position(digits: str) -> int | None:
    """A line or column written as ASCII digits; None when it is not one or out of range.

    Cheap for any input: a number with more digits than ``MAX_POSITION`` is never
    converted (``int()`` of thousands of digits is slow, and refused past 4300).
    """
    if len(digits) > _MAX_DIGITS or not digits.isascii() or not digits.isdigit():
        return None
    number = int(digits)
    return number if number <= MAX_POSITION else None


class Frame(NamedTuple):
    """A place in running code: language, file, line, column, function and the source line.

    Frames of an error are ordered as Python prints them: outermost first, the place
    where the error was raised last. A named tuple rather than a pydantic model or a
    frozen dataclass, because translators build dozens of them per error on the hot
    path (a frozen dataclass costs a microsecond each); :func:`frame_from_data` checks
    them when they are read from JSON.
    """

    language: Language  # "python", "host" or a script language (see bridge.languages)
    file: str
    line: int | None = None
    column: int | None = None
    function: str | None = None
    source: str | None = None

    def to_dict(self) -> dict[str, object]:
        """The frame as a JSON-ready dict."""
        return {
            "language": self.language,
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "function": self.function,
            "source": self.source,
        }

    @property
    def is_script(self) -> bool:
        """Whether the frame is a script's (not Python's, not the host's)."""
        return is_script_language(self.language)

    @property
    def location(self) -> str:
        """``file:line:column`` with whatever parts are known."""
        parts = [self.file]
        if self.line is not None:
            parts.append(str(self.line))
            if self.column is not None:
                parts.append(str(self.column))
        return ":".join(parts)


_FRAME_TYPES = {"file": str, "line": int, "column": int, "function": str, "source": str}
_POSITIONS = ("line", "column")


def frame_from_data(data: object) -> Frame:
    """A frame from JSON data; ``ValueError`` naming the key that is wrong."""
    if not isinstance(data, dict):
        raise ValueError("a frame must be an object")
    for key, value in data.items():
        if key == "language":
            if value not in languages():
                raise ValueError(f"language: must be one of {', '.join(languages())}", key)
        elif key not in _FRAME_TYPES:
            raise ValueError("unknown key", key)
        elif value is not None and (type(value) is bool or not isinstance(value,
                                                                          _FRAME_TYPES[key])):
            raise ValueError(f"{key}: must be a {_FRAME_TYPES[key].__name__} or null", key)
        elif key in _POSITIONS and value is not None and not 0 <= value <= MAX_POSITION:
            raise ValueError(f"{key}: must be from 0 to {MAX_POSITION} or null", key)
    for key in ("language", "file"):
        if data.get(key) is None:
            raise ValueError(f"{key}: missing", key)
    return Frame(**data)


# polyspell's own packages sit side by side (bridge/, engines/, host/), in a checkout and
# in site-packages alike. Their frames, and those of the machinery they run on (the event
# loop, worker threads, the import system), are plumbing: hidden from users by default.
_PACKAGES_ROOT = Path(__file__).resolve().parent.parent
_PLUMBING_MODULES = ("anyio", "asyncio", "trio", "sniffio", "concurrent", "outcome")


@functools.cache
def _internal_prefixes() -> tuple[str, ...]:
    prefixes = [str(_PACKAGES_ROOT / name) + os.sep for name in ("bridge", "engines", "host")]
    for module in _PLUMBING_MODULES:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        for location in (spec and spec.submodule_search_locations) or ():
            prefixes.append(str(Path(location).resolve()) + os.sep)
    stdlib = Path(os.__file__).resolve().parent
    prefixes.append(str(stdlib / "threading.py"))
    return (*prefixes, "<frozen importlib")


def is_internal(frame: Frame) -> bool:
    """Whether a frame is polyspell's own Python code, or the machinery it runs on."""
    return frame.language == "python" and is_internal_file(frame.file)


def is_internal_file(filename: str) -> bool:
    """Whether Python code in ``filename`` is polyspell's own, or the machinery it runs
    on (the event loop, worker threads, the import system)."""
    internal = _INTERNAL_FILES.get(filename)
    if internal is None:
        internal = filename.startswith(_internal_prefixes())
        if len(_INTERNAL_FILES) >= MAX_KNOWN_FRAMES:
            _INTERNAL_FILES.clear()
        _INTERNAL_FILES[filename] = internal
    return internal


# file name -> whether is_internal_file says so (the prefixes never change)
_INTERNAL_FILES: dict[str, bool] = {}


def python_frames(tb: TracebackType | None, *, internal: bool = True) -> list[Frame]:
    """The Python frames of a traceback, outermost first, with their source lines.

    A direct walk rather than ``traceback.extract_tb``, which stats every frame's file
    (``linecache.checkcache``) each time: a tool failure delivered into a script costs
    two of these. Columns are left out for polyspell's own frames (hidden by default),
    since finding one walks the code's position table. ``internal=False`` leaves those
    frames out (:func:`is_internal`), without making them.
    """
    frames = []
    known = _KNOWN_FRAMES
    while tb is not None:
        code = tb.tb_frame.f_code
        if not internal and is_internal_file(code.co_filename):
            tb = tb.tb_next
            continue
        # (a code object equals one of another file with the same code: its file is part
        # of the key)
        key = (code, code.co_filename, tb.tb_lasti, tb.tb_lineno)
        frame = known.get(key)
        if frame is None:
            frame = _python_frame(code, tb.tb_lineno, tb.tb_lasti)
            if len(known) >= MAX_KNOWN_FRAMES:
                known.clear()
            known[key] = frame
        frames.append(frame)
        tb = tb.tb_next
    return frames


# The frames python_frames made, by code object, file, instruction and line: a tool failing
# in a loop raises from the same few places, and a frame is made of nothing else (its source
# line as linecache holds it). The file is in the key because code objects compare by
# their code, not their file: two files with the same function (same name, lines and
# body) have equal code objects. Bounded: emptied when full.
_KNOWN_FRAMES: dict[tuple[Any, str, int, int | None], Frame] = {}
MAX_KNOWN_FRAMES = 1024


def _python_frame(code: Any, line: int | None, lasti: int) -> Frame:
    """The frame of one traceback entry (see :func:`python_frames`)."""
    if line is None or line < 0:  # an instruction without a line: unknown
        frame = Frame("python", code.co_filename, None, None, code.co_name, None)
    else:
        frame = Frame("python", code.co_filename, line, None, code.co_name,
                      linecache.getline(code.co_filename, line).strip() or None)
    if lasti >= 0 and not is_internal(frame):
        position = next(itertools.islice(code.co_positions(), lasti // 2, None), None)
        if position is not None and position[0] == line and position[2] is not None:
            frame = frame._replace(column=position[2] + 1)
    return frame
