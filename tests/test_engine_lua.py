"""The Lua engine on real lupa: conventions, tool calls, errors, frames, sandbox and limits.

A tiny driver stands in for the host: it answers each tool request from a dict of Python
functions, with the function's result or, when it raises a SpellError, an error envelope
whose ref maps back to the raised error; it collects each step's output lines and, as the
host does, resolves the refs of a failure's error (bridge.envelope.resolve_refs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from bridge import AgentError, Frame, SpellError, ToolError
from engines.base import Failed, Finished, Limits, Suspended, ToolReply
from engines.lua import LuaEngine
from tests import engine_driver
from tests.conftest import NO_INTEGERS_ON_LUAJIT, nil_indexed
from tests.engine_driver import Run

# every test on each Lua version (tests/conftest.py: lua_version)
pytestmark = pytest.mark.usefixtures("lua_version")

def drive(
    source: str,
    args: Any = None,
    tools: dict[str, Callable[[Any], Any]] | None = None,
    *,
    filename: str = "agent.lua",
    timeout: float = 5.0,
    memory_mb: int = 64,
    sandbox: str = "constrained",
) -> Run:
    """Run ``source`` to the end, answering tool requests from ``tools``."""
    # a Lua script waits for one tool call at a time: each step suspends with one request
    return engine_driver.drive("lua", source, args, tools, filename=filename,
                               timeout=timeout, memory_mb=memory_mb, sandbox=sandbox,
                               one_at_a_time=True)


def echo(params: Any) -> Any:
    return params


def fails(err: SpellError) -> Callable[[Any], Any]:
    def tool(params: Any) -> Any:
        raise err
    return tool


def assert_fresh_engine_works() -> None:
    run = drive("local r = tools.echo{n = 1} return r.n + 1", tools={"echo": echo})
    assert run.result == 2


# -- conventions --------------------------------------------------------------------------


def test_chunk_return_value_is_the_result() -> None:
    assert drive("return 1 + 1").result == 2
    assert drive("local x = 1").result is None


def test_args_are_the_args_global_and_the_chunks_varargs() -> None:
    run = drive("local a = ... return {a.x, args.x, args.list[2], #args.list}",
                {"x": 5, "list": ["a", "b"]})
    assert run.result == [5, 5, "b", 2]


def test_main_is_called_with_args_and_its_value_is_the_result() -> None:
    source = "function main(a) return {doubled = a.n * 2, same = a == args} end\nreturn 'chunk'"
    assert drive(source, {"n": 21}).result == {"doubled": 42, "same": True}


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("{}", {}),
        ("{1, 2, 3}", [1, 2, 3]),
        ("{a = 1, b = {c = {}}}", {"a": 1, "b": {"c": {}}}),
        ("{1.5, 2.0, 3, math.maxinteger}", [1.5, 2.0, 3, 2**63 - 1]),
        ("{true, false, 'x'}", [True, False, "x"]),
        ("{{}, {{}}, {x = {1}}}", [{}, [{}], {"x": [1]}]),
        ("'caf\\u{E9}'", "café"),
        ("nil", None),
    ],
)
def test_results_become_json_like_data(expression: str, expected: Any,
                                       lua_version: str) -> None:
    if lua_version == "luajit" and "." in expression:
        pytest.skip(NO_INTEGERS_ON_LUAJIT)  # 2.0 is the integer 2 there
    result = drive(f"return {expression}").result
    assert result == expected
    assert [type(item) for item in _leaves(result)] == [type(item) for item in _leaves(expected)]


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


@pytest.mark.parametrize(
    ("source", "message", "data_type"),
    [
        ("return {items = {1, print}}", "result.items[2] is a function", "function"),
        ("local t = {} t.self = t return t", "cyclic table at result.self", "table"),
        ("return {1, 2, x = 3}", "result mixes string and integer keys", "table"),
        ("return {[true] = 1}", "result has a boolean key", "table"),
        ("return {[1] = 1, [3] = 3}", "result is an array with holes", "table"),
        ("return coroutine.create(print)", "result is a thread", "thread"),
        ("return {s = '\\xff'}", "result.s is not valid UTF-8 text", "string"),
    ],
)
def test_results_that_are_not_data_fail_with_the_path(
    source: str, message: str, data_type: str
) -> None:
    error = drive(source).error
    assert error.code == "script/cross_engine_communication"
    assert error.fields["from_engine"] == "lua" and error.fields["to_engine"] == "python"
    assert error.fields["error"].startswith(message)
    assert error.fields["data_type"] == data_type


def test_args_that_are_not_data_fail_before_the_script_runs() -> None:
    error = drive("return 1", {"f": object()}).error
    assert error.code == "script/cross_engine_communication"
    assert "args.f is a object" in error.fields["error"]


def test_print_goes_to_the_steps_output_line_by_line() -> None:
    run = drive("print('a', 1, nil, true)\nlocal r = tools.echo{}\nprint('b\\nc')\nreturn 'done'",
                tools={"echo": echo})
    assert run.output == ["a\t1\tnil\ttrue", "b\nc"]
    assert run.result == "done"
    failed = drive("print('before')\nerror('boom')")
    assert failed.output == ["before"] and failed.error.code == "script/lua"


# -- tool calls ---------------------------------------------------------------------------


def test_tool_calls_suspend_and_results_come_back() -> None:
    source = """
local found = tools.search{query = "lua", limit = 2}
local again = tools.call("search", {query = found.query .. "!"})
local empty = tools.search()
return {found, again, empty}
"""
    run = drive(source, tools={"search": echo})
    assert run.result == [{"query": "lua", "limit": 2}, {"query": "lua!"}, {}]
    assert [r.id for r in run.requests] == [1, 2, 3]
    assert [r.tool for r in run.requests] == ["search"] * 3
    assert [r.params for r in run.requests] == [{"query": "lua", "limit": 2},
                                                 {"query": "lua!"}, {}]
    assert [r.frames[-1].line for r in run.requests] == [2, 3, 4]


def test_tool_results_of_every_shape_reach_the_script(lua_version: str) -> None:
    if lua_version == "luajit":
        pytest.skip(NO_INTEGERS_ON_LUAJIT)
    values = {"n": 3, "f": 2.5, "s": "x", "b": False, "list": [1, [2, {"k": "v"}]], "d": {}}
    source = """
local r = tools.get{}
return {math.type(r.n), math.type(r.f), r.s, r.b, r.list[2][2].k, next(r.d), r.nothing}
"""
    run = drive(source, tools={"get": lambda params: values})
    assert run.result == ["integer", "float", "x", False, "v"]
    assert drive("return tools.get{} == nil", tools={"get": lambda p: None}).result is True


def test_tools_list_describes_the_tools_without_suspending() -> None:
    run = drive("return tools.list()", tools={"search": echo, "fetch": echo})
    assert run.result == [{"name": "search", "description": "the search tool"},
                          {"name": "fetch", "description": "the fetch tool"}]
    assert run.requests == []


def test_a_tool_called_inside_a_script_coroutine_suspends_the_whole_script() -> None:
    source = """
local co = coroutine.create(function(a)
  local first = tools.echo{n = a}
  local b = coroutine.yield(first.n + 1)
  local second = tools.echo{n = b}
  return second.n * 10
end)
local ok1, y = coroutine.resume(co, 1)
local ok2, r = coroutine.resume(co, y + 1)
local gen = coroutine.wrap(function()
  for i = 1, 2 do coroutine.yield(tools.echo{i = i}.i) end
end)
return {ok1, y, ok2, r, coroutine.status(co), gen(), gen()}
"""
    run = drive(source, tools={"echo": echo})
    assert run.result == [True, 2, True, 30, "dead", 1, 2]
    assert [r.params for r in run.requests] == [{"n": 1}, {"n": 3}, {"i": 1}, {"i": 2}]
    # The frames of a request from a coroutine reach out to the main chunk.
    assert [(f.line, f.function) for f in run.requests[0].frames] == [
        (8, "main chunk"), (3, "function <agent.lua:2>")]


def test_coroutine_functions_still_behave_like_lua() -> None:
    source = """
local main_co, is_main = coroutine.running()
local ok, err = pcall(coroutine.yield, 1)
local inner = coroutine.wrap(function() return coroutine.isyieldable() end)()
return {is_main, coroutine.isyieldable(), ok, err, inner}
"""
    assert drive(source).result == [True, False, False,
                                    "attempt to yield from outside a coroutine", True]


@pytest.mark.parametrize(
    ("call", "problem"),
    [
        ("tools.t{callback = print}", "params.callback is a function"),
        ("local p = {} p.self = p tools.t(p)", "cyclic table at params.self"),
        ("tools.t{[2.5] = 1}", "params has a non-integer number key"),
        ("tools.t{1, 2, x = 3}", "params mixes string and integer keys"),
        ("tools.t('text')", "params is a string, expected a table"),
        ("tools.t({}, 2)", "expected one table of parameters, got 2 arguments"),
        ("tools.t{deep = {list = {1, print}}}", "params.deep.list[2] is a function"),
    ],
)
def test_unreadable_params_still_suspend_with_a_problem(call: str, problem: str) -> None:
    source = f"local ok, err = pcall(function() {call} end)\nreturn {{ok, err.kind}}"
    run = drive(source, tools={"t": echo})
    [request] = run.requests
    assert request.params is None
    assert request.problem is not None and request.problem.message.startswith(problem)
    assert run.result == [False, "invalid_parameters"]


# -- errors from tools --------------------------------------------------------------------


def test_a_tool_error_is_a_lua_error_table_at_the_call_site(lua_version: str) -> None:
    if lua_version == "luajit":
        pytest.skip(NO_INTEGERS_ON_LUAJIT)
    source = """
local ok, err = pcall(tools.search, {query = "x"})
return {ok = ok, category = err.category, kind = err.kind, name = err.name,
        tool = err.fields.tool_name, duration = err.fields.duration,
        text = tostring(err), message = err.message, traceback = err.traceback,
        cause = err.cause.kind, ref = math.type(err.ref)}
"""
    cause = ToolError.NotFound(tool_name="backend")
    timeout = ToolError.Timeout(tool_name="search", duration=2.0)
    timeout.__cause__ = cause
    result = drive(source, tools={"search": fails(timeout)}).result
    assert result["ok"] is False
    assert (result["category"], result["kind"], result["name"]) == ("tool", "timeout",
                                                                    "ToolError")
    assert (result["tool"], result["duration"]) == ("search", 2.0)
    assert result["text"] == "tool/timeout: Tool timeout: search after 2.0s"
    assert result["message"] == "Tool timeout: search after 2.0s"
    assert result["traceback"] == "stack traceback:\n\tagent.lua:2: in main chunk"
    assert result["cause"] == "not_found"
    assert result["ref"] == "integer"


def test_an_uncaught_tool_error_fails_the_run_with_the_original_error() -> None:
    err = ToolError.Timeout(tool_name="search", duration=2.0)
    run = drive("local r = tools.search{}\nreturn r", tools={"search": fails(err)})
    assert run.error is err


def test_a_caught_and_rethrown_tool_error_keeps_its_identity() -> None:
    err = ToolError.Timeout(tool_name="search", duration=2.0)
    source = """
local ok, e = pcall(function() return tools.search{} end)
if e.kind == "timeout" then error(e) end
"""
    assert drive(source, tools={"search": fails(err)}).error is err


def test_without_a_ref_an_error_table_is_rebuilt_from_its_data() -> None:
    source = """
local ok, e = pcall(tools.search, {})
e.ref = nil
local function rethrow() error(e) end
rethrow()
"""
    err = ToolError.Timeout(tool_name="search", duration=2.0)
    error = drive(source, tools={"search": fails(err)}).error
    assert error is not err
    assert error.code == "tool/timeout" and error.fields == err.fields
    assert [(f.line, f.function) for f in error.frames] == [(2, "main chunk")]


# -- errors raised by scripts -------------------------------------------------------------


def test_errors_constructors_raise_unified_errors() -> None:
    source = """
local function plan()
  error(errors.AgentError{kind = "execution_failed", reason = "planner gave up",
                          agent_id = "planner"})
end
plan()
"""
    error = drive(source).error
    assert isinstance(error, AgentError.ExecutionFailed)
    assert error.fields["agent_id"] == "planner" and error.fields["reason"] == "planner gave up"
    assert [(f.file, f.line, f.function) for f in error.frames] == [
        ("agent.lua", 6, "main chunk"), ("agent.lua", 3, "plan")]


def test_error_tables_made_in_scripts_print_their_filled_template() -> None:
    source = """
local e = errors.ToolError{kind = "timeout", tool_name = "search", duration = 1.5}
local m = errors.StorageError{kind = "not_found", key = "k", message = "gone"}
local c = errors.NetworkError{kind = "timeout", endpoint = "x", duration = 1, cause = e}
local d = errors.StorageError{kind = "not_found", key = "k"}
return {tostring(e), tostring(m), tostring(d), e.category, e.fields.tool_name,
        e.fields.kind == nil, c.cause.kind, errors.RuntimeError ~= nil}
"""
    assert drive(source).result == [
        "tool/timeout: Tool timeout: search after 1.5s", "storage/not_found: gone",
        "storage/not_found: Not found in storage: k", "tool", "search", True, "timeout", True]


def test_an_error_with_a_cause_keeps_the_cause() -> None:
    source = """
local ok, e = pcall(tools.search, {})
error(errors.AgentError{kind = "execution_failed", reason = "no results", cause = e})
"""
    err = ToolError.Timeout(tool_name="search", duration=2.0)
    error = drive(source, tools={"search": fails(err)}).error
    assert error.code == "agent/execution_failed"
    assert error.cause is err


def test_a_wrong_field_gives_invalid_error_at_the_script_line() -> None:
    source = "local x = 1\nerror(errors.AgentError{kind = 'execution_failed', agent_id = 'a'})"
    error = drive(source).error
    assert error.code == "bridge/invalid_error"
    assert "reason" in error.fields["reason"]
    assert [(f.line, f.source) for f in error.frames] == [
        (2, "error(errors.AgentError{kind = 'execution_failed', agent_id = 'a'})")]


def test_a_runtime_error_has_the_script_frames(lua_version: str) -> None:
    source = """local config = {}

local function lookup(key)
  return config.section[key]
end

function handler(key)
  local value = lookup(key)
  return value
end

local result = handler("x")
return result
"""
    error = drive(source).error
    assert error.code == "script/lua"
    assert error.fields["error"] == nil_indexed(lua_version, "field 'section'")
    assert error.fields["script"] == "agent.lua" and error.fields["script_line"] == 4
    assert error.fields["thrown"] is None
    assert error.frames == [
        Frame("lua", "agent.lua", 12, None, "main chunk", 'local result = handler("x")'),
        Frame("lua", "agent.lua", 8, None, "handler", "local value = lookup(key)"),
        Frame("lua", "agent.lua", 4, None, "lookup", "return config.section[key]"),
    ]
    assert error.fields["stack_trace"].startswith("stack traceback:\n\tagent.lua:4:")


def test_an_error_inside_a_script_coroutine_has_the_frames_of_both_sides(
        lua_version: str) -> None:
    source = """local worker = coroutine.wrap(function()
  local t = nil
  return t.field
end)
local r = worker()
return r
"""
    error = drive(source).error
    assert error.fields["error"] == nil_indexed(lua_version, "local 't'")
    inside = [(3, "function <agent.lua:1>")]
    if lua_version == "luajit":
        inside = []  # LuaJIT keeps no line of a coroutine that died (README: Lua versions)
    assert [(f.line, f.function) for f in error.frames] == [(5, "main chunk"), *inside]


def test_frames_use_the_real_file_name_even_when_lua_shortens_it() -> None:
    filename = "/srv/agents/" + "very-long-directory-name/" * 4 + "agent.lua"
    error = drive("local t = nil\nreturn t.x", filename=filename).error
    assert error.fields["script_line"] == 2 and error.fields["script"] == filename
    assert [(f.file, f.line) for f in error.frames] == [(filename, 2)]


@pytest.mark.parametrize(
    ("raise_", "message", "thrown"),
    [
        ("error(nil)", "error value nil", None),
        ("error(42)", "error value 42 (a number)", 42),
        ("error({code = 1})", "error object {code = 1}", {"code": 1}),
        ("error(setmetatable({}, {__tostring = function() return 'custom' end}))", "custom",
         {}),
        ("error({f = print})", "error object {f = \"function: ", None),
    ],
)
def test_values_that_are_not_messages_are_kept_as_thrown(
    raise_: str, message: str, thrown: Any, lua_version: str
) -> None:
    if lua_version == "luajit" and raise_ == "error(42)":
        message, thrown = "42", None  # Lua 5.1's error makes a message of a number
    error = drive(f"local x = 1\n{raise_}").error
    assert error.code == "script/lua"
    assert error.fields["error"].startswith(message)
    if thrown is not None:
        assert error.fields["thrown"] == thrown
    assert error.fields["script_line"] == 2


def test_a_string_error_without_position_keeps_its_text() -> None:
    error = drive("local x = 1\nerror('plain', 0)").error
    assert error.fields["error"] == "plain" and error.fields["script_line"] == 2


def test_a_syntax_error_fails_compilation_with_the_line() -> None:
    error = drive("local a = 1\nlocal b = = 2\n", filename="bad.lua").error
    assert error.code == "script/compilation_failed"
    assert error.fields["language"] == "lua" and error.fields["file"] == "bad.lua"
    assert error.fields["line"] == 2 and error.fields["error"] == "unexpected symbol near '='"
    assert error.frames == [Frame("lua", "bad.lua", 2, None, "main chunk", "local b = = 2")]


# -- the sandbox ------------------------------------------------------------------------

# (require is the host's, and package holds only the run's loaded modules: see
# tests/test_libraries.py)
ABSENT = ["python", "io", "debug", "package.path", "package.cpath", "package.loadlib",
          "package.searchers", "package.preload", "package.loaded.io",
          "package.loaded.debug", "dofile", "loadfile", "string.dump",
          "os.execute", "os.getenv", "os.exit", "getmetatable('').__index.dump", "warn"]


@pytest.mark.parametrize("name", ABSENT)
def test_escapes_are_absent(name: str) -> None:
    assert drive(f"return {name} == nil").result is True


@pytest.mark.parametrize("use", ["python.eval('1')", "io.open('/etc/passwd')",
                                 "os.execute('true')", "string.dump(print)",
                                 "package.loadlib('x', 'y')", "debug.getregistry()"])
def test_using_an_escape_is_an_ordinary_lua_error(use: str) -> None:
    error = drive(f"local x = {use}").error
    assert error.code == "script/lua"
    assert error.fields["error"].startswith("attempt to")


@pytest.mark.parametrize(
    "source",
    [
        "load(string.char(27) .. 'Lua')",
        "load('return 1', 'x', 'b')",
        "load('return 1', 'x', 'bt')",
        "collectgarbage('stop')",
        "collectgarbage('generational')",
        "setmetatable({}, {__gc = function() end})",
    ],
)
def test_forbidden_uses_are_script_safety_violations(source: str) -> None:
    error = drive(f"local x = 1\n{source}").error
    assert error.code == "security/script_safety_violation"
    assert error.fields["engine"] == "lua"
    assert [f.line for f in error.frames] == [2]


def test_allowed_builtins_work() -> None:
    source = """
local f = load("return x + 1", "chunk", "t", {x = 41})
local g = load("return args.n")
return {f(), g(), collectgarbage("count") > 0, select("#", 1, 2), os.time() > 0,
        ("abc"):upper(), string.format("%d", 3), _G == (_ENV or _G), _G.undefined_name}
"""
    assert drive(source, {"n": 7}).result == [42, 7, True, 2, True, "ABC", "3", True]


def test_load_of_a_binary_chunk_from_a_reader_is_refused() -> None:
    source = ("local parts = {string.char(27), 'Lua'}\n"
              "load(function() return table.remove(parts, 1) end)")
    assert drive(source).error.code == "security/script_safety_violation"


def test_trusted_scripts_get_the_standard_libraries_but_not_python() -> None:
    source = "return {io ~= nil, os.getenv ~= nil, debug ~= nil, require ~= nil, python == nil}"
    assert drive(source, sandbox="trusted").result == [True] * 5
    assert drive("return require('python')", sandbox="trusted").error.code == "script/lua"


def test_even_trusted_scripts_reach_no_python_attribute() -> None:
    source = """
local hook = debug.gethook(coroutine.running())
for i = 1, 200 do
  local name, value = debug.getupvalue(hook, i)
  if name == nil then break end
  if type(value) == "userdata" then
    local ok, err = pcall(function() return value.__self__ end)
    return {ok, tostring(err):match("not reachable") ~= nil}
  end
end
"""
    assert drive(source, sandbox="trusted").result == [False, True]


def test_a_run_cannot_leave_anything_for_the_next_one() -> None:
    engine = LuaEngine()
    deadline = time.monotonic() + 5
    first = engine.start("string.upper = nil getmetatable('').__index = {} leaked = 1",
                         "a.lua", None, [], deadline)
    assert isinstance(first, Finished)
    second = engine.start("return {('x'):upper(), leaked}", "b.lua", None, [], deadline)
    assert second == Finished(["X"])


# -- limits -------------------------------------------------------------------------------

LOOPS = {
    "plain": "local i = 0\nwhile true do i = i + 1 end",
    "pcall": "while true do pcall(function() while true do end end) end",
    "xpcall": "while true do\n"
              "  xpcall(function() error('x') end, function() while true do end end)\nend",
    "coroutine": "local co = coroutine.wrap(function() while true do end end)\nco()",
    "resume": "while true do\n"
              "  coroutine.resume(coroutine.create(function() while true do end end))\nend",
    "load": "while true do pcall(load('while true do end')) end",
}


@pytest.mark.parametrize("loop", LOOPS)
def test_the_time_limit_stops_every_kind_of_loop(loop: str) -> None:
    started = time.monotonic()
    error = drive(LOOPS[loop], timeout=0.2).error
    assert time.monotonic() - started < 2
    assert error.code == "script/resource_exhaustion"
    assert error.fields["resource_type"] == "time" and error.fields["limit"] == 0.2
    assert all(frame.file == "agent.lua" for frame in error.frames)
    assert_fresh_engine_works()


def test_the_deadline_of_resume_replaces_the_one_of_start() -> None:
    engine = LuaEngine()
    step = engine.start("tools.wait{}\nwhile true do end", "agent.lua", None, [],
                        time.monotonic() + 60)
    assert isinstance(step, Suspended)
    started = time.monotonic()
    step = engine.resume([ToolReply(step.requests[0].id, result=None)], time.monotonic() + 0.1)
    assert isinstance(step, Failed) and step.error.fields["resource_type"] == "time"
    assert time.monotonic() - started < 2
    assert [f.line for f in step.error.frames] == [2]


def test_a_deadline_already_past_at_resume_fails_at_once() -> None:
    engine = LuaEngine()
    step = engine.start("tools.wait{}", "agent.lua", None, [], time.monotonic() + 60)
    assert isinstance(step, Suspended)
    step = engine.resume([ToolReply(step.requests[0].id)], time.monotonic() - 1)
    assert isinstance(step, Failed) and step.error.code == "script/resource_exhaustion"


@pytest.mark.parametrize(
    "source",
    [
        "local t = {} for i = 1, 1e9 do t[i] = i end",
        "local s = 'x' while true do s = s .. s end",
        "local ok = pcall(function() local t = {} for i = 1, 1e9 do t[i] = {} end end)\n"
        "return 'caught'",
    ],
)
def test_the_memory_limit_fails_the_run(source: str) -> None:
    error = drive(source, memory_mb=16).error
    assert error.code == "resource/memory_exhaustion"
    assert error.fields["location"] == "lua" and error.fields["available"] == 16 * 2**20
    assert_fresh_engine_works()


def test_deep_recursion_is_a_stack_exhaustion() -> None:
    source = "local function f(n) return 1 + f(n + 1) end\nlocal r = f(1)\nreturn r"
    error = drive(source, memory_mb=256).error
    assert error.code == "script/resource_exhaustion"
    assert error.fields["resource_type"] == "stack" and error.fields["language"] == "lua"
    assert error.fields["current_usage"] > 1000
    assert error.frames[0] == Frame("lua", "agent.lua", 2, None, "main chunk", "local r = f(1)")
    assert_fresh_engine_works()


# -- the protocol ---------------------------------------------------------------------------


def test_a_reply_to_another_request_is_a_protocol_violation() -> None:
    engine = LuaEngine()
    step = engine.start("tools.wait{}", "agent.lua", None, [], time.monotonic() + 5)
    assert isinstance(step, Suspended)
    step = engine.resume([ToolReply(step.requests[0].id + 1)], time.monotonic() + 5)
    assert isinstance(step, Failed) and step.error.code == "bridge/protocol_violation"


def test_a_closed_engine_refuses_to_run():
    engine = LuaEngine(limits=Limits(timeout=5))
    engine.close()
    step = engine.start("return 1", "closed.lua", None, [], time.monotonic() + 5)
    assert isinstance(step, Failed)
    assert step.error.code == "bridge/protocol_violation"
    assert "closed" in step.error.message


def test_a_deep_stack_keeps_every_level() -> None:
    # debug.traceback alone leaves out all but the first 10 and last 11 levels
    source = "\n".join(
        ["local f = {}"]
        + [f"f[{n}] = function() local x = f[{n + 1}]() return x end" for n in range(1, 40)]
        + ["f[40] = function() error('deep') end", "local r = f[1]()", "return r"])
    error = drive(source).error
    lines = [frame.line for frame in error.frames]
    assert lines == [42, *range(2, 42)]  # main chunk, then f[1] ... f[40], outermost first
