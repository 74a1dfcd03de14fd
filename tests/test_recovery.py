"""Recovery policies wired to tools: @tool(retry=..., breaker=...), Host(recovery=...),
the host's shared breakers, and the policies composed in their fixed order."""

from __future__ import annotations

import pytest

from bridge import SpellError
from host import CircuitBreaker, Coordinator, Host, Retry, Task, tool

CALL = {"lua": "local ok, e = pcall(tools.service, {}) if ok then return e end"
               " return e.category .. '/' .. e.kind",
        "javascript": 'async function main() { try { return await tools.service({}); }'
                      ' catch (e) { return e.code; } }'}


def _service(failures: int):
    calls: list[int] = []

    def service() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise RuntimeError("down")  # a plain failure (a ConnectionError: network/...)
        return "up"

    return service, calls


def test_a_breaker_on_a_tool_opens_and_refuses_without_calling_it(language):
    service, calls = _service(100)
    host = Host([tool(service, breaker=CircuitBreaker(failure_threshold=2,
                                                      recovery_timeout=60))])
    codes = [host.run_source(CALL[language], language) for _ in range(4)]
    assert codes == ["tool/execution_failed", "tool/execution_failed",
                     "runtime/circuit_breaker_open", "runtime/circuit_breaker_open"]
    assert len(calls) == 2  # refused calls never reach the tool
    assert host.breakers.state("service") == "open"  # shared by every run of the host
    host.breakers.reset("service")
    assert host.run_source(CALL[language], language) == "tool/execution_failed"
    assert len(calls) == 3


def test_retry_around_a_breaker_waits_for_its_half_open_probe(language):
    service, calls = _service(2)
    host = Host([tool(service,
                      retry=Retry(attempts=5, backoff="fixed", initial=0.01, jitter=0,
                                  on="any"),
                      breaker=CircuitBreaker(failure_threshold=2, recovery_timeout=0.05))])
    run = host.new_run_source(CALL[language], language)
    import anyio

    assert anyio.run(run.execute) == "up"
    assert len(calls) == 3  # two failures, then the probe after the breaker's timeout
    errors = [event["error"] for event in run.recovery if event["action"] == "retry"]
    assert errors[:2] == ["tool/execution_failed", "tool/execution_failed"]
    assert "runtime/circuit_breaker_open" in errors  # refused, then retried after it
    waited = [e["delay"] for e in run.recovery
              if e["action"] == "retry" and e["error"] == "runtime/circuit_breaker_open"]
    assert all(delay >= 0.01 for delay in waited)  # retry_after is the floor
    assert host.breakers.state("service") == "closed"


def test_host_recovery_sets_a_breaker_by_tool_name_and_checks_it(language):
    service, calls = _service(100)
    host = Host([tool(service)], recovery={"service": {"breaker": {"failure_threshold": 1,
                                                                   "recovery_timeout": 60}}})
    assert [host.run_source(CALL[language], language) for _ in range(2)] == \
        ["tool/execution_failed", "runtime/circuit_breaker_open"]
    assert len(calls) == 1
    with pytest.raises(SpellError) as info:
        Host([tool(service)], recovery={"service": {"breaker": {"half_open_calls": 0}}})
    assert info.value.code == "configuration/invalid_value"
    assert info.value.fields["key"] == "service.breaker.half_open_calls"


def test_a_coordinators_tasks_share_one_breaker(tmp_path):
    service, calls = _service(100)
    script = tmp_path / "task.lua"
    script.write_text(CALL["lua"])
    coordinator = Coordinator([tool(service, breaker=CircuitBreaker(failure_threshold=2,
                                                                    recovery_timeout=60))])
    plan = [Task(id=f"t{i}", script=str(script), after=[f"t{i - 1}"] if i else [])
            for i in range(4)]
    report = coordinator.run(plan)
    assert [report.results[f"t{i}"] for i in range(4)] == [
        "tool/execution_failed", "tool/execution_failed",
        "runtime/circuit_breaker_open", "runtime/circuit_breaker_open"]
    assert len(calls) == 2


def test_an_attempt_timeout_inside_a_retry_and_a_total_that_ends_the_retries(language):
    import threading

    release = threading.Event()
    calls: list[int] = []

    def slow() -> str:
        calls.append(1)
        if len(calls) < 3:
            release.wait(5)  # stuck: the attempt timeout ends it
            return "late"
        return "up"

    host = Host([tool(slow, name="service")], recovery={"service": {
        "retry": {"attempts": 5, "backoff": "fixed", "initial": 0.01, "jitter": 0,
                  "on": ["tool/timeout"]},
        "timeout": {"attempt": 0.1, "total": 10}}})
    try:
        assert host.run_source(CALL[language], language) == "up"
    finally:
        release.set()
    assert len(calls) == 3  # two attempts timed out, the third answered
    release.clear()
    calls.clear()
    host = Host([tool(slow, name="service")], recovery={"service": {
        "retry": {"attempts": 50, "backoff": "fixed", "initial": 0.01, "jitter": 0,
                  "on": ["tool/timeout"]},
        "timeout": {"attempt": 5, "total": 0.2}}})
    import time

    started = time.monotonic()
    try:
        assert host.run_source(CALL[language], language) == "tool/timeout"
    finally:
        release.set()
    assert time.monotonic() - started < 3  # the total ended it, not the 5 s attempt
    assert len(calls) == 1  # no retry can start once the total is spent


def test_a_bad_timeout_policy_is_refused():
    service, _ = _service(0)
    with pytest.raises(SpellError) as info:
        Host([tool(service)], recovery={"service": {"timeout": {"attempt": 0}}})
    assert info.value.fields["key"] == "service.timeout.attempt"


# -- fallback -----------------------------------------------------------------------------

FALLBACK_CALL = {"lua": "local ok, r = pcall(tools.service, {q = 'x'})"
                        " if ok then return r end return {r.category .. '/' .. r.kind,"
                        " r.fields.attempted_options}",
                 "javascript": "async function main() { try { return await tools.service("
                               "{q: 'x'}); } catch (e) { return [`${e.category}/${e.kind}`,"
                               " e.fields.attempted_options]; } }"}


def _failing(name: str, calls: list[str]):
    def fn(q: str) -> str:
        calls.append(name)
        raise RuntimeError(f"{name} is down")

    return tool(fn, name=name)


def test_fallbacks_are_tried_in_order_and_a_value_ends_them(language):
    calls: list[str] = []
    host = Host([_failing("service", calls), _failing("backup", calls)],
                recovery={"service": {"fallback": [{"tool": "backup"}, {"value": "default"}]}})
    run = host.new_run_source(FALLBACK_CALL[language], language)
    import anyio

    assert anyio.run(run.execute) == "default"
    assert calls == ["service", "backup"]
    assert [e["action"] for e in run.recovery] == ["fallback", "fallback"]


def test_when_every_fallback_fails_every_error_is_kept(language):
    calls: list[str] = []
    host = Host([_failing("service", calls), _failing("backup", calls),
                 _failing("other", calls)],
                recovery={"service": {"fallback": [{"tool": "backup"}, {"tool": "other"},
                                                   {"cached": True}]}})
    assert host.run_source(FALLBACK_CALL[language], language) == \
        ["runtime/all_fallbacks_failed", 3]
    source = pick_raise(language)
    with pytest.raises(SpellError) as info:
        host.run_source(source, language)
    err = info.value
    assert err.code == "runtime/all_fallbacks_failed"
    assert [e["fields"]["tool_name"] for e in err.fields["errors"]] == \
        ["service", "backup", "other"]
    assert err.cause is not None and err.cause.fields["tool_name"] == "service"
    again = SpellError.from_json(err.to_json())  # every error survives JSON
    assert [e["message"] for e in again.fields["errors"]] == \
        [e["message"] for e in err.fields["errors"]]


def pick_raise(language: str) -> str:
    return {"lua": "return tools.service{q = 'x'}",
            "javascript": "async function main() { return await tools.service({q: 'x'}); }"
            }[language]


def test_the_cache_answers_with_the_last_good_result_and_an_open_breaker_is_skipped(language):
    state = {"up": True}
    calls: list[str] = []

    def service(q: str) -> str:
        calls.append("service")
        if not state["up"]:
            raise RuntimeError("down")
        return f"fresh {q}"

    backup_calls: list[str] = []
    host = Host([tool(service), _failing("backup", backup_calls)], recovery={
        "service": {"fallback": [{"tool": "backup"}, {"cached": True, "max_age": 60}]},
        "backup": {"breaker": {"failure_threshold": 1, "recovery_timeout": 60}}})
    assert host.run_source(pick_raise(language), language) == "fresh x"
    state["up"] = False
    assert host.run_source(pick_raise(language), language) == "fresh x"  # from the cache
    assert backup_calls == ["backup"]  # tried once: it failed and its breaker opened
    assert host.run_source(pick_raise(language), language) == "fresh x"
    assert backup_calls == ["backup"]  # skipped: its breaker is open


@pytest.mark.parametrize("fallback, key", [
    ([{"tool": "nowhere"}], "service.fallback"),
    ([{"tool": "service"}], "service.fallback"),
    ([], "service.fallback.options"),
    ([{"tool": "backup", "value": 1}], "service.fallback.options.0"),
])
def test_a_bad_fallback_is_refused(fallback, key):
    calls: list[str] = []
    with pytest.raises(SpellError) as info:
        Host([_failing("service", calls), _failing("backup", calls)],
             recovery={"service": {"fallback": fallback}})
    assert info.value.code == "configuration/invalid_value"
    assert info.value.fields["key"] == key


def test_a_decorated_fallback_to_a_tools_file_function_of_the_other_language(language,
                                                                            tmp_path):
    from host import Fallback

    other = "javascript" if language == "lua" else "lua"
    library = tmp_path / ("backup.js" if other == "javascript" else "backup.lua")
    library.write_text({"lua": "return {backup = function(p) return 'lua backup ' .. p.q end}",
                        "javascript": "exports.backup = function (p) {"
                                      " return 'javascript backup ' + p.q; };"}[other])
    calls: list[str] = []

    def service(q: str) -> str:
        calls.append(q)
        raise RuntimeError("down")

    host = Host([tool(service, fallback=Fallback(options=[{"tool": "backup"}])), library])
    assert host.run_source(pick_raise(language), language) == f"{other} backup x"
    assert calls == ["x"]
