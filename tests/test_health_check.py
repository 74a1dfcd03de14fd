"""A circuit breaker's active health check: while the breaker is open, a Python tool is
called every interval on a daemon thread, and its first success closes the breaker."""

from __future__ import annotations

import gc
import threading
import time

import pytest

from bridge import SpellError
from host import CircuitBreaker, Host, tool

CALL = {"lua": "local ok, e = pcall(tools.service, {}) if ok then return e end"
               " return e.category .. '/' .. e.kind",
        "javascript": 'async function main() { try { return await tools.service({}); }'
                      ' catch (e) { return e.code; } }'}
INTERVAL = 0.05


class Service:
    """A service that is down until told otherwise; ``ping`` checks it like a health
    endpoint would."""

    def __init__(self) -> None:
        self.up = False
        self.pings = 0
        self.calls = 0

    def tools(self, **breaker):
        def service() -> str:
            self.calls += 1
            if not self.up:
                raise ConnectionRefusedError("service is down")
            return "up"

        def ping() -> bool:
            self.pings += 1
            if not self.up:
                raise ConnectionRefusedError("still down")
            return True

        policy = CircuitBreaker(**{"failure_threshold": 1, "recovery_timeout": 600,
                                   "health_check": "ping",
                                   "health_check_interval": INTERVAL, **breaker})
        return [tool(service, breaker=policy), tool(ping)]


def _checkers(name: str = "service") -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"polyspell health check {name}"]


def _until(condition, seconds: float = 3.0) -> bool:
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.fixture(autouse=True)
def no_checker_left():
    """Every test starts without a checker thread and leaves none behind once its hosts
    are garbage (a run's thread may hold its run a moment after the run returned)."""
    assert _until(lambda: gc.collect() is not None and not _checkers(), 5.0)
    yield
    assert _until(lambda: gc.collect() is not None and not _checkers(), 5.0)


def test_a_service_that_answers_again_closes_the_breaker(language):
    service = Service()
    host = Host(service.tools())
    assert host.run_source(CALL[language], language) == "network/connection"
    assert host.breakers.state("service") == "open"
    assert host.run_source(CALL[language], language) == "runtime/circuit_breaker_open"
    assert _until(lambda: service.pings >= 3)  # checked while down: it stays open
    assert host.breakers.state("service") == "open" and service.calls == 1
    service.up = True
    assert _until(lambda: host.breakers.state("service") == "closed")  # long before 600 s
    assert host.run_source(CALL[language], language) == "up"
    assert _until(lambda: not _checkers())  # the checker ended with the open state


def test_a_breaker_reset_by_hand_ends_its_checker():
    service = Service()
    host = Host(service.tools(health_check_interval=30))
    host.run_source(CALL["lua"], "lua")
    assert len(_checkers()) == 1
    host.breakers.reset("service")
    assert _until(lambda: not _checkers(), 1.0)  # at once, not after 30 s


def test_the_checker_ends_when_the_host_is_gone():
    service = Service()
    host = Host(service.tools())
    assert host.run_source(CALL["lua"], "lua") == "network/connection"
    assert len(_checkers()) == 1
    pings = service.pings
    del host  # its runs' threads may still hold it a moment: collect until it is gone
    assert _until(lambda: gc.collect() is not None and not _checkers(), 2.0)
    settled = service.pings
    time.sleep(INTERVAL * 4)
    assert service.pings == settled and settled - pings < 40  # no more checks


def test_a_breaker_reopened_gets_a_checker_again(language):
    service = Service()
    host = Host(service.tools())
    host.run_source(CALL[language], language)
    service.up = True
    assert _until(lambda: host.breakers.state("service") == "closed")
    service.up = False
    assert host.run_source(CALL[language], language) == "network/connection"
    assert host.breakers.state("service") == "open"
    assert len(_checkers()) == 1
    service.up = True
    assert _until(lambda: host.breakers.state("service") == "closed")


def test_a_hanging_check_is_timed_out_and_never_piles_up():
    release = threading.Event()
    running = {"now": 0, "peak": 0, "calls": 0}

    def service() -> str:
        raise ConnectionRefusedError("down")

    @tool(timeout=INTERVAL)
    def ping() -> bool:
        running["calls"] += 1
        running["now"] += 1
        running["peak"] = max(running["peak"], running["now"])
        release.wait(10)
        running["now"] -= 1
        return True

    host = Host([tool(service, breaker=CircuitBreaker(
        failure_threshold=1, recovery_timeout=600, health_check="ping",
        health_check_interval=INTERVAL)), ping])
    host.run_source(CALL["lua"], "lua")
    time.sleep(INTERVAL * 8)
    assert running["peak"] == 1 and running["calls"] == 1  # one check in flight at most
    assert host.breakers.state("service") == "open"  # a check past its timeout is no success
    release.set()
    assert _until(lambda: host.breakers.state("service") == "closed")  # the next one


def test_an_async_health_check_works():
    up = {"now": False}

    def service() -> str:
        raise ConnectionRefusedError("down")

    @tool
    async def ping() -> bool:
        import anyio

        await anyio.sleep(0)
        if not up["now"]:
            raise ConnectionRefusedError("still down")
        return True

    host = Host([tool(service, breaker=CircuitBreaker(
        failure_threshold=1, recovery_timeout=600, health_check="ping",
        health_check_interval=INTERVAL)), ping])
    host.run_source(CALL["javascript"], "javascript")
    time.sleep(INTERVAL * 3)
    assert host.breakers.state("service") == "open"
    up["now"] = True
    assert _until(lambda: host.breakers.state("service") == "closed")


def test_a_breaker_forced_open_stays_open():
    service = Service()
    host = Host(service.tools())
    host.run_source(CALL["lua"], "lua")
    host.breakers.force_open("service")  # until reset
    service.up = True
    time.sleep(INTERVAL * 5)
    assert host.breakers.state("service") == "open"
    host.breakers.reset("service")
    assert _until(lambda: not _checkers(), 1.0)


def test_the_health_check_must_name_a_python_tool(tmp_path):
    def service() -> str:
        return "up"

    with pytest.raises(SpellError) as info:
        Host([tool(service, breaker=CircuitBreaker(health_check="nope"))])
    err = info.value
    assert (err.code, err.fields["key"]) == ("configuration/invalid_value",
                                             "service.breaker.health_check")
    assert "names a tool that does not exist: 'nope'" in err.message
    lua = tmp_path / "checks.lua"
    lua.write_text("local m = {} function m.ping(p) return true end return m")
    with pytest.raises(SpellError) as info:
        Host([tool(service), lua],
             recovery={"service": {"breaker": {"health_check": "ping"}}})
    assert "is not a Python tool" in info.value.message
