"""Sandboxed script engines (Lua on lupa, JavaScript on quickjs-ng) behind one interface.

Engine modules are imported on first use, so a command that runs Lua never pays for
loading quickjs, and the reverse.
"""

from __future__ import annotations

import importlib
from pathlib import PurePath

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

_ENGINES = {"lua": ("engines.lua", "LuaEngine"),
            "javascript": ("engines.javascript", "JavaScriptEngine")}
_ALIASES = {"lua": "lua", "javascript": "javascript", "js": "javascript"}
DEFAULT_LIMITS = Limits()
EXTENSIONS = {".lua": "lua", ".js": "javascript", ".mjs": "javascript"}


def language_of(name: str) -> str | None:
    """``lua`` / ``javascript`` for a language name or alias, else None."""
    return _ALIASES.get(name.lower())


def language_for_path(path: str | PurePath) -> str | None:
    """The language a script file is written in, by its extension, else None."""
    return EXTENSIONS.get(PurePath(path).suffix.lower())


def engine_class(language: str) -> type[Engine]:
    """The Engine class for ``lua`` or ``javascript``."""
    module, name = _ENGINES[language]
    return getattr(importlib.import_module(module), name)


def make_engine(language: str, *, limits: Limits = DEFAULT_LIMITS,
                sandbox: Sandbox = "constrained") -> Engine:
    """A new built-in engine for ``language``: the default engine factory of a host.

    An engine factory is any callable of this signature (``Host(engine_factory=...)``);
    one that wraps this one sees one call per engine a run uses.
    """
    return engine_class(language)(limits=limits, sandbox=sandbox)


__all__ = [
    "DEFAULT_LIMITS", "EXTENSIONS", "Engine", "EngineSpec", "Failed", "Finished", "Limits",
    "Problem", "Sandbox", "Step", "Suspended", "ToolInfo", "ToolReply", "ToolRequest",
    "engine_class", "language_for_path", "language_of", "make_engine",
]
