"""Retry: the policy's decisions, and the retry layer of a tool's pipeline on real engines."""

from __future__ import annotations

import itertools
import threading
import time

import anyio
import pytest

from bridge import AsyncExecutionError, NetworkError, ProviderError, SpellError, ToolError
from host import Host, Retry, tool
from tests.conftest import pick

# -- the policy's decisions --------------------------------------------------------------


def test_backoff_schedules():
    assert [Retry(backoff="fixed", initial=0.5).delay(n) for n in (1, 2, 3)] == [0.5] * 3
    assert [Retry(backoff="linear", initial=0.5).delay(n) for n in (1, 2, 3)] == [0.5, 1, 1.5]
    assert [Retry(backoff="exponential", initial=0.5).delay(n) for n in (1, 2, 3, 4)] == \
        [0.5, 1, 2, 4]
    assert [Retry(backoff="fibonacci", initial=1).delay(n) for n in range(1, 7)] == \
        [1, 1, 2, 3, 5, 8]
    assert Retry(backoff="exponential", initial=1, max_delay=3).delay(10) == 3
    assert Retry(backoff=lambda n: n * 7, max_delay=100).delay(2) == 14
    assert Retry(initial=1).delay(10_000) == 10  # no overflow, capped


FAILED = ToolError.ExecutionFailed(tool_name="t", reason="x")  # no retry_after of its own


def test_jitter_draws_the_delay_within_its_bounds():
    timeout = FAILED
    full = Retry(attempts=5, backoff="fixed", initial=1.0, max_delay=1.0, on="any")
    assert full.next_delay(1, timeout, 0, rng=lambda: 0.0) == 1.0
    assert full.next_delay(1, timeout, 0, rng=lambda: 0.999) == pytest.approx(0.001)
    tenth = Retry(attempts=5, backoff="fixed", initial=1.0, jitter=0.1, on="any")
    drawn = [tenth.next_delay(1, timeout, 0) for _ in range(200)]
    assert all(0.9 <= d <= 1.0 for d in drawn)  # type: ignore[operator]
    assert len(set(drawn)) > 1
    assert Retry(backoff="fixed", initial=1.0, jitter=0, on="any").next_delay(
        1, timeout, 0) == 1.0


def test_attempts_and_max_elapsed_bound_the_retries():
    timeout = FAILED
    policy = Retry(attempts=3, backoff="fixed", initial=1.0, jitter=0, max_elapsed=5,
                   on="any")
    assert policy.next_delay(1, timeout, 0) == 1.0
    assert policy.next_delay(2, timeout, 0) == 1.0
    assert policy.next_delay(3, timeout, 0) is None  # the third try was the last
    assert policy.next_delay(1, timeout, 4.5) is None  # the delay would end past 5 s


def test_retry_after_is_a_floor():
    limited = ProviderError.RateLimited(provider="p", retry_after=2.0)  # a Retry-After
    policy = Retry(backoff="fixed", initial=0.1, jitter=0)
    assert policy.next_delay(1, limited, 0) == 2.0


def test_a_kinds_default_retry_after_is_not_a_floor():
    # network/connection's kind suggests 1 s; the user's schedule for the tool wins
    refused = NetworkError.Connection(reason="refused")
    assert refused.retry_after == 1.0 and refused.requested_retry_after is None
    policy = Retry(backoff="fixed", initial=0.02, jitter=0)
    assert policy.next_delay(1, refused, 0) == 0.02
    # a delay the error was given stays a floor after a JSON round trip; the default
    # stays a default
    asked = NetworkError.Connection(reason="refused", retry_after=3.0)
    assert policy.next_delay(1, SpellError.from_dict(asked.to_dict()), 0) == 3.0
    again = SpellError.from_dict(refused.to_dict())
    assert again.to_dict() == refused.to_dict() and again.requested_retry_after is None


def test_conditions_codes_categories_except_and_callables():
    timeout = ToolError.Timeout(tool_name="t", duration=1.0)
    failed = ToolError.ExecutionFailed(tool_name="t", reason="x")
    network = NetworkError.Connection(reason="refused")
    cancelled = AsyncExecutionError.TaskCancelled(task_id="t", reason="r",
                                                  cancellation_source="test")
    assert Retry().applies_to(timeout) is timeout.retryable
    assert Retry(on="any").applies_to(failed)
    assert not Retry(on="any").applies_to(cancelled)  # never retried
    assert Retry(on=["tool/timeout"]).applies_to(timeout)
    assert not Retry(on=["tool/timeout"]).applies_to(failed)
    assert Retry(on=["network"]).applies_to(network)
    assert not Retry(on="any", **{"except": ["tool/execution_failed"]}).applies_to(failed)
    assert Retry(on=lambda err: err.fields.get("reason") == "x").applies_to(failed)


@pytest.mark.parametrize("bad, field", [
    ({"attempts": 0}, "retry.attempts"),
    ({"initial": -1}, "retry.initial"),
    ({"backoff": "random"}, "retry.backoff"),
    ({"on": ["tool/no_such_kind"]}, "retry.on"),
    ({"jitter": 2}, "retry.jitter"),
    ({"attempts": True}, "retry.attempts"),
])
def test_a_bad_policy_is_an_invalid_value_naming_the_field(bad, field):
    with pytest.raises(SpellError) as info:
        Retry(**bad)
    assert info.value.code == "configuration/invalid_value"
    assert info.value.fields["key"] == field


def test_a_bad_policy_on_a_host_names_the_tool():
    @tool
    def search(q: str) -> str:
        return q

    with pytest.raises(SpellError) as info:
        Host([search], recovery={"search": {"retry": {"attempts": 0}}})
    assert info.value.code == "configuration/invalid_value"
    assert info.value.fields["key"] == "search.retry.attempts"
    with pytest.raises(SpellError) as info:
        Host([search], recovery={"serch": {"retry": {"attempts": 2}}})
    assert "serch" in info.value.message


# -- the retry layer on real engines -------------------------------------------------------


# RuntimeError: a tool's plain failure (tool/execution_failed); a ConnectionError would be
# network/connection (bridge.wrap)
def _flaky(failures: int, error: type[Exception] | SpellError = RuntimeError):
    calls: list[float] = []

    def flaky(q: str) -> str:
        calls.append(time.monotonic())
        if len(calls) <= failures:
            if isinstance(error, SpellError):
                raise error
            raise error("down")
        return f"ok {q} after {len(calls)}"

    return flaky, calls


CALL = {"lua": 'return tools.flaky{q = "x"}',
        "javascript": 'async function main() { return await tools.flaky({q: "x"}); }'}


def test_a_flaky_tool_is_retried_until_it_works(language):
    flaky, calls = _flaky(2)
    host = Host([tool(flaky, retry=Retry(attempts=3, backoff="fixed", initial=0.01, jitter=0,
                                         on="any"))])
    run = host.new_run_source(CALL[language], language)
    assert anyio.run(run.execute) == "ok x after 3"
    assert len(calls) == 3
    assert [e["action"] for e in run.recovery] == ["retry", "retry"]
    assert [e["attempt"] for e in run.recovery] == [1, 2]
    assert all(e["error"] == "tool/execution_failed" and e["tool"] == "flaky"
               for e in run.recovery)
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert all(g >= 0.009 for g in gaps)  # the delay was waited


def test_when_retries_run_out_the_last_error_escapes_with_the_history(language):
    flaky, calls = _flaky(10)
    host = Host([tool(flaky, retry=Retry(attempts=3, backoff="fixed", initial=0.01, jitter=0,
                                         on="any"))])
    with pytest.raises(SpellError) as info:
        host.run_source(CALL[language], language, "agent.src")
    err = info.value
    assert len(calls) == 3
    assert err.code == "tool/execution_failed"
    assert isinstance(err.__cause__, RuntimeError)
    assert [e["attempt"] for e in err.context.metadata["recovery"]] == [1, 2]
    # decorated once, like any tool error: the script's call site, then the boundary
    assert [f.language for f in err.frames[:2]] == [language, "host"]
    assert [f.function for f in err.frames if f.language == "host"] == ["flaky"]


def test_only_retryable_errors_are_retried_by_default(language):
    flaky, calls = _flaky(1, ValueError)
    host = Host([tool(flaky, retry=Retry(attempts=3, backoff="fixed", initial=0.01))])
    with pytest.raises(SpellError):
        host.run_source(CALL[language], language)
    assert len(calls) == 1  # tool/execution_failed is not retryable
    timeouts, calls = _flaky(1, ToolError.Timeout(tool_name="flaky", duration=1.0))
    host = Host([tool(timeouts, name="flaky",
                      retry=Retry(attempts=3, backoff="fixed", initial=0.01))])
    assert host.run_source(CALL[language], language) == "ok x after 2"


def test_host_recovery_wins_over_the_decorator_and_reaches_tools_files(language, tmp_path):
    flaky, _ = _flaky(3)
    search = tool(flaky, retry=Retry(attempts=2, initial=0.01, on="any"))
    host = Host([search], recovery={"flaky": {"retry": {"attempts": 4, "initial": 0.01,
                                                        "on": "any"}}})
    assert host.run_source(CALL[language], language) == "ok x after 4"
    other = "javascript" if language == "lua" else "lua"
    library = tmp_path / ("lib.js" if other == "javascript" else "lib.lua")
    library.write_text(pick(other, """
local n = 0
return {count = function(p) n = n + 1 if n < 3 then error("not yet") end return n end}
""", """
let n = 0;
exports.count = function (p) { n += 1; if (n < 3) throw new Error("not yet"); return n; };
"""))
    host = Host([library], recovery={"count": {"retry": {"attempts": 3, "backoff": "fixed",
                                                         "initial": 0.01, "on": "any"}}})
    source = pick(language, "return tools.count{}",
                  "async function main() { return await tools.count({}); }")
    assert host.run_source(source, language) == 3  # a function of another language, retried


def test_a_cancellation_cuts_a_retry_delay_short(language):
    flaky, calls = _flaky(100)
    entered = threading.Event()

    def noting(q: str) -> str:
        entered.set()
        return flaky(q)

    host = Host([tool(noting, name="flaky",
                      retry=Retry(attempts=5, backoff="fixed", initial=20, jitter=0,
                                  on="any", max_elapsed=100))], timeout=60)
    run = host.new_run_source(CALL[language], language)
    reason = AsyncExecutionError.TaskCancelled(task_id="t", reason="test",
                                               cancellation_source="test")

    async def main() -> SpellError:
        async with anyio.create_task_group() as group:
            async def cancel() -> None:
                await anyio.to_thread.run_sync(entered.wait)
                await anyio.sleep(0)
                run.cancel(reason)
            group.start_soon(cancel)
            with pytest.raises(SpellError) as info:
                await run.execute()
        return info.value

    started = time.monotonic()
    assert anyio.run(main) is reason
    assert time.monotonic() - started < 10  # not the 20 s delay
    assert len(calls) == 1


def test_no_retry_is_made_that_cannot_end_before_the_run_does(language):
    flaky, calls = _flaky(100)
    host = Host([tool(flaky, retry=Retry(attempts=5, backoff="fixed", initial=5, jitter=0,
                                         on="any"))], timeout=2)
    started = time.monotonic()
    with pytest.raises(SpellError) as info:
        host.run_source(CALL[language], language)
    assert time.monotonic() - started < 2
    assert info.value.code == "tool/execution_failed"
    assert len(calls) == 1
