"""The wire between the host and a worker process (see :mod:`engines.process`).

Every message is one frame: a 4-byte big-endian length, then that many bytes of JSON
(compact UTF-8; a lone surrogate in a script's string, which UTF-8 cannot hold, crosses
as ``\\udxxx``). Both directions are plain JSON, never pickle: a script that escaped its
sandbox into the worker owns the worker, and what it sends must stay data to the host,
which reads it with :func:`step_from_wire` (every field checked, errors rebuilt and
checked by ``SpellError.from_dict``). JSON keeps what steps hold apart: ints from floats,
and the non-finite floats Lua numbers may be (``NaN``, ``Infinity``, which both readers
read).

Host to worker (lists, the verb first)::

    ["open", spec, timeout, memory_mb, stack_kb, sandbox]   no answer
    ["start", source, filename, args, tools, deadline]      answered by a step
    ["load", source, filename, tools, deadline]             answered by a step
    ["call", function, params, deadline]                    answered by a step
    ["resume", replies, deadline]                           answered by a step
    ["close"]                                               no answer

``tools`` are ``[name, description]`` pairs, ``replies`` ``[id, result, error]``; a
deadline is a ``time.monotonic()`` instant, the same clock in both processes (Linux's
CLOCK_MONOTONIC is system-wide). Worker to host: ``["R", pid]`` once when it is ready,
then one step per step asked for: ``[tag, usable, output, ...]`` (see :func:`step_to_wire`).
"""

from __future__ import annotations

import json
import re
import struct
from json.encoder import encode_basestring_ascii

try:
    from _json import make_encoder as c_make_encoder
except ImportError:  # an interpreter without the C accelerator
    c_make_encoder = None
from dataclasses import asdict
from typing import Any

from pydantic_core import PydanticSerializationError, from_json, to_json

from bridge import SpellError
from bridge.data import ITEM_BYTES, MAX_DEPTH, nested_deeper
from bridge.envelope import REF_KEY
from bridge.errors import MAX_CAUSE_DEPTH, RAISED_BY
from bridge.frames import Frame, frame_from_data
from engines.base import (
    REQUEST_KINDS,
    EngineSpec,
    Failed,
    Finished,
    Problem,
    Step,
    Suspended,
    ToolInfo,
    ToolReply,
    ToolRequest,
)

HEADER = struct.Struct("!I")
MAX_FRAME = (1 << 32) - 1  # what the header can say
# json.dumps' C encoder, made once (json.dumps makes one per call, half its cost on a
# small message): compact, ASCII, NaN and Infinity allowed, no check for cycles (steps
# hold data that came out of an engine or went through the host's checks).
_encode = c_make_encoder(None, None, encode_basestring_ascii, None, ":", ",", False, False,
                         True) if c_make_encoder is not None else None
_decode = json.JSONDecoder().raw_decode


class WireError(ValueError):
    """A message from a worker that is not what the protocol says (the reason)."""


def frame(message: Any) -> bytes:
    """``message`` (JSON-like data: what the host checked, or an engine made) as one frame
    (header and body in one buffer: one write).

    pydantic-core's encoder writes it (three times as fast as ``json``'s C encoder on a
    step); a message it cannot write in UTF-8 (a lone surrogate) is written by ``json``,
    in ASCII with ``\\uXXXX`` escapes. ``TypeError`` for a value neither has a form for,
    ``ValueError`` for a message too long.
    """
    try:
        body = to_json(message, inf_nan_mode="constants")
    except PydanticSerializationError:
        text = "".join(_encode(message, 0)) if _encode is not None else json.dumps(
            message, separators=(",", ":"))
        body = text.encode("ascii")
    if len(body) > MAX_FRAME:
        raise ValueError(f"a message of {len(body)} bytes is too long for one frame")
    return HEADER.pack(len(body)) + body


def message(body: bytes | bytearray | memoryview, budget: int | None = None) -> Any:
    """The JSON a frame's body holds; :class:`WireError` if it is not (exactly) that, or
    (with a ``budget``, in bytes) if reading it would build more than the budget allows
    (see :func:`values_in`): checked before a byte is decoded.

    pydantic-core's reader reads it (a small step in a third of ``json``'s time); what it
    refuses (a lone surrogate's escape, nesting past its 200 levels, and whatever is not
    JSON) is read by ``json``, which says what is wrong, or reads it the same.
    """
    if isinstance(body, memoryview):
        body = bytes(body)
    if budget is not None and len(body) * ITEM_BYTES > budget:
        _within(body, budget)
    try:
        return from_json(body)
    except ValueError:
        pass
    try:
        text = str(body, "utf-8")
        value, end = _decode(text)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise WireError(f"a message that is not JSON ({str(exc)[:200]})") from None
    if end != len(text):
        raise WireError(f"a message with bytes after its JSON (at {end} of {len(text)})")
    return value


# JSON strings (which may hold any punctuation), in bytes
_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def values_in(body: bytes | bytearray | memoryview) -> int:
    """How many values (and object keys) the compact JSON ``body`` holds, at most, found
    without decoding it: each but the outermost follows a ``[``, ``{``, ``,`` or ``:``,
    and an empty ``[]`` or ``{}`` holds none.

    What the host builds from data is bounded as the engines bound theirs: about
    ``bridge.data.ITEM_BYTES`` per value besides its text. JSON is far denser than the
    Python objects it becomes (``[]`` is 3 bytes of text and some 60 of Python): a frame
    within the memory limit could otherwise become many times the limit in the host.
    """
    data = bytes(body) if isinstance(body, memoryview) else body
    skeleton = _STRINGS.sub(b"", data)  # punctuation inside strings is no value
    return (sum(map(skeleton.count, _SEPARATORS)) + 1
            - skeleton.count(b"[]") - skeleton.count(b"{}"))


_SEPARATORS = (b",", b"[", b"{", b":")


def _within(data: bytes | bytearray, budget: int) -> None:
    if (sum(map(data.count, _SEPARATORS)) + 1) * ITEM_BYTES <= budget:
        return  # even counting the punctuation inside strings
    values = values_in(data)
    if values * ITEM_BYTES > budget:
        raise WireError(f"a message of {values} values: reading it would take about "
                        f"{values * ITEM_BYTES >> 20} MB, more than the engine's memory "
                        f"limit ({budget >> 20} MB) allows for data")


# -- host to worker -----------------------------------------------------------------------


def spec_to_wire(spec: EngineSpec) -> dict[str, Any]:
    """An engine spec as data (the worker registers it if it does not know it)."""
    return asdict(spec)


def spec_from_wire(data: dict[str, Any]) -> EngineSpec:
    """The spec :func:`spec_to_wire` wrote (from the host: trusted)."""
    return EngineSpec(**{key: tuple(value) if isinstance(value, list) else value
                         for key, value in data.items()})


def tools_to_wire(tools: list[ToolInfo]) -> list[list[str]]:
    """Tool infos as ``[name, description]`` pairs."""
    return [[info.name, info.description] for info in tools]


def tools_from_wire(data: list[list[str]]) -> list[ToolInfo]:
    """The tool infos :func:`tools_to_wire` wrote."""
    return [ToolInfo(name, description) for name, description in data]


def replies_to_wire(replies: list[ToolReply]) -> list[list[Any]]:
    """Tool replies as ``[id, result, error]``."""
    return [[reply.id, reply.result, reply.error] for reply in replies]


def replies_from_wire(data: list[list[Any]]) -> list[ToolReply]:
    """The replies :func:`replies_to_wire` wrote."""
    return [ToolReply(id_, result, error) for id_, result, error in data]


# -- worker to host -----------------------------------------------------------------------


def step_to_wire(step: Step, usable: bool) -> list[Any]:
    """A step as data, with whether the engine can still run code.

    ``["S", usable, output, requests]`` (each ``[id, tool, params, problem, frames,
    kind]``, frames as 6-item lists), ``["F", usable, output, result]``, or
    ``["X", usable, output, error, problem]`` (``error`` as ``SpellError.to_dict``,
    ``problem`` ``[path, data_type, message]`` or null).
    """
    output = list(step.output)
    if isinstance(step, Suspended):
        # frames as lists of 6 items (the encoder takes a named tuple for a dataclass:
        # four times as slow)
        return ["S", usable, output, [
            [r.id, r.tool, r.params, _problem_to_wire(r.problem), list(map(list, r.frames)),
             r.kind]
            for r in step.requests]]
    if isinstance(step, Finished):
        return ["F", usable, output, step.result]
    return ["X", usable, output, step.error.to_dict(), _problem_to_wire(step.problem)]


def _problem_to_wire(problem: Problem | None) -> list[str] | None:
    return None if problem is None else [problem.path, problem.data_type, problem.message]


# How deep an error's data may nest: its causes (each one level), and in the innermost its
# fields' data (as deep as any data an engine sends) and the levels of the error itself.
_ERROR_DEPTH = MAX_CAUSE_DEPTH + MAX_DEPTH + 4


def step_from_wire(data: Any) -> tuple[Step, bool]:
    """The step a worker sent, and whether its engine is still usable.

    Everything is checked, as an engine in the host would have made it: :class:`WireError`
    says what does not fit (data nested past ``bridge.data.MAX_DEPTH``, which the engines
    never send, included); an error that ``SpellError.from_dict`` refuses raises its
    ``bridge/deserialization_failed``.
    """
    if type(data) is not list or len(data) < 4:
        raise WireError("a step must be a list of at least 4 items")
    tag, usable, output = data[0], data[1], data[2]
    if type(usable) is not bool:
        raise WireError("a step's 'usable' must be a boolean")
    if type(output) is not list or (output and any(type(line) is not str for line in output)):
        raise WireError("a step's output must be a list of strings")
    lines = tuple(output) if output else ()
    if tag == "S" and len(data) == 4:
        if type(data[3]) is not list or not data[3]:
            raise WireError("a suspended step's requests must be a non-empty list")
        return Suspended([_request(item) for item in data[3]], lines), usable
    if tag == "F" and len(data) == 4:
        if nested_deeper(data[3]):
            raise WireError(f"a result nested more than {MAX_DEPTH} levels deep (an engine "
                            f"sends none)")
        return Finished(data[3], lines), usable
    if tag == "X" and len(data) == 5:
        if nested_deeper(data[3], _ERROR_DEPTH):
            raise WireError(f"an error nested more than {_ERROR_DEPTH} levels deep")
        return Failed(SpellError.from_dict(_as_engines_make_it(data[3])), lines,
                      _problem(data[4])), usable
    raise WireError(f"unknown step {str(tag)[:20]!r} of {len(data)} items")


def _as_engines_make_it(error: Any, depth: int = 0) -> Any:
    """A worker's error (``SpellError.to_dict``'s form) with only what an engine in the
    host gives its errors: category, kind, message, fields, frames, cause, and of the
    context the two marks an engine sets (``raised_by``: a script raised it; the ref of an
    error the run handed the script, which the host swaps for its original). Retryable,
    a retry delay, a severity and the rest of the context are the host's to decide: a
    worker that sent ``retryable``/``retry_after`` would have a plan retry its task when it
    chose, one that sent a ``correlation_id`` would have its error filed under another
    run. Anything that is not an object is left for ``SpellError.from_dict`` to refuse."""
    if type(error) is not dict:
        return error
    kept = {key: value for key, value in error.items() if key not in _HOSTS_TO_DECIDE}
    context = error.get("context")
    metadata = context.get("metadata") if type(context) is dict else None
    if type(metadata) is dict:
        marks = {key: metadata[key] for key in _ENGINE_MARKS if key in metadata}
        if marks:
            kept["context"] = {"metadata": marks}
    if kept.get("cause") is not None and depth <= MAX_CAUSE_DEPTH:
        kept["cause"] = _as_engines_make_it(kept["cause"], depth + 1)
    return kept


_HOSTS_TO_DECIDE = frozenset({"retryable", "retry_after", "severity", "context"})
_ENGINE_MARKS = (RAISED_BY, REF_KEY)


def _request(item: Any) -> ToolRequest:
    if type(item) is not list or len(item) != 6:
        raise WireError("a request must be a list of 6 items")
    id_, tool, params, problem, frames, kind = item
    if type(id_) is not int or type(tool) is not str or kind not in REQUEST_KINDS:
        raise WireError("a request's id must be an integer, its tool a string and its kind "
                        f"one of {', '.join(map(repr, REQUEST_KINDS))}")
    if type(frames) is not list:
        raise WireError("a request's frames must be a list")
    if params.__class__ in _CONTAINERS and nested_deeper(params):
        raise WireError(f"a request's params nested more than {MAX_DEPTH} levels deep (an "
                        f"engine sends none)")
    return ToolRequest(id_, tool, params, None if problem is None else _problem(problem),
                       [_frame(f) for f in frames], kind)


_CONTAINERS = (list, dict)


# Frames already checked, by their items: a script's tool calls come from a few call
# sites, each sending the same frames at every call. Bounded: a worker sending ever new
# frames empties it, it does not grow.
_FRAMES: dict[tuple[Any, ...], Frame] = {}
_FRAMES_KEPT = 512


def _frame(item: Any) -> Frame:
    if type(item) is not list or len(item) != len(Frame._fields):
        raise WireError(f"a frame must be a list of {len(Frame._fields)} items")
    key = tuple(item)
    try:
        known = _FRAMES.get(key)
    except TypeError:  # an unhashable item (a list, an object): not a frame
        raise WireError("a frame's items must be strings, integers or null") from None
    # 1, True and 1.0 are equal keys: the line and column (the frame's only numbers; a
    # string or null equals only its like) must be of the known frame's types too
    if known is not None and item[2].__class__ is known.line.__class__ \
            and item[3].__class__ is known.column.__class__:
        return known
    try:
        frame = frame_from_data(dict(zip(Frame._fields, item, strict=True)))
    except ValueError as exc:
        raise WireError(f"bad frame: {exc.args[0]}") from None
    if len(_FRAMES) >= _FRAMES_KEPT:
        _FRAMES.clear()
    _FRAMES[key] = frame
    return frame


def _problem(item: Any) -> Problem | None:
    if item is None:
        return None
    if type(item) is not list or len(item) != 3 or any(type(part) is not str for part in item):
        raise WireError("a problem must be a list of 3 strings")
    return Problem(*item)
