"""Bounds on the data that crosses between the engines and Python, for every layer.

Data crosses as JSON-like values: Lua tables and JS objects become Python dicts and
lists, and back. Two bounds hold wherever it crosses:

- depth: no value nests more than :data:`MAX_DEPTH` lists/objects/tables (the outermost
  counts as one). Python's own readers and writers of such data recurse (``json``'s
  scanner, ``copy``, pydantic), so deeper data would end as a ``RecursionError`` deep
  inside the host. The Lua prelude, the JS prelude, the engines and the host all check
  this one bound; the error names the path where it was passed;
- size: what the host builds from an engine's data is bounded by the run's memory limit,
  counted as :data:`ITEM_BYTES` per value plus the length of every string (and key):
  about what Python spends on it. A string that a script shares a thousand times is
  counted a thousand times, since Python makes a thousand copies of it.

:func:`read_json` reads JSON text from outside (a file, a command line) with the depth
bound checked before Python's recursive scanner sees the text.
"""

from __future__ import annotations

import json
import re
import sys
from itertools import accumulate
from typing import Any

MAX_DEPTH = 100
ITEM_BYTES = 64

# JSON strings (which may hold brackets), then everything that is not a bracket.
_STRINGS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


# The types of JSON's scalars, exactly (no subclasses: a str or int subclass is not data).
JSON_SCALARS = frozenset({str, int, float, bool, type(None)})


def plain_json_copy(value: list | dict, max_depth: int, depth: int = 0) -> list | dict | None:
    """A copy of ``value`` when it holds only JSON scalars (floats finite), lists, and
    dicts with string keys, all of these exact types, nested less than ``max_depth``
    levels; else None: not plain, or not sure (for a walk that says where and why). The
    fast look at an error's JSON fields and at a failed call's parameters (its preview).
    """
    if depth >= max_depth:
        return None
    if type(value) is dict:
        copy: Any = {}
        for key, item in value.items():
            if type(key) is not str:
                return None
            kind = type(item)
            if kind is dict or kind is list:
                item = plain_json_copy(item, max_depth, depth + 1)
                if item is None:
                    return None
            elif kind not in JSON_SCALARS or (kind is float and item - item != 0.0):
                return None
            copy[key] = item
        return copy
    copy = []
    for item in value:  # (the dict's loop, without its keys: a helper would be a call an item)
        kind = type(item)
        if kind is dict or kind is list:
            item = plain_json_copy(item, max_depth, depth + 1)
            if item is None:
                return None
        elif kind not in JSON_SCALARS or (kind is float and item - item != 0.0):
            return None
        copy.append(item)
    return copy


class TooDeep(ValueError):
    """JSON text nested deeper than the bound it was read with."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"nested more than {limit} levels deep")
        self.limit = limit


# What a list or dict counts at least, before its items (8 bytes each), where the host
# bounds data that JSON (or a copy of it) writes out once a place: less than either engine
# needs to hold one (host.data counts a tool's result so too).
CONTAINER_BYTES = 64


def fits_as_json(value: Any, room: int) -> bool:
    """Whether ``value``'s lists and dicts, each place counted (CONTAINER_BYTES a list or
    dict and 8 an item), take at most ``room`` bytes (see :func:`json_room`)."""
    return json_room(value, room) >= 0


def json_room(value: Any, room: int) -> int:
    """``room`` less what ``value``'s lists and dicts count as :func:`fits_as_json` counts
    them; negative once past it (the walk stops there).

    JSON text writes a list held in many places once for each: one held twice at each of
    40 levels is 2**40 copies, which an encoder would write until the host runs out of
    memory. This walk stops once it has counted ``room``; it looks no deeper than an
    encoder can go (the recursion limit), so a cycle fails there as it always did.
    """
    deepest = sys.getrecursionlimit()  # (read each call: a host may raise it)
    stack = [(value, 0)]
    while stack:
        value, depth = stack.pop()
        if not isinstance(value, (dict, list, tuple)) or depth > deepest:
            continue
        room -= CONTAINER_BYTES + 8 * len(value)
        if room < 0:
            return room
        depth += 1
        for item in value.values() if isinstance(value, dict) else value:
            if isinstance(item, (dict, list, tuple)):  # (scalars count in their slot)
                stack.append((item, depth))
    return room


def json_depth(text: str) -> int:
    """How deep the arrays and objects of the JSON ``text`` nest, found without recursion.

    Brackets inside strings do not count. For text that is not JSON the answer is only an
    estimate (the JSON reader then refuses the text anyway).
    """
    skeleton = _NOT_BRACKETS.sub("", _STRINGS.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, skeleton)), default=0)


def nested_deeper(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether the lists and dicts of ``value`` (JSON-like data, as ``json`` reads it) nest
    more than ``limit`` levels deep, found without recursion (level by level: a flat value
    costs one look at each item)."""
    level = [value] if value.__class__ in (list, dict) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        inner: list[Any] = []
        for item in level:
            for child in (item.values() if item.__class__ is dict else item):
                if child.__class__ in (list, dict):
                    inner.append(child)
        level = inner
    return False


def read_json(text: str | bytes | bytearray, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads(text)``, refusing text nested more than ``max_depth`` levels.

    Raises :class:`TooDeep` (a ``ValueError``) before Python's recursive scanner would
    reach its recursion limit (or, with a raised limit, the end of the C stack), and
    ``ValueError``/``TypeError`` as ``json.loads`` does for text that is not JSON.
    """
    if isinstance(text, (bytes, bytearray)):
        text = text.decode(json.detect_encoding(text), "surrogatepass")
    if not isinstance(text, str):
        raise TypeError(f"the JSON object must be str or bytes, not {type(text).__name__}")
    if json_depth(text) > max_depth:
        raise TooDeep(max_depth)
    return json.loads(text)
