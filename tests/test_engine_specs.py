"""Engine specs: the registry, the host's messages and its data rules derive from them.

A third language is registered here the way a package that brings an engine would do it:
a spec pointing at an engine class that declares it. The engine is the real Lua engine
under another name (as a second Lua version beside 5.5 would be), and runs end to end
through ``Host``: its scripts, its tools files, its frames and errors name it.
"""

from __future__ import annotations

import subprocess
import sys
import traceback
from pathlib import Path

import pytest

import engines
from bridge import ConfigurationError, ScriptError, SpellError, ToolError
from bridge.frames import frame_from_data
from bridge.languages import script_languages
from engines import EngineSpec
from engines.lua import LuaEngine
from host import Coordinator, Host, Plan, Task, tool

LUA_TEST = EngineSpec(
    name="lua-test",
    display_name="Lua (test)",
    aliases=("luat",),
    extensions=(".luat",),
    engine=f"{__name__}:LuaTestEngine",
    exports="the table it returns",
    non_finite_numbers=True,
    empty_table_ambiguous=True,
)


class LuaTestEngine(LuaEngine):
    """The Lua engine, declaring a language of its own."""

    spec = LUA_TEST


@pytest.fixture
def lua_test():
    """LUA_TEST registered for the test, and forgotten after it."""
    engines.register(LUA_TEST)
    yield LUA_TEST
    engines.unregister(LUA_TEST.name)


@tool
def double(n: int) -> int:
    """Twice n."""
    return 2 * n


@tool
def refuse(n: int) -> int:
    """Always fails."""
    raise ToolError.NotFound(tool_name=f"number {n}")


def _host(*tools) -> Host:
    return Host([double, refuse, *tools], timeout=10, on_output=lambda line: None)


# -- the registry derives from the specs -------------------------------------------------


@pytest.mark.parametrize("spec", engines.specs(), ids=lambda spec: spec.name)
def test_every_name_alias_and_extension_maps_to_its_spec(spec):
    for name in (spec.name, *spec.aliases):
        assert engines.spec_of(name) is spec
        assert engines.spec_of(name.upper()) is spec
        assert engines.language_of(name) == spec.name
    for suffix in spec.extensions:
        assert engines.language_for_path(f"dir/agent{suffix}") == spec.name
        assert engines.language_for_path(f"AGENT{suffix.upper()}") == spec.name
        assert engines.EXTENSIONS[suffix] == spec.name


def test_the_registry_holds_the_built_in_specs_and_nothing_else():
    from engines.specs import BUILT_IN

    assert engines.specs() == BUILT_IN
    assert engines.EXTENSIONS == {suffix: spec.name for spec in BUILT_IN
                                  for suffix in spec.extensions}
    assert script_languages() == tuple(spec.name for spec in BUILT_IN)  # bridge was told


@pytest.mark.parametrize("spec", engines.specs(), ids=lambda spec: spec.name)
def test_the_engine_class_is_the_one_the_spec_names_and_declares_it(spec):
    cls = engines.engine_class(spec.name)
    assert f"{cls.__module__}:{cls.__qualname__}" == spec.engine
    assert cls.spec is spec
    assert (cls.language, cls.extensions) == (spec.name, spec.extensions)
    engine = engines.make_engine(spec.name)
    try:
        assert engine.language == spec.name
    finally:
        engine.close()


def test_unknown_names_give_none():
    assert engines.spec_of("cobol") is None
    assert engines.language_of("cobol") is None
    assert engines.language_for_path("agent.cob") is None
    assert engines.language_for_path("agent") is None
    with pytest.raises(KeyError):
        engines.engine_class("cobol")
    with pytest.raises(KeyError):
        engines.engine_class("js")  # an alias is no engine's name


def test_the_specs_are_read_without_loading_any_engine():
    code = ("import sys, engines, host.cli\nhost.cli.build_parser()\n"
            "assert engines.language_for_path('a.js') == 'javascript'\n"
            "print(sorted(m for m in ('lupa', 'quickjs', 'engines.lua', 'engines.javascript')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == "[]"


def test_messages_name_every_registered_language(lua_test):
    with pytest.raises(ConfigurationError.InvalidValue) as info:
        _host().run_source("return 1", "cobol")
    assert info.value.fields["reason"] == (
        "the language must be 'lua', 'javascript' or 'lua-test' (or 'js' or 'luat')")
    with pytest.raises(ConfigurationError.InvalidValue) as info:
        Coordinator(engine_timeouts={"cobol": 1})
    assert info.value.fields["reason"] == (
        "engine timeouts are for 'lua', 'javascript' and 'lua-test'")


# -- a third language ------------------------------------------------------------------


def test_a_registered_language_runs_end_to_end_with_frames_in_that_language(
        lua_test, tmp_path):
    path = tmp_path / "agent.luat"
    path.write_text("local r = tools.double{n = args.n}\n"
                    "if r > 10 then error('too big: ' .. r) end\n"
                    "return r\n")
    host = _host()
    assert host.run(path, {"n": 2}) == 4
    assert host.run_source("return tools.double{n = 5}", "LUAT") == 10  # by alias

    with pytest.raises(ScriptError.Lua) as info:
        host.run(path, {"n": 6})
    err = info.value
    assert err.fields["error"] == "too big: 12"
    assert [(f.language, f.file, f.line) for f in err.frames] == [("lua-test", str(path), 2)]
    assert err.context.component.language == "lua-test"
    assert SpellError.from_json(err.to_json()).frames == err.frames
    assert "error('too big: ' .. r)" in "".join(traceback.format_exception(err))


def test_a_tool_failure_crosses_frames_of_the_registered_language(lua_test, tmp_path):
    path = tmp_path / "agent.luat"
    path.write_text("local function go(n)\n  local r = tools.refuse{n = n}\n  return r\nend\n"
                    "local r = go(args.n)\nreturn r\n")
    with pytest.raises(ToolError.NotFound) as info:
        _host().run(path, {"n": 1})
    assert [(f.language, f.line) for f in info.value.frames][:3] == [
        ("lua-test", 5), ("lua-test", 2), ("host", None)]
    assert info.value.context.metadata["source_engine"] == {"language": "lua-test",
                                                            "script": str(path)}


def test_a_tools_file_of_the_registered_language_is_callable_from_every_language(
        lua_test, tmp_path):
    helpers = tmp_path / "helpers.luat"
    helpers.write_text("local M = {}\n"
                       "function M.inc(p) return p.n + 1 end\n"
                       "function M.huge(p) return {x = math.huge} end\n"
                       "return M\n")
    host = _host(helpers)
    inc = host.tools.get("inc")
    assert (inc.language, inc.description) == ("lua-test", "Lua (test) function inc of "
                                                           "helpers.luat")
    assert host.run_source("return tools.inc{n = 1}", "lua") == 2
    assert host.run_source("async function main() { return await tools.inc({n: 41}); }",
                           "javascript") == 42
    # both specs hold non-finite numbers: they pass between the two engines as they are
    assert host.run_source("return tools.huge{}.x == math.huge", "lua") is True
    with pytest.raises(ScriptError.CrossEngineCommunication) as info:
        host.run_source("async function main() { return await tools.huge({}); }",
                        "javascript")
    assert (info.value.fields["from_engine"], info.value.fields["to_engine"]) == (
        "lua-test", "javascript")


def test_an_empty_tools_file_names_where_the_spec_says_exports_go(lua_test, tmp_path):
    empty = tmp_path / "empty.luat"
    empty.write_text("return {}\n")
    with pytest.raises(ConfigurationError.LoadFailed) as info:
        _host(empty)
    assert info.value.fields["reason"] == "it exports no functions (put them in the table " \
                                          "it returns)"


def test_plans_take_the_registered_language(lua_test, tmp_path):
    (tmp_path / "a.luat").write_text("return tools.double{n = 21}\n")
    plan = Plan(tasks=[Task(id="a", script="a.luat")], engine_timeouts={"lua-test": 5},
                base_dir=str(tmp_path))
    assert plan.tasks[0].language == "lua-test"
    report = Coordinator([double], on_output=lambda task, line: None).run(plan)
    assert report.results == {"a": 42}


def test_a_language_unregistered_is_unknown_again(lua_test):
    frame = {"language": "lua-test", "file": "a.luat"}
    assert frame_from_data(frame).language == "lua-test"
    engines.unregister("lua-test")
    assert engines.spec_of("luat") is None and engines.language_for_path("a.luat") is None
    assert "lua-test" not in script_languages()
    with pytest.raises(ValueError, match="language"):
        frame_from_data(frame)


@pytest.mark.parametrize("change,reason", [
    ({"name": "lua"}, "taken by another language: lua"),
    ({"aliases": ("js",)}, "taken by another language: js"),
    ({"extensions": (".mjs",)}, "taken by another language: .mjs"),
    ({"name": "python"}, "a script language is named by a short lower-case word"),
    ({"name": "Lua Test"}, "a script language is named by a short lower-case word"),
    ({"aliases": ("LT",)}, "aliases are lower case"),
    ({"extensions": ("luat",)}, "extensions are lower-case suffixes"),
    ({"extensions": (".py",)}, "extensions are lower-case suffixes"),
    ({"engine": "tests.test_engine_specs.LuaTestEngine"}, "engine is written 'module:Class'"),
])
def test_a_spec_that_clashes_or_is_malformed_is_refused(change, reason):
    import dataclasses

    spec = dataclasses.replace(LUA_TEST, **change)
    with pytest.raises(ConfigurationError.InvalidValue) as info:
        engines.register(spec)
    assert info.value.fields["reason"].startswith(reason)
    assert len(engines.specs()) == 2 and "lua-test" not in script_languages()


def test_registering_the_same_spec_twice_is_harmless(lua_test):
    assert engines.register(LUA_TEST) is LUA_TEST
    assert engines.specs()[-1] is LUA_TEST and len(engines.specs()) == 3


def test_a_class_that_does_not_declare_the_spec_is_refused(lua_test):
    import dataclasses

    other = dataclasses.replace(LUA_TEST, name="lua-other", aliases=(), extensions=(),
                                engine="engines.lua:LuaEngine")
    engines.register(other)
    try:
        with pytest.raises(TypeError, match="does not declare the spec"):
            engines.engine_class("lua-other")
    finally:
        engines.unregister("lua-other")
