"""Lua 5.5, 5.4 and LuaJIT: choosing one (Host, CLI, config, plans), the sandbox on each
(every escape a version offers, tried), limits, tracebacks and process mode on each.

The Lua engine's own tests run on every version too (tests/conftest.py: ``lua_version``);
these are the tests of what differs between versions, or of the version's way in.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bridge import ConfigurationError, SpellError
from engines import Limits
from engines.lua import LuaEngine
from engines.process import WorkerPool
from host import Host
from host.coordinator import Coordinator
from tests.cli import polyspell
from tests.conftest import LUA_VERSIONS
from tests.engine_driver import Run, converse

VERSION_OF = {"5.5": "Lua 5.5", "5.4": "Lua 5.4", "luajit": "Lua 5.1"}


def drive(
    source: str,
    version: str,
    *,
    timeout: float = 5.0,
    memory_mb: int = 64,
    filename: str = "agent.lua",
    sandbox: str = "constrained",
) -> Run:
    """Run ``source`` on a Lua engine of ``version`` (thread mode) to its end."""
    engine = LuaEngine(
        lua_version=version, limits=Limits(timeout=timeout, memory_mb=memory_mb), sandbox=sandbox
    )  # type: ignore[arg-type]
    deadline = time.monotonic() + timeout
    try:
        step = engine.start(source, filename, None, [], deadline)
        return converse(engine, step, {}, deadline, Run(step), one_at_a_time=True)
    finally:
        engine.close()


@pytest.fixture(params=LUA_VERSIONS)
def version(request: pytest.FixtureRequest) -> str:
    """Each Lua version, chosen explicitly (the engine's argument, not a default)."""
    return request.param


@pytest.fixture(scope="module")
def pool() -> WorkerPool:
    with WorkerPool(memory_mb=64) as workers:
        yield workers


def host_of(version: str, pool: WorkerPool, tools: list | None = None, **options: object) -> Host:
    """A host running ``version``: LuaJIT's in the pool's worker processes (it runs only
    there), the others' in threads."""
    isolation = pool if version == "luajit" else "thread"
    return Host(tools or [], lua_version=version, isolation=isolation, **options)  # type: ignore[arg-type]


# -- choosing the version ------------------------------------------------------------------


def test_each_version_runs_its_own_lua(version: str, pool: WorkerPool) -> None:
    with host_of(version, pool) as host:
        assert host.run_source("return _VERSION", "lua") == VERSION_OF[version]
        assert host.lua_version == version


def test_the_default_is_lua_5_5() -> None:
    assert Host().run_source("return _VERSION", "lua") == "Lua 5.5"


def test_an_unknown_version_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError.InvalidValue, match=r"one of 5\.5, 5\.4, luajit"):
        Host(lua_version="5.3")
    with pytest.raises(ConfigurationError.InvalidValue, match="lua_version"):
        Host().new_run_source("return 1", "lua", lua_version="jit")
    with pytest.raises(ConfigurationError.InvalidValue, match="lua_version"):
        LuaEngine(lua_version="5.1")  # type: ignore[arg-type]


def test_a_version_with_an_engine_factory_of_the_caller_s_is_refused() -> None:
    import engines

    with pytest.raises(ConfigurationError.InvalidValue, match="engine_factory"):
        Host(engine_factory=engines.make_engine, lua_version="5.4")
    host = Host(engine_factory=engines.make_engine)
    with pytest.raises(ConfigurationError.InvalidValue, match="engine_factory"):
        host.new_run_source("return 1", "lua", lua_version="luajit")


def test_a_run_may_choose_its_own_version(pool: WorkerPool) -> None:
    host = Host(lua_version="5.4", isolation=pool)
    run = host.new_run_source("return _VERSION", "lua", lua_version="luajit")
    import anyio

    assert anyio.run(run.execute) == "Lua 5.1"
    assert host.run_source("return _VERSION", "lua") == "Lua 5.4"


def test_javascript_runs_whatever_the_lua_version(pool: WorkerPool) -> None:
    host = Host(lua_version="luajit", isolation=pool)
    assert host.run_source("async function main() { return 2; }", "js") == 2


def test_the_config_file_s_version_unless_the_code_says(tmp_path: Path) -> None:
    config = tmp_path / "polyspell.toml"
    config.write_text('lua_version = "5.4"\n')
    assert Host(config=config).run_source("return _VERSION", "lua") == "Lua 5.4"
    assert Host(config=config, lua_version="5.5").run_source("return _VERSION", "lua") == "Lua 5.5"
    config.write_text('lua_version = "5.3"\n')
    with pytest.raises(SpellError) as info:
        Host(config=config)
    assert info.value.category == "configuration"


def test_the_cli_flag_on_run(tmp_path: Path) -> None:
    script = tmp_path / "v.lua"
    script.write_text("return _VERSION")
    for flag, expected in [("5.4", "Lua 5.4"), ("5.5", "Lua 5.5")]:
        out = polyspell("run", script, "--lua", flag)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == expected
    bad = polyspell("run", script, "--lua", "5.3")
    assert bad.returncode == 2 and "invalid choice: '5.3'" in bad.stderr


def test_the_cli_flag_on_run_in_process_mode(tmp_path: Path) -> None:
    script = tmp_path / "v.lua"
    script.write_text("return _VERSION")
    out = polyspell("run", script, "--lua", "luajit", "--isolation", "process")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == "Lua 5.1"
    refused = polyspell("run", script, "--lua", "luajit")
    assert refused.returncode != 0
    assert "configuration/invalid_value" in refused.stderr
    assert "--isolation process" in refused.stderr


def test_luajit_is_refused_in_thread_mode_and_says_why() -> None:
    with pytest.raises(ConfigurationError.InvalidValue) as info:
        Host(lua_version="luajit")
    assert "--isolation process" in str(info.value) and "C-stack" in str(info.value)
    with pytest.raises(ConfigurationError.InvalidValue, match="process isolation"):
        Host().new_run_source("return 1", "lua", lua_version="luajit")


# A script that recurses through C functions: LuaJIT has no C-stack limit there (Lua 5.4
# and 5.5 stop it with "C stack overflow"), so the process that runs it crashes.
C_RECURSION = {
    "gsub": "local function f(s) return (string.gsub(s, '.', f)) end\nreturn f('ab')",
    "wrap": "local function f() return coroutine.wrap(f)() end\nreturn f()",
}


@pytest.mark.parametrize("case", list(C_RECURSION))
def test_a_crash_of_luajit_fails_only_its_run(case: str, pool: WorkerPool) -> None:
    with Host(lua_version="luajit", isolation=pool) as host:
        with pytest.raises(SpellError) as info:
            host.run_source(C_RECURSION[case], "lua", "crash.lua")
        assert info.value.code == "runtime/worker_died"
        assert host.run_source("return _VERSION", "lua") == "Lua 5.1"


@pytest.mark.parametrize("case", list(C_RECURSION))
def test_lua_5_stops_the_same_recursion_as_an_error(case: str) -> None:
    for version in ("5.5", "5.4"):
        with pytest.raises(SpellError) as info:
            Host(lua_version=version).run_source(C_RECURSION[case], "lua", "crash.lua")
        assert info.value.category in ("script", "resource")


def _plan(tmp_path: Path, header: str = "") -> Path:
    (tmp_path / "v.lua").write_text("return _VERSION")
    plan = tmp_path / "plan.toml"
    plan.write_text(
        f"[plan]\n{header}\n"
        '[[task]]\nid = "plain"\nscript = "v.lua"\n'
        '[[task]]\nid = "jit"\nscript = "v.lua"\nlua_version = "luajit"\n'
        '[[task]]\nid = "five"\nscript = "v.lua"\nlua_version = "5.5"\n'
    )
    return plan


def _results(report: object) -> dict[str, object]:
    return {task.id: task.result for task in report.tasks}  # type: ignore[attr-defined]


def test_a_plan_s_version_and_a_task_s_own(tmp_path: Path, pool: WorkerPool) -> None:
    quiet = {"on_output": lambda task, line: None, "isolation": pool}  # the module's workers
    with Coordinator(**quiet) as coordinator:  # type: ignore[arg-type]
        report = coordinator.run(coordinator.prepare(_plan(tmp_path, 'lua_version = "5.4"')))
        assert _results(report) == {"plain": "Lua 5.4", "jit": "Lua 5.1", "five": "Lua 5.5"}
    with Coordinator(**quiet, lua_version="luajit") as coordinator:  # type: ignore[arg-type]
        report = coordinator.run(coordinator.prepare(_plan(tmp_path)))
        assert _results(report) == {"plain": "Lua 5.1", "jit": "Lua 5.1", "five": "Lua 5.5"}


def test_a_luajit_task_in_thread_mode_fails_with_the_reason(tmp_path: Path) -> None:
    with Coordinator(on_output=lambda task, line: None) as coordinator:
        report = coordinator.run(coordinator.prepare(_plan(tmp_path)))
    tasks = {task.id: task for task in report.tasks}
    assert tasks["plain"].result == "Lua 5.5"
    assert tasks["jit"].error["category"] == "configuration"
    assert tasks["jit"].error["kind"] == "invalid_value"


def test_a_plan_with_an_unknown_version_is_refused_before_anything_runs(tmp_path: Path) -> None:
    plan = _plan(tmp_path, 'lua_version = "5.3"')
    with pytest.raises(SpellError) as info:
        Coordinator().prepare(plan)
    assert info.value.code == "configuration/invalid_plan"
    assert "lua_version" in str(info.value)


def test_the_cli_flag_on_plan(tmp_path: Path) -> None:
    out = polyspell("plan", _plan(tmp_path), "--lua", "5.4", "--json", "--isolation", "process")
    assert out.returncode == 0, out.stderr
    tasks = {task["id"]: task["result"] for task in json.loads(out.stdout)["tasks"]}
    assert tasks == {"plain": "Lua 5.4", "jit": "Lua 5.1", "five": "Lua 5.5"}


# -- process mode --------------------------------------------------------------------------


def test_each_version_runs_in_a_worker_process(pool: WorkerPool, version: str) -> None:
    with Host(isolation=pool, lua_version=version) as host:
        assert host.run_source("return _VERSION", "lua") == VERSION_OF[version]
        with pytest.raises(SpellError) as info:
            host.run_source("local t = nil\nreturn t.x", "lua", "bad.lua")
        assert info.value.fields["script_line"] == 2


def test_luajit_compiles_only_in_a_worker_process(pool: WorkerPool) -> None:
    # trusted scripts reach LuaJIT's jit module: its status says whether it compiles
    source = "return (require('jit').status())"
    engine = LuaEngine(lua_version="luajit", sandbox="trusted")
    step = engine.start(source, "jit.lua", None, [], time.monotonic() + 5)
    assert step.result is False  # type: ignore[union-attr]
    with Host(isolation=pool, lua_version="luajit", sandbox="trusted") as host:
        assert host.run_source(source, "lua") is True


def test_a_busy_loop_ends_at_the_deadline_in_a_worker_on_each_version(
    pool: WorkerPool, version: str
) -> None:
    with Host(isolation=pool, lua_version=version, timeout=0.5) as host:
        with pytest.raises(SpellError) as info:
            host.run_source("local x = 0 while true do x = x + 1 end", "lua", "loop.lua")
    assert info.value.code == "script/resource_exhaustion"
    assert info.value.fields["resource_type"] == "time"


# -- the sandbox on each version -----------------------------------------------------------

# What no constrained script reaches, on any version: each expression must be nil (or the
# attempt an error the script sees, never a success).
ABSENT = [
    "io",
    "os.execute",
    "os.getenv",
    "debug",
    "package.loadlib",
    "package.path",
    "package.cpath",
    "package.preload",
    "package.searchers",
    "package.loaders",
    "dofile",
    "loadfile",
    "python",
    "string.dump",
    "('').dump",
    "getmetatable('').__index.dump",
    # Lua 5.1 / LuaJIT: other functions' environments, proxies with finalizers, modules,
    # the JIT and the FFI (each a way out)
    "setfenv",
    "getfenv",
    "newproxy",
    "module",
    "loadstring",
    "gcinfo",
    "jit",
    "ffi",
    "rawget(_G, 'jit')",
    "collectgarbage == collectgarbage and nil",
]


@pytest.mark.parametrize("name", ABSENT)
def test_what_the_sandbox_removes_is_absent_on_every_version(name: str, version: str) -> None:
    assert drive(f"return {name}", version).result is None


@pytest.mark.parametrize(
    "module",
    [
        "ffi",
        "jit",
        "jit.util",
        "jit.profile",
        "string.buffer",
        "table.new",
        "bit",
        "debug",
        "io",
        "utf8.x",
    ],
)
def test_require_reaches_no_library_of_the_runtime(
    module: str, version: str, pool: WorkerPool
) -> None:
    with pytest.raises(SpellError) as info:
        host_of(version, pool).run_source(f"return require('{module}')", "lua")
    assert info.value.code == "script/lua"
    assert "not found" in info.value.fields["error"]


def test_require_of_a_standard_library_gives_the_sandbox_s_own(
    version: str, pool: WorkerPool
) -> None:
    source = (
        "local os_, package_ = require('os'), require('package')\n"
        "return {os_ == os, os_.execute == nil, package_.loadlib == nil}"
    )
    assert host_of(version, pool).run_source(source, "lua") == [True, True, True]


LOAD_ESCAPES = {
    # bytecode: LuaJIT's (and Lua's) loader trusts it; a crafted chunk reads memory
    "binary_string": "return load(string.char(27) .. 'LJ' .. string.rep('x', 40))",
    "binary_mode": "return load('return 1', 'x', 'b')",
    "binary_reader": "local parts = {string.char(27), 'LJ\\2'}\n"
    "return load(function() return table.remove(parts, 1) end)",
}


@pytest.mark.parametrize("case", list(LOAD_ESCAPES))
def test_binary_chunks_are_refused_on_every_version(case: str, version: str) -> None:
    assert drive(LOAD_ESCAPES[case], version).error.code == "security/script_safety_violation"


def test_a_chunk_loaded_with_a_nil_environment_reaches_no_global(version: str) -> None:
    # LuaJIT gives such a chunk the state's own globals (io, debug, the prelude's)
    error = drive("return load('return io', 'c', 't', nil)()", version).error
    assert error.code == "script/lua"
    assert "nil value" in error.fields["error"]
    error = drive("return load('x = 1', 'c', 't', nil)()", version).error
    assert error.code == "script/lua"


def test_no_finalizer_through_a_metatable_on_any_version(version: str) -> None:
    error = drive("setmetatable({}, {__gc = function() while true do end end})", version).error
    assert error.code == "security/script_safety_violation"


def test_the_string_metatable_of_a_run_is_fresh_on_every_version(version: str) -> None:
    engine = LuaEngine(lua_version=version)
    deadline = time.monotonic() + 5
    engine.start(
        "getmetatable('').__index.upper = function() return 'hacked' end",
        "a.lua",
        None,
        [],
        deadline,
    )
    step = engine.start("return ('x'):upper()", "b.lua", None, [], deadline)
    assert step.result == "X"  # type: ignore[union-attr]


def test_luajit_s_own_libraries_for_scripts() -> None:
    # bit (plain functions on numbers) and unpack are LuaJIT's and harmless; utf8,
    # math.type and coroutine.close are Lua 5.3+ and absent there
    source = (
        "return {bit.band(12, 10), unpack({7, 8}), utf8 == nil, math.type == nil, "
        "coroutine.close == nil, rawlen == nil}"
    )
    assert drive(source, "luajit").result == [8, 7, True, True, True, True]
    assert drive("return {bit == nil, unpack == nil}", "5.5").result == [True, True]


def test_integers_beyond_what_luajit_holds_are_refused_not_rounded(pool: WorkerPool) -> None:
    host = Host(lua_version="luajit", isolation=pool)
    assert host.run_source("return args.n", "lua", args={"n": 2**53}) == 2**53
    with pytest.raises(SpellError) as info:
        host.run_source("return args.n", "lua", args={"n": 2**53 + 1})
    assert info.value.code == "script/cross_engine_communication"
    assert "LuaJIT" in str(info.value)
    assert Host().run_source("return args.n", "lua", args={"n": 2**60}) == 2**60


# -- limits on each version ----------------------------------------------------------------

LOOPS = [
    "while true do end",
    "while true do pcall(function() while true do end end) end",
    "local co = coroutine.wrap(function() while true do end end) co()",
    "while true do pcall(error, 'x') end",
    "local t = {} for i = 1, 1e9 do t[i % 100 + 1] = i * 2 end",
]


@pytest.mark.parametrize("loop", LOOPS)
def test_the_time_limit_in_thread_mode_on_every_version(loop: str, version: str) -> None:
    error = drive(loop, version, timeout=0.3).error
    assert error.code == "script/resource_exhaustion"
    assert error.fields["resource_type"] == "time"


def test_the_memory_limit_on_every_version(version: str) -> None:
    hog = "local t = {} for i = 1, 1e8 do t[i] = string.rep('x', 64) .. i end"
    error = drive(hog, version, memory_mb=32).error
    assert error.code == "resource/memory_exhaustion"


def test_deep_recursion_is_the_stack_limit_on_every_version(version: str) -> None:
    source = "local function f(n) return 1 + f(n + 1) end\nlocal r = f(1)\nreturn r"
    error = drive(source, version).error
    assert error.code == "script/resource_exhaustion"
    assert error.fields["resource_type"] == "stack"
    assert error.frames[0].line == 2


# -- tracebacks on each version ------------------------------------------------------------


def test_tracebacks_name_files_functions_and_lines_on_every_version(version: str) -> None:
    source = (
        "local function inner(t)\n"
        "  return t.missing.field\n"
        "end\n"
        "local function outer()\n"
        "  return inner({}) .. ''\n"
        "end\n"
        "outer()\n"
    )
    error = drive(source, version, filename="trace.lua").error
    assert error.code == "script/lua"
    assert error.fields["script_line"] == 2
    assert [(f.file, f.line) for f in error.frames] == [
        ("trace.lua", 7),
        ("trace.lua", 5),
        ("trace.lua", 2),
    ]
    assert error.frames[-1].source == "return t.missing.field"
    assert "inner" in error.frames[-1].function


def test_a_tool_error_reaches_the_script_as_a_table_on_every_version(
    version: str, pool: WorkerPool
) -> None:
    host = host_of(version, pool, [lost])
    source = (
        "local ok, e = pcall(tools.lost, {query = 'x'})\n"
        "return {ok, e.category, e.kind, e.fields.tool_name}"
    )
    assert host.run_source(source, "lua") == [False, "tool", "not_found", "backend"]


def lost(query: str) -> str:
    """Fails as a tool that lost its backend."""
    from bridge import ToolError

    raise ToolError.NotFound(tool_name="backend")


def test_a_memory_hog_on_luajit_in_a_worker_is_the_memory_limit(pool: WorkerPool) -> None:
    # the JIT compiles the loop there; max_memory still counts what it allocates
    hog = "local t = {} for i = 1, 1e8 do t[i] = string.rep('x', 64) .. i end"
    with Host(lua_version="luajit", isolation=pool, memory_mb=64) as host:
        with pytest.raises(SpellError) as info:
            host.run_source(hog, "lua", "hog.lua")
        assert info.value.code == "resource/memory_exhaustion"
        assert host.run_source("return 1", "lua") == 1


def test_a_coordinator_takes_the_config_file_s_version(tmp_path: Path) -> None:
    config = tmp_path / "polyspell.toml"
    config.write_text('lua_version = "5.4"\n')
    plan = tmp_path / "plan.toml"
    (tmp_path / "v.lua").write_text("return _VERSION")
    plan.write_text('[[task]]\nid = "a"\nscript = "v.lua"\n')
    with Coordinator(config=config, on_output=lambda task, line: None) as coordinator:
        report = coordinator.run(coordinator.prepare(plan))
    assert _results(report) == {"a": "Lua 5.4"}
