"""Well-known Python exceptions out of a tool become the unified error recovery decides on
(``bridge.wrap``): what the script catches, what escapes to Python (retryable, retry_after,
the original exception as the cause, the tool's frames), real ``httpx`` against a loopback
HTTP server, stand-ins for the ``openai``/``anthropic`` SDKs, and the user's own entries."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest

from bridge import NetworkError, SpellError, ToolError, wrap
from bridge.wrapping import retry_after_seconds
from host import Host, ToolCall, tool
from host.calls import as_spell_error
from tests.conftest import pick
from tests.loopback import http_server

# -- the tools and the script ----------------------------------------------------------

RAISED: dict[str, BaseException] = {}  # the exception each case's tool raised, by case
SEEN: list[dict[str, Any]] = []  # what the script caught


def _raise(case: str, exc: BaseException) -> None:
    RAISED[case] = exc
    raise exc


@tool
def remember(category: str, kind: str, fields: dict) -> None:
    """Keeps what the script caught."""
    SEEN.append({"category": category, "kind": kind, "fields": fields})


SCRIPT = {
    "lua": """
local ok, err = pcall(tools.fail, {case = args.case})
tools.remember{category = err.category, kind = err.kind, fields = err.fields}
error(err)
""",
    "javascript": """
async function main() {
  try { await tools.fail({case: args.case}); }
  catch (e) {
    await tools.remember({category: e.category, kind: e.kind, fields: e.fields});
    throw e;
  }
}
""",
}


def run_case(fail: Any, case: str, language: str, *tools: Any) -> tuple[SpellError, dict]:
    """Run the script against the tool ``fail`` for ``case``: the error that escaped, and
    what the script caught (the same error, seen from inside)."""
    SEEN.clear()
    host = Host([fail, remember, *tools])
    with pytest.raises(SpellError) as info:
        host.run_source(SCRIPT[language], language, "agent.src", {"case": case})
    assert len(SEEN) == 1, "the script caught the tool's error"
    return info.value, SEEN[0]


def check(err: SpellError, seen: dict, case: str, code: str, fields: dict[str, Any],
          retryable: bool, retry_after: Any, tool_function: str = "fail") -> None:
    """The error is ``code`` with ``fields`` on both sides, its cause is the very exception
    the tool raised, and its innermost frame is the tool's."""
    assert err.code == code, err.to_text()
    assert f"{seen['category']}/{seen['kind']}" == code
    for name, want in fields.items():
        assert err.fields[name] == want, name
        assert seen["fields"].get(name) == want, name
    assert err.retryable is retryable
    if retry_after is None:
        assert err.retry_after is None
    elif retry_after is not ...:  # ...: the caller checks it
        assert err.retry_after == pytest.approx(retry_after, abs=0.5)
    assert err.__cause__ is RAISED[case]
    python = [frame.function for frame in err.frames if frame.language == "python"]
    assert tool_function in python and err.frames[-1].language == "python"


@pytest.fixture
def table() -> Iterator[Any]:
    """The exception table, with the user's entries put back as they were afterwards."""
    saved = wrap._user
    yield wrap
    wrap._user = saved


# -- Python's own exceptions -------------------------------------------------------------

class SlowUpstream(TimeoutError):
    """A library's own timeout class: maps through TimeoutError."""


class FlakyLink(ConnectionResetError):
    """A library's own connection class: maps through ConnectionError."""


PYTHON = {
    "timeout": lambda: TimeoutError("upstream took too long"),
    "refused": lambda: ConnectionRefusedError(111, "Connection refused"),
    "reset": lambda: ConnectionResetError(104, "Connection reset by peer"),
    "aborted": lambda: ConnectionAbortedError("aborted"),
    "broken_pipe": lambda: BrokenPipeError(32, "Broken pipe"),
    "subclass_timeout": lambda: SlowUpstream("slow"),
    "subclass_connection": lambda: FlakyLink("flaky"),
}


@tool
def fail(case: str) -> None:
    """Raises the exception of ``case``."""
    _raise(case, PYTHON[case]())


@pytest.mark.parametrize("case", ["timeout", "subclass_timeout"])
def test_a_timeout_error_is_the_tools_timeout_with_how_long_it_ran(language, case):
    started = time.perf_counter()
    err, seen = run_case(fail, case, language)
    check(err, seen, case, "tool/timeout", {"tool_name": "fail"}, True, 0.5)
    assert 0 < err.fields["duration"] < time.perf_counter() - started


@tool
async def wait_briefly(case: str) -> None:
    """Gives up on a wait with asyncio.wait_for (asyncio.TimeoutError is TimeoutError)."""
    try:
        await asyncio.wait_for(asyncio.sleep(5), 0.01)
    except asyncio.TimeoutError as exc:  # noqa: UP041 - the name a tool's author writes
        RAISED[case] = exc
        raise


def test_an_async_tools_asyncio_timeout_is_the_tools_timeout(language):
    source = SCRIPT[language].replace("tools.fail", "tools.wait_briefly")
    SEEN.clear()
    with pytest.raises(SpellError) as info:
        Host([wait_briefly, remember]).run_source(source, language, "agent.src",
                                                  {"case": "asyncio"})
    check(info.value, SEEN[0], "asyncio", "tool/timeout", {"tool_name": "wait_briefly"},
          True, 0.5, "wait_briefly")
    assert info.value.fields["duration"] >= 0.01


@pytest.mark.parametrize("case", ["refused", "reset", "aborted", "broken_pipe",
                                  "subclass_connection"])
def test_the_connection_error_family_is_a_network_connection_error(language, case):
    err, seen = run_case(fail, case, language)
    reason = f"{type(RAISED[case]).__name__}: {RAISED[case]}"
    check(err, seen, case, "network/connection", {"reason": reason}, True, 1.0)


@tool(timeout=5.0)
def fail_timed(case: str) -> None:
    """Raises the exception of ``case`` from a tool that has a timeout of its own."""
    _raise(case, PYTHON[case]())


def test_a_tool_with_a_timeout_raising_its_own_timeout_error_keeps_it_as_the_cause(language):
    """A sync tool with a timeout runs on a worker thread; its own TimeoutError is its own,
    not the worker's wait running out."""
    SEEN.clear()
    host = Host([fail_timed, remember])
    source = SCRIPT[language].replace("tools.fail", "tools.fail_timed")
    with pytest.raises(ToolError.Timeout) as info:
        host.run_source(source, language, "agent.src", {"case": "timeout"})
    err = info.value
    assert err.__cause__ is RAISED["timeout"]
    assert err.fields["duration"] < 5.0
    assert "fail_timed" in [frame.function for frame in err.frames]


def test_a_layer_decides_on_the_mapped_error(language):
    codes: list[str] = []

    def watch(call: ToolCall, next: Any) -> Any:
        try:
            return next(call)
        except Exception as exc:
            codes.append(as_spell_error(call, exc).code)
            raise

    host = Host([fail], layers=[watch])
    with pytest.raises(NetworkError.Connection):
        host.run_source(pick(language, 'tools.fail{case = "reset"}',
                             'async function main() { await tools.fail({case: "reset"}); }'),
                        language)
    assert codes == ["network/connection"]


# -- httpx against a real HTTP server on loopback -------------------------------------------

class Handler(BaseHTTPRequestHandler):
    """``/<status>`` answers that status; ``Retry-After`` from ``?after=``; ``/slow`` sleeps."""

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/slow":
            time.sleep(1.0)
            status = 200
        else:
            status = int(path.strip("/"))
        self.send_response(status)
        if query.startswith("after="):
            self.send_header("Retry-After", query[len("after="):].replace("%20", " "))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with http_server(Handler) as url:
        yield url


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


HTTP_DATE_AHEAD = 30  # seconds: a Retry-After given as an HTTP date


def http_tool(base: str) -> Any:
    """A tool that fetches with real httpx: ``case`` is the path (and query) to get."""

    @tool
    def fail(case: str) -> None:
        """Fetches ``case`` from the server and raises for an error status."""
        url = f"http://127.0.0.1:{_closed_port()}/" if case == "refused" else base + case
        if case == "dns":
            url = "http://no-such-host.invalid/x"
        try:
            httpx.get(url, timeout=httpx.Timeout(2.0, read=0.1)).raise_for_status()
        except httpx.HTTPError as exc:
            RAISED[case] = exc
            raise

    return fail


HTTPX_CASES = {
    "/429?after=3": ("provider/rate_limited", {"provider": "127.0.0.1"}, True, 3.0),
    "/429": ("provider/rate_limited", {"provider": "127.0.0.1"}, True, 1.0),
    "/503?after=7": ("provider/unavailable",
                     {"provider": "127.0.0.1", "status": 503,
                      "reason": "HTTP 503 Service Unavailable"}, True, 7.0),
    "/500": ("provider/unavailable", {"status": 500}, True, 2.0),
    "/401": ("provider/authentication", {"reason": "HTTP 401 Unauthorized"}, False, None),
    "/403": ("provider/authentication", {"reason": "HTTP 403 Forbidden"}, False, None),
    "/404": ("network/http_status", {"status": 404, "reason": "HTTP 404 Not Found"},
             False, None),
    "/slow": ("network/timeout", {"duration": 0.1}, True, 1.0),
    "refused": ("network/connection", {}, True, 1.0),
}


@pytest.mark.parametrize("case", list(HTTPX_CASES))
def test_httpx_errors_from_a_real_server(language, server, case):
    code, fields, retryable, retry_after = HTTPX_CASES[case]
    err, seen = run_case(http_tool(server), case, language)
    check(err, seen, case, code, fields, retryable, retry_after)
    if code.startswith("network/") and case != "refused":
        assert err.fields["endpoint"] == server + case.partition("?")[0]
    if case == "refused":
        assert err.fields["endpoint"].startswith("http://127.0.0.1:")


def test_a_retry_after_http_date_is_seconds_from_now(language, server):
    when = formatdate(time.time() + HTTP_DATE_AHEAD, usegmt=True).replace(" ", "%20")
    case = f"/429?after={when}"
    err, seen = run_case(http_tool(server), case, language)
    check(err, seen, case, "provider/rate_limited", {}, True, ...)
    assert HTTP_DATE_AHEAD - 3 < err.retry_after <= HTTP_DATE_AHEAD


def test_an_unknown_host_is_a_dns_failure(language, monkeypatch):
    """The resolver is told to fail for the reserved ``.invalid`` name, so that the test
    does not depend on this machine's DNS; httpx runs for real."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "no-such-host.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    err, seen = run_case(http_tool("unused"), "dns", language)
    check(err, seen, "dns", "network/dns_resolution", {"host": "no-such-host.invalid"},
          True, 2.0)


@pytest.mark.anyio
async def test_an_async_tool_with_httpx(server, anyio_backend):
    """An async tool's exception maps the same way (asyncio and trio)."""

    @tool
    async def fail(case: str) -> None:
        """Fetches ``case`` asynchronously."""
        async with httpx.AsyncClient() as client:
            try:
                (await client.get(server + case)).raise_for_status()
            except httpx.HTTPError as exc:
                RAISED[case] = exc
                raise

    SEEN.clear()
    with pytest.raises(SpellError) as info:
        await Host([fail, remember]).arun_source(SCRIPT["javascript"], "javascript",
                                                 "agent.js", {"case": "/429?after=2"})
    check(info.value, SEEN[0], "/429?after=2", "provider/rate_limited", {}, True, 2.0)


# -- the SDKs, as stand-ins (matched by module and class name, not imported) ---------------

def sdk_classes(package: str) -> dict[str, type[Exception]]:
    """Small classes with the SDK's names, module and hierarchy (``openai._exceptions``)."""
    module = f"{package}._exceptions"

    def make(name: str, base: type[Exception], body: dict | None = None) -> type[Exception]:
        return type(name, (base,), {"__module__": module, **(body or {})})

    def status_init(self: Any, message: str, *, response: httpx.Response,
                    body: Any = None) -> None:
        Exception.__init__(self, message)
        self.message, self.response, self.request = message, response, response.request
        self.status_code = response.status_code
        self.code = (body or {}).get("code")

    def connection_init(self: Any, *, message: str = "Connection error.",
                        request: httpx.Request) -> None:
        Exception.__init__(self, message)
        self.message, self.request = message, request

    api = make("APIError", Exception)
    status = make("APIStatusError", api, {"__init__": status_init})
    connection = make("APIConnectionError", api, {"__init__": connection_init})
    classes = {"APIStatusError": status, "APIConnectionError": connection,
               "APITimeoutError": make("APITimeoutError", connection)}
    for name in ("RateLimitError", "AuthenticationError", "PermissionDeniedError",
                 "InternalServerError", "BadRequestError"):
        classes[name] = make(name, status)
    return classes


OPENAI, ANTHROPIC = sdk_classes("openai"), sdk_classes("anthropic")
REQUEST = httpx.Request("POST", "https://api.example.com/v1/messages?key=secret")


def _response(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers, request=REQUEST)


SDK = {
    "openai_rate": (lambda: OPENAI["RateLimitError"](
        "Rate limit reached", response=_response(429, **{"retry-after-ms": "1500"})),
        "provider/rate_limited", {"provider": "openai"}, True, 1.5),
    "anthropic_rate": (lambda: ANTHROPIC["RateLimitError"](
        "rate_limit_error", response=_response(429, **{"retry-after": "4"})),
        "provider/rate_limited", {"provider": "anthropic"}, True, 4.0),
    "openai_quota": (lambda: OPENAI["RateLimitError"](
        "You exceeded your current quota", response=_response(429),
        body={"code": "insufficient_quota"}),
        "provider/quota_exceeded",
        {"provider": "openai", "reason": "You exceeded your current quota"}, False, None),
    "anthropic_auth": (lambda: ANTHROPIC["AuthenticationError"](
        "invalid x-api-key", response=_response(401)),
        "provider/authentication", {"provider": "anthropic", "reason": "invalid x-api-key"},
        False, None),
    "openai_forbidden": (lambda: OPENAI["PermissionDeniedError"](
        "region not supported", response=_response(403)),
        "provider/authentication", {"provider": "openai"}, False, None),
    "anthropic_overloaded": (lambda: ANTHROPIC["APIStatusError"](
        "Overloaded", response=_response(529, **{"retry-after": "9"})),
        "provider/unavailable", {"provider": "anthropic", "status": 529}, True, 9.0),
    "openai_server": (lambda: OPENAI["InternalServerError"](
        "server error", response=_response(500)),
        "provider/unavailable", {"status": 500}, True, 2.0),
    "openai_bad_request": (lambda: OPENAI["BadRequestError"](
        "bad request", response=_response(400)),
        "provider/request_failed", {"provider": "openai", "reason": "bad request"},
        False, None),
    "openai_timeout": (lambda: OPENAI["APITimeoutError"](
        message="Request timed out.", request=REQUEST),
        "provider/timeout", {"provider": "openai"}, True, 1.0),
    "anthropic_connection": (lambda: ANTHROPIC["APIConnectionError"](request=REQUEST),
        "network/connection",
        {"endpoint": "https://api.example.com/v1/messages", "reason": "Connection error."},
        True, 1.0),
}


@tool
def call_sdk(case: str) -> None:
    """Raises the SDK stand-in's error of ``case``."""
    _raise(case, SDK[case][0]())


@pytest.mark.parametrize("case", list(SDK))
def test_sdk_errors_by_module_and_class_name(language, case):
    _, code, fields, retryable, retry_after = SDK[case]
    source = SCRIPT[language].replace("tools.fail", "tools.call_sdk")
    SEEN.clear()
    with pytest.raises(SpellError) as info:
        Host([call_sdk, remember]).run_source(source, language, "agent.src", {"case": case})
    check(info.value, SEEN[0], case, code, fields, retryable, retry_after, "call_sdk")
    if code == "provider/timeout":
        assert info.value.fields["duration"] > 0


# -- the user's entries --------------------------------------------------------------------

class AppError(Exception):
    """The base class of an application's errors."""


class QuotaSpent(AppError):
    """Registered by class."""


class Throttled(AppError):
    """Registered by name."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"throttled for {wait}s")
        self.wait = wait


class Unregistered(AppError):
    """Maps through AppError's entry."""


USER = {"quota": lambda: QuotaSpent("spent"), "throttled": lambda: Throttled(12.0),
        "unregistered": lambda: Unregistered("db down"),
        "timeout": lambda: TimeoutError("slow"), "reset": lambda: ConnectionResetError("x")}


@tool
def user_fail(case: str) -> None:
    """Raises the user's exception of ``case``."""
    _raise(case, USER[case]())


def run_user(case: str, language: str) -> tuple[SpellError, dict]:
    source = SCRIPT[language].replace("tools.fail", "tools.user_fail")
    SEEN.clear()
    with pytest.raises(SpellError) as info:
        Host([user_fail, remember]).run_source(source, language, "agent.src", {"case": case})
    return info.value, SEEN[0]


def test_the_users_entries_by_class_and_by_name(language, table):
    table.register(QuotaSpent, "provider/quota_exceeded", lambda exc: {"provider": "acme"})
    table.register("tests.Throttled", "provider/rate_limited",
                   lambda exc: {"provider": "acme", "retry_after": exc.wait})
    err, seen = run_user("quota", language)
    check(err, seen, "quota", "provider/quota_exceeded",
          {"provider": "acme", "reason": "QuotaSpent: spent"}, False, None, "user_fail")
    err, seen = run_user("throttled", language)
    check(err, seen, "throttled", "provider/rate_limited", {"provider": "acme"}, True, 12.0,
          "user_fail")


def test_a_subclass_maps_through_its_base_and_the_most_specific_entry_wins(language, table):
    table.register(AppError, NetworkError.Connection, lambda exc: {"endpoint": "db"})
    table.register(QuotaSpent, "provider/quota_exceeded", lambda exc: {"provider": "acme"})
    err, seen = run_user("unregistered", language)
    check(err, seen, "unregistered", "network/connection",
          {"endpoint": "db", "reason": "Unregistered: db down"}, True, 1.0, "user_fail")
    err, _ = run_user("quota", language)
    assert err.code == "provider/quota_exceeded"


def test_the_users_entry_wins_over_the_built_in_one_and_none_turns_it_off(language, table):
    table.register(TimeoutError, "provider/timeout", lambda exc: {"provider": "acme"})
    table.register(ConnectionError, None)
    err, seen = run_user("timeout", language)
    check(err, seen, "timeout", "provider/timeout", {"provider": "acme"}, True, 1.0,
          "user_fail")
    err, _ = run_user("reset", language)
    assert err.code == "tool/execution_failed" and err.__cause__ is RAISED["reset"]
    table.unregister(TimeoutError)
    err, _ = run_user("timeout", language)
    assert err.code == "tool/timeout"


BROKEN_FIELDS: dict[str, Callable[[BaseException], Any]] = {
    "raises": lambda exc: {}["provider"],
    "unknown field": lambda exc: {"provider": "acme", "colour": "red"},
    "wrong type": lambda exc: {"provider": 42},
}


@pytest.mark.parametrize("how", list(BROKEN_FIELDS))
def test_a_broken_entry_falls_back_to_execution_failed_and_says_why(language, table, how):
    table.register(QuotaSpent, "provider/quota_exceeded", BROKEN_FIELDS[how])
    err, seen = run_user("quota", language)
    check(err, seen, "quota", "tool/execution_failed", {"tool_name": "user_fail"}, False,
          None, "user_fail")
    reason = err.fields["reason"]
    assert reason.startswith("QuotaSpent: spent (mapping QuotaSpent to "
                             "provider/quota_exceeded failed: ")
    assert ("KeyError: 'provider'" in reason) if how == "raises" else ("colour" in reason
                                                                     or "provider" in reason)


def test_a_broken_code_function_falls_back_too(language, table):
    table.register(QuotaSpent, lambda exc: 1 / 0)
    err, _ = run_user("quota", language)
    assert err.code == "tool/execution_failed"
    assert "ZeroDivisionError" in err.fields["reason"] and err.__cause__ is RAISED["quota"]


def test_register_refuses_what_cannot_map(table):
    with pytest.raises(SpellError, match="unknown kind 'nope'"):
        table.register(AppError, "network/nope")
    with pytest.raises(SpellError, match="unknown category"):
        table.register(AppError, "nowhere/timeout")
    with pytest.raises(ValueError, match=r"package\.ClassName"):
        table.register("AppError", "network/connection")
    with pytest.raises(TypeError):
        table.register(int, "network/connection")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        table.register(AppError, SpellError)
    table.register(AppError, "network")  # a bare category: its catch-all kind
    assert wrap.entry(Unregistered())[0] is NetworkError.Connection


def test_retry_after_as_seconds_or_an_http_date():
    now = 1_700_000_000.0
    assert retry_after_seconds("120") == 120.0
    assert retry_after_seconds(" 1.5 ") == 1.5
    assert retry_after_seconds(formatdate(now + 90, usegmt=True), now=now) == 90.0
    assert retry_after_seconds(formatdate(now - 90, usegmt=True), now=now) == 0.0
    assert retry_after_seconds("-5") == 0.0
    for bad in (None, "", "soon", "nan", "inf"):
        assert retry_after_seconds(bad) is None


# -- what recovery makes of it ---------------------------------------------------------------

def test_retry_on_network_retries_a_connection_error_and_honours_retry_after(language, server):
    """``on=["network"]`` sees a ConnectionResetError as network/connection; an httpx 429's
    ``Retry-After`` is the floor of the delay before the next try."""
    from host import Retry

    failures = {"reset": 2, "/429?after=0.3": 1}

    @tool(retry=Retry(attempts=3, backoff="fixed", initial=0.01, jitter=0,
                      on=["network", "provider/rate_limited"]))
    def flaky(case: str) -> str:
        """Fails as ``case`` says, a given number of times, then answers."""
        if failures[case]:
            failures[case] -= 1
            if case == "reset":
                raise ConnectionResetError(104, "Connection reset by peer")
            httpx.get(server + case).raise_for_status()
        return "ok"

    host = Host([flaky])
    source = pick(language, "return tools.flaky{case = args.case}",
                  "async function main() { return await tools.flaky({case: args.case}); }")
    assert host.run_source(source, language, "agent.src", {"case": "reset"}) == "ok"
    started = time.monotonic()
    assert host.run_source(source, language, "agent.src", {"case": "/429?after=0.3"}) == "ok"
    assert time.monotonic() - started >= 0.3
    assert failures == {"reset": 0, "/429?after=0.3": 0}
