"""The Lua engine: Lua 5.5 (or 5.4, or LuaJIT) on lupa, sandboxed, with tool calls as
coroutine yields.

Every engine owns one ``LuaRuntime``. A prelude (``lua_prelude.lua`` beside this module,
compiled once per process and loaded as bytecode into each runtime) builds each run's
environment and drives the script inside a coroutine:

- a tool call (``tools.search{...}``) yields a request out of the script's coroutine,
  forwarded through any coroutines the script made, up to :meth:`LuaEngine.start` or
  :meth:`LuaEngine.resume`, which return it as :class:`Suspended`;
- the reply resumes the script: a result is the call's value, an error envelope is
  raised at the call site as an error table (``category``, ``kind``, ``fields``...);
- an uncaught error is captured, with ``debug.traceback``, by a message handler that
  runs before the stack unwinds, and translated by :mod:`bridge.lua`;
- ``require`` yields a request of the reserved kind ``"module"``: the host finds and
  reads the file (:mod:`host.libraries`) and answers with its name and text, which the
  engine registers with the script (:meth:`bridge.lua.LuaScript.add_module`: the
  module's frames and lines are its own) and the prelude loads under that name.

No Python object is reachable from a script: data crosses as Lua tables built from
JSON-like Python data, checked on the way in and out (``bridge.data``: at most MAX_DEPTH
levels deep, and what Python builds from a script's data bounded by the memory limit and
the deadline: see :meth:`LuaEngine._from_lua`; a table's string keys come out sorted, so
that a run gives the same data in every process). No metatable of the
prelude's is reachable either (each is protected with ``__metatable``), since a script
that could add ``__gc`` to one would get finalizers, which run with hooks off.
The one Python callable inside the runtime is the engine's clock (``time.monotonic``, or
infinity once the engine has been stopped), an upvalue of the count hook (constrained
scripts have no ``debug`` library to reach it), and attribute access on Python objects
is refused outright, so even a trusted script that digs it out can only call it.

Limits: a count hook on the script's coroutine and on every coroutine the script
creates stops the run at the deadline with a private error value that the sandbox's
``pcall``, ``xpcall``, ``load`` and coroutine functions re-raise (so do they with memory
errors); ``max_memory`` bounds memory; Lua bounds the stack itself. What the host hands
to a script (its args, tool results and errors, a tools file's parameters) is built with
the memory limit lifted and must then fit in it, or the run fails with
``resource/memory_exhaustion`` before the script sees it (see :meth:`LuaEngine._handoff`):
lupa pushes values outside any protected call, where Lua would panic and abort the process
if the allocator refused. :meth:`LuaEngine.stop`
(from any thread) makes the clock read infinity, so the hook stops the script at its next
look at the clock, within about 20 ms. A single long C call (``table.sort`` of millions
of items, pattern matching with many quantifiers on a long string) runs to its end before
the hook can stop it.
"""

from __future__ import annotations

import functools
import importlib
import math
import re
import threading
import time
from importlib import resources
from types import ModuleType
from typing import Any, Literal

from bridge import ConfigurationError, Frame, ResourceError, ScriptError, SpellError, variants
from bridge.data import ITEM_BYTES, MAX_DEPTH
from bridge.envelope import script_constructors
from bridge.errors import field_defaults
from bridge.jsontext import replaced, unicode_text
from bridge.lua import LuaScript, compilation_failed, thrown_error
from engines.base import (
    Engine,
    Failed,
    Finished,
    Limits,
    Problem,
    Sandbox,
    Step,
    Suspended,
    ToolInfo,
    ToolReply,
    ToolRequest,
    crossing_error,
    did_not_fit,
    misdirected,
    protocol_violation,
    sandbox_hint,
)
from engines.specs import LUA
from engines.specs import LUA_VERSIONS as _OFFERED

# The values the host hands to a Lua script, by the path _to_lua names them with.
_HANDED = {"args": "run's arguments", "params": "call's parameters",
           "result": "tool's result", "error": "tool's error"}
# The entries of the prelude's `enter`, and the longest string Lua interns (LUAI_MAXSHORTLEN).
_START, _STEP, _LOAD_LIBRARY, _CALL = 1, 2, 3, 4
# The reserved request kinds only the prelude makes (engines.base.ToolRequest.kind).
_RESERVED = {"recovery": "recovery", "module": "module"}
_LUA_SHORT_STRING = 40
# Lua names files of 60 bytes or more as "..." plus their tail (luaO_chunkid).
_LUA_IDSIZE = 60
# Lua data the host converts: the clock is read each time this much of the budget is spent.
_CLOCK_EVERY = 2**20
# The values of a Lua array read in one call of unpack (Lua's stack holds them meanwhile).
_UNPACK_PIECE = 2**14
_JIT_UNPACK_PIECE = 4096  # LuaJIT's unpack gives at most about 8,000 values ("too many results")
DEFAULT_LIMITS = Limits()
# The unpack that reads a checked array for the host (_convert_array): raw (see the file).
_RAW_UNPACK = resources.files("engines").joinpath("lua_raw_unpack.lua").read_text("utf-8")
_INT64 = (-(2**63), 2**63 - 1)
# LuaJIT's numbers are doubles: the integers they hold exactly (a larger one is refused,
# never rounded, as host.data refuses one larger than a language's spec says).
_INT53 = (-(2**53), 2**53)
# Values that cross as they are (ints only within 64 bits: checked by _check_data; strs
# only when they have a UTF-8 form: see _utf8).
_SCALARS = frozenset({str, float, bool, type(None)})
_SURROGATE = re.compile("[\ud800-\udfff]")
_NOT_A_BYTE = re.compile("[\ud800-\udc7f\udd00-\udfff]")  # surrogateescape uses U+DC80-DCFF

PRELUDE = resources.files("engines").joinpath("lua_prelude.lua").read_text("utf-8")

LuaVersion = Literal["5.5", "5.4", "luajit"]
# The Lua versions offered, each by the lupa module that brings it (the first: the default).
LUA_VERSIONS: dict[str, str] = dict(zip(_OFFERED, ("lupa.lua55", "lupa.lua54",
                                                   "lupa.luajit21"), strict=True))
DEFAULT_LUA_VERSION: LuaVersion = "5.5"


@functools.cache
def lua_module(version: str) -> ModuleType:
    """The lupa module of a Lua version (``"5.5"``, ``"5.4"``, ``"luajit"``), imported once."""
    if version not in LUA_VERSIONS:
        raise ValueError(f"unknown Lua version {version!r} (one of {', '.join(LUA_VERSIONS)})")
    return importlib.import_module(LUA_VERSIONS[version])


@functools.cache
def _compat_source(version: str) -> str:
    """What a version lacks of Lua 5.4's that the prelude uses, as a chunk that defines the
    local ``COMPAT`` (empty on 5.4 and 5.5; ``lua_compat_luajit.lua`` on LuaJIT)."""
    if version != "luajit":
        return "local COMPAT = {}\n"
    return resources.files("engines").joinpath("lua_compat_luajit.lua").read_text("utf-8")


def _prelude_source(version: str) -> str:
    """The prelude's text for a version: the one file, with LuaJIT reading no attributes
    (``<close>``: 5.4 syntax; the prelude does by hand what it does where ``COMPAT.no_close``)."""
    text = PRELUDE if version != "luajit" else PRELUDE.replace(" <close>", "")
    return _generated_tables() + _compat_source(version) + text


def _sandbox_line(removed: str, instead: str) -> str:
    return sandbox_hint(f"{removed}; {instead}")


_TRUSTED = "or run a script you trust with --sandbox trusted"
_TOOL = f"call a tool for what it does, {_TRUSTED}"
# What the constrained sandbox removed, and what to do instead: the line an error about one
# of them gets (bridge.lua.sandbox_hint). `require` has its own, from the host's roots.
SANDBOX_HINTS: dict[str, str] = {
    "io": _sandbox_line("io is removed", f"read and write files through a tool, {_TRUSTED}"),
    "debug": _sandbox_line("debug is removed", f"every error comes with its traceback, {_TRUSTED}"),
    "dofile": _sandbox_line("dofile is removed", "load Lua modules with require and --lib DIR"),
    "loadfile": _sandbox_line("loadfile is removed",
                              "load Lua modules with require and --lib DIR"),
    "warn": _sandbox_line("warn is removed", "print, or raise an error"),
    **{f"os.{name}": _sandbox_line("os has only time, clock and date", _TOOL)
       for name in ("execute", "exit", "getenv", "remove", "rename", "setlocale", "tmpname")},
    "string.dump": _sandbox_line("string.dump is removed",
                                 "binary chunks cannot be loaded in it either"),
    **{f"package.{name}": _sandbox_line(
        "package has only loaded", "require searches the library roots: add one with --lib DIR")
       for name in ("path", "cpath", "loadlib", "searchpath", "searchers", "preload")},
}


def _lua_string(value: str) -> str:
    # the usual characters to escape replaced whole (a generator over the hierarchy's
    # templates, 9,000 characters, cost a command's start 2 ms); each other character
    # that is not printable one by one, as before
    escaped = value.replace("\\", "\\u{5C}").replace('"', "\\u{22}").replace(
        "\n", "\\u{A}").replace("\t", "\\u{9}")
    if escaped.isprintable():
        return '"' + escaped + '"'
    return '"' + "".join(
        ch if ch.isprintable() and ch not in '"\\' else f"\\u{{{ord(ch):X}}}" for ch in value
    ) + '"'


def _generated_tables() -> str:
    """The message templates and constructor names of the error hierarchy, as Lua source.

    The templates are one text (a line per variant: code, template, then the declared
    defaults already written as Python's str() writes them), which the prelude splits on
    first use: a single string constant loads much faster than a table of a hundred.
    """
    lines = []
    for cls in variants():
        defaults = [f"{name}={value}"
                    for name, value in field_defaults(cls).items()
                    if value is not ... and isinstance(value, str | int | float | bool | None)]
        lines.append("\t".join([f"{cls.category}/{cls.kind}", cls.template, *defaults]))
    messages = "\n".join(" ".join(line.split("\n")) for line in lines)
    constructors = ", ".join(f"[{_lua_string(name)}] = {_lua_string(category)}"
                             for name, category in script_constructors().items())
    return (f"local MESSAGES = {_lua_string(messages)}\n"
            f"local CONSTRUCTORS = {{{constructors}}}\n"
            f"local MAX_DEPTH, ITEM_BYTES = {MAX_DEPTH}, {ITEM_BYTES}\n")


@functools.cache
def prelude_bytecode(version: str = DEFAULT_LUA_VERSION) -> bytes:
    """The prelude compiled once per process and version; each runtime loads it without
    compiling (bytecode is the version's own: each version compiles its copy)."""
    source = _prelude_source(version).encode()
    module = lua_module(version)
    compiler = module.LuaRuntime(register_eval=False, register_builtins=False, encoding=None)
    dumped: bytes = compiler.execute(
        b"return string.dump(assert(load(..., '=[polyspell]', 't')))", source)
    return dumped


@functools.cache
def _table_type(version: str) -> type:
    """The type of the Lua tables a version's lupa module hands to Python (not exported)."""
    module = lua_module(version)
    return type(module.LuaRuntime(register_eval=False, register_builtins=False).table())


_table_type(DEFAULT_LUA_VERSION)  # the default version's module, imported with this one


def _deny_attributes(obj: Any, name: Any, is_setting: bool) -> Any:
    raise AttributeError("Python attributes are not reachable from Lua")


# ``text`` as a Lua string can hold it: valid UTF-8. Lua strings are bytes and the prelude
# reads them as UTF-8, turning invalid bytes into U+FFFD on the way out; a Python string with
# a lone surrogate has no UTF-8 form, so on the way in each one becomes U+FFFD too. Tables are
# built first as they are: only when lupa cannot encode a string is the data copied.
_utf8 = unicode_text


def _has_surrogate(text: str) -> bool:
    return not text.isascii() and _SURROGATE.search(text) is not None


def _utf8_data(value: Any) -> Any:
    """JSON-like ``value`` with its strings (keys too) made valid UTF-8 by :func:`_utf8`."""
    return replaced(value, _utf8_leaf, _utf8_leaf)


def _utf8_leaf(value: Any) -> Any:
    return _utf8(value) if type(value) is str else value


class _NoRoom(Exception):
    """Python data that obviously cannot fit in the Lua engine's memory limit."""


class _NotData(Exception):
    """Python data that has no Lua counterpart (raised by :func:`_check_data`)."""

    def __init__(self, path: str, problem: str, data_type: str) -> None:
        super().__init__(f"{path} {problem}")
        self.problem = Problem(path, data_type, f"{path} {problem}")


_TABLE_BYTES = 56  # a Lua table without its slots (sizeof(Table), Lua 5.4 on 64 bits)


class _Shared(Exception):
    """Python data holding one list or dict in two places (raised by :func:`_check_data`).

    lupa's recursive ``table_from`` builds the second one wrongly (an empty table, another
    table, or a "lost reference" error: it remembers the first as a stack slot it has
    freed since), so such data crosses as :func:`_unshared` copies it.
    """


def _unshared(value: Any, room: list[int], depth: int) -> Any:
    """``value`` with each list, tuple and dict in it a copy of its own, as JSON carries
    data (and the JavaScript engine gets it, and Lua data comes back to Python).

    Raises :class:`_NoRoom` once the copies pass ``room[0]`` bytes as Lua tables (at
    least _TABLE_BYTES each, and 8 a slot), so that a list held twice at each of many
    levels costs no more than data of the memory limit's size. Containers MAX_DEPTH deep
    stay as they are, for _check_data to refuse (a cycle is copied round until then): the
    copy holds no container twice above them.
    """
    kind = type(value)
    if (kind is not dict and kind is not list and kind is not tuple) or depth >= MAX_DEPTH:
        return value
    room[0] -= _TABLE_BYTES + 8 * len(value)
    if room[0] < 0:
        raise _NoRoom
    if kind is dict:
        return {key: _unshared(item, room, depth + 1) for key, item in value.items()}
    return [_unshared(item, room, depth + 1) for item in value]


_PLAIN_DATA = _SCALARS | {int, list, dict}
_JUST_INTS = {int}
_SMALL_DICT = 32  # dicts up to this long are looked at item by item (faster up to ~32)


def _plain_size(value: list | dict, ints: tuple[int, int], depth: int, seen: set[int]
                ) -> int | None:
    """What :func:`_check_data` returns for ``value`` when it is plain data (lists and
    dicts with string keys, of scalars and ints within ``ints``, less than MAX_DEPTH deep),
    found with each container's values looked at by C code and no path named; None when it
    is not, or may not be (for :func:`_check_data` to say why, or to count it)."""
    # type(x), never x.__class__: a proxy (Django's SimpleLazyObject...) answers that
    # with its target's class, and would cross as a str or an int it is not.
    if depth >= MAX_DEPTH or id(value) in seen:  # or held twice: for _check_data
        return None
    seen.add(id(value))
    is_dict = type(value) is dict
    if is_dict and len(value) <= _SMALL_DICT:  # a record: cheaper item by item
        size = 0
        for key, item in value.items():
            kind = type(item)
            if type(key) is not str:
                return None
            size += 8 + len(key)
            if kind is str:
                size += len(item)
            elif kind is int:
                if not ints[0] <= item <= ints[1]:
                    return None
            elif kind is list or kind is dict:
                inner = _plain_size(item, ints, depth + 1, seen)
                if inner is None:
                    return None
                size += inner
            elif kind not in _SCALARS:
                return None
        return size
    if is_dict:
        if not set(map(type, value)) <= {str}:
            return None
        items: Any = value.values()
        size = 8 * len(value) + sum(map(len, value))
    else:
        items = value
        size = 8 * len(value)
    kinds = set(map(type, items))
    if not kinds <= _PLAIN_DATA:
        return None
    if int in kinds:
        numbers = items if len(kinds) == 1 else [x for x in items if type(x) is int]
        if min(numbers) < ints[0] or max(numbers) > ints[1]:
            return None
    if str in kinds:
        texts = map(len, items if len(kinds) == 1 else
                    [x for x in items if type(x) is str])
        # a dict's string values count whole; a list's only when Lua does not intern them
        size += sum(texts) if is_dict else sum(n for n in texts if n > _LUA_SHORT_STRING)
    if list in kinds or dict in kinds:
        for item in items:
            if type(item) is list or type(item) is dict:
                inner = _plain_size(item, ints, depth + 1, seen)
                if inner is None:
                    return None
                size += inner
    return size


# The keys of an error envelope (bridge.envelope.error_envelope), and what they weigh in
# _plain_size's count.
_ENVELOPE_KEYS = frozenset({"category", "kind", "name", "message", "fields", "retryable",
                            "retry_after", "cause", "ref"})
_ENVELOPE_KEY_BYTES = sum(8 + len(key) for key in _ENVELOPE_KEYS)


def _envelope_level(envelope: Any, ints: tuple[int, int]) -> tuple[Any, ...] | None:
    """One level of an error envelope as the host makes it: its category, kind, name,
    message, fields, retryable, retry_after and ref, when it has the nine keys with
    strings, a dict of fields, a bool, numbers within ``ints`` (or None); else None."""
    if type(envelope) is not dict or envelope.keys() != _ENVELOPE_KEYS:
        return None
    read = category, kind, name, message, fields, retryable, retry_after, ref = (
        envelope["category"], envelope["kind"], envelope["name"], envelope["message"],
        envelope["fields"], envelope["retryable"], envelope["retry_after"], envelope["ref"])
    if not (type(category) is str and type(kind) is str and type(name) is str
            and type(message) is str and type(fields) is dict and type(retryable) is bool
            and (retry_after is None or type(retry_after) is float
                 or (type(retry_after) is int and ints[0] <= retry_after <= ints[1]))
            and (ref is None or (type(ref) is int and ints[0] <= ref <= ints[1]))):
        return None
    return read


def _envelope_size(envelope: Any, ints: tuple[int, int]) -> int | None:
    """What :func:`_plain_size` returns for an error envelope as the host makes it (its
    nine keys on each level: strings, a bool, numbers, a dict of fields and the cause's
    envelope or None), found level by level with only each level's fields walked; None
    when ``envelope`` is not such (for _plain_size, or the walk that says why)."""
    size = 0
    seen: set[int] = set()
    depth = 0
    while True:
        level = None if depth >= MAX_DEPTH or id(envelope) in seen \
            else _envelope_level(envelope, ints)
        if level is None:
            return None
        seen.add(id(envelope))
        category, kind, name, message, fields = level[:5]
        inner = _plain_size(fields, ints, depth + 1, seen)
        if inner is None:
            return None
        size += _ENVELOPE_KEY_BYTES + len(category) + len(kind) + len(name) + len(message) \
            + inner
        envelope = envelope["cause"]
        if envelope is None:
            return size
        depth += 1


# The levels of an envelope, and the fields of each, that are handed over flat (see
# _flat_envelope; the prelude's FIELDS builds a level's fields of up to _FLAT_FIELDS).
_FLAT_LEVELS, _FLAT_FIELDS = 4, 8


def _flat_envelope(envelope: Any, ints: tuple[int, int]
                   ) -> tuple[list[Any], int, bool] | None:
    """An error envelope as the host usually makes it, as the values the prelude's
    ``put_error`` builds its tables from, its size as :func:`_envelope_size` counts it,
    and whether a field holds a list or a dict; None when it is not such (for
    :meth:`LuaEngine._to_lua`, the long way).

    Such an envelope has at most _FLAT_LEVELS levels (the error and its causes), each
    with the nine keys of :func:`_envelope_size`'s checks and at most _FLAT_FIELDS fields
    of string keys and scalars (numbers within ``ints``, text, booleans, None) or lists
    and dicts of scalars (a call's parameters), no dict or list twice (lupa's recursive
    ``table_from`` builds one met again otherwise). The values go level by level from the
    innermost cause out: the fields' count, category, kind, name, message, retryable,
    retry_after, ref, then the fields' keys and values (a list or dict as itself: see
    :meth:`LuaEngine._put_error`).
    """
    levels: list[list[Any]] = []
    seen: list[int] = []
    size = 0
    nested = False
    while True:
        read = None if len(levels) == _FLAT_LEVELS else _envelope_level(envelope, ints)
        if read is None:
            return None
        category, kind, name, message, fields, retryable, retry_after, ref = read
        if len(fields) > _FLAT_FIELDS or id(fields) in seen:
            return None
        seen.append(id(fields))
        size += _ENVELOPE_KEY_BYTES + len(category) + len(kind) + len(name) + len(message)
        level = [len(fields), category, kind, name, message, retryable, retry_after, ref]
        for key, item in fields.items():
            item_kind = type(item)
            if type(key) is not str:
                return None
            size += 8 + len(key)
            if item_kind is str:
                size += len(item)
            elif item_kind is int:
                if not ints[0] <= item <= ints[1]:
                    return None
            elif item_kind is dict or item_kind is list:
                # (a level below the deepest _plain_size takes: scalars only)
                inner = None if id(item) in seen else _plain_size(
                    item, ints, MAX_DEPTH - 1, set())
                if inner is None:
                    return None
                seen.append(id(item))
                size += inner
                nested = True
            elif item_kind not in _SCALARS:
                return None
            level += (key, item)
        levels.append(level)
        envelope = envelope["cause"]
        if envelope is None:
            break
    values = levels.pop()
    while levels:
        values += levels.pop()
    return values, size, nested


class _SourceBytes(bytes):
    """A Lua source that is not UTF-8 (Latin-1 string literals are legal Lua), as the bytes
    the host read (it carries them as surrogate escapes): handed to Lua as they are. Only
    the engine makes these, so no tool result becomes a Lua string from bytes."""


def _source_code(source: str) -> str | _SourceBytes | None:
    """What Lua compiles for ``source``: itself, or the bytes its surrogate escapes stand
    for; None when it holds a surrogate that stands for no byte (not source at all)."""
    if not _has_surrogate(source):
        return source
    try:
        return _SourceBytes(source.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        return None


def _not_source(script: LuaScript, source: str) -> str:
    """The compiler's message for a source holding a surrogate that is no byte's escape."""
    at = _NOT_A_BYTE.search(source).start()  # type: ignore[union-attr]
    line = source.count("\n", 0, at) + 1
    return (f"{script.prefix}{line}: the source is not valid UTF-8 text (a lone surrogate "
            f"at index {at})")


def _check_data(value: Any, path: str, depth: int, seen: dict[int, bool],
                ints: tuple[int, int] = _INT64) -> int:
    """Raise :class:`_NotData` unless ``value`` is JSON-like data that Lua can hold, or
    :class:`_Shared` when it holds a list or dict twice (``seen``: the containers met, True
    while on the path walked; one met again on it, a cycle, is walked on until too deep).

    Returns a lower bound of the bytes the value takes as a Lua value: 8 bytes a slot; a
    dict entry also its key's length and its string value's (each entry costs a node and
    a string of its own for the key, more than a short string value); a list's long
    strings (over 40 bytes: Lua interns only shorter ones) their length.
    """
    kind = type(value)
    if value is None or kind is bool or kind is float:
        return 0
    if kind is str:
        return len(value) if len(value) > _LUA_SHORT_STRING else 0
    if kind is int:
        if not ints[0] <= value <= ints[1]:
            what = "Lua (64 bits)" if ints is _INT64 else "LuaJIT (53 bits and a sign)"
            raise _NotData(path, f"is an integer too large for {what}", "int")
        return 0
    if kind is _SourceBytes:
        return len(value)
    if depth >= MAX_DEPTH:
        raise _NotData(path, f"is nested more than {MAX_DEPTH} levels deep", kind.__name__)
    if seen.get(id(value)) is False:
        raise _Shared
    seen[id(value)] = True
    size = 0
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise _NotData(path, f"has a key that is not a string ({key!r})", "dict")
            size += 8 + len(key) + (len(item) if type(item) is str else
                                    _check_data(item, f"{path}.{key}", depth + 1, seen, ints))
        seen[id(value)] = False
        return size
    if kind is list or kind is tuple:
        for index, item in enumerate(value, 1):
            size += 8 + _check_data(item, f"{path}[{index}]", depth + 1, seen, ints)
        seen[id(value)] = False
        return size
    raise _NotData(path, f"is a {kind.__name__}, not JSON-like data", kind.__name__)


class LuaEngine(Engine):
    """Runs one Lua script at a time in its own sandboxed runtime (see the module).

    ``lua_version`` chooses the Lua: ``"5.5"`` (the default), ``"5.4"`` or ``"luajit"``
    (LuaJIT 2.1, Lua 5.1 with its extensions), each from its lupa module, all with the one
    prelude (and, on LuaJIT, ``lua_compat_luajit.lua`` before it). LuaJIT's count hook does
    not fire inside JIT-compiled code, so the time limit would not hold: the engine turns
    the JIT compiler off (an interpreter whose hook fires, still faster than Lua 5.5's)
    unless ``jit=True`` (or the class's ``jit``), which a worker process sets: the host
    kills it at the deadline (:mod:`engines.worker`). LuaJIT has no limit on C-stack depth
    (a script recursing through ``string.gsub`` or ``coroutine.wrap`` crashes the process),
    so the host runs it only in worker processes (``host.host.PROCESS_ONLY``).
    """

    spec = LUA

    @classmethod
    def before_confinement(cls) -> None:
        """Load from files all that an engine of any version needs (its lupa module, the
        LuaJIT compat chunk), for a process that can open no file later (a confined
        worker, :mod:`engines.worker`). Each version's prelude compiles, in memory, when
        its first engine is made (about 7 ms)."""
        for version in LUA_VERSIONS:
            lua_module(version)
            _compat_source(version)
            _table_type(version)

    # LuaJIT's compiler stays on (else off: see the class): set by a worker process
    # (engines.worker), which the host kills at the deadline.
    jit = False

    def __init__(
        self,
        *,
        limits: Limits = DEFAULT_LIMITS,
        sandbox: Sandbox = "constrained",
        lua_version: LuaVersion = DEFAULT_LUA_VERSION,
        jit: bool | None = None,
    ) -> None:
        super().__init__(limits=limits, sandbox=sandbox)
        self._hints = SANDBOX_HINTS if sandbox == "constrained" else None
        if lua_version not in LUA_VERSIONS:
            raise ConfigurationError.InvalidValue(
                key="lua_version", value=str(lua_version)[:100],
                reason=f"unknown Lua version (one of {', '.join(LUA_VERSIONS)})")
        self.lua_version = lua_version
        self._lupa = lupa = lua_module(lua_version)
        self._ints = _INT53 if lua_version == "luajit" else _INT64  # what it holds exactly
        self._table_type = _table_type(lua_version)  # what its tables are in Python
        self._memory_limit = limits.memory_mb * 2**20
        self._clock_from = max(self._memory_limit - _CLOCK_EVERY, 0)  # see _from_lua
        self._deadline = 0.0
        self._script: LuaScript | None = None
        self._thread = 0  # the thread that runs the script (see _call_site)
        self._closed_sites: dict[int, list[Frame]] = {}  # read as it closed (see close)
        self._waiting: set[int] = set()  # the requests whose replies script code waits for
        self._modules: set[int] = set()  # those of them that are require's (kind "module")
        self._exported: dict[str, int] = {}  # a loaded tools file's functions: name -> position
        self._started = 0.0
        self._failed: SpellError | None = None  # set once the engine must not run again
        self._stopped = stopped = [False]  # stop(): the clock reads infinity from then on

        def clock() -> float:
            return math.inf if stopped[0] else time.monotonic()

        self._clock = clock
        self._lua: Any = lupa.LuaRuntime(
            register_eval=False, register_builtins=False, unpack_returned_tuples=True,
            max_memory=self._memory_limit, attribute_filter=_deny_attributes)
        self._table_from = self._lua.table_from
        self._set_max_memory = self._lua.set_max_memory
        self._set_max_memory(0)  # see _enter: the prelude's set-up is the host's, not the script's
        try:
            self._unpack = self._lua.execute(_RAW_UNPACK)  # see _convert
            (self._put, self._enter, self._take, self._drain, self._lua_short_src,
             self._lua_site, self._lua_put_error) = self._lua.execute(
                prelude_bytecode(lua_version), clock, sandbox == "trusted",
                self._memory_limit, self.jit if jit is None else jit)
        finally:
            self._set_max_memory(self._memory_limit)
        if self._over_limit():
            self._failed = self._memory_error()

    # -- the Engine interface ----------------------------------------------------------

    def start(
        self, source: str, filename: str, args: Any, tools: list[ToolInfo], deadline: float
    ) -> Step:
        """Compile and run ``source`` as ``filename`` until it suspends or ends."""
        return self._begin(source, filename, tools, deadline, _START, args)

    def load(self, source: str, filename: str, tools: list[ToolInfo], deadline: float) -> Step:
        """Run a tools file: its chunk returns a table; its functions are the exports."""
        step = self._begin(source, filename, tools, deadline, _LOAD_LIBRARY, None)
        if isinstance(step, Finished):
            if not step.result:
                step.result = []  # an empty Lua table reads as {}
            # call() names a function by its position among them: a number crosses into
            # Lua with no string to make (see _handoff)
            self._exported = {name: i for i, name in enumerate(step.result, 1)}
        return step

    def call(self, function: str, params: Any, deadline: float) -> Step:
        """Call the exported ``function`` with ``params`` in a coroutine of its own."""
        if self._failed is not None:
            return Failed(self._failed)
        if self._lua is None or self._script is None:
            return self._fail(_closed() if self._lua is None else protocol_violation(
                "call() on a Lua engine that has loaded no tools file"))
        if self._clock() >= deadline:
            return self._fail(self._time_error(None))
        return self._answered(self._handoff(_CALL, deadline,
                                            self._exported.get(function, function), None,
                                            params, "params"), deadline)

    def _begin(self, source: str, filename: str, tools: list[ToolInfo], deadline: float,
               entry: int, args: Any) -> Step:
        if self._failed is not None:
            return Failed(self._failed)
        if self._lua is None:
            return self._fail(_closed())
        code = _source_code(source)
        self._thread = threading.get_ident()  # where its requests' call sites can be read
        # what tracebacks show of it: bytes that are not UTF-8 replaced (U+FFFD)
        self._script = LuaScript(filename=filename, source=_utf8(source), language=self.language)
        self._waiting.clear()
        self._modules.clear()
        self._started = time.monotonic()
        shown = _utf8(filename)  # the name Lua knows the chunk by
        chunkname = "@" + shown
        if len(shown.encode()) >= _LUA_IDSIZE - 1:
            self._set_max_memory(0)  # the prelude's own work (see _enter)
            try:
                self._script.short_src = self._lua_short_src(chunkname)
            except self._lupa.LuaError as exc:
                return self._fail(self._engine_error(exc))
            finally:
                self._set_max_memory(self._memory_limit)
        elif shown is not filename:
            self._script.short_src = shown
        if code is None:  # code is not data: refused, as JavaScript refuses it
            return self._fail(compilation_failed(self._script, _not_source(self._script, source)))
        infos = [_utf8(text) for info in tools for text in (info.name, info.description)]
        return self._answered(self._handoff(entry, deadline, code, chunkname,
                                            {} if args is None else args, "args", infos),
                              deadline)

    def resume(self, replies: list[ToolReply], deadline: float) -> Step:
        """Deliver the reply to a pending tool call and run its coroutine on."""
        if len(replies) != 1 or replies[0].id not in self._waiting:
            if self._failed is not None:
                return Failed(self._failed)
            if self._lua is None:
                return self._fail(_closed())
            return self._fail(protocol_violation(
                f"the Lua script waits for the replies to requests "
                f"{sorted(self._waiting)}, got replies {[r.id for r in replies]}"))
        return self._answered(self._deliver(replies[0], deadline), deadline)

    def _answered(self, step: Step, deadline: float) -> Step:
        """``step``; or, while it is a tool call the host answers at once
        (:attr:`Engine.direct`: one with nothing printed before it), the step the script
        runs on to with its reply."""
        direct = self.direct
        while direct is not None and step.__class__ is Suspended and not step.output:
            request = step.requests[0]  # type: ignore[union-attr]  (one: Lua's steps)
            reply = direct(request)
            if reply is None:
                break
            if reply.id != request.id:
                return self._fail(misdirected(request, reply))
            step = self._deliver(reply, deadline)
        return step

    def _deliver(self, reply: ToolReply, deadline: float) -> Step:
        """Deliver ``reply``, which the script waits for, and run it on."""
        self._waiting.discard(reply.id)
        if self._stopped[0] or time.monotonic() >= deadline:  # self._clock(), inlined
            return self._fail(self._time_error(None))
        if self._modules and reply.id in self._modules:
            self._modules.discard(reply.id)
            if reply.error is None:
                module = self._take_module(reply.result)
                if isinstance(module, SpellError):
                    return self._fail(module)
                return self._handoff(_STEP, deadline, reply.id, True, module, "result")
        if reply.error is not None:
            flat = _flat_envelope(reply.error, self._ints)
            if flat is not None:  # the usual envelope: its tables built by the prelude
                step = self._put_error(reply.id, deadline, *flat)
                if step is not None:
                    return step
            return self._handoff(_STEP, deadline, reply.id, False, reply.error, "error")
        result = reply.result
        kind = result.__class__
        if kind is float or kind is bool or result is None or (
                kind is int and self._ints[0] <= result <= self._ints[1]):
            # a tool's usual result: a number, pushed with no allocation (see _handoff)
            return self._enter_with(_STEP, deadline, (True, reply.id, True, result), "result")
        return self._handoff(_STEP, deadline, reply.id, True, result, "result")

    def _take_module(self, answer: Any) -> SpellError | dict[str, Any]:
        """The host's answer to a ``require``, as the prelude takes it: a module found
        (``file``, ``source``) is registered with the script, so that its frames and lines
        are its own, and its source goes as Lua's bytes (see :func:`_source_code`);
        anything but that or ``missing`` (a message) breaks the protocol."""
        if type(answer) is dict and type(answer.get("missing")) is str and len(answer) == 1:
            return answer
        if not (type(answer) is dict and answer.keys() == {"file", "source"}
                and type(answer["file"]) is str and type(answer["source"]) is str
                and answer["file"] and "\0" not in answer["file"]):
            return protocol_violation("the answer to a require is {file, source} or "
                                      "{missing}")
        assert self._script is not None
        file = answer["file"]
        shown = _utf8(file)
        short = shown
        if len(shown.encode()) >= _LUA_IDSIZE - 1:
            self._set_max_memory(0)  # the prelude's own work (see _enter)
            try:
                short = self._lua_short_src("@" + shown)
            except self._lupa.LuaError as exc:
                return self._engine_error(exc)
            finally:
                self._set_max_memory(self._memory_limit)
        module = self._script.add_module(file, _utf8(answer["source"]), short)
        code = _source_code(answer["source"])
        if code is None:
            return compilation_failed(module, _not_source(module, answer["source"]))
        return {"file": file, "source": code}

    @property
    def usable(self) -> bool:
        """Whether the engine can still run code (see :attr:`Engine.usable`)."""
        return self._failed is None and self._lua is not None

    def stop(self) -> bool:
        """End the script at the hook's next look at the clock (callable from any thread)."""
        self._stopped[0] = True
        return True

    def close(self) -> None:
        """Drop the runtime; the engine cannot run again. The call sites of requests
        still waiting are read first: their steps stay readable data."""
        if self._waiting and self._lua is not None:
            self._closed_sites = {request_id: self._call_site(request_id)
                                  for request_id in self._waiting}
        self._waiting.clear()
        self._put = self._enter = self._take = self._drain = self._lua_short_src = None
        self._lua_site = self._lua_put_error = None
        self._table_from = self._set_max_memory = self._unpack = None
        self._lua = None

    # -- the steps -------------------------------------------------------------------

    def _handoff(self, entry: int, deadline: float, first: Any, second: Any, data: Any,
                 path: str, infos: list[str] | None = None) -> Step:
        """Run the prelude's ``entry`` with these values: the one way Python enters Lua.

        lupa pushes a call's arguments onto the Lua stack, and reads its results back,
        outside any protected call: when the memory limit's allocator refuses there, Lua
        panics and aborts the whole process. So every value that needs Lua memory (the
        strings, ``data`` as tables, the tool infos) is built and handed to the prelude's
        box (``put``) with the limit lifted; then the limit is back, and if what was built
        does not fit in it (after a full collection, as Lua itself would try), the run
        fails with ``resource/memory_exhaustion`` before any Lua code runs. The call that
        runs Lua code (``enter``) takes the entry's index and the deadline (and, when none
        needs Lua memory, the values themselves: numbers, booleans, ``None``, tables already
        built) and returns the outcome's length; the outcome, in the box, is read back
        (``take``) with the limit lifted again. An outcome that holds no table (the usual
        request and result) comes back from ``enter`` itself, as a tuple: reading strings
        and numbers allocates nothing in Lua. ``data`` that obviously cannot fit (a lower
        bound of its size in Lua above the limit) is refused before anything is copied.
        (A tool's result that is a number, a boolean or ``None`` needs nothing built:
        :meth:`resume` enters with it directly.)
        """
        self._set_max_memory(0)
        try:
            value = self._to_lua(data, path)
            if infos is None and type(first) is not str and type(value) is not str:
                # numbers, booleans, nil and tables already made: pushed with no allocation
                direct: tuple[Any, ...] = (True, first, second, value)
            else:
                self._put(_utf8(first) if type(first) is str else first, second, value,
                          None if infos is None else self._table_from(infos))
                direct = ()
        except _NotData as bad:
            return self._fail(self._not_data(bad))
        except _NoRoom:
            return self._fail(self._no_room(path))
        finally:
            self._set_max_memory(self._memory_limit)
        return self._enter_with(entry, deadline, direct, path)

    def _put_error(self, request_id: int, deadline: float, values: list[Any], size: int,
                   nested: bool) -> Step | None:
        """:meth:`_handoff` of an error envelope that :func:`_flat_envelope` made flat: the
        prelude's ``put_error`` builds its tables from ``values`` (lupa converts them as
        ``table_from`` converts a table's; a field's list or dict of scalars is a table
        lupa builds, when ``nested``), under the same checks: refused before anything is
        copied when ``size`` is above the memory limit, then fitting in it once built.
        None when a string has no UTF-8 form (a lone surrogate): nothing was built (or
        only tables no Lua value refers to), and the envelope goes the long way (see
        _utf8)."""
        if size > self._memory_limit:
            return self._fail(self._no_room("error"))
        self._set_max_memory(0)
        try:
            if nested:
                table_from = self._table_from
                values = [table_from(value) if type(value) is dict or type(value) is list
                          else value for value in values]
            self._lua_put_error(request_id, *values)
        except UnicodeEncodeError:
            return None
        finally:
            self._set_max_memory(self._memory_limit)
        return self._enter_with(_STEP, deadline, (), "error")

    def _enter_with(self, entry: int, deadline: float, direct: tuple[Any, ...], path: str
                    ) -> Step:
        """:meth:`_handoff` once its values are made: Lua runs ``entry`` with the memory
        limit back (if what was made fits in it), and its outcome is read back."""
        # (_over_limit's first look, made here: this is every tool call's path)
        if self._lua.get_memory_used() >= self._memory_limit and self._over_limit():
            return self._fail(self._no_room(path))
        try:
            n = self._enter(entry, deadline, *direct)
        except self._lupa.LuaError as exc:
            return self._fail(self._engine_error(exc))
        self._deadline = deadline  # the conversions of Lua data stop there (_from_lua)
        if n.__class__ is tuple:  # the outcome itself: no table in it (see enter)
            if n[0] == 0 and not n[1]:  # the usual step: a tool call, nothing printed
                return self._called(n)
            return self._outcome(n)
        self._set_max_memory(0)  # lupa makes a registry reference for each table it reads
        try:
            return self._outcome(self._take()[:n])
        finally:
            if self._lua is not None:
                self._set_max_memory(self._memory_limit)

    def _over_limit(self) -> bool:
        """Whether the Lua state holds more than the limit, even after a full collection."""
        lua = self._lua
        if lua.get_memory_used() < self._memory_limit:
            return False
        self._set_max_memory(0)  # a collection may allocate (the string table's resizing)
        try:
            lua.gccollect()
        finally:
            self._set_max_memory(self._memory_limit)
        return bool(lua.get_memory_used() >= self._memory_limit)

    def _no_room(self, path: str) -> SpellError:
        return did_not_fit(self.language, f"the {_HANDED.get(path, path)}",
                           self.limits.memory_mb)

    def _outcome(self, outcome: tuple[Any, ...]) -> Step:
        """The step that a flat outcome of the prelude's ``finish`` describes, with the
        lines the script printed (the shared empty tuple when it printed none)."""
        lines = tuple(self._drain().values()) if outcome[1] else ()
        try:
            step = self._read_outcome(outcome)
        except _TooLarge as exc:
            step = self._fail(self._memory_error(
                f"its {exc.what} would need more than the {self.limits.memory_mb} MiB of "
                f"memory the run may use once copied to Python (each reference to a table "
                f"or string becomes a copy of its own)"))
        except _OutOfTime:
            step = self._fail(self._time_error(None))
        if lines:
            step.output = lines
        return step

    def _called(self, outcome: tuple[Any, ...]) -> Suspended:
        """The usual step, a tool call with flat parameters or none (see ``finish`` in
        the prelude): ``0, lines, id, name``, then the parameters' keys and values."""
        request_id = outcome[2]  # _suspended, inlined: every tool call's path
        self._waiting.add(request_id)
        return Suspended([ToolRequest(request_id, outcome[3], _flat_params(outcome, 4), None,
                                      None, "tool", self._call_site)])

    def _suspended(self, request_id: int, name: str, params: Any, problem: Problem | None,
                   kind: Literal["tool", "recovery", "module"], traceback: str | None
                   ) -> Suspended:
        """The step of a request the script now waits for; with no ``traceback``, its
        call site is read from the script's stack only if asked for (see call_tool in the
        prelude, and :meth:`_call_site`)."""
        self._waiting.add(request_id)
        if traceback is None:
            return Suspended([ToolRequest(request_id, name, params, problem, None, kind,
                                          self._call_site)])
        assert self._script is not None
        return Suspended([ToolRequest(request_id, name, params, problem,
                                      self._script.frames(traceback), kind)])

    def _read_outcome(self, outcome: tuple[Any, ...]) -> Step:
        status = outcome[0]
        if status == 0:
            return self._called(outcome)
        script = self._script
        assert script is not None
        if status == "request":
            request_id, name, problem, traceback, params = outcome[2:7]
            kind = outcome[7] if len(outcome) > 7 else None
            reserved = None if kind is None else _RESERVED.get(kind)
            if params is True:  # flat: their keys and values follow (see flat)
                params = _flat_params(outcome, 8)
            elif reserved == "module":  # a require: the name is all there is
                self._modules.add(request_id)
            elif problem is not None:  # {message, data_type, path}: see call_tool
                problem = Problem(problem[3], problem[2], problem[1])
                params = None
            elif params is None:
                params = {}
            else:
                params = self._from_lua(params, "parameters")
            return self._suspended(request_id, name, params, problem, reserved or "tool",
                                   traceback)
        if status == "done":
            return Finished(self._from_lua(outcome[2], "result"))
        if status == "error":
            _, _, value, lua_type, described, traceback, overflow, own = (
                *outcome, None, None, None, None)[:8]
            # the script (or the called function) failed; the engine itself can go on
            return Failed(thrown_error(script, self._from_lua(value, "error"), lua_type,
                                       described, traceback, patterns=self.patterns,
                                       overflow=overflow, from_prelude=own is True,
                                       hints=self._hints))
        if status == "abort":
            if outcome[2] == "memory":
                return self._fail(self._memory_error())
            if outcome[2] == "large":
                raise _TooLarge
            return self._fail(self._time_error(outcome[3]))
        if status == "bad_result":  # message, Lua type, path
            problem = Problem(outcome[4], outcome[3], outcome[2])
            return Failed(crossing_error(problem, self.language, "python"), problem=problem)
        if status == "syntax":
            return self._fail(compilation_failed(script, outcome[2]))
        return self._fail(ScriptError.RuntimeError(
            language=self.language, error=f"unexpected step outcome {status!r}"))

    def _call_site(self, request_id: int) -> list[Frame]:
        """The frames of the call that request ``request_id`` waits in (the script's stack
        is the call's until its reply: see :class:`ToolRequest`)."""
        if (request_id not in self._waiting or self._lua_site is None or self._script is None
                or threading.get_ident() != self._thread):  # (a late reader, elsewhere)
            return self._closed_sites.get(request_id, [])
        try:  # under the script's memory limit: the traceback's size is the script's
            traceback = self._lua_site(request_id)  # (a number in, a string out: see enter)
        except self._lupa.LuaError:  # (site catches its own errors)
            return []
        return [] if traceback is None else self._script.frames(traceback)

    def _not_data(self, bad: _NotData) -> SpellError:
        return crossing_error(bad.problem, "python", self.language)

    def _engine_error(self, exc: Exception) -> SpellError:
        if isinstance(exc, self._lupa.LuaMemoryError):
            return self._memory_error()
        # The prelude itself failed: a bug in polyspell, not in the script.
        return ScriptError.RuntimeError(language=self.language, error=str(exc),
                                        reason="the engine's prelude failed")

    def _fail(self, error: SpellError) -> Failed:
        self._failed = error
        self._waiting.clear()
        return Failed(error)

    def _time_error(self, traceback: str | None) -> SpellError:
        frames = self._script.frames(traceback) if self._script else []
        return ScriptError.ResourceExhaustion(
            language=self.language, resource_type="time",
            current_usage=round(time.monotonic() - self._started, 3),
            limit=self.limits.timeout, frames=frames)

    def _memory_error(self, description: str | None = None) -> SpellError:
        return ResourceError.MemoryExhaustion(
            location=self.language,
            description=description or f"the script needed more than the "
                                       f"{self.limits.memory_mb} MiB of memory it may use",
            available=self._memory_limit)

    # -- data across the boundary --------------------------------------------------------

    def _to_lua(self, value: Any, path: str) -> Any:
        """JSON-like Python data as a Lua value (tables built by lupa, never Python objects).

        Called only by :meth:`_handoff`, with the memory limit lifted. Raises
        :class:`_NotData`, or :class:`_NoRoom` before copying anything when a lower bound
        of the value's size in Lua (see :func:`_check_data`) is above the memory limit.
        """
        kind = type(value)
        ints = self._ints
        if kind in _SCALARS:
            if kind is str:
                if len(value) > self._memory_limit:
                    raise _NoRoom
                return _utf8(value)
            return value
        if kind is dict and path == "error":  # a failure's envelope: its known shape
            size = _envelope_size(value, ints)  # type: ignore[assignment]
            if size is None:
                value, size = self._sized(value, path)
        elif kind is dict:  # the usual tool result: a flat dict, checked in one loop
            size = 0
            for key, item in value.items():
                item_kind = type(item)
                if type(key) is not str or (item_kind not in _SCALARS and (
                        item_kind is not int or not ints[0] <= item <= ints[1])):
                    value, size = self._sized(value, path)
                    break
                if item_kind is str:
                    size += len(item)
            else:
                if size > self._memory_limit:
                    raise _NoRoom
                try:
                    return self._table_from(value)
                except UnicodeEncodeError:  # a lone surrogate: see _utf8
                    return self._table_from(_utf8_data(value))
        elif kind is int:
            if not ints[0] <= value <= ints[1]:
                _check_data(value, path, 0, {}, ints)  # raises _NotData
            return value
        elif kind is list and ints is _INT64 and set(map(type, value)) == _JUST_INTS:
            # the usual list of ints: lupa refuses one past 64 bits as it copies them
            # (OverflowError), so they need no min and max (half the cost of _plain_size)
            if 8 * len(value) > self._memory_limit:
                raise _NoRoom
            try:
                return self._table_from(value)
            except OverflowError:
                _check_data(value, path, 0, {}, ints)  # raises _NotData, naming the int
                raise
        else:
            value, size = self._sized(value, path)
        if size > self._memory_limit:
            raise _NoRoom
        try:
            return self._table_from(value, recursive=True)
        except UnicodeEncodeError:  # a lone surrogate: see _utf8
            return self._table_from(_utf8_data(value), recursive=True)

    def _sized(self, value: Any, path: str) -> tuple[Any, int]:
        """``value``'s size as :func:`_check_data` counts it (found by :func:`_plain_size`
        when it is plain data), with ``value``: itself, or its :func:`_unshared` copy when
        it holds a list or dict twice (see :class:`_Shared`). Raises :class:`_NotData`,
        naming the path, or :class:`_NoRoom`."""
        ints = self._ints
        kind = type(value)
        size = _plain_size(value, ints, 0, set()) if kind is list or kind is dict else None
        if size is not None:
            return value, size
        try:  # not plain, or not data: the walk that names the path
            return value, _check_data(value, path, 0, {}, ints)
        except _Shared:
            value = _unshared(value, [self._memory_limit], 0)
            return value, _check_data(value, path, 0, {}, ints)

    def _from_lua(self, value: Any, what: str) -> Any:
        """Lua data (already checked or copied by the prelude) as JSON-like Python data.

        Every conversion of a script's data (results, tool parameters, thrown values,
        tools-file results) goes through here, bounded by the run's limits: it builds at
        most the run's memory limit (counted as ``bridge.data`` says: each reference to a
        string or table is a copy in Python, so a string shared a thousand times counts a
        thousand times), and it stops at the deadline. It raises :class:`_TooLarge` (which
        names ``what`` it was reading) or :class:`_OutOfTime`.

        A table with string keys becomes a dict with its keys sorted (by code point):
        the order of Lua's ``next`` follows string hashes, which Lua seeds per state, so
        the same run would otherwise give its data in another order in every process.
        """
        table_type = self._table_type
        if value.__class__ is not table_type:
            return value
        # unpack converts a piece's strings before their lengths are counted: only for
        # data the prelude's check has already counted against the same budget (params,
        # results); a thrown value (a sanitized copy, never counted) goes item by item
        unpack = None if what == "error" else self._unpack
        return _convert(value, [self._memory_limit, self._clock_from, self._deadline, what,
                                table_type, unpack,
                                _JIT_UNPACK_PIECE if self._ints is _INT53 else _UNPACK_PIECE])


def _flat_params(outcome: tuple[Any, ...], start: int) -> dict[str, Any]:
    """Flat parameters, sent as keys and values from ``outcome[start]`` on (see flat in
    the prelude), as a dict with its keys in code point order, as :func:`_convert` gives a
    table's."""
    left = len(outcome) - start
    if left == 4:  # the usual two (sorted() and zip() cost a tool call 0.7 us)
        key, value, other, second = outcome[start:]
        return {key: value, other: second} if key < other else {other: second, key: value}
    if left < 3:  # none, or one
        return {outcome[start]: outcome[start + 1]} if left else {}
    return dict(sorted(zip(outcome[start::2], outcome[start + 1::2], strict=True)))


def _convert(table: Any, state: list[Any]) -> Any:
    """One table for :meth:`LuaEngine._from_lua`. ``state``: the bytes that may still be
    built, the count at which to look at the budget and the clock next, the deadline, what
    is being read, the type of the engine's Lua tables (one per lupa module), and Lua's
    ``table.unpack`` (None: read arrays item by item, see :meth:`LuaEngine._from_lua`) and
    the values it reads in one call (LuaJIT's gives fewer)."""
    data = {}
    left, table_type, unpack = state[0], state[4], state[5]
    for key, item in table.items():
        if key.__class__ is int and unpack is not None:
            # an array: the prelude let only arrays 1..n through with an integer key
            return _convert_array(table, len(table), state)
        left -= ITEM_BYTES + len(key) if key.__class__ is str else ITEM_BYTES
        kind = item.__class__
        if kind is str:
            left -= len(item)
        elif kind is table_type:
            state[0] = left
            item = _convert(item, state)
            left = state[0]
        if left < state[1]:
            _spent(left, state)
        data[key] = item
    state[0] = left
    if data and next(iter(data)).__class__ is int:  # the prelude let only arrays 1..n through
        return [data[index] for index in range(1, len(data) + 1)]
    return {key: data[key] for key in sorted(data)} if len(data) > 1 else data


def _convert_array(table: Any, length: int, state: list[Any]) -> list[Any]:
    """An array 1..``length`` for :func:`_convert`: its values read by Lua's ``unpack`` (lupa
    converts the results in C) a piece at a time, each piece's budget counted before it is
    read; only a piece that holds strings or tables is then looked at value by value."""
    unpack, table_type = state[5], state[4]
    values: list[Any] = []
    step = state[6]
    for first in range(1, length + 1, step):
        last = min(first + step - 1, length)
        left = state[0] - ITEM_BYTES * (last - first + 1)
        if left < state[1]:
            _spent(left, state)
        piece = unpack(table, first, last)
        if last == first:  # one value comes back as itself (unpack_returned_tuples)
            piece = (piece,)
        try:  # numbers and booleans only (the usual array) need nothing more: sum says so
            # in C, a quarter of the cost of gathering their types
            sum(piece)
            numbers = True
        except TypeError:  # a string or a table (a float sum's overflow is inf, no error)
            numbers = False
        if not numbers:
            for item in piece:
                kind = item.__class__
                if kind is str:
                    left -= len(item)
                elif kind is table_type:
                    state[0] = left
                    item = _convert(item, state)
                    left = state[0]
                if left < state[1]:
                    _spent(left, state)
                values.append(item)
        else:
            values += piece
        state[0] = left
    return values


def _spent(left: int, state: list[Any]) -> None:
    """Another ``_CLOCK_EVERY`` bytes converted (or the budget spent): check both limits."""
    if left < 0:
        raise _TooLarge(state[3])
    if time.monotonic() >= state[2]:
        raise _OutOfTime
    state[1] = max(left - _CLOCK_EVERY, 0)


class _TooLarge(Exception):
    """Lua data whose Python copy would need more than the run's memory limit."""

    def __init__(self, what: str = "data") -> None:
        super().__init__(what)
        self.what = what


class _OutOfTime(Exception):
    """The deadline passed while Lua data was converted."""


def _closed() -> SpellError:
    return protocol_violation("the Lua engine is closed")
