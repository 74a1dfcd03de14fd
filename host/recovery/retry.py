"""``Retry``: try a failed call again, after a delay that grows, while it may still succeed.

One model for every retry in polyspell: a tool call's (the :meth:`Retry.layer` of its
pipeline), a script's ``recovery.retry`` and a coordinator task's (``Task.retry``, the
same TOML shape as before). The decisions are the model's (:meth:`Retry.next_delay`); the
tool-call layer and the coordinator only wait as it says, each on its own clock.

Bounds: ``attempts`` counts every try, the first included, and ``max_elapsed`` seconds
bound the whole (a retry whose delay would end past it is not made), so a retry is never
unbounded. The delay before try n+1 is ``initial`` (fixed), ``initial * n`` (linear),
``initial * 2**(n-1)`` (exponential) or ``initial * fib(n)`` (fibonacci: 1, 1, 2, 3, 5...),
at most ``max_delay``; jitter then draws it from ``[delay * (1 - jitter), delay]`` (``1``,
the default, is full jitter; ``0`` turns it off); a ``retry_after`` the error was given (a
rate limit's ``Retry-After``, a breaker's time left) is a floor. The default ``retry_after``
of an error's kind (``network/connection``: 1 s) is not: the policy's schedule is the
user's choice for that tool.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator

from bridge import SpellError
from bridge.errors import categories, variants
from host.calls import failure_to_recover
from host.recovery.model import Policy

if TYPE_CHECKING:
    from host.calls import Next, ToolCall

Backoff = Literal["fixed", "linear", "exponential", "fibonacci"]
# A cancellation is never retried, whatever the condition (a run's own time limit is not
# either: no delay fits in the time left).
NEVER_RETRIED = frozenset({"async_execution/task_cancelled"})


def _fibonacci(n: int) -> int:
    a, b = 1, 1
    for _ in range(n - 1):
        a, b = b, a + b
    return a


class Retry(Policy):
    """How a failed call (or task) is tried again; see the module docstring."""

    policy_name: ClassVar[str] = "retry"

    attempts: int = Field(3, ge=1, le=100)
    max_elapsed: float = Field(30.0, gt=0, le=1e9, allow_inf_nan=False)
    backoff: Backoff | Callable[[int], float] = "exponential"
    initial: float = Field(0.1, ge=0, le=1e6, allow_inf_nan=False)
    max_delay: float = Field(10.0, ge=0, le=1e6, allow_inf_nan=False)
    jitter: float = Field(1.0, ge=0, le=1)
    # "retryable": the error's own retryable; "any"; a list of codes ("tool/timeout") or
    # categories ("network"); or (Python) a callable condition on the error
    on: Literal["retryable", "any"] | list[str] | Callable[[SpellError], bool] = "retryable"
    except_: list[str] = Field(default_factory=list, alias="except")

    @field_validator("on", "except_")
    @classmethod
    def _known_codes(cls, value: Any) -> Any:
        if isinstance(value, list):
            for code in value:
                check_code(code)
        return value

    # -- decisions ---------------------------------------------------------------------

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based), before jitter."""
        if callable(self.backoff):
            delay = float(self.backoff(attempt))
        elif self.backoff == "fixed":
            delay = self.initial
        elif self.backoff == "linear":
            delay = self.initial * attempt
        elif self.backoff == "fibonacci":
            delay = self.initial * _fibonacci(attempt)
        else:
            delay = self.initial * 2 ** min(attempt - 1, 64)
        return max(0.0, min(delay, self.max_delay))

    def applies_to(self, err: SpellError) -> bool:
        """Whether the condition lets ``err`` be retried at all."""
        if err.code in NEVER_RETRIED or _matches(err, self.except_):
            return False
        if self.on == "retryable":
            return err.retryable
        if self.on == "any":
            return True
        if isinstance(self.on, list):
            return _matches(err, self.on)
        return bool(self.on(err))

    def next_delay(self, attempt: int, err: SpellError, elapsed: float,
                   rng: Callable[[], float] = random.random, owner: str = "retry"
                   ) -> float | None:
        """The delay before the next try after try ``attempt`` failed with ``err``,
        ``elapsed`` seconds after the first began; None when there is to be no next try.

        A condition or backoff function (Python) that raises is the policy's bug, not the
        call's: ``configuration/invalid_value`` naming ``owner`` (``search.retry``) and the
        field, the function's exception as its cause."""
        if attempt >= self.attempts:
            return None
        try:
            if not self.applies_to(err):
                return None
        except Exception as exc:
            raise self._failed(owner, "on", exc, err) from exc
        try:
            delay = self.delay(attempt)
        except Exception as exc:
            raise self._failed(owner, "backoff", exc, err) from exc
        delay -= delay * self.jitter * rng()
        if err.requested_retry_after is not None:  # asked for; a kind's default is not
            delay = max(delay, err.requested_retry_after)
        if elapsed + delay > self.max_elapsed:
            return None
        return delay

    def _failed(self, owner: str, field: str, exc: Exception, err: SpellError
                ) -> SpellError:
        from bridge import ConfigurationError
        from bridge.errors import describe_exception

        return ConfigurationError.InvalidValue(
            key=f"{owner}.{field}", value=repr(getattr(self, field))[:200],
            reason=f"the function raised {describe_exception(exc)} (deciding on {err.code})")

    # -- the tool-call layer -----------------------------------------------------------

    def layer(self) -> Callable[[ToolCall, Next], Any]:
        """This policy as a layer of a tool's pipeline (see :mod:`host.calls`)."""
        return RetryLayer(self)


class RetryLayer:
    """Tries the rest of the pipeline again as the :class:`Retry` says.

    ``by_error`` maps error codes (``provider/rate_limited``) and bare categories
    (``network``) to the :class:`Retry` for the errors they match (a config file's
    ``[errors."<code>"]``): after each failed try, the retry of the error's code decides,
    else the one of its category, else ``policy`` (None: the error is not retried). One
    count of tries and one clock run through all of them, so ``attempts`` and
    ``max_elapsed`` of the deciding retry bound the whole call.

    The waits happen on the run's thread through the run's control, so they count
    against the run's time and end at once when the run is asked to stop (the next
    try then meets the stop request). Each retry is recorded in the run's recovery
    history, and the history is attached to the error that finally escapes.
    """

    def __init__(self, policy: Retry | None,
                 by_error: Mapping[str, Retry] | None = None) -> None:
        self.policy = policy
        self.by_error = dict(by_error or {})

    def policy_for(self, err: SpellError) -> Retry | None:
        """The retry that decides about ``err``: its code's, its category's, the default."""
        by_error = self.by_error
        if by_error:
            chosen = by_error.get(err.code) or by_error.get(err.category)
            if chosen is not None:
                return chosen
        return self.policy

    def __call__(self, call: ToolCall, next: Next) -> Any:
        return self.wrap(next)(call)

    def wrap(self, next: Next) -> Next:
        """The retrying step before ``next``: a try that succeeds costs one frame."""

        def retrying(call: ToolCall) -> Any:
            try:
                return next(call)
            except BaseException as exc:
                err = failure_to_recover(call, exc)
            return self._again(call, next, err)

        return retrying

    def _again(self, call: ToolCall, next: Next, err: SpellError) -> Any:
        """Retry after the first try failed with ``err``, as long as the policy says."""
        attempt = 1
        while True:
            policy = self.policy_for(err)
            # elapsed since the first try began (the call's start: outer layers add ~0)
            delay = (None if policy is None
                     else policy.next_delay(attempt, err, time.perf_counter() - call.started,
                                            owner=f"{call.name}.retry"))
            if delay is None or delay >= call.time_left:
                if attempt > 1:  # it was retried: the history goes with the error
                    call.run.attach_recovery(err)
                raise err
            call.run.record_recovery("retry", call.name, attempt, err, delay)
            call.run.control.sleep(delay)
            attempt += 1
            try:
                return next(call)
            except BaseException as exc:
                err = failure_to_recover(call, exc)


def _matches(err: SpellError, codes: list[str]) -> bool:
    return any(code == err.code or code == err.category for code in codes)


def check_code(code: Any) -> str:
    """``code`` when it is a known error code (``tool/timeout``) or category
    (``network``), else ValueError (what a validator raises)."""
    if not _known(code):
        raise ValueError(f"unknown error code or category {code!r}")
    return code


def _known(code: Any) -> bool:
    if not isinstance(code, str):
        return False
    if "/" not in code:
        return code in categories()
    return any(f"{cls.category}/{cls.kind}" == code for cls in variants())
