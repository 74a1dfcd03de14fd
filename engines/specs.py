"""The languages of the built-in engines, declared once: what the host needs to know.

Light on purpose: importing this imports neither lupa nor quickjs (an engine's module is
imported when the first engine of its language is made), so the registry, the CLI's help
and the host's messages read these facts without loading any engine.
"""

from __future__ import annotations

from engines.base import EngineSpec

LUA = EngineSpec(
    name="lua",
    display_name="Lua",
    aliases=(),
    extensions=(".lua",),
    engine="engines.lua:LuaEngine",
    exports="the table it returns",
    non_finite_numbers=True,
    empty_table_ambiguous=True,
    integer_bits=63,
    byte_source=True,
)

JAVASCRIPT = EngineSpec(
    name="javascript",
    display_name="JavaScript",
    aliases=("js",),
    extensions=(".js", ".mjs"),
    engine="engines.javascript:JavaScriptEngine",
    exports="the object `exports`",
)

BUILT_IN: tuple[EngineSpec, ...] = (LUA, JAVASCRIPT)
