"""Data between the host and the engines: what crosses, and the error when it cannot.

The engines hold what JSON holds (see ``engines.base``); a Python tool's result must be
such data before a script gets it (:func:`to_script_data`), a tools file's result must be
so for the engine it goes to (:func:`crossing`), and data the host is given for a script
(``args``) is checked with :func:`not_json_like`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any, NamedTuple

import engines
from bridge import BridgeError, ResourceError, ScriptError, SpellError
from bridge.data import CONTAINER_BYTES, MAX_DEPTH, fits_as_json, plain_json_copy
from engines.base import Problem, crossing_error


def crossing(value: Any, source: str, target: str) -> Any:
    """A tools file's result on its way to another engine, or cross_engine_communication.

    The engines hold what JSON holds; a float that is not finite passes only between two
    engines whose specs say they hold one (Lua: nested in a result it has no JSON form for
    JavaScript).
    """
    kind = value.__class__
    if kind is int or kind is str or kind is bool or value is None:  # the usual result
        return value
    sides = engines.spec_of(source), engines.spec_of(target)
    if all(spec is not None and spec.non_finite_numbers for spec in sides):
        return value
    unfit = not_json_like(value, "result")
    if unfit is not None:  # from an engine, only a float that is not finite
        why = unfit.why
        if isinstance(unfit.piece, float):
            why = f"is not a finite number, which {target} cannot receive"
        raise crossing_error(Problem(unfit.path, type(unfit.piece).__name__,
                                     f"{unfit.path} {why}"), source, target)
    return value


class Unfit(NamedTuple):
    """The first piece of a value that has no JSON form: where, what, why."""

    path: str
    piece: Any
    why: str  # "is a set", "is not a finite number"...
    too_deep: bool = False  # the piece is a list or mapping nested past MAX_DEPTH


def not_json_like(value: Any, path: str, depth: int = 0) -> Unfit | None:
    """Where in ``value`` the first piece that has no JSON form is, that piece, and why.

    JSON-like: None, booleans, ints, finite floats, strings, lists (and tuples) and
    mappings with string keys, nested at most ``bridge.data.MAX_DEPTH`` levels. A mapping
    with another key, or a list or mapping nested deeper, is itself the piece.
    A list or mapping held in many places is looked at once a depth (one held twice at
    each of 40 levels is 2**40 places, not 2**40 walks).
    """
    return _unfit(value, path, depth, set())


def _unfit(value: Any, path: str, depth: int, fine: set[tuple[int, int]]) -> Unfit | None:
    """:func:`not_json_like`; ``fine``: the (id, depth) of the lists and mappings found
    JSON-like already (what lies below one depends on its depth only)."""
    if value is None or isinstance(value, (bool, int, str)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else Unfit(path, value, "is not a finite number")
    if isinstance(value, (Mapping, list, tuple)) and depth >= MAX_DEPTH:
        return Unfit(path, value, f"is nested more than {MAX_DEPTH} levels deep", True)
    if isinstance(value, Mapping):
        if (id(value), depth) in fine:
            return None
        for key, item in value.items():
            if not isinstance(key, str):
                return Unfit(path, value, f"has a key that is not a string ({key!r})")
            found = _unfit(item, f"{path}.{key}", depth + 1, fine)
            if found is not None:
                return found
        fine.add((id(value), depth))
        return None
    if isinstance(value, (list, tuple)):
        if (id(value), depth) in fine:
            return None
        for index, item in enumerate(value):
            found = _unfit(item, f"{path}[{index}]", depth + 1, fine)
            if found is not None:
                return found
        fine.add((id(value), depth))
        return None
    return Unfit(path, value, f"is a {type(value).__name__}")


def to_script_data(value: Any, language: str, path: str = "result", depth: int = 0,
                   memory_mb: int = engines.DEFAULT_LIMITS.memory_mb) -> Any:
    """A tool's result as JSON-like data a script can hold; ``bridge/type_conversion`` if not.

    Lists and mappings nested more than ``bridge.data.MAX_DEPTH`` levels deep are
    ``script/cross_engine_communication``, as the engines refuse them themselves.

    Plain lists and dicts (of the builtin types only, ints within the language's range)
    are copied by :func:`_plain_copy`, which names no path; anything else, and any value
    it is not sure of, goes the slow way, which says where and why it cannot cross.

    The copy holds each list and dict once, as JSON would: one held in many places is
    copied for each. Its copies count against ``memory_mb`` (the run's engine memory
    limit) as they are made (:data:`bridge.data.CONTAINER_BYTES` a list or dict and 8 an
    item; a small dict of scalars in a list, by its slot), so data that holds one list
    twice at each of 40 levels is ``resource/memory_exhaustion``, not 2**40 copies.
    """
    if type(value) is int:  # the usual result first
        limit = _LIMITS[language]
        return value if -limit - 1 <= value <= limit else _too_large(value, language, path)
    room = [memory_mb << 20]
    try:
        if type(value) is list or type(value) is dict:  # the usual data: _script_data's
            copied = _plain_copy(value, _LIMITS[language], depth, room, _UNRECORDED)
            if copied is not None:  # (its first look, with no set made for it)
                return copied
            room[0] = memory_mb << 20  # a look that found it not plain copied nothing
        return _script_data(value, language, path, depth, room, set())
    except _NoRoom:
        raise _no_room(language, memory_mb, "the tool's result") from None


def check_room(value: Any, language: str, memory_mb: int, what: str) -> None:
    """Raise ``resource/memory_exhaustion`` (as :func:`to_script_data` does) when
    ``value``'s lists and dicts, each place counted (:func:`bridge.data.fits_as_json`),
    pass ``memory_mb``: for data handed on as it is (a hook's answer), which each engine
    and the host's own copies write out once a place."""
    if not fits_as_json(value, memory_mb * 2**20):
        raise _no_room(language, memory_mb, what)


def _no_room(language: str, memory_mb: int, what: str) -> SpellError:
    return ResourceError.MemoryExhaustion(
        location=language, available=memory_mb * 2**20,
        description=f"{what} would need more than the {memory_mb} MiB of memory the "
                    f"script may use once copied for it (each place that holds one list "
                    f"or dict is a copy of its own)")


class _Unrecorded(set):
    """The ``odd`` of a first look, which the slow way then takes again: records nothing
    (the common look, at a plain value, makes no set)."""

    def add(self, item: int) -> None:
        """Nothing: see the class."""


_UNRECORDED = _Unrecorded()


class _NoRoom(Exception):
    """The copies of :func:`to_script_data` passed the memory they may take."""


def _dump_fits(model: Any, room: int) -> bool:
    """Whether the dump of ``model``, a pydantic model, counts at most ``room`` bytes as
    :func:`to_script_data` counts its copy (each model a dict of its fields), looked at
    before it is made: a submodel held in two places at each of 40 levels would be
    dumped 2**40 times. Looks no deeper than the recursion limit (a cycle: the dump
    refuses it, as before)."""
    deepest = sys.getrecursionlimit()
    stack = [(model, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > deepest:
            continue
        if hasattr(type(value), "model_dump"):
            items = list(getattr(value, "__dict__", {}).values())
            items += (getattr(value, "__pydantic_extra__", None) or {}).values()
        elif isinstance(value, Mapping):
            items = list(value.values())
        elif isinstance(value, (list, tuple, set, frozenset)):
            items = value
        else:
            continue
        room -= CONTAINER_BYTES + 8 * len(items)
        if room < 0:
            return False
        stack.extend((item, depth + 1) for item in items)
    return True


def _script_data(value: Any, language: str, path: str, depth: int, room: list[int],
                 odd: set[int]) -> Any:
    """:func:`to_script_data`'s slow way; ``odd``: the ids of the lists and dicts a fast
    copy found something not plain in, below them (see :func:`_plain_copy`)."""
    kind = type(value)
    if kind is int:
        limit = _LIMITS[language]
        return value if -limit - 1 <= value <= limit else _too_large(value, language, path)
    if (kind is list or kind is dict) and id(value) not in odd:
        left = room[0]
        copied = _plain_copy(value, _LIMITS[language], depth, room, odd)
        if copied is not None:
            return copied
        room[0] = left  # a look that found it not plain copied nothing: the walk below counts
    if kind is str or kind is float or kind is bool or value is None:
        return value
    if isinstance(value, str):  # a StrEnum member, a str subclass: its text, as any engine
        return str.__str__(value)  # has it (a subclass's own __str__ is not data)
    if isinstance(value, int):  # an IntEnum member: its number
        return _script_data(int.__index__(value), language, path, depth, room, odd)
    if isinstance(value, float):
        return float.__float__(value)
    if hasattr(kind, "model_dump"):  # a pydantic model (not imported unless used)
        if not _dump_fits(value, room[0]):  # (its dump writes a shared submodel out whole
            raise _NoRoom                   # in each place: it is counted first)
        return _script_data(value.model_dump(mode="json"), language, path, depth, room,
                            odd)
    if isinstance(value, (Mapping, list, tuple)) and depth >= MAX_DEPTH:
        raise ScriptError.CrossEngineCommunication(
            from_engine="python", to_engine=language, data_type=type(value).__name__,
            error=f"{path} is nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, (Mapping, list, tuple)):
        room[0] -= CONTAINER_BYTES + 8 * len(value)
        if room[0] < 0:
            raise _NoRoom
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _unconvertible(f"a {type(key).__name__} key", language, f"{path}")
            out[key] = _script_data(item, language, f"{path}.{key}", depth + 1, room, odd)
        return out
    if isinstance(value, (list, tuple)):
        return [_script_data(item, language, f"{path}[{i}]", depth + 1, room, odd)
                for i, item in enumerate(value)]
    raise _unconvertible(type(value).__name__, language, path)


_PLAIN = frozenset({str, float, bool, type(None)})  # crossing as they are, as to_script_data does


def _plain_copy(value: list | dict, limit: int, depth: int, room: list[int], odd: set[int]
                ) -> list | dict | None:
    """A copy of ``value`` as :func:`to_script_data` would make it, when it is plain data:
    lists and dicts (string keys) of plain scalars and ints within ``-limit - 1..limit``,
    nested less than MAX_DEPTH levels deep. None when it is not (anything else: a tuple, a
    subclass, a model, an int out of range...), for the slow way to copy or refuse.
    Each container's values are looked at by C code (their set of types, min and max).

    A list or dict whose copy failed below it goes into ``odd``: the slow way does not
    try it again (each level of deep data would walk all that is below it again)."""
    # type(x), never x.__class__: a proxy (Django's SimpleLazyObject...) answers that
    # with its target's class, and would cross as a str or an int it is not.
    if depth >= MAX_DEPTH:
        return None
    # The copies' count (see to_script_data): a record (a small dict) is counted by the
    # record it is in, if any (a record copied for each slot of a list costs a few times
    # the slot, counted by the list: bounded); the rest, here, each a list or dict and
    # its items.
    is_dict = type(value) is dict
    if is_dict and len(value) <= _SMALL:  # a record: cheaper item by item
        small = {}
        for key, item in value.items():
            kind = type(item)
            if type(key) is not str:
                return None
            if kind is int:
                if item > limit or item < -limit - 1:
                    return None
            elif kind is list or kind is dict:
                room[0] -= CONTAINER_BYTES
                if room[0] < 0:
                    raise _NoRoom
                item = _plain_copy(item, limit, depth + 1, room, odd)
                if item is None:
                    odd.add(id(value))
                    return None
            elif kind not in _PLAIN:
                return None
            small[key] = item
        return small
    room[0] -= CONTAINER_BYTES + 8 * len(value)
    if room[0] < 0:
        raise _NoRoom
    items = value.values() if is_dict else value
    if is_dict and not set(map(type, value)) <= {str}:
        return None
    if not is_dict:
        types = list(map(type, value))
        if types.count(int) == len(types):  # a list of ints, the usual: counting their
            # types is quicker than making a set of them (the engines check what they get)
            if value and (max(value) > limit or min(value) < -limit - 1):
                return None
            return value.copy()
        kinds = set(types)
    else:
        kinds = set(map(type, items))
    if kinds <= _PLAIN:
        return value.copy()
    if int in kinds:
        ints = items if len(kinds) == 1 else [x for x in items if type(x) is int]
        if max(ints) > limit or min(ints) < -limit - 1:
            return None
        if kinds <= _PLAIN_INT:
            return value.copy()
    if not kinds <= _PLAIN_DATA:
        return None
    if is_dict:
        out_dict = {}
        for key, item in value.items():
            if type(item) is list or type(item) is dict:
                item = _plain_copy(item, limit, depth + 1, room, odd)
                if item is None:
                    odd.add(id(value))
                    return None
            out_dict[key] = item
        return out_dict
    out = []
    for item in value:
        if type(item) is list or type(item) is dict:
            item = _plain_copy(item, limit, depth + 1, room, odd)
            if item is None:
                odd.add(id(value))
                return None
        out.append(item)
    return out


_PLAIN_INT = _PLAIN | {int}
_SMALL = 8  # dicts up to this long are looked at item by item
_PLAIN_DATA = _PLAIN_INT | {list, dict}


class _IntegerLimits(dict):
    """The largest integer each language holds exactly (from its spec), by name."""

    def __missing__(self, language: str) -> int:
        spec = engines.spec_of(language)
        limit = self[language] = 2 ** (spec.integer_bits if spec is not None else 53) - 1
        return limit


_LIMITS = _IntegerLimits()


def _too_large(value: int, language: str, path: str) -> Any:
    spec = engines.spec_of(language)
    bits = spec.integer_bits if spec is not None else 53
    name = spec.display_name if spec is not None else language
    raise ScriptError.CrossEngineCommunication(
        from_engine="python", to_engine=language, data_type="int",
        error=f"{path} is an integer larger than {name} holds exactly ({bits} bits and a "
              f"sign): give it as a string")


def _unconvertible(data_type: str, language: str, path: str) -> SpellError:
    return BridgeError.TypeConversion(
        data_type=data_type, from_language="python", to_language=language,
        reason=f"{path} is a {data_type}; only null, booleans, numbers, strings, "
               f"lists and string-keyed dicts cross")


PREVIEW_CHARS = 2000


def preview(value: Any, limit: int = PREVIEW_CHARS) -> Any:
    """Parameters to keep in an error: as they are when small JSON-like data, else a cut text.

    Errors carry the parameters a tool was called with; a huge payload must not make
    every error (and every log line of it) huge, and data with no JSON form (a Lua NaN, an
    object a layer put there) must not make the error itself invalid.
    """
    try:
        text = repr(value)
    except Exception as exc:  # an int past Python's digits for a text, a __repr__ that fails
        return f"<{type(value).__name__} that cannot be shown: {type(exc).__name__}>"[:limit]
    if len(text) <= limit and isinstance(value, (dict, list, str, int, float, bool, type(None))):
        kind = type(value)  # plain lists and dicts looked at without naming a path first
        if ((kind is dict or kind is list) and plain_json_copy(value, MAX_DEPTH) is not None) \
                or not_json_like(value, "parameters") is None:
            return value
    return text[:limit] + ("..." if len(text) > limit else "")
