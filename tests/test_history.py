"""The recovery history: its events, their bound, the block under a traceback, ``run
--json``'s "recovery", the plan report's per task, and the error's execution trace."""

from __future__ import annotations

import json
import textwrap

import anyio
import pytest

from bridge import SpellError
from bridge.render import recovery_summary
from host import Coordinator, Host, Retry, Task, tool
from host.history import MAX_EVENTS, RecoveryHistory, recovery_event
from tests.cli import polyspell

KEYS = {"action", "tool", "attempt", "delay", "error", "at"}
FAST = {"attempts": 3, "backoff": "exponential", "initial": 0.01, "max_delay": 1,
        "jitter": 0, "on": "any"}

RAISE = {"lua": "return tools.search{q = 'x'}",
         "javascript": "async function main() { return await tools.search({q: 'x'}); }"}
# calls search `n` times, catching its error each time, then fails with the last one
LOOP = {"lua": "local e for i = 1, args.n do local ok, err = pcall(tools.search, {q = 'x'})"
               " e = err end error(e)",
        "javascript": "async function main() { let e; for (let i = 0; i < args.n; i++) {"
                      " try { await tools.search({q: 'x'}); } catch (err) { e = err; } }"
                      " throw e; }"}


def _down(name: str, calls: list[str]):
    def fn(q: str) -> str:
        calls.append(name)
        raise RuntimeError(f"{name} is down")

    return tool(fn, name=name)


def _failing_host(calls: list[str], **search) -> Host:
    return Host([_down("search", calls), _down("search_backup", calls)],
                recovery={"search": {"retry": FAST, **search}})


def test_every_event_has_the_contract_keys(language):
    calls: list[str] = []
    host = _failing_host(calls, fallback=[{"tool": "search_backup"}, {"value": "none"}])
    run = host.new_run_source(RAISE[language], language)
    assert anyio.run(run.execute) == "none"
    assert [(e["action"], e["tool"], e["attempt"], e["delay"], e["error"], e.get("option"))
            for e in run.recovery] == [
        ("retry", "search", 1, 0.01, "tool/execution_failed", None),
        ("retry", "search", 2, 0.02, "tool/execution_failed", None),
        ("fallback", "search", 1, None, "tool/execution_failed", "search_backup"),
        ("fallback", "search", 2, None, "tool/execution_failed", "value")]
    for event in run.recovery:
        extra = {"option"} if event["action"] == "fallback" else set()
        assert set(event) == KEYS | extra
        assert event["at"].endswith("+00:00")
    assert calls == ["search"] * 3 + ["search_backup"]


def test_the_traceback_ends_with_a_summary_per_tool(language):
    calls: list[str] = []
    host = _failing_host(calls, fallback=[{"tool": "search_backup"}])
    with pytest.raises(SpellError) as info:
        host.run_source(RAISE[language], language)
    err = info.value
    assert err.code == "runtime/all_fallbacks_failed"
    text = err.to_text()
    assert text.endswith(
        "\nrecovery: search retried 2x (0.01 s → 0.02 s; tool/execution_failed), then fell "
        "back to search_backup (after tool/execution_failed)")
    assert text.count("recovery:") == 1  # once, although the cause carries a history too
    assert "\n  errors in the order tried: tool/execution_failed (search), " \
           "tool/execution_failed (search_backup)\n" in text
    assert len(err.context.metadata["recovery"]) == 3


def test_a_script_retrying_thousands_of_times_keeps_a_bounded_history(language):
    calls: list[str] = []
    host = Host([_down("search", calls)],
                recovery={"search": {"retry": {**FAST, "attempts": 5, "initial": 0}}})
    run = host.new_run_source(LOOP[language], language, args={"n": 400})
    with pytest.raises(SpellError) as info:
        anyio.run(run.execute)
    assert len(calls) == 2000  # 400 calls, 5 tries each: 1,600 retries recorded
    assert len(run.recovery) == MAX_EVENTS and run.recovery.dropped == 600
    assert run.recovery[0]["attempt"] == 1 and run.recovery[-1]["attempt"] == 4  # the newest
    err = info.value
    assert len(err.context.metadata["recovery"]) == MAX_EVENTS
    assert err.context.metadata["recovery_dropped"] == 600
    trace = err.context.execution_trace
    assert len(trace.recovery_attempts) == MAX_EVENTS and trace.recovery_dropped == 600
    lines = err.to_text().splitlines()
    assert lines[-2:] == ["recovery: search retried 1000x (0 s; tool/execution_failed)",
                          "          [... 600 more recovery events not recorded]"]
    assert len(lines) < 40


def test_the_execution_trace_keeps_the_attempts_and_json_round_trips():
    calls: list[str] = []
    host = _failing_host(calls)
    with pytest.raises(SpellError) as info:
        host.run_source(RAISE["lua"], "lua")
    err = info.value
    attempts = err.context.execution_trace.recovery_attempts
    assert [(a.action, a.attempt, a.delay) for a in attempts] == \
        [("retry", 1, 0.01), ("retry", 2, 0.02)]
    data = err.to_dict()
    again = SpellError.from_dict(data)
    assert again.to_dict() == data
    assert again.to_text() == err.to_text()


def test_a_run_without_recovery_attaches_nothing():
    host = Host([_down("search", [])])
    with pytest.raises(SpellError) as info:
        host.run_source(RAISE["lua"], "lua")
    assert "recovery" not in info.value.context.metadata
    assert "recovery:" not in info.value.to_text()
    assert info.value.context.execution_trace.recovery_attempts == []


@pytest.mark.parametrize("events", [
    [1, "x", None, {"action": 5}, {"tool": "t"}],
    [{"action": "retry", "tool": "t" * 10_000, "delay": "soon", "error": ["?"]}],
    [{"action": "fallback", "tool": "t", "option": {"x": 1}}] * 50,
    [{"action": "retry", "tool": f"tool{n}", "delay": 1e308, "error": "e"}
     for n in range(500)],
])
def test_any_history_read_back_from_json_renders_bounded(events):
    err = SpellError.from_dict({"category": "runtime", "kind": "internal_error",
                                "fields": {"reason": "x"},
                                "context": {"metadata": {"recovery": events,
                                                         "recovery_dropped": "many"}}})
    lines = err.to_text().splitlines()
    assert len(lines) <= 12
    assert all(len(line) < 400 for line in lines)


def test_the_errors_of_all_fallbacks_failed_are_listed_bounded_whatever_they_are():
    err = SpellError.from_dict({
        "category": "runtime", "kind": "all_fallbacks_failed",
        "fields": {"attempted_options": 3, "operation": "op",
                   "errors": [{"category": "x" * 500, "fields": []}, 7,
                              {"category": "tool", "kind": "timeout",
                               "fields": {"tool_name": "t"}}] * 100}})
    (line,) = [line for line in err.to_text().splitlines() if "order tried" in line]
    cut = "x" * 79 + "…"  # a code of 500 characters (kind missing): cut at 80
    assert line == (f"  errors in the order tried: {cut} (op), ?, tool/timeout (t), "
                    f"{cut}, ?, tool/timeout (t), {cut}, ?, and 292 more")


def test_the_summary_names_each_kind_of_event():
    events = [recovery_event("breaker_refused", "search", 1, "runtime/circuit_breaker_open"),
              recovery_event("restart", "tools.lua", 1, "script/resource_exhaustion"),
              recovery_event("degraded", "search", 1, "runtime/all_fallbacks_failed"),
              recovery_event("fallback", "search", 1, "tool/timeout", option="cached")]
    assert recovery_summary(events) == [
        "recovery: search refused 1x by its open circuit breaker, then answered degraded 1x "
        "(runtime/all_fallbacks_failed), then fell back to the cached result (after tool/timeout)",
        "          tools.lua restarted 1x (script/resource_exhaustion)"]


def test_a_history_keeps_its_first_half_and_the_newest():
    history = RecoveryHistory(limit=4)
    for n in range(10):
        history.add({"n": n})
    assert [e["n"] for e in history] == [0, 1, 8, 9] and history.dropped == 6
    assert history.as_json() == {"recovery": list(history), "recovery_dropped": 6}


# -- polyspell run --json -----------------------------------------------------------------

TOOLS = '''
from host import Retry, tool

CALLS = []


@tool(retry=Retry(attempts=3, backoff="fixed", initial=0.01, jitter=0, on="any"))
def flaky(fail: int) -> str:
    CALLS.append(1)
    if len(CALLS) <= fail:
        raise RuntimeError("not yet")
    return "up"
'''


@pytest.fixture
def cli_files(tmp_path):
    (tmp_path / "tools.py").write_text(TOOLS)
    (tmp_path / "call.lua").write_text("return tools.flaky{fail = args.fail}")
    (tmp_path / "call.js").write_text(
        "async function main() { return await tools.flaky({fail: args.fail}); }")
    return tmp_path


def _run_json(files, script: str, fail: int) -> dict:
    out = polyspell("run", files / script, "--tools", files / "tools.py", "--json",
                    f"fail={fail}", cwd=files)
    (line,) = out.stdout.splitlines()
    return json.loads(line)


@pytest.mark.parametrize("script", ["call.lua", "call.js"])
def test_run_json_adds_the_history_beside_the_result_or_the_error(cli_files, script):
    ok = _run_json(cli_files, script, 2)
    assert ok["ok"] and ok["result"] == "up"
    assert [(e["action"], e["tool"], e["attempt"], e["error"]) for e in ok["recovery"]] == \
        [("retry", "flaky", 1, "tool/execution_failed"),
         ("retry", "flaky", 2, "tool/execution_failed")]
    plain = _run_json(cli_files, script, 0)
    assert set(plain) == {"ok", "result"}  # nothing recovered, nothing added
    failed = _run_json(cli_files, script, 5)
    assert not failed["ok"] and failed["error"]["kind"] == "execution_failed"
    assert [e["attempt"] for e in failed["recovery"]] == [1, 2]
    assert failed["error"]["context"]["metadata"]["recovery"] == failed["recovery"]


def test_run_text_shows_the_recovery_block_under_the_traceback(cli_files):
    out = polyspell("run", cli_files / "call.lua", "--tools", cli_files / "tools.py",
                    "fail=5", cwd=cli_files)
    assert out.returncode != 0
    assert out.stderr.rstrip().endswith(
        "recovery: flaky retried 2x (0.01 s; tool/execution_failed)")


# -- the plan report ----------------------------------------------------------------------

FLAKY_CALLS: list[int] = []


@tool(retry=Retry(attempts=2, backoff="fixed", initial=0.01, jitter=0, on="any"))
def wobbly() -> str:
    """Fails three times, then works."""
    FLAKY_CALLS.append(1)
    if len(FLAKY_CALLS) <= 3:
        raise RuntimeError(f"try {len(FLAKY_CALLS)}")
    return "fine"


def test_the_plan_report_keeps_each_tasks_history_and_its_own_retries(tmp_path):
    FLAKY_CALLS.clear()
    (tmp_path / "wobble.lua").write_text("return tools.wobbly{}")
    (tmp_path / "calm.js").write_text("async function main() { return 1; }")
    report = Coordinator([wobbly]).run([
        Task(id="wobble", script=str(tmp_path / "wobble.lua"),
             retry=Retry(attempts=3, backoff="fixed", initial=0.01, jitter=0, on="any")),
        Task(id="calm", script=str(tmp_path / "calm.js"))])
    assert report.outcome == "succeeded"
    wobble = report.task("wobble")
    assert wobble.attempts == 2 and wobble.result == "fine"
    assert [(e["action"], e["tool"], e["attempt"]) for e in wobble.recovery] == [
        ("retry", "wobbly", 1),  # the first try: the tool retried once, then failed
        ("retry", str(tmp_path / "wobble.lua"), 1),  # the task retried
        ("retry", "wobbly", 1)]  # the second try: retried once, then it worked
    assert report.task("calm").recovery == [] and wobble.recovery_dropped == 0
    data = json.loads(report.model_dump_json())
    assert data["tasks"][0]["recovery"] == wobble.recovery
    from host.cli import format_plan_report

    text = format_plan_report(report)
    line = next(line for line in text.splitlines() if line.startswith("recovery in "))
    assert line == ("recovery in wobble: wobbly retried 2x (0.01 s; tool/execution_failed)")
    assert textwrap.dedent(text).count("recovery in ") == 1



def test_fallbacks_to_the_same_option_are_counted_not_repeated():
    events = [recovery_event("fallback", "forecast", 1, "network/connection",
                             option="forecast_backup") for _ in range(4)]
    events.append(recovery_event("fallback", "forecast", 2, "tool/timeout", option="value"))
    assert recovery_summary(events) == [
        "recovery: forecast fell back to forecast_backup (4x), then to a default value "
        "(after network/connection, tool/timeout)"]
