"""Recovery: the strategies of the error-handling design as layers of the tool-call pipeline.

Each policy is a pydantic model (so it loads from TOML and serialises) that makes a layer
of the tool-call pipeline (:mod:`host.calls`). A tool's layers are composed in one fixed
order, outermost first: fallback, total timeout, retry, circuit breaker, restart, attempt
timeout, the call (Polly v8's order).

- :mod:`host.recovery.retry`: :class:`Retry`, tries again with backoff and jitter; the
  coordinator's task retry is the same model.
- :mod:`host.recovery.breaker`: :class:`CircuitBreaker`, stops calling a failing service;
  the state of a host's breakers is its :class:`Breakers`.
- :mod:`host.recovery.script`: a script's own ``recovery.retry`` and ``recovery.fallback``,
  decided and waited for by the host.
- :mod:`host.recovery.degrade`: an optional tool answers a degraded value instead of
  failing (``ToolRecovery.optional``/``degraded``); the host's :class:`Degradation`
  levels, followed in a :class:`DegradationState` (``host.degradation``).
- :mod:`host.recovery.failfast`: ``ToolRecovery.fail_fast``, no recovery; a failure ends
  the run after its cleanups (``run.on_cleanup``).
- :mod:`host.recovery.restart`: :class:`Restart`, reloads a tools file's broken engine
  (state reset, or kept as the file exported it) and calls again.
"""

from __future__ import annotations

from host.recovery.breaker import Breaker, BreakerLayer, Breakers, CircuitBreaker
from host.recovery.degrade import Degradation, DegradationLevel, DegradationState
from host.recovery.fallback import Fallback, FallbackOption
from host.recovery.policy import ErrorRecovery, ToolRecovery
from host.recovery.restart import Restart, RestartLayer
from host.recovery.retry import Retry
from host.recovery.timeout import Timeout

__all__ = ["Breaker", "BreakerLayer", "Breakers", "CircuitBreaker", "Degradation",
           "DegradationLevel", "DegradationState", "ErrorRecovery", "Fallback", "FallbackOption",
           "Restart", "RestartLayer", "Retry", "Timeout", "ToolRecovery"]
