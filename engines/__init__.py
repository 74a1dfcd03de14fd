"""Sandboxed script engines (Lua on lupa, JavaScript on quickjs-ng) behind one interface.

Each engine class declares its language in an :class:`EngineSpec` (``spec``): its name,
aliases, file extensions, display name, where its tools files put their exports, and the
data rules the host applies to it. The specs live in :mod:`engines.specs`, which loads no
engine; this registry (:func:`specs`, :func:`spec_of`, :func:`language_of`,
:func:`language_for_path`, :data:`EXTENSIONS`, :func:`engine_class`) and the host's
messages, plans and crossings derive from them, and bridge is told each spec's name so
that frames and errors may name it. Engine modules are imported on first use, so a
command that runs Lua never pays for loading quickjs, and the reverse.

Adding a language
-----------------
A language is four files, each the counterpart of the Lua or JavaScript one:

- ``engines/<language>.py``: the engine, an :class:`Engine` subclass with ``spec = ...``
  (``language`` and ``extensions`` follow from it);
- its prelude beside it (``engines/<language>_prelude.<ext>``), the script-side half
  of suspensions and errors;
- ``bridge/<language>.py``: its translator, the engine's raw errors and frames read into
  unified errors (frames name ``spec.name``);
- its spec in :mod:`engines.specs`, added to ``BUILT_IN``.

Beside those: ``pyproject.toml`` when the engine needs a binding package (and a
package-data glob for a prelude of a new extension), a ``ScriptError`` variant in
``bridge/hierarchy.py`` if its uncaught errors get a kind of their own (as
``ScriptError.Lua`` and ``ScriptError.Javascript``), and its tests. Nothing in ``host``
names a language. A package that brings an engine of its own calls :func:`register`
with its spec instead of editing ``engines.specs``. A Lua version
is not a language: ``LuaEngine(lua_version=...)`` runs Lua 5.5, 5.4 or LuaJIT with one
prelude and one translator (``make_engine(..., lua_version=...)``).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import PurePath

from bridge import ConfigurationError
from bridge.languages import HOST_LANGUAGES, register_language, unregister_language
from engines.base import (
    Engine,
    EngineSpec,
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
)
from engines.specs import BUILT_IN

DEFAULT_LIMITS = Limits()
_SPECS: dict[str, EngineSpec] = {}  # by name, in the order registered
_NAMES: dict[str, str] = {}  # name or alias -> name
# suffix -> language, kept in step with the specs (one dict: `from engines import EXTENSIONS`
# stays current)
EXTENSIONS: dict[str, str] = {}


def register(spec: EngineSpec) -> EngineSpec:
    """Make a language known: its names, extensions and engine (see "Adding a language").

    The built-in specs (:mod:`engines.specs`) are registered when ``engines`` is imported;
    a package that brings an engine of its own registers its spec the same way, before
    running scripts in it. Registering an equal spec again is harmless; a spec whose name,
    alias or extension another spec holds is ``configuration/invalid_value``.
    """
    if _SPECS.get(spec.name) == spec:
        return spec
    taken = [name for name in (spec.name, *spec.aliases) if name in _NAMES]
    taken += [suffix for suffix in spec.extensions if suffix in EXTENSIONS]
    problem = (f"taken by another language: {', '.join(taken)}" if taken
               else _malformed(spec))
    if problem is None:
        try:
            register_language(spec.name)
        except ValueError as exc:
            problem = str(exc)
    if problem is not None:
        raise ConfigurationError.InvalidValue(key="spec", value=spec.name, reason=problem)
    _SPECS[spec.name] = spec
    _NAMES.update(dict.fromkeys((spec.name, *spec.aliases), spec.name))
    EXTENSIONS.update(dict.fromkeys(spec.extensions, spec.name))
    return spec


def _malformed(spec: EngineSpec) -> str | None:
    if any(alias != alias.lower() or not alias for alias in spec.aliases):
        return "aliases are lower case"
    if any(alias in HOST_LANGUAGES for alias in spec.aliases):  # frames name those
        return f"aliases are not {spoken(HOST_LANGUAGES)}, which are the host's languages"
    if any(not suffix.startswith(".") or suffix != suffix.lower() or suffix == ".py"
           for suffix in spec.extensions):
        return "extensions are lower-case suffixes such as '.lua' (and '.py' is Python's)"
    if spec.engine.count(":") != 1:
        return "engine is written 'module:Class'"
    return None


def unregister(name: str) -> None:
    """Forget a registered language (for tests, and packages that unload an engine)."""
    spec = _SPECS.pop(name, None)
    if spec is None:
        return
    for key in (spec.name, *spec.aliases):
        _NAMES.pop(key, None)
    for suffix in spec.extensions:
        EXTENSIONS.pop(suffix, None)
    unregister_language(name)


def specs() -> tuple[EngineSpec, ...]:
    """Every registered spec, in the order registered (the built-in ones first)."""
    return tuple(_SPECS.values())


def spec_of(name: str) -> EngineSpec | None:
    """The spec of a language name or alias (any case), else None."""
    language = _NAMES.get(name.lower())
    return None if language is None else _SPECS[language]


def language_of(name: str) -> str | None:
    """The canonical name (``lua``, ``javascript``...) of a language name or alias, else None."""
    return _NAMES.get(name.lower())


def language_for_path(path: str | PurePath) -> str | None:
    """The language a script file is written in, by its extension, else None."""
    return EXTENSIONS.get(PurePath(path).suffix.lower())


def engine_class(language: str) -> type[Engine]:
    """The Engine class of a registered language (its module imported on first use)."""
    spec = _SPECS[language]
    module, name = spec.engine.split(":")
    cls = getattr(importlib.import_module(module), name)
    if getattr(cls, "spec", None) != spec:
        raise TypeError(f"{spec.engine} does not declare the spec of {language!r}")
    return cls


def spoken(words: Iterable[str], last: str = "or") -> str:
    """``a, b or c``: words listed as a sentence lists them (for messages and help)."""
    words = list(words)
    if len(words) < 2:
        return "".join(words)
    return f"{', '.join(words[:-1])} {last} {words[-1]}"


def make_engine(language: str, *, limits: Limits = DEFAULT_LIMITS,
                sandbox: Sandbox = "constrained", lua_version: str | None = None) -> Engine:
    """A new built-in engine for ``language``: the default engine factory of a host.

    An engine factory is any callable of this signature (``Host(engine_factory=...)``);
    one that wraps this one sees one call per engine a run uses. ``lua_version`` (``"5.5"``,
    the default, ``"5.4"`` or ``"luajit"``: ``engines.lua.LUA_VERSIONS``) chooses the Lua
    of a Lua engine; other languages have none to choose.
    """
    cls = engine_class(language)
    if lua_version is not None and language == "lua":
        return cls(limits=limits, sandbox=sandbox, lua_version=lua_version)  # type: ignore[call-arg]
    return cls(limits=limits, sandbox=sandbox)


for _spec in BUILT_IN:
    register(_spec)


__all__ = [
    "DEFAULT_LIMITS", "EXTENSIONS", "Engine", "EngineSpec", "Failed", "Finished", "Limits",
    "Problem", "Sandbox", "Step", "Suspended", "ToolInfo", "ToolReply", "ToolRequest",
    "engine_class", "language_for_path", "language_of", "make_engine", "register", "spec_of",
    "specs", "spoken", "unregister",
]
