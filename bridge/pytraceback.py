"""Script frames as real Python traceback entries (the technique of jinja2's ``debug.py``).

So that ``traceback.print_exc()``, pytest and error trackers show
``File "agent.js", line 12, in main`` with the script's own source line, each foreign
frame becomes a real frame: a tiny code object named after the script function, whose
``raise`` sits on the script's line number in a file named after the script, is run once
and its traceback entry is kept. The entries are linked into the error's traceback, and
the whole polyglot path is also added as a PEP 678 note for tools that read notes.

Where source lines come from. Python's tools read a traceback entry's lines from
``linecache`` by its file name, and ``linecache`` reads any name it does not hold from
disk (a relative one along ``sys.path`` too). A script frame's file name is text a script
can write (a JS error's ``stack``, a Lua chunk name given to ``load``), so a script frame
keeps its file name in a traceback entry only when the host itself loaded that file for
the run (:func:`remember_source`: the script, its tools files): ``linecache`` then holds
the text the host loaded under that name. Any other script frame's entry is named
``<not loaded by the host: NAME>``, which ``linecache`` never looks up on disk, and shows
no source line; the frame itself (``err.frames``, JSON, the polyglot text) keeps ``NAME``
as data. Names of Python files are never put into ``linecache`` (a run named
``host/runner.py`` must not change the lines of the real one): such a script's entries are
named ``<NAME>``. A frame that says it is Python's (or the host's) keeps its name only
when Python itself loaded code from that file (:func:`_python_loaded`): such a frame read
from data (JSON, a worker process's step) names any file its sender chose.

Cost. An entry is the same small code object whatever its line: one code object compiled
once, moved to the line by ``co_firstlineno`` (its line table is relative to it), so a
forged line number costs nothing more than a real one.
"""

from __future__ import annotations

import functools
import importlib.machinery
import linecache
import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping
from types import CodeType, TracebackType

from bridge.errors import SpellError
from bridge.frames import MAX_POSITION, MAX_SOURCE_LINE, Frame, source_excerpt
from bridge.jsontext import unicode_text
from bridge.render import format_frame

NOTE_HEADER = "Polyglot traceback (outermost first):"
UNLOADED_FILE = "<not loaded by the host: {}>"  # the entry name of a file no host loaded
MAX_SOURCES = 1024  # remembered sources; the oldest are forgotten (and leave linecache)
_EXCEPTION_NAME = "__polyspell_exception__"
_PYTHON_SUFFIXES = tuple(importlib.machinery.all_suffixes())
# The raise spans two lines so that Python does not draw carets under a script line
# whose columns it does not know.
_TEMPLATE = compile(f"raise ({_EXCEPTION_NAME}\n)", "<polyspell>", "exec")
_Entry = tuple[int, None, list[str], str]  # a linecache entry: size, mtime, lines, name
# file name -> (the text the host loaded under that name, its linecache entry)
_sources: OrderedDict[str, tuple[str, _Entry]] = OrderedDict()


def attach_python_traceback(
    err: SpellError, sources: Mapping[str, str] | None = None
) -> SpellError:
    """Make the error's frames real Python traceback entries and add them as a note.

    ``sources`` maps the files the host loaded for this run (the script, its tools
    files) to their text: script frames of other files get entries without source (see
    the module docstring). Without it, every file :func:`remember_source` was given
    counts. Idempotent. The error's ``frames`` are kept as they are: this changes only
    what Python's own traceback machinery sees.
    """
    if getattr(err, "_python_traceback_attached", False):
        return err
    if sources is not None:
        for filename, source in sources.items():
            remember_source(filename, source)
    frames = err.frames  # materialised before the traceback is replaced
    err.frames = frames
    tb = None
    for frame in reversed(frames):
        tb = _entry(frame, _entry_file(frame, sources), tb)
    err.__traceback__ = tb
    if any(f.language != "python" for f in frames):
        lines = [line for f in frames for line in format_frame(f)]
        err.add_note("\n".join([NOTE_HEADER, *lines]))
    err._python_traceback_attached = True  # type: ignore[attr-defined]
    return err


def remember_source(filename: str, source: str) -> None:
    """Let Python's traceback tools show lines of a script the host loaded (see module).

    A Python file's name is left alone: its ``linecache`` lines stay the real file's.
    """
    if filename.endswith(_PYTHON_SUFFIXES):
        return
    known = _sources.get(filename)
    if known is not None and known[0] == source:
        entry = known[1]
        _sources.move_to_end(filename)
    else:  # mtime None: linecache.checkcache leaves the entry alone
        lines = unicode_text(source).splitlines(keepends=True)  # bytes not UTF-8: U+FFFD
        if len(source) > MAX_SOURCE_LINE:  # a minified line: its start (see source_excerpt)
            lines = [line if len(line) <= MAX_SOURCE_LINE else f"{source_excerpt(line)}\n"
                     for line in lines]
        entry = (len(source), None, lines, filename)
        _sources[filename] = (source, entry)
    linecache.cache[filename] = entry
    while len(_sources) > MAX_SOURCES:
        old, (_, old_entry) = _sources.popitem(last=False)
        if linecache.cache.get(old) is old_entry:
            del linecache.cache[old]


def _entry_file(frame: Frame, sources: Mapping[str, str] | None) -> str:
    """The file name the traceback entry of ``frame`` gets (see the module docstring)."""
    file = frame.file
    if not frame.is_script:  # Python's own frames, and the host's ("<tool call>")
        return file if _python_loaded(file) else UNLOADED_FILE.format(file)
    loaded = file in sources if sources is not None else file in _sources
    if not loaded:
        return UNLOADED_FILE.format(file)
    known = _sources.get(file)
    if known is None:  # a Python file's name (never remembered), or forgotten since
        return f"<{file}>"
    entry = known[1]
    if linecache.cache.get(file) is not entry:  # cleared (linecache.clearcache()) or replaced
        linecache.cache[file] = entry
    return file


def _python_loaded(file: str) -> bool:
    """Whether ``file`` is a file Python's traceback tools may read lines of: one this
    interpreter loaded a module from, or a name ``linecache`` never reads from disk
    (``<string>``, ``<tool call>``). Not any name ``linecache`` holds: it holds the scripts
    of other runs too (:func:`remember_source`).

    A frame that says it is Python's may have been read from data (an error's JSON, a
    worker process's step): its file is then text the sender chose, and ``linecache``
    would read that file from disk (``~/.ssh/id_rsa``) into the traceback, on the host's
    privileges. Frames of live tracebacks name the files of loaded modules."""
    if file.startswith("<") and file.endswith(">"):
        return True
    global _module_files_seen
    modules = sys.modules
    if len(modules) != _module_files_seen:  # modules were imported (or dropped) since
        _module_files.clear()
        for module in list(modules.values()):
            path = getattr(module, "__file__", None)
            if isinstance(path, str):
                _module_files.add(path)
        _module_files_seen = len(modules)
    return file in _module_files


_module_files: set[str] = set()  # the __file__ of every module in sys.modules
_module_files_seen = -1  # len(sys.modules) when _module_files was made


def _entry(frame: Frame, file: str, tb_next: TracebackType | None) -> TracebackType:
    """One real traceback entry at ``file``, the frame's line, and its function.

    A frame without a line (Lua's ``(...tail calls...)`` marker) is an entry at line 0,
    which has no source line to show.
    """
    line = frame.line
    if line is None:
        line = 0
    elif not 1 <= line <= MAX_POSITION:  # not a line at all
        line = 1
    code = _code(file, line, _function_name(frame))
    marker = _Marker()
    try:
        exec(code, {"__name__": file, _EXCEPTION_NAME: marker})
    except _Marker as raised:
        own = raised.__traceback__.tb_next  # skip this function's frame
    assert own is not None
    return TracebackType(tb_next, own.tb_frame, own.tb_lasti, line)


@functools.lru_cache(maxsize=4096)
def _code(filename: str, line: int, function: str) -> CodeType:
    return _TEMPLATE.replace(co_filename=filename.replace("\0", "\\0"),  # no NUL in names
                             co_firstlineno=line, co_name=function, co_qualname=function)


def _function_name(frame: Frame) -> str:
    name = frame.function or "<module>"
    return name if frame.language == "python" else f"{name} [{frame.language}]"


class _Marker(Exception):
    """Raised once per synthetic frame to capture it."""


def without_frames(tb: TracebackType | None, hidden: Callable[[str], bool]
                   ) -> TracebackType | None:
    """``tb`` without the entries whose code's file ``hidden`` names (a host's plumbing:
    its own modules, its event loop's), the others linked as they were."""
    kept: list[TracebackType] = []
    while tb is not None:
        if not hidden(tb.tb_frame.f_code.co_filename):
            kept.append(tb)
        tb = tb.tb_next
    result = None
    for entry in reversed(kept):
        result = TracebackType(result, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return result
