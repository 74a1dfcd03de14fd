"""Example tools for the agents in this folder: ``--tools scripts/tools.py``."""

from __future__ import annotations

import anyio

from host import tool

ENCYCLOPEDIA = {
    "paris": "Paris is the capital of France, on the Seine.",
    "lisbon": "Lisbon is the capital of Portugal, on the Tagus.",
    "atlantis": "Atlantis is a legendary island first mentioned by Plato.",
}
WEATHER = {"paris": {"sky": "cloudy", "celsius": 14}, "lisbon": {"sky": "sunny", "celsius": 21}}


@tool
def search(query: str, limit: int = 3) -> list[str]:
    """Look a subject up in a small built-in encyclopedia."""
    hits = [text for key, text in ENCYCLOPEDIA.items() if query.lower() in key]
    return hits[:limit]


@tool(timeout=2.0)
async def weather(city: str) -> dict:
    """Current weather of a city (async, as a real network call would be)."""
    await anyio.sleep(0.01)
    station = WEATHER.get(city.lower())
    if station is None:
        raise LookupError(f"no weather station in {city!r}")  # fails on purpose for Atlantis
    return {"city": city, **station}


@tool
def summarize(texts: list[str], max_words: int = 12) -> str:
    """Join texts and cut them to a number of words."""
    words = " ".join(texts).split()
    return " ".join(words[:max_words]) + (" ..." if len(words) > max_words else "")
