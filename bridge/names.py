"""Suggestions for a name that is not known: the one "did you mean" of every message."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name ``name`` was most likely meant to be (a typo away), or None."""
    found = difflib.get_close_matches(name, list(known), n=1)
    return found[0] if found else None


def listed(names: Iterable[str], most: int = 20) -> str:
    """``names`` for a message: the first ``most``, then how many more."""
    names = list(names)
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")
