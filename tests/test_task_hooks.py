"""``Coordinator(hooks=...)``: ``task_started`` and ``task_finished`` observers, run by
the one dispatcher of the coordinator's hosts, on real Lua and JavaScript plans."""

from __future__ import annotations

import json
import threading
import time

import anyio
import pytest

from host import Coordinator, Retry, hooks, tool
from tests.conftest import pick
from tests.test_coordinator import (
    CALLS,
    TOOLS,
    Scripts,
    fail,
    fresh_tools,  # noqa: F401  (its autouse fixture)
    looping,
    ok,
)

OTHER = {"lua": "javascript", "javascript": "lua"}


class Seen:
    """Observers of both task points, keeping what they saw (from hook threads)."""

    def __init__(self) -> None:
        self.started: list[hooks.TaskContext] = []
        self.finished: list[hooks.TaskContext] = []
        self.lock = threading.Lock()

        @hooks.observer("task_started")
        def started(ctx: hooks.TaskContext) -> None:
            with self.lock:
                self.started.append(ctx)

        @hooks.observer("task_finished")
        async def finished(ctx: hooks.TaskContext) -> None:  # async ones too
            with self.lock:
                self.finished.append(ctx)

        self.hooks = [started, finished]

    def finished_of(self, task_id: str) -> list[hooks.TaskContext]:
        return sorted((c for c in self.finished if c.task_id == task_id),
                      key=lambda c: c.attempt)


@pytest.fixture
def scripts(tmp_path, language) -> Scripts:
    return Scripts(tmp_path, language)


@pytest.fixture
def seen() -> Seen:
    return Seen()


def test_each_point_fires_once_per_try_with_its_context(scripts, seen):
    other = Scripts(scripts.folder, OTHER[scripts.language])
    plan = [
        ok(scripts, "a"),
        ok(other, "b", after=["a"]),
        scripts.task("flaky", 'return tools.flaky{key = "k", failures = 2}',
                     'function main() { return tools.flaky({key: "k", failures: 2}); }',
                     retry=Retry(attempts=3, initial=0)),
    ]
    report = Coordinator(TOOLS, hooks=seen.hooks, on_output=lambda *_: None).run(plan)
    assert report.outcome == "succeeded"

    tries = {"a": 1, "b": 1, "flaky": 3}
    expected = sorted((task, n) for task, count in tries.items() for n in range(1, count + 1))
    assert sorted((c.task_id, c.attempt) for c in seen.started) == expected
    assert sorted((c.task_id, c.attempt) for c in seen.finished) == expected
    languages = {"a": scripts.language, "b": other.language, "flaky": scripts.language}
    for ctx in seen.started + seen.finished:
        assert ctx.language == languages[ctx.task_id]
        assert ctx.script == report.task(ctx.task_id).script
    for ctx in seen.started:
        assert (ctx.status, ctx.result, ctx.error, ctx.duration) == (None, None, None, None)

    (a,) = seen.finished_of("a")
    assert (a.status, a.result, a.error) == ("succeeded", "a ok", None)
    assert 0 < a.duration < report.duration
    first, second, third = seen.finished_of("flaky")
    for failed, reason in ((first, "try 1"), (second, "try 2")):
        assert (failed.status, failed.result) == ("failed", None)
        assert failed.error.code == "provider/unavailable"
        assert failed.error.fields["reason"] == reason
    assert (third.status, third.result, third.error) == ("succeeded", "k after 3 tries", None)


def test_a_failed_cancelled_or_timed_out_try_is_told_with_its_status(scripts, seen):
    plan = [fail(scripts, "bad"), ok(scripts, "loop"), looping(scripts, "slow", timeout=0.2)]
    coordinator = Coordinator(TOOLS, hooks=seen.hooks, on_output=lambda *_: None)
    report = coordinator.run(plan, strategy="cancel_dependents")
    statuses = {c.task_id: c.status for c in seen.finished}
    assert statuses == {"bad": "failed", "loop": "succeeded", "slow": "timed_out"}
    assert seen.finished_of("slow")[0].error.code == "async_execution/task_timeout"

    seen.finished.clear()
    report = coordinator.run([fail(scripts, "bad"), looping(scripts, "loop")],
                             strategy="propagate")
    statuses = {c.task_id: c.status for c in seen.finished}
    assert statuses == {"bad": "failed", "loop": "cancelled"}
    assert report.task("loop").status == "cancelled"


def test_observers_that_raise_or_hang_do_not_break_the_plan(scripts, seen, caplog):
    @hooks.observer("task_started")
    def broken(ctx):
        raise RuntimeError("observer bug")

    @hooks.observer("task_finished", timeout=0.05)
    def stuck(ctx):
        time.sleep(1)

    plan = [ok(scripts, "a"), ok(scripts, "b", after=["a"]),
            scripts.task("flaky", 'return tools.flaky{key = "k", failures = 1}',
                         'function main() { return tools.flaky({key: "k", failures: 1}); }',
                         retry=Retry(attempts=2, initial=0))]
    coordinator = Coordinator(TOOLS, hooks=[broken, stuck, *seen.hooks],
                              on_output=lambda *_: None)
    report = coordinator.run(plan)
    assert report.outcome == "succeeded"
    assert report.results == {"a": "a ok", "b": "b ok", "flaky": "k after 2 tries"}
    assert all(not t.callback_errors for t in report.tasks)
    # the healthy observers saw every try, after the broken ones
    assert len(seen.started) == len(seen.finished) == 4
    assert "observer bug" in caplog.text
    assert "switched off" in caplog.text  # failing 3 times in a row: off, as for any host


def test_a_plan_with_its_own_host_uses_the_same_dispatcher(tmp_path, language, seen):
    @hooks.observer("run_started")
    def run_started(ctx):
        with seen.lock:
            seen.started.append(ctx)

    # recovery policies make the plan's own host: the hooks must follow
    coordinator = Coordinator(TOOLS, hooks=[*seen.hooks, run_started],
                              recovery={"fetch": {"retry": {"attempts": 2}}},
                              on_output=lambda *_: None)
    report = coordinator.run([ok(Scripts(tmp_path, language), "a")])
    assert report.outcome == "succeeded"
    assert {type(c).__name__ for c in seen.started} == {"TaskContext", "RunContext"}
    assert [c.status for c in seen.finished] == ["succeeded"]
    assert coordinator._host_for(coordinator.prepare(
        [ok(Scripts(tmp_path, language), "b")])).hooks is coordinator.hooks


def test_no_hooks_no_dispatcher(scripts):
    coordinator = Coordinator(TOOLS, on_output=lambda *_: None)
    assert coordinator.hooks is None
    assert coordinator.run([ok(scripts, "a")]).outcome == "succeeded"


def test_bad_hooks_are_refused_when_the_coordinator_is_made():
    from bridge import ConfigurationError

    with pytest.raises(ConfigurationError) as caught:
        Coordinator(TOOLS, hooks=[lambda ctx: None])
    assert caught.value.code == "configuration/invalid_value"
    assert "hooks[0]" in caught.value.message


def test_an_observer_changing_its_context_changes_nothing(scripts):
    changed = []

    @hooks.observer("task_finished")
    def meddle(ctx):
        ctx.result["items"].append("injected")
        ctx.result["extra"] = True
        changed.append(ctx.result)

    task = scripts.task("a", 'return {items = {"x"}}', 'function main() { return {items: ["x"]}; }')
    report = Coordinator(TOOLS, hooks=[meddle], on_output=lambda *_: None).run([task])
    assert changed == [{"items": ["x", "injected"], "extra": True}]  # it did run
    assert report.results == {"a": {"items": ["x"]}}


# -- the coordinator's listeners are hooks of the one dispatcher ---------------------------


def after_a_tick_fails(scripts: Scripts, task_id: str, **fields):
    """Fails (a script error) once some looping script is inside its loop."""
    return scripts.task(task_id, 'tools.after_a_tick{} error("x")',
                        'async function main() { await tools.after_a_tick({}); '
                        'throw new Error("x"); }', **fields)


def test_listeners_are_listener_hooks_of_the_one_dispatcher():
    coordinator = Coordinator(TOOLS, on_output=lambda *_: None)
    assert coordinator.hooks is None  # nothing registered: no dispatcher, no cost

    def started(task_id, attempt):
        pass

    assert coordinator.on_task_started(started, task="a") is started  # still a decorator
    coordinator.on_task_completed(print)
    coordinator.on_cancellation_completed(print)
    coordinator.on_cancel(print)
    coordinator.on_cancellation_started(print)
    dispatcher = coordinator.hooks
    assert isinstance(dispatcher, hooks.Dispatcher)
    assert {point: [(h.kind, h.name) for h in registered]
            for point, registered in dispatcher.listeners.items()} == {
        "task_started": [("listener", started.__qualname__)],
        "task_completed": [("listener", "print")],
        "cancellation_finished": [("listener", "print")] * 2,
        "cancellation_started": [("listener", "print")]}
    # the cleanups run first at cancellation_finished, whatever the order they came in
    assert [h.priority for h in dispatcher.listeners["cancellation_finished"]] == [1, 0]
    assert not dispatcher.by_point  # observe() never sees them
    # one list of points: a listener where nothing notifies is refused
    with pytest.raises(Exception) as caught:
        hooks.Hook(print, "run_started", "listener")
    assert caught.value.code == "configuration/invalid_value"
    assert "task_started" in caught.value.message


def test_listeners_run_before_the_observers_of_their_point_on_the_event_loop(scripts):
    events: list[tuple] = []
    lock = threading.Lock()
    loop_thread = threading.current_thread()  # coordinator.run runs its loop here

    def add(*event):
        with lock:
            events.append(event)

    @hooks.observer("task_started")
    def observed_start(ctx):
        add("observer", "started", ctx.task_id, ctx.attempt)

    @hooks.observer("task_completed")
    def observed_end(ctx):
        add("observer", "completed", ctx.task_id, ctx.status, ctx.attempt, ctx.report.status)

    coordinator = Coordinator(TOOLS, hooks=[observed_start, observed_end],
                              on_output=lambda *_: None)
    on_loop = []

    def listened_start(task_id, attempt):
        on_loop.append(threading.current_thread() is loop_thread)
        add("listener", "started", task_id, attempt)

    async def listened_end(report):  # async ones awaited in order, with no budget
        await anyio.sleep(0.3)  # past any observer's budget: never abandoned
        on_loop.append(threading.current_thread() is loop_thread)
        add("listener", "completed", report.id, report.status)

    coordinator.on_task_started(listened_start)
    coordinator.on_task_completed(listened_end)
    report = coordinator.run([scripts.task(
        "flaky", 'return tools.flaky{key = "k", failures = 1}',
        'function main() { return tools.flaky({key: "k", failures: 1}); }',
        retry=Retry(attempts=2, initial=0))])
    assert report.outcome == "succeeded"
    assert events == [
        ("listener", "started", "flaky", 1), ("observer", "started", "flaky", 1),
        ("listener", "started", "flaky", 2), ("observer", "started", "flaky", 2),
        ("listener", "completed", "flaky", "succeeded"),
        ("observer", "completed", "flaky", "succeeded", 2, "succeeded")]
    assert on_loop == [True, True, True]
    assert report.task("flaky").callback_errors == []


def test_a_listener_for_one_task_sees_that_task_only(scripts):
    seen: list[tuple] = []
    coordinator = Coordinator(TOOLS, on_output=lambda *_: None)
    coordinator.on_task_started(lambda task_id, attempt: seen.append(("started", task_id)),
                                task="b")
    coordinator.on_task_completed(lambda report: seen.append(("completed", report.id)),
                                  task="b")
    report = coordinator.run([ok(scripts, "a"), ok(scripts, "b", after=["a"]), ok(scripts, "c")])
    assert report.outcome == "succeeded"
    assert seen == [("started", "b"), ("completed", "b")]


def test_a_raising_listener_is_kept_in_callback_errors_and_never_switched_off(scripts, caplog):
    calls: list[str] = []

    def broken(task_id, attempt):
        calls.append(task_id)
        raise ValueError(f"listener bug in {task_id}")

    async def broken_async(report):
        raise KeyError(report.id)

    coordinator = Coordinator(TOOLS, on_output=lambda *_: None)
    coordinator.on_task_started(broken)
    coordinator.on_task_completed(broken_async)
    after_it = []
    coordinator.on_task_started(lambda task_id, attempt: after_it.append(task_id))
    plan = [ok(scripts, f"t{n}", after=[f"t{n - 1}"] if n else []) for n in range(5)]
    report = coordinator.run(plan)
    assert report.outcome == "succeeded"  # never stops the plan
    assert calls == after_it == [f"t{n}" for n in range(5)]  # 5 failures: still on
    for task in report.tasks:
        first, second = task.callback_errors
        assert first["fields"]["exception_type"] == "ValueError"
        assert f"listener bug in {task.id}" in first["message"]
        assert second["fields"]["exception_type"] == "KeyError"
    assert "switched off" not in caplog.text


def test_task_completed_tells_every_task_once_skipped_ones_too(scripts):
    completed: list[hooks.TaskContext] = []

    @hooks.observer("task_completed")
    def end(ctx):
        completed.append(ctx)

    coordinator = Coordinator(TOOLS, hooks=[end], on_output=lambda *_: None)
    report = coordinator.run([fail(scripts, "bad"), ok(scripts, "next", after=["bad"])],
                             strategy="collect")
    by_id = {c.task_id: c for c in completed}
    assert sorted(by_id) == ["bad", "next"] and len(completed) == 2
    bad, skipped = by_id["bad"], by_id["next"]
    assert (bad.status, bad.attempt, bad.result) == ("failed", 1, None)
    assert bad.error.code == "tool/execution_failed"
    assert bad.report.model_dump() == report.task("bad").model_dump()
    assert (skipped.status, skipped.attempt, skipped.duration) == ("skipped", 0, 0.0)
    assert skipped.error.code == "async_execution/task_cancelled"


def test_a_task_stop_fires_the_cancellation_points_once_at_the_task_level(scripts):
    observed: list[tuple] = []  # on the observers' thread, in order
    listened: list[tuple] = []  # on the event loop, in order

    @hooks.observer("cancellation_started")
    def started(ctx):
        observed.append(("started", ctx.task_id, ctx.run_id is not None, ctx.reason.kind))

    @hooks.observer("cancellation_finished")
    def finished(ctx):
        observed.append(("finished", ctx.task_id, ctx.run_id is not None))

    coordinator = Coordinator(TOOLS, hooks=[started, finished], on_output=lambda *_: None)
    coordinator.on_cancellation_started(
        lambda task_id, err: listened.append(("started", task_id)))
    # registered before the cleanup: the cleanup still runs first
    coordinator.on_cancellation_completed(lambda task_id, err: listened.append(("done", task_id)))
    coordinator.on_cancel(lambda task_id, err: listened.append(("cleanup", task_id)))
    plan = [looping(scripts, "loop"), after_a_tick_fails(scripts, "bad"),
            ok(scripts, "pending", after=["loop"])]
    report = coordinator.run(plan, strategy="propagate")
    assert {t.id: t.status for t in report.tasks} == {
        "loop": "cancelled", "bad": "failed", "pending": "cancelled"}
    for task_id in ("loop", "pending"):
        assert [e for e in listened if e[1] == task_id] == [
            ("started", task_id), ("cleanup", task_id), ("done", task_id)]
    # once per task (the loop's run does not announce its own), the running one with its
    # run, the pending one without; every observer had its events when run() returned
    assert [e for e in observed if e[1] == "loop"] == [
        ("started", "loop", True, "task_cancelled"), ("finished", "loop", True)]
    assert [e for e in observed if e[1] == "pending"] == [
        ("started", "pending", False, "task_cancelled"), ("finished", "pending", False)]
    assert len(observed) == 4 and len(listened) == 6


def test_a_plain_run_still_announces_its_own_cancellation(tmp_path, language):
    from bridge import AsyncExecutionError, SpellError
    from host import Host
    from tests.conftest import EXTENSION

    seen = []

    @hooks.observer("cancellation_started")
    def started(ctx):
        seen.append((ctx.task_id, ctx.run_id))

    host = Host(TOOLS, hooks=[started])
    path = tmp_path / f"loop{EXTENSION[language]}"
    path.write_text(pick(language, "for i = 1, 500 do tools.tick{} end",
                         "async function main() { for (let i = 0; i < 500; i++) "
                         "await tools.tick({}); }"))
    run = host.new_run(path)

    async def main():
        async with anyio.create_task_group() as group:
            async def stop():
                await anyio.sleep(0.1)
                run.cancel(AsyncExecutionError.TaskCancelled(task_id="x", reason="test"))
            group.start_soon(stop)
            with pytest.raises(SpellError) as caught:
                await run.execute()
            assert caught.value.code == "async_execution/task_cancelled"

    anyio.run(main)
    deadline = time.monotonic() + 2
    while not seen and time.monotonic() < deadline:  # on a thread of its own
        time.sleep(0.01)
    assert seen == [(None, run.correlation_id)]


# -- after_task_failure ------------------------------------------------------------------


class Asked:
    """An after_task_failure controller answering ``answer(ctx)``, keeping what it saw."""

    def __init__(self, answer, **options) -> None:
        self.seen: list[hooks.TaskContext] = []

        @hooks.controller("after_task_failure", **options)
        def decide(ctx: hooks.TaskContext):
            self.seen.append(ctx)
            return answer(ctx)

        self.hook = decide

    def tries(self) -> list[tuple]:
        return [(c.task_id, c.attempt, c.status, c.error.code) for c in self.seen]


def flaky(scripts: Scripts, task_id: str, failures: int, **fields):
    return scripts.task(task_id, f'return tools.flaky{{key = "{task_id}", failures = {failures}}}',
                        f'function main() {{ return tools.flaky({{key: "{task_id}", '
                        f'failures: {failures}}}); }}', **fields)


def reads_input(scripts: Scripts, task_id: str, dep: str, **fields):
    return scripts.task(task_id, f"return {{got = args.inputs.{dep}}}",
                        f"function main(args) {{ return {{got: args.inputs.{dep}}}; }}",
                        after=[dep], **fields)


def run(scripts: Scripts, plan, *controllers, **options):
    coordinator = Coordinator(TOOLS, hooks=[c.hook if isinstance(c, Asked) else c
                                            for c in controllers],
                              on_output=lambda *_: None)
    return coordinator.run(plan, **options)


def test_continue_leaves_the_failure_and_the_tasks_own_retry_as_they_are(scripts):
    asked = Asked(lambda ctx: hooks.Continue())
    report = run(scripts, [flaky(scripts, "f", 2, retry=Retry(attempts=3, initial=0)),
                           fail(scripts, "bad")], asked)
    assert report.task("f").status == "succeeded" and report.task("f").attempts == 3
    assert sorted(asked.tries()) == [("bad", 1, "failed", "tool/execution_failed"),
                                     ("f", 1, "failed", "provider/unavailable"),
                                     ("f", 2, "failed", "provider/unavailable")]
    ctx = next(c for c in asked.seen if c.task_id == "bad")
    assert ctx.result is None and ctx.duration > 0 and ctx.language == scripts.language
    bad = report.error("bad")
    assert bad.code == "tool/execution_failed"  # as without the controller
    (entry,) = bad.context.execution_trace.hook_execution_path
    assert (entry.hook_name, entry.hook_point, entry.outcome) == (
        asked.hook.name, "after_task_failure", "continue")
    assert report.task("bad").recovered_by is None


def test_none_answers_continue(scripts):
    report = run(scripts, [fail(scripts, "bad")], Asked(lambda ctx: None))
    assert report.task("bad").status == "failed"


def test_recover_succeeds_with_the_result_dependents_see_it_and_the_report_says_so(scripts):
    other = Scripts(scripts.folder, OTHER[scripts.language])
    asked = Asked(lambda ctx: hooks.Recover({"source": "cache", "items": [1, 2]}))
    report = run(scripts, [fail(scripts, "bad"), reads_input(other, "next", "bad")],
                 asked, strategy="cancel_dependents")
    assert report.outcome == "succeeded"
    assert report.results == {"bad": {"source": "cache", "items": [1, 2]},
                              "next": {"got": {"source": "cache", "items": [1, 2]}}}
    bad = report.task("bad")
    assert (bad.status, bad.error, bad.attempts) == ("succeeded", None, 1)
    assert bad.recovered_by == asked.hook.name
    assert (bad.recovered_from["category"], bad.recovered_from["kind"]) == (
        "tool", "execution_failed")
    assert report.task("next").recovered_by is None
    data = json.loads(report.model_dump_json(), parse_constant=_no_constant)  # strict JSON
    assert data["tasks"][0]["recovered_from"]["kind"] == "execution_failed"


def _no_constant(name):
    raise ValueError(f"not strict JSON: {name}")


def test_a_timed_out_try_is_asked_too(scripts):
    asked = Asked(lambda ctx: hooks.Recover("late"))
    report = run(scripts, [looping(scripts, "slow", timeout=0.2)], asked)
    assert asked.tries() == [("slow", 1, "timed_out", "async_execution/task_timeout")]
    assert report.results == {"slow": "late"}


@pytest.mark.parametrize("bad_result", [object(), float("nan"), {1: "x"}])
def test_recover_with_what_a_script_cannot_hold_is_refused(scripts, bad_result):
    asked = Asked(lambda ctx: hooks.Recover(bad_result))
    report = run(scripts, [fail(scripts, "bad"), reads_input(scripts, "next", "bad")], asked,
                 strategy="cancel_dependents")
    bad = report.error("bad")
    assert bad.code == "hook/invalid_result"
    assert bad.fields["hook_name"] == asked.hook.name
    assert bad.fields["hook_point"] == "after_task_failure"
    assert any(e.code == "tool/execution_failed" for e in bad.chain())  # what it answered
    assert report.task("next").status == "cancelled"
    json.loads(report.model_dump_json(), parse_constant=_no_constant)


def test_retry_makes_one_more_try_counted_with_the_tasks_own(scripts):
    asked = Asked(lambda ctx: hooks.Retry())
    report = run(scripts, [flaky(scripts, "once", 1)], asked)  # no retry of its own
    once = report.task("once")
    assert (once.status, once.attempts, once.result) == ("succeeded", 2, "once after 2 tries")
    assert [(e["action"], e["attempt"], e["delay"]) for e in once.recovery] == [
        ("retry", 1, 0.0)]


def test_retry_is_bounded_by_the_one_retry_and_then_the_tasks_own_goes_on(scripts):
    asked = Asked(lambda ctx: hooks.Retry())
    report = run(scripts, [fail(scripts, "bad"),
                           fail(scripts, "own", retry=Retry(attempts=5, initial=0, on="any"))],
                 asked)
    # hook_retry(): 3 tries in all; past it, as Continue: the task's own retry makes the rest
    assert report.task("bad").attempts == 3
    assert report.task("own").attempts == 5
    assert [c.attempt for c in asked.seen if c.task_id == "own"] == [1, 2, 3, 4, 5]
    assert report.task("bad").status == report.task("own").status == "failed"


def test_retry_waits_its_delay(scripts):
    asked = Asked(lambda ctx: hooks.Retry(delay=0.3))
    began = time.monotonic()
    report = run(scripts, [flaky(scripts, "once", 1)], asked)
    assert time.monotonic() - began >= 0.3
    assert report.task("once").recovery[0]["delay"] == 0.3


def test_rethrow_fails_the_task_with_its_error_and_the_strategy_cascades(scripts):
    from bridge import ProviderError

    asked = Asked(lambda ctx: hooks.Rethrow(ProviderError.Unavailable(
        provider="search", reason=f"{ctx.task_id} gave up")))
    plan = [fail(scripts, "bad", retry=Retry(attempts=3, initial=0)),
            ok(scripts, "next", after=["bad"]), ok(scripts, "last", after=["next"]),
            ok(scripts, "free")]
    report = run(scripts, plan, asked, strategy="cancel_dependents")
    assert report.outcome == "cascading_failure"
    assert {t.id: t.status for t in report.tasks} == {
        "bad": "failed", "next": "cancelled", "last": "cancelled", "free": "succeeded"}
    assert report.root_causes == ["bad"]
    assert report.propagation == ["bad -> next", "next -> last"]
    assert report.task("bad").attempts == 1  # the controller decided: no more tries
    err = report.error("bad")
    assert (err.code, err.fields["reason"]) == ("provider/unavailable", "bad gave up")
    assert err.__cause__.code == "tool/execution_failed"  # the original as its cause
    (entry,) = err.context.execution_trace.hook_execution_path
    assert entry.outcome == "rethrow"
    rebuilt = report.to_error()
    assert rebuilt.code == "cross_engine_coordination/cascading_failure"


def test_rethrow_without_an_error_or_with_a_message(scripts):
    report = run(scripts, [fail(scripts, "same", retry=Retry(attempts=3, initial=0))],
                 Asked(lambda ctx: hooks.Rethrow()))
    assert report.error("same").code == "tool/execution_failed"
    assert report.task("same").attempts == 1
    report = run(scripts, [fail(scripts, "said")], Asked(lambda ctx: hooks.Rethrow("no way")))
    err = report.error("said")
    assert (err.code, err.fields["hook_point"]) == ("hook/rejected", "after_task_failure")
    assert err.__cause__.code == "tool/execution_failed"


@pytest.mark.parametrize("answer", [hooks.Skip("x"), hooks.Proceed(), 42, "recover"])
def test_an_answer_the_point_does_not_take_is_refused(scripts, answer):
    asked = Asked(lambda ctx: answer)
    report = run(scripts, [fail(scripts, "bad"), ok(scripts, "free")], asked)
    err = report.error("bad")
    assert err.code == "hook/invalid_result"
    assert asked.hook.name in err.message and "hooks.Recover" in err.message
    assert report.task("free").status == "succeeded"  # the plan went on


def test_a_controller_that_raises_or_hangs_fails_the_task_and_only_it(scripts):
    @hooks.controller("after_task_failure")
    def raising(ctx):
        raise RuntimeError("controller bug")

    report = run(scripts, [fail(scripts, "bad", retry=Retry(attempts=3, initial=0)),
                           ok(scripts, "free")], raising)
    err = report.error("bad")
    assert err.code == "hook/execution_failed"
    assert "controller bug" in err.message
    assert isinstance(err.__cause__, RuntimeError)  # what went wrong: the controller
    assert report.task("bad").attempts == 1
    assert report.task("free").status == "succeeded"

    @hooks.controller("after_task_failure", timeout=0.2)
    def hanging(ctx):
        time.sleep(3)

    began = time.monotonic()
    report = run(scripts, [fail(scripts, "bad")], hanging)
    assert time.monotonic() - began < 2
    err = report.error("bad")
    assert err.code == "hook/timeout"
    assert err.__cause__.code == "tool/execution_failed"


def test_controllers_chain_and_async_ones_answer_on_the_loop(scripts):
    order = []

    @hooks.controller("after_task_failure", priority=5)
    async def first(ctx):
        await anyio.sleep(0.01)
        order.append("first")
        return hooks.Continue()

    @hooks.controller("after_task_failure")
    async def second(ctx):
        order.append("second")
        return hooks.Recover(f"{ctx.task_id} recovered")

    never = Asked(lambda ctx: hooks.Rethrow("never asked"), priority=-1)
    report = run(scripts, [fail(scripts, "bad")], second, never, first)
    assert order == ["first", "second"] and never.seen == []
    assert report.results == {"bad": "bad recovered"}
    assert report.task("bad").recovered_by == second.name


def test_tasks_stopped_by_the_coordinator_are_not_asked(scripts):
    asked = Asked(lambda ctx: hooks.Continue())
    plan = [looping(scripts, "loop"), after_a_tick_fails(scripts, "bad"),
            ok(scripts, "pending", after=["loop"])]
    report = run(scripts, plan, asked, strategy="propagate")
    assert [c.task_id for c in asked.seen] == ["bad"]  # not the cancelled loop
    assert {t.id: t.status for t in report.tasks} == {
        "loop": "cancelled", "bad": "failed", "pending": "cancelled"}


def test_after_task_failure_is_fired_now():
    assert "after_task_failure" not in hooks.NOT_FIRED_YET
    assert hooks.NOT_FIRED_YET == frozenset()
    assert CALLS is not None


def test_bad_listeners_are_refused_naming_the_point():
    from bridge import ConfigurationError

    coordinator = Coordinator(TOOLS, on_output=lambda *_: None)
    with pytest.raises(ConfigurationError) as caught:
        coordinator.on_cancel("not a function")
    assert (caught.value.code, caught.value.fields["key"]) == (
        "configuration/invalid_value", "cancellation_finished")
    with pytest.raises(ConfigurationError) as caught:
        coordinator.on_task_started(print, task=3)
    assert caught.value.fields["key"] == "task_started.task"
    assert coordinator.hooks is None  # nothing half-registered


@pytest.mark.anyio
async def test_listeners_and_controllers_under_asyncio_and_trio(tmp_path):
    scripts = Scripts(tmp_path)

    @hooks.controller("after_task_failure")
    async def rescue(ctx):
        await anyio.sleep(0)
        return hooks.Recover(0)

    coordinator = Coordinator(TOOLS, hooks=[rescue], on_output=lambda *_: None)
    ended = []

    async def completed(report):
        await anyio.sleep(0)
        ended.append((report.id, report.status, report.recovered_by))

    coordinator.on_task_completed(completed)
    report = await coordinator.arun([fail(scripts, "bad"), reads_input(scripts, "next", "bad")])
    assert report.results == {"bad": 0, "next": {"got": 0}}
    assert ended == [("bad", "succeeded", rescue.name), ("next", "succeeded", None)]


ASKED = threading.Event()


@tool
def wait_until_asked() -> bool:
    """Block until an after_task_failure controller has been asked (orders two tasks)."""
    return ASKED.wait(5)


def test_a_task_cancelled_while_its_controllers_decide_ends_once_cleaned_up(scripts):
    from tests.test_coordinator import ENDED, ENDING, _ended

    ASKED.clear()

    @hooks.controller("after_task_failure", timeout=5)
    def wait_for_bad(ctx):
        if ctx.task_id == "first":  # decides only once "bad" has failed and cancelled it
            ASKED.set()
            with ENDING:
                assert ENDING.wait_for(lambda: "bad" in ENDED, timeout=4)
            return hooks.Retry()
        return hooks.Continue()

    coordinator = Coordinator([*TOOLS, wait_until_asked], hooks=[wait_for_bad],
                              on_output=lambda *_: None)
    coordinator.on_task_completed(_ended)
    events = []
    coordinator.on_cancellation_started(lambda task_id, err: events.append(("started", task_id)))
    coordinator.on_cancel(lambda task_id, err: events.append(("cleanup", task_id)))
    bad = scripts.task("bad", 'tools.wait_until_asked{} error("x")',
                       'async function main() { await tools.wait_until_asked({}); '
                       'throw new Error("x"); }')
    report = coordinator.run([fail(scripts, "first"), bad], strategy="propagate")
    first = report.task("first")
    # its own failure stands (no retry: it was cancelled), told as any stopped task
    assert (first.status, first.attempts, first.error["kind"]) == (
        "failed", 1, "execution_failed")
    assert report.task("bad").status == "failed"
    assert events == [("started", "first"), ("cleanup", "first")]
