"""Tools for the example plans in this folder (loaded by their ``[plan] tools``)."""

from __future__ import annotations

import anyio

from host import tool

SOURCES = {
    "lisbon": "Lisbon is the capital of Portugal, on the Tagus.",
    "paris": "Paris is the capital of France, on the Seine.",
    "rome": "Rome is the capital of Italy, on the Tiber.",
}


@tool
async def fetch(source: str) -> str:
    """The text of a source (async, as a real download would be)."""
    await anyio.sleep(0.01)
    if source not in SOURCES:
        raise LookupError(f"no source named {source!r}")  # fails on purpose: atlantis, ...
    return SOURCES[source]


@tool
def summarize(texts: list[str], max_words: int = 12) -> str:
    """Join texts and cut them to a number of words."""
    words = " ".join(texts).split()
    return " ".join(words[:max_words]) + (" ..." if len(words) > max_words else "")
