"""Tools for the recovery examples in this folder (see the README, section "Recovery").

Each tool misbehaves the way real services do, and carries the recovery policy that
gets a script through it:

    polyspell run scripts/recovery/flaky.lua --tools scripts/recovery/tools.py
    polyspell run scripts/recovery/rate_limited.js --tools scripts/recovery/tools.py
    polyspell run scripts/recovery/breaker.lua --tools scripts/recovery/tools.py
    polyspell run scripts/recovery/degraded.js --tools scripts/recovery/tools.py
    polyspell run scripts/recovery/exhausted.lua --tools scripts/recovery/tools.py
    polyspell run scripts/recovery/in_script.js --tools scripts/recovery/tools.py
"""

from __future__ import annotations

from bridge import ProviderError
from host import CircuitBreaker, Fallback, Retry, tool

_calls = {"search": 0, "quote": 0, "forecast": 0, "headlines": 0, "lookup": 0,
          "archive": 0}


@tool(retry=Retry(attempts=3, backoff="exponential", initial=0.1, jitter=0))
def search(query: str) -> list[str]:
    """A search API whose connection drops twice, then answers."""
    _calls["search"] += 1
    if _calls["search"] <= 2:
        raise ConnectionError("connection reset by peer")  # network/connection: retryable
    return [f"{query}: first hit", f"{query}: second hit"]


@tool(retry=Retry(attempts=3, backoff="fixed", initial=0.05, jitter=0))
def quote(symbol: str) -> float:
    """A market-data API that rate-limits the first call and says when to come back."""
    _calls["quote"] += 1
    if _calls["quote"] == 1:
        # what a 429 with "Retry-After: 0.5" becomes (bridge.wrap does this for httpx)
        raise ProviderError.RateLimited(provider="quotes", retry_after=0.5)
    return {"ACME": 12.5, "INIT": 3.25}.get(symbol.upper(), 1.0)


@tool(breaker=CircuitBreaker(failure_threshold=2, recovery_timeout=30),
      fallback=Fallback(options=[{"tool": "forecast_backup"}]))
def forecast(city: str) -> str:
    """The main weather service: down for the whole run."""
    _calls["forecast"] += 1
    raise ConnectionError(f"weather.example: connection refused ({city})")


@tool
def forecast_backup(city: str) -> str:
    """A coarser weather source, used when the main one is down."""
    return f"{city}: mild (backup source)"


@tool(breaker=CircuitBreaker(failure_threshold=1, recovery_timeout=30), optional=True,
      degraded=[])
def headlines(topic: str) -> list[str]:
    """Nice-to-have headlines from a news service that is down: optional, so a call
    answers [] (its degraded value) instead of failing the report."""
    _calls["headlines"] += 1
    raise ConnectionError(f"news.example: connection refused ({topic})")


@tool(retry=Retry(attempts=2, backoff="fixed", initial=0.05, jitter=0),
      fallback=Fallback(options=[{"tool": "archive_mirror"}]))
def archive(year: int) -> list[str]:
    """An archive service that is down, behind a mirror that is down too."""
    _calls["archive"] += 1
    raise ConnectionError(f"archive.example: connection refused ({year})")


@tool
def archive_mirror(year: int) -> list[str]:
    """The archive's mirror: it does not answer either."""
    raise TimeoutError(f"mirror.example did not answer ({year})")


@tool
def lookup(word: str) -> str:
    """A dictionary service with no policy of its own (the script retries it): it times
    out twice, then answers."""
    _calls["lookup"] += 1
    if _calls["lookup"] <= 2:
        raise TimeoutError("dictionary.example did not answer")
    return f"{word}: a form of words with magic power"


@tool
def calls() -> dict[str, int]:
    """How many times each flaky service was really called (to show what recovery saved)."""
    return dict(_calls)
