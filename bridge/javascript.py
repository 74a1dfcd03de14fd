"""JavaScript errors as unified errors: the translator the JavaScript engine reports through.

Pure data in, :class:`SpellError` out: this module reads strings and dicts (quickjs
exception text, stack text, and the *reports* the engine's prelude writes as JSON) and
never imports ``quickjs``, ``engines`` or ``host``.

quickjs-ng names every evaluated source ``<input>`` and prints frames innermost first::

    TypeError: cannot read property 'x' of null
        at load (<input>:3:5)
        at polyspell$begin (<input>:188:15)
        at <eval> (<input>:7:1)

Frames here are outermost first, carry the script's real file name, say ``<script>`` for
the top level (``<eval>``), and leave out native frames and the engine's own (functions
named ``polyspell$...``). A bare ``at <input>:1:9`` is a parse position: it locates a
syntax error when no function frame follows it. A *report* describes an uncaught value::

    {"name": "TypeError", "message": "...", "stack": "    at f (agent.js:3:5)\\n",
     "compile": bool,                                # from the script's own evaluation
     "spell": {"category", "kind", "message", "fields", "problem", "ref"} or absent,
     "cause": <report> or absent}
    {"thrown": true, "type": "string", "value": <JSON-like>, "text": <String(value)>}
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from bridge.envelope import error_from_script, with_ref
from bridge.errors import SpellError, variant_class
from bridge.frames import MAX_SOURCE_LINE, SHORT_DIGITS, Frame, position, source_excerpt
from bridge.patterns import PatternRegistry, recognise

Limits = Mapping[str, float]  # resource -> limit, and "elapsed" -> seconds (resource_error)

LANGUAGE = "javascript"
_new_tuple = tuple.__new__
PLACEHOLDER_FILE = "<input>"  # the file name quickjs gives every evaluated source
_PLACEHOLDER_AT = PLACEHOLDER_FILE + ":"
HIDDEN_PREFIX = "polyspell$"  # functions of the engine's prelude: their frames are left out
THROWN_NAME = "thrown value"  # error_name of a non-Error value that was thrown

# "    at f (file:3:5)", "    at file:3:5" (a parse position); "at map (native)" never matches
_FRAME = re.compile(r"^\s*at (?:(?P<function>.*?) \((?P<file>.+):(?P<line>\d+):(?P<column>\d+)\)"
                    r"|(?P<position_file>.+):(?P<position_line>\d+):(?P<position_column>\d+))\s*$")
# _FRAME's two forms over a whole text: (function, file, line, column) per named frame,
# and the first bare position
_FRAMES = re.compile(r"^[ \t]*at (.*?) \((.+):(\d+):(\d+)\)[ \t]*$", re.MULTILINE)
_POSITION = re.compile(r"^[ \t]*at .+:(\d+):(\d+)[ \t]*$", re.MULTILINE)
_AT_LINE = re.compile(r"^\s+at ")
_HEADER = re.compile(r"^(?P<name>[A-Za-z_$][\w$]*)(?:: (?P<message>.*))?$", re.DOTALL)
_FUNCTION_NAMES = {"<eval>": "<script>", "": "<anonymous>", None: "<anonymous>"}

# What quickjs-ng throws when a limit is hit, as (error name, message) -> resource type.
_EXHAUSTION = {
    ("InternalError", "interrupted"): "time",
    ("InternalError", "out of memory"): "memory",
    ("InternalError", "string too long"): "memory",
    ("InternalError", "stack overflow"): "stack",
    ("RangeError", "Maximum call stack size exceeded"): "stack",
}


# -- frames ----------------------------------------------------------------------------


def function_name(name: str | None) -> str:
    """A frame's function as users read it: ``<script>`` for the top level."""
    return _FUNCTION_NAMES.get(name, name)  # type: ignore[arg-type]


def source_line(lines: Sequence[str] | None, line: int | None,
                column: int | None = None) -> str | None:
    """Line ``line`` (1-based) of the source as a frame shows it (around ``column`` when
    it is long: :func:`bridge.frames.source_excerpt`); None when unknown."""
    if not lines or line is None or not 1 <= line <= len(lines):
        return None
    return source_excerpt(lines[line - 1], column)


def make_frame(
    filename: str, line: int | None, column: int | None, function: str | None,
    lines: Sequence[str] | None = None,
) -> Frame:
    """One frame of the script ``filename``."""
    return Frame(LANGUAGE, filename, line, column, function_name(function),
                 source_line(lines, line, column))


def read_stack(
    text: str, filename: str, lines: Sequence[str] | None = None
) -> tuple[list[Frame], tuple[int, int] | None]:
    """The script's frames in a quickjs stack text, outermost first, and a parse position.

    ``<input>`` becomes ``filename``; the engine's frames, native frames and lines that
    are not frames are left out. The position, looked for only when there is no frame, is
    the first bare ``at file:line:column``: a syntax error's location.
    """
    count = len(lines) if lines else 0
    hidden = HIDDEN_PREFIX in text
    # One scan of the whole text, and frames made as plain tuples: a match object per
    # line, and Frame()'s keyword handling, cost more than everything else here.
    frames = []
    append, known = frames.append, _KNOWN_AT  # locals: hot loop
    for found in _FRAMES.findall(text):  # (function, file, line, column)
        function, file = found[0], found[1]
        if hidden and function.startswith(HIDDEN_PREFIX):
            continue
        read = known.get(found)
        if read is None:
            read = _read_at(found)
        number, at, name = read
        source = None
        if file == PLACEHOLDER_FILE or file == filename:
            file = filename
            if number is not None and 0 < number <= count:
                code = lines[number - 1]  # type: ignore[index]
                # source_excerpt() inlined for a line that needs no cut
                source = (code.strip() or None) if len(code) <= MAX_SOURCE_LINE \
                    else source_excerpt(code, at)
        append(_new_tuple(Frame, (LANGUAGE, file, number, at, name, source)))
    frames.reverse()
    at = None
    if not frames:  # a parse position matters only to an error without frames
        found = _POSITION.search(text)
        if found and position(found[1]) is not None:
            at = (position(found[1]), position(found[2]))
    return frames, at


# What _read_at read from a frame's parts (function, file, line, column): a loop fails at
# the same few places, and one lookup of the parts costs less than converting two numbers
# and a name. A plain dict emptied when full; parts with a long function name (a script's
# to choose) are read every time.
_KNOWN_AT: dict[tuple[str, str, str, str], tuple[int | None, int | None, str]] = {}
MAX_KNOWN_AT = 4096
MAX_KNOWN_NAME = 512


def _read_at(found: tuple[str, str, str, str]) -> tuple[int | None, int | None, str]:
    """A stack line's line and column (None when out of range: see :func:`position`) and
    the function as frames name it, remembered in :data:`_KNOWN_AT`."""
    function, _, line, column = found
    # (\d matches non-ASCII digits too: position refuses them, and long runs)
    number = int(line) if len(line) < SHORT_DIGITS and line.isascii() else position(line)
    at = int(column) if len(column) < SHORT_DIGITS and column.isascii() else position(column)
    read = (number, at, _FUNCTION_NAMES.get(function, function))
    if len(function) + len(found[1]) <= MAX_KNOWN_NAME:
        if len(_KNOWN_AT) >= MAX_KNOWN_AT:
            _KNOWN_AT.clear()
        _KNOWN_AT[found] = read
    return read


def parse_stack(text: str, filename: str, lines: Sequence[str] | None = None) -> list[Frame]:
    """The script's frames in a quickjs stack text, outermost first (see :func:`read_stack`)."""
    return read_stack(text, filename, lines)[0]


def split_exception(text: str) -> tuple[str, str, str]:
    """``"TypeError: boom\\n    at f (...)"`` -> ``("TypeError", "boom", "    at f (...)")``.

    The name is empty when the first line is not ``Name: message`` (a thrown non-Error
    whose ``String()`` quickjs printed).
    """
    text = text.rstrip("\n")
    for missing in ("\nnull", "\nundefined"):  # how the binding prints an absent stack
        text = text.removesuffix(missing)
    lines = text.split("\n")
    first_frame = next((i for i, line in enumerate(lines) if _AT_LINE.match(line)), len(lines))
    header = "\n".join(lines[:first_frame])
    stack = "\n".join(lines[first_frame:])
    match = _HEADER.match(header)
    if match is None:
        return "", header, stack
    return match["name"], match["message"] or "", stack


def exhausted_resource(name: str, message: str) -> str | None:
    """``time``, ``memory`` or ``stack`` when quickjs's text for a limit is ``name: message``.

    Text alone proves nothing (a script can write it): the engine uses this only together
    with what it observed (see ``JavaScriptEngine._observed_limit``).
    """
    return _EXHAUSTION.get((name, message))


def set_frames(err: SpellError, frames: list[Frame]) -> SpellError:
    """``err`` located at ``frames`` (for errors built before their frames were known)."""
    err.frames = frames
    return err


# -- errors ----------------------------------------------------------------------------


def compilation_error(
    message: str, filename: str, line: int | None, column: int | None,
    lines: Sequence[str] | None = None,
) -> SpellError:
    """``script/compilation_failed`` for a syntax error at ``line``:``column``.

    A position past the end of ``lines`` (an unclosed block, found where the engine's own
    code follows the script) is moved to the end of the script.
    """
    if lines and line is not None and line > len(lines):
        line, column = len(lines), len(lines[-1]) + 1
    frame = make_frame(filename, line, column, "<script>", lines)
    return variant_class("script", "compilation_failed")(
        language=LANGUAGE, error=message, file=filename, line=line, column=column,
        source_code=frame.source, frames=[frame])


def javascript_error(
    name: str, message: str, stack: str, frames: list[Frame], filename: str
) -> SpellError:
    """``script/javascript`` for an Error (TypeError, a user's subclass...) thrown in JS."""
    return variant_class("script", "javascript")(
        error=f"{name}: {message}" if message else name, error_name=name, script=filename,
        script_line=frames[-1].line if frames else None,
        stack_trace=_clean_stack(stack, filename) or None,
        frames=frames or [_file_frame(filename)])


def thrown_value_error(
    type_name: str, value: Any, text: str | None, filename: str
) -> SpellError:
    """``script/javascript`` for ``throw "text"``, ``throw 42``, ``throw {code: 1}``...

    JavaScript keeps no location for such values: the frame names the file alone.
    """
    if value is None and type_name in ("null", "undefined"):
        # quickjs also throws null when memory is too short for its out-of-memory error
        said = f"threw {type_name}" + (" (or ran out of memory)" if type_name == "null" else "")
    else:
        shown = text if text is not None else json.dumps(value, ensure_ascii=False)
        if len(shown) > 200:
            shown = shown[:197] + "..."
        article = "an" if type_name[:1] in "aeiou" else "a"
        said = f"threw {article} {type_name}: {shown}"
    return variant_class("script", "javascript")(
        error=f"{said} (not an Error)", error_name=THROWN_NAME, script=filename,
        thrown=value, frames=[_file_frame(filename)])


def resource_error(
    resource: str, description: str, frames: list[Frame], limits: Limits | None = None
) -> SpellError:
    """The limit hit: ``resource/memory_exhaustion``, else ``script/resource_exhaustion``.

    ``limits`` maps a resource to its limit (time: seconds, stack: KiB, memory: bytes) and
    ``"elapsed"`` to the seconds the run took, for the fields of the error.
    """
    limits = limits or {}
    if resource == "memory":
        available = int(limits.get("memory", 0))
        if available:
            description += f" (limit {available // (1024 * 1024)} MiB)"
        return variant_class("resource", "memory_exhaustion")(
            location=LANGUAGE, description=description, available=available, frames=frames)
    usage = limits.get("elapsed", 0) if resource == "time" else 0
    return variant_class("script", "resource_exhaustion")(
        language=LANGUAGE, resource_type=resource, limit=limits.get(resource, 0),
        current_usage=usage, frames=frames)


def error_from_report(
    report: Mapping[str, Any],
    filename: str,
    lines: Sequence[str] | None = None,
    *,
    patterns: PatternRegistry,
    limits: Limits | None = None,
    limit: str | None = None,
) -> SpellError:
    """The unified error for an uncaught value the prelude described (see module doc).

    An error with ``category`` and ``kind`` goes through :func:`error_from_script`; one
    with a ``ref`` (a rethrown envelope from Python) is a copy that carries the ref, for
    the host to swap for the original (``bridge.envelope.resolve_refs``), its cause too.
    A string thrown, or a plain ``Error``, may read as a unified error by ``patterns``
    (see :mod:`bridge.patterns`); a builtin or user Error gives
    ``script/javascript``; a SyntaxError of the script's own evaluation, at a parse
    position, ``script/compilation_failed``. ``limit`` (``memory`` or ``stack``) is the
    limit the engine observed it hit, which gives the resource error (see
    :func:`resource_error`): the report itself, which the script's code may have written
    (getters, proxies, toJSON), never decides that.
    """
    if limit is not None:
        name, message = str(report.get("name", "Error")), str(report.get("message", ""))
        frames = read_stack(str(report.get("stack") or ""), filename, lines)[0]
        return resource_error(limit, f"{name}: {message}" if not report.get("thrown")
                              else "InternalError: out of memory",
                              frames or [_file_frame(filename)], limits)
    if report.get("thrown"):
        value = report.get("value")
        recognised = isinstance(value, str) and recognise(value, [_file_frame(filename)],
                                                          patterns)
        return recognised or thrown_value_error(str(report.get("type", "value")), value,
                                                report.get("text"), filename)
    name, message = str(report.get("name", "Error")), str(report.get("message", ""))
    stack = str(report.get("stack") or "")
    frames, at = read_stack(stack, filename, lines)
    if report.get("compile") and name == "SyntaxError" and at and not frames:
        return compilation_error(message, filename, *at, lines)
    spell = report.get("spell")
    if spell is not None and isinstance(spell, Mapping):  # (None: no ABC check)
        err = with_ref(_spell_error(spell, frames or [_file_frame(filename)]), spell.get("ref"))
    else:  # a plain Error("Agent not found: x") of an old script may name a unified error
        err = (name == "Error" and recognise(message, frames or [_file_frame(filename)],
                                             patterns)) or \
            javascript_error(name, message, stack, frames, filename)
    cause = report.get("cause")
    if cause is not None and isinstance(cause, Mapping):
        err.__cause__ = error_from_report(cause, filename, lines, patterns=patterns,
                                          limits=limits)
    return err


def _spell_error(spell: Mapping[str, Any], frames: list[Frame]) -> SpellError:
    code = f"{spell.get('category')}/{spell.get('kind')}"
    if spell.get("problem"):
        field = str(spell["problem"]).split(" ", 1)[0].removeprefix("fields.").split(".")[0]
        return set_frames(variant_class("bridge", "invalid_error")(
            error_type=code, reason=f"{spell['problem']} (fields must be JSON-like data)",
            field=field), frames)
    data = {key: spell.get(key) for key in ("category", "kind", "message", "fields")}
    return error_from_script(data, frames)


def error_from_exception(
    text: str, filename: str, lines: Sequence[str] | None = None, *, compiling: bool = False,
    limits: Limits | None = None, limit: str | None = None,
) -> SpellError:
    """The unified error for quickjs exception text that reached Python.

    That happens for what the prelude cannot catch (the time limit, errors while it
    reports) and for modules that fail to compile (``compiling``). ``limit`` is the limit
    the engine observed (see JavaScriptEngine._observed_limit), never read from the text.
    """
    name, message, stack = split_exception(text)
    frames, at = read_stack(stack, filename, lines)
    if limit is not None:
        return resource_error(limit, f"{name}: {message}", frames or [_file_frame(filename)],
                              limits)
    if compiling and name == "SyntaxError" and at and not frames:
        return compilation_error(message, filename, *at, lines)
    if not name:
        return thrown_value_error("value", None, message, filename)
    return javascript_error(name, message, stack, frames, filename)


def _file_frame(filename: str) -> Frame:
    """Where an error without a known line happened: somewhere in the script."""
    return make_frame(filename, None, None, "<script>")


def _clean_stack(stack: str, filename: str) -> str:
    """The stack text users read: their file's name, no engine frames.

    A bare position followed by a native frame (``at parse (native)``) locates the text
    given to JSON.parse or eval, not the script: it goes too.
    """
    if HIDDEN_PREFIX in stack or "(native)" in stack:  # else the lines stay as they are
        hidden = f"at {HIDDEN_PREFIX}"
        kept = [line for line in stack.splitlines() if not line.lstrip().startswith(hidden)]
        for i in range(len(kept) - 2, -1, -1):
            if kept[i + 1].endswith("(native)") and _is_position(kept[i]):
                del kept[i]
        stack = "\n".join(kept) + ("\n" if kept else "")
    elif stack and not stack.endswith("\n"):
        stack += "\n"
    text = stack.replace(_PLACEHOLDER_AT, filename + ":")
    return text.replace("at <eval> (", "at <script> (")


def _is_position(line: str) -> bool:
    match = _FRAME.match(line)
    return match is not None and match["function"] is None
