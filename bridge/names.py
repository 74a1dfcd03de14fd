"""Suggestions for a name that is not known: the one "did you mean" of every message."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name ``name`` was most likely meant to be (a typo away), or None."""
    import difflib  # here: only a name that is not known pays for it

    found = difflib.get_close_matches(name, list(known), n=1)
    return found[0] if found else None


def did_you_mean(meant: str | None) -> str:
    """The words a message puts before what it lists: ``"did you mean 'x'? "``, or
    nothing when no name was close (``meant``: :func:`closest`'s answer)."""
    return f"did you mean {meant!r}? " if meant else ""


def known_or_meant(name: str, known: Sequence[str]) -> str:
    """What a message adds for an unknown ``name``: ``" (did you mean 'x'?)"``, else the
    names there are, ``" (known: a, b)"``."""
    meant = closest(name, known)
    return f" (did you mean {meant!r}?)" if meant else f" (known: {', '.join(known)})"


def listed(names: Iterable[str], most: int = 20) -> str:
    """``names`` for a message: the first ``most``, then how many more."""
    names = list(names)
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")
