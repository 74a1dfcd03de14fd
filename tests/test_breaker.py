"""Circuit breakers (issue 11): the policy, the state machine, and the layer on real engines."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from bridge import AsyncExecutionError, SpellError
from bridge.hierarchy import (
    NetworkError,
    ProviderError,
    ScriptError,
    SpellRuntimeError,
    ToolError,
)
from host import Breakers, CircuitBreaker, Host, tool
from host.calls import DeadlineReached
from host.recovery.breaker import Breaker, counts_against
from tests.conftest import pick


class Clock:
    """A clock the test moves by hand (breakers read time only through their clock)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def failing() -> SpellError:
    return ToolError.ExecutionFailed(tool_name="search", reason="down")


def make(clock: Clock, **policy: Any) -> Breaker:
    return Breaker("search", CircuitBreaker(**policy), clock=clock)


def succeed(breaker: Breaker) -> None:
    breaker.release(breaker.admit(), True)


def fail(breaker: Breaker) -> None:
    breaker.release(breaker.admit(), False)


def refusal(breaker: Breaker) -> SpellError:
    with pytest.raises(SpellError) as info:
        breaker.admit()
    return info.value


# -- the policy ------------------------------------------------------------------------------


def test_the_policy_takes_the_issues_toml_fields_and_defaults():
    policy = CircuitBreaker.model_validate(
        {"failure_threshold": 3, "recovery_timeout": 10, "half_open_calls": 1,
         "success_threshold": 1})
    assert (policy.failure_threshold, policy.recovery_timeout, policy.half_open_calls,
            policy.success_threshold, policy.failure_ratio) == (3, 10.0, 1, 1, None)
    assert CircuitBreaker.model_validate(policy.model_dump()) == policy


@pytest.mark.parametrize("bad", [
    {"half_open_calls": 0}, {"failure_threshold": 0}, {"success_threshold": 0},
    {"recovery_timeout": 0}, {"recovery_timeout": -1}, {"recovery_timeout": float("inf")},
    {"failure_ratio": 0}, {"failure_ratio": 1.5}, {"window": 0}, {"minimum_calls": 0},
    {"half_open_calls": True}, {"failure_threshold": "3"}, {"recovery_timeout": "10"},
    {"health_check": ""}, {"health_check_interval": 0}, {"unknown": 1},
    {"failure_threshold": None},  # and no ratio: it would never open
])
def test_a_bad_policy_is_refused(bad):
    with pytest.raises(SpellError) as info:
        CircuitBreaker(**bad)
    assert info.value.code == "configuration/invalid_value"
    assert info.value.fields["key"].startswith("breaker")


# -- the state machine -----------------------------------------------------------------------


def test_consecutive_failures_open_it_and_a_success_starts_the_count_again():
    clock = Clock()
    breaker = make(clock, failure_threshold=3, recovery_timeout=10)
    fail(breaker), fail(breaker), succeed(breaker), fail(breaker), fail(breaker)
    assert breaker.state == "closed"
    fail(breaker)
    assert breaker.state == "open"


def test_an_open_breaker_refuses_at_once_with_the_service_and_the_time_left():
    clock = Clock()
    breaker = make(clock, failure_threshold=1, recovery_timeout=10)
    fail(breaker)
    clock.advance(4)
    err = refusal(breaker)
    assert err.code == "runtime/circuit_breaker_open"
    assert err.fields == {"service": "search", "opened_duration": 4.0}
    assert err.retryable and err.retry_after == pytest.approx(6.0)
    assert breaker.snapshot()["refused"] == 1


def test_after_the_recovery_timeout_a_successful_probe_closes_it():
    clock = Clock()
    breaker = make(clock, failure_threshold=1, recovery_timeout=10)
    fail(breaker)
    clock.advance(10)
    assert breaker.state == "half_open"
    probe = breaker.admit()
    refusal(breaker)  # the probe is in flight: everyone else waits
    breaker.release(probe, True)
    assert breaker.state == "closed"
    succeed(breaker)


def test_a_failed_probe_opens_it_again_for_a_whole_recovery_timeout():
    clock = Clock()
    breaker = make(clock, failure_threshold=1, recovery_timeout=10)
    fail(breaker)
    clock.advance(11)
    fail(breaker)  # the probe
    assert breaker.state == "open"
    err = refusal(breaker)
    assert err.retry_after == pytest.approx(10.0)
    assert err.fields["opened_duration"] == 11.0  # open since it first left closed
    assert breaker.snapshot()["times_opened"] == 2


def test_success_threshold_probes_close_it_one_at_a_time():
    clock = Clock()
    breaker = make(clock, failure_threshold=1, recovery_timeout=1, success_threshold=3)
    fail(breaker)
    clock.advance(1)
    for _ in range(2):
        probe = breaker.admit()
        refusal(breaker)
        breaker.release(probe, True)
        assert breaker.state == "half_open"
    succeed(breaker)
    assert breaker.state == "closed"


def test_half_open_admits_exactly_one_probe_among_50_callers_at_once():
    clock = Clock()
    breaker = make(clock, failure_threshold=1, recovery_timeout=5)
    fail(breaker)
    clock.advance(5)
    callers = 50
    barrier = threading.Barrier(callers)
    refused = threading.Semaphore(0)
    outcomes: list[str] = []
    calls = []

    def protected() -> None:
        calls.append(1)
        for _ in range(callers - 1):  # the probe ends only once every other was refused
            assert refused.acquire(timeout=10)
        assert not breaker._lock.locked()  # no lock is held while the call runs

    def caller() -> None:
        barrier.wait()
        try:
            permit = breaker.admit()
        except SpellError as err:
            outcomes.append(err.code)
            refused.release()
            return
        protected()
        breaker.release(permit, True)
        outcomes.append("probe")

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert len(calls) == 1
    assert sorted(outcomes) == ["probe"] + ["runtime/circuit_breaker_open"] * (callers - 1)
    assert breaker.state == "closed"
    assert breaker.snapshot()["refused"] == callers - 1


def test_half_open_calls_is_the_number_of_probes_in_flight():
    clock = Clock()
    breaker = make(clock, failure_threshold=1, recovery_timeout=1, half_open_calls=3,
                   success_threshold=3)
    fail(breaker)
    clock.advance(1)
    probes = [breaker.admit() for _ in range(3)]
    refusal(breaker)
    for probe in probes:
        breaker.release(probe, True)
    assert breaker.state == "closed"


def test_a_refused_caller_in_half_open_waits_at_most_what_the_probe_has_left():
    clock = Clock()
    breaker = make(clock, failure_threshold=1, recovery_timeout=10)
    fail(breaker)
    clock.advance(10)
    breaker.admit(deadline=clock.now + 2)  # this probe must end within 2 s
    assert refusal(breaker).retry_after == pytest.approx(2.0)


def test_the_ratio_over_the_window_opens_it_once_there_are_enough_calls():
    clock = Clock()
    breaker = make(clock, failure_threshold=None, failure_ratio=0.5, window=10,
                   minimum_calls=4)
    fail(breaker), fail(breaker), fail(breaker)
    assert breaker.state == "closed"  # 3 calls: too few to judge
    clock.advance(11)  # those are forgotten
    succeed(breaker), fail(breaker), succeed(breaker)
    assert breaker.snapshot()["window_calls"] == 3
    fail(breaker)  # 2 of 4
    assert breaker.state == "open"


def test_the_ratio_stays_closed_below_it():
    clock = Clock()
    breaker = make(clock, failure_threshold=None, failure_ratio=0.5, minimum_calls=4)
    for _ in range(10):
        succeed(breaker), succeed(breaker), fail(breaker)
    assert breaker.state == "closed"
    assert breaker.snapshot()["window_failures"] == 10
    assert breaker.snapshot()["successes"] == 20


def test_a_call_admitted_before_it_opened_has_no_say_after():
    clock = Clock()
    breaker = make(clock, failure_threshold=1, recovery_timeout=10)
    slow, slower = breaker.admit(), breaker.admit()
    fail(breaker)
    clock.advance(10)
    probe = breaker.admit()
    breaker.release(slow, False)  # the slow calls of before neither open it again
    breaker.release(slower, True)  # nor close it
    assert breaker.state == "half_open"
    assert breaker.snapshot()["times_opened"] == 1
    breaker.release(probe, True)
    assert breaker.state == "closed"


def test_an_outcome_that_is_not_the_tools_is_neither_failure_nor_success():
    clock = Clock()
    breaker = make(clock, failure_threshold=2, recovery_timeout=1)
    fail(breaker)
    breaker.release(breaker.admit(), None)
    fail(breaker)  # the one in between did not reset the count
    assert breaker.state == "open"
    clock.advance(1)
    breaker.release(breaker.admit(), None)  # the probe gives its place back, undecided
    assert breaker.state == "half_open"
    succeed(breaker)
    assert breaker.state == "closed"
    assert (breaker.snapshot()["failures"], breaker.snapshot()["successes"]) == (2, 1)


def test_reset_force_open_snapshot_and_changes_announced():
    clock = Clock()
    changes: list[tuple[str, str, str]] = []
    breakers = Breakers(clock=clock, on_change=lambda *change: changes.append(change))
    policy = CircuitBreaker(failure_threshold=1, recovery_timeout=5)
    breaker = breakers.breaker("search", policy)
    assert breakers.breaker("search", policy) is breaker
    with pytest.raises(ValueError):
        breakers.breaker("search", CircuitBreaker(failure_threshold=9))
    fail(breaker)
    assert breakers.state("search") == "open"
    assert breakers.snapshot()["search"]["failures"] == 1
    breakers.reset("search")
    assert breakers.state("search") == "closed"
    breakers.force_open("search")
    clock.advance(1e6)
    err = refusal(breaker)
    assert not err.retryable  # forced: until reset
    assert breakers.snapshot()["search"] | {"open_for": None} == {
        "state": "open", "forced": True, "consecutive_failures": 0, "window_calls": None,
        "window_failures": None, "open_for": None, "half_open_in": None,
        "probes_in_flight": 0, "probe_successes": 0, "times_opened": 2, "refused": 1,
        "successes": 0, "failures": 1}
    breakers.reset("search")
    breakers.force_open("search", 2)
    clock.advance(2)
    succeed(breaker)
    assert changes == [("search", "closed", "open"), ("search", "open", "closed"),
                       ("search", "closed", "open"), ("search", "open", "closed"),
                       ("search", "closed", "open"), ("search", "open", "half_open"),
                       ("search", "half_open", "closed")]


@pytest.mark.parametrize(("err", "counts"), [
    (failing(), True),
    (ToolError.Timeout(tool_name="search", duration=1), True),
    (ProviderError.Unavailable(provider="p"), True),
    (ProviderError.Timeout(provider="p", duration=1), True),
    (NetworkError.Timeout(endpoint="e", duration=1), True),
    (NetworkError.Connection(reason="refused"), True),
    (NetworkError.HttpStatus(endpoint="e", status=503), True),
    (NetworkError.HttpStatus(endpoint="e", status=404), False),
    (ScriptError.Lua(script="tools.lua", error="oops"), True),
    (ScriptError.ResourceExhaustion(language="lua", resource_type="memory"), True),
    (ScriptError.ResourceExhaustion(language="lua", resource_type="time"), False),
    (ToolError.InvalidParameters(tool_name="search", validation_error="x"), False),
    (ToolError.NotFound(tool_name="search"), False),
    (AsyncExecutionError.TaskCancelled(task_id="t", reason="stop"), False),
    (ProviderError.RateLimited(provider="p"), False),
    (SpellRuntimeError.CircuitBreakerOpen(service="inner"), False),
])
def test_which_errors_count_against_the_tool(err, counts):
    assert counts_against(err) is counts


def test_through_the_layer_the_runs_own_stop_and_an_outer_deadline_do_not_count():
    clock = Clock()
    breakers = Breakers(clock=clock)
    layer = breakers.layer_for("search", CircuitBreaker(failure_threshold=1))
    stop = failing()  # a run stopped with any error: still not the tool's failure
    call = SimpleNamespace(name="search", deadline=clock.now + 5, params={}, started=0.0,
                           run=SimpleNamespace(control=SimpleNamespace(reason=stop)))

    def raises(exc: BaseException) -> Any:
        def next(call: Any) -> Any:
            raise exc
        return next

    for exc in (stop, DeadlineReached(1.0), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            layer(call, raises(exc))  # type: ignore[arg-type]
    assert breakers.state("search") == "closed"
    with pytest.raises(ValueError):
        layer(call, raises(ValueError("a tool's own exception")))  # type: ignore[arg-type]
    assert breakers.state("search") == "open"


# -- on the real engines ---------------------------------------------------------------------


class Service:
    """What the flaky tool does: fail or answer, and how often it was called."""

    def __init__(self) -> None:
        self.up = False
        self.calls = 0


SERVICE = Service()


@tool
def lookup(key: str) -> str:
    """Answers when the service is up."""
    SERVICE.calls += 1
    if not SERVICE.up:
        raise ConnectionError("service down")
    return key.upper()


CALL_THRICE = {
    "lua": """
local seen = {}
for i = 1, 3 do
  local ok, err = pcall(tools.lookup, {key = "k"})
  if ok then seen[i] = err
  else seen[i] = err.category .. "/" .. err.kind .. " " .. tostring(err.fields.service) end
end
return seen
""",
    "javascript": """
async function main() {
  const seen = [];
  for (let i = 0; i < 3; i++) {
    try { seen.push(await tools.lookup({key: "k"})); }
    catch (e) { seen.push(`${e.category}/${e.kind} ${e.fields.service}`); }
  }
  return seen;
}
""",
}
REFUSED = "runtime/circuit_breaker_open lookup"


def test_a_failing_tool_opens_its_breaker_the_script_is_refused_and_a_probe_closes_it(
        language):
    SERVICE.up, SERVICE.calls = False, 0
    clock = Clock()
    breakers = Breakers(clock=clock)
    policy = CircuitBreaker(failure_threshold=2, recovery_timeout=0.5)
    host = Host([lookup], layers=[breakers.layer_for("lookup", policy)])
    # a ConnectionError is network/connection (bridge.wrap, issue 11 item 5)
    failed = pick(language, "network/connection nil", "network/connection undefined")
    assert host.run_source(CALL_THRICE[language], language) == [failed, failed, REFUSED]
    assert SERVICE.calls == 2  # the refused call never reached the tool
    assert breakers.state("lookup") == "open"
    run = host.new_run_source(CALL_THRICE[language], language)
    assert anyio.run(run.execute) == [REFUSED] * 3
    assert [(e["action"], e["tool"], e["error"]) for e in run.recovery] == \
        [("breaker_refused", "lookup", "runtime/circuit_breaker_open")] * 3

    clock.advance(0.5)
    SERVICE.up = True
    assert host.run_source(CALL_THRICE[language], language) == ["K", "K", "K"]
    assert breakers.state("lookup") == "closed"
    assert breakers.snapshot()["lookup"]["refused"] == 4


def test_the_refusal_reaches_python_with_its_retry_after(language):
    SERVICE.up = False
    clock = Clock()
    breakers = Breakers(clock=clock)
    breakers.breaker("lookup", CircuitBreaker(failure_threshold=1, recovery_timeout=30))
    breakers.force_open("lookup", 30)
    clock.advance(10)
    host = Host([lookup], layers=[breakers.layer_for("lookup", breakers["lookup"].policy)])
    source = pick(language, 'return tools.lookup{key = "k"}',
                  'async function main() { return await tools.lookup({key: "k"}); }')
    with pytest.raises(SpellError) as info:
        host.run_source(source, language)
    err = info.value
    assert err.code == "runtime/circuit_breaker_open"
    assert err.retryable and err.retry_after == pytest.approx(20.0)


def test_a_tools_files_failing_function_opens_its_breaker_across_languages(
        language, tmp_path):
    other = "javascript" if language == "lua" else "lua"
    if other == "lua":
        path = tmp_path / "remote.lua"
        path.write_text('return { fetch = function(p) error("remote is down") end }\n')
    else:
        path = tmp_path / "remote.js"
        path.write_text('exports.fetch = function (p) { throw new Error("remote is down"); };\n')
    breakers = Breakers(clock=Clock())
    host = Host([str(path)], layers=[breakers.layer_for("fetch", CircuitBreaker(
        failure_threshold=1, recovery_timeout=60))])
    source = pick(language, """
local ok1, e1 = pcall(tools.fetch, {})
local ok2, e2 = pcall(tools.fetch, {})
return {e1.category .. "/" .. e1.kind, e2.category .. "/" .. e2.kind}
""", """
async function main() {
  const seen = [];
  for (let i = 0; i < 2; i++) {
    try { await tools.fetch({}); } catch (e) { seen.push(`${e.category}/${e.kind}`); }
  }
  return seen;
}
""")
    assert host.run_source(source, language) == [f"script/{other}",
                                                "runtime/circuit_breaker_open"]
    assert breakers.snapshot()["fetch"]["failures"] == 1


def test_invalid_parameters_do_not_open_the_breaker(language):
    breakers = Breakers(clock=Clock())
    host = Host([lookup], layers=[breakers.layer_for("lookup", CircuitBreaker(
        failure_threshold=1))])
    source = pick(language, "return select(2, pcall(tools.lookup, {key = 42})).kind",
                  "async function main() { try { await tools.lookup({key: 42}); }"
                  " catch (e) { return e.kind; } }")
    assert host.run_source(source, language) == "invalid_parameters"
    assert breakers.state("lookup") == "closed"
