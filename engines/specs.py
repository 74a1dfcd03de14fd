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

# The Lua versions a Lua engine runs (``engines.lua.LuaEngine``'s ``lua_version``), the
# default first: Lua 5.5, Lua 5.4 and LuaJIT 2.1 (Lua 5.1 with its extensions).
LUA_VERSIONS: tuple[str, ...] = ("5.5", "5.4", "luajit")
