"""JSON text as RFC 8259 defines it, for everything polyspell writes as JSON.

Python's ``json`` writes ``NaN`` and ``Infinity``, which strict parsers (and RFC 8259)
refuse, and with ``ensure_ascii=False`` leaves a lone surrogate (``"\\ud800"``, which a
JavaScript string or a careless tool can hold) raw, which no UTF-8 stream can encode.
:func:`json_text` writes a number that is not finite as ``null`` (what JavaScript's
``JSON.stringify`` and pydantic write) and a lone surrogate as its ``\\uXXXX`` escape (what
``JSON.stringify`` writes since ES2019); everything else as ``json.dumps`` does.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


def json_text(value: Any, *, indent: int | None = None, ensure_ascii: bool = False) -> str:
    """``value`` as RFC 8259 JSON text; ``value`` itself is not changed.

    Non-finite floats become ``null`` and lone surrogates ``\\uXXXX`` escapes, so the text
    is always valid UTF-8 once encoded. ``ensure_ascii`` escapes every non-ASCII character.
    """
    try:
        text = json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, allow_nan=False)
    except ValueError:  # a float that is not finite, somewhere in it
        text = json.dumps(finite(value), indent=indent, ensure_ascii=ensure_ascii,
                          allow_nan=False)
    if not text.isascii():
        text = _SURROGATE.sub(lambda found: f"\\u{ord(found.group()):04x}", text)
    return text


def unicode_text(text: str) -> str:
    """``text`` as every encoder takes it: each lone surrogate (a careless tool's
    ``"a\\ud800"``, a byte that is not UTF-8 carried with ``surrogateescape``) as U+FFFD, a
    pair of surrogates as the character it stands for (as JavaScript reads them). Cheap for
    the usual text: an ASCII check is O(1), and only text with a surrogate is copied."""
    if text.isascii() or _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def json_bytes(value: Any) -> bytes:
    """``value`` as compact RFC 8259 JSON in UTF-8: what polyspell stores and sends.

    pydantic-core's encoder writes it (about three times as fast as ``json`` here; a float
    that is not finite is ``null``); what it refuses (a lone surrogate, which UTF-8 cannot
    hold) is written as :func:`json_text` writes it. For JSON-like data (pydantic-core
    also writes a set, a tuple or a datetime, as it does for models; what neither can
    write is a TypeError, as from ``json.dumps``).
    """
    from pydantic_core import PydanticSerializationError, to_json  # not for every command

    try:
        return to_json(value, inf_nan_mode="null")
    except PydanticSerializationError:
        return json_text(value).encode("utf-8")


def finite(value: Any) -> Any:
    """JSON-like ``value`` with every float that is not finite replaced by ``None``."""
    try:  # most data has none: the C encoder says so several times faster than a walk
        _check_finite(value)
    except (ValueError, TypeError, RecursionError):
        return replaced(value, finite_number)
    return value


_check_finite = json.JSONEncoder(allow_nan=False).encode


def replaced(value: Any, leaf: Callable[[Any], Any],
             key: Callable[[Any], Any] | None = None) -> Any:
    """JSON-like ``value`` with ``leaf`` applied to each scalar (and ``key`` to each key).

    Containers are copied only where something changed (a changed tuple becomes a list),
    so data that needs nothing comes back as the very same object.
    """
    if isinstance(value, dict):
        items = [(k if key is None else key(k), replaced(v, leaf, key))
                 for k, v in value.items()]
        if all(new_k is k and new_v is v
               for (new_k, new_v), (k, v) in zip(items, value.items(), strict=True)):
            return value
        return dict(items)
    if isinstance(value, (list, tuple)):
        values = [replaced(item, leaf, key) for item in value]
        return value if all(a is b for a, b in zip(values, value, strict=True)) else values
    return leaf(value)


def finite_number(value: Any) -> Any:
    """``value``, or ``None`` for a float that is not finite (JSON has no NaN)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value
