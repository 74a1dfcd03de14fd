"""``Coordinator(hooks=...)``: ``task_started`` and ``task_finished`` observers, run by
the one dispatcher of the coordinator's hosts, on real Lua and JavaScript plans."""

from __future__ import annotations

import threading
import time

import pytest

from host import Coordinator, Retry, hooks
from tests.test_coordinator import (
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
