"""Script frames as real Python traceback entries (the technique of jinja2's ``debug.py``).

So that ``traceback.print_exc()``, pytest and error trackers show
``File "agent.js", line 12, in main`` with the script's own source line, each foreign
frame becomes a real frame: a tiny code object named after the script function, whose
``raise`` sits on the script's line number in a file named after the script, is run once
and its traceback entry is kept. The entries are linked into the error's traceback, and
the whole polyglot path is also added as a PEP 678 note for tools that read notes.
"""

from __future__ import annotations

import functools
import linecache
from types import CodeType, TracebackType

from bridge.errors import SpellError
from bridge.frames import Frame
from bridge.render import format_frame

NOTE_HEADER = "Polyglot traceback (outermost first):"
_EXCEPTION_NAME = "__polyspell_exception__"


def attach_python_traceback(err: SpellError) -> SpellError:
    """Make the error's frames real Python traceback entries and add them as a note.

    Idempotent. The error's ``frames`` are kept as they are: this changes only what
    Python's own traceback machinery sees.
    """
    if getattr(err, "_python_traceback_attached", False):
        return err
    frames = err.frames  # materialised before the traceback is replaced
    err.frames = frames
    tb = None
    for frame in reversed(frames):
        tb = _entry(frame, tb)
    err.__traceback__ = tb
    if any(f.language != "python" for f in frames):
        lines = [line for f in frames for line in format_frame(f)]
        err.add_note("\n".join([NOTE_HEADER, *lines]))
    err._python_traceback_attached = True  # type: ignore[attr-defined]
    return err


def remember_source(filename: str, source: str) -> None:
    """Let Python's traceback tools show lines of a script that is not a file on disk."""
    lines = source.splitlines(keepends=True)
    # mtime None: linecache.checkcache leaves the entry alone
    linecache.cache[filename] = (len(source), None, lines, filename)


def _entry(frame: Frame, tb_next: TracebackType | None) -> TracebackType:
    """One real traceback entry at the frame's file, line and function."""
    line = frame.line or 1
    code = _code(frame.file, line, _function_name(frame))
    marker = _Marker()
    try:
        exec(code, {"__name__": frame.file, _EXCEPTION_NAME: marker})
    except _Marker as raised:
        own = raised.__traceback__.tb_next  # skip this function's frame
    assert own is not None
    return TracebackType(tb_next, own.tb_frame, own.tb_lasti, line)


@functools.lru_cache(maxsize=4096)
def _code(filename: str, line: int, function: str) -> CodeType:
    # The raise spans two lines so that Python does not draw carets under a script line
    # whose columns it does not know.
    source = "\n" * (line - 1) + f"raise ({_EXCEPTION_NAME}\n)"
    code = compile(source, filename.replace("\0", "\\0"), "exec")  # no NUL in file names
    return code.replace(co_name=function, co_qualname=function)


def _function_name(frame: Frame) -> str:
    name = frame.function or "<module>"
    return name if frame.language == "python" else f"{name} [{frame.language}]"


class _Marker(Exception):
    """Raised once per synthetic frame to capture it."""
