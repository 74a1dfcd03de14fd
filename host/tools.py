"""Python tools that scripts call: ``@tool``, parameter validation, and the registry.

A tool is a plain function (sync or ``async def``) whose parameters pydantic validates
from its type hints, or from the pydantic model its single parameter names. Scripts call
it with one table/object of named parameters.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge import ConfigurationError, SpellError, ToolError

if TYPE_CHECKING:  # pydantic is imported when the first tool is made
    from pydantic import BaseModel, ValidationError

TOOL_ATTRIBUTE = "__polyspell_tool__"


@dataclass
class Tool:
    """A registered tool: its function, name, description, parameter model and timeout."""

    fn: Callable[..., Any]
    name: str
    description: str
    params_model: type[BaseModel]
    timeout: float | None = None
    is_async: bool = False
    takes_model: bool = False  # fn takes one pydantic model instead of keyword arguments
    list_fields: frozenset[str] = field(default_factory=frozenset)

    def validate(self, params: Any) -> BaseModel:
        """The parameters as the tool's model; ``tool/invalid_parameters`` when they do not fit."""
        if params is None:
            params = {}
        if type(params) is not dict and not isinstance(params, Mapping):  # dict: the usual
            raise ToolError.InvalidParameters(
                tool_name=self.name, error_type="parse", received_parameters=preview(params),
                validation_error=f"parameters must be a table/object of named values, "
                                 f"got {type(params).__name__}")
        if self.list_fields:  # an empty Lua table arrives as {}: a list where the schema says so
            params = {k: ([] if k in self.list_fields and v == {} else v)
                      for k, v in params.items()}
        try:  # the model's core validator: model_validate() minus its Python wrapper
            return self.params_model.__pydantic_validator__.validate_python(params)
        except Exception as exc:
            from pydantic import ValidationError

            if not isinstance(exc, ValidationError):
                raise
            raise ToolError.InvalidParameters(
                tool_name=self.name, error_type="validation",
                validation_error=describe_validation(exc),
                received_parameters=preview(params), expected_schema=self.schema(),
            ) from None

    def arguments(self, model: BaseModel) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """How to call ``fn`` with validated parameters."""
        if self.takes_model:
            return (model,), {}
        return (), model.__dict__  # the validated fields, by name (** copies it)

    def schema(self) -> dict[str, Any]:
        """The JSON schema of the parameters."""
        return self.params_model.model_json_schema()


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    params: type[BaseModel] | None = None,
) -> Any:
    """Register a function as a tool scripts can call: ``@tool`` or ``@tool(timeout=2.0)``.

    The function stays callable as before; the tool is attached to it.
    """

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        setattr(fn, TOOL_ATTRIBUTE, make_tool(fn, name=name, description=description,
                                              timeout=timeout, params=params))
        return fn

    return register if fn is None else register(fn)


def make_tool(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    params: type[BaseModel] | None = None,
) -> Tool:
    """Build the :class:`Tool` of a function (what ``@tool`` attaches)."""
    from pydantic import BaseModel, ConfigDict, create_model

    tool_name = name or fn.__name__
    if timeout is not None and timeout <= 0:
        raise ConfigurationError.InvalidValue(key=f"{tool_name}.timeout", value=timeout,
                                              reason="a tool timeout must be positive")
    signature = inspect.signature(fn)
    hints = typing.get_type_hints(fn)
    positional = list(signature.parameters.values())
    takes_model = params is not None or (
        len(positional) == 1
        and isinstance(hints.get(positional[0].name), type)
        and issubclass(hints[positional[0].name], BaseModel)
    )
    if takes_model:
        model = params or hints[positional[0].name]
    else:
        definitions = {}
        for parameter in positional:
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            default = ... if parameter.default is parameter.empty else parameter.default
            definitions[parameter.name] = (hints.get(parameter.name, Any), default)
        model = create_model(f"{tool_name}_params", __config__=ConfigDict(extra="forbid"),
                             **definitions)
    return Tool(
        fn=fn,
        name=tool_name,
        description=inspect.cleandoc(description or fn.__doc__ or ""),
        params_model=model,
        timeout=timeout,
        is_async=inspect.iscoroutinefunction(fn),
        takes_model=takes_model,
        list_fields=frozenset(
            name for name, info in model.model_fields.items() if _is_list(info.annotation)),
    )


def as_tool(item: Any) -> Tool:
    """A Tool from a Tool, a ``@tool`` function or a plain function."""
    if isinstance(item, Tool):
        return item
    attached = getattr(item, TOOL_ATTRIBUTE, None)
    if attached is not None:
        return attached
    if callable(item):
        return make_tool(item)
    raise ConfigurationError.InvalidValue(key="tools", value=repr(item)[:200],
                                          reason="a tool must be a function, a Tool or a path")


class ToolRegistry:
    """The tools of a host, by name."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for item in tools:
            self.add(item)

    def add(self, item: Tool) -> None:
        """Register a tool; two tools of one name are refused."""
        if item.name in self._tools and self._tools[item.name].fn is not item.fn:
            raise ConfigurationError.InvalidValue(
                key="tools", value=item.name,
                reason=f"two tools are named {item.name!r}")
        self._tools[item.name] = item

    def get(self, name: str) -> Tool | None:
        """The tool of this name, if any."""
        return self._tools.get(name)

    def __iter__(self) -> typing.Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)


def load_tools_file(path: str | Path) -> list[Tool]:
    """Import a Python file and return the ``@tool`` functions it defines.

    A missing file is ``configuration/file_not_found``; a file that does not import is
    ``configuration/load_failed`` with the import error as its cause.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError.FileNotFound(path=str(path))
    if path.suffix != ".py":
        raise ConfigurationError.LoadFailed(
            path=str(path), reason="a tools file must be a Python file (.py)")
    module_name = f"polyspell_tools_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigurationError.LoadFailed(path=str(path), reason="not importable")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SpellError:
        raise
    except BaseException as exc:  # any import failure, even SystemExit, is a bad tools file
        del sys.modules[module_name]
        raise ConfigurationError.LoadFailed(
            path=str(path), reason=f"{type(exc).__name__}: {exc}") from exc
    found = [getattr(value, TOOL_ATTRIBUTE) for value in vars(module).values()
             if hasattr(value, TOOL_ATTRIBUTE)]
    if not found:
        raise ConfigurationError.LoadFailed(path=str(path),
                                            reason="it defines no @tool functions")
    return found


def describe_validation(exc: ValidationError) -> str:
    """pydantic's errors as one readable line: ``limit: Input should be a valid integer``."""
    parts = []
    for problem in exc.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "parameters"
        if problem["type"] == "missing":
            parts.append(f"missing parameter '{where}'")
        elif problem["type"] == "extra_forbidden":
            parts.append(f"unknown parameter '{where}'")
        else:
            parts.append(f"{where}: {problem['msg']}")
    return "; ".join(parts)


def _is_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation) or annotation
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_is_list(arg) for arg in typing.get_args(annotation))
    return origin in (list, tuple, set, frozenset) or (
        isinstance(origin, type) and issubclass(origin, (list, tuple)))


PREVIEW_CHARS = 2000


def preview(value: Any, limit: int = PREVIEW_CHARS) -> Any:
    """Parameters to keep in an error: as they are when small JSON-like data, else a cut text.

    Errors carry the parameters a tool was called with; a huge payload must not make
    every error (and every log line of it) huge.
    """
    text = repr(value)
    if len(text) <= limit and isinstance(value, (dict, list, str, int, float, bool, type(None))):
        return value
    return text[:limit] + ("..." if len(text) > limit else "")
