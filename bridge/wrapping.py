"""Well-known Python exceptions as the unified errors recovery decides on.

A tool that raises ``TimeoutError``, ``ConnectionResetError`` or an ``httpx`` 429 means
something a retry, a breaker or a fallback should act on; as ``tool/execution_failed`` it
would all look alike. :data:`wrap` is the table from exception classes to error codes::

    from bridge import wrap

    wrap.register(QuotaError, "provider/quota_exceeded",
                  lambda exc: {"provider": "acme", "reason": str(exc)})

A class is matched through the exception's MRO, so the most specific registered class wins
(a subclass of ``ConnectionError`` maps as ``ConnectionError`` unless it has an entry of its
own). A class is given as the class itself or by name, ``"package.ClassName"``, which
matches a class of that name defined anywhere inside the package: that is how the entries
for ``httpx`` and the ``openai``/``anthropic`` SDKs work without importing them (none is a
dependency). What the built-in entries give is listed in the README ("Errors from tools").

The error made keeps the exception as its cause and the frames where it was raised, like
``SpellError.wrap``; its retryability and ``retry_after`` are the variant's own defaults
unless the entry's fields say otherwise. Imports neither ``host`` nor ``engines``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from bridge.errors import SpellError, category_class, describe_exception, variant_class
from bridge.frames import python_frames

FieldsFn = Callable[[BaseException], Mapping[str, Any]]
"""``fields(exc)``: the error's fields for ``exc``; the keys ``message``, ``retryable``,
``retry_after`` and ``severity`` are passed to the error rather than taken as fields."""
CodeFn = Callable[[BaseException], "str | type[SpellError] | None"]
"""``code(exc)``: the code for this very exception, or ``None`` to leave it to the entries
of its base classes (an HTTP status error whose code depends on the status)."""
Code = str | type[SpellError] | None | CodeFn

# Keys of a fields function's answer that are the error's own settings, not fields.
_OPTIONS = ("message", "retryable", "retry_after", "severity")


class MappingFailed(Exception):
    """An entry matched but could not make its error (its function raised, or the fields
    did not fit the variant). The caller falls back to its catch-all error and says why."""

    def __init__(self, exc: BaseException, code: str, problem: BaseException) -> None:
        super().__init__(f"mapping {_NAME(type(exc))} to {code} failed: "
                         f"{describe_exception(problem, qualified=False)}")
        self.exception = exc
        self.code = code
        self.problem = problem


class _Entry(NamedTuple):
    code: Code
    fields: FieldsFn | None


ExcKey = type[BaseException] | str


class Wrapping:
    """The table from Python exception classes to unified error codes (see the module).

    Entries registered by the user take precedence over the built-in ones for the same
    class; :meth:`unregister` brings the built-in entry back. Thread-safe: the tables are
    replaced, never changed in place, so :meth:`lookup` takes no lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._builtin: dict[type | tuple[str, str], _Entry] = {}
        self._user: dict[type | tuple[str, str], _Entry] = {}
        # exception class -> the (user, built-in) tables in which no class of its MRO has
        # an entry: the usual tool failure (a ValueError) is looked up once per tables
        self._unmatched: dict[type, tuple[dict, dict]] = {}

    def register(self, exc_type: ExcKey, code: Code, fields: FieldsFn | None = None) -> None:
        """Map ``exc_type`` (a class, or ``"package.ClassName"``) and its subclasses to ``code``.

        ``code`` is ``"category/kind"``, a bare category (its catch-all kind), a variant
        class (``NetworkError.Timeout``), a function choosing the code per exception, or
        ``None``: not mapped (the tool's exception stays ``tool/execution_failed``, even if
        a base class or a built-in entry would map it). ``fields(exc)`` gives the error's
        fields; fields it leaves out among ``tool_name``, ``duration``,
        ``execution_time``, ``endpoint`` and ``reason`` are filled in when known (the tool,
        the time since the call started, the tool again, ``Type: message``).
        """
        self._put(self._user, exc_type, code, fields)

    def unregister(self, exc_type: ExcKey) -> None:
        """Remove the user's entry for ``exc_type`` (a built-in one applies again)."""
        key = _key(exc_type)
        with self._lock:
            table = dict(self._user)
            table.pop(key, None)
            self._user = table

    def _register_builtin(self, exc_type: ExcKey, code: Code,
                          fields: FieldsFn | None = None) -> None:
        self._put(self._builtin, exc_type, code, fields)

    def _put(self, table: dict, exc_type: ExcKey, code: Code, fields: FieldsFn | None) -> None:
        key = _key(exc_type)
        if isinstance(code, str) or isinstance(code, type):
            _variant(code)  # an unknown code is refused now, not when a tool fails
        elif code is not None and not callable(code):
            raise TypeError(f"code must be 'category/kind', a variant class, a function or "
                            f"None, not {type(code).__name__}")
        if fields is not None and not callable(fields):
            raise TypeError(f"fields must be a function of the exception, not "
                            f"{type(fields).__name__}")
        with self._lock:
            new = dict(table)
            new[key] = _Entry(code, fields)
            if table is self._user:
                self._user = new
            else:
                self._builtin = new

    def entry(self, exc: BaseException) -> tuple[type[SpellError], FieldsFn | None] | None:
        """The variant and fields function ``exc`` maps to, or ``None`` when it maps to none.

        Raises :class:`MappingFailed` when a code function raises or names no variant.
        """
        user, builtin = self._user, self._builtin
        exc_type = type(exc)
        unmatched = self._unmatched.get(exc_type)
        if unmatched is not None and unmatched[0] is user and unmatched[1] is builtin:
            return None
        mro = _MRO(exc_type)
        for cls in mro:
            name = _name(cls)
            for table in (user, builtin):
                found = table.get(cls) or table.get(name)
                if found is None:
                    continue
                code = found.code
                if code is None:
                    return None
                if not isinstance(code, str | type):
                    try:
                        code = code(exc)
                    except Exception as problem:
                        raise MappingFailed(exc, "its code", problem) from None
                    if code is None:
                        break  # not this exception: its base classes' entries may apply
                try:
                    return _variant(code), found.fields
                except SpellError as problem:
                    raise MappingFailed(exc, str(code), problem) from None
        if not any(table.get(cls) or table.get(_name(cls)) for cls in mro
                   for table in (user, builtin)):  # no entry at all: the same next time
            if len(self._unmatched) >= _UNMATCHED_KEPT:
                self._unmatched = {}
            self._unmatched[exc_type] = (user, builtin)
        return None

    def lookup(self, exc: BaseException, *, tool_name: str | None = None,
               elapsed: float | None = None) -> SpellError | None:
        """The unified error ``exc`` maps to, or ``None`` when no entry maps it.

        A :class:`SpellError` is returned as it is. ``tool_name`` and ``elapsed`` (seconds
        since the call started) fill the fields of the same names (``duration`` and
        ``execution_time`` from ``elapsed``). The error's cause is ``exc`` and its frames
        are where ``exc`` was raised. Raises :class:`MappingFailed` when the entry could
        not make its error.
        """
        if isinstance(exc, SpellError):
            return exc
        found = self.entry(exc)
        if found is None:
            return None
        variant, fields_fn = found
        try:
            given = dict(fields_fn(exc)) if fields_fn is not None else {}
            options = {key: given.pop(key) for key in _OPTIONS if key in given}
            known = variant.fields_model.model_fields
            filled = {"tool_name": tool_name, "duration": elapsed, "execution_time": elapsed,
                      "endpoint": tool_name}  # the service is the tool's, when no URL says
            for name, value in filled.items():
                if name in known and name not in given and value is not None:
                    given[name] = value
            if "reason" in known and "reason" not in given:
                given["reason"] = describe_exception(exc, qualified=False)
            message = options.pop("message", None)
            return variant(message, frames=python_frames(exc.__traceback__), cause=exc,
                           **options, **given)
        except Exception as problem:
            raise MappingFailed(exc, f"{variant.category}/{variant.kind}", problem) from None


_UNMATCHED_KEPT = 256  # classes remembered as matching no entry (then forgotten at once)

# Read through ``type`` itself: an exception's metaclass may hide or break the attributes.
_MRO = type.__dict__["__mro__"].__get__
_MODULE = type.__dict__["__module__"].__get__
_NAME = type.__dict__["__name__"].__get__


def _name(cls: type) -> tuple[str, str] | None:
    """``(top-level package, class name)`` of ``cls``, the key of a by-name entry."""
    try:
        module = _MODULE(cls)
        return (module.partition(".")[0] if isinstance(module, str) else "", _NAME(cls))
    except Exception:
        return None


def _key(exc_type: ExcKey) -> type | tuple[str, str]:
    if isinstance(exc_type, str):
        package, _, name = exc_type.rpartition(".")
        if not package or not name:
            raise ValueError(f"name a class as 'package.ClassName', not {exc_type!r}")
        return package.partition(".")[0], name
    if isinstance(exc_type, type) and issubclass(exc_type, BaseException):
        return exc_type
    raise TypeError(f"expected an exception class or 'package.ClassName', not {exc_type!r}")


def _variant(code: str | type[SpellError]) -> type[SpellError]:
    if isinstance(code, type):
        if not (issubclass(code, SpellError) and code.kind):
            raise TypeError(f"{code.__name__} is not a variant of the error hierarchy")
        return code
    category, _, kind = code.partition("/")
    return variant_class(category, kind or category_class(category).wrap_kind)


wrap = Wrapping()
"""The table every tool call's boundary consults (``from bridge import wrap``)."""


# -- helpers for entries ----------------------------------------------------------------


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date.

    ``None`` when absent or unreadable; a date in the past is 0.
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            from email.utils import parsedate_to_datetime  # 15 ms: only for a date

            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # HTTP dates are GMT
            when = when.replace(tzinfo=UTC)
        now = time.time() if now is None else now
        seconds = (when - datetime.fromtimestamp(now, UTC)).total_seconds()
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(0.0, seconds)


def _headers_retry_after(response: Any) -> float | None:
    """``retry-after-ms`` (OpenAI's) or ``retry-after`` of a response, in seconds."""
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        seconds = retry_after_seconds(milliseconds)
        if seconds is not None:
            return seconds / 1000
    return retry_after_seconds(headers.get("retry-after"))


def _endpoint(request: Any) -> str:
    """A request's URL without its query, fragment or credentials (they may hold secrets)."""
    url = getattr(request, "url", None)
    if url is None:
        return ""
    port = f":{url.port}" if getattr(url, "port", None) else ""
    return f"{url.scheme}://{url.host}{port}{url.path}"


def _request(exc: BaseException) -> Any:
    """The request an ``httpx`` or SDK exception was raised for, if it knows it
    (``httpx``'s ``.request`` raises when it was not set)."""
    try:
        return exc.request  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):
        return None


def _status_code(status: int) -> str | None:
    """The code an HTTP error status stands for, when it says something recovery uses."""
    if status == 429:
        return "provider/rate_limited"
    if status in (401, 403):
        return "provider/authentication"
    if 500 <= status <= 599:
        return "provider/unavailable"
    return None


# -- Python's own exceptions -----------------------------------------------------------

# A bare TimeoutError (asyncio's and concurrent.futures' are the same class) says the tool
# ran out of time, not where: tool/timeout, with the tool and how long it ran.
wrap._register_builtin(TimeoutError, "tool/timeout")
# ConnectionRefusedError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError.
wrap._register_builtin(ConnectionError, "network/connection")


# -- httpx (matched by name: never imported here) ----------------------------------------


def _httpx_timeout(exc: BaseException) -> dict[str, Any]:
    request = _request(exc)
    fields: dict[str, Any] = {"endpoint": _endpoint(request)}
    # the timeout that expired, as configured for this request (else the time the tool took)
    timeouts = getattr(request, "extensions", {}).get("timeout") or {}
    phase = {"ConnectTimeout": "connect", "ReadTimeout": "read", "WriteTimeout": "write",
             "PoolTimeout": "pool"}.get(type(exc).__name__)
    if isinstance(timeouts.get(phase), int | float):
        fields["duration"] = float(timeouts[phase])
    return fields


def _httpx_connect_code(exc: BaseException) -> str:
    import socket

    problem: BaseException | None = exc
    while problem is not None:  # httpx -> httpcore -> the socket's own error
        if isinstance(problem, socket.gaierror):
            return "network/dns_resolution"
        problem = problem.__cause__ or problem.__context__
    return "network/connection"


def _httpx_connect(exc: BaseException) -> dict[str, Any]:
    request = _request(exc)
    if _httpx_connect_code(exc) == "network/dns_resolution":
        url = getattr(request, "url", None)
        return {"host": getattr(url, "host", "") or ""}
    return {"endpoint": _endpoint(request)}


def _httpx_status_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    return _status_code(getattr(response, "status_code", 0)) or "network/http_status"


def _httpx_status(exc: BaseException) -> dict[str, Any]:
    response = exc.response  # type: ignore[attr-defined]
    request = _request(exc) or getattr(response, "request", None)
    status = response.status_code
    reason = f"HTTP {status} {getattr(response, 'reason_phrase', '')}".rstrip()
    code = _httpx_status_code(exc)
    if code == "network/http_status":
        return {"endpoint": _endpoint(request), "status": status, "reason": reason}
    url = getattr(request, "url", None)
    fields: dict[str, Any] = {"provider": getattr(url, "host", "") or ""}
    if code != "provider/rate_limited":
        fields["reason"] = reason
    if code == "provider/unavailable":
        fields["status"] = status
    retry_after = _headers_retry_after(response)
    if retry_after is not None and code != "provider/authentication":
        fields["retry_after"] = retry_after
    return fields


wrap._register_builtin("httpx.TimeoutException", "network/timeout", _httpx_timeout)
wrap._register_builtin("httpx.ConnectError", _httpx_connect_code, _httpx_connect)
wrap._register_builtin("httpx.NetworkError", "network/connection",
                       lambda exc: {"endpoint": _endpoint(_request(exc))})
wrap._register_builtin("httpx.RemoteProtocolError", "network/connection",
                       lambda exc: {"endpoint": _endpoint(_request(exc))})
wrap._register_builtin("httpx.HTTPStatusError", _httpx_status_code, _httpx_status)


# -- the openai and anthropic SDKs (matched by name: never imported here) ----------------


_SDKS = ("openai", "anthropic")


def _sdk_provider(exc: BaseException) -> str:
    """The SDK's package (``openai``), also for a subclass defined elsewhere."""
    names = (_name(cls) for cls in _MRO(type(exc)))
    return next((name[0] for name in names if name and name[0] in _SDKS), "")


def _sdk_reason(exc: BaseException) -> str:
    message = getattr(exc, "message", None)
    return message if isinstance(message, str) else describe_exception(exc, qualified=False)


# The SDKs' status classes, for an error whose response lost its status.
_SDK_STATUS = {"RateLimitError": 429, "AuthenticationError": 401, "PermissionDeniedError": 403,
               "InternalServerError": 500}


def _sdk_status_code(exc: BaseException) -> str:
    if getattr(exc, "code", None) == "insufficient_quota":  # OpenAI's 429 for a spent quota
        return "provider/quota_exceeded"
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int):
        status = next((_SDK_STATUS[c.__name__] for c in type(exc).__mro__
                       if c.__name__ in _SDK_STATUS), 0)
    return _status_code(status) or "provider/request_failed"


def _sdk_status(exc: BaseException) -> dict[str, Any]:
    code = _sdk_status_code(exc)
    fields: dict[str, Any] = {"provider": _sdk_provider(exc)}
    if code != "provider/rate_limited":
        fields["reason"] = _sdk_reason(exc)
    if code == "provider/unavailable":
        status = getattr(exc, "status_code", None)
        fields["status"] = status if isinstance(status, int) else None
    if code in ("provider/rate_limited", "provider/unavailable"):
        retry_after = _headers_retry_after(getattr(exc, "response", None))
        if retry_after is not None:
            fields["retry_after"] = retry_after
    return fields


for _sdk in _SDKS:
    wrap._register_builtin(f"{_sdk}.APIStatusError", _sdk_status_code, _sdk_status)
    wrap._register_builtin(f"{_sdk}.APITimeoutError", "provider/timeout",
                           lambda exc: {"provider": _sdk_provider(exc)})
    wrap._register_builtin(f"{_sdk}.APIConnectionError", "network/connection",
                           lambda exc: {"endpoint": _endpoint(_request(exc)),
                                        "reason": _sdk_reason(exc)})
