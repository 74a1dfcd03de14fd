"""A description of every category and variant, for people (``polyspell catalog``) and tools."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic_core import PydanticUndefined

from bridge.errors import SpellError, categories, variants


def describe_type(annotation: Any) -> str:
    """A short, readable name for a field's type: ``str``, ``float | None``, ``list[str]``."""
    origin = typing.get_origin(annotation)
    choices = getattr(annotation, "choices", None)  # bridge.languages' names: known at run time
    if callable(choices):
        return " | ".join(repr(choice) for choice in choices())
    if origin is typing.Literal:
        return " | ".join(repr(arg) for arg in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(describe_type(arg) for arg in typing.get_args(annotation))
    if origin is typing.Annotated:
        return describe_type(typing.get_args(annotation)[0])
    if origin is not None:
        args = ", ".join(describe_type(arg) for arg in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "None"
    name = getattr(annotation, "__name__", None)
    return name if name and name not in ("JsonValue", "Json") else "json"


def describe_variant(variant: type[SpellError]) -> dict[str, Any]:
    """Kind, template, severity, retryability and fields of one variant."""
    fields = []
    for name, info in variant.fields_model.model_fields.items():
        required = info.is_required()
        default = None if required or info.default is PydanticUndefined else info.default
        fields.append({"name": name, "type": describe_type(info.annotation),
                       "required": required, "default": default})
    return {
        "kind": variant.kind,
        "class": variant.__name__,
        "template": variant.template,
        "description": (variant.__doc__ or "").strip(),
        "severity": str(variant.default_severity),
        "retryable": variant.default_retryable,
        "retry_after": variant.default_retry_after,
        "fields": fields,
    }


def describe_catalog() -> list[dict[str, Any]]:
    """Every category, in declaration order, with its variants."""
    return [
        {
            "category": name,
            "class": cls.__name__,
            "script_name": cls.script_name,
            "description": (cls.__doc__ or "").strip(),
            "variants": [describe_variant(v) for v in variants(name)],
        }
        for name, cls in categories().items()
    ]
