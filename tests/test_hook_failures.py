"""Observers of failures only, a run's tool-call counts at run_finished, and the error a
recovery event acted on: what error monitoring is fed with, on the real engines."""

from __future__ import annotations

import itertools

import pytest

from bridge import ConfigurationError, SpellError
from host import Host, hooks, tool
from tests.test_hooks import add, boom, run


def shaky_tool():
    """A tool ``shaky`` that fails its first try of each call (every other call)."""
    tries = itertools.count()

    @tool
    def shaky(n: int) -> int:
        """Fails every other call."""
        if next(tries) % 2 == 0:
            raise RuntimeError("first try")
        return n

    return shaky


RETRY_ONCE = {"shaky": {"retry": {"attempts": 2, "initial": 0, "jitter": 0, "on": "any"}}}


def test_a_failures_only_observer_sees_failed_and_recovered_calls_only(language):
    every, failures = [], []

    @hooks.observer("tool_call_finished")
    def all_calls(ctx):
        every.append(ctx.tool)

    @hooks.observer("tool_call_finished", failures_only=True)
    def failed_calls(ctx):
        failures.append((ctx.tool, None if ctx.error is None else ctx.error.code))

    host = Host([add, boom, shaky_tool()], hooks=[all_calls, failed_calls],
                recovery=RETRY_ONCE)
    run(host, language,
        "tools.add({a = 1, b = 1}) pcall(tools.boom, {reason = 'r'}) tools.shaky({n = 1}) "
        "tools.add({a = 2, b = 2})",
        "tools.add({a: 1, b: 1}); try { tools.boom({reason: 'r'}); } catch (e) {} "
        "tools.shaky({n: 1}); tools.add({a: 2, b: 2});")
    assert every == ["add", "boom", "shaky", "add"]
    # boom failed; shaky succeeded only because its retry answered for a failure
    assert failures == [("boom", "tool/execution_failed"), ("shaky", None)]


def test_with_only_failures_only_observers_a_plain_call_is_not_queued(language):
    seen = []

    @hooks.observer("tool_call_finished", failures_only=True)
    def failed_calls(ctx):
        seen.append(ctx.tool)

    host = Host([add], hooks=[failed_calls])
    run(host, language, "for i = 1, 50 do tools.add({a = i, b = 1}) end",
        "for (let i = 1; i <= 50; i++) tools.add({a: i, b: 1});")
    assert seen == []
    assert not host.hooks._delivery._started  # nothing was ever queued


def test_run_finished_counts_the_runs_tool_calls(language):
    finished = []

    @hooks.observer("run_finished")
    def done(ctx):
        finished.append(ctx.tool_calls)

    host = Host([add, boom], hooks=[done])
    run(host, language,
        "for i = 1, 3 do tools.add({a = i, b = 1}) end pcall(tools.boom, {reason = 'r'})",
        "for (let i = 1; i <= 3; i++) tools.add({a: i, b: 1}); "
        "try { tools.boom({reason: 'r'}); } catch (e) {}")
    (stats,) = finished
    assert set(stats) == {"add", "boom"}
    assert (stats["add"].calls, stats["add"].failures) == (3, 0)
    assert (stats["boom"].calls, stats["boom"].failures) == (1, 1)
    for each in stats.values():
        assert sum(each.buckets) == each.calls
        assert len(each.buckets) == len(hooks.DURATION_BUCKETS) + 1
        assert each.seconds > 0


def test_a_failures_only_run_finished_observer_sees_failed_runs(language):
    seen = []

    @hooks.observer("run_finished", failures_only=True)
    def failed_runs(ctx):
        seen.append(ctx.error.code)

    host = Host([add, boom], hooks=[failed_runs])
    run(host, language, "return tools.add({a = 1, b = 1})", "return tools.add({a: 1, b: 1});")
    with pytest.raises(SpellError):
        run(host, language, "return tools.boom({reason = 'r'})",
            "return tools.boom({reason: 'r'});")
    assert seen == ["tool/execution_failed"]


def test_a_retry_event_carries_the_error_it_retried(language):
    failures = []

    @hooks.observer("retry")
    def retried(ctx):
        failures.append(ctx.failure)

    host = Host([shaky_tool()], hooks=[retried], recovery=RETRY_ONCE)
    run(host, language, "return tools.shaky({n = 1})", "return tools.shaky({n: 1});")
    (failure,) = failures
    assert isinstance(failure, SpellError) and "first try" in failure.message


@pytest.mark.parametrize("point", ["tool_call_started", "retry", "output"])
def test_failures_only_is_refused_where_nothing_fails(point):
    with pytest.raises(ConfigurationError) as info:
        hooks.observer(point, failures_only=True)(lambda ctx: None)
    assert "failures_only" in info.value.message
