"""Issue 11's recovery attacked as a hostile script, a careless tool author and a malformed
config would: each test is a defect found by the red team (redteam11), on the real engines,
real files and real loopback servers."""

from __future__ import annotations

import gc
import json
import os
import socket
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import anyio
import pytest

from bridge import ProviderError, SpellError
from host import Breakers, CircuitBreaker, Coordinator, Fallback, Host, Plan, Retry, Task, tool
from host.history import MAX_EVENTS
from tests.cli import polyspell
from tests.conftest import EXTENSION, pick
from tests.loopback import http_server, run_outcome

_run = run_outcome


# -- fallbacks that lead back to the tool they protect ----------------------------------


def _down(name: str, fallback_to: str | None = None):
    def fn() -> str:
        raise ConnectionError(f"{name} down")

    fn.__name__ = name
    return tool(fn, fallback=None if fallback_to is None
                else Fallback(options=[{"tool": fallback_to}]))


@pytest.mark.parametrize("tools", [
    [("a", "b"), ("b", "a")],                      # a -> b -> a
    [("a", "b"), ("b", "c"), ("c", "a")],          # a -> b -> c -> a
    [("x", None), ("a", "b"), ("b", "c"), ("c", "b")],  # a leads into the b <-> c loop
])
def test_a_fallback_loop_through_other_tools_is_refused_when_the_host_is_made(tools):
    # before: @tool alone skipped the check, and a -> b -> a recursed for the run's whole
    # time limit, ending in a garbled cross_engine_communication error
    with pytest.raises(SpellError) as caught:
        Host([_down(name, other) for name, other in tools])
    assert caught.value.code == "configuration/invalid_value"
    assert "loops back" in str(caught.value)


def test_a_tools_own_fallback_to_itself_or_nothing_is_refused_without_a_config():
    for tools in ([_down("a", "a")], [_down("a", "nope")]):
        with pytest.raises(SpellError) as caught:
            Host(tools)
        assert caught.value.code == "configuration/invalid_value"
        assert "a.fallback" in str(caught.value)


def test_a_wide_fallback_graph_without_a_loop_is_checked_quickly():
    # each tool falls back to every later one: 2**30 paths, one pass
    names = [f"t{i}" for i in range(31)]
    tools = []
    for i, name in enumerate(names):
        def fn() -> str:
            return "ok"
        fn.__name__ = name
        later = [{"tool": other} for other in names[i + 1:i + 33]]
        tools.append(tool(fn, fallback=Fallback(options=later) if later else None))
    started = time.monotonic()
    Host(tools)
    assert time.monotonic() - started < 2


def test_a_config_files_fallback_loop_over_a_tools_file_is_refused(tmp_path: Path, language):
    lib = tmp_path / f"lib{EXTENSION[language]}"
    lib.write_text(pick(language, "return {b = function() error('b down') end}\n",
                        "exports.b = function () { throw new Error('b down'); };\n"))
    config = tmp_path / "polyspell.toml"
    config.write_text('[tools.a]\nfallback = [{tool = "b"}]\n'
                      '[tools.b]\nfallback = [{tool = "a"}]\n')
    with pytest.raises(SpellError) as caught:
        Host([_down("a"), str(lib)], config=str(config))
    assert caught.value.code == "configuration/invalid_value"
    assert "a -> b -> a" in str(caught.value) or "b -> a -> b" in str(caught.value)


# -- a breaker listener with a bug ----------------------------------------------------------


def _wait_for(predicate, seconds: float = 5.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_a_breaker_listener_that_raises_changes_no_outcome_and_no_health_check(language):
    @tool
    def ping() -> str:
        return "pong"

    @tool(breaker=CircuitBreaker(failure_threshold=1, recovery_timeout=300,
                                 health_check="ping", health_check_interval=0.02))
    def svc() -> str:
        raise ConnectionError("svc down")

    host = Host([svc, ping])
    seen: list[tuple[str, str]] = []

    def buggy(name: str, old: str, new: str) -> None:
        seen.append((old, new))
        raise RuntimeError("listener bug")

    host.breakers.add_listener(buggy)
    source = pick(language,
                  "local ok, e = pcall(tools.svc, {}) return e.category .. '/' .. e.kind",
                  "async function main() { try { await tools.svc({}); } "
                  "catch (e) { return e.code; } }")
    for cycle in range(1, 3):  # opened, closed by its health check, opened, closed again
        result, _ = _run(host, source, language)
        # before: the script got tool/execution_failed "RuntimeError: listener bug"
        assert result == "network/connection"
        # the listener hears of the close just after the state changes
        assert _wait_for(lambda: len(seen) == 2 * cycle)  # noqa: B023 - waited for here
        assert host.breakers.state("svc") == "closed"
    # (listeners run outside the lock: an open and the health check's close may be heard
    # in either order)
    assert sorted(seen) == sorted([("closed", "open"), ("open", "closed")] * 2)
    assert [err.message for err in host.breakers.listener_errors][-1].endswith("listener bug")


# -- an endpoint's secrets ------------------------------------------------------------------


class _Statuses(BaseHTTPRequestHandler):
    """Answers POST /<status> with that HTTP status (and a Location for a 3xx)."""

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        status = int(self.path.partition("?")[0].strip("/"))
        self.send_response(status)
        if 300 <= status < 400:
            self.send_header("Location", "file:///etc/passwd")
        self.send_header("content-length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def statuses():
    with http_server(_Statuses) as url:
        yield int(url.rsplit(":", 1)[1])


@pytest.mark.parametrize("status", [401, 503, 302])
def test_an_endpoints_credentials_and_query_never_reach_the_errors_json(
        tmp_path: Path, statuses: int, status: int, language):
    # before: httpx's 'Client error ... for url' message, kept as the cause, carried
    # user:password, ?token= and #fragment into fields.errors and polyspell run --json
    (tmp_path / "tools.py").write_text(
        "from host import Fallback, tool\n"
        f"URL = 'http://alice:HUNTER2@127.0.0.1:{statuses}/{status}?token=SECRETQ#SECRETF'\n"
        "@tool(fallback=Fallback(options=[{'endpoint': URL}]))\n"
        "def svc(q: str) -> str:\n"
        "    raise ConnectionError('svc down')\n")
    script = tmp_path / f"s{EXTENSION[language]}"
    script.write_text(pick(language, "return tools.svc{q = 'x'}\n",
                           "async function main() { return await tools.svc({q: 'x'}); }\n"))
    outputs = {}
    for args in (["--json"], []):
        done = polyspell("run", script, "--tools", tmp_path / "tools.py", *args, cwd=tmp_path)
        assert done.returncode == 1, done.stderr
        outputs[bool(args)] = out = done.stdout + done.stderr
        assert "all_fallbacks_failed" in out
        for secret in ("HUNTER2", "SECRETQ", "SECRETF"):
            assert secret not in out
    errors = json.loads(outputs[True])["error"]["fields"]["errors"]
    assert f"127.0.0.1:{statuses}/{status}" in json.dumps(errors)  # where, still said


# -- a task's retry_after past the plan's timeout ----------------------------------------------


def test_a_tasks_retry_after_past_the_plans_timeout_does_not_hold_the_plan(
        tmp_path: Path, language):
    @tool
    def limited() -> str:
        raise ProviderError.RateLimited(provider="api", retry_after=20)

    script = tmp_path / f"t{EXTENSION[language]}"
    script.write_text(pick(language, "return tools.limited{}\n",
                           "async function main() { return await tools.limited({}); }\n"))
    plan = Plan(name="p", timeout=1, tasks=[
        Task(id="t", script=str(script), retry=Retry(attempts=3, initial=0.01, jitter=0))])
    started = time.monotonic()
    report = Coordinator([limited]).run(plan)
    # before: the coordinator slept the whole 20 s, then gave up anyway
    assert time.monotonic() - started < 5
    assert (report.task("t").status, report.task("t").attempts) == ("failed", 1)
    assert report.error("t").code == "provider/rate_limited"


# -- a health check that hangs ---------------------------------------------------------------


def _threads(name: str) -> int:
    return sum(thread.name == name for thread in threading.enumerate())


def test_a_hanging_health_check_is_one_thread_however_often_its_breaker_reopens(language):
    release = threading.Event()

    @tool
    def hangs() -> str:
        release.wait(30)
        return "late"

    @tool(breaker=CircuitBreaker(failure_threshold=1, recovery_timeout=300,
                                 health_check="hangs", health_check_interval=0.02))
    def svc() -> str:
        raise ConnectionError("svc down")

    # threads of earlier tests' checks (one may still be ending) are not counted
    before = {t for t in threading.enumerate() if t.name == "polyspell health check call"}

    def new_calls() -> int:
        return sum(t.name == "polyspell health check call" and t not in before
                   for t in threading.enumerate())

    try:
        host = Host([svc, hangs])
        _run(host, pick(language, "pcall(tools.svc, {}) return 1",
                        "async function main() { try { await tools.svc({}); } catch (e) {} }"),
             language)
        assert host.breakers.state("svc") == "open"
        for _ in range(10):  # each opening starts a checker: before, each one a new call
            time.sleep(0.06)
            host.breakers.reset("svc")
            time.sleep(0.03)
            host.breakers.force_open("svc", 300)
        # the last opening's checker makes its call (late on a loaded machine), and no
        # other call is left behind by the earlier ones
        assert _wait_for(lambda: new_calls() >= 1)
        time.sleep(0.1)
        assert new_calls() == 1
        del host
        gc.collect()
        # the checker holds its breaker weakly, also between two checks it skipped
        assert _wait_for(lambda: _threads("polyspell health check svc") == 0)
    finally:
        release.set()


# -- values a policy answers are strict JSON ---------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {"x": [1, float("-inf")]}])
def test_a_degraded_or_fallback_value_that_is_not_json_is_refused(bad):
    # before: accepted, the script got NaN and the CLI said 'ran degraded: a answered NaN'
    def a() -> str:
        raise ConnectionError("down")

    for recovery in ({"optional": True, "degraded": bad}, {"fallback": [{"value": bad}]}):
        with pytest.raises(SpellError) as caught:
            Host([tool(a)], recovery={"a": recovery})
        assert caught.value.code == "configuration/invalid_value"
        assert "NaN and Infinity" in str(caught.value)
    with pytest.raises(SpellError) as caught:
        tool(a, optional=True, degraded=bad)
    assert caught.value.code == "configuration/invalid_value"


@pytest.mark.parametrize("toml", ["degraded = nan", "fallback = [{value = [1, inf]}]"])
def test_a_config_files_nan_or_inf_value_is_refused_with_its_line(tmp_path: Path, toml):
    def a() -> str:
        raise ConnectionError("down")

    config = tmp_path / "polyspell.toml"
    config.write_text(f"[tools.a]\noptional = true\n{toml}\n")
    with pytest.raises(SpellError) as caught:
        Host([tool(a)], config=str(config))
    assert caught.value.code == "configuration/invalid_value"
    assert f"{config}:3:" in str(caught.value)


# -- degradation levels hear breakers' changes out of order ------------------------------------


def test_a_late_opening_heard_after_the_close_does_not_hold_the_host_at_a_fail_level(language):
    @tool(breaker=CircuitBreaker(failure_threshold=1, recovery_timeout=300))
    def svc() -> str:
        raise ConnectionError("svc down")

    @tool
    def other() -> str:
        return "ok"

    opened, closed = threading.Event(), threading.Event()

    def slow_to_tell(name: str, old: str, new: str) -> None:
        if new == "open" and not opened.is_set():  # the opening's thread is preempted here
            opened.set()
            closed.wait(10)

    host = Host([svc, other], degradation={"levels": [{"name": "fail", "when_open": 1}]})
    host.breakers = Breakers(on_change=slow_to_tell)
    call = pick(language, "local ok, e = pcall(tools.{0}, {{}}) return ok and e or e.code",
                "async function main() {{ try {{ return await tools.{0}({{}}); }} "
                "catch (e) {{ return e.code; }} }}")
    failing = threading.Thread(target=_run, args=(host, call.format("svc"), language))
    failing.start()
    assert opened.wait(10)
    host.breakers.reset("svc")  # closed (and heard) before the opening is heard
    closed.set()
    failing.join(10)
    assert host.breakers.state("svc") == "closed"
    # before: the host stayed at 'fail' with no breaker open, refusing every call for good
    assert host.degradation.level is None
    assert _run(host, call.format("other"), language)[0] == "ok"


def test_a_flapping_breakers_degradation_history_is_bounded():
    @tool(breaker=CircuitBreaker(failure_threshold=1, recovery_timeout=300))
    def svc() -> str:
        return "ok"

    host = Host([svc], degradation={"levels": [{"name": "cached", "when_open": 1}]})
    for _ in range(MAX_EVENTS * 2):  # before: every change kept for the host's life
        host.breakers.force_open("svc")
        host.breakers.reset("svc")
    history = host.degradation.history
    assert len(history) == MAX_EVENTS
    assert history.dropped == MAX_EVENTS * 3
    assert history[0]["seq"] == 1 and history[-1]["seq"] == MAX_EVENTS * 4


# -- an all_fallbacks_failed made huge by its options' errors -----------------------------------


def test_huge_errors_of_a_scripts_fallbacks_are_kept_shortened(language):
    source = pick(
        language,
        "local fns = {}\n"
        "for i = 1, 32 do fns[i] = function() error({category = 'tool', "
        "kind = 'execution_failed', message = string.rep('x', 500000) .. i, "
        "fields = {tool_name = 't' .. i, reason = string.rep('r', 200000)}}) end end\n"
        "return recovery.fallback(fns)",
        "async function main() {\n"
        "  const fns = [];\n"
        "  for (let i = 1; i <= 32; i++) fns.push(() => { const e = new Error("
        "'x'.repeat(500000) + i); e.category = 'tool'; e.kind = 'execution_failed'; "
        "e.fields = {tool_name: 't' + i, reason: 'r'.repeat(200000)}; throw e; });\n"
        "  return await recovery.fallback(fns);\n}")
    err, _ = _run(Host([]), source, language)
    assert isinstance(err, SpellError) and err.code == "runtime/all_fallbacks_failed"
    # before: every option's error whole, 32 x 700 KB in fields.errors
    assert len(json.dumps(err.to_dict())) < 2_000_000
    errors = err.fields["errors"]
    assert [e["fields"]["tool_name"] for e in errors] == [f"t{i}" for i in range(1, 33)]
    assert all(e["message"].endswith("more characters]") for e in errors)
    assert err.cause is not None and err.cause.message.endswith("more characters]")


def test_a_script_cannot_make_the_host_keep_its_big_error_over_and_over(language):
    # nested recovery.fallback sessions, each failing 31 times with the same 300 KB string
    # (one string in the engine): before, the host kept a copy of each, 4 x 31 x 300 KB
    source = pick(
        language,
        "local big = string.rep('x', 300000)\n"
        "local function bomb(depth)\n"
        "  local fns = {}\n"
        "  for i = 1, 32 do fns[i] = function()\n"
        "    if i == 31 and depth < 4 then pcall(bomb, depth + 1) end\n"
        "    error({category = 'tool', kind = 'execution_failed', message = big,\n"
        "           fields = {tool_name = 't', reason = big}})\n"
        "  end end\n"
        "  return recovery.fallback(fns)\n"
        "end\n"
        "local ok, e = pcall(bomb, 1)\n"
        "return e.code",
        "const big = 'x'.repeat(300000);\n"
        "async function bomb(depth) {\n"
        "  const fns = [];\n"
        "  for (let i = 1; i <= 32; i++) fns.push(async () => {\n"
        "    if (i === 31 && depth < 4) { try { await bomb(depth + 1); } catch (e) {} }\n"
        "    const e = new Error(big); e.category = 'tool'; e.kind = 'execution_failed';\n"
        "    e.fields = {tool_name: 't', reason: big}; throw e;\n"
        "  });\n"
        "  return await recovery.fallback(fns);\n"
        "}\n"
        "async function main() { try { await bomb(1); } catch (e) { return e.code; } }")
    tracemalloc.start()
    try:
        result, _ = _run(Host([]), source, language)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result == "runtime/all_fallbacks_failed"
    assert peak < 40_000_000, peak  # before: over 70 MB (each copy a str and its JSON)


# -- a retry's own functions that raise ---------------------------------------------------------


@pytest.mark.parametrize("field,policy", [
    ("on", lambda: Retry(attempts=3, initial=0, on=lambda err: 1 / 0)),
    ("backoff", lambda: Retry(attempts=3, backoff=lambda n: 10 ** 400)),
])
def test_a_retry_function_that_raises_is_the_policys_error_not_the_tools(
        field, policy, language):
    def flaky() -> str:
        raise ConnectionError("down")

    host = Host([tool(flaky, retry=policy())])
    err, _ = _run(host, pick(language, "return tools.flaky{}",
                             "async function main() { return await tools.flaky({}); }"),
                  language)
    # before: tool/execution_failed 'flaky - ZeroDivisionError', as if the tool had raised it
    assert err.code == "configuration/invalid_value"
    assert err.fields["key"] == f"flaky.retry.{field}"
    assert "network/connection" in err.message


def test_a_tasks_retry_condition_that_raises_fails_the_task_not_the_coordinator(
        tmp_path: Path, language):
    @tool
    def down() -> str:
        raise ConnectionError("down")

    script = tmp_path / f"t{EXTENSION[language]}"
    script.write_text(pick(language, "return tools.down{}\n",
                           "async function main() { return await tools.down({}); }\n"))
    plan = Plan(name="p", timeout=10, tasks=[
        Task(id="t", script=str(script), retry=Retry(attempts=3, on=lambda err: 1 / 0)),
        Task(id="u", script=str(script))])
    # before: the plan raised a bare ExceptionGroup out of Coordinator.run
    report = Coordinator([down]).run(plan)
    assert report.error("t").code == "configuration/invalid_value"
    assert report.error("t").fields["key"] == "t.retry.on"
    assert report.error("u").code == "network/connection"


# -- an endpoint that sends its headers a byte at a time -------------------------------------


@pytest.fixture
def slowloris():
    """A loopback server that answers a status line, then a header every 0.05 s forever;
    ``hung_up`` is set when the client closes the connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    hung_up = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            while not hung_up.is_set():
                conn.sendall(b"X-Drip: 1\r\n")
                time.sleep(0.05)
        except OSError:
            hung_up.set()
        finally:
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1], hung_up
    hung_up.set()
    listener.close()


def test_an_endpoint_dripping_its_headers_is_hung_up_on_at_the_timeout(slowloris, language):
    port, hung_up = slowloris

    def svc() -> str:
        raise ConnectionError("down")

    host = Host([tool(svc, fallback=Fallback(options=[
        {"endpoint": f"http://127.0.0.1:{port}/x", "timeout": 0.5}]))])
    started = time.monotonic()
    err, _ = _run(host, pick(language, "return tools.svc{}",
                             "async function main() { return await tools.svc({}); }"),
                  language)
    assert err.code == "runtime/all_fallbacks_failed"
    assert err.fields["errors"][1]["category"] == "network"
    assert time.monotonic() - started < 3
    # before: httpx's timeout bounds each read only: the request went on in a worker
    # thread for as long as the server dripped (minutes), after the call had given up
    assert hung_up.wait(3)


# -- a config that is no regular file ----------------------------------------------------------


def test_a_config_that_is_a_fifo_is_refused_at_once_naming_what_it_is(tmp_path: Path):
    fifo = tmp_path / "polyspell.toml"
    os.mkfifo(fifo)  # opening it to read would wait for a writer for ever
    script = tmp_path / "s.lua"
    script.write_text("return 1\n")
    done = polyspell("run", script, "--config", fifo, cwd=tmp_path)
    assert done.returncode == 2
    # before: 'it is not a regular file, not a file'
    assert "configuration/load_failed" in done.stderr and "it is a FIFO" in done.stderr


# -- a run remembers a bounded number of the errors it handed to scripts ------------------

HANDED_LOOP = {
    "lua": """
local last
for i = 1, args.n do
  local ok, err = pcall(tools.always_fails, {})
  last = err
end
error(last)
""",
    "javascript": """
async function main(args) {
  let last;
  for (let i = 0; i < args.n; i++) {
    try { await tools.always_fails({}); } catch (e) { last = e; }
  }
  throw last;
}
""",
}


@pytest.mark.parametrize("language", ["lua", "javascript"])
def test_a_script_catching_failures_in_a_loop_does_not_make_the_run_keep_them_all(language):
    from host.runner import MAX_HANDED_ERRORS

    @tool
    def always_fails() -> None:
        """Fails every time."""
        raise ConnectionError("down")

    host = Host([always_fails], on_output=lambda line: None)
    run = host.new_run_source(HANDED_LOOP[language], language,
                              args={"n": MAX_HANDED_ERRORS + 300})
    with pytest.raises(SpellError) as caught:
        anyio.run(run.execute)
    assert len(run._refs) <= MAX_HANDED_ERRORS  # not one per failure
    err = caught.value  # the newest, rethrown, is still the host's own error
    assert err.code == "network/connection"
    assert isinstance(err.__cause__, ConnectionError)
