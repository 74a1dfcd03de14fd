"""Plans: tasks (a script each, Lua, JavaScript...) with dependencies, and how to run them.

A plan is given in Python (``Plan(tasks=[Task(...), ...])``) or read from a TOML file
(:func:`load_plan`)::

    [plan]
    name = "research"
    strategy = "cancel_dependents"
    tolerance = 0.5
    tools = ["tools.py"]
    libraries = ["lib"]              # folders require searches (host.libraries)
    executor = "ray"                 # where the tries run (host.executors); ray_address
    lua_version = "5.4"              # the Lua of the plan's Lua tasks (default: the host's)

    [[task]]
    id = "fetch_a"
    script = "fetch.lua"
    args = { source = "a" }
    lua_version = "luajit"           # this task's own

    [[task]]
    id = "summarize"
    script = "summarize.js"
    after = ["fetch_a"]
    retry = { attempts = 3, backoff = "exponential", initial = 0.1 }

Whatever is wrong with a plan (a cycle, an unknown or duplicate id, a missing script, an
unknown strategy, a field of the wrong type) is refused before anything runs, with one
``configuration/invalid_plan`` error naming the problem and where it is.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator

import engines
from bridge import ConfigurationError, SpellError
from bridge.data import MAX_DEPTH
from bridge.languages import ScriptLanguageName
from bridge.names import closest, known_or_meant
from host.host import MAX_TIMEOUT
from host.recovery import Retry
from host.recovery.model import VALIDATING
from host.tools import check_file

Strategy = Literal["propagate", "collect", "cancel_dependents", "isolate"]
STRATEGIES: tuple[str, ...] = ("propagate", "collect", "cancel_dependents", "isolate")
Language = ScriptLanguageName  # a registered language's name (engines.specs())


# Set while a model is being validated: pydantic calls the __init__ of nested models too.
_validating = VALIDATING  # one flag for plans and the policies inside them


# The Lua versions a task may ask for (engines.specs.LUA_VERSIONS).
LuaVersion = Literal["5.5", "5.4", "luajit"]


class _PlanModel(BaseModel):
    """Strict models: a wrong type or an unknown field is an error, never coerced.

    Building one from Python raises ``configuration/invalid_plan`` instead of pydantic's
    ValidationError, so that bad input is one unified error wherever it comes from.
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    def __init__(self, **data: Any) -> None:
        if _validating.get():  # a nested model: the outermost one reports the whole path
            super().__init__(**data)
            return
        token = _validating.set(True)
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise invalid_plan_from(exc, data, plan=str(data.get("name") or "plan")) from None
        except SpellError as err:  # from check_graph, deep inside pydantic: not its frames
            raise err.with_traceback(None)  # noqa: B904 - the error is the same one
        finally:
            _validating.reset(token)


class Task(_PlanModel):
    """One script to run: its id, file (``.lua``, ``.js``...: see :func:`engines.specs`),
    args and dependencies.

    The script receives ``args`` plus ``args.inputs``: the results of the tasks it runs
    ``after``, by id. ``timeout`` (seconds) bounds each try; without it the plan's
    default for the task's engine applies. ``lua_version`` (``"5.5"``, ``"5.4"``,
    ``"luajit"``) is the Lua of a Lua task; without it, the plan's, else the host's.
    """

    id: str = Field(min_length=1)
    script: str = Field(min_length=1)
    args: dict[str, JsonValue] = {}
    after: list[str] = []
    timeout: float | None = Field(None, gt=0, le=MAX_TIMEOUT, allow_inf_nan=False)
    retry: Retry | None = None
    lua_version: LuaVersion | None = None

    @field_validator("script", mode="before")
    @classmethod
    def _path_as_text(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("args")
    @classmethod
    def _inputs_is_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "inputs" in value:
            raise ValueError("args.inputs is reserved: the coordinator fills it with the "
                             "results of the tasks this one runs after")
        return value

    @property
    def language(self) -> str | None:
        """The script's language (``lua``, ``javascript``...), from its extension (None if
        unknown)."""
        return engines.language_for_path(self.script)


class Plan(_PlanModel):
    """Tasks and how to run them.

    ``strategy`` decides what a failure does to the other tasks (see the coordinator);
    ``tolerance`` is the fraction of failed tasks a partial failure may have and still
    ``continue_with_successful``; ``timeout`` bounds the whole plan; ``engine_timeouts``
    are the default per-try timeouts of tasks without their own, per engine. ``tools``
    and task scripts are paths relative to ``base_dir`` (the plan file's folder).
    """

    name: str = Field("plan", min_length=1)
    tasks: list[Task]
    strategy: Strategy = "cancel_dependents"
    tolerance: float = Field(0.0, ge=0, le=1)
    max_concurrency: int | None = Field(None, ge=1)
    timeout: float | None = Field(None, gt=0, le=MAX_TIMEOUT, allow_inf_nan=False)
    engine_timeouts: dict[Language, float] = {}
    tools: list[str] = []
    libraries: list[str] = []  # folders require searches, after the coordinator's
    # where the tries run, unless the coordinator was given an executor (the code's or
    # --executor win; a plan's wins over a config file's)
    executor: Literal["local", "ray"] | None = None
    ray_address: str | None = Field(None, min_length=1)
    lua_version: LuaVersion | None = None  # its Lua tasks' (else the coordinator's)
    base_dir: str | None = None
    source: str | None = None  # the file the plan was read from, for error locations

    @field_validator("base_dir", "source", mode="before")
    @classmethod
    def _path_as_text(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("tools", "libraries", mode="before")
    @classmethod
    def _paths_as_text(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [os.fspath(v) if isinstance(v, os.PathLike) else v for v in value]
        return value

    @field_validator("engine_timeouts")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        for language, seconds in value.items():
            if not 0 < seconds <= MAX_TIMEOUT:  # NaN too
                raise ValueError(f"the {language} timeout must be a positive number of "
                                 f"seconds, at most {MAX_TIMEOUT:g}")
        return value

    def model_post_init(self, context: Any, /) -> None:
        check_graph(self)

    def path(self, relative: str) -> Path:
        """A path of the plan (a script, a tools file) resolved against ``base_dir``."""
        path = Path(relative)
        if self.base_dir is None or path.is_absolute():
            return path
        return Path(self.base_dir) / path

    def task(self, task_id: str) -> Task:
        """The task with this id; ``async_execution/task_not_found`` if there is none."""
        for task in self.tasks:
            if task.id == task_id:
                return task
        from bridge import AsyncExecutionError

        raise AsyncExecutionError.TaskNotFound(task_id=task_id)

    def check_files(self) -> None:
        """Refuse a plan whose scripts or tools files are missing or of unknown language."""
        checked: set[str] = set()  # a script many tasks run is looked at once
        for task in self.tasks:
            if task.script in checked:
                continue
            checked.add(task.script)
            where = self._where(f"task {task.id!r}, field 'script'")
            if task.language is None:
                known = ", ".join(sorted(engines.EXTENSIONS))
                raise self._invalid(f"cannot tell the language of {task.script!r} "
                                    f"(known extensions: {known})", where)
            if not self.path(task.script).is_file():
                raise self._invalid(f"script {task.script!r} {_missing(self.path(task.script))}",
                                    where)
        for index, tools in enumerate(self.tools):
            if not self.path(tools).is_file():
                raise self._invalid(f"tools file {tools!r} {_missing(self.path(tools))}",
                                    self._where(f"[plan] tools[{index}]"))
        for index, folder in enumerate(self.libraries):
            if not self.path(folder).is_dir():  # before anything runs
                raise ConfigurationError.FileNotFound(
                    f"{self._where(f'[plan] libraries[{index}]')}: library folder not "
                    f"found: {self.path(folder)}", path=str(self.path(folder)))

    def _where(self, what: str) -> str:
        return f"{self.source}: {what}" if self.source else what

    def _invalid(self, reason: str, location: str) -> SpellError:
        return invalid_plan(plan=self.name, reason=reason, location=location)


def check_graph(plan: Plan) -> None:
    """Refuse an empty plan, duplicate ids, unknown or self dependencies, and cycles."""
    if not plan.tasks:
        raise plan._invalid("the plan has no tasks", plan._where("[[task]]"))
    ids: set[str] = set()
    for task in plan.tasks:
        if task.id in ids:
            raise plan._invalid(f"duplicate task id {task.id!r}",
                                plan._where(f"task {task.id!r}, field 'id'"))
        ids.add(task.id)
    for task in plan.tasks:
        for dep in task.after:
            if dep == task.id:
                raise plan._invalid(f"task {task.id!r} runs after itself",
                                    plan._where(f"task {task.id!r}, field 'after'"))
            if dep not in ids:
                meant = closest(dep, sorted(ids))
                raise plan._invalid(
                    f"task {task.id!r} runs after unknown task {dep!r}"
                    + (f" (did you mean {meant!r}?)" if meant else ""),
                    plan._where(f"task {task.id!r}, field 'after'"))
    cycle = find_cycle({task.id: task.after for task in plan.tasks})
    if cycle:
        raise plan._invalid(f"dependency cycle: {' -> '.join(cycle)}",
                            plan._where(f"task {cycle[0]!r}, field 'after'"))


def find_cycle(after: Mapping[str, list[str]]) -> list[str] | None:
    """One cycle of the graph ``id -> ids it runs after`` as ``[a, b, ..., a]``, or None.

    Depth-first with an explicit stack, so that a long chain of tasks cannot hit
    Python's recursion limit.
    """
    done: set[str] = set()
    for start in after:
        if start in done:
            continue
        path, on_path = [start], {start}
        stack = [iter(after[start])]
        while stack:
            dep = next(stack[-1], None)
            if dep is None:  # every dependency of path[-1] is explored
                stack.pop()
                done.add(path[-1])
                on_path.discard(path.pop())
            elif dep in on_path:
                return [*path[path.index(dep):], dep]
            elif dep not in done:
                path.append(dep)
                on_path.add(dep)
                stack.append(iter(after[dep]))
    return None


def invalid_plan(*, plan: str, reason: str, location: str = "") -> SpellError:
    """``configuration/invalid_plan``, its message naming where the problem is."""
    message = f"Invalid plan {plan}: {reason}" + (f" (at {location})" if location else "")
    return ConfigurationError.InvalidPlan(message, plan=plan, reason=reason, location=location)


# -- TOML -------------------------------------------------------------------------------

PLAN_KEYS = ("name", "strategy", "tolerance", "max_concurrency", "timeout",
             "engine_timeouts", "tools", "libraries", "executor", "ray_address",
             "lua_version")


def _missing(path: Path) -> str:
    """Why ``path`` is no file to read, for a plan's message."""
    if path.is_dir():
        return f"is a directory, not a file ({path})"
    return f"not found (looked for {path})"


def load_plan(path: str | Path) -> Plan:
    """Read and check a TOML plan; paths in it are relative to the file's folder.

    A missing file is ``configuration/file_not_found``; anything wrong inside it is one
    ``configuration/invalid_plan`` whose ``location`` names the file, the task and the field.
    """
    path = Path(path)
    check_file(path)
    name = path.stem
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise invalid_plan(plan=name, reason=f"not valid TOML: {exc}",
                                             location=str(path)) from None
    except RecursionError:  # tomllib recurses into nested arrays and tables
        raise invalid_plan(plan=name, reason="nested too deeply to read (task args may "
                           f"nest {MAX_DEPTH} levels)", location=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError.LoadFailed(path=str(path), reason=str(exc)) from None

    def invalid(reason: str, where: str) -> SpellError:
        return invalid_plan(plan=name, reason=reason,
                                              location=f"{path}: {where}")

    for key in data:
        if key not in ("plan", "task"):
            raise invalid(f"unknown table {key!r}{known_or_meant(key, ('plan', 'task'))} "
                          f"(a plan file has a [plan] table and [[task]] tables)", key)
    header = data.get("plan", {})
    if not isinstance(header, dict):
        raise invalid("'plan' must be a table: [plan]", "plan")
    if isinstance(header.get("name"), str) and header["name"]:
        name = header["name"]
    for key in header:
        if key not in PLAN_KEYS:
            raise invalid(f"unknown field {key!r}{known_or_meant(key, PLAN_KEYS)}", f"[plan] {key}")
    tasks = data.get("task", [])
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise invalid("tasks must be [[task]] tables", "task")
    fields = {**header, "tasks": tasks, "base_dir": str(path.parent), "source": str(path)}
    fields.setdefault("name", name)
    token = _validating.set(True)
    try:
        return Plan.model_validate(fields)
    except ValidationError as exc:
        raise invalid_plan_from(exc, fields, plan=name, source=str(path)) from None
    except SpellError as err:  # from check_graph, deep inside pydantic: not its frames
        raise err.with_traceback(None)  # noqa: B904 - the error is the same one
    finally:
        _validating.reset(token)


def invalid_plan_from(exc: ValidationError, data: Mapping[str, Any], *, plan: str,
                      source: str | None = None) -> SpellError:
    """pydantic's first problem as one ``configuration/invalid_plan``, located by task id."""
    problems = exc.errors()
    first = next((p for p in problems if p["type"] == "extra_forbidden"), problems[0])
    loc = list(first["loc"])
    where = "[plan]"
    model_fields: tuple[str, ...] = tuple(Plan.model_fields)
    if exc.title == "Task":
        where, model_fields = _task_label(data), tuple(Task.model_fields)
    elif exc.title == "Retry":
        where, model_fields = "retry", tuple(Retry.model_fields)
    elif loc[:1] == ["tasks"] and len(loc) > 1 and isinstance(loc[1], int):
        tasks = data.get("tasks") or []
        raw = tasks[loc[1]] if loc[1] < len(tasks) else {}
        where, loc = _task_label(raw, loc[1]), loc[2:]
        model_fields = tuple(Task.model_fields)
        if loc[:1] == ["retry"]:
            model_fields = tuple(Retry.model_fields)
    field = ".".join(str(part) for part in loc)
    if first["type"] == "extra_forbidden":
        reason = f"unknown field {field!r}{known_or_meant(str(loc[-1]), model_fields)}"
    elif first["type"] == "missing":
        reason = f"missing field {field!r}"
    else:
        got = first.get("input")
        message = first["msg"].removeprefix("Value error, ")
        reason = f"field {field!r}: {message} (got {_describe(got)})"
    location = f"{where}, field {field!r}" if field else where
    if source:
        location = f"{source}: {location}"
    return invalid_plan(plan=plan, reason=reason, location=location)


def _task_label(raw: Any, index: int | None = None) -> str:
    task_id = raw.get("id") if isinstance(raw, Mapping) else None
    if isinstance(task_id, str) and task_id:
        return f"task {task_id!r}"
    return "task" if index is None else f"task #{index + 1}"


def _describe(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{type(value).__name__} {text}"
