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


def finite(value: Any) -> Any:
    """JSON-like ``value`` with every float that is not finite replaced by ``None``;
    containers are copied only where something changed (tuples become lists)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        items = {key: finite(item) for key, item in value.items()}
        return value if all(items[k] is v for k, v in value.items()) else items
    if isinstance(value, (list, tuple)):
        items = [finite(item) for item in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value
