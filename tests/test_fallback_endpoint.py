"""The fallback option ``{endpoint = "http://...", timeout = ...}`` against a real HTTP server
on loopback: the call's parameters POSTed as JSON, the JSON answer as the result, and each
way it can fail as the right unified error."""

from __future__ import annotations

import json
import sys
import time
from http.server import BaseHTTPRequestHandler

import pytest

from bridge import SpellError
from host import Host, tool
from host.recovery.fallback import MAX_RESPONSE_BYTES
from tests.loopback import http_server

CALL = {"lua": "return tools.service{q = 'x', n = 2}",
        "javascript": "async function main() { return await tools.service({q: 'x', n: 2}); }"}


class _Handler(BaseHTTPRequestHandler):
    received: list = []

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _reply(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        size = int(self.headers.get("content-length", 0))
        sent = self.rfile.read(size)
        _Handler.received.append((self.path, self.headers.get("content-type"), sent))
        path = self.path.partition("?")[0]
        try:
            if path == "/ok":
                self._reply(200, json.dumps({"echo": json.loads(sent), "from": "backup"}).encode())
            elif path == "/down":
                self._reply(500, b"oops")
            elif path == "/limited":
                self._reply(429, b"slow down", {"Retry-After": "7"})
            elif path == "/slow":
                time.sleep(3)
                self._reply(200, b"{}")
            elif path == "/text":
                self._reply(200, b"<html>not json</html>")
            elif path == "/deep":
                self._reply(200, b"[" * 5000 + b"]" * 5000)
            elif path == "/huge":
                self.send_response(200)
                self.send_header("content-length", str(MAX_RESPONSE_BYTES * 2))
                self.end_headers()
                chunk = b" " * 65536
                for _ in range(MAX_RESPONSE_BYTES * 2 // len(chunk)):
                    self.wfile.write(chunk)
            elif path == "/drip":
                self.send_response(200)
                self.send_header("content-length", "100")
                self.end_headers()
                for _ in range(100):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.1)
            elif path == "/moved":
                self._reply(302, b"", {"Location": "/ok"})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading, as it should


@pytest.fixture(scope="module")
def server():
    with http_server(_Handler) as url:
        yield url


def _host(url: str, timeout: float = 2.0) -> Host:
    def service(q: str, n: int) -> str:
        raise ConnectionRefusedError("service is down")

    return Host([tool(service)], recovery={"service": {"fallback": [
        {"endpoint": url, "timeout": timeout}]}})


def _failure(url: str, language: str = "lua", timeout: float = 2.0) -> SpellError:
    with pytest.raises(SpellError) as info:
        _host(url, timeout).run_source(CALL[language], language)
    err = info.value
    assert err.code == "runtime/all_fallbacks_failed"
    assert err.exceptions[0].code == "network/connection"  # the tool's own
    return err.exceptions[1]


def test_the_answer_of_the_endpoint_is_the_result(server, language):
    import anyio

    _Handler.received.clear()
    run = _host(f"{server}/ok?token=secret").new_run_source(CALL[language], language)
    assert anyio.run(run.execute) == {"echo": {"q": "x", "n": 2}, "from": "backup"}
    (path, content_type, sent), = _Handler.received
    assert (path, content_type, json.loads(sent)) == \
        ("/ok?token=secret", "application/json", {"q": "x", "n": 2})
    (event,) = run.recovery
    assert event["option"] == f"endpoint {server}/ok"  # no query: it may hold a secret


def test_a_server_error_is_provider_unavailable(server, language):
    err = _failure(f"{server}/down", language)
    assert (err.code, err.fields["status"], err.retryable) == ("provider/unavailable", 500, True)


def test_a_rate_limit_keeps_its_retry_after(server):
    err = _failure(f"{server}/limited")
    assert (err.code, err.retry_after, err.fields["provider"]) == \
        ("provider/rate_limited", 7.0, "127.0.0.1")


def test_a_slow_server_times_out_at_the_options_timeout(server):
    began = time.monotonic()
    err = _failure(f"{server}/slow", timeout=0.3)
    assert err.code == "network/timeout" and err.fields["duration"] == 0.3
    assert time.monotonic() - began < 2


def test_a_dripping_answer_is_cut_at_the_timeout(server):
    began = time.monotonic()
    err = _failure(f"{server}/drip", timeout=0.5)
    assert err.code == "network/timeout"
    assert time.monotonic() - began < 2.5  # not the ten seconds the answer would take


def test_the_calls_deadline_bounds_the_timeout(server):
    def service(q: str, n: int) -> str:
        raise ConnectionRefusedError("service is down")

    host = Host([tool(service)], timeout=0.5,
                recovery={"service": {"fallback": [{"endpoint": f"{server}/slow",
                                                    "timeout": 30}]}})
    began = time.monotonic()
    with pytest.raises(SpellError) as info:
        host.run_source(CALL["lua"], "lua")
    assert time.monotonic() - began < 2
    err = info.value  # the run's time limit, not an option's failure
    assert (err.code, err.fields["resource_type"]) == ("script/resource_exhaustion", "time")


@pytest.mark.parametrize("path,why", [("/text", "is not JSON"),
                                      ("/deep", "is nested too deeply"),
                                      ("/huge", f"is larger than {MAX_RESPONSE_BYTES} bytes")])
def test_an_answer_that_is_no_json_or_too_big_is_invalid_response(server, path, why):
    err = _failure(f"{server}{path}")
    assert err.code == "provider/invalid_response"
    assert f"the answer of {server}{path} {why}" in err.message


def test_a_redirect_is_not_followed(server):
    err = _failure(f"{server}/moved")
    assert (err.code, err.fields["status"]) == ("network/http_status", 302)


def test_nothing_listening_is_a_connection_error():
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    err = _failure(f"http://127.0.0.1:{port}/x")
    assert err.code == "network/connection"


@pytest.mark.parametrize("option,reason", [
    ({"endpoint": "file:///etc/passwd"}, "an endpoint is an http:// or https:// URL, not file:"),
    ({"endpoint": "ftp://example.com/x"}, "not ftp:"),
    ({"endpoint": "example.com/x"}, "not a relative one"),
    ({"endpoint": "http:///x"}, "names a host"),
    ({"endpoint": "http://exa mple.com"}, "no spaces"),
    ({"endpoint": "http://example.com:99999/"}, "not a URL"),
    ({"endpoint": "http://x", "timeout": 0}, "greater than 0"),
    ({"endpoint": "http://x", "tool": "service"}, "one of"),
    ({"value": 1, "timeout": 3}, "timeout is for an {endpoint = ...} option"),
])
def test_a_bad_endpoint_option_is_refused_naming_tool_and_field(option, reason):
    def service() -> str:
        return ""

    with pytest.raises(SpellError) as info:
        Host([tool(service)], recovery={"service": {"fallback": [option]}})
    err = info.value
    assert err.code == "configuration/invalid_value"
    assert err.fields["key"].startswith("service.fallback")
    assert reason in err.message


def test_without_httpx_an_endpoint_option_is_a_configuration_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "httpx", None)  # as if it were not installed

    def service() -> str:
        return ""

    with pytest.raises(SpellError) as info:
        Host([tool(service)], recovery={"service": {"fallback": [{"endpoint": "http://x"}]}})
    assert info.value.code == "configuration/invalid_value"
    assert "needs httpx, which is not installed (pip install httpx)" in info.value.message


def test_a_stop_request_ends_the_wait_for_a_slow_endpoint(server, language):
    import anyio

    from bridge import AsyncExecutionError

    run = _host(f"{server}/slow", timeout=30).new_run_source(CALL[language], language)
    stop = AsyncExecutionError.TaskCancelled(task_id="t", reason="enough",
                                             cancellation_source="caller")

    async def main() -> float:
        began = time.monotonic()
        async with anyio.create_task_group() as group:
            async def cancel() -> None:
                await anyio.sleep(0.3)
                run.cancel(stop)

            group.start_soon(cancel)
            with pytest.raises(SpellError) as info:
                await run.execute()
        assert info.value is stop  # not an option's failure: no other option was tried
        return time.monotonic() - began

    assert anyio.run(main) < 1.5
    assert [e["option"] for e in run.recovery] == [f"endpoint {server}/slow"]
