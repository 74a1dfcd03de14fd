"""A tool's recovery policies together, and how they compose into its pipeline."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationInfo,
    field_validator,
)

from host.recovery.breaker import Breakers, CircuitBreaker
from host.recovery.fallback import Cache, Fallback, FallbackLayer
from host.recovery.model import StrictJsonValue
from host.recovery.restart import Restart
from host.recovery.retry import Retry, RetryLayer, check_code
from host.recovery.timeout import Timeout

if TYPE_CHECKING:
    from host.calls import Layer
    from host.recovery.degrade import DegradationState


# an error code ("provider/rate_limited") or a bare category ("network") of the catalog
ErrorCode = Annotated[str, AfterValidator(check_code)]


class ErrorRecovery(BaseModel):
    """How calls that fail with one error code or category recover (a config file's
    ``[errors."provider/rate_limited"]`` table): ``retry``, the :class:`Retry` for those
    errors in place of the tool's general one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    retry: Retry


class ToolRecovery(BaseModel):
    """The recovery policies of one tool (a ``[tools.<name>]`` table of a config file,
    a value of ``Host(recovery={...})``, or what ``@tool(retry=...)`` sets).

    ``errors`` maps error codes and categories to their own recovery (for the retry layer:
    the :class:`Retry` of the failed try's code, else of its category, else ``retry``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    retry: Retry | None = None
    breaker: CircuitBreaker | None = None
    timeout: Timeout | None = None
    fallback: Fallback | None = None
    # degrade instead of failing (host.recovery.degrade): answer `degraded` (JSON, null
    # by default) when the call fails after the other policies
    optional: bool = Field(False, strict=True)
    degraded: StrictJsonValue = None
    # no recovery at all: the other policies are ignored, a failure ends the run after
    # its cleanups (host.recovery.failfast)
    fail_fast: bool = Field(False, strict=True)
    errors: dict[ErrorCode, ErrorRecovery] | None = None
    restart: Restart | None = None  # functions of Lua/JS tools files only

    @field_validator("degraded")
    @classmethod
    def _degraded_needs_optional(cls, value: JsonValue, info: ValidationInfo) -> JsonValue:
        if not info.data.get("optional"):  # only when given: a default is not validated
            raise ValueError("degraded is the value of an optional tool: set optional = true")
        return value

    def layers(self, name: str, breakers: Breakers, caches: dict[str, Cache],
               tools: Any = None, degradation: DegradationState | None = None
               ) -> list[Layer]:
        """The layers of tool ``name``'s policies, outermost first: degrade (an optional
        tool's, and the host's degradation levels in ``degradation``), fallback (its cache
        of good results in ``caches``), total timeout, retry, circuit breaker (its state in
        ``breakers``), restart (a tools file's engine), attempt timeout (Polly v8's order,
        with restart where it sees each try's failure and gives the try again its own
        attempt time). ``breakers`` and ``caches`` are the host's, shared by its runs;
        ``tools`` (the host's registry) gives the breaker's health check tool. A
        fail-fast tool has only the levels' layer and its own
        (:mod:`host.recovery.failfast`)."""
        from host.calls import Timeouts
        from host.recovery.degrade import DegradeLayer

        levels = degradation is not None and degradation.policy is not None
        layers: list[Layer] = []
        if self.fail_fast:
            from host.recovery.failfast import FailFastLayer

            if levels:
                layers.append(DegradeLayer(False, None, degradation, None, {}))
            layers.append(FailFastLayer())
            return layers
        if self.optional or levels:
            layers.append(DegradeLayer(self.optional, self.degraded, degradation,
                                       self.fallback, caches.setdefault(name, {})))
        timeout = self.timeout or Timeout()
        if self.fallback is not None:
            layers.append(FallbackLayer(self.fallback, caches.setdefault(name, {}),
                                        lambda tool: tool in breakers
                                        and breakers.state(tool) == "open"))
        if timeout.total is not None:
            layers.append(Timeouts(timeout.total))
        if self.retry is not None or self.errors:
            by_error = {code: table.retry for code, table in (self.errors or {}).items()}
            layers.append(RetryLayer(self.retry, by_error))
        if self.breaker is not None:
            check = tools.get(self.breaker.health_check) if (
                tools is not None and self.breaker.health_check is not None) else None
            layers.append(breakers.layer_for(
                name, self.breaker, health=None if check is None else health_call(check),
                health_timeout=getattr(check, "timeout", None)))
        if self.restart is not None:
            layers.append(self.restart.layer())
        if timeout.attempt is not None:
            layers.append(Timeouts(timeout.attempt))
        return layers

    def merged(self, more_specific: ToolRecovery) -> ToolRecovery:
        """These policies with each one ``more_specific`` sets put in its place."""
        return self.model_copy(update={name: getattr(more_specific, name)
                                       for name in more_specific.model_fields_set})


def health_call(tool: Any) -> Callable[[], Any]:
    """A Python tool called with no parameters (``{}``), outside any run: a breaker's
    health check (an async tool runs on an event loop of its own)."""
    def check() -> Any:
        args, kwargs = tool.arguments(tool.validate({}))
        if tool.is_async:
            import anyio

            return anyio.run(functools.partial(tool.fn, *args, **kwargs))
        return tool.fn(*args, **kwargs)

    return check
