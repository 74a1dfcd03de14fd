"""Degrade (optional tools answer a degraded value), degradation levels following the
host's breakers, fail_fast and the run's cleanups, on the real engines."""

from __future__ import annotations

import asyncio
import json
import time

import anyio
import pytest

from bridge import SpellError
from host import Coordinator, Host, Retry, Task, tool
from tests.cli import polyspell

# Calls `search` once: {ok, value} (value missing in Lua for nil), or {ok = false, code}.
CALL = {"lua": "local ok, r = pcall(tools.search, {q = 'x'})"
               " if ok then return {ok = true, value = r} end"
               " return {ok = false, code = r.category .. '/' .. r.kind}",
        "javascript": "async function main() { try { const r = await tools.search({q: 'x'});"
                      " return {ok: true, value: r}; }"
                      " catch (e) { return {ok: false, code: e.code}; } }"}


def _failing(name: str = "search", exc: type[Exception] = ConnectionError):
    calls: list[str] = []

    def fn(q: str) -> list:
        calls.append(q)
        raise exc("down")

    fn.__name__ = name
    return fn, calls


def _run(host: Host, source: str, language: str):
    run = host.new_run_source(source, language)
    return run, anyio.run(run.execute)


def _answer(result: dict) -> object:
    """The value the script saw, or the error code it caught."""
    return result.get("value") if result["ok"] else result["code"]


def _script(language: str) -> str:
    return CALL[language]


# -- an optional tool ----------------------------------------------------------------------


def test_optional_tool_with_open_breaker_answers_degraded_and_the_run_records_it(language):
    search, calls = _failing()
    host = Host([search], recovery={"search": {
        "optional": True, "degraded": ["nothing"],
        "breaker": {"failure_threshold": 1, "recovery_timeout": 60}}})
    host.breakers.force_open("search")
    run, result = _run(host, _script(language), language)
    assert _answer(result) == ["nothing"]
    assert calls == []  # the breaker refused: never called
    assert run.degraded == ["search"]
    degraded = [e for e in run.recovery if e["action"] == "degraded"]
    assert [(e["tool"], e["error"]) for e in degraded] == \
        [("search", "runtime/circuit_breaker_open")]


def test_an_optional_tool_degrades_on_its_own_failure_and_after_retries(language):
    search, calls = _failing()
    host = Host([tool(search, optional=True,
                      retry=Retry(attempts=3, backoff="fixed", initial=0, jitter=0,
                                  on="any"))])
    run, result = _run(host, _script(language), language)
    assert _answer(result) is None  # degraded defaults to null
    assert len(calls) == 3  # retries first, then degraded
    assert [e["action"] for e in run.recovery] == ["retry", "retry", "degraded"]
    assert run.recovery[-1]["error"] == "network/connection"


def test_a_tool_not_marked_optional_fails(language):
    search, calls = _failing()
    host = Host([search], recovery={"search": {"breaker": {"failure_threshold": 1,
                                                           "recovery_timeout": 60}}})
    host.breakers.force_open("search")
    run, result = _run(host, _script(language), language)
    assert _answer(result) == "runtime/circuit_breaker_open"
    assert run.degraded == [] and calls == []


def test_fallbacks_failing_then_degraded(language):
    search, calls = _failing()
    backup, backup_calls = _failing("backup", TimeoutError)
    host = Host([search, backup], recovery={"search": {
        "optional": True, "degraded": {"hits": 0}, "fallback": [{"tool": "backup"}]}})
    run, result = _run(host, _script(language), language)
    assert _answer(result) == {"hits": 0}
    assert calls == ["x"] and backup_calls == ["x"]
    assert [(e["action"], e["error"]) for e in run.recovery] == [
        ("fallback", "network/connection"), ("degraded", "runtime/all_fallbacks_failed")]


def test_not_degraded_the_scripts_mistakes(language):
    search, calls = _failing()
    host = Host([tool(search, optional=True)])
    source = {"lua": "local ok, e = pcall(tools.search, {nope = 1}) return e.kind",
              "javascript": "async function main() { try { await tools.search({nope: 1}); }"
                            " catch (e) { return e.kind; } }"}[language]
    run, result = _run(host, source, language)
    assert result == "invalid_parameters"
    assert run.degraded == [] and calls == []


def test_not_degraded_the_runs_time_limit(language):
    @tool(optional=True)
    async def slow(q: str) -> str:
        await asyncio.sleep(10)
        return "late"

    host = Host([slow], timeout=0.5)
    source = {"lua": "pcall(tools.slow, {q = 'x'}) return 'swallowed'",
              "javascript": "async function main() { try { await tools.slow({q: 'x'}); }"
                            " catch (e) {} return 'swallowed'; }"}[language]
    run = host.new_run_source(source, language)
    started = time.monotonic()
    with pytest.raises(SpellError) as info:
        anyio.run(run.execute)
    assert info.value.code == "script/resource_exhaustion"
    assert time.monotonic() - started < 5
    assert run.degraded == []


def test_not_degraded_a_cancellation(language):
    @tool(optional=True)
    async def slow(q: str) -> str:
        await asyncio.sleep(10)
        return "late"

    host = Host([slow])
    source = {"lua": "pcall(tools.slow, {q = 'x'}) return 'swallowed'",
              "javascript": "async function main() { try { await tools.slow({q: 'x'}); }"
                            " catch (e) {} return 'swallowed'; }"}[language]
    run = host.new_run_source(source, language)
    stop = SpellError(category="async_execution", kind="task_cancelled", task_id="t",
                      reason="test")

    async def main():
        async with anyio.create_task_group() as group:
            async def cancel():
                await anyio.sleep(0.3)
                run.cancel(stop)
            group.start_soon(cancel)
            with pytest.raises(SpellError) as info:
                await run.execute()
            return info.value

    err = anyio.run(main)
    assert err.code == "async_execution/task_cancelled"
    assert run.degraded == []


def test_bad_degrade_values_are_refused_naming_the_field():
    search, _ = _failing()
    cases = [({"optional": "yes"}, "search.optional"),
             ({"degraded": []}, "search.degraded"),
             ({"optional": True, "degraded": {1, 2}}, "search.degraded"),
             ({"fail_fast": 1}, "search.fail_fast")]
    for policy, key in cases:
        with pytest.raises(SpellError) as info:
            Host([search], recovery={"search": policy})
        assert info.value.code == "configuration/invalid_value", policy
        assert info.value.fields["key"] == key, (policy, info.value.fields)


# -- the CLI and the plan report -------------------------------------------------------------


def test_cli_prints_a_line_per_degraded_tool(tmp_path):
    tools = tmp_path / "tools.py"
    tools.write_text("from host import tool\n\n"
                     "@tool(optional=True, degraded=[])\n"
                     "def search(q: str) -> list:\n"
                     "    raise ConnectionError('down')\n\n"
                     "@tool\n"
                     "def fine() -> str:\n"
                     "    return 'ok'\n")
    script = tmp_path / "agent.lua"
    script.write_text("local a = tools.search({q = 'x'}) local b = tools.search({q = 'y'})"
                      " return {n = #a + #b, fine = tools.fine({})}")
    out = polyspell("run", script, "--tools", tools)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"n": 0, "fine": "ok"}
    assert out.stderr.splitlines()[-1] == \
        "polyspell: ran degraded: search answered [] (2 calls: network/connection)"
    out = polyspell("run", script, "--tools", tools, "--json")
    assert json.loads(out.stdout)["result"] == {"n": 0, "fine": "ok"}
    assert "ran degraded: search" in out.stderr


def test_plan_report_marks_the_tasks_that_ran_degraded(tmp_path):
    search, _ = _failing()
    degraded = tmp_path / "degraded.lua"
    degraded.write_text("local r = tools.search({q = 'x'}) return r == nil")
    plain = tmp_path / "plain.js"
    plain.write_text("async function main() { return 1; }")
    coordinator = Coordinator([tool(search, optional=True)])
    report = coordinator.run([Task(id="a", script=str(degraded)),
                              Task(id="b", script=str(plain))])
    tasks = {task.id: task for task in report.tasks}
    assert tasks["a"].status == "succeeded" and tasks["a"].result is True
    assert tasks["a"].degraded == ["search"] and tasks["b"].degraded == []
    assert json.loads(report.model_dump_json())["tasks"][0]["degraded"] == ["search"]


# -- degradation levels ----------------------------------------------------------------------

LEVELS = {"levels": [{"name": "cached", "when_open": 1},
                     {"name": "skip_optional", "when_open": 2},
                     {"name": "fail", "when_open": 3}]}


def _levels_host():
    """A host with three levels; tools a, b, c with breakers; search (cached fallback)
    and extra (optional), each counting its calls."""
    calls: dict[str, int] = {}

    def counted(name, answer):
        def fn(q: str) -> str:
            calls[name] = calls.get(name, 0) + 1
            if answer is None:
                raise ConnectionError("down")
            return f"{answer} {q}"

        fn.__name__ = name
        return fn

    breaker = {"failure_threshold": 1, "recovery_timeout": 60}
    host = Host([counted("a", None), counted("b", None), counted("c", None),
                 counted("search", "fresh"), counted("extra", "more")],
                recovery={"a": {"breaker": breaker}, "b": {"breaker": breaker},
                          "c": {"breaker": breaker},
                          "search": {"fallback": [{"cached": True}]},
                          "extra": {"optional": True, "degraded": "skipped"}},
                degradation=LEVELS)
    return host, calls


SEARCH_AND_EXTRA = {
    "lua": "local function try(name) local ok, r = pcall(tools[name], {q = 'x'})"
           " if ok then return r end return r.category .. '/' .. r.kind end"
           " return {try('search'), try('extra')}",
    "javascript": "async function main() { const tryIt = async (name) => {"
                  " try { return await tools[name]({q: 'x'}); }"
                  " catch (e) { return e.code; } };"
                  " return [await tryIt('search'), await tryIt('extra')]; }"}

FAIL_A = {"lua": "local ok, e = pcall(tools.a, {q = 'x'}) return e.kind",
          "javascript": "async function main() { try { await tools.a({q: 'x'}); }"
                        " catch (e) { return e.kind; } }"}


def test_levels_entered_and_left_as_breakers_open_and_close(language):
    host, calls = _levels_host()
    changes: list[tuple] = []
    host.degradation.on_change(lambda e: changes.append((e["previous"], e["level"])))
    assert host.degradation.level is None
    assert host.run_source(SEARCH_AND_EXTRA[language], language) == ["fresh x", "more x"]

    # a real failure opens a's breaker: level "cached", recorded in the run in progress
    run, kind = _run(host, FAIL_A[language], language)
    assert kind == "connection"
    assert host.degradation.level.name == "cached"
    assert [(e["action"], e.get("level"), e.get("previous")) for e in run.recovery
            if e["action"] == "degradation"] == [("degradation", "cached", None)]
    run, answers = _run(host, SEARCH_AND_EXTRA[language], language)
    assert answers == ["fresh x", "more x"]  # answered from the cache, extra still called
    assert calls["search"] == 1 and calls["extra"] == 2
    assert [(e["action"], e["tool"], e["level"]) for e in run.recovery] == \
        [("fallback", "search", "cached")]

    host.breakers.force_open("b")  # two open: optional tools are skipped
    run, answers = _run(host, SEARCH_AND_EXTRA[language], language)
    assert answers == ["fresh x", "skipped"] and calls["extra"] == 2
    assert run.degraded == ["extra"]

    host.breakers.force_open("c")  # three: every call fails at once
    run, answers = _run(host, SEARCH_AND_EXTRA[language], language)
    assert answers == ["runtime/circuit_breaker_open"] * 2
    assert calls["search"] == 1 and calls["extra"] == 2 and run.degraded == []

    for name in ("c", "b", "a"):
        host.breakers.reset(name)
    assert host.degradation.level is None
    assert host.run_source(SEARCH_AND_EXTRA[language], language) == ["fresh x", "more x"]
    assert changes == [(None, "cached"), ("cached", "skip_optional"),
                       ("skip_optional", "fail"), ("fail", "skip_optional"),
                       ("skip_optional", "cached"), ("cached", None)]
    assert [e["seq"] for e in host.degradation.history] == [1, 2, 3, 4, 5, 6]


def test_the_fail_levels_error_names_the_level_and_the_open_breakers():
    host, calls = _levels_host()
    for name in ("a", "b", "c"):
        host.breakers.force_open(name)
    with pytest.raises(SpellError) as info:
        host.run_source("return tools.extra({q = 'x'})", "lua")
    err = info.value
    assert err.code == "runtime/circuit_breaker_open" and not err.retryable
    assert err.fields["service"] == "extra"
    assert err.context.metadata["degradation"] == {"level": "fail",
                                                   "open_breakers": ["a", "b", "c"]}
    assert calls == {}


def test_a_level_is_left_when_a_half_open_probe_succeeds(language):
    state = {"down": True}

    def flaky(q: str) -> str:
        if state["down"]:
            raise ConnectionError("down")
        return "up"

    host = Host([flaky], recovery={"flaky": {"breaker": {"failure_threshold": 1,
                                                         "recovery_timeout": 0.1}}},
                degradation={"levels": [{"name": "careful", "mode": "cached",
                                         "when_open": 1}]})
    events: list = []
    host.degradation.on_change(events.append)
    call = {"lua": "local ok, r = pcall(tools.flaky, {q = 'x'}) return ok",
            "javascript": "async function main() { try { await tools.flaky({q: 'x'});"
                          " return true; } catch (e) { return false; } }"}[language]
    assert host.run_source(call, language) is False
    assert host.degradation.level.name == "careful"
    state["down"] = False
    time.sleep(0.15)
    assert host.run_source(call, language) is True  # the probe closes the breaker
    assert host.degradation.level is None
    assert [(e["previous"], e["level"], e["tool"]) for e in events] == \
        [(None, "careful", "flaky"), ("careful", None, "flaky")]


def test_a_listener_that_raises_is_kept_not_raised_into_the_call():
    host, _ = _levels_host()
    host.degradation.on_change(lambda event: 1 / 0)
    seen: list = []
    host.degradation.on_change(seen.append)
    assert host.run_source(FAIL_A["lua"], "lua") == "connection"
    assert len(seen) == 1
    assert [e.code for e in host.degradation.listener_errors] == ["runtime/python_exception"]


@pytest.mark.parametrize(("levels", "key"), [
    ([{"name": "cached", "when_open": 0}], "degradation.levels.0.when_open"),
    ([{"name": "sometimes", "when_open": 1}], "degradation.levels.0"),
    ([{"name": "x", "when_open": 1, "mode": "panic"}], "degradation.levels.0.mode"),
    ([{"name": "cached", "when_open": True}], "degradation.levels.0.when_open"),
    ([{"name": "fail", "when_open": 1}, {"name": "cached", "when_open": 2}],
     "degradation.levels"),
    ([{"name": "cached", "when_open": 2}, {"name": "fail", "when_open": 2}],
     "degradation.levels"),
    ([], "degradation.levels"),
])
def test_bad_levels_are_refused_naming_the_field(levels, key):
    with pytest.raises(SpellError) as info:
        Host([], degradation={"levels": levels})
    assert info.value.code == "configuration/invalid_value"
    assert info.value.fields["key"] == key, info.value.fields


def test_bad_degradation_table_is_refused():
    for given in (["cached"], {"level": []}):
        with pytest.raises(SpellError) as info:
            Host([], degradation=given)
        assert info.value.code == "configuration/invalid_value"
        assert info.value.fields["key"].startswith("degradation")


# -- fail_fast and the run's cleanups --------------------------------------------------------


def test_fail_fast_overrides_a_retry_and_ends_the_run_after_its_cleanups(language):
    search, calls = _failing()
    host = Host([tool(search, retry=Retry(attempts=3, backoff="fixed", initial=0, jitter=0,
                                          on="any"))],
                recovery={"search": {"fail_fast": True}})
    source = {"lua": "local ok, e = pcall(tools.search, {q = 'x'}) return 'swallowed'",
              "javascript": "async function main() { try { await tools.search({q: 'x'}); }"
                            " catch (e) {} return 'swallowed'; }"}[language]
    run = host.new_run_source(source, language)
    order: list = []
    run.on_cleanup(lambda err: order.append(("first", err.code)))

    def broken(err):
        order.append(("broken", err.code))
        raise OSError("cleanup broke")

    run.on_cleanup(broken)

    async def last(err):
        order.append(("last", err.code))

    run.on_cleanup(last)
    with pytest.raises(SpellError) as info:
        anyio.run(run.execute)
    err = info.value
    assert err.code == "network/connection"  # the tool's error, though the script caught it
    assert calls == ["x"]  # no retry
    assert order == [("last", "network/connection"), ("broken", "network/connection"),
                     ("first", "network/connection")]
    assert [e.code for e in run.cleanup_errors] == ["runtime/python_exception"]
    assert "cleanup broke" in err.context.metadata["cleanup_errors"][0]["message"]
    assert run.recovery == []


def test_without_fail_fast_the_same_tool_is_retried(language):
    search, calls = _failing()
    host = Host([tool(search, retry=Retry(attempts=3, backoff="fixed", initial=0, jitter=0,
                                          on="any"))])
    assert host.run_source(CALL[language], language)["code"] == "network/connection"
    assert len(calls) == 3


def test_cleanups_run_once_on_success_and_a_failing_one_fails_the_run():
    host = Host([])
    run = host.new_run_source("return 7", "lua")
    seen: list = []
    run.on_cleanup(seen.append)
    assert anyio.run(run.execute) == 7
    assert seen == [None]
    run = host.new_run_source("return 7", "lua")
    run.on_cleanup(lambda err: 1 / 0)
    with pytest.raises(SpellError) as info:
        anyio.run(run.execute)
    assert "ZeroDivisionError" in info.value.message
    with pytest.raises(SpellError) as info:
        run.on_cleanup("not a function")
    assert info.value.fields["key"] == "on_cleanup"


def test_a_fail_fast_task_fails_with_the_tools_error_not_as_a_cancellation(tmp_path):
    search, calls = _failing()
    script = tmp_path / "task.js"
    script.write_text("async function main() { try { await tools.search({q: 'x'}); }"
                      " catch (e) {} return 'swallowed'; }")
    coordinator = Coordinator([tool(search, fail_fast=True)])
    cancelled: list = []
    coordinator.on_cancel(lambda task_id, err: cancelled.append(task_id))
    report = coordinator.run([Task(id="t", script=str(script))])
    task = report.tasks[0]
    assert task.status == "failed" and task.error["category"] == "network"
    assert cancelled == [] and calls == ["x"]


def test_degraded_tools_are_known_past_the_historys_cap(language):
    search, calls = _failing()
    late, late_calls = _failing("late")
    host = Host([tool(search, optional=True), tool(late, optional=True, degraded="x")])
    source = {"lua": "for i = 1, 1100 do tools.search({q = 'x'}) end"
                     " return tools.late({q = 'y'})",
              "javascript": "async function main() { for (let i = 0; i < 1100; i++)"
                            " await tools.search({q: 'x'}); return await tools.late({q: 'y'}); }"
              }[language]
    run, result = _run(host, source, language)
    assert result == "x" and len(calls) == 1100 and late_calls == ["y"]
    assert run.recovery.dropped > 0  # the history is full: some events were dropped
    assert run.degraded == ["search", "late"]
    assert run.degraded_reasons == {"search": {"network/connection": 1100},
                                    "late": {"network/connection": 1}}
