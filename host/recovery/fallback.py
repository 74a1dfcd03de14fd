"""``Fallback``: when a call fails, try the alternatives in order.

Options (the seed's fallback types; built so far: another tool, a value, the cache):

- ``{tool = "search_backup"}``: another tool of the host, in any language, called with the
  same parameters through its own pipeline; skipped while its circuit breaker is open;
- ``{value = ...}``: a default value (``null`` too);
- ``{cached = true, max_age = 3600}``: the last good result of this tool for the same
  parameters, at most ``max_age`` seconds old (kept per host, for the tools that have the
  option); skipped when there is none;
- ``{ask = "{tool} failed ({error}); what should it answer for {params}?"}``: a
  person's answer (a string), asked as a tool's ``AskHuman`` is (``Host(on_human_input=
  ...)``, or the terminal of ``polyspell run``: see :mod:`host.steer`), with the template
  filled from the call: ``{tool}``, ``{params}`` (as JSON), ``{error}`` (the last error's
  message); with no one to ask, a failed option (the next one is tried);
- ``{endpoint = "https://...", timeout = 5}``: an HTTP service: the call's parameters are
  POSTed to it as JSON (through ``httpx``, an optional dependency: the option is refused
  when it is not installed), and the JSON body of its answer is the result. ``timeout``
  (default 10 s) bounds the request, and the call's deadline bounds the timeout. An HTTP
  error status, a timeout or a connection failure is the unified error of ``bridge.wrap``
  (429 with ``Retry-After``: ``provider/rate_limited``; 5xx: ``provider/unavailable``);
  a body that is not JSON or larger than :data:`MAX_RESPONSE_BYTES` is
  ``provider/invalid_response``. Redirects are not followed (a 3xx is an error).

The layer is the outermost of a tool's policies. When every option fails (or is skipped),
the call fails with ``runtime/all_fallbacks_failed``: ``attempted_options``, the operation
(the tool), and every error in the order tried in ``fields.errors`` (as error JSON), the
first (the tool's own) also as the cause. Each option tried is recorded in the run's
recovery history (``fallback``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import anyio
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bridge import SpellError
from host.calls import as_script_data, failure_to_recover
from host.recovery.model import Policy, StrictJsonValue

if TYPE_CHECKING:
    from host.calls import Next, ToolCall

_MISSING = object()


MAX_RESPONSE_BYTES = 10 * 1024 * 1024  # an endpoint's answer, read at most
DEFAULT_ENDPOINT_TIMEOUT = 10.0
MAX_URL_CHARS = 2048
MAX_KEPT_CHARS = 4000  # a string of an error kept in all_fallbacks_failed's fields.errors
MAX_ASK_CHARS = 4096
ASK_FIELDS = ("tool", "params", "error")  # what an {ask = ...} template may name


class FallbackOption(BaseModel):
    """One alternative: exactly one of ``tool``, ``value``, ``cached``, ``endpoint``,
    ``ask``."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    tool: str | None = Field(None, min_length=1)
    value: StrictJsonValue = None
    cached: bool = False
    max_age: float | None = Field(None, gt=0, le=1e9, allow_inf_nan=False)
    endpoint: str | None = Field(None, min_length=1, max_length=MAX_URL_CHARS)
    timeout: float | None = Field(None, gt=0, le=1e9, allow_inf_nan=False)
    ask: str | None = Field(None, min_length=1, max_length=MAX_ASK_CHARS)

    @model_validator(mode="after")
    def _one_kind(self) -> FallbackOption:
        kinds = [self.tool is not None, "value" in self.model_fields_set, self.cached,
                 self.endpoint is not None, self.ask is not None]
        if sum(kinds) != 1:
            raise ValueError("a fallback option is one of {tool = ...}, {value = ...}, "
                             "{cached = true}, {endpoint = ...}, {ask = ...}")
        if self.ask is not None:
            _check_template(self.ask)
        if self.max_age is not None and not self.cached:
            raise ValueError("max_age is for a {cached = true} option")
        if self.timeout is not None and self.endpoint is None:
            raise ValueError("timeout is for an {endpoint = ...} option")
        if self.endpoint is not None:
            check_url(self.endpoint)
            if not httpx_installed():
                raise ValueError("an {endpoint = ...} fallback needs httpx, which is not "
                                 "installed (pip install httpx)")
        return self

    @property
    def label(self) -> str:
        """The option as a recovery event names it: the tool, ``value``, ``cached`` or
        ``endpoint <url>`` (without query, fragment or credentials: they may be secret)."""
        if self.tool is not None:
            return self.tool
        if self.endpoint is not None:
            return f"endpoint {public_url(self.endpoint)}"
        if self.ask is not None:
            return "ask"
        return "cached" if self.cached else "value"


def httpx_installed() -> bool:
    """Whether ``httpx`` can be imported (an endpoint option needs it)."""
    try:
        import httpx  # noqa: F401
    except ImportError:
        return False
    return True


def check_url(url: str) -> None:
    """Refuse (``ValueError``, saying why) a URL an endpoint may not have: the rules of
    the endpoint fallback and of the webhook alert channel."""
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise ValueError("an endpoint URL has no spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is no number or out of range
    except ValueError as exc:
        raise ValueError(f"not a URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"an endpoint is an http:// or https:// URL, not "
                         f"{parts.scheme + ':' if parts.scheme else 'a relative one'}")
    if not parts.hostname:
        raise ValueError("an endpoint URL names a host")


def _check_template(template: str) -> None:
    """Refuse an ``{ask = ...}`` template that names anything but ``{tool}``,
    ``{params}`` and ``{error}`` (plain names: no attribute, index or nested field)."""
    import string

    try:
        fields = [(name, spec) for _, name, spec, _ in string.Formatter().parse(template)
                  if name is not None]
    except ValueError as exc:
        raise ValueError(f"an ask template is not a valid format string ({exc})") from None
    for name, spec in fields:
        if name not in ASK_FIELDS or "{" in (spec or ""):
            raise ValueError(f"an ask template names only {{tool}}, {{params}} and "
                             f"{{error}}, not {{{name}}}")


def ask_question(template: str, call: ToolCall, error: SpellError) -> str:
    """The question of an ``{ask = ...}`` option for ``call``, failed with ``error``."""
    from bridge.jsontext import json_text

    try:
        params = json_text(call.params)
    except (TypeError, ValueError):
        params = repr(call.params)
    return template.format(tool=call.name, params=params, error=error.message)


def public_url(url: str) -> str:
    """``url`` without its credentials, query and fragment: what errors and logs show."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


class Fallback(Policy):
    """The alternatives of a tool, tried in order (``fallback = [ {...}, ... ]``)."""

    policy_name: ClassVar[str] = "fallback"

    options: list[FallbackOption] = Field(min_length=1, max_length=32)

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, data: Any) -> Any:
        return {"options": data} if isinstance(data, list) else data

    @property
    def caches(self) -> bool:
        """Whether one of the options reads the cache (so good results are kept)."""
        return any(option.cached for option in self.options)

    def tools(self) -> list[str]:
        """The tools the options name."""
        return [option.tool for option in self.options if option.tool is not None]


Cache = dict[str, tuple[float, Any]]  # parameters as JSON text -> (when, result)


class FallbackLayer:
    """Tries the tool (the rest of its pipeline), then each option, as :class:`Fallback`
    says. ``cache`` is the host's store of this tool's last good results."""

    def __init__(self, policy: Fallback, cache: Cache,
                 is_open: Callable[[str], bool]) -> None:
        self.policy = policy
        self.cache = cache
        self.is_open = is_open  # whether a tool's breaker refuses calls now

    def __call__(self, call: ToolCall, next: Next) -> Any:
        try:
            result = next(call)
        except BaseException as exc:
            first = failure_to_recover(call, exc)
        else:
            if self.policy.caches:
                key = _key(call.params)
                if key is not None:
                    self.cache[key] = (time.monotonic(), result)
            return result
        if first.code == "async_execution/task_cancelled":  # the run is stopping
            raise first
        errors: list[SpellError] = [first]
        attempted = 0
        for option in self.policy.options:
            answer = self._try(option, call, errors)
            if answer is not _MISSING:
                return answer
            attempted += 1
        failed = all_fallbacks_failed(call.name, errors, attempted)
        call.run.attach_recovery(failed)
        raise failed

    def _try(self, option: FallbackOption, call: ToolCall, errors: list[SpellError]) -> Any:
        run = call.run
        last = errors[-1]
        if option.cached:
            kept = cached_result(self.cache, option, call.params)
            if kept is not _MISSING:
                run.record_recovery("fallback", call.name, len(errors), last, option="cached")
            return kept
        if option.tool is not None and self.is_open(option.tool):
            return _MISSING  # unavailable: its breaker is open
        run.record_recovery("fallback", call.name, len(errors), last, option=option.label)
        if option.tool is None and option.endpoint is None and option.ask is None:
            return option.value
        try:
            return _call_option(option, call, last)
        except SpellError as err:
            if err is run.control.reason:  # the run is stopping: no more options
                raise
            errors.append(err)
            return _MISSING


def _call_option(option: FallbackOption, call: ToolCall, last: SpellError) -> Any:
    """The answer of an option that calls something: a tool, an endpoint, a person."""
    if option.tool is not None:
        return call.run.call_tool(option.tool, call)
    if option.endpoint is not None:
        return _post(option, call)
    from host.steer import ask_human

    return ask_human(call, ask_question(option.ask, call, last))


def all_fallbacks_failed(operation: str, errors: list[SpellError], attempted: int
                         ) -> SpellError:
    """``runtime/all_fallbacks_failed`` of ``operation`` after ``attempted`` options: every
    error in the order tried in ``fields.errors`` (as error JSON), the first as its cause.
    The one construction of this error (a tool's fallbacks, a script's
    ``recovery.fallback``)."""
    from bridge.jsontext import replaced

    return SpellError(category="runtime", kind="all_fallbacks_failed",
                      attempted_options=attempted, operation=operation,
                      errors=[replaced(err.to_dict(), shortened) for err in errors],
                      cause=errors[0])


def shortened(leaf: Any) -> Any:
    """A string of an option's error JSON, at most :data:`MAX_KEPT_CHARS` long: up to 32
    errors are kept, each as large as its raiser made it (a script's error of 6 MB made
    a 200 MB error of the fallback); the first error stays whole, as the cause."""
    if isinstance(leaf, str) and len(leaf) > MAX_KEPT_CHARS:
        hidden = len(leaf) - MAX_KEPT_CHARS
        return f"{leaf[:MAX_KEPT_CHARS]} [... {hidden} more characters]"
    return leaf


def _post(option: FallbackOption, call: ToolCall) -> Any:
    """POST the call's parameters to ``option.endpoint``; its JSON answer as script data.

    The request runs as a Python tool does (:func:`host.calls.run_python`), within its
    own deadline: a stop request of the run ends the wait at once (the request finishes
    in the background, within its timeout)."""
    import dataclasses

    from bridge import NetworkError, ToolError
    from host.calls import DeadlineReached, run_python

    limit = min(option.timeout or DEFAULT_ENDPOINT_TIMEOUT, call.time_left)
    if limit <= 0:
        raise ToolError.Timeout(tool_name=call.name, duration=0.0)
    deadline = time.monotonic() + limit
    timed = dataclasses.replace(call, deadline=min(call.deadline, deadline))
    try:
        return run_python(timed, _request, (option, call, limit, deadline), {}, False,
                          interruptible=True)
    except DeadlineReached as reached:
        run = call.run
        if reached.deadline >= run.deadline:  # the run's time limit, as at any tool call
            raise run.out_of_time() from None
        if reached.deadline != deadline:
            raise  # an outer layer's deadline came first: that layer reports it
        raise NetworkError.Timeout(endpoint=public_url(option.endpoint or ""),
                                   duration=round(limit, 3)) from None


def _request(option: FallbackOption, call: ToolCall, limit: float, deadline: float) -> Any:
    import httpx

    from bridge import ProviderError
    from bridge.data import TooDeep, read_json
    from bridge.jsontext import json_text
    from host.calls import as_spell_error

    url = option.endpoint
    assert url is not None
    where = public_url(url)
    host = urlsplit(url).hostname or ""
    try:
        body = anyio.run(exchange, url, json_text(call.params).encode(), limit, deadline,
                         host, where)
    except httpx.HTTPError as exc:
        redact(exc, url, where)
        raise as_spell_error(call, exc) from exc
    try:
        result = read_json(bytes(body))
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        why = "nested too deeply" if isinstance(exc, TooDeep) else "not JSON"
        raise ProviderError.InvalidResponse(
            provider=host, reason=f"the answer of {where} is {why} ({exc})",
            response_excerpt=bytes(body[:200]).decode("utf-8", "replace")) from None
    return as_script_data(call, result)


async def exchange(url: str, content: bytes, limit: float, deadline: float, host: str,
                    where: str) -> bytearray:
    """The POST of :func:`_request` (and of the webhook alert channel) and its answer's
    body, ended at ``deadline`` whatever the server does: httpx's timeout bounds each
    read, not the whole, so a server sending its headers (or body) a byte at a time held
    the worker thread long after the call had given up on it; a cancel scope closes the
    connection at the deadline."""
    import httpx

    from bridge import ProviderError

    body = bytearray()
    async with httpx.AsyncClient(timeout=limit, follow_redirects=False) as client:
        request = client.build_request("POST", url, content=content,
                                       headers={"content-type": "application/json",
                                                "accept": "application/json"})
        with anyio.move_on_after(max(0.0, deadline - time.monotonic())) as scope:
            response = await client.send(request, stream=True)
            try:
                response.raise_for_status()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_RESPONSE_BYTES:
                        raise ProviderError.InvalidResponse(
                            provider=host, reason=f"the answer of {where} is larger than "
                                                  f"{MAX_RESPONSE_BYTES} bytes")
            finally:
                await response.aclose()
        if scope.cancelled_caught:  # a server dripping its headers or its answer
            raise httpx.ReadTimeout("the answer took longer than the timeout",
                                    request=request)
    return body


def redact(exc: BaseException, url: str, public: str) -> None:
    """Take ``url`` (its credentials, query and fragment may be secrets) out of the
    messages of ``exc`` and the exceptions behind it, in favour of ``public``: httpx puts
    the whole URL in an error status's message, and the exception stays the cause of the
    unified error (in its JSON, ``--json``, a Python user's traceback)."""
    secrets = {url}
    try:
        secrets.add(str(exc.request.url))  # type: ignore[attr-defined] - as httpx wrote it
    except (AttributeError, RuntimeError):  # no request was set
        pass
    secrets = {secret for secret in secrets if secret and secret != public}
    seen: set[int] = set()
    problem: BaseException | None = exc
    while problem is not None and id(problem) not in seen:
        seen.add(id(problem))
        if any(isinstance(arg, str) for arg in problem.args):
            args = []
            for arg in problem.args:
                if isinstance(arg, str):
                    for secret in sorted(secrets, key=len, reverse=True):
                        arg = arg.replace(secret, public)
                args.append(arg)
            problem.args = tuple(args)
        problem = problem.__cause__ or problem.__context__


def cached_result(cache: Cache, option: FallbackOption, params: Any) -> Any:
    """The good result ``cache`` keeps for ``params`` if ``option`` (a ``{cached = true}``
    option) may use it (at most its ``max_age`` old), else the module's ``_MISSING``."""
    key = _key(params)
    kept = cache.get(key) if key is not None else None
    if kept is None or (option.max_age is not None
                        and time.monotonic() - kept[0] > option.max_age):
        return _MISSING
    return kept[1]


def _key(params: Any) -> str | None:
    try:
        return json.dumps(params, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        return None
