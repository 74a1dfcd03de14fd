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
