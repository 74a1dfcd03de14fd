"""The base of every recovery policy model: strict, frozen, and refused as one error."""

from __future__ import annotations

import json
from contextvars import ContextVar
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, JsonValue, ValidationError

from bridge import SpellError

# Set while an outer model (a plan, a tool's policies) validates: a nested policy then
# leaves pydantic's error to it, which names the whole path.
VALIDATING: ContextVar[bool] = ContextVar("polyspell_validating", default=False)


class Policy(BaseModel):
    """A recovery policy: a strict pydantic model (a TOML table, field by field) whose bad
    values are ``configuration/invalid_value`` naming the policy and field."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, populate_by_name=True,
                              arbitrary_types_allowed=True)
    policy_name: ClassVar[str] = "policy"  # its key in a tool's policies: "retry"...

    def __init__(self, **data: Any) -> None:
        if VALIDATING.get():  # inside a plan or policy being validated: it reports the path
            super().__init__(**data)
            return
        try:
            super().__init__(**data)
        except ValidationError as exc:  # bad input is one unified error, not pydantic's
            raise invalid_policy(self.policy_name, exc) from None


def invalid_policy(policy: str, exc: ValidationError, reason: str | None = None
                   ) -> SpellError:
    """pydantic's first problem with a policy as ``configuration/invalid_value``, its key
    the field's path under ``policy`` (a policy's name, or a tool's for its policies)."""
    from bridge import ConfigurationError

    problem = exc.errors()[0]
    where = field_path(problem["loc"])
    key = f"{policy}.{where}" if where else policy
    return ConfigurationError.InvalidValue(
        key=key, value=repr(problem.get("input"))[:200],
        reason=reason or problem["msg"])


def field_path(loc: tuple[Any, ...]) -> str:
    """pydantic's location as the field's path (``retry.backoff``), without the names of
    the union members it tried (``literal['fixed',...]``, ``function``)."""
    return ".".join(str(part) for part in loc
                    if isinstance(part, int) or str(part).isidentifier())


def _strict_json(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        raise ValueError("a value is JSON: NaN and Infinity are not (JSON has no such "
                         "number)") from None
    return value


# A value a policy answers in a tool's place (a fallback's {value = ...}, an optional
# tool's degraded value): JSON, strictly (TOML's nan and inf, Python's float("nan") are
# refused: they have no JSON form, and the value is written out as JSON).
StrictJsonValue = Annotated[JsonValue, AfterValidator(_strict_json)]
