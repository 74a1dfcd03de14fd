"""Tools files: Lua and JavaScript functions as tools, called across engines to any depth.

Every test runs an agent in one language calling a tools file in one language (all four
pairs), on the real engines; errors must keep their identity and fields at every level
and come back to Python with the whole path, outermost first.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge import ConfigurationError, SpellError, ToolError
from host import Host, tool
from tests.conftest import EXTENSION, LANGUAGES, pick

# every test in both isolation modes: engines in threads, and in worker processes
pytestmark = pytest.mark.usefixtures("isolation")

# A tools file in each language: the same functions, line for line where it matters.
HELPERS = {
    "lua": """local M = {}
local calls = 0
function M.add(p) calls = calls + 1; return {sum = p.a + p.b, calls = calls} end
function M.fetch(p) local r = tools.lookup{key = p.key}; return {got = r} end
function M.guarded(p)
  local ok, err = pcall(tools.lookup, {key = p.key})
  return {ok = ok, category = err.category, kind = err.kind, tool = err.fields.tool_name}
end
function M.wrap(p)
  local ok, err = pcall(tools.lookup, {key = p.key})
  error(errors.AgentError{kind = "execution_failed", agent_id = "helper",
                          reason = "lookup failed", cause = err})
end
function M.relay(p) local r = tools[p.next](p.params); return r end
function M.bad_result(p) return function() end end
function M.nan(p) return {x = 0/0} end
function M.boom(p) error("boom") end
return M
""",
    "javascript": """// the same functions in JavaScript
let calls = 0;
exports.add = (p) => { calls += 1; return {sum: p.a + p.b, calls}; };
exports.fetch = async function fetch(p) { return {got: await tools.lookup({key: p.key})}; };
exports.guarded = async function guarded(p) {
  try { await tools.lookup({key: p.key}); return {ok: true}; }
  catch (err) {
    return {ok: false, category: err.category, kind: err.kind, tool: err.fields.tool_name};
  }
};
exports.wrap = async function wrap(p) {
  try { await tools.lookup({key: p.key}); } catch (err) {
    throw new AgentError({kind: "execution_failed", agent_id: "helper",
                          reason: "lookup failed", cause: err});
  }
};
exports.relay = function relay(p) { return tools[p.next](p.params); };
exports.bad_result = function bad_result(p) { return () => 1; };
exports.nan = function nan(p) { return {x: NaN}; };
exports.boom = function boom(p) { throw new Error("boom"); };
""",
}
FETCH_LINE = 4  # the line of tools.lookup in M.fetch / exports.fetch


@tool
def lookup(key: str) -> str:
    """Python: fails for any key but "ok"."""
    if key != "ok":
        raise ToolError.NotFound(tool_name=f"entry {key}")
    return "value"


@pytest.fixture(params=LANGUAGES)
def helpers(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A tools file in the language under test."""
    path = tmp_path / f"helpers{EXTENSION[request.param]}"
    path.write_text(HELPERS[request.param])
    return path


def _lang(path: Path) -> str:
    return "lua" if path.suffix == ".lua" else "javascript"


def _host(*tools, **options) -> Host:
    return Host([*tools, lookup], timeout=10, on_output=lambda line: None, **options)


def _failure(host: Host, source: str, language: str, name: str) -> SpellError:
    """The error a run of ``source`` fails with."""
    with pytest.raises(SpellError) as info:
        host.run_source(source, language, name)
    return info.value


def test_each_exported_function_is_a_tool(helpers):
    host = _host(helpers)
    names = {t.name for t in host.tools}
    assert {"add", "fetch", "guarded", "wrap", "relay", "boom"} <= names
    assert "calls" not in names and "M" not in names  # only functions are exported


def test_an_agent_calls_a_function_of_the_other_language_and_its_state_lives_for_the_run(
        language, helpers):
    host = _host(helpers)
    source = pick(language,
                  "local a = tools.add{a = 1, b = 2}\nlocal b = tools.add{a = 3, b = 4}\n"
                  "return {a, b}\n",
                  "async function main() {\n  const a = await tools.add({a: 1, b: 2});\n"
                  "  const b = await tools.add({a: 3, b: 4});\n  return [a, b];\n}\n")
    first = host.run_source(source, language, "agent")
    assert first == [{"sum": 3, "calls": 1}, {"sum": 7, "calls": 2}]
    # a new run gets a fresh engine for the tools file: its module state starts over
    assert host.run_source(source, language, "agent") == first


def test_a_python_error_two_levels_down_comes_back_with_the_whole_path(language, helpers):
    host = _host(helpers)
    source = pick(language, "local x = 1\nlocal r = tools.fetch{key = 'missing'}\nreturn r\n",
                  "async function main() {\n  return await tools.fetch({key: 'missing'});\n}\n")
    with pytest.raises(ToolError) as info:
        host.run_source(source, language, "agent.src")
    err = info.value
    assert (err.code, err.fields["tool_name"]) == ("tool/not_found", "entry missing")
    path = [(f.language, f.file, f.line, f.function) for f in err.frames]
    assert path[0][:3] == (language, "agent.src", 2)
    assert path[1] == ("host", "<tool call>", None, "fetch")
    assert path[2][:3] == (_lang(helpers), str(helpers), FETCH_LINE)
    assert path[2][3] == "fetch"
    assert path[3] == ("host", "<tool call>", None, "lookup")
    assert path[4][0] == "python" and path[4][3] == "lookup"
    # the context has each boundary, outermost first, with its parameters
    calls = err.context.execution_trace.call_stack
    assert [(c.function_name, c.parameters) for c in calls] == [
        ("fetch", {"key": "missing"}), ("lookup", {"key": "missing"})]
    assert calls[0].file_location.file == "agent.src"
    assert calls[1].file_location.file == str(helpers)


def test_the_same_error_is_catchable_at_every_level(language, helpers):
    host = _host(helpers)
    # caught in the tools file
    source = pick(language, "local r = tools.guarded{key = 'x'}\nreturn r\n",
                  "async function main() { return await tools.guarded({key: 'x'}); }\n")
    assert host.run_source(source, language, "agent") == {
        "ok": False, "category": "tool", "kind": "not_found", "tool": "entry x"}
    # caught in the agent, one level further up
    source = pick(language,
                  "local ok, err = pcall(tools.fetch, {key = 'x'})\n"
                  "return {ok = ok, kind = err.kind, tool = err.fields.tool_name,\n"
                  "        text = tostring(err)}\n",
                  "async function main() {\n  try { await tools.fetch({key: 'x'}); }\n"
                  "  catch (err) { return {ok: false, kind: err.kind, tool: err.fields.tool_name,"
                  " text: `${err.category}/${err.kind}: ${err.message}`, "
                  "isToolError: err instanceof ToolError}; }\n}\n")
    seen = host.run_source(source, language, "agent")
    assert seen["kind"] == "not_found" and seen["tool"] == "entry x"
    assert seen["text"] == "tool/not_found: Tool not found: entry x"
    if language == "javascript":
        assert seen["isToolError"] is True


def test_an_error_rethrown_through_two_engines_is_the_very_error_python_raised(
        language, helpers):
    sent = ToolError.Timeout(tool_name="slow", duration=1.5)

    @tool
    def lookup(key: str) -> str:  # fails whatever the key
        raise sent

    host = Host([helpers, lookup], timeout=10, on_output=lambda line: None)
    source = pick(language,
                  "local ok, err = pcall(tools.fetch, {key = 'x'})\nerror(err)\n",
                  "async function main() {\n  try { await tools.fetch({key: 'x'}); }\n"
                  "  catch (e) { throw e; }\n}\n")
    with pytest.raises(SpellError) as info:
        host.run_source(source, language, "agent.src")
    assert info.value is sent
    languages = [f.language for f in sent.frames]
    assert languages[:4] == [language, "host", _lang(helpers), "host"]
    assert languages[4:] and set(languages[4:]) == {"python"}


def test_a_wrapped_error_keeps_the_chain_through_the_hop(language, helpers):
    host = _host(helpers)
    source = pick(language, "local r = tools.wrap{key = 'x'}\nreturn r\n",
                  "async function main() { return await tools.wrap({key: 'x'}); }\n")
    err = _failure(host, source, language, "agent.src")
    assert err.code == "agent/execution_failed"
    assert err.fields["agent_id"] == "helper"
    assert isinstance(err.__cause__, ToolError) and err.__cause__.kind == "not_found"
    assert err.frames[0].file == "agent.src"
    assert any(f.file == str(helpers) for f in err.frames)


def test_three_levels_agent_to_tools_file_to_tools_file_in_the_other_language(
        language, helpers, tmp_path):
    other = "javascript" if _lang(helpers) == "lua" else "lua"
    second = tmp_path / f"second{EXTENSION[other]}"
    second.write_text(pick(other,
                           "return {inner = function(p) error(errors.ToolError{kind = "
                           "'timeout', tool_name = p.who, duration = 2}) end}\n",
                           "exports.inner = function inner(p) {\n  throw new ToolError("
                           "{kind: 'timeout', tool_name: p.who, duration: 2});\n};\n"))
    host = _host(helpers, second)
    source = pick(language,
                  "local r = tools.relay{next = 'inner', params = {who = 'deep'}}\nreturn r\n",
                  "async function main() {\n  return await tools.relay({next: 'inner', "
                  "params: {who: 'deep'}});\n}\n")
    with pytest.raises(ToolError) as info:
        host.run_source(source, language, "agent.src")
    err = info.value
    assert (err.kind, err.fields["tool_name"], err.fields["duration"]) == ("timeout", "deep", 2)
    languages = [f.language for f in err.frames]
    assert languages == [language, "host", _lang(helpers), "host", other]
    assert err.frames[-1].file == str(second)


def test_a_result_that_cannot_cross_names_both_engines(language, helpers):
    host = _host(helpers)
    source = pick(language, "local r = tools.bad_result{}\nreturn r\n",
                  "async function main() { return await tools.bad_result({}); }\n")
    err = _failure(host, source, language, "agent.src")
    assert err.code == "script/cross_engine_communication"
    assert (err.fields["from_engine"], err.fields["to_engine"]) == (_lang(helpers), language)
    assert err.fields["data_type"] == "function"


def test_parameters_that_cannot_cross_name_both_engines(language, helpers):
    host = _host(helpers)
    source = pick(language, "local r = tools.add{a = 1, b = function() end}\nreturn r\n",
                  "async function main() {\n  const p = {a: 1};\n  p.self = p;\n"
                  "  return await tools.add(p);\n}\n")
    err = _failure(host, source, language, "agent.src")
    assert err.code == "script/cross_engine_communication"
    assert (err.fields["from_engine"], err.fields["to_engine"]) == (language, _lang(helpers))
    assert err.fields["data_type"] == pick(language, "function", "cycle")
    assert err.frames[0].file == "agent.src"


def test_nan_crosses_only_where_the_receiver_can_take_it(language, helpers):
    host = _host(helpers)
    source = pick(language, "local r = tools.nan{}\nreturn r.x ~= r.x\n",
                  "async function main() { const r = await tools.nan({}); return r.x; }\n")
    if language == "lua" and _lang(helpers) == "lua":
        assert host.run_source(source, language, "agent") is True
        return
    err = _failure(host, source, language, "agent")
    assert err.code == "script/cross_engine_communication"
    assert (err.fields["from_engine"], err.fields["to_engine"]) == (_lang(helpers), language)
    assert "result.x" in err.fields["error"]


def test_a_tools_file_error_does_not_break_its_engine_for_the_next_call(language, helpers):
    host = _host(helpers)
    source = pick(language,
                  "local ok = pcall(tools.boom, {})\nreturn {ok, tools.add{a = 1, b = 1}.sum}\n",
                  "async function main() {\n  let ok = true;\n"
                  "  try { await tools.boom({}); } catch { ok = false; }\n"
                  "  return [ok, (await tools.add({a: 1, b: 1})).sum];\n}\n")
    assert host.run_source(source, language, "agent") == [False, 2]


def test_runaway_recursion_between_tools_files_is_stopped(language, helpers):
    recursive = helpers.parent / f"loop{helpers.suffix}"
    recursive.write_text(pick(_lang(helpers),
                              "return {loop = function(p) return tools.loop{} end}\n",
                              "exports.loop = function loop() { return tools.loop({}); };\n"))
    host = _host(recursive)
    source = pick(language, "local r = tools.loop{}\nreturn r\n",
                  "async function main() { return await tools.loop({}); }\n")
    err = _failure(host, source, language, "agent")
    assert err.code == "script/resource_exhaustion"
    assert err.fields["resource_type"] == "stack"


@pytest.mark.parametrize(("name", "text", "reason"), [
    ("bad.lua", "return {f = function( end}", "compilation failed"),
    ("bad.js", "exports.f = function( {", "compilation failed"),
    ("none.lua", "local x = 1", "must return a table"),
    ("empty.lua", "return {x = 1}", "exports no functions"),
    ("empty.js", "const f = () => 1;", "exports no functions"),
    ("eager.lua", "local v = tools.lookup{key = 'ok'}\nreturn {f = function() end}",
     "while loading"),
    ("eager.js", "exports.f = () => 1;\ntools.lookup({key: 'ok'});", "while loading"),
])
def test_a_tools_file_that_does_not_load_is_refused_when_the_host_is_made(
        tmp_path, name, text, reason):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigurationError) as info:
        Host([path, lookup])
    err = info.value
    assert err.code == "configuration/load_failed"
    assert err.fields["path"] == str(path)
    assert reason in err.message


def test_a_name_exported_twice_is_refused(tmp_path, helpers):
    other = tmp_path / ("twin.js" if helpers.suffix == ".lua" else "twin.lua")
    other.write_text(pick(_lang(other), "return {add = function() end}",
                          "exports.add = () => 1;"))
    with pytest.raises(ConfigurationError.InvalidValue) as info:
        Host([helpers, other])
    assert (info.value.fields["key"], info.value.fields["value"]) == ("tools", "add")
    assert "two tools are named 'add'" in info.value.message


def test_a_tools_file_loaded_twice_is_one_set_of_tools(helpers):
    assert len(Host([helpers, helpers]).tools) == len(Host([helpers]).tools)


def test_the_context_keeps_the_path_and_the_engine_stack(language, helpers):
    host = _host(helpers)
    source = pick(language, "local x = 1\nlocal r = tools.boom{}\nreturn r\n",
                  "async function main() {\n  return await tools.boom({});\n}\n")
    err = _failure(host, source, language, "agent.src")
    metadata = err.context.metadata
    assert metadata["execution_path"][0].startswith(f"{language} agent.src:2")
    assert metadata["execution_path"][1] == "host <tool call> in boom"
    assert metadata["execution_path"][2].startswith(f"{_lang(helpers)} {helpers}:")
    assert metadata["source_engine"] == {"language": _lang(helpers), "script": str(helpers)}
    assert "boom" in metadata["preserved_stack_trace"]  # the engine's own text
    assert metadata["preserved_stack_trace"] == err.fields["stack_trace"]
    assert err.context.correlation_id is not None
    assert (err.context.component.language, err.context.component.script_id) == (
        _lang(helpers), str(helpers))  # where it arose, not the agent
    assert [c.function_name for c in err.context.execution_trace.call_stack] == ["boom"]
    # and all of it survives JSON
    assert SpellError.from_json(err.to_json()).context.metadata == metadata


def test_a_lua_table_with_mixed_keys_does_not_cross(helpers):
    host = _host(helpers)
    with pytest.raises(SpellError) as info:
        host.run_source("local r = tools.add{1, a = 1, b = 2}\nreturn r\n", "lua", "agent.lua")
    err = info.value
    assert err.code == "script/cross_engine_communication"
    assert (err.fields["from_engine"], err.fields["to_engine"]) == ("lua", _lang(helpers))
    assert "mixes string and integer keys" in err.fields["error"]
