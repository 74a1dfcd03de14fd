"""Script-side hooks (issue 12, item 6): ``hooks.before_tool_call`` /
``hooks.beforeToolCall``, ``hooks.after_tool_call`` / ``hooks.afterToolCall`` and
``hooks.on(point, fn)``, run inside the script's own engine (the preludes), under its
limits, on the real engines in both languages."""

from __future__ import annotations

import time

import pytest

from bridge import SpellError
from host import Host, hooks, tool
from tests.conftest import pick

CALLS: list[dict] = []


@tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    CALLS.append({"a": a, "b": b})
    return a + b


@tool
def boom(reason: str) -> str:
    """Always fails."""
    raise RuntimeError(reason)


@tool(timeout=0.05)
def slow(seconds: float) -> str:
    """Sleeps past its timeout."""
    time.sleep(seconds)
    return "done"


@pytest.fixture(autouse=True)
def _calls():
    CALLS.clear()


def host(*extra, lines: list[str] | None = None, **options) -> Host:
    sink = lines.append if lines is not None else (lambda line: None)
    return Host([add, boom, slow], on_output=sink, **{"timeout": 5.0, **options}, hooks=extra)


def run(h: Host, language: str, lua: str, js: str, args=None):
    """Run ``lua`` (a chunk) or ``js`` (a script whose ``async function main`` is the run)."""
    return h.run_source(pick(language, lua, js), language,
                        f"agent.{pick(language, 'lua', 'js')}", args)


def failure(h: Host, language: str, lua: str, js: str) -> SpellError:
    with pytest.raises(SpellError) as info:
        run(h, language, lua, js)
    return info.value


def line_of(source: str, text: str) -> int:
    """The 1-based line of ``source`` holding ``text``."""
    return next(i for i, line in enumerate(source.splitlines(), 1) if text in line)


# -- controllers before a call -------------------------------------------------------


def test_before_proceed_with_changed_params_reaches_the_tool_and_python_hooks(language):
    seen = []

    @hooks.controller("before_tool_call")
    def python_sees(ctx):
        seen.append(ctx.params)

    lua = """
hooks.before_tool_call(function(ctx)
  return {action = "proceed", params = {a = ctx.params.a * 10, b = ctx.params.b}}
end)
return tools.add{a = 1, b = 2}
"""
    js = """
hooks.beforeToolCall((ctx) =>
  ({action: "proceed", params: {a: ctx.params.a * 10, b: ctx.params.b}}));
async function main() { return await tools.add({a: 1, b: 2}); }
"""
    assert run(host(python_sees), language, lua, js) == 12
    # the script's hooks run first: the Python controller saw the params they proceeded with
    assert seen == [{"a": 10, "b": 2}]
    assert CALLS == [{"a": 10, "b": 2}]


@pytest.mark.parametrize("bad", ["{a = 'x', b = 2}", "{a = 1, b = 2, c = function() end}"])
def test_params_a_before_hook_changes_are_validated_as_the_scripts(language, bad):
    js_bad = bad.replace(" = ", ": ").replace("function() end", "() => 1")
    lua = f"""
hooks.before_tool_call(function(ctx) return {{action = "proceed", params = {bad}}} end)
return tools.add{{a = 1, b = 2}}
"""
    js = f"""
hooks.beforeToolCall((ctx) => ({{action: "proceed", params: {js_bad}}}));
async function main() {{ return await tools.add({{a: 1, b: 2}}); }}
"""
    err = failure(host(), language, lua, js)
    assert err.code == "tool/invalid_parameters"
    assert CALLS == []


def test_before_skip_answers_without_the_host(language):
    seen = []

    @hooks.observer("tool_call_started")
    def python_sees(ctx):
        seen.append(ctx.tool)

    lua = """
hooks.before_tool_call(function(ctx)
  if ctx.tool == "add" then return {action = "skip", result = {cached = true}} end
end)
local r = tools.add{a = 1, b = 2}
return {r.cached, tools.add ~= nil}
"""
    js = """
hooks.beforeToolCall((ctx) =>
  ctx.tool === "add" ? {action: "skip", result: {cached: true}} : undefined);
async function main() { const r = await tools.add({a: 1, b: 2}); return [r.cached, true]; }
"""
    assert run(host(python_sees), language, lua, js) == [True, True]
    assert CALLS == [] and seen == []  # the call never left the script


# -- controllers after a call ----------------------------------------------------------


def test_after_recover_on_a_timeout_as_in_the_issue(language):
    lua = """
hooks.after_tool_call(function(ctx)
  if ctx.error and ctx.error.kind == "timeout" then return {action = "recover", result = "n/a"} end
end)
return {tools.slow{seconds = 0.3}, tools.add{a = 1, b = 1}}
"""
    js = """
hooks.afterToolCall((ctx) => {
  if (ctx.error && ctx.error.kind === "timeout") return {action: "recover", result: "n/a"};
});
async function main() { return [await tools.slow({seconds: 0.3}), await tools.add({a: 1, b: 1})]; }
"""
    assert run(host(), language, lua, js) == ["n/a", 2]


def test_after_rethrow_the_original_or_the_scripts_own_error(language):
    lua = """
hooks.after_tool_call(function(ctx)
  if ctx.tool == "boom" and ctx.params.reason == "keep" then return {action = "rethrow"} end
  if ctx.tool == "boom" then
    return {action = "rethrow", error = errors.ToolError{kind = "not_found", tool_name = "other"}}
  end
end)
local ok1, e1 = pcall(tools.boom, {reason = "keep"})
local ok2, e2 = pcall(tools.boom, {reason = "swap"})
return {e1.code, e2.code, e2.cause.code}
"""
    js = """
hooks.afterToolCall((ctx) => {
  if (ctx.tool === "boom" && ctx.params.reason === "keep") return {action: "rethrow"};
  if (ctx.tool === "boom") {
    return {action: "rethrow", error: new ToolError({kind: "not_found", tool_name: "other"})};
  }
});
async function main() {
  const codes = [];
  try { await tools.boom({reason: "keep"}); } catch (e) { codes.push(e.code); }
  try { await tools.boom({reason: "swap"}); } catch (e) { codes.push(e.code, e.cause.code); }
  return codes;
}
"""
    assert run(host(), language, lua, js) == [
        "tool/execution_failed", "tool/not_found", "tool/execution_failed"]


def test_rethrow_after_a_success_is_an_invalid_result(language):
    lua = """
hooks.after_tool_call(function(ctx) return {action = "rethrow"} end)
return tools.add{a = 1, b = 1}
"""
    js = """
hooks.afterToolCall(() => ({action: "rethrow"}));
async function main() { return await tools.add({a: 1, b: 1}); }
"""
    err = failure(host(), language, lua, js)
    assert err.code == "hook/invalid_result"
    assert "after a call that succeeded" in err.message


def test_controllers_chain_in_registration_order_until_one_decides(language):
    lua = """
local order = {}
hooks.after_tool_call(function(ctx) order[#order + 1] = 1 end)
hooks.after_tool_call(function(ctx) order[#order + 1] = 2 return {action = "continue"} end)
hooks.after_tool_call(function(ctx)
  order[#order + 1] = 3 return {action = "recover", result = ctx.result * 100}
end)
hooks.after_tool_call(function(ctx)
  order[#order + 1] = 4 return {action = "recover", result = -1}
end)
local r = tools.add{a = 1, b = 1}
return {r, order}
"""
    js = """
const order = [];
hooks.afterToolCall(() => { order.push(1); });
hooks.afterToolCall(() => { order.push(2); return {action: "continue"}; });
hooks.afterToolCall((ctx) => {
  order.push(3); return {action: "recover", result: ctx.result * 100};
});
hooks.afterToolCall(() => { order.push(4); return {action: "recover", result: -1}; });
async function main() { const r = await tools.add({a: 1, b: 1}); return [r, order]; }
"""
    assert run(host(), language, lua, js) == [200, [1, 2, 3]]


def test_before_controllers_pass_changed_params_along_the_chain(language):
    lua = """
hooks.before_tool_call(function(ctx)
  return {action = "proceed", params = {a = ctx.params.a + 1, b = 0}}
end)
hooks.before_tool_call(function(ctx)
  return {action = "proceed", params = {a = ctx.params.a * 2, b = 0}}
end)
return tools.add{a = 1, b = 5}
"""
    js = """
hooks.beforeToolCall((ctx) => ({action: "proceed", params: {a: ctx.params.a + 1, b: 0}}));
hooks.beforeToolCall((ctx) => ({action: "proceed", params: {a: ctx.params.a * 2, b: 0}}));
async function main() { return await tools.add({a: 1, b: 5}); }
"""
    assert run(host(), language, lua, js) == 4


def test_python_controllers_run_first_after_a_call(language):
    @hooks.controller("after_tool_call")
    def python_recovers(ctx):
        if ctx.error is not None:
            return hooks.Recover("from python")

    lua = """
hooks.after_tool_call(function(ctx)
  return {action = "recover", result = {seen = ctx.result, error = ctx.error == nil}}
end)
return tools.boom{reason = "x"}
"""
    js = """
hooks.afterToolCall((ctx) =>
  ({action: "recover", result: {seen: ctx.result, error: ctx.error === null}}));
async function main() { return await tools.boom({reason: "x"}); }
"""
    assert run(host(python_recovers), language, lua, js) == {"seen": "from python", "error": True}


# -- failing hooks -----------------------------------------------------------------------


@pytest.mark.parametrize("point", ["before", "after"])
def test_a_hook_that_throws_is_hook_execution_failed_at_its_line(language, point):
    lua = f"""
hooks.{point}_tool_call(function(ctx)
  local x = nil
  return x.field -- hook fails here
end)
return tools.add{{a = 1, b = 1}}
"""
    js = f"""
hooks.{point}ToolCall(function failing(ctx) {{
  const x = null;
  return x.field; // hook fails here
}});
async function main() {{ return await tools.add({{a: 1, b: 1}}); }}
"""
    err = failure(host(), language, lua, js)
    assert err.code == "hook/execution_failed"
    assert err.fields["hook_point"] == f"{point}_tool_call"
    source = pick(language, lua, js)
    hook_line = line_of(source, "hook fails here")
    # every frame is the script's (no prelude frame), the call site's among them
    assert all(f.line <= len(source.splitlines()) for f in err.frames), err.frames
    assert line_of(source, "tools.add") in [f.line for f in err.frames] \
        or language == "lua"  # (Lua: a tail call leaves the main chunk's frame out)
    innermost = err.frames[-1]  # frames are outermost first
    assert innermost.file == f"agent.{pick(language, 'lua', 'js')}"
    assert innermost.line == hook_line
    expected = f"agent.lua:{line_of(lua, 'function(ctx)')}" if language == "lua" \
        else "failing (agent.js:2)"
    assert err.fields["hook_name"] == expected
    assert CALLS == ([] if point == "before" else [{"a": 1, "b": 1}])


def test_a_hooks_error_is_caught_by_the_scripts_pcall_or_try(language):
    lua = """
hooks.after_tool_call(function(ctx) error("no") end)
local ok, e = pcall(tools.add, {a = 1, b = 1})
-- inside a hook, pcall catches the hook's own errors as anywhere
hooks.before_tool_call(function(ctx) local ok2 = pcall(error, "x") return nil end)
local ok3, e3 = pcall(tools.add, {a = 1, b = 1})
return {ok, e.code, e.fields.hook_point, ok3, e3.code}
"""
    js = """
hooks.afterToolCall(() => { throw new Error("no"); });
async function main() {
  const out = [];
  try { await tools.add({a: 1, b: 1}); } catch (e) { out.push(false, e.code, e.fields.hook_point); }
  hooks.beforeToolCall(() => { try { throw new Error("x"); } catch {} });
  try { await tools.add({a: 1, b: 1}); } catch (e) { out.push(false, e.code); }
  return out;
}
"""
    assert run(host(), language, lua, js) == [
        False, "hook/execution_failed", "after_tool_call", False, "hook/execution_failed"]


def test_a_hook_stuck_in_a_loop_is_stopped_by_the_runs_time_limit(language):
    lua = """
hooks.before_tool_call(function(ctx) while true do end end)
return tools.add{a = 1, b = 1}
"""
    js = """
hooks.beforeToolCall(() => { while (true) {} });
async function main() { return await tools.add({a: 1, b: 1}); }
"""
    began = time.monotonic()
    err = failure(host(timeout=0.5), language, lua, js)
    assert time.monotonic() - began < 4
    assert err.fields.get("resource_type") == "time", err.code
    assert CALLS == []


def test_a_hook_stuck_in_a_loop_inside_pcall_is_still_stopped(language):
    lua = """
hooks.after_tool_call(function(ctx) while true do pcall(function() while true do end end) end end)
local ok = pcall(tools.add, {a = 1, b = 1})
return ok
"""
    js = """
hooks.afterToolCall(() => { for (;;) { try { while (true) {} } catch {} } });
async function main() { try { await tools.add({a: 1, b: 1}); } catch { return "caught"; } }
"""
    err = failure(host(timeout=0.5), language, lua, js)
    assert err.fields.get("resource_type") == "time", err.code


def test_a_hooks_runaway_recursion_is_the_stack_limit(language):
    lua = """
local function f(n) return f(n + 1) + 1 end
hooks.before_tool_call(function(ctx) return f(1) end)
return tools.add{a = 1, b = 1}
"""
    js = """
function f(n) { return f(n + 1) + 1; }
hooks.beforeToolCall(() => f(1));
async function main() { return await tools.add({a: 1, b: 1}); }
"""
    err = failure(host(), language, lua, js)
    assert err.fields.get("resource_type") == "stack", err.code


@pytest.mark.parametrize("returned,shown", [
    ("'skip'", '"skip"'),
    ("{action = 'bogus'}", '{action = "bogus", ...}'),
    ("{action = 'proceed', param = {a = 1}}", "does not take"),
    ("42", "42"),
])
def test_invalid_actions_are_hook_invalid_result_naming_the_hook(language, returned, shown):
    js_returned = returned.replace(" = ", ": ").replace("'", '"')
    lua = f"""
hooks.before_tool_call(function(ctx) return {returned} end)
return tools.add{{a = 1, b = 1}}
"""
    js = f"""
hooks.beforeToolCall(function odd() {{ return {js_returned}; }});
async function main() {{ return await tools.add({{a: 1, b: 1}}); }}
"""
    err = failure(host(), language, lua, js)
    assert err.code == "hook/invalid_result"
    assert err.fields["hook_name"] == pick(language, "agent.lua:2", "odd (agent.js:2)")
    assert err.fields["hook_point"] == "before_tool_call"
    js_shown = shown.replace(" = ", ": ")
    assert pick(language, shown, js_shown) in err.fields["reason"]
    assert "proceed" in err.fields["reason"] and "skip" in err.fields["reason"]
    assert CALLS == []


def test_an_after_hooks_invalid_action_keeps_the_error_it_decided_on(language):
    lua = """
hooks.after_tool_call(function(ctx) return {action = "skip"} end)
return tools.boom{reason = "x"}
"""
    js = """
hooks.afterToolCall(() => ({action: "skip"}));
async function main() { return await tools.boom({reason: "x"}); }
"""
    err = failure(host(), language, lua, js)
    assert err.code == "hook/invalid_result"
    assert "recover" in err.fields["reason"]
    assert err.cause is not None and err.cause.code == "tool/execution_failed"


# -- observers ---------------------------------------------------------------------------


def test_observers_fire_once_per_call_with_the_calls_context(language):
    lua = """
local seen = {}
hooks.on("tool_call_started", function(ctx)
  seen[#seen + 1] = {"started", ctx.tool, ctx.params.a or "-", ctx.attempt}
end)
hooks.on("tool_call_finished", function(ctx)
  seen[#seen + 1] = {"finished", ctx.tool, ctx.result or false,
                     ctx.error and ctx.error.code or false,
                     type(ctx.duration) == "number" and ctx.duration >= 0, ctx.attempt}
end)
tools.add{a = 1, b = 2}
pcall(tools.boom, {reason = "x"})
return seen
"""
    js = """
const seen = [];
hooks.on("tool_call_started", (ctx) => {
  seen.push(["started", ctx.tool, ctx.params.a ?? "-", ctx.attempt]);
});
hooks.on("toolCallFinished", (ctx) => {
  seen.push(["finished", ctx.tool, ctx.result ?? false, ctx.error ? ctx.error.code : false,
             typeof ctx.duration === "number" && ctx.duration >= 0, ctx.attempt]);
});
async function main() {
  await tools.add({a: 1, b: 2});
  try { await tools.boom({reason: "x"}); } catch {}
  return seen;
}
"""
    assert run(host(), language, lua, js) == [
        ["started", "add", 1, 1], ["finished", "add", 3, False, True, 1],
        ["started", "boom", "-", 1],
        ["finished", "boom", False, "tool/execution_failed", True, 1]]


def test_an_observer_that_throws_changes_nothing_and_is_switched_off_after_three(language):
    lines: list[str] = []
    lua = """
local runs = 0
hooks.on("tool_call_finished", function(ctx) runs = runs + 1 error("observer broke") end)
local total = 0
for i = 1, 5 do total = total + tools.add{a = i, b = 0} end
return {total, runs}
"""
    js = """
let runs = 0;
hooks.on("tool_call_finished", () => { runs++; throw new Error("observer broke"); });
async function main() {
  let total = 0;
  for (let i = 1; i <= 5; i++) total += await tools.add({a: i, b: 0});
  return [total, runs];
}
"""
    assert run(host(lines=lines), language, lua, js) == [15, 3]
    failed = [line for line in lines if line.startswith("hook/execution_failed")]
    assert len(failed) == 3
    assert "at tool_call_finished" in failed[0] and "observer broke" in failed[0]
    assert "switched off" in failed[2]


# -- registration ------------------------------------------------------------------------


@pytest.mark.parametrize("point,says", [
    ("run_started", "tool_call_started, tool_call_finished"),
    ("nope", "unknown hook point"),
    ("before_tool_call", "controller point"),
])
def test_registering_on_a_point_a_script_cannot_observe_is_a_catchable_error(
        language, point, says):
    lua = f"""
local ok, e = pcall(hooks.on, "{point}", function() end)
return {{ok, e.code, e.fields.reason}}
"""
    js = f"""
async function main() {{
  try {{ hooks.on("{point}", () => {{}}); return [true]; }}
  catch (e) {{ return [false, e.code, e.fields.reason]; }}
}}
"""
    ok, code, reason = run(host(), language, lua, js)
    assert (ok, code) == (False, "configuration/invalid_value")
    assert says in reason and point in reason


def test_registering_a_non_function_or_too_many_hooks_is_refused(language):
    lua = """
local ok1, e1 = pcall(hooks.after_tool_call, 42)
local ok2, e2
for i = 1, 200 do
  ok2, e2 = pcall(hooks.on, "tool_call_started", function() end)
  if not ok2 then break end
end
return {ok1, tostring(e1), ok2, e2.code, e2.fields.reason}
"""
    js = """
async function main() {
  const out = [];
  try { hooks.afterToolCall(42); } catch (e) { out.push(false, String(e)); }
  for (let i = 0; i < 200; i++) {
    try { hooks.on("tool_call_started", () => {}); }
    catch (e) { out.push(false, e.code, e.fields.reason); break; }
  }
  return out;
}
"""
    ok1, said, ok2, code, reason = run(host(), language, lua, js)
    assert ok1 is False and "function" in said
    assert (ok2, code) == (False, "configuration/invalid_value")
    assert "at most 100" in reason


def test_a_hook_may_call_tools_which_fire_no_hooks(language):
    lua = """
local fired = 0
hooks.after_tool_call(function(ctx)
  fired = fired + 1
  if ctx.tool == "boom" then return {action = "recover", result = tools.add{a = 40, b = 2}} end
end)
return {tools.boom{reason = "x"}, fired}
"""
    js = """
let fired = 0;
hooks.afterToolCall(async (ctx) => {
  fired++;
  if (ctx.tool === "boom") return {action: "recover", result: await tools.add({a: 40, b: 2})};
});
async function main() { const r = await tools.boom({reason: "x"}); return [r, fired]; }
"""
    assert run(host(), language, lua, js) == [42, 1]


def test_a_hook_registering_hooks_from_inside_itself_is_bounded(language):
    lua = """
local function again(ctx) hooks.after_tool_call(again) hooks.after_tool_call(again) end
hooks.after_tool_call(again)
for i = 1, 20 do
  local ok, e = pcall(tools.add, {a = 1, b = 1})
  if not ok then return {i, e.code, e.cause.code} end
end
return "never refused"
"""
    js = """
function again() { hooks.afterToolCall(again); hooks.afterToolCall(again); }
hooks.afterToolCall(again);
async function main() {
  for (let i = 1; i <= 20; i++) {
    try { await tools.add({a: 1, b: 1}); } catch (e) { return [i, e.code, e.cause.code]; }
  }
  return "never refused";
}
"""
    refused_at, code, cause = run(host(), language, lua, js)
    assert 5 <= refused_at <= 8  # 1, 3, 7, 15... hooks: the 101st is refused
    assert (code, cause) == ("hook/execution_failed", "configuration/invalid_value")


def test_a_tools_file_has_no_script_hooks(tmp_path, language):
    # a tools file's calls are the host's to hook (Python hooks), not the file's
    path = tmp_path / pick(language, "lib.lua", "lib.js")
    path.write_text(pick(language, "return {probe = function() return hooks == nil end}",
                         'exports.probe = () => typeof hooks === "undefined";'))
    h = Host([path], timeout=5.0)
    assert run(h, language, "return tools.probe{}",
               "async function main() { return await tools.probe({}); }") is True


# -- nothing new for the script ------------------------------------------------------------


def test_a_forged_security_error_rethrown_by_a_hook_stays_the_scripts(language):
    lua = """
hooks.after_tool_call(function(ctx)
  return {action = "rethrow", error = errors.SecurityError{
    kind = "script_safety_violation", engine = "lua", violation = "x"}}
end)
return tools.boom{reason = "x"}
"""
    js = """
hooks.afterToolCall(() => ({action: "rethrow",
  error: new SecurityError(
    {kind: "script_safety_violation", engine: "javascript", violation: "x"})}));
async function main() { return await tools.boom({reason: "x"}); }
"""
    err = failure(host(), language, lua, js)
    assert err.code == "security/script_safety_violation"
    assert err.raised_by_script


def test_a_sandbox_violation_inside_a_hook_stays_the_sandboxs():
    lua = """
hooks.before_tool_call(function(ctx) return load("\\27Lua binary chunk") end)
return tools.add{a = 1, b = 1}
"""
    err = failure(host(), "lua", lua, "")
    assert err.code == "security/script_safety_violation"
    assert not err.raised_by_script


def test_a_script_without_hooks_sends_its_calls_as_before(language):
    lua = "return {tools.add{a = 1, b = 2}, hooks ~= nil}"
    js = "async function main() { return [await tools.add({a: 1, b: 2}), typeof hooks]; }"
    assert run(host(), language, lua, js) == [3, pick(language, True, "object")]


# -- the order with the host's hooks, and what a hook cannot do --------------------------


def test_one_calls_order_script_before_then_python_then_script_after(language):
    events: list[str] = []

    @hooks.observer("tool_call_started")
    def py_started(ctx):
        events.append("python tool_call_started")

    @hooks.controller("before_tool_call")
    def py_before(ctx):
        events.append("python before_tool_call")

    @hooks.controller("after_tool_call")
    def py_after(ctx):
        events.append("python after_tool_call")

    @hooks.observer("tool_call_finished")
    def py_finished(ctx):
        events.append("python tool_call_finished")

    lua = """
hooks.on("tool_call_started", function() print("script tool_call_started") end)
hooks.before_tool_call(function() print("script before_tool_call") end)
hooks.after_tool_call(function() print("script after_tool_call") end)
hooks.on("tool_call_finished", function() print("script tool_call_finished") end)
return tools.add{a = 1, b = 1}
"""
    js = """
hooks.on("toolCallStarted", () => console.log("script tool_call_started"));
hooks.beforeToolCall(() => { console.log("script before_tool_call"); });
hooks.afterToolCall(() => { console.log("script after_tool_call"); });
hooks.on("tool_call_finished", () => console.log("script tool_call_finished"));
async function main() { return await tools.add({a: 1, b: 1}); }
"""
    h = Host([add], on_output=events.append, timeout=5.0,
             hooks=[py_started, py_before, py_after, py_finished])
    assert run(h, language, lua, js) == 2
    # Python observers are delivered off the call's path (a queue): each once, anywhere
    observed = [e for e in events if e in ("python tool_call_started",
                                          "python tool_call_finished")]
    assert sorted(observed) == ["python tool_call_finished", "python tool_call_started"]
    assert [e for e in events if e not in observed] == [
        "script tool_call_started", "script before_tool_call",
        "python before_tool_call", "python after_tool_call",
        "script after_tool_call", "script tool_call_finished"]


def test_a_python_controller_has_the_last_word_on_params_a_script_hook_changed(language):
    @hooks.controller("before_tool_call")
    def no_big_numbers(ctx):
        if ctx.params.get("a", 0) > 100:
            return hooks.Fail("a is too big")

    lua = """
hooks.before_tool_call(function(ctx) return {action = "proceed", params = {a = 1000, b = 0}} end)
return tools.add{a = 1, b = 1}
"""
    js = """
hooks.beforeToolCall(() => ({action: "proceed", params: {a: 1000, b: 0}}));
async function main() { return await tools.add({a: 1, b: 1}); }
"""
    err = failure(host(no_big_numbers), language, lua, js)
    assert err.code == "hook/rejected"
    assert CALLS == []


def test_a_recover_hook_cannot_swallow_a_tools_stop_run(language):
    from host import StopRun

    @tool
    def finish(answer: str) -> str:
        """Ends the run."""
        raise StopRun(answer)

    lua = """
hooks.after_tool_call(function(ctx) return {action = "recover", result = "swallowed"} end)
local r = tools.finish{answer = "done"}
return "the script went on with " .. tostring(r)
"""
    js = """
hooks.afterToolCall(() => ({action: "recover", result: "swallowed"}));
async function main() {
  const r = await tools.finish({answer: "done"});
  return "the script went on with " + r;
}
"""
    h = Host([finish], on_output=lambda line: None, timeout=5.0)
    assert run(h, language, lua, js) == "done"


def test_async_hooks_in_javascript_are_awaited():
    js = """
hooks.beforeToolCall(async (ctx) => {
  await null;
  return {action: "proceed", params: {a: ctx.params.a + 1, b: ctx.params.b}};
});
hooks.afterToolCall(async (ctx) => {
  await null;
  return {action: "recover", result: ctx.result * 2};
});
async function main() { return await tools.add({a: 1, b: 1}); }
"""
    assert run(host(), "javascript", "", js) == 6
    err = failure(host(), "javascript", "", """
hooks.afterToolCall(async function late() { await null; throw new Error("later"); });
async function main() { return await tools.add({a: 1, b: 1}); }
""")
    assert err.code == "hook/execution_failed"
    assert err.fields["hook_name"] == "late (agent.js:2)"
    assert [f.line for f in err.frames] == [3, 2]  # the call site, then the hook's line


def test_the_example_agents_run(language):
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    lines: list[str] = []
    h = Host([root / "scripts" / "tools.py"], on_output=lines.append, timeout=10.0)
    path = root / "scripts" / "hooks" / pick(language, "agent.lua", "agent.js")
    result = h.run_source(path.read_text(), language, path.name)
    assert result == {"hits": ["Atlantis is a legendary island first mentioned by Plato."],
                      "weather": {"sky": "unknown", "because": "tool/execution_failed"}}
    assert lines == ["search: ok", "weather: ok"]


def test_a_hook_that_runs_out_of_memory_is_the_runs_memory_limit(language):
    lua = """
local t = {}
hooks.after_tool_call(function(ctx)
  while true do t[#t + 1] = string.rep("x", 1000) .. #t end
end)
local ok = pcall(tools.add, {a = 1, b = 1})
return "caught: " .. tostring(ok)
"""
    js = """
const t = [];
hooks.afterToolCall(() => { for (;;) t.push("x".repeat(1000) + t.length); });
async function main() { return await tools.add({a: 1, b: 1}); }
"""
    err = failure(host(memory_mb=32), language, lua, js)
    assert err.code == "resource/memory_exhaustion", err.code
    assert not err.raised_by_script


def test_an_observer_throwing_anything_changes_nothing(language):
    lines: list[str] = []
    lua = """
hooks.on("tool_call_started", function() error(nil) end)
hooks.on("tool_call_finished", function() error({1, 2}) end)
return tools.add{a = 1, b = 1}
"""
    js = """
hooks.on("tool_call_started", () => { throw null; });
hooks.on("tool_call_finished", () => { throw {not: "an error"}; });
async function main() { return await tools.add({a: 1, b: 1}); }
"""
    assert run(host(lines=lines), language, lua, js) == 2
    assert [line.split(":")[0] for line in lines] == ["hook/execution_failed"] * 2


def test_a_runs_hooks_end_with_it(language):
    h = host()
    lua = 'hooks.before_tool_call(function() return {action = "skip", result = -1} end)\n' \
          "return tools.add{a = 1, b = 1}"
    js = 'hooks.beforeToolCall(() => ({action: "skip", result: -1}));\n' \
         "async function main() { return await tools.add({a: 1, b: 1}); }"
    assert run(h, language, lua, js) == -1
    for _ in range(3):  # the next runs (a reused engine too) start with no hooks
        assert run(h, language, "return tools.add{a = 1, b = 1}",
                   "async function main() { return await tools.add({a: 1, b: 1}); }") == 2
    assert len(CALLS) == 3


def test_a_lua_runtime_started_again_has_no_hooks_of_the_run_before():
    import engines
    from engines import Limits, ToolInfo
    from tests.engine_driver import Run, converse

    engine = engines.make_engine("lua", limits=Limits(timeout=5.0, memory_mb=64))
    tools = {"add": lambda p: p["a"] + p["b"]}
    infos = [ToolInfo("add", "adds")]
    try:
        first = 'hooks.before_tool_call(function() return {action = "skip", result = -1} end)\n' \
                "return tools.add{a = 1, b = 1}"
        for source, expected in ((first, -1), ("return tools.add{a = 1, b = 1}", 2)):
            deadline = time.monotonic() + 5.0
            step = engine.start(source, "agent.lua", None, infos, deadline)
            assert converse(engine, step, tools, deadline, Run(step)).result == expected
    finally:
        engine.close()


# -- red team: hostile hooks --------------------------------------------------------


PROXY = 'new Proxy({}, {getPrototypeOf() { throw new Error("trap"); }, ' \
        'get() { throw new Error("trap"); }})'


def test_an_observer_throwing_a_proxy_whose_traps_throw_changes_nothing():
    lines: list[str] = []
    js = f"""
hooks.on("tool_call_started", () => {{ throw {PROXY}; }});
hooks.on("tool_call_finished", () => {{ throw {PROXY}; }});
hooks.on("tool_call_finished", async () => {{ throw {PROXY}; }});
async function main() {{ return await tools.add({{a: 1, b: 1}}); }}
"""
    assert run(host(lines=lines), "javascript", "", js) == 2
    assert len(lines) == 3, lines
    assert all(line.startswith("hook/execution_failed: ") for line in lines), lines


@pytest.mark.parametrize("point", ["beforeToolCall", "afterToolCall"])
@pytest.mark.parametrize("asynchronous", ["", "async "])
def test_a_controller_throwing_a_proxy_is_hook_execution_failed(point, asynchronous):
    js = f"""
hooks.{point}({asynchronous}() => {{ throw {PROXY}; }});
async function main() {{
  let call;
  try {{ call = tools.add({{a: 1, b: 1}}); }} catch (e) {{ return "thrown at the call"; }}
  try {{ await call; return "ok"; }} catch (e) {{ return e.code + " " + e.message; }}
}}
"""
    answer = run(host(), "javascript", "", js)
    assert answer.startswith("hook/execution_failed "), answer
    assert "a value that cannot be shown" in answer


def test_a_lua_hook_cannot_yield_the_coroutine_it_runs_in():
    lua = """
local fired = 0
hooks.before_tool_call(function(ctx)
  fired = fired + 1
  if ctx.params.a == 1 then coroutine.yield("from the hook") end
end)
local co = coroutine.wrap(function()
  local ok, err = pcall(tools.add, {a = 1, b = 1})
  return ok and "yielded" or err.code .. " " .. err.fields.reason
end)
local first = co()
local second = tools.add{a = 2, b = 2}  -- the hooks still fire
return {first, second, fired}
"""
    first, second, fired = run(host(), "lua", lua, "")
    assert first == "hook/execution_failed attempt to yield across a script hook"
    assert (second, fired) == (4, 2)


def test_a_lua_hook_may_yield_coroutines_of_its_own():
    lua = """
hooks.before_tool_call(function(ctx)
  local gen = coroutine.wrap(function() coroutine.yield(10) end)
  assert(not coroutine.isyieldable())
  return {action = "proceed", params = {a = ctx.params.a * gen(), b = ctx.params.b}}
end)
return tools.add{a = 1, b = 2}
"""
    assert run(host(), "lua", lua, "") == 12
