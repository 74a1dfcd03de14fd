"""Hooks (host.hooks): points, observers, controllers, the tool-call layer, on_tool_error
and the hook path, on the real engines in both languages."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from bridge import SpellError
from host import Host, hooks, tool
from host.hooks.layer import ToolCallHooks
from tests.conftest import pick


@tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@tool
def boom(reason: str) -> str:
    """Always fails."""
    raise RuntimeError(reason)


CALLS: list[int] = []


@tool
def flaky(n: int) -> int:
    """Fails until called three times."""
    CALLS.append(n)
    if len(CALLS) < 3:
        raise RuntimeError(f"try {len(CALLS)}")
    return len(CALLS)


def run(host: Host, language: str, lua: str, js: str, args=None):
    """Run ``lua`` (a chunk) or ``js`` (the body of main, its tool calls awaited) under
    ``host``."""
    js = js.replace("tools.", "await tools.")
    source = pick(language, lua, f"async function main(args) {{ {js} }}")
    return host.run_source(source, language, f"agent.{pick(language, 'lua', 'js')}", args)


def caught(language: str, call: str) -> tuple[str, str]:
    """Sources that call ``call`` (same text in both) and return the caught error's code."""
    return (f"local ok, err = pcall(function() return {call} end)\n"
            f"if ok then return 'ok' end return err.code",
            f"try {{ {call}; return 'ok'; }} catch (e) {{ return e.code; }}")


# -- points fire once per occurrence, with the right context -------------------------


def test_run_and_tool_call_points_fire_once_with_their_context(language):
    seen: list[tuple[str, object]] = []

    @hooks.observer("run_started")
    def started(ctx):
        seen.append(("run_started", ctx))

    @hooks.observer("tool_call_started")
    def call_started(ctx):
        seen.append(("tool_call_started", ctx))

    @hooks.observer("tool_call_finished")
    def call_finished(ctx):
        seen.append(("tool_call_finished", ctx))

    @hooks.observer("output")
    def output(ctx):
        seen.append(("output", ctx))

    @hooks.observer("run_finished")
    def finished(ctx):
        seen.append(("run_finished", ctx))

    host = Host([add], hooks=[started, call_started, call_finished, output, finished],
                on_output=lambda line: None)
    result = run(host, language,
                 "print('hi')\nlocal r = tools.add({a = args.x, b = 2})\nreturn r",
                 "console.log('hi'); const r = tools.add({a: args.x, b: 2}); return r;",
                 {"x": 1})
    assert result == 3
    points = [p for p, _ in seen]
    assert points == ["run_started", "output", "tool_call_started", "tool_call_finished",
                      "run_finished"]
    ctx = dict(seen)
    assert ctx["run_started"].args == {"x": 1}
    assert ctx["run_started"].language == language
    assert ctx["output"].line == "hi"
    started_ctx = ctx["tool_call_started"]
    assert (started_ctx.tool, started_ctx.params) == ("add", {"a": 1, "b": 2})
    assert started_ctx.caller.language == language
    assert started_ctx.caller.file.startswith("agent.")
    assert started_ctx.caller.line == 2 if language == "lua" else 1
    done = ctx["tool_call_finished"]
    assert (done.result, done.error, done.error_type, done.attempt) == (3, None, None, 1)
    assert done.duration > 0
    assert ctx["run_finished"].result == 3 and ctx["run_finished"].error is None
    assert all(c.run_id == ctx["run_started"].run_id for p, c in seen)


@pytest.mark.parametrize("which", ["execution", "validation", "parse", "timeout"])
def test_tool_call_finished_gives_the_error_type(language, which):
    seen = []

    @tool(timeout=0.05)
    def slow() -> str:
        """Sleeps past its timeout."""
        time.sleep(0.5)
        return "late"

    @hooks.observer("tool_call_finished")
    def finished(ctx):
        seen.append(ctx)

    call = {"execution": "tools.boom({reason = 'x'})", "validation": "tools.add({a = 'x'})",
            "parse": "tools.add({a = print})", "timeout": "tools.slow({})"}[which]
    js_call = {"execution": "tools.boom({reason: 'x'})", "validation": "tools.add({a: 'x'})",
               "parse": "tools.add({a: function() {}})", "timeout": "tools.slow({})"}[which]
    lua, _ = caught(language, call)
    _, js = caught(language, js_call)
    code = run(Host([add, boom, slow], hooks=[finished]), language, lua, js)
    assert code != "ok"
    assert len(seen) == 1
    assert seen[0].error_type == which
    assert seen[0].error.code == code


def test_script_error_and_run_finished_see_the_escaping_error(language):
    seen = []

    @hooks.observer("script_error")
    def failed(ctx):
        seen.append(("script_error", ctx.error.code))

    @hooks.observer("run_finished")
    def finished(ctx):
        seen.append(("run_finished", ctx.error.code if ctx.error else None))

    host = Host([boom], hooks=[failed, finished])
    with pytest.raises(SpellError) as info:
        run(host, language, "return tools.boom({reason = 'r'})",
            "return tools.boom({reason: 'r'});")
    assert info.value.code == "tool/execution_failed"
    assert seen == [("script_error", "tool/execution_failed"),
                    ("run_finished", "tool/execution_failed")]


def test_retry_fallback_and_circuit_points_fire_from_recovery(language):
    CALLS.clear()
    seen = []

    @hooks.observer("retry")
    def retried(ctx):
        seen.append(("retry", ctx.tool, ctx.attempt, ctx.error))

    @hooks.observer("fallback")
    def fell_back(ctx):
        seen.append(("fallback", ctx.tool, ctx.option))

    @hooks.observer("circuit_changed")
    def circuit(ctx):
        seen.append(("circuit", ctx.tool, ctx.old, ctx.new))

    host = Host([flaky, boom, add], hooks=[retried, fell_back, circuit], recovery={
        "flaky": {"retry": {"attempts": 3, "initial": 0.001, "on": "any"}},
        "boom": {"fallback": [{"value": "spare"}],
                 "breaker": {"failure_threshold": 1, "recovery_timeout": 60}}})
    result = run(host, language,
                 "return {tools.flaky({n = 1}), tools.boom({reason = 'x'})}",
                 "return [tools.flaky({n: 1}), tools.boom({reason: 'x'})];")
    assert result == [3, "spare"]
    assert seen == [("retry", "flaky", 1, "tool/execution_failed"),
                    ("retry", "flaky", 2, "tool/execution_failed"),
                    ("circuit", "boom", "closed", "open"),
                    ("fallback", "boom", "value")]


# -- observers are isolated ------------------------------------------------------------


def test_a_raising_observer_changes_nothing_and_is_logged(language, caplog):
    @hooks.observer("tool_call_finished")
    def broken(ctx):
        raise ValueError("observer bug")

    host = Host([add], hooks=[broken])
    with caplog.at_level(logging.ERROR, logger="polyspell"):
        assert run(host, language, "return tools.add({a = 1, b = 1})",
                   "return tools.add({a: 1, b: 1});") == 2
    assert "broken at tool_call_finished failed" in caplog.text
    assert "observer bug" in caplog.text


def test_a_hung_sync_observer_is_abandoned_at_its_budget(language):
    release = threading.Event()

    @hooks.observer("tool_call_started", timeout=0.05)
    def hung(ctx):
        release.wait(10)

    host = Host([add], hooks=[hung])
    began = time.monotonic()
    try:
        assert run(host, language, "return tools.add({a = 1, b = 1})",
                   "return tools.add({a: 1, b: 1});") == 2
    finally:
        release.set()
    assert time.monotonic() - began < 2


def test_an_observer_failing_three_times_in_a_row_is_switched_off(language, caplog):
    calls = []

    @hooks.observer("tool_call_finished")
    def broken(ctx):
        calls.append(ctx.tool)
        raise ValueError("again")

    host = Host([add], hooks=[broken])
    with caplog.at_level(logging.WARNING, logger="polyspell"):
        run(host, language, "for i = 1, 5 do tools.add({a = i, b = 1}) end",
            "for (let i = 0; i < 5; i++) tools.add({a: i, b: 1});")
        run(host, language, "tools.add({a = 1, b = 1})", "tools.add({a: 1, b: 1});")
    assert len(calls) == 3  # for the host's life: the second run does not call it
    assert "switched off" in caplog.text


def test_a_hung_observer_is_abandoned_and_the_others_still_see_every_event(language):
    release = threading.Event()
    seen = []

    @hooks.observer("tool_call_started", timeout=0.05)
    def hung(ctx):
        release.wait(10)

    @hooks.observer("tool_call_started")
    def after(ctx):
        seen.append(ctx.params["a"])

    host = Host([add], hooks=[hung, after])
    began = time.monotonic()
    try:
        assert run(host, language, "for i = 1, 4 do tools.add({a = i, b = 1}) end return 0",
                   "for (let i = 1; i <= 4; i++) tools.add({a: i, b: 1}); return 0;") == 0
    finally:
        release.set()
    assert time.monotonic() - began < 2
    assert seen == [1, 2, 3, 4]  # in order, none lost: each abandonment resumes after it
    assert hung not in host.hooks.by_point["tool_call_started"]  # 3 timeouts in a row


def test_every_observer_has_seen_the_run_in_order_when_it_returns(language):
    seen = []

    @hooks.observer("tool_call_started")
    @hooks.observer("tool_call_finished")
    @hooks.observer("run_finished")
    def note(ctx):
        time.sleep(0.001)  # slower than the run: events wait in the queue
        seen.append((type(ctx).__name__, getattr(ctx, "params", None)))

    host = Host([add], hooks=[note, note.fn, note.fn.fn])
    run(host, language, "for i = 1, 20 do tools.add({a = i, b = 1}) end",
        "for (let i = 1; i <= 20; i++) tools.add({a: i, b: 1});")
    calls = [(kind, {"a": i, "b": 1}) for i in range(1, 21)
             for kind in ("ToolCallContext", "ToolResultContext")]
    assert seen == [*calls, ("RunFinishedContext", None)]


def test_observers_far_behind_the_run_lose_events_counted_not_the_runs_time(
        language, monkeypatch, caplog):
    from host.hooks import delivery

    monkeypatch.setattr(delivery, "MAX_PENDING", 8)
    seen = []

    @hooks.observer("tool_call_finished")
    def slow(ctx):
        seen.append(ctx.params["a"])
        time.sleep(0.002)

    host = Host([add], hooks=[slow])
    with caplog.at_level(logging.WARNING, logger="polyspell"):
        run(host, language, "for i = 1, 100 do tools.add({a = i, b = 1}) end",
            "for (let i = 1; i <= 100; i++) tools.add({a: i, b: 1});")
        host.hooks.flush()
    dropped = host.hooks._delivery.dropped
    assert dropped > 0 and len(seen) + dropped == 100  # each event seen or counted
    assert seen == sorted(seen)  # in order, the dropped ones left out
    assert caplog.text.count("far behind") >= 1


def test_a_runs_end_waits_for_its_observers_a_short_while_only(language, monkeypatch):
    from host.hooks import delivery

    monkeypatch.setattr(delivery, "FLUSH_GRACE", 0.2)
    seen = []

    @hooks.observer("tool_call_finished", timeout=1)
    def slow(ctx):
        time.sleep(0.1)
        seen.append(ctx.params["a"])

    host = Host([add], hooks=[slow])
    run(host, language, "for i = 1, 10 do tools.add({a = i, b = 1}) end",
        "for (let i = 1; i <= 10; i++) tools.add({a: i, b: 1});")
    assert len(seen) < 10  # the run did not wait a second for them
    assert host.hooks.flush()
    assert seen == list(range(1, 11))  # they saw everything, after the run

def test_an_observer_failure_is_in_the_failed_runs_hook_path(language):
    @hooks.observer("tool_call_started")
    def broken(ctx):
        raise ValueError("observer bug")

    @hooks.observer("tool_call_started", timeout=0.02)
    def slow(ctx):
        time.sleep(0.2)

    host = Host([boom], hooks=[broken, slow])
    with pytest.raises(SpellError) as info:
        run(host, language, "return tools.boom({reason = 'r'})",
            "return tools.boom({reason: 'r'});")
    path = info.value.context.execution_trace.hook_execution_path
    assert [(h.hook_name, h.hook_point, h.outcome) for h in path] == [
        ("test_an_observer_failure_is_in_the_failed_runs_hook_path.<locals>.broken",
         "tool_call_started", "failed"),
        ("test_an_observer_failure_is_in_the_failed_runs_hook_path.<locals>.slow",
         "tool_call_started", "failed")]
    assert path[0].error.startswith("hook/execution_failed: ")
    assert "observer bug" in path[0].error
    assert path[1].error.startswith("hook/timeout: ")


def test_async_observers_run_on_the_hosts_loop(language):
    seen = []

    @hooks.observer("tool_call_finished")
    async def finished(ctx):
        seen.append(ctx.result)

    assert run(Host([add], hooks=[finished]), language, "return tools.add({a = 1, b = 2})",
               "return tools.add({a: 1, b: 2});") == 3
    assert seen == [3]


def test_an_observer_cannot_change_the_params(language):
    @hooks.observer("tool_call_started")
    def meddle(ctx):
        ctx.params["a"] = 100

    assert run(Host([add], hooks=[meddle]), language, "return tools.add({a = 1, b = 2})",
               "return tools.add({a: 1, b: 2});") == 3


# -- controllers: every action ---------------------------------------------------------


def test_proceed_with_changed_params_is_validated_again(language):
    @hooks.controller("before_tool_call")
    def double(ctx):
        return hooks.Proceed(params={"a": ctx.params["a"] * 2, "b": ctx.params["b"]})

    @hooks.controller("before_tool_call")
    def breaks(ctx):
        if ctx.params["a"] > 10:
            return hooks.Proceed(params={"a": "not a number", "b": 1})

    host = Host([add], hooks=[double, breaks])
    assert run(host, language, "return tools.add({a = 2, b = 1})",
               "return tools.add({a: 2, b: 1});") == 5
    lua, js = caught(language, "tools.add({a = 20, b = 1})")
    _, js = caught(language, "tools.add({a: 20, b: 1})")
    assert run(host, language, lua, js) == "tool/invalid_parameters"


def test_skip_answers_in_the_tools_place(language):
    called = []

    @tool
    def costly(q: str) -> str:
        """Expensive."""
        called.append(q)
        return "real"

    @hooks.controller("before_tool_call")
    def cached(ctx):
        return hooks.Skip({"cached": ctx.params["q"]})

    assert run(Host([costly], hooks=[cached]), language, "return tools.costly({q = 'x'})",
               "return tools.costly({q: 'x'});") == {"cached": "x"}
    assert called == []


def test_skip_with_data_a_script_cannot_hold_is_refused(language):
    @hooks.controller("before_tool_call")
    def bad(ctx):
        return hooks.Skip({"x": {1, 2}})

    lua, _ = caught(language, "tools.add({a = 1, b = 1})")
    _, js = caught(language, "tools.add({a: 1, b: 1})")
    assert run(Host([add], hooks=[bad]), language, lua, js) == "hook/invalid_result"


@pytest.mark.parametrize("error, code", [
    ("not allowed today", "hook/rejected"),
    (PermissionError("no"), "tool/execution_failed"),
    (SpellError(category="tool", kind="permission_denied", tool_name="add",
                permission="quota"), "tool/permission_denied")])
def test_fail_hands_the_script_a_unified_error(language, error, code):
    @hooks.controller("before_tool_call")
    def deny(ctx):
        return hooks.Fail(error)

    lua, _ = caught(language, "tools.add({a = 1, b = 1})")
    _, js = caught(language, "tools.add({a: 1, b: 1})")
    assert run(Host([add], hooks=[deny]), language, lua, js) == code


def test_continue_and_recover_after_a_call(language):
    finished = []

    @hooks.observer("tool_call_finished")
    def watch(ctx):
        finished.append((ctx.result, ctx.error, ctx.recovered_from and ctx.recovered_from.code))

    @hooks.controller("after_tool_call")
    def rescue(ctx):
        if ctx.error is not None and ctx.error_type == "execution":
            return hooks.Recover(f"n/a ({ctx.error.code})")
        return hooks.Continue()

    host = Host([add, boom], hooks=[rescue, watch])
    assert run(host, language, "return {tools.add({a = 1, b = 1}), tools.boom({reason = 'r'})}",
               "return [tools.add({a: 1, b: 1}), tools.boom({reason: 'r'})];") == [
        2, "n/a (tool/execution_failed)"]
    assert finished == [(2, None, None),
                        ("n/a (tool/execution_failed)", None, "tool/execution_failed")]


def test_retry_is_bounded_and_recorded(language):
    CALLS.clear()
    attempts = []

    @hooks.controller("after_tool_call")
    def again(ctx):
        attempts.append(ctx.attempt)
        if ctx.error is not None:
            return hooks.Retry(delay=0.001)

    host = Host([flaky, boom], hooks=[again])
    assert run(host, language, "return tools.flaky({n = 1})", "return tools.flaky({n: 1});") == 3
    assert attempts == [1, 2, 3]
    attempts.clear()
    with pytest.raises(SpellError) as info:  # always failing: 3 tries in all, then its error
        run(host, language, "return tools.boom({reason = 'r'})",
            "return tools.boom({reason: 'r'});")
    assert attempts == [1, 2, 3]
    assert info.value.code == "tool/execution_failed"
    assert [e["action"] for e in info.value.context.metadata["recovery"]] == ["retry", "retry"]


def test_rethrow_gives_another_error_with_the_original_as_cause(language):
    @hooks.controller("after_tool_call")
    def translate(ctx):
        if ctx.error is not None:
            return hooks.Rethrow(SpellError(category="tool", kind="permission_denied",
                                            tool_name=ctx.tool, permission="translated"))

    with pytest.raises(SpellError) as info:
        run(Host([boom], hooks=[translate]), language, "return tools.boom({reason = 'r'})",
            "return tools.boom({reason: 'r'});")
    assert info.value.code == "tool/permission_denied"
    assert info.value.cause.code == "tool/execution_failed"
    path = info.value.context.execution_trace.hook_execution_path
    assert [h.outcome for h in path] == ["rethrow"]


def test_controllers_chain_in_priority_order_until_one_decides(language):
    order = []

    def make(name, priority, action):
        @hooks.controller("before_tool_call", priority=priority, name=name)
        def controller(ctx):
            order.append(name)
            return action

        return controller

    chain = [make("low", 0, hooks.Skip("low")), make("high", 10, hooks.Proceed()),
             make("mid", 5, hooks.Skip("mid")), make("also_low", 0, None)]
    assert run(Host([add], hooks=chain), language, "return tools.add({a = 1, b = 1})",
               "return tools.add({a: 1, b: 1});") == "mid"
    assert order == ["high", "mid"]


@pytest.mark.parametrize("point, answer", [("before_tool_call", hooks.Recover(1)),
                                           ("before_tool_call", "yes"),
                                           ("after_tool_call", hooks.Skip(1)),
                                           ("after_tool_call", True)])
def test_an_answer_the_point_does_not_take_is_refused_naming_the_hook(language, point,
                                                                      answer):
    @hooks.controller(point, name="odd")
    def odd(ctx):
        return answer

    with pytest.raises(SpellError) as info:
        run(Host([add], hooks=[odd]), language, "return tools.add({a = 1, b = 1})",
            "return tools.add({a: 1, b: 1});")
    err = info.value
    assert err.code == "hook/invalid_result"
    assert err.fields["hook_name"] == "odd" and err.fields["hook_point"] == point
    assert repr(answer) in err.message


def test_a_raising_controller_fails_the_call(language):
    @hooks.controller("before_tool_call")
    def broken(ctx):
        raise KeyError("nope")

    lua, _ = caught(language, "tools.add({a = 1, b = 1})")
    _, js = caught(language, "tools.add({a: 1, b: 1})")
    assert run(Host([add], hooks=[broken]), language, lua, js) == "hook/execution_failed"


def test_after_script_error_recovers_or_rethrows(language):
    @hooks.controller("after_script_error")
    def rescue(ctx):
        if ctx.error.code == "tool/execution_failed":
            return hooks.Recover({"fallback": True})
        return hooks.Rethrow("refused: " + ctx.error.code)

    host = Host([boom], hooks=[rescue])
    assert run(host, language, "return tools.boom({reason = 'r'})",
               "return tools.boom({reason: 'r'});") == {"fallback": True}
    with pytest.raises(SpellError) as info:
        run(host, language, "error('plain')", "throw new Error('plain');")
    assert info.value.code == "hook/rejected"
    assert info.value.cause is not None


# -- on_tool_error ---------------------------------------------------------------------


def test_on_tool_error_false_stops_a_run_a_pcall_would_have_caught(language):
    got = []

    def handler(error, tool_name, error_type, params):
        got.append((error.code, tool_name, error_type, params))
        return tool_name != "boom"

    host = Host([boom, add], on_tool_error=handler)
    lua = ("local ok = pcall(tools.boom, {reason = 'r'})\n"
           "return tools.add({a = 1, b = 1})")
    js = "try { tools.boom({reason: 'r'}); } catch (e) {} return tools.add({a: 1, b: 1});"
    with pytest.raises(SpellError) as info:
        run(host, language, lua, js)
    assert info.value.code == "tool/execution_failed"
    assert got == [("tool/execution_failed", "boom", "execution", {"reason": "r"})]
    path = info.value.context.execution_trace.hook_execution_path
    assert [(h.hook_point, h.outcome) for h in path] == [("on_tool_error", "stop_run")]


def test_on_tool_error_true_lets_the_script_catch_it(language):
    host = Host([add], on_tool_error=lambda *args: True)
    lua, _ = caught(language, "tools.add({a = 'x'})")
    _, js = caught(language, "tools.add({a: 'x'})")
    assert run(host, language, lua, js) == "tool/invalid_parameters"


def test_stop_on_tool_error(language):
    host = Host([boom], stop_on_tool_error=True)
    lua, _ = caught(language, "tools.boom({reason = 'r'})")
    _, js = caught(language, "tools.boom({reason: 'r'})")
    with pytest.raises(SpellError) as info:
        run(host, language, lua, js)
    assert info.value.code == "tool/execution_failed"


def test_on_tool_error_answering_neither_true_nor_false_is_refused(language):
    host = Host([boom], on_tool_error=lambda *args: "maybe")
    lua, _ = caught(language, "tools.boom({reason = 'r'})")
    _, js = caught(language, "tools.boom({reason: 'r'})")
    assert run(host, language, lua, js) == "hook/invalid_result"


# -- the hook path survives JSON --------------------------------------------------------


def test_the_hook_path_survives_json(language):
    @hooks.observer("tool_call_started")
    def look(ctx):
        raise ValueError("observer bug")

    @hooks.controller("after_tool_call", name="passes")
    def passes(ctx):
        return hooks.Continue()

    with pytest.raises(SpellError) as info:
        run(Host([boom], hooks=[look, passes]), language, "return tools.boom({reason = 'r'})",
            "return tools.boom({reason: 'r'});")
    back = SpellError.from_dict(json.loads(json.dumps(info.value.to_dict())))
    path = back.context.execution_trace.hook_execution_path
    # the call's controllers, then the run's (its observers' failures)
    assert [(h.hook_point, h.outcome) for h in path] == [
        ("after_tool_call", "continue"), ("tool_call_started", "failed")]
    assert path[0].hook_name == "passes"
    assert "observer bug" in path[1].error
    assert all(h.duration is not None and h.duration >= 0 for h in path)


# -- bad registrations, and no cost without hooks ---------------------------------------


@pytest.mark.parametrize("make, says", [
    (lambda: hooks.observer("tool_call_done"), "unknown hook point 'tool_call_done'"),
    (lambda: hooks.controller("tool_call_finished"), "takes observers only"),
    (lambda: hooks.observer("before_tool_call"), "is a controller point"),
    (lambda: hooks.controller("after_tool_call", priority="high")(lambda c: None),
     "priority is an integer"),
    (lambda: hooks.observer("output", timeout=0)(lambda c: None), "timeout"),
    (lambda: Host([], hooks=[lambda ctx: None]), "not a hook"),
    (lambda: Host([], hooks=42), "hooks is a list of hooks"),
    (lambda: Host([], on_tool_error=42), "on_tool_error must be a function"),
    (lambda: Host([], on_tool_error=lambda *a: True, stop_on_tool_error=True), "not both")])
def test_bad_registrations_are_configuration_errors(make, says):
    with pytest.raises(SpellError) as info:
        make()
    assert info.value.code == "configuration/invalid_value"
    assert says in info.value.message


def test_no_hooks_no_layer():
    assert Host([add]).hooks is None
    run_ = Host([add]).new_run_source("return 1", "lua")
    assert not any(isinstance(layer, ToolCallHooks) for layer in run_._layers_for("add"))

    @hooks.observer("run_started")
    def only_runs(ctx):
        pass

    run_ = Host([add], hooks=[only_runs]).new_run_source("return 1", "lua")
    assert not any(isinstance(layer, ToolCallHooks) for layer in run_._layers_for("add"))


def test_the_hook_path_crosses_a_lua_js_python_hop(tmp_path):
    relay = tmp_path / "relay.js"
    relay.write_text("async function relay(p) { return await tools.boom(p); }\n"
                     "var exports = {relay: relay};\n")

    @hooks.observer("tool_call_finished", name="watch")
    def watch(ctx):
        raise ValueError(f"observer bug at {ctx.tool}")

    host = Host([boom, str(relay)], hooks=[watch])
    with pytest.raises(SpellError) as info:
        host.run_source("return tools.relay({reason = 'deep'})", "lua", "agent.lua")
    err = SpellError.from_dict(json.loads(json.dumps(info.value.to_dict())))
    assert err.code == "tool/execution_failed"
    path = err.context.execution_trace.hook_execution_path
    assert [(h.hook_name, h.hook_point, h.outcome) for h in path] == [
        ("watch", "tool_call_finished", "failed")] * 2
    assert ["at boom" in path[0].error, "at relay" in path[1].error] == [True, True]
    assert [f.language for f in err.frames][:3] == ["lua", "host", "javascript"]


def test_an_async_controller_decides(language, anyio_backend):
    @hooks.controller("before_tool_call")
    async def skip(ctx):
        return hooks.Skip(f"async {ctx.tool}")

    import anyio

    async def main():
        host = Host([add], hooks=[skip])
        js = "async function main() { return await tools.add({a: 1, b: 1}); }"
        source = pick(language, "return tools.add({a = 1, b = 1})", js)
        return await host.arun_source(source, language)

    assert anyio.run(main, backend=anyio_backend) == "async add"


def test_a_shared_error_raised_again_and_again_keeps_a_bounded_hook_path(language):
    shared = SpellError(category="tool", kind="not_found", tool_name="x")

    @tool
    def same() -> str:
        """Raises one shared error."""
        raise shared

    @hooks.controller("after_tool_call")
    def watch(ctx):
        return hooks.Continue()

    run(Host([same], hooks=[watch]), language,
        "for i = 1, 150 do pcall(tools.same, {}) end",
        "for (let i = 0; i < 150; i++) { try { tools.same({}); } catch (e) {} }")
    assert len(shared.context.execution_trace.hook_execution_path) == 100


def test_stacked_decorators_make_one_hook_per_point(language):
    seen = []

    @hooks.observer("tool_call_started")
    @hooks.observer("tool_call_finished")
    def both(ctx):
        seen.append(type(ctx).__name__)

    inner = both.fn
    assert (both.point, inner.point) == ("tool_call_started", "tool_call_finished")
    run(Host([add], hooks=[both, inner]), language, "return tools.add({a = 1, b = 1})",
        "return tools.add({a: 1, b: 1});")
    assert seen == ["ToolCallContext", "ToolResultContext"]


def test_degraded_fires_when_an_optional_tool_answers_degraded(language):
    seen = []

    @hooks.observer("degraded")
    def degraded(ctx):
        seen.append((ctx.tool, ctx.error))

    host = Host([boom], hooks=[degraded],
                recovery={"boom": {"optional": True, "degraded": "later"}})
    assert run(host, language, "return tools.boom({reason = 'r'})",
               "return tools.boom({reason: 'r'});") == "later"
    assert seen == [("boom", "tool/execution_failed")]


def test_proceed_with_params_a_script_could_not_send_is_refused(language):
    @hooks.controller("before_tool_call", name="setter")
    def setter(ctx):
        return hooks.Proceed(params={"a": {1}, "b": 1})

    with pytest.raises(SpellError) as info:
        run(Host([add], hooks=[setter]), language, "return tools.add({a = 1, b = 1})",
            "return tools.add({a: 1, b: 1});")
    assert info.value.code == "hook/invalid_result"
    assert "setter" in info.value.message and "params.a" in info.value.message
    assert Host([add], hooks=None).hooks is None


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
def test_cancellation_points_fire_once_in_order(language, anyio_backend):
    import anyio

    from bridge import AsyncExecutionError

    seen = []
    entered = threading.Event()

    @tool
    async def wait(seconds: float) -> str:
        """Sleeps until cancelled."""
        entered.set()
        await anyio.sleep(seconds)
        return "woke"

    @hooks.observer("cancellation_started")
    async def started(ctx):  # async: on the host's loop, from the hooks' own thread
        seen.append(("started", ctx.reason.code))

    @hooks.observer("cancellation_finished")
    def finished(ctx):
        seen.append(("finished", ctx.reason.code))

    @hooks.observer("run_finished")
    def ended(ctx):
        seen.append(("run_finished", ctx.error.code))

    error = AsyncExecutionError.TaskCancelled(task_id="t", reason="test",
                                              cancellation_source="test")
    source = pick(language, "pcall(tools.wait, {seconds = 30})\nreturn 'swallowed'",
                  "async function main() { try { await tools.wait({seconds: 30}); } "
                  "catch (e) {} return 'swallowed'; }")

    async def main():
        host = Host([wait], hooks=[started, finished, ended])
        run_ = host.new_run_source(source, language)

        async def cancel_soon():
            await anyio.to_thread.run_sync(entered.wait, 5)
            run_.cancel(error)
            run_.cancel(error)  # the first reason wins: no second cancellation_started

        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                group.start_soon(cancel_soon)
                with pytest.raises(SpellError) as info:
                    await run_.execute()
        return info.value

    assert anyio.run(main, backend=anyio_backend) is error
    code = "async_execution/task_cancelled"
    assert seen == [("started", code), ("finished", code), ("run_finished", code)]


def test_the_traceback_and_explain_show_the_hook_path(tmp_path, language):
    import subprocess
    import sys

    @hooks.observer("tool_call_started", name="broken")
    def broken(ctx):
        raise ValueError("observer bug")

    with pytest.raises(SpellError) as info:
        run(Host([boom], hooks=[broken]), language, "return tools.boom({reason = 'r'})",
            "return tools.boom({reason: 'r'});")
    line = "hook: broken at tool_call_started: failed ("
    text = info.value.to_text()
    assert line in text and "hook/execution_failed: Hook execution failed: broken" in text
    saved = tmp_path / "error.json"
    saved.write_text(json.dumps(info.value.to_dict()))
    shown = subprocess.run([sys.executable, "-m", "host.cli", "explain", str(saved)],
                           capture_output=True, text=True, timeout=60)
    assert line in shown.stdout + shown.stderr


def test_a_stop_handed_out_again_keeps_the_hook_path_of_the_call_that_failed(language):
    @hooks.controller("after_tool_call", name="watch")
    def watch(ctx):
        return hooks.Continue()

    host = Host([boom, add], hooks=[watch], stop_on_tool_error=True)
    lua, _ = caught(language, "tools.boom({reason = 'r'})")
    _, js = caught(language, "tools.boom({reason: 'r'})")
    lua = lua.replace("if ok then", "tools.add({a = 1, b = 1})\nif ok then")
    js = js.replace("return e.code;", "tools.add({a: 1, b: 1}); return e.code;")
    with pytest.raises(SpellError) as info:
        run(host, language, lua, js)
    path = info.value.context.execution_trace.hook_execution_path
    assert [(h.hook_name, h.outcome) for h in path] == [
        ("watch", "continue"), ("stop_on_tool_error", "stop_run")]


def test_a_controller_past_its_budget_fails_the_call_with_hook_timeout(language):
    @hooks.controller("before_tool_call", timeout=0.05)
    def slow(ctx):
        time.sleep(0.5)

    lua, _ = caught(language, "tools.add({a = 1, b = 1})")
    _, js = caught(language, "tools.add({a: 1, b: 1})")
    began = time.monotonic()
    assert run(Host([add], hooks=[slow]), language, lua, js) == "hook/timeout"
    assert time.monotonic() - began < 0.45


def test_an_async_observer_past_its_budget_is_cancelled(language):
    import anyio

    done = []

    @hooks.observer("tool_call_finished", timeout=0.05)
    async def slow(ctx):
        await anyio.sleep(5)
        done.append(True)

    @hooks.observer("tool_call_finished")
    def after(ctx):
        done.append("after")

    began = time.monotonic()
    assert run(Host([add], hooks=[slow, after]), language, "return tools.add({a = 1, b = 1})",
               "return tools.add({a: 1, b: 1});") == 2
    assert time.monotonic() - began < 2
    assert done == ["after"]


def test_after_script_error_continue_leaves_the_error(language):
    @hooks.controller("after_script_error", name="looks")
    def looks(ctx):
        return hooks.Continue()

    with pytest.raises(SpellError) as info:
        run(Host([], hooks=[looks]), language, "error('plain')", "throw new Error('plain');")
    assert info.value.code.startswith("script/")
    path = info.value.context.execution_trace.hook_execution_path
    assert [(h.hook_name, h.hook_point, h.outcome) for h in path] == [
        ("looks", "after_script_error", "continue")]


def test_a_failing_after_controller_fails_the_call_with_its_own_cause(language):
    finished = []

    @hooks.controller("after_tool_call", name="broken")
    def broken(ctx):
        raise KeyError("nope")

    @hooks.observer("tool_call_finished")
    def watch(ctx):
        finished.append(ctx.error.code)

    with pytest.raises(SpellError) as info:
        run(Host([boom], hooks=[broken, watch]), language, "return tools.boom({reason = 'r'})",
            "return tools.boom({reason: 'r'});")
    assert info.value.code == "hook/execution_failed"
    assert info.value.cause.code == "runtime/python_exception"  # the KeyError
    assert "KeyError" in info.value.cause.message
    assert finished == ["hook/execution_failed"]


def test_a_controller_past_its_budget_has_the_tools_error_as_cause(language):
    @hooks.controller("after_tool_call", name="slow", timeout=0.02)
    def slow(ctx):
        time.sleep(0.2)

    with pytest.raises(SpellError) as info:
        run(Host([boom], hooks=[slow]), language, "return tools.boom({reason = 'r'})",
            "return tools.boom({reason: 'r'});")
    assert info.value.code == "hook/timeout"
    assert info.value.cause.code == "tool/execution_failed"


def test_a_host_no_longer_used_takes_its_observers_thread_with_it(language, monkeypatch):
    import gc

    from host.hooks import delivery

    monkeypatch.setattr(delivery, "IDLE_AFTER", 1)
    monkeypatch.setattr(delivery, "IDLE_CHECK", 0.02)

    def observers_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "polyspell observers"}

    before = observers_threads()

    @hooks.observer("tool_call_finished")
    def watch(ctx):
        pass

    host = Host([add], hooks=[watch])
    run(host, language, "return tools.add({a = 1, b = 1})", "return tools.add({a: 1, b: 1});")
    (its,) = observers_threads() - before
    del host
    deadline = time.monotonic() + 5
    while its.is_alive() and time.monotonic() < deadline:
        gc.collect()
        its.join(0.05)
    assert not its.is_alive()


# -- red team: careless hooks -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["controller", "async controller", "on_tool_error"])
def test_a_hook_raising_keyboard_interrupt_is_its_failure_not_a_ctrl_c(language, kind):
    # the hook runs on a worker thread (or the event loop): its KeyboardInterrupt is a bug
    # of the hook, not the user's Ctrl-C, which reaches the run's own thread
    if kind == "controller":
        @hooks.controller("after_tool_call")
        def interrupting(ctx):
            if ctx.error is not None:
                raise KeyboardInterrupt
        host = Host([add, boom], hooks=[interrupting])
    elif kind == "async controller":
        @hooks.controller("after_tool_call")
        async def interrupting(ctx):
            if ctx.error is not None:
                raise KeyboardInterrupt
        host = Host([add, boom], hooks=[interrupting])
    else:
        def interrupting(error, tool_name, error_type, params):
            raise KeyboardInterrupt
        host = Host([add, boom], on_tool_error=interrupting)
    lua, js = caught(language, "tools.boom({reason = 'x'})".replace(
        "{reason = 'x'}", pick(language, "{reason = 'x'}", "{reason: 'x'}")))
    assert run(host, language, lua, js) == "hook/execution_failed"
    assert run(host, language, "return tools.add({a = 1, b = 1})",
               "return tools.add({a: 1, b: 1});") == 2  # the host goes on


class Unreadable(dict):
    """A mapping of a hook's own that cannot be looked at."""

    def items(self):
        raise RuntimeError("unreadable")


@pytest.mark.parametrize("action", ["skip", "proceed", "recover"])
def test_an_answer_that_cannot_be_read_is_the_hooks_invalid_result(language, action):
    if action == "recover":
        @hooks.controller("after_tool_call")
        def answer(ctx):
            return hooks.Recover(Unreadable(x=1))
    else:
        @hooks.controller("before_tool_call")
        def answer(ctx):
            value = Unreadable(a=1, b=2)
            return hooks.Skip(value) if action == "skip" else hooks.Proceed(value)
    lua, js = caught(language, pick(language, "tools.add({a = 1, b = 1})",
                                    "tools.add({a: 1, b: 1})"))
    # not the tool's tool/execution_failed: the tool did nothing wrong
    assert run(Host([add], hooks=[answer]), language, lua, js) == "hook/invalid_result"


def test_the_observers_of_one_event_are_not_copied_for_each_of_them():
    # each observer in flight once copied the list of those after it: n² / 2 copies for n
    # observers (a hooks file of 20,000 hooks made a 4-call run take 8.5 s)
    lists = []

    def make(k):
        @hooks.observer("run_started", name=f"each{k}")
        def each(ctx):
            lists.append(dispatcher._delivery._current.observers)
        return each

    dispatcher = hooks.Dispatcher([make(k) for k in range(5)])
    dispatcher.observe("run_started", "ctx")
    dispatcher.flush()
    assert len(lists) == 5
    assert all(each is lists[0] for each in lists)  # one list, walked by index
