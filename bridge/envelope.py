"""Errors as they travel into scripts, and the way back.

Into a script, an error is an *envelope*: plain JSON-like data that the engine's prelude
turns into a native error (a JS ``Error`` named after the category class, a Lua table
with a ``__tostring``). Out of a script, a table or object that carries ``category`` and
``kind`` is read back by :func:`error_from_script`.

``ref`` ties an envelope to the Python error it was made from, so that a script which
catches and rethrows it hands back the very same error (with its Python frames and
cause), not a copy. Only the host knows which error a ref stands for: the translators
build a copy from the envelope's data and leave its ref on the copy, as data
(:func:`with_ref`: a private key of its context's metadata, which pickling and JSON
keep), so that an engine's step holds no live object and can cross a pipe; the host then
swaps each copy for the original (:func:`resolve_refs`).
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from typing import Any

from bridge.errors import (
    MAX_CAUSE_DEPTH,
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
            "retryable": one.retryable,  # to read; the host decides on its own copy (ref)
            "retry_after": one.retry_after,
            "cause": out,
            "ref": None if ref is None else ref(one),
        }
    assert out is not None
    return out


def script_constructors() -> dict[str, str]:
    """Constructor name in scripts (``ToolError``) -> category (``tool``), for the preludes."""
    return {cls.script_name: name for name, cls in categories().items()}


def error_from_script(
    data: Mapping[str, Any], frames: list[Frame], *, by_script: bool = True
) -> SpellError:
    """The unified error a script raised as ``{category, kind, fields, message?, cause?}``.

    An envelope that came from Python (an int ``ref``) gives a copy that carries the ref
    (:func:`with_ref`), for the host to swap for the original (:func:`resolve_refs`); so
    does its cause, level by level. Invalid data gives ``bridge/invalid_error`` (returned,
    not raised) whose frames are ``frames``, so it points at the script line that raised
    it; it carries the envelope's ref too, since a rethrown envelope whose data the script
    spoiled still stands for the original. A security or resource error is marked as the
    script's (:func:`mark_raised_by_script`) unless ``by_script`` is false: the engine's
    prelude raised it (a sandbox violation).
    """
    return with_ref(_from_script(data, frames, by_script), data.get("ref"))


def _from_script(data: Mapping[str, Any], frames: list[Frame], by_script: bool) -> SpellError:
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
            cause = error_from_script(cause_data, frames)
        err = variant(_text(message), cause=cause, frames=frames,
                      **_lists_restored(variant, fields or {}))
        return mark_raised_by_script(err) if by_script else err
    except SpellError as problem:
        if problem.code != "bridge/invalid_error":
            raise
        # returned, never raised again: its traceback (live frames) is nobody's business
        return _located(problem.with_traceback(None), frames)


# Where a copy keeps the ref of the envelope it was read from, until the host resolves it.
REF_KEY = "_envelope_ref"


def with_ref(err: SpellError, ref: Any) -> SpellError:
    """``err``, read from an envelope whose ``ref`` is ``ref``, carrying it as data.

    Only an int ref (not a bool) is kept. The ref is a private key of the error's
    context's metadata, which pickling and JSON keep; :func:`resolve_refs` swaps the
    error for the one the ref stands for, or removes the key. Returns ``err``.
    """
    if ref.__class__ is int:
        context = err.context
        err.context = context.model_copy(update={"metadata": {**context.metadata, REF_KEY: ref}})
    return err


def resolve_refs(err: SpellError, lookup: Callable[[int], SpellError | None]) -> SpellError:
    """``err`` with the errors its refs stand for (see :func:`with_ref`): the host's half.

    ``lookup`` maps a ref to the original error (the host's record of the errors it handed
    to scripts), or None. Walking ``err`` and its causes, outermost first: an error whose
    ref ``lookup`` knows is replaced by the original (``err`` itself: the original is
    returned; a cause: its parent is relinked to the original, whose own causes are left
    as they are), and an error whose ref it does not know loses the ref, so that none
    shows in its JSON. Errors with no ref cost a look at their context: nothing else.
    """
    top = _resolved(err, lookup)
    if top is not err:
        return top
    parent, seen = err, 0
    cause = err.__cause__
    while isinstance(cause, SpellError) and seen < MAX_CAUSE_DEPTH:
        original = _resolved(cause, lookup)
        if original is not cause:
            parent.__cause__ = original
            break  # the original's causes are its own
        parent, cause, seen = cause, cause.__cause__, seen + 1
    return top


def _resolved(err: SpellError, lookup: Callable[[int], SpellError | None]) -> SpellError:
    """The original ``err``'s ref stands for, else ``err`` without a ref."""
    context = err.context_made  # no context made for errors that have none
    if context is None or REF_KEY not in context.metadata:
        return err
    metadata = dict(context.metadata)
    ref = metadata.pop(REF_KEY)
    original = lookup(ref) if ref.__class__ is int else None
    if original is not None and original is not err:
        return original
    err.context = context.model_copy(update={"metadata": metadata})
    return err


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
