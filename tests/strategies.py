"""Hypothesis strategies that build valid errors of every variant, with frames and causes."""

from __future__ import annotations

import itertools
import types
import typing
from typing import Any

from hypothesis import strategies as st

from bridge import Frame, SpellError, variants
from bridge.frames import LANGUAGES

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


def for_annotation(annotation: Any) -> st.SearchStrategy[Any]:
    """A strategy for values a field annotated like this accepts."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if callable(getattr(annotation, "choices", None)):  # a language (bridge.languages)
        return st.sampled_from(annotation.choices())
    if origin in (typing.Union, types.UnionType):
        return st.one_of([for_annotation(arg) for arg in args])
    if origin is list:
        return st.lists(for_annotation(args[0]), max_size=3)
    if annotation is type(None):
        return st.none()
    if annotation is str:
        return st.text(max_size=40)
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return st.integers(min_value=-(2**53), max_value=2**53)
    if annotation is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    return json_values  # pydantic's JsonValue


def example_value(annotation: Any) -> Any:
    """One simple valid value for a field annotated like this."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return args[0]
    if callable(getattr(annotation, "choices", None)):  # a language (bridge.languages)
        return annotation.choices()[0]
    if origin in (typing.Union, types.UnionType):
        return example_value(next(a for a in args if a is not type(None)))
    if origin is list:
        return [example_value(args[0])]
    return {str: "x", bool: True, int: 1, float: 1.5}.get(annotation, {"k": [1, "v"]})


def fields_for(variant: type[SpellError]) -> st.SearchStrategy[dict[str, Any]]:
    """Valid field values for a variant: every required field, some optional ones."""
    required, optional = {}, {}
    for name, info in variant.fields_model.model_fields.items():
        target = required if info.is_required() else optional
        target[name] = for_annotation(info.annotation)
    return st.fixed_dictionaries(required, optional=optional)


frames = st.builds(
    Frame,
    language=st.sampled_from(LANGUAGES),
    file=st.text(min_size=1, max_size=30),
    line=st.none() | st.integers(min_value=1, max_value=100_000),
    column=st.none() | st.integers(min_value=1, max_value=500),
    function=st.none() | st.text(max_size=20),
    source=st.none() | st.text(max_size=60),
)


@st.composite
def errors(draw: st.DrawFn, variant: type[SpellError] | None = None) -> SpellError:
    """One error of a variant (any, unless given) with frames and maybe overrides."""
    variant = variant or draw(st.sampled_from(variants()))
    return variant(
        draw(st.none() | st.text(max_size=80)),
        severity=draw(st.none() | st.sampled_from(["trace", "info", "warning", "error",
                                                   "critical", "fatal"])),
        retryable=draw(st.none() | st.booleans()),
        retry_after=draw(st.none() | st.floats(min_value=0, max_value=3600)),
        frames=draw(st.lists(frames, max_size=4)),
        **draw(fields_for(variant)),
    )


@st.composite
def error_chains(draw: st.DrawFn, depth: int = 3, min_depth: int | None = None) -> SpellError:
    """An error whose cause chain is ``depth`` errors long (or from ``min_depth`` to it)."""
    length = depth if min_depth is None else draw(st.integers(min_depth, depth))
    chain = [draw(errors()) for _ in range(length)]
    for outer, inner in itertools.pairwise(chain):
        outer.__cause__ = inner
    return chain[0]
