"""The JavaScript engine on real quickjs-ng: conventions, tools, errors, frames, limits.

A tiny driver plays the host: it answers each ToolRequest from a dict of Python functions
(a result, or an error envelope for a SpellError they raise) until the run ends, hands
each step's output lines to ``on_output`` and, as the host does, resolves the refs of a
failure's error (bridge.envelope.resolve_refs).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from bridge import AgentError, ProviderError, ResourceError, ScriptError, SpellError, ToolError
from bridge import javascript as translate
from bridge.envelope import error_envelope, resolve_refs
from engines.base import (
    Failed,
    Finished,
    Limits,
    Step,
    Suspended,
    ToolInfo,
    ToolReply,
    ToolRequest,
)
from engines.javascript import JavaScriptEngine

Tool = Callable[[dict[str, Any]], Any]


class Driver:
    """Runs scripts to the end, answering tool requests from ``tools``."""

    def __init__(self, tools: dict[str, Tool] | None = None, **limits: Any) -> None:
        self.tools = tools or {}
        self.output: list[str] = []
        self.suspensions: list[Suspended] = []
        self.refs: dict[int, SpellError] = {}
        self.limits = Limits(**{"timeout": 5.0, "memory_mb": 64, **limits})
        self.engine = JavaScriptEngine(limits=self.limits)
        self.on_output: Callable[[str], None] = self.output.append

    def ref(self, err: SpellError) -> int:
        self.refs[len(self.refs) + 1] = err
        return len(self.refs)

    def answer(self, request: ToolRequest) -> ToolReply:
        tool = self.tools.get(request.tool)
        try:
            if request.problem is not None:
                raise ToolError.InvalidParameters(tool_name=request.tool, error_type="parse",
                                                  validation_error=request.problem.message)
            if tool is None:
                raise ToolError.NotFound(tool_name=request.tool)
            return ToolReply(request.id, result=tool(request.params))
        except SpellError as err:
            return ToolReply(request.id, error=error_envelope(err, ref=self.ref))

    def run(self, source: str, args: Any = None, filename: str = "agent.js") -> Step:
        deadline = time.monotonic() + self.limits.timeout
        infos = [ToolInfo(name, tool.__doc__ or "") for name, tool in self.tools.items()]
        step = self.take(self.engine.start(source, filename, args, infos, deadline))
        while isinstance(step, Suspended):
            self.suspensions.append(step)
            step = self.take(self.engine.resume([self.answer(r) for r in step.requests],
                                                deadline))
        self.engine.close()
        return step

    def take(self, step: Step) -> Step:
        """A step as the host takes it in: its lines printed, its error's refs resolved."""
        for line in step.output:
            self.on_output(line)
        if isinstance(step, Failed):
            step.error = resolve_refs(step.error, self.refs.get)
        return step


def run(source: str, args: Any = None, **kwargs: Any) -> Step:
    """One run on a fresh engine; kwargs: tools, filename, and Limits fields."""
    tools = kwargs.pop("tools", None)
    filename = kwargs.pop("filename", "agent.js")
    return Driver(tools, **kwargs).run(source, args, filename)


def finished(step: Step) -> Any:
    assert isinstance(step, Finished), step
    return step.result


def failed(step: Step) -> SpellError:
    assert isinstance(step, Failed), step
    return step.error


def echo(params: dict[str, Any]) -> Any:
    """Returns its parameters."""
    return params


def fresh_engine_works() -> None:
    assert finished(run("function main(args) { return args.n + 1 }", {"n": 1})) == 2


# -- conventions ------------------------------------------------------------------------


def test_main_is_called_with_args_and_returns_the_result() -> None:
    assert finished(run("function main(args) { return [args.a, args === globalThis.args] }",
                        {"a": "x"})) == ["x", True]


def test_async_main_is_awaited() -> None:
    source = "async function main(args) { await null; return {sum: args.a + args.b} }"
    assert finished(run(source, {"a": 1, "b": 2})) == {"sum": 3}


def test_main_may_be_a_const_arrow_function() -> None:
    assert finished(run("const main = async ({n}) => n * 2", {"n": 21})) == 42


def test_without_main_the_script_runs_and_the_result_is_none() -> None:
    driver = Driver()
    assert finished(driver.run("console.log('ran', args.n); 42", {"n": 7})) is None
    assert driver.output == ["ran 7"]


@pytest.mark.parametrize(("expression", "expected"), [
    ("undefined", None),
    ("null", None),
    ("'text'", "text"),
    ("1.5", 1.5),
    ("[1, undefined, 'a']", [1, None, "a"]),
    ("({a: 1, b: undefined, c: {d: [true, false]}})", {"a": 1, "c": {"d": [True, False]}}),
    ("new Date(0)", "1970-01-01T00:00:00.000Z"),
])
def test_results_become_json_like_python_data(expression: str, expected: Any) -> None:
    assert finished(run(f"function main() {{ return {expression} }}")) == expected


@pytest.mark.parametrize(("expression", "why", "data_type"), [
    ("({items: [1, 2, () => 3]})", "result.items[2] is a function", "function"),
    ("(() => { const a = {}; a.self = a; return a })()", "cyclic object at result.self",
     "object"),
    ("[1n]", "result[0] is a bigint", "bigint"),
    ("({s: Symbol('x')})", "result.s is a symbol", "symbol"),
    ("({n: NaN})", "result.n is NaN", "number"),
    ("({m: new Map()})", "result.m is a Map", "Map"),
])
def test_results_without_a_json_form_fail_the_run(expression: str, why: str,
                                                   data_type: str) -> None:
    err = failed(run(f"function main() {{ return {expression} }}"))
    assert isinstance(err, ScriptError.CrossEngineCommunication)
    assert err.fields["from_engine"] == "javascript"
    assert err.fields["to_engine"] == "python"
    assert err.fields["error"] == why
    assert err.fields["data_type"] == data_type


def test_the_global_object_holds_no_host_objects() -> None:
    names = ["std", "os", "require", "process", "print", "Deno", "Bun", "fetch",
             "XMLHttpRequest", "setTimeout", "setInterval", "importScripts", "module",
             "exports", "__spell", "python", "Buffer"]
    source = f"function main() {{ return {names}.map((n) => typeof globalThis[n]) }}"
    assert finished(run(source)) == ["undefined"] * len(names)


def test_args_that_cannot_cross_fail_the_run() -> None:
    err = failed(run("1", {"when": object()}))
    assert isinstance(err, ScriptError.CrossEngineCommunication)
    assert (err.fields["from_engine"], err.fields["to_engine"]) == ("python", "javascript")


def test_each_start_gets_fresh_globals() -> None:
    engine = JavaScriptEngine()
    deadline = time.monotonic() + 5
    assert finished(engine.start("globalThis.leak = 1", "a.js", None, [], deadline)) is None
    step = engine.start("function main() { return typeof leak }", "b.js", None, [], deadline)
    assert finished(step) == "undefined"


def test_resume_after_the_end_is_a_protocol_violation() -> None:
    engine = JavaScriptEngine()
    finished(engine.start("1", "a.js", None, [], time.monotonic() + 5))
    step = engine.resume([], time.monotonic() + 5)
    assert failed(step).code == "bridge/protocol_violation"


# -- tools ------------------------------------------------------------------------------


def test_a_tool_call_suspends_with_its_request() -> None:
    source = """async function main(args) {
  const found = await tools.search({q: args.q, n: 3});
  return found;
}"""
    driver = Driver({"search": lambda params: {"hits": [params["q"]] * params["n"]}})
    assert finished(driver.run(source, {"q": "x"})) == {"hits": ["x", "x", "x"]}
    [suspension] = driver.suspensions
    [request] = suspension.requests
    assert (request.tool, request.params, request.problem) == ("search", {"q": "x", "n": 3},
                                                               None)
    [frame] = request.frames
    assert (frame.language, frame.file, frame.line, frame.function) == (
        "javascript", "agent.js", 2, "main")
    assert frame.source == "const found = await tools.search({q: args.q, n: 3});"


def test_request_frames_are_the_scripts_call_site_outermost_first() -> None:
    source = """function lookup(q) {
  return tools.search({q});
}
async function main() {
  return await lookup('x');
}"""
    driver = Driver({"search": echo})
    finished(driver.run(source))
    frames = driver.suspensions[0].requests[0].frames
    assert [(f.function, f.line) for f in frames] == [("main", 5), ("lookup", 2)]


def test_tools_call_and_tools_list() -> None:
    source = """async function main() {
  const listed = tools.list();
  const echoed = await tools.call('echo', {a: 1});
  return {listed, echoed};
}"""
    result = finished(run(source, tools={"echo": echo}))
    assert result == {"listed": [{"name": "echo", "description": "Returns its parameters."}],
                      "echoed": {"a": 1}}


def test_promise_all_suspends_once_with_every_request() -> None:
    source = """async function main() {
  return await Promise.all([tools.a({n: 1}), tools.b({n: 2}), tools.a({n: 3})]);
}"""
    driver = Driver({"a": lambda p: p["n"] * 10, "b": lambda p: p["n"] * 100})
    assert finished(driver.run(source)) == [10, 200, 30]
    [suspension] = driver.suspensions
    assert [(r.tool, r.params) for r in suspension.requests] == [
        ("a", {"n": 1}), ("b", {"n": 2}), ("a", {"n": 3})]
    assert len({r.id for r in suspension.requests}) == 3


def test_params_are_read_when_the_tool_is_called() -> None:
    source = """async function main() {
  const params = {n: 1};
  const pending = tools.echo(params);
  params.n = 2;
  return await pending;
}"""
    assert finished(run(source, tools={"echo": echo})) == {"n": 1}


def test_tools_is_not_a_thenable() -> None:
    source = "async function main() { return [typeof tools.then, (await tools) === tools] }"
    driver = Driver()
    assert finished(driver.run(source)) == ["undefined", True]
    assert driver.suspensions == []


def test_no_params_are_an_empty_object() -> None:
    assert finished(run("const main = () => tools.echo()", tools={"echo": echo})) == {}


@pytest.mark.parametrize(("params", "problem"), [
    ("{callback() {}}", "params.callback is a function"),
    ("(() => { const p = {}; p.self = p; return p })()", "cyclic object at params.self"),
    ("{a: {b: undefined}}", "params.a.b is undefined"),
    ("{n: 10n}", "params.n is a bigint"),
    ("{s: Symbol('s')}", "params.s is a symbol"),
    ("{n: Infinity}", "params.n is Infinity"),
    ("{p: Promise.resolve(1)}", "params.p is a Promise (a missing await?)"),
    ("42", "params is a number, not an object"),
    ("'text'", "params is a string, not an object"),
    ("[1, 2]", "params is an array, not an object"),
    ("null", "params is null, not an object"),
])
def test_params_without_a_json_form_still_suspend_with_a_problem(params: str,
                                                                 problem: str) -> None:
    source = f"""async function main() {{
  try {{
    await tools.echo({params});
  }} catch (e) {{
    return [e.name, e.kind, e.fields.error_type];
  }}
}}"""
    driver = Driver({"echo": echo})
    assert finished(driver.run(source)) == ["ToolError", "invalid_parameters", "parse"]
    [request] = driver.suspensions[0].requests
    assert (request.params, request.problem.message) == (None, problem)
    assert request.frames[-1].line == 3


def test_an_unknown_tool_is_still_requested() -> None:
    source = "async function main() { try { await tools.nope({}) } catch (e) { return e.kind } }"
    assert finished(run(source)) == "not_found"


def test_a_tool_result_that_cannot_cross_is_an_error_at_the_call_site() -> None:
    source = """async function main() {
  try { await tools.bad({}) } catch (e) { return [e.name, e.kind, e.fields.to_engine] }
}"""
    result = finished(run(source, tools={"bad": lambda params: object()}))
    assert result == ["ScriptError", "cross_engine_communication", "javascript"]


@pytest.mark.parametrize("value", [
    0, -1, 2**31 - 1, 2**31, -2**31, -2**31 - 1, 2**40, -2**53, 2**53, 2**53 + 1, 2**63, 10**400,
    0.1, -0.0, 1.5, 1e308, 5e-324, float("inf"), float("nan"), True, False, None,
    "", "text", "é 😀", "a\0b", "\ud800", "x" * 100_000,
])
def test_a_scalar_result_arrives_as_its_json_would(value: Any) -> None:
    # Scalars skip JSON (quickjs converts them), lists go through it: the script must not
    # see a difference (quickjs truncates ints to 32 bits, JSON rounds big ones...).
    source = """async function main() {
  const seen = [];
  for (const list of [false, true]) {
    try {
      const value = list ? (await tools.value({list}))[0] : await tools.value({list});
      seen.push([typeof value, String(value), Object.is(value, -0), value === value]);
    } catch (e) {
      seen.push([e.kind, e.fields.to_engine]);
    }
  }
  return seen;
}"""
    tools = {"value": lambda params: [value] if params["list"] else value}
    direct, through_json = finished(run(source, tools=tools))
    assert direct == through_json


def test_a_result_whose_json_loops_still_meets_the_time_limit() -> None:
    # After a tool call the prelude is asked where the script stands without a time limit
    # first; a finished result's toJSON must run with one.
    source = """async function main() {
  await tools.echo({});
  return {toJSON() { while (true) {} }};
}"""
    driver = Driver({"echo": echo}, timeout=0.1)
    driver.engine.cpu_factor = 1.0
    err = failed(driver.run(source))
    assert (err.code, err.fields["resource_type"]) == ("script/resource_exhaustion", "time")


@pytest.mark.parametrize("change", [
    "Promise.withResolvers = function () { while (true) {} };",
    "Object.defineProperty(Object.prototype, 'then', {get() { while (true) {} }});",
    "Object.defineProperty(Object.prototype, '2', {get() { while (true) {} }, set(v) {}});",
    "Object.defineProperty(Array.prototype, '1', {get() { while (true) {} }, set(v) {}});",
])
def test_tool_round_trips_use_nothing_a_script_can_change(change: str) -> None:
    # Settling a plain result and polling run without a time limit (engines/javascript.py):
    # no code a script can replace may run there, or it could loop forever.
    source = f"""{change}
async function main() {{
  let n = 0;
  for (let i = 0; i < 3; i++) n += await tools.one({{}});
  return n;
}}"""
    outcome: list[Step] = []
    worker = threading.Thread(target=lambda: outcome.append(run(source, tools={
        "one": lambda params: 1})), daemon=True)
    worker.start()
    worker.join(10)
    assert outcome, "the run did not end"
    assert finished(outcome[0]) == 3


# -- error replies ------------------------------------------------------------------------


def failing_fetch(params: dict[str, Any]) -> Any:
    """Fails with a provider error as its cause."""
    cause = ProviderError.RateLimited(provider="openai", model="gpt")
    raise ToolError.ExecutionFailed(tool_name="fetch", reason="upstream busy") from cause


def test_an_error_reply_is_a_native_error_at_the_call_site() -> None:
    source = """async function main() {
  try {
    await tools.fetch({url: 'x'});
  } catch (e) {
    return {
      name: e.name, message: e.message, category: e.category, kind: e.kind,
      fields: e.fields, code: e.code, ref: typeof e.ref,
      isToolError: e instanceof ToolError, isSpellError: e instanceof SpellError,
      isError: e instanceof Error, viaErrors: e instanceof errors.ToolError,
      stack: e.stack,
      cause: [e.cause.name, e.cause.kind, e.cause.fields.provider,
              e.cause instanceof ProviderError],
    };
  }
}"""
    result = finished(run(source, tools={"fetch": failing_fetch}))
    assert result["name"] == "ToolError"
    assert result["message"] == "Tool execution failed: fetch - upstream busy"
    assert (result["category"], result["kind"], result["code"]) == (
        "tool", "execution_failed", "tool/execution_failed")
    assert result["fields"]["reason"] == "upstream busy"
    assert result["ref"] == "number"
    assert result["isToolError"] and result["isSpellError"] and result["isError"]
    assert result["viaErrors"]
    assert result["stack"] == "    at main (agent.js:3:17)\n"
    assert result["cause"] == ["ProviderError", "rate_limited", "openai", True]


def test_an_uncaught_error_reply_fails_with_the_original_error() -> None:
    raised: list[SpellError] = []

    def fetch(params: dict[str, Any]) -> Any:
        raised.append(ToolError.Timeout(tool_name="fetch", duration=1.0))
        raise raised[0]

    source = "async function main() { return await tools.fetch({}) }"
    assert failed(run(source, tools={"fetch": fetch})) is raised[0]


def test_a_caught_and_rethrown_error_reply_keeps_its_identity() -> None:
    raised: list[SpellError] = []

    def fetch(params: dict[str, Any]) -> Any:
        raised.append(ToolError.Timeout(tool_name="fetch", duration=1.0))
        raise raised[0]

    source = """async function main() {
  try { await tools.fetch({}) } catch (e) { e.fields.extra = 1; throw e }
}"""
    assert failed(run(source, tools={"fetch": fetch})) is raised[0]


def test_an_error_reply_without_a_known_ref_is_rebuilt() -> None:
    driver = Driver({"fetch": failing_fetch})
    driver.ref = lambda err: 999  # type: ignore[method-assign] # resolve_refs won't know it
    err = failed(driver.run("async function main() {\n  await tools.fetch({})\n}"))
    assert isinstance(err, ToolError.ExecutionFailed)
    assert err.fields["reason"] == "upstream busy"
    assert isinstance(err.cause, ProviderError.RateLimited)
    assert err.frames[-1].line == 2


# -- errors made in scripts ---------------------------------------------------------------


def test_a_spell_error_thrown_by_the_script_fails_the_run_with_it() -> None:
    source = """function main() {
  throw new AgentError({kind: 'execution_failed', reason: 'planner gave up',
                        agent_id: 'planner'});
}"""
    err = failed(run(source))
    assert isinstance(err, AgentError.ExecutionFailed)
    assert err.fields == {"reason": "planner gave up", "agent_id": "planner",
                          "execution_context": None}
    assert err.message == "Agent execution failed: planner gave up"
    assert [(f.file, f.line, f.function) for f in err.frames] == [("agent.js", 2, "main")]


def test_script_error_messages_match_python() -> None:
    source = """function main() {
  const e = new ToolError({kind: 'timeout', tool_name: 'x', duration: 2});
  const f = new ToolError({kind: 'timeout', message: 'custom', fields: {tool_name: 'y',
                           duration: 1}});
  return [e.message, String(e), e.fields, f.message, f.fields];
}"""
    python = str(ToolError.Timeout(tool_name="x", duration=2))
    assert finished(run(source)) == [python, f"ToolError: {python}",
                                     {"tool_name": "x", "duration": 2}, "custom",
                                     {"tool_name": "y", "duration": 1}]


def test_an_explicit_message_and_a_cause_cross_back() -> None:
    source = """function main() {
  const cause = new ProviderError({kind: 'timeout', provider: 'p', duration: 3});
  throw new ToolError({kind: 'execution_failed', tool_name: 't', reason: 'r',
                       message: 'it broke', cause});
}"""
    err = failed(run(source))
    assert (err.code, err.message) == ("tool/execution_failed", "it broke")
    assert isinstance(err.cause, ProviderError.Timeout)
    assert err.cause.fields["duration"] == 3.0


def test_a_builtin_cause_becomes_a_javascript_error() -> None:
    source = """function main() {
  try { null.x } catch (e) {
    throw new ToolError({kind: 'execution_failed', tool_name: 't', reason: 'r', cause: e});
  }
}"""
    err = failed(run(source))
    assert isinstance(err.cause, ScriptError.Javascript)
    assert err.cause.fields["error_name"] == "TypeError"


@pytest.mark.parametrize(("init", "reason"), [
    ("{kind: 'execution_failed', agent_id: 'planner'}", "missing field 'reason'"),
    ("{kind: 'exploded'}", "unknown kind 'exploded'"),
    ("{kind: 'execution_failed', reason: 'r', color: 'red'}", "unknown field 'color'"),
    ("{kind: 'execution_failed', reason: 'r', agent_id: () => 1}", "fields.agent_id is a"),
])
def test_a_wrong_script_error_is_an_invalid_error_at_its_line(init: str, reason: str) -> None:
    err = failed(run(f"function main() {{\n  throw new AgentError({init});\n}}"))
    assert err.code == "bridge/invalid_error"
    assert reason in err.fields["reason"]
    assert (err.frames[-1].file, err.frames[-1].line) == ("agent.js", 2)


def test_a_thrown_plain_object_with_category_and_kind_is_a_spell_error() -> None:
    err = failed(run("throw {category: 'tool', kind: 'not_found', fields: {tool_name: 'x'}}"))
    assert isinstance(err, ToolError.NotFound)
    assert err.message == "Tool not found: x"
    err = failed(run("throw {category: 'tool', kind: 'not_found', message: 'gone', "
                     "fields: {tool_name: 'x'}}"))
    assert err.message == "gone"


# -- JavaScript errors and frames ----------------------------------------------------------


def test_a_builtin_error_is_a_javascript_error_with_frames() -> None:
    source = """function load(config) {
  return config.value;
}
async function main() {
  await null;
  return load(null);
}"""
    err = failed(run(source, filename="planner.js"))
    assert isinstance(err, ScriptError.Javascript)
    assert err.fields["error_name"] == "TypeError"
    assert err.fields["error"] == "TypeError: cannot read property 'value' of null"
    assert (err.fields["script"], err.fields["script_line"]) == ("planner.js", 2)
    assert err.fields["stack_trace"] == ("    at load (planner.js:2:10)\n"
                                         "    at main (planner.js:6:15)\n")
    assert [(f.function, f.line, f.column, f.source) for f in err.frames] == [
        ("main", 6, 15, "return load(null);"), ("load", 2, 10, "return config.value;")]
    assert all(f.file == "planner.js" and f.language == "javascript" for f in err.frames)


def test_top_level_frames_are_named_script() -> None:
    err = failed(run("\n\nundefinedFunction();"))
    assert err.fields["error_name"] == "ReferenceError"
    assert [(f.function, f.line) for f in err.frames] == [("<script>", 3)]


def test_a_user_error_class_keeps_its_name() -> None:
    err = failed(run("class ValidationError extends Error {}\n"
                     "function main() { throw new ValidationError('bad input') }"))
    assert err.fields["error"] == "ValidationError: bad input"


def test_stacks_inside_the_script_name_the_file_and_hide_the_prelude() -> None:
    source = """function inner() { return new Error('x').stack }
async function main() {
  Error.prepareStackTrace = () => 'mine';
  Error.stackTraceLimit = 0;
  return [inner(), await tools.echo({}).then(() => new Error('y').stack)];
}"""
    stacks = finished(run(source, tools={"echo": echo}))
    assert stacks[0] == "    at inner (agent.js:1:31)\n    at main (agent.js:5:11)\n"
    assert stacks[1] == "    at <anonymous> (agent.js:5:56)\n"


def test_no_stack_a_script_sees_names_the_placeholder_file_or_the_prelude() -> None:
    source = """class RateLimited extends ProviderError {
  constructor() { super({kind: 'rate_limited', provider: 'p'}) }
}
async function main() {
  const stacks = [];
  const keep = (f) => { try { f() } catch (e) { stacks.push(e.stack) } };
  keep(() => null.x);
  keep(() => JSON.parse('{'));
  keep(() => eval('1 +'));
  keep(() => { throw new ToolError({kind: 'not_found', tool_name: 't'}) });
  keep(() => { throw new RateLimited() });
  keep(() => [1].map(() => null.y));
  try { await tools.nope({}) } catch (e) { stacks.push(e.stack) }
  return stacks;
}"""
    stacks = finished(run(source))
    assert len(stacks) == 7
    for stack in stacks:
        assert "<input>" not in stack and "polyspell" not in stack, stack
        assert "at main (agent.js:" in stack or "at <anonymous> (agent.js:" in stack, stack
    assert stacks[3].startswith("    at <anonymous> (agent.js:10:")  # not SpellError's frame
    assert stacks[4].startswith("    at RateLimited (agent.js:2:")
    assert stacks[6] == "    at main (agent.js:13:21)\n"


def test_a_strict_mode_script_has_a_main_too() -> None:
    source = '"use strict";\nfunction helper(n) { return n + 1 }\nfunction main(args) { ' \
             'return helper(args.n) }'
    assert finished(run(source, {"n": 1})) == 2


@pytest.mark.parametrize(("source", "line", "column"), [
    ("let x = ;", 1, 9),
    ("function main() {\n  return (1;\n}", 2, 12),
    ("function main() {", 1, 18),
])
def test_a_syntax_error_is_a_compilation_failure(source: str, line: int, column: int) -> None:
    err = failed(run(source))
    assert isinstance(err, ScriptError.CompilationFailed)
    assert (err.fields["language"], err.fields["file"]) == ("javascript", "agent.js")
    assert (err.fields["line"], err.fields["column"]) == (line, column)
    [frame] = err.frames
    assert (frame.file, frame.line, frame.column) == ("agent.js", line, column)


def test_a_syntax_error_at_run_time_is_not_a_compilation_failure() -> None:
    err = failed(run("function main() {\n  return JSON.parse('{');\n}"))
    assert err.code == "script/javascript"
    assert err.fields["error_name"] == "SyntaxError"
    assert err.frames[-1].line == 2
    # quickjs also prints the position in the JSON text: not a place in the script
    assert err.fields["stack_trace"] == "    at parse (native)\n    at main (agent.js:2:15)\n"


@pytest.mark.parametrize(("thrown", "error", "value"), [
    ("'text'", 'threw a string: "text" (not an Error)', "text"),
    ("42", "threw a number: 42 (not an Error)", 42),
    ("{code: 1}", 'threw an object: {"code": 1} (not an Error)', {"code": 1}),
    ("null", "threw null (or ran out of memory) (not an Error)", None),
    ("undefined", "threw undefined (not an Error)", None),
])
def test_thrown_values_that_are_not_errors(thrown: str, error: str, value: Any) -> None:
    for source in (f"throw {thrown}", f"async function main() {{ throw {thrown} }}"):
        err = failed(run(source))
        assert isinstance(err, ScriptError.Javascript)
        assert err.fields["error_name"] == "thrown value"
        assert err.fields["error"] == error
        assert err.fields["thrown"] == value
        assert err.message == f"JavaScript error in agent.js: {error}"


# -- modules ------------------------------------------------------------------------------


def test_an_mjs_file_is_a_module_with_top_level_await() -> None:
    source = """const config = await tools.echo({depth: 2});
export async function main(args) {
  return {depth: config.depth, q: args.q};
}"""
    driver = Driver({"echo": echo})
    assert finished(driver.run(source, {"q": "x"}, "agent.mjs")) == {"depth": 2, "q": "x"}
    assert driver.suspensions[0].requests[0].frames[0].file == "agent.mjs"


def test_module_errors() -> None:
    err = failed(run("export const = 1;", filename="agent.mjs"))
    assert (err.code, err.fields["line"]) == ("script/compilation_failed", 1)
    # an import is the host's to resolve: the engine asks with a module request first
    step = JavaScriptEngine().start("import x from 'fs';", "agent.mjs", None, [], math.inf)
    assert isinstance(step, Suspended)
    (request,) = step.requests
    assert (request.kind, request.tool, request.params) == (
        "module", "fs", {"style": "import", "importer": None})
    err = failed(run("\nthrow new RangeError('r');", filename="agent.mjs"))
    assert (err.fields["error"], err.frames[-1].line) == ("RangeError: r", 2)


# -- console ------------------------------------------------------------------------------


def test_console_lines_come_with_each_step() -> None:
    seen: list[tuple[str, int]] = []
    driver = Driver({"echo": echo})
    driver.on_output = lambda line: seen.append((line, len(driver.suspensions)))
    source = """async function main() {
  console.log('a', 1, {b: [2]}, null, undefined, true);
  console.info('info'); console.warn('warn'); console.debug('debug');
  await tools.echo({});
  console.error(new TypeError('t'), function named() {});
  return 'done';
}"""
    assert finished(driver.run(source)) == "done"
    assert seen == [('a 1 {"b":[2]} null undefined true', 0), ("info", 0), ("warn", 0),
                    ("debug", 0), ("TypeError: t [Function named]", 1)]


def test_long_texts_and_many_lines_cross() -> None:
    # quickjs-ng builds long strings as ropes, which its Python binding cannot read, and
    # appending to one string copies it: neither may show in what the engine hands over.
    source = """async function main() {
  for (let i = 0; i < 20000; i++) console.log('line', i);
  console.log('a' + 'b'.repeat(100000));
  const echoed = await tools.echo({text: 'c' + 'd'.repeat(100000)});
  const all = await Promise.all(Array.from({length: 5000}, (_, i) => tools.echo({i})));
  return ['e' + echoed.text, all.length, all[4999].i];
}"""
    driver = Driver({"echo": echo})
    text, count, last = finished(driver.run(source))
    assert (text, count, last) == ("ec" + "d" * 100000, 5000, 4999)
    assert len(driver.output) == 20001
    assert (driver.output[19999], driver.output[-1]) == ("line 19999", "a" + "b" * 100000)
    assert [len(s.requests) for s in driver.suspensions] == [1, 5000]


def test_console_lines_before_a_failure_are_delivered() -> None:
    driver = Driver(timeout=0.1)
    driver.engine.cpu_factor = 1.0
    failed(driver.run("console.log('before'); while (true) {}"))
    assert driver.output == ["before"]


# -- limits -------------------------------------------------------------------------------


@pytest.mark.parametrize("source", [
    "while (true) {}",
    "function main() { for (;;) { try { while (true) {} } catch (e) {} } }",
    "async function main() { await tools.echo({}); try { while (true) {} } finally {} }",
    "async function main() { while (true) { try { await null } catch {} } }",
])
def test_the_time_limit_stops_any_loop(source: str) -> None:
    driver = Driver({"echo": echo}, timeout=0.1)
    driver.engine.cpu_factor = 1.0  # this test's process runs one busy thread
    began = time.monotonic()
    err = failed(driver.run(source))
    assert isinstance(err, ScriptError.ResourceExhaustion)
    assert (err.fields["language"], err.fields["resource_type"]) == ("javascript", "time")
    assert err.fields["limit"] == 0.1
    assert time.monotonic() - began < 2
    fresh_engine_works()


def test_the_time_limit_never_fires_before_the_deadline() -> None:
    driver = Driver(timeout=0.1)  # the default cpu_factor: os.cpu_count()
    began = time.monotonic()
    err = failed(driver.run("function main() { while (true) {} }"))
    assert err.fields["resource_type"] == "time"
    assert time.monotonic() - began >= 0.1
    assert err.frames[-1].line == 1


def test_a_deadline_past_at_resume_fails_with_the_time_limit() -> None:
    engine = JavaScriptEngine(limits=Limits(timeout=1.0))
    step = engine.start("const main = () => tools.echo({})", "agent.js", None, [],
                        time.monotonic() + 1)
    assert isinstance(step, Suspended)
    step = engine.resume([ToolReply(step.requests[0].id, result=1)], time.monotonic() - 1)
    err = failed(step)
    assert (err.code, err.fields["resource_type"], err.fields["limit"]) == (
        "script/resource_exhaustion", "time", 1.0)


@pytest.mark.parametrize("source", [
    "const parts = []; while (true) parts.push(new Array(100000).fill(1));",
    "let s = 'x'; while (true) s += s;",
    "const parts = [];\nasync function main() { await null; for (;;) parts.push('x'.repeat(1e5)) }",
])
def test_the_memory_limit(source: str) -> None:
    err = failed(run(source, memory_mb=16))
    assert isinstance(err, ResourceError.MemoryExhaustion)
    assert err.fields["location"] == "javascript"
    assert "(limit 16 MiB)" in err.fields["description"]
    fresh_engine_works()


# An InternalError the engine could not finish making (out of memory even for its message
# or its backtrace) has no message: one made so by a script, with the engine's prototype.
UNFINISHED = ("const e = new Error(); Object.setPrototypeOf(e, InternalError.prototype); "
              "throw e;")


def test_an_unfinished_internal_error_is_the_memory_limit_only_while_memory_is_full() -> None:
    """quickjs can leave its out-of-memory InternalError without its message (or its
    backtrace) when memory is that short: such an error counts as the memory limit, as a
    thrown null does, only while the engine's memory is still nearly full (a script can
    make the look-alike below; its memory is what it is)."""
    assert isinstance(failed(run(UNFINISHED, memory_mb=16)), ScriptError.Javascript)
    full = ("var hog = []; for (let i = 0; i < 15; i++) hog.push('x'.repeat(1 << 20) + i);\n"
            + UNFINISHED)
    err = failed(run(full, memory_mb=16))
    assert isinstance(err, ResourceError.MemoryExhaustion), err
    fresh_engine_works()


@pytest.mark.parametrize("source", [
    "const parts = []; for (;;) { try { parts.push('x'.repeat(1e6)) } catch (e) {} }",
    "for (;;) { try { JSON.parse('{') } catch (e) {} }",
    "function f() { throw new TypeError('t') }\nfor (;;) { try { f() } catch (e) {} }",
    "for (;;) { try { new ToolError({kind: 'not_found', tool_name: 'x'}) } catch (e) {} }",
])
def test_the_time_limit_stops_loops_that_swallow_errors(source: str) -> None:
    # quickjs drops an interrupt raised while JS runs inside error construction (such as
    # Error.prepareStackTrace): the engine must run none there.
    driver = Driver(timeout=0.1, memory_mb=16)
    driver.engine.cpu_factor = 1.0
    err = failed(driver.run(source))
    assert (err.code, err.fields["resource_type"]) == ("script/resource_exhaustion", "time")


def test_the_stack_limit() -> None:
    for source in ("function down(n) { return down(n + 1) + 1 }\nfunction main() { down(0) }",
                   "function down(n) { return down(n + 1) + 1 }\ndown(0)"):
        err = failed(run(source))
        assert isinstance(err, ScriptError.ResourceExhaustion)
        assert (err.fields["resource_type"], err.fields["limit"]) == ("stack", 1024)
        fresh_engine_works()


def test_waiting_on_a_promise_nothing_resolves_fails() -> None:
    for source, filename in [("async function main() { await new Promise(() => {}) }", "a.js"),
                             ("await new Promise(() => {});", "a.mjs")]:
        err = failed(run(source, filename=filename))
        assert err.code == "script/runtime_error"
        assert "nothing will resolve" in err.fields["error"]


def test_unawaited_tool_calls_still_run_before_the_end() -> None:
    calls: list[Any] = []
    source = "function main() { tools.log({n: 1}); return 'early' }"
    assert finished(run(source, tools={"log": calls.append})) == "early"
    assert calls == [{"n": 1}]


# -- the translator alone (bridge/javascript.py) ------------------------------------------


def test_parse_stack_maps_the_file_and_drops_engine_and_native_frames() -> None:
    text = ("    at polyspell$call (<input>:102:36)\n"
            "    at helper (<input>:2:5)\n"
            "    at map (native)\n"
            "    at <eval> (<input>:4:1)\n")
    frames = translate.parse_stack(text, "agent.js", ["x = 1", "  helper()", "", "go()"])
    assert [(f.file, f.line, f.column, f.function, f.source) for f in frames] == [
        ("agent.js", 4, 1, "<script>", "go()"), ("agent.js", 2, 5, "helper", "helper()")]


def test_parse_stack_reads_file_names_with_parentheses_and_parse_positions() -> None:
    text = "    at agent (2).js:4:2\n    at f (agent (2).js:3:5)\n    at map (native)\n"
    frames, position = translate.read_stack(text, "agent (2).js")
    assert [(f.file, f.line, f.function) for f in frames] == [("agent (2).js", 3, "f")]
    assert position is None  # a position only matters to an error without frames
    frames, position = translate.read_stack("    at agent (2).js:4:2\n", "agent (2).js")
    assert (frames, position) == ([], (4, 2))


def test_split_exception() -> None:
    assert translate.split_exception("TypeError: boom\n    at f (<input>:1:2)\n") == (
        "TypeError", "boom", "    at f (<input>:1:2)")
    assert translate.split_exception("RangeError: Maximum call stack size exceeded\nnull") == (
        "RangeError", "Maximum call stack size exceeded", "")
    assert translate.split_exception("[object Object]\n") == ("", "[object Object]", "")
