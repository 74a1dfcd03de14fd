"""Errors as they travel into scripts, and the way back.

Into a script, an error is an *envelope*: plain JSON-like data that the engine's prelude
turns into a native error (a JS ``Error`` named after the category class, a Lua table
with a ``__tostring``). Out of a script, a table or object that carries ``category`` and
``kind`` is read back by :func:`error_from_script`.

``ref`` ties an envelope to the Python error it was made from, so that a script which
catches and rethrows it hands back the very same error (with its Python frames and
cause), not a copy.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from typing import Any

from bridge.errors import (
    SpellError,
    categories,
    cause_chain,
    field_annotations,
    mark_raised_by_script,
    variant_class,
)
from bridge.frames import Frame


def error_envelope(err: SpellError, ref: Callable[[SpellError], int] | None = None) -> dict:
    """The error and its cause chain as data for a script; ``ref`` numbers each error.

    The chain is the bounded one of :func:`~bridge.errors.cause_chain`: the last cause
    kept says in its message where a loop or a very deep chain was cut.
    """
    walk = cause_chain(err)
    out: dict | None = None
    for one in reversed(walk.errors):
        message = one.message
        if out is None and walk.note:
            message = f"{message} {walk.note}"
        out = {
            "category": one.category,
            "kind": one.kind,
            "name": type(one).script_name or categories()[one.category].script_name,
            "message": message,
            "fields": one.fields,
            "cause": out,
            "ref": None if ref is None else ref(one),
        }
    assert out is not None
    return out


def script_constructors() -> dict[str, str]:
    """Constructor name in scripts (``ToolError``) -> category (``tool``), for the preludes."""
    return {cls.script_name: name for name, cls in categories().items()}


def error_from_script(
    data: Mapping[str, Any],
    frames: list[Frame],
    resolve_ref: Callable[[int], SpellError | None] = lambda ref: None,
    *,
    by_script: bool = True,
) -> SpellError:
    """The unified error a script raised as ``{category, kind, fields, message?, cause?}``.

    An envelope that came from Python and is rethrown unchanged (same ``ref``) resolves to
    the original error. Invalid data gives ``bridge/invalid_error`` (returned, not raised)
    whose frames are ``frames``, so it points at the script line that raised it. A
    security or resource error is marked as the script's (:func:`mark_raised_by_script`)
    unless ``by_script`` is false: the engine's prelude raised it (a sandbox violation).
    """
    ref = data.get("ref")
    if isinstance(ref, int) and not isinstance(ref, bool):
        original = resolve_ref(ref)
        if original is not None:
            return original
    category, kind = data.get("category"), data.get("kind")
    fields = data.get("fields")
    message = data.get("message")
    cause_data = data.get("cause")
    try:
        variant = variant_class(_text(category), _text(kind))
        if fields is not None and not isinstance(fields, Mapping):
            return _located(variant_class("bridge", "invalid_error")(
                error_type=f"{category}/{kind}", reason="fields must be a table/object",
                field="fields"), frames)
        cause = None
        if isinstance(cause_data, Mapping):
            cause = error_from_script(cause_data, frames, resolve_ref)
        err = variant(_text(message), cause=cause, frames=frames,
                      **_lists_restored(variant, fields or {}))
        return mark_raised_by_script(err) if by_script else err
    except SpellError as problem:
        if problem.code != "bridge/invalid_error":
            raise
        return _located(problem, frames)


def _lists_restored(variant: type[SpellError], fields: Mapping[str, Any]) -> dict[str, Any]:
    """An empty Lua table arrives as ``{}``: it is ``[]`` where the field is a list."""
    out = dict(fields)
    for name, value in fields.items():
        if value == {}:
            annotation = field_annotations(variant).get(name, (None, False))[0]
            if typing.get_origin(annotation) is list:
                out[name] = []
    return out


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _located(err: SpellError, frames: list[Frame]) -> SpellError:
    err.frames = frames
    return err
