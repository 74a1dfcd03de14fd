"""Python tools that scripts call: ``@tool``, parameter validation, and the registry.

A tool is a plain function (sync or ``async def``) whose parameters pydantic validates
from its type hints, or from the pydantic model its single parameter names. Scripts call
it with one table/object of named parameters.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import time
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import engines
from bridge import ConfigurationError, SpellError, ToolError
from bridge.envelope import resolve_refs
from bridge.errors import describe_exception
from host.calls import as_script_data, run_python
from host.data import preview
from host.steer import AskHuman, StopRun, ToolContext, ask_human, stop_run, tool_context

if TYPE_CHECKING:  # pydantic is imported when the first tool is made
    from pydantic import BaseModel, ValidationError

    from host.calls import ToolCall
    from host.recovery import CircuitBreaker, Fallback, Retry, ToolRecovery

TOOL_ATTRIBUTE = "__polyspell_tool__"
# What answers a tools file's require (a request of kind "module": see host.libraries).
Modules = Callable[[engines.ToolRequest], engines.ToolReply]


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
    recovery: ToolRecovery | None = None  # its own recovery policies (@tool(retry=...))
    context_param: str | None = None  # the parameter that takes the call's ToolContext

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
            error = self.invalid(params, exc)
            if error is exc:  # not a validation error: as it was raised, cause and all
                raise
            raise error from None

    def invalid(self, params: Any, exc: Exception) -> Exception:
        """What :meth:`validate` raises when the model's validator raised ``exc`` for
        ``params``: ``tool/invalid_parameters`` for a validation error, else ``exc``."""
        from pydantic import ValidationError

        if not isinstance(exc, ValidationError):
            return exc
        return ToolError.InvalidParameters(
            tool_name=self.name, error_type="validation",
            validation_error=describe_validation(exc),
            received_parameters=preview(params), expected_schema=self.schema())

    @property
    def kwargs_validator(self) -> Callable[[dict[str, Any]], BaseModel] | None:
        """The model's core validator where :meth:`validate` and :meth:`arguments` do
        nothing more for a dict of parameters (keyword arguments, no list fields): its
        result's ``__dict__`` is then the keyword arguments (see ScriptRun._plain). None
        too for a subclass with a validate or arguments of its own, which invoke calls."""
        cls = type(self)
        if self.takes_model or self.list_fields or cls.validate is not Tool.validate \
                or cls.arguments is not Tool.arguments:
            return None
        return self.params_model.__pydantic_validator__.validate_python  # type: ignore[no-any-return]

    def arguments(self, model: BaseModel) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """How to call ``fn`` with validated parameters."""
        if self.takes_model:
            return (model,), {}
        return (), model.__dict__  # the validated fields, by name (** copies it)

    def schema(self) -> dict[str, Any]:
        """The JSON schema of the parameters."""
        return self.params_model.model_json_schema()

    def invoke(self, call: ToolCall) -> Any:
        """Validate the call's parameters and call the function within the call's deadline;
        its result as data the calling script can hold (see :mod:`host.calls`)."""
        if call.problem is not None:
            raise ToolError.InvalidParameters(
                tool_name=self.name, validation_error=str(call.problem), error_type="parse")
        args, kwargs = self.arguments(self.validate(call.params))
        if self.context_param is not None:
            kwargs = {**kwargs, self.context_param: tool_context(call)}
        try:
            result = run_python(call, self.fn, args, kwargs, self.is_async)
        except (StopRun, AskHuman) as steer:  # the tool steers its run (host.steer)
            return steered(call, steer)
        return as_script_data(call, result)

    @property
    def plain(self) -> bool:
        """Whether a call of it can take the runner's fused path (``ScriptRun._plain``):
        a sync function with no timeout of its own and no ToolContext parameter, called on
        the run's thread exactly as :meth:`invoke` calls it; not for a subclass with an
        ``invoke`` of its own (the fused path stands for this one's)."""
        return not self.is_async and self.timeout is None and self.context_param is None \
            and type(self).invoke is Tool.invoke


def steered(call: ToolCall, steer: StopRun | AskHuman) -> Any:
    """What a tool that raised ``StopRun`` or ``AskHuman`` answers ``call`` with: a
    person's answer, or (raised) the error that stops the run (see :mod:`host.steer`)."""
    if isinstance(steer, AskHuman):
        return ask_human(call, steer.question)
    raise stop_run(call, steer) from None


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    params: type[BaseModel] | None = None,
    retry: Retry | None = None,
    breaker: CircuitBreaker | None = None,
    fallback: Fallback | None = None,
    optional: bool = False,
    degraded: Any = None,
    fail_fast: bool = False,
) -> Any:
    """Register a function as a tool scripts can call: ``@tool`` or ``@tool(timeout=2.0)``.

    The function stays callable as before; the tool is attached to it. ``retry`` (a
    :class:`host.Retry`) tries a failed call again, ``breaker`` (a
    :class:`host.CircuitBreaker`) stops calling it while it keeps failing, ``optional``
    makes it answer ``degraded`` instead of failing, ``fail_fast`` turns its recovery off
    and makes its failure end the run (see :mod:`host.recovery`).
    """

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        setattr(fn, TOOL_ATTRIBUTE, make_tool(fn, name=name, description=description,
                                              timeout=timeout, params=params, retry=retry,
                                              breaker=breaker, fallback=fallback,
                                              optional=optional, degraded=degraded,
                                              fail_fast=fail_fast))
        return fn

    return register if fn is None else register(fn)


def make_tool(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    params: type[BaseModel] | None = None,
    retry: Retry | None = None,
    breaker: CircuitBreaker | None = None,
    fallback: Fallback | None = None,
    optional: bool = False,
    degraded: Any = None,
    fail_fast: bool = False,
) -> Tool:
    """Build the :class:`Tool` of a function (what ``@tool`` attaches)."""
    from pydantic import BaseModel, ConfigDict, create_model

    tool_name = name or fn.__name__
    if timeout is not None and timeout <= 0:
        raise ConfigurationError.InvalidValue(key=f"{tool_name}.timeout", value=timeout,
                                              reason="a tool timeout must be positive")
    signature = inspect.signature(fn)
    hints = typing.get_type_hints(fn)
    # a parameter annotated ToolContext gets the call's context: not a parameter scripts pass
    contexts = [name for name, hint in hints.items()
                if name in signature.parameters and _is_context(hint)]
    if len(contexts) > 1:
        raise ConfigurationError.InvalidValue(
            key=f"{tool_name}.{contexts[1]}", value=", ".join(contexts),
            reason=f"the tool {tool_name} declares {len(contexts)} ToolContext parameters "
                   f"({', '.join(contexts)}): one receives the call's context")
    context_param = contexts[0] if contexts else None
    positional = [parameter for parameter in signature.parameters.values()
                  if parameter.name != context_param]
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
        recovery=_recovery(tool_name, retry=retry, breaker=breaker, fallback=fallback,
                           optional=optional or None, degraded=degraded,
                           fail_fast=fail_fast or None),
        context_param=context_param,
    )


def _recovery(tool_name: str, **policies: Any) -> ToolRecovery | None:
    """The policies given to ``@tool``, checked, or None when none was."""
    given = {name: value for name, value in policies.items() if value is not None}
    if not given:
        return None
    from host.recovery import ToolRecovery

    return parse_recovery(tool_name, given, ToolRecovery)


def parse_recovery(tool_name: str, data: Any, model: type[ToolRecovery]) -> ToolRecovery:
    """``data`` (a mapping of policies, or a ToolRecovery) as ``model``; bad values are
    ``configuration/invalid_value`` naming the tool and the field."""
    if isinstance(data, model):
        return data
    from pydantic import ValidationError

    from host.recovery.model import VALIDATING, invalid_policy

    token = VALIDATING.set(True)  # nested policies leave their errors to this one
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_policy(tool_name, exc,
                             f"{tool_name}: {describe_validation(exc)}") from None
    finally:
        VALIDATING.reset(token)


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


@dataclass(frozen=True)
class ScriptTool:
    """A function that a script tools file (Lua, JavaScript...) exports, callable by every
    script.

    Each run gives the file an engine of its own, loaded on the first call and kept for
    the run, so the file's module state lives as long as the run (or until a timeout or
    a restart throws the engine away: with ``Restart(state="keep")`` the state the file
    exports with ``polyspell_state`` is handed back to ``polyspell_restore``).
    """

    name: str
    function: str  # its name in the file (``name`` unless renamed to avoid a clash)
    language: str  # a registered language (engines.spec_of)
    filename: str  # as given: frames and tracebacks name it so
    source: str
    description: str = ""
    timeout: float | None = None
    is_async: bool = False
    # the file exports polyspell_state and polyspell_restore (see host.recovery.restart)
    state_hooks: bool = False

    def schema(self) -> dict[str, Any]:
        """What the function takes: one table/object (scripts check it themselves)."""
        return {"type": "object",
                "description": f"one table/object of parameters, the argument of "
                               f"{self.function} in {self.filename}"}

    def invoke(self, call: ToolCall) -> Any:
        """Call the function in the run's engine for this file (see :mod:`host.calls`)."""
        return call.run.call_library(self, call)


# The functions a tools file exports to keep its state across a restart (Restart(state=
# "keep"), see host.recovery.restart): not tools. polyspell_state() returns the state as
# JSON-like data; polyspell_restore(state) takes it back after the file is loaded again.
STATE_EXPORT = "polyspell_state"
STATE_RESTORE = "polyspell_restore"
STATE_HOOKS = (STATE_EXPORT, STATE_RESTORE)

# Seconds a tools file may take to load (it runs once at registration, once per run).
LOAD_TIMEOUT = 10.0


def _load_script_tools(path: Path, language: str, sandbox: str,
                       engine_factory: Callable[..., engines.Engine],
                       modules: Modules | None = None) -> list[ScriptTool]:
    from host.libraries import decode_source  # (lazily, as Host does: start-up time)

    try:
        source = decode_source(path.read_bytes(), str(path))
    except OSError as exc:
        raise ConfigurationError.LoadFailed(path=str(path), reason=str(exc)) from None
    engine = build_engine(engine_factory, language, engines.DEFAULT_LIMITS, sandbox)
    try:
        names = load_library(engine, source, str(path), [], time.monotonic() + LOAD_TIMEOUT,
                             modules=modules)
    finally:
        engine.close()
    spec = engines.spec_of(language)
    assert spec is not None  # the language of the file's extension: registered
    hooks = [name for name in names if name in STATE_HOOKS]
    if len(hooks) == 1:
        missing = next(name for name in STATE_HOOKS if name not in hooks)
        raise ConfigurationError.LoadFailed(
            path=str(path), reason=f"it exports {hooks[0]} without {missing} (a file that "
                                   f"keeps its state across a restart exports both)")
    names = [name for name in names if name not in STATE_HOOKS]
    if not names:
        raise ConfigurationError.LoadFailed(
            path=str(path), reason=f"it exports no functions (put them in {spec.exports})")
    return [ScriptTool(name=name, function=name, language=language, filename=str(path),
                       source=source, state_hooks=bool(hooks),
                       description=f"{spec.display_name} function {name} of {path.name}")
            for name in names]


def build_engine(engine_factory: Callable[..., engines.Engine], language: str,
                 limits: engines.Limits, sandbox: str) -> engines.Engine:
    """An engine for ``language`` from a host's ``engine_factory``, checked.

    A factory that raises, or returns something that is not an engine of that language,
    is ``configuration/invalid_value`` (key ``engine_factory``) naming what went wrong,
    never a raw exception out of the run; a unified error it raises is its own, and
    ``KeyboardInterrupt`` passes as from any Python code.
    """
    try:
        engine = engine_factory(language, limits=limits, sandbox=sandbox)
    except (SpellError, KeyboardInterrupt):
        raise
    except BaseException as exc:  # even SystemExit: a factory's failure, not the host's end
        raise ConfigurationError.wrap(
            exc, kind="invalid_value", key="engine_factory",
            value=_callable_name(engine_factory),
            reason=f"engine_factory failed to make a {language} engine: "
                   f"{describe_exception(exc, qualified=False)}") from exc
    if not isinstance(engine, engines.Engine) or engine.language != language:
        what = (f"a {engine.language} engine" if isinstance(engine, engines.Engine)
                else f"{type(engine).__name__}, not an engines.Engine")
        raise ConfigurationError.InvalidValue(
            key="engine_factory", value=_callable_name(engine_factory),
            reason=f"engine_factory returned {what} for {language}")
    return engine


def _callable_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def load_library(engine: engines.Engine, source: str, filename: str,
                 tools: list[engines.ToolInfo], deadline: float,
                 output: Callable[[str], None] = lambda line: None, *,
                 modules: Modules | None = None) -> list[str]:
    """Load a tools file into ``engine``; the names it exports, or ``configuration/load_failed``.

    ``output`` receives the lines the file printed while it loaded; ``modules`` answers
    the modules it requires while it loads (see :mod:`host.libraries`; without it, a
    ``require`` at load is refused).
    """
    step = engine.load(source, filename, tools, deadline)
    while (modules is not None and isinstance(step, engines.Suspended)
           and all(request.kind == "module" for request in step.requests)):
        for line in step.output:
            output(line)
        step = engine.resume([modules(request) for request in step.requests], deadline)
    for line in step.output:
        output(line)
    if isinstance(step, engines.Finished):
        return list(step.result)
    if isinstance(step, engines.Suspended) and step.requests[0].kind == "module":
        reason = (f"it requires {step.requests[0].tool!r} while loading; a tools file "
                  f"cannot load modules while its functions are listed (require them "
                  f"inside its functions)")
        cause = None
    elif isinstance(step, engines.Suspended):
        reason = (f"it calls the tool {step.requests[0].tool!r} while loading; "
                  f"call tools from inside its functions")
        cause = None
    else:  # a fresh engine was handed no error: any ref on this one is made up
        cause = resolve_refs(step.error, _no_error)
        reason = cause.message
    raise ConfigurationError.LoadFailed(path=filename, reason=reason, cause=cause,
                                        frames=cause.frames if cause else [])


def _no_error(ref: int) -> None:
    """The lookup of an engine that was handed no error: no ref stands for one."""
    return None


class ToolRegistry:
    """The tools of a host, by name."""

    def __init__(self, tools: Iterable[Tool | ScriptTool] = ()) -> None:
        self._tools: dict[str, Tool | ScriptTool] = {}
        for item in tools:
            self.add(item)

    def add(self, item: Tool | ScriptTool) -> None:
        """Register a tool; two tools of one name are refused."""
        known = self._tools.get(item.name)
        if known is not None and not _same_tool(known, item):
            raise ConfigurationError.InvalidValue(
                key="tools", value=item.name,
                reason=f"two tools are named {item.name!r}: {_origin(known)} and "
                       f"{_origin(item)}")
        self._tools[item.name] = item

    def get(self, name: str) -> Tool | ScriptTool | None:
        """The tool of this name, if any."""
        return self._tools.get(name)

    def __iter__(self) -> typing.Iterator[Tool | ScriptTool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)


def _origin(item: Tool | ScriptTool) -> str:
    """Where a tool was defined, for a message: its file and line."""
    if isinstance(item, ScriptTool):
        return item.filename
    code = getattr(inspect.unwrap(item.fn), "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code else repr(item.fn)[:100]


def _same_tool(a: Tool | ScriptTool, b: Tool | ScriptTool) -> bool:
    if isinstance(a, Tool) and isinstance(b, Tool):
        return a.fn is b.fn  # one function registered twice
    return a == b  # one tools file loaded twice


def check_file(path: Path) -> None:
    """Refuse a path that is not a readable regular file: ``configuration/file_not_found``
    when nothing is there, ``configuration/load_failed`` naming what is (a directory...)."""
    if path.is_file():
        return
    if not path.exists():
        raise ConfigurationError.FileNotFound(path=str(path))
    what = ("a directory" if path.is_dir() else
            "a FIFO" if path.is_fifo() else
            "a device" if path.is_char_device() or path.is_block_device() else
            "a socket" if path.is_socket() else "not a regular file")
    raise ConfigurationError.LoadFailed(path=str(path), reason=f"it is {what}, not a file")


def load_tools_file(path: str | Path, sandbox: str = "constrained", *,
                    engine_factory: Callable[..., engines.Engine] | None = None,
                    modules: Modules | None = None,
                    ) -> list[Tool | ScriptTool]:
    """The tools of a file: a Python file's ``@tool`` functions, or the functions a script
    tools file (Lua, JavaScript...: by extension) exports (loaded once here, in
    ``sandbox``, in an engine from ``engine_factory`` (default :func:`engines.make_engine`),
    to find them).

    A missing file is ``configuration/file_not_found``; a directory, or a file that does
    not import or load, is ``configuration/load_failed`` (with the failure as its cause).
    A ``KeyboardInterrupt`` while it imports is the user's Ctrl-C: it propagates.
    """
    path = Path(path)
    check_file(path)
    language = engines.language_for_path(path)
    if language is not None:
        return _load_script_tools(path, language, sandbox,
                                  engine_factory or engines.make_engine, modules)
    if path.suffix != ".py":
        kinds = ["Python (.py)", *(f"{spec.display_name} ({', '.join(spec.extensions)})"
                                   for spec in engines.specs())]
        raise ConfigurationError.LoadFailed(
            path=str(path), reason=f"a tools file must be a {engines.spoken(kinds)} file")
    module = import_python_file(path, "polyspell_tools")
    found = [getattr(value, TOOL_ATTRIBUTE) for value in vars(module).values()
             if hasattr(value, TOOL_ATTRIBUTE)]
    if not found:
        raise ConfigurationError.LoadFailed(path=str(path),
                                            reason="it defines no @tool functions")
    return found


def import_python_file(path: Path, prefix: str) -> types.ModuleType:
    """Import the Python file ``path`` (checked by :func:`check_file`) as a module of its
    own, named ``<prefix>_<hash of its path>``; a file that does not import (any
    exception, even ``SystemExit``) is ``configuration/load_failed`` naming it, with the
    failure as its cause. A SpellError it raises, and the user's Ctrl-C, propagate."""
    module_name = f"{prefix}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigurationError.LoadFailed(path=str(path), reason="not importable")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SpellError:
        raise
    except KeyboardInterrupt:  # the user's Ctrl-C while the file imports: not the file's fault
        del sys.modules[module_name]
        raise
    except BaseException as exc:  # any other import failure, even SystemExit: a bad tools file
        del sys.modules[module_name]
        raise ConfigurationError.LoadFailed(
            path=str(path), reason=describe_exception(exc, qualified=False)) from exc
    return module


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


def _is_context(annotation: Any) -> bool:
    """Whether a parameter's annotation asks for the call's ToolContext (``ToolContext``,
    or ``ToolContext | None``)."""
    if annotation is ToolContext:
        return True
    args = typing.get_args(annotation)
    return ToolContext in args and all(arg in (ToolContext, type(None)) for arg in args)


def _is_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation) or annotation
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_is_list(arg) for arg in typing.get_args(annotation))
    return origin in (list, tuple, set, frozenset) or (
        isinstance(origin, type) and issubclass(origin, (list, tuple)))
