"""The coordinator: runs a plan's tasks on their engines, concurrently, and reports.

Independent tasks run at the same time (one anyio task each, engines on threads of their
own, so CPU-bound Lua and JS really run in parallel), at most ``max_concurrency`` at
once. A task starts when every task it runs ``after`` has ended, and finds their results
in ``args.inputs``.

What a failure does to the others is the plan's strategy (the seed's AsyncErrorStrategy):

- ``propagate``: the first failure cancels everything still running or pending;
- ``collect``: everything that can run runs; tasks whose dependencies did not succeed are
  ``skipped``; all failures are reported together;
- ``cancel_dependents``: a failure cancels the tasks that depend on it, transitively;
  independent tasks go on;
- ``isolate``: dependents run anyway and find the failure in ``args.inputs[<id>]`` as an
  error object (``status``, ``category``, ``kind``, ``message``, ``fields``).

A running task is stopped by ``run.cancel(error)``: the script gets the error at its next
tool call (so ``pcall`` handlers, ``finally`` blocks, ``on_cancel`` and ``signal``
listeners run), and pure CPU loops are stopped by the engine's time limit, set a little
past the task's timeout. The run is never abandoned: the coordinator keeps waiting for
the engine thread to finish, so no script is left running behind a report.

The :class:`PlanReport` classifies the run (the seed's CrossEngineErrorPattern):
``succeeded``, ``all_failed``, ``cascading_failure`` or ``partial_failure``.
"""

from __future__ import annotations

import contextvars
import functools
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
from pydantic import BaseModel, JsonValue, PrivateAttr

import engines
from bridge import AsyncExecutionError, CrossEngineCoordinationError, SpellError
from bridge.errors import describe_exception
from host.executors import Executor, as_executor
from host.history import RecoveryHistory, recovery_event
from host.hooks.actions import Continue, Recover, Rethrow
from host.hooks.actions import Retry as RetryAction
from host.hooks.files import with_config_hooks
from host.hooks.points import CancellationContext, TaskContext, copy_data
from host.host import (
    MAX_TIMEOUT,
    Host,
    ScriptSource,
    check_callable,
    check_positive,
    chosen_isolation,
    read_sources,
    run_blocking,
    tool_items,
)
from host.plan import STRATEGIES, Plan, Strategy, Task, invalid_plan, load_plan

if TYPE_CHECKING:
    from host.config import Config
    from host.hooks.dispatch import Dispatcher
    from host.ray_executor import HostRecipe
    from host.runner import EngineFactory, ScriptRun

TaskStatus = Literal["succeeded", "failed", "cancelled", "timed_out", "skipped"]
Outcome = Literal["succeeded", "all_failed", "cascading_failure", "partial_failure"]
Decision = Literal["continue_with_successful", "fail_entire_operation"]

# Seconds a stopped script gets past its timeout to reach a tool call and run its cleanup
# before the engine's own time limit stops it (a pure CPU loop never reaches one).
CLEANUP_GRACE = 0.5
DEFAULT_ENGINE_TIMEOUT = 30.0
DEFAULT_MAX_CONCURRENCY = 16

# The task whose script is printing: engine threads run in a copy of the task's context.
_printing_task: contextvars.ContextVar[str] = contextvars.ContextVar("polyspell_task")


class TaskReport(BaseModel):
    """How one task ended: status, engine, tries, seconds, result or error, and why."""

    id: str
    script: str
    engine: str
    status: TaskStatus
    attempts: int = 0
    duration: float = 0.0  # seconds from the first try's start to the end (0: never ran)
    result: JsonValue = None
    error: dict[str, Any] | None = None  # the unified error, as SpellError.to_dict() gives it
    caused_by: list[str] = []  # the tasks whose failure caused this one's
    callback_errors: list[dict[str, Any]] = []  # Python listeners or cleanups that raised
    # an after_task_failure controller answered Recover(result): its name, and the error
    # of the try it answered for (the task succeeded with that result)
    recovered_by: str | None = None
    recovered_from: dict[str, Any] | None = None
    # what recovery did in the task's tries and the task's own retries (host.history's
    # events; a task retry's "tool" is the task's script), and how many were left out
    recovery: list[dict[str, Any]] = []
    recovery_dropped: int = 0
    degraded: list[str] = []  # the tools that answered degraded in its last try


class PlanReport(BaseModel):
    """The whole run: every task, the outcome and, when something failed, why.

    ``root_causes`` are the failed tasks not caused by any other; ``propagation`` lists
    the edges (``"a -> b"``) along which failures spread. ``representative_error`` (for
    ``all_failed``) is the most severe root-cause error, the first to fail on a tie.
    ``decision`` (for ``partial_failure``) compares the failed fraction with ``tolerance``.
    JSON-serialisable: ``report.model_dump_json()``.
    """

    plan: str
    strategy: Strategy
    outcome: Outcome
    duration: float
    tasks: list[TaskReport]
    root_causes: list[str] = []
    propagation: list[str] = []
    representative_error: dict[str, Any] | None = None
    representative_task: str | None = None
    decision: Decision | None = None
    failed_fraction: float = 0.0
    tolerance: float = 0.0

    _errors: dict[str, SpellError] = PrivateAttr(default_factory=dict)

    def task(self, task_id: str) -> TaskReport:
        """The report of one task; ``async_execution/task_not_found`` if there is none."""
        for task in self.tasks:
            if task.id == task_id:
                return task
        raise AsyncExecutionError.TaskNotFound(task_id=task_id)

    def error(self, task_id: str) -> SpellError | None:
        """A task's error as a SpellError: the live one, or rebuilt from its JSON."""
        if task_id in self._errors:
            return self._errors[task_id]
        data = self.task(task_id).error
        return None if data is None else SpellError.from_dict(data)

    @property
    def results(self) -> dict[str, Any]:
        """The results of the tasks that succeeded, by id."""
        return {t.id: t.result for t in self.tasks if t.status == "succeeded"}

    def to_error(self) -> SpellError | None:
        """The ``cross_engine_coordination`` error for this outcome (None if it succeeded).

        It carries the report as JSON in ``fields["report"]``; its cause is the
        representative error, or the first root cause's.
        """
        if self.outcome == "succeeded":
            return None
        data = self.model_dump(mode="json")
        cause_task = self.representative_task or (self.root_causes or [None])[0]
        cause = None if cause_task is None else self.error(cause_task)
        if self.outcome == "all_failed":
            return CrossEngineCoordinationError.AllFailed(plan=self.plan, report=data, cause=cause)
        if self.outcome == "cascading_failure":
            return CrossEngineCoordinationError.CascadingFailure(
                plan=self.plan, root_causes=self.root_causes, propagation=self.propagation,
                report=data, cause=cause)
        failed = sum(t.status != "succeeded" for t in self.tasks)
        return CrossEngineCoordinationError.PartialFailure(
            plan=self.plan, failed=failed, total=len(self.tasks), decision=self.decision,
            report=data, cause=cause)


Callback = Callable[..., Any]


class Coordinator:
    """Runs plans of script tasks (Lua, JavaScript...) that call the given Python tools.

    ``tools`` are as for :class:`host.Host` (``@tool`` functions or tools files); a plan
    adds its own. ``engine_timeouts`` are the default per-try timeouts of tasks without
    one, by language (``{"lua": 30, "javascript": 30}``); a plan's ``engine_timeouts`` win
    over them.
    ``on_output(task_id, line)`` receives what scripts print (default: records of the
    ``polyspell.script`` logger, with ``task_id`` among their attributes).
    ``engine_factory`` makes every engine, as for :class:`host.Host`.
    ``recovery`` and ``config`` (a config file's path or a :class:`host.config.Config`)
    set the tools' recovery policies, as for :class:`host.Host`; they are checked against
    the tools when a plan runs (a plan's tools files may add the tools they name). A
    task's own ``retry`` retries the whole task, apart from them. ``on_human_input``
    answers the tasks' tools' ``AskHuman``, as for :class:`host.Host`. ``hooks``
    (``@hooks.observer``, ``@hooks.controller``: see :mod:`host.hooks`) are the hooks of
    every task's runs and tool calls, as for :class:`host.Host`, and of the tasks
    themselves: ``task_started`` and ``task_finished`` observers see each try of each
    task (a :class:`host.hooks.TaskContext`), ``task_completed`` observers each task's
    end, ``cancellation_started``/``cancellation_finished`` observers each task's stop,
    and ``after_task_failure`` controllers decide after each try that failed or timed
    out (not one the coordinator stopped), in priority order, before the task's own
    ``retry``:

    - ``Continue()`` (or None): the failure stands; the task's own ``retry`` and the
      plan's strategy go on as without the controller;
    - ``Recover(result)``: the task succeeds with ``result`` (JSON-like data, a copy),
      which its dependents receive; its report's ``recovered_by`` names the controller
      and ``recovered_from`` is the error it answered for;
    - ``Retry(delay=None)``: one more try after ``delay`` seconds, bounded by the one
      retry of controllers (:func:`host.hooks.layer.hook_retry`: 3 tries in all, 30 s)
      and the plan's deadline. Tries are counted once, whoever asks for them: the
      controller's count toward the task's own ``retry.attempts``, and past the bound
      the answer counts as ``Continue()``;
    - ``Rethrow(error=None)``: the task fails now with ``error`` (the try's as its
      cause; a string is ``hook/rejected``), or with the try's own error: no more tries,
      and the strategy cascades from it.

    A controller that raises, runs past its budget or answers anything else fails the
    task with ``hook/execution_failed``, ``hook/timeout`` or ``hook/invalid_result`` (no
    more tries). The controllers that ran are in the task's error's hook path. One
    dispatcher runs every hook, whatever host a plan's tools files need. ``monitor``
    records every task's errors and counts every try, as ``Host(monitor=...)`` (see
    :mod:`host.monitor`). ``isolation`` (``"thread"`` or ``"process"``) says where every
    task's engines run, as for :class:`host.Host`: in process mode the coordinator owns a
    pool of worker processes, ended by :meth:`close` (or ``with Coordinator(...)``).
    ``libraries`` and ``script_dir_library`` are the folders a script's ``require``
    searches, as for :class:`Host`; a plan's ``libraries`` come after them (see
    :mod:`host.libraries`). ``lua_version`` is the Lua of Lua tasks, as for
    :class:`Host` (else the config file's); a plan's ``lua_version`` and a task's own win.

    Listeners and cleanups, each for every task or (``task="id"``) for one, sync or async:

    - ``on_task_started(fn)``: ``fn(task_id, attempt)`` as each try starts;
    - ``on_task_completed(fn)``: ``fn(report)`` with the task's final :class:`TaskReport`;
    - ``on_cancellation_started(fn)``: ``fn(task_id, error)`` when the coordinator decides
      to stop a task (a strategy cancelled it, or it ran out of time);
    - ``on_cancel(fn)``: the task's cleanup, ``fn(task_id, error)``, once its script has
      stopped (at once for a task that had not started);
    - ``on_cancellation_completed(fn)``: ``fn(task_id, error)`` after the cleanups.

    They are hooks of the one dispatcher too, of the third kind, *listeners*, at the
    points ``task_started``, ``task_completed``, ``cancellation_started`` and
    ``cancellation_finished`` (the cleanups first): at each point the listeners run
    first, awaited one after the other on the event loop in registration order, with no
    time budget (a cleanup may take long), then the point's observers. A listener that
    raises never stops the plan and is never switched off: its error is kept in the
    task's ``callback_errors``. Keep sync listeners short: they hold the event loop.
    """

    def __init__(
        self,
        tools: Iterable[Any] = (),
        *,
        memory_mb: int = 256,
        stack_kb: int = 1024,
        sandbox: str = "constrained",
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        engine_timeouts: Mapping[str, float] | None = None,
        on_output: Callable[[str, str], None] | None = None,
        engine_factory: EngineFactory | None = None,
        recovery: Mapping[str, Any] | None = None,
        config: str | os.PathLike[str] | Config | None = None,
        on_human_input: Callable[[str], Any] | None = None,
        hooks: Iterable[Any] | None = (),
        monitor: Any = None,
        libraries: Iterable[str | os.PathLike[str]] = (),
        script_dir_library: bool | None = None,
        isolation: str | None = None,
        executor: str | Executor | None = None,
        ray_address: str | None = None,
        lua_version: str | None = None,
    ) -> None:
        # memory_mb, stack_kb, sandbox, on_human_input, hooks, isolation, lua_version:
        # checked by the Host below
        check_positive("max_concurrency", max_concurrency, at_least=1)
        check_callable("on_output", on_output)
        self.tools = tool_items(tools)
        self.memory_mb = memory_mb
        self.stack_kb = stack_kb
        self.sandbox = sandbox
        self.max_concurrency = int(max_concurrency)
        self.engine_timeouts = {spec.name: DEFAULT_ENGINE_TIMEOUT for spec in engines.specs()}
        for language, seconds in (engine_timeouts or {}).items():
            if language not in self.engine_timeouts:
                from bridge import ConfigurationError

                names = engines.spoken((repr(name) for name in self.engine_timeouts), "and")
                raise ConfigurationError.InvalidValue(
                    key="engine_timeouts", value=str(language),
                    reason=f"engine timeouts are for {names}")
            check_positive(f"engine_timeouts[{language!r}]", seconds, at_most=MAX_TIMEOUT)
            self.engine_timeouts[language] = float(seconds)
        self.on_output = on_output  # None: the polyspell.script logger's records
        if config is not None:  # a bad file fails now
            from host.config import as_config

            config = as_config(config)
        self.recovery, self.config = recovery, config
        if monitor is not None and monitor is not False and config is not None \
                and config.alerts is not None:  # no import of host.monitor without one
            from host.monitor import as_monitor

            monitor = as_monitor(monitor)
            monitor.use_alerts(config)  # its file's [alerts], unless it has its own
        # built here so that bad options or tools fail now, and tools load once; the
        # recovery policies wait for the plan, whose tools files they may name
        self._host = Host(self.tools, memory_mb=memory_mb, stack_kb=stack_kb,
                          sandbox=sandbox, on_output=self._output if on_output else None,
                          engine_factory=engine_factory, on_human_input=on_human_input,
                          hooks=with_config_hooks(hooks, config),  # [hooks] first
                          monitor=monitor,
                          isolation=chosen_isolation(isolation, config, engine_factory),
                          libraries=libraries, script_dir_library=script_dir_library,
                          lua_version=lua_version if lua_version is not None or config is None
                          or engine_factory is not None else config.lua_version)
        self._given_factory = engine_factory  # a plan's host is made with it again
        self.isolation = self._host.isolation
        self.libraries = [os.fspath(path) for path in libraries]
        self.script_dir_library = script_dir_library
        # the code's executor wins over a plan's, a plan's over the config file's
        self._executor_given = executor is not None or ray_address is not None
        if not self._executor_given and config is not None:
            executor, ray_address = config.executor, config.ray_address
        self.executor = as_executor(executor, ray_address=ray_address)
        self._owns_executor = not isinstance(executor, Executor)  # else the caller's
        self._plan_executors: dict[tuple[str, str | None], Executor] = {}
        self.monitor = self._host.monitor
        self.engine_factory = self._host.engine_factory
        # the one dispatcher (None: no hooks nor listeners, no cost)
        self.hooks: Dispatcher | None = self._host.hooks

    def close(self) -> None:
        """End the worker processes of process isolation (see :meth:`host.Host.close`)
        and what the executor holds (a local Ray it started)."""
        self._host.close()
        if self._owns_executor:
            self.executor.close()
        for executor in self._plan_executors.values():
            executor.close()
        self._plan_executors.clear()

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- listeners ------------------------------------------------------------------

    def on_task_started(self, fn: Callback, *, task: str | None = None) -> Callback:
        """Call ``fn(task_id, attempt)`` as each try of a task starts (``task_started``)."""
        return self._listen("task_started", fn, task, lambda c: (c.task_id, c.attempt))

    def on_task_completed(self, fn: Callback, *, task: str | None = None) -> Callback:
        """Call ``fn(report)`` with a task's :class:`TaskReport` when it ends, however
        (``task_completed``)."""
        return self._listen("task_completed", fn, task, lambda c: (c.report,))

    def on_cancellation_started(self, fn: Callback, *, task: str | None = None) -> Callback:
        """Call ``fn(task_id, error)`` when the coordinator decides to stop a task
        (``cancellation_started``)."""
        return self._listen("cancellation_started", fn, task, lambda c: (c.task_id, c.reason))

    def on_cancel(self, fn: Callback, *, task: str | None = None) -> Callback:
        """Register a cleanup, ``fn(task_id, error)``, run once a stopped task's script
        ended (``cancellation_finished``, before its other listeners)."""
        return self._listen("cancellation_finished", fn, task,
                            lambda c: (c.task_id, c.reason), priority=1)

    def on_cancellation_completed(self, fn: Callback, *, task: str | None = None) -> Callback:
        """Call ``fn(task_id, error)`` when a stopped task has ended and been cleaned up
        (``cancellation_finished``, after the cleanups)."""
        return self._listen("cancellation_finished", fn, task, lambda c: (c.task_id, c.reason))

    def _listen(self, point: str, fn: Callback, task: str | None,
                arguments: Callable[[Any], tuple[Any, ...]], priority: int = 0) -> Callback:
        """``fn`` as a listener of ``point`` in the one dispatcher (made now if there is
        none yet), called with ``arguments(context)`` for ``task`` (None: every task)."""
        from host.hooks.dispatch import Dispatcher, Hook

        if not callable(fn) or not (task is None or isinstance(task, str)):
            from bridge import ConfigurationError

            if not callable(fn):
                raise ConfigurationError.InvalidValue(key=point, value=repr(fn)[:200],
                                                      reason="a listener must be callable")
            raise ConfigurationError.InvalidValue(
                key=f"{point}.task", value=repr(task)[:200],
                reason="a listener's task is a task id (a string), or None for every task")

        def listener(context: Any) -> Any:
            if task is None or context.task_id == task:
                return fn(*arguments(context))
            return None

        if self.hooks is None:  # the first listener: a dispatcher for it (the runs share it)
            self.hooks = self._host.hooks = Dispatcher()
        self.hooks.listen(Hook(listener, point, "listener", priority=priority,
                               name=getattr(fn, "__qualname__", None) or repr(fn)[:80]))
        return fn

    # -- running --------------------------------------------------------------------

    def run(
        self,
        plan: Plan | Sequence[Task] | str | Path,
        *,
        raise_on_failure: bool = False,
        strategy: str | None = None,
        max_concurrency: int | None = None,
    ) -> PlanReport:
        """Run a plan (a :class:`Plan`, a list of tasks, or a TOML file) and report.

        Every task runs (or is cancelled or skipped) before this returns. With
        ``raise_on_failure``, any outcome but ``succeeded`` raises the plan's
        ``cross_engine_coordination`` error, which carries the report. A bad plan raises
        ``configuration/invalid_plan`` before anything runs.
        """
        return run_blocking(functools.partial(
            self.arun, plan, raise_on_failure=raise_on_failure, strategy=strategy,
            max_concurrency=max_concurrency), "Coordinator.run", "await coordinator.arun(...)")

    async def arun(
        self,
        plan: Plan | Sequence[Task] | str | Path,
        *,
        raise_on_failure: bool = False,
        strategy: str | None = None,
        max_concurrency: int | None = None,
    ) -> PlanReport:
        """:meth:`run` for async code (asyncio or trio)."""
        plan = self.prepare(plan, strategy=strategy, max_concurrency=max_concurrency)
        host = self._host_for(plan)
        executor = self._executor_for(plan)
        executor.prepare(self, plan, host)
        try:
            execution = _Execution(self, plan, host, executor)
            await execution.run()
        finally:
            executor.finish(host)
        report = execution.report()
        if raise_on_failure and report.outcome != "succeeded":
            raise report.to_error()  # type: ignore[misc]
        return report

    def prepare(
        self,
        plan: Plan | Sequence[Task] | str | Path,
        *,
        strategy: str | None = None,
        max_concurrency: int | None = None,
    ) -> Plan:
        """The plan to run, checked (files included), with the given overrides."""

        if isinstance(plan, (str, Path)):
            plan = load_plan(plan)
        elif not isinstance(plan, Plan):
            if not isinstance(plan, Sequence) or not all(isinstance(t, Task) for t in plan):
                raise invalid_plan(
                    plan="plan", reason="a plan is a Plan, a list of Task objects or the "
                    f"path of a TOML file, not {type(plan).__name__}")
            plan = Plan(tasks=list(plan))
        if strategy is not None and strategy not in STRATEGIES:
            raise invalid_plan(
                plan=plan.name, reason=f"unknown strategy {strategy!r} "
                f"(one of {', '.join(STRATEGIES)})", location="strategy")
        updates = {key: value for key, value in
                   (("strategy", strategy), ("max_concurrency", max_concurrency))
                   if value is not None}
        if updates:
            plan = Plan(**{**dict(plan), **updates})
        plan.check_files()
        return plan

    def _executor_for(self, plan: Plan) -> Executor:
        """The executor of ``plan``'s tries: the coordinator's, unless the plan names one
        and the coordinator was given none (made once, kept until :meth:`close`)."""
        if self._executor_given or (plan.executor is None and plan.ray_address is None):
            return self.executor
        key = (plan.executor or "local", plan.ray_address)
        if key not in self._plan_executors:
            self._plan_executors[key] = as_executor(key[0], ray_address=key[1])
        return self._plan_executors[key]

    def recipe(self, plan: Plan) -> HostRecipe:
        """What the host of ``plan``'s tries is made of, for an executor that makes it
        elsewhere (a Ray worker): the coordinator's settings, tools and files."""
        from host.ray_executor import HostRecipe, shipped_files

        tools = [*self.tools, *(plan.path(p) for p in plan.tools)]
        roots = [*self.libraries, *(os.fspath(plan.path(p)) for p in plan.libraries)]
        files = [os.fspath(t) for t in tools if isinstance(t, (str, os.PathLike))]
        config_roots = self.config.library_roots() if self.config is not None else []
        digests, contents = shipped_files([*files, *roots, *config_roots])
        return HostRecipe(
            tools=tools, memory_mb=self.memory_mb, stack_kb=self.stack_kb,
            sandbox=self.sandbox, recovery=self.recovery, config=self.config,
            libraries=roots, script_dir_library=self.script_dir_library,
            isolation=self.isolation,
            lua_version=None if self._given_factory else self._host.lua_version,
            files=digests, contents=contents)

    def _host_for(self, plan: Plan) -> Host:
        """The host of a plan's run: the coordinator's, with the plan's tools files and
        the recovery policies (``recovery`` and ``config``, checked against every tool)."""
        if not plan.tools and self.recovery is None and self.config is None \
                and not plan.libraries:
            return self._host
        # the coordinator's own tools are loaded already: only the plan's files load here
        tools = [*self._host.tools, *(plan.path(p) for p in plan.tools)]
        pool = self._host.pool  # the plan's host shares the coordinator's workers
        host = Host(tools, memory_mb=self.memory_mb, stack_kb=self.stack_kb,
                    sandbox=self.sandbox,
                    on_output=self._output if self.on_output else None,
                    engine_factory=None if pool else self._given_factory,
                    isolation=pool or "thread", recovery=self.recovery,
                    lua_version=None if self._given_factory else self._host.lua_version,
                    config=self.config, on_human_input=self._host.on_human_input)
        host._caches = self._host._caches  # fallback caches too, like the breakers
        host.breakers = self._host.breakers  # one breaker per tool for the coordinator
        # the one dispatcher (set after the breakers, which announce to it already): its
        # switched-off observers stay off, whatever the plan
        host.hooks = self.hooks
        host.monitor = self.monitor
        # the coordinator's roots (its own, its config's), then the plan's; one cache
        host.libraries = self._host.libraries.with_roots(
            [plan.path(p) for p in plan.libraries])
        return host

    def _output(self, line: str) -> None:
        self.on_output(_printing_task.get("?"), line)


# -- one execution of one plan ------------------------------------------------------------


@dataclass(eq=False)
class _TaskState:
    task: Task
    done: anyio.Event
    status: TaskStatus | None = None  # set once, when the task ends
    result: Any = None
    error: SpellError | None = None
    attempts: int = 0
    started: float | None = None
    ended: float | None = None
    order: int = 0  # 1 for the first task to end, 2 for the next...
    caused_by: list[str] = field(default_factory=list)
    cancel_error: SpellError | None = None  # a strategy cancelled the task: never retried
    wake: anyio.Event | None = None  # set when cancelled, to cut a retry's backoff short
    run: ScriptRun | None = None  # the try in progress (its control says if it was stopped)
    callback_errors: list[SpellError] = field(default_factory=list)
    run_id: str | None = None  # the run of the try in progress or last made
    stopped_run: str | None = None  # the run of the try a cancellation stopped
    # a strategy is cancelling it: set for all its targets before it tells the first (its
    # listeners may yield), so that none starts, or is skipped, meanwhile
    doomed: bool = False
    announcing: anyio.Event | None = None  # set once cancellation_started has been told
    recovered_by: str | None = None  # an after_task_failure controller's Recover
    recovered_from: SpellError | None = None
    recovery: RecoveryHistory = field(default_factory=RecoveryHistory)
    degraded: list[str] = field(default_factory=list)  # of the last try (host.recovery)

    @property
    def id(self) -> str:
        return self.task.id


class _Execution:
    """The state of one run of one plan: its tasks, their states, the strategy at work."""

    def __init__(self, coordinator: Coordinator, plan: Plan, host: Host,
                 executor: Executor) -> None:
        self.coordinator = coordinator
        self.plan = plan
        self.host = host
        self.executor = executor
        self.states = {t.id: _TaskState(t, anyio.Event(), wake=anyio.Event())
                       for t in plan.tasks}
        self.dependents: dict[str, list[str]] = {t.id: [] for t in plan.tasks}
        for task in plan.tasks:
            for dep in task.after:
                self.dependents[dep].append(task.id)
        self.timeouts = {**coordinator.engine_timeouts, **plan.engine_timeouts}
        self.limiter = anyio.CapacityLimiter(plan.max_concurrency or coordinator.max_concurrency)
        self.start = time.monotonic()
        self.deadline = self.start + (plan.timeout or float("inf"))
        self.ended = 0
        self.sources: dict[Path, ScriptSource] = {}  # read once per plan: see run()

    async def run(self) -> None:
        try:
            # each distinct script read once per plan, on a worker thread: a task's try
            # then neither stats nor reads its file on the event loop (where each call
            # waits for the GIL the engine threads hold)
            self.sources = await anyio.to_thread.run_sync(
                read_sources, {self.plan.path(s.task.script) for s in self.states.values()},
                self.host.libraries)
            async with anyio.create_task_group() as group:
                for state in self.states.values():
                    group.start_soon(self._task, state, name=f"polyspell task {state.id}")
        finally:
            hooks = self.host.hooks
            if hooks is not None:  # every observer has seen the plan, within its budget
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(hooks.catch_up)

    # -- one task ---------------------------------------------------------------------

    async def _task(self, state: _TaskState) -> None:
        for dep in state.task.after:
            await self.states[dep].done.wait()
        if state.status is not None or state.doomed:
            return  # a strategy ended it while it waited (or is ending it: its listeners run)
        blocked = [d for d in state.task.after if self.states[d].status != "succeeded"]
        if blocked and self.plan.strategy != "isolate":
            # propagate and cancel_dependents have ended it already; collect skips it
            reason = f"dependency {blocked[0]!r} {self.states[blocked[0]].status}"
            await self._finish(state, "skipped", error=AsyncExecutionError.TaskCancelled(
                task_id=state.id, reason=reason, cancellation_source="dependency"))
            return
        async with self.limiter:
            if state.status is None and not state.doomed:
                await self._tries(state)

    async def _tries(self, state: _TaskState) -> None:
        task = state.task
        retry = task.retry
        args = {**task.args, "inputs": {dep: self._input(dep) for dep in task.after}}
        state.started = time.monotonic()
        while True:
            if state.cancel_error is not None:  # cancelled between two tries
                await self._cleanup(state, state.cancel_error)
                await self._finish(state, "cancelled", error=state.cancel_error)
                return
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                if state.error is None:
                    await self._finish(state, "skipped", error=AsyncExecutionError.TaskCancelled(
                        task_id=task.id, reason="the plan ran out of time before it started",
                        cancellation_source="plan_timeout"))
                else:  # out of time between two tries: the last failure stands
                    await self._finish(state, _status_of(state.error), error=state.error)
                return
            state.attempts += 1
            await self._notify("task_started", state, self._context(state))
            budget = min(task.timeout or self.timeouts.get(task.language or "",
                                                           DEFAULT_ENGINE_TIMEOUT), remaining)
            began = time.monotonic()
            ok, value = await self._try(state, args, budget)
            hooks = self.host.hooks
            if hooks is not None:
                tried = self._context(state, ok, value, time.monotonic() - began)
                await self._notify("task_finished", state, tried)
            if ok:
                await self._finish(state, "succeeded", result=value)
                return
            state.error = value
            if value is state.cancel_error and value is not None:
                await self._finish(state, "cancelled", error=value)
                return
            if state.cancel_error is not None:  # it failed on its own before the cancel came
                await self._cleanup(state, state.cancel_error)
                await self._finish(state, _status_of(value), error=value)
                return
            if hooks is not None and hooks.has("after_task_failure"):
                action, value = await self._after_failure(state, tried)
                if state.cancel_error is not None:  # a strategy stopped it meanwhile
                    await self._cleanup(state, state.cancel_error)
                    if isinstance(action, Recover):
                        await self._finish(state, "succeeded", result=value)
                    else:
                        await self._finish(state, _status_of(value), error=value)
                    return
                if isinstance(action, Recover):
                    await self._finish(state, "succeeded", result=value)
                    return
                state.error = value
                if not isinstance(action, (Continue, RetryAction)):  # Rethrow, or it failed
                    await self._finish(state, _status_of(value), error=value)
                    return
                delay = None if isinstance(action, Continue) else self._hook_delay(state, action)
                if delay is not None:  # else past the bound: as Continue
                    state.recovery.add(recovery_event("retry", task.script, state.attempts,
                                                      value.code, delay))
                    with anyio.move_on_after(delay):
                        await state.wake.wait()  # type: ignore[union-attr]
                    continue
            # a task's tries are bounded by the plan's timeout; max_elapsed only when set
            elapsed = (time.monotonic() - state.started
                       if retry is not None and "max_elapsed" in retry.model_fields_set else 0.0)
            try:
                delay = None if retry is None else retry.next_delay(
                    state.attempts, value, elapsed, owner=f"{task.id}.retry")
            except SpellError as bad:  # its condition or backoff function raised
                await self._finish(state, _status_of(bad), error=bad)
                return
            # a retry whose delay would not end before the plan's deadline is not made (as
            # at a tool call): waiting it out would only hold the plan past its timeout
            if delay is None or delay >= self.deadline - time.monotonic():
                await self._finish(state, _status_of(value), error=value)
                return
            state.recovery.add(recovery_event("retry", task.script, state.attempts,
                                              value.code, delay))
            with anyio.move_on_after(delay):
                await state.wake.wait()  # type: ignore[union-attr]

    async def _try(self, state: _TaskState, args: dict[str, Any],
                   budget: float) -> tuple[bool, Any]:
        """One run of the task's script, stopped after ``budget`` seconds."""
        try:
            script = self.plan.path(state.task.script)
            run = self.executor.new_run(
                self.host, script, args, timeout=budget + CLEANUP_GRACE,
                lua_version=state.task.lua_version or self.plan.lua_version,
                source=self.sources.get(script))
        except SpellError as err:
            return False, err
        state.run, state.run_id = run, run.correlation_id
        run.task_id, run.plan_id = state.id, self.plan.name  # for its hooks and records
        if state.cancel_error is not None:
            self._stop(state, state.cancel_error)

        async def watchdog() -> None:
            await anyio.sleep(budget)
            if run.control.reason is None:
                error = AsyncExecutionError.TaskTimeout(
                    task_id=state.id, duration=round(budget, 3), task_type=run.language)
                self._stop(state, error)
                with anyio.CancelScope(shield=True):  # listeners run even if the run just ended
                    await self._cancelling("cancellation_started", state, error)

        token = _printing_task.set(state.id)
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(watchdog)
                try:
                    outcome: tuple[bool, Any] = (True, await run.execute())
                except SpellError as err:
                    outcome = (False, err)
                except anyio.get_cancelled_exc_class():
                    # the caller gave up on the whole plan: stop the script, do not wait
                    # (no task-level events: the run announces its own cancellation)
                    run.cancel(AsyncExecutionError.TaskCancelled(
                        task_id=state.id, reason="the plan was cancelled",
                        cancellation_source="caller"))
                    raise
                except Exception as exc:  # a bug must still end as a unified error
                    outcome = (False, SpellError.wrap(
                        exc, "runtime", "internal_error",
                        reason=f"running task {state.id!r}: "
                               f"{describe_exception(exc, qualified=False)}"))
                group.cancel_scope.cancel()
        finally:
            _printing_task.reset(token)
            state.run = None
            state.recovery.absorb(run.recovery, run.recovery.dropped)
            state.degraded = run.degraded
        stop = run.control.reason
        if stop is None or stop is run.failed_fast:  # a fail-fast tool's failure: no cancel
            return outcome
        if not outcome[0] and outcome[1] is not stop:
            # the script ended some other way after it was told to stop (the engine's time
            # limit in a CPU loop, a wrapped error): report the stop, keep that as its cause
            if stop.__cause__ is None and not any(e is stop for e in outcome[1].chain()):
                stop.__cause__ = outcome[1]
            outcome = (False, stop)
        await self._cleanup(state, stop)
        return outcome

    def _stop(self, state: _TaskState, error: SpellError) -> None:
        """Stop the try in progress with ``error`` (once: the first reason wins), quietly:
        the task's cancellation points are the coordinator's to fire."""
        if state.run is not None:
            state.run.cancel(error, announce=False)

    async def _cleanup(self, state: _TaskState, error: SpellError) -> None:
        """``cancellation_finished``: the cleanups (``on_cancel``) first, then the
        other listeners and the observers."""
        await self._cancelling("cancellation_finished", state, error)

    async def _cancelling(self, point: str, state: _TaskState, error: SpellError) -> None:
        hooks = self.host.hooks
        if hooks is None or not hooks.fires(point):
            return
        context = CancellationContext(None, error, state.id)
        if point == "cancellation_started":  # the try it stops, if one is running
            state.stopped_run = state.run_id if state.run is not None else None
            state.announcing = told = anyio.Event()
            try:
                await self._notify(point, state, context._replace(run_id=state.stopped_run))
            finally:
                told.set()
            return
        if state.announcing is not None:  # the stop may have ended the try already
            await state.announcing.wait()
        await self._notify(point, state, context._replace(run_id=state.stopped_run))

    async def _cancel(self, state: _TaskState, cause: str, reason: str) -> None:
        """A strategy cancels ``state`` because task ``cause`` failed."""
        if state.status is not None or state.cancel_error is not None:
            return
        error = AsyncExecutionError.TaskCancelled(
            task_id=state.id, reason=reason, cancellation_source=self.plan.strategy)
        state.cancel_error = error
        state.caused_by = [cause]
        state.wake.set()  # type: ignore[union-attr]
        self._stop(state, error)  # a running try ends at the script's next tool call
        await self._cancelling("cancellation_started", state, error)
        if state.started is None and state.status is None:  # not started: it ends now
            await self._cleanup(state, error)
            await self._finish(state, "cancelled", error=error)

    async def _finish(self, state: _TaskState, status: TaskStatus, *, result: Any = None,
                      error: SpellError | None = None) -> None:
        if state.status is not None:
            return
        if status == "succeeded":  # it ended before a cancellation could reach it
            state.caused_by = []
        self.ended += 1
        state.status, state.result, state.error = status, result, error
        state.ended, state.order = time.monotonic(), self.ended
        state.done.set()
        hooks = self.host.hooks
        if hooks is not None and hooks.fires("task_completed"):
            report = self._task_report(state)
            await self._notify("task_completed", state, TaskContext(
                state.id, state.task.script, result=copy_data(result), error=error,
                duration=report.duration, attempt=state.attempts,
                language=state.task.language or "", status=status, report=report))
        if status in ("failed", "timed_out"):
            await self._apply_strategy(state)

    async def _apply_strategy(self, failed: _TaskState) -> None:
        reason = f"task {failed.id!r} {failed.status.replace('_', ' ')}"  # type: ignore[union-attr]
        doomed: list[tuple[_TaskState, str, str]] = []
        if self.plan.strategy == "propagate":
            doomed = [(state, failed.id, reason) for state in self.states.values()
                      if state.status is None and state.cancel_error is None]
        elif self.plan.strategy == "cancel_dependents":
            # breadth first, so each cancelled task names the one it depended on
            queue = [failed.id]
            while queue:
                current = queue.pop(0)
                for child in self.dependents[current]:
                    state = self.states[child]
                    if state.status is None and state.cancel_error is None \
                            and not state.doomed:
                        state.doomed = True
                        doomed.append((state, current, f"dependency {current!r} did not "
                                                       f"succeed ({reason})"))
                        queue.append(child)
        for state, _, _ in doomed:
            state.doomed = True
        for state, cause, why in doomed:
            await self._cancel(state, cause, why)

    async def _notify(self, point: str, state: _TaskState, context: Any) -> None:
        """Fire ``point`` through the one dispatcher: its listeners on this loop (their
        errors in the task's ``callback_errors``), then its observers; nothing they do
        reaches the plan."""
        hooks = self.host.hooks
        if hooks is not None and hooks.fires(point):
            await hooks.notify(point, context, state.callback_errors.append)

    def _context(self, state: _TaskState, ok: bool | None = None, value: Any = None,
                 duration: float | None = None) -> TaskContext:
        """A try's context: as it starts (``ok`` None), or as it ended."""
        task = state.task
        context = TaskContext(task.id, task.script, attempt=state.attempts,
                              language=task.language or "")
        if ok is None:
            return context
        return context._replace(
            duration=duration, result=copy_data(value) if ok else None,
            error=None if ok else value, status="succeeded" if ok else _status_of(value))

    async def _after_failure(self, state: _TaskState, context: TaskContext
                             ) -> tuple[Any, Any]:
        """The ``after_task_failure`` controllers on a failed try (failed or timed out,
        not stopped by the coordinator): the action and what follows of it, the
        recovered result (``Recover``, checked as JSON-like data) or the task's error
        (the try's; ``Rethrow``'s, the try's as its cause; or the hook error of a
        controller that raised, ran past its budget or answered what the point does not
        take). The controllers that ran are in that error's hook path."""
        from host.hooks.layer import _checked, _rethrown, add_hook_path

        hooks = self.host.hooks
        assert hooks is not None
        err: SpellError = context.error
        records: list[dict[str, Any]] = []
        try:
            with anyio.CancelScope(shield=True):  # a decision asked for is waited for
                action, hook = await anyio.to_thread.run_sync(
                    hooks.decide, "after_task_failure", context, records,
                    anyio.lowlevel.current_token())
            if isinstance(action, Recover):
                result = copy_data(_checked(action.result, hook, "Recover"))  # its own
                state.recovered_by = hook.name if hook is not None else None
                state.recovered_from = err
                return action, result
            if isinstance(action, Rethrow):
                err = _rethrown(action, err, hook)
        except SpellError as failure:  # the controller failed: its error, the try's as cause
            if failure.__cause__ is None:
                failure.__cause__ = err
            action, err = Rethrow(failure), failure
        if records:
            add_hook_path(err, records)
        return action, err

    def _hook_delay(self, state: _TaskState, action: RetryAction) -> float | None:
        """The wait before a controller's ``Retry``, or None past its bound: the ONE
        retry's (:func:`host.hooks.layer.hook_retry`: 3 tries in all, whoever made them,
        30 s since the first began), and the plan's deadline."""
        from host.hooks.layer import hook_delay, hook_retry

        policy = hook_retry()
        delay = hook_delay(action, state.attempts)
        elapsed = time.monotonic() - (state.started or time.monotonic())
        if state.attempts >= policy.attempts or elapsed + delay > policy.max_elapsed \
                or delay >= self.deadline - time.monotonic():
            return None
        return delay

    def _input(self, dep: str) -> Any:
        """What a dependent sees of ``dep``: its result, or its error as data (isolate)."""
        state = self.states[dep]
        if state.status == "succeeded":
            return state.result
        err = state.error
        if err is None:
            return {"status": state.status}
        fields = json.loads(json.dumps(err.fields, default=str))
        return {"status": state.status, "category": err.category, "kind": err.kind,
                "message": err.message, "fields": fields}

    # -- the report -------------------------------------------------------------------

    def _task_report(self, state: _TaskState) -> TaskReport:
        duration = 0.0
        if state.started is not None:
            duration = (state.ended or time.monotonic()) - state.started
        return TaskReport(
            id=state.id, script=state.task.script, engine=state.task.language or "",
            status=state.status or "skipped", attempts=state.attempts,
            duration=round(duration, 6), result=state.result,
            error=None if state.error is None else state.error.to_dict(),
            caused_by=state.caused_by,
            callback_errors=[e.to_dict() for e in state.callback_errors],
            recovered_by=state.recovered_by,
            recovered_from=None if state.recovered_from is None
            else state.recovered_from.to_dict(),
            recovery=list(state.recovery), recovery_dropped=state.recovery.dropped,
            degraded=state.degraded)

    def report(self) -> PlanReport:
        """Classify the run (the seed's CrossEngineErrorPattern) and report every task."""
        states = list(self.states.values())
        failures = [s for s in states if s.status != "succeeded"]
        owners: dict[Any, _TaskState] = {}  # each error (object and id) -> first task it ended
        for state in sorted(failures, key=lambda s: s.order):
            if state.error is not None:
                owners.setdefault(id(state.error), state)
                owners.setdefault(state.error.context.error_id, state)
        for state in failures:
            if not state.caused_by:
                state.caused_by = self._causes(state, owners)
        roots = [s for s in failures if not s.caused_by] or failures[:1]
        propagation = [f"{cause} -> {s.id}" for s in sorted(failures, key=lambda s: s.order)
                       for cause in s.caused_by]
        report = PlanReport(
            plan=self.plan.name, strategy=self.plan.strategy, outcome="succeeded",
            duration=round(time.monotonic() - self.start, 6),
            tasks=[self._task_report(s) for s in states],
            root_causes=[s.id for s in roots] if failures else [],
            propagation=propagation, tolerance=self.plan.tolerance,
            failed_fraction=round(len(failures) / len(states), 6))
        report._errors = {s.id: s.error for s in states if s.error is not None}
        if not failures:
            return report
        if len(failures) == len(states):
            first = max(roots, key=lambda s: (s.error.severity if s.error else 0, -s.order))
            report.outcome = "all_failed"
            report.representative_task = first.id
            report.representative_error = first.error.to_dict() if first.error else None
        elif propagation:
            report.outcome = "cascading_failure"
        else:
            report.outcome = "partial_failure"
            report.decision = ("continue_with_successful"
                               if report.failed_fraction <= self.plan.tolerance
                               else "fail_entire_operation")
        return report

    def _causes(self, state: _TaskState, owners: Mapping[Any, _TaskState]) -> list[str]:
        """The tasks whose failure caused this one's: through dependencies, then through
        the error's cause chain (a shared tool raising from another task's error)."""
        causes = self._failed_ancestors(state.task)
        for err in state.error.chain() if state.error is not None else ():
            owner = owners.get(id(err)) or owners.get(err.context.error_id)
            if owner is not None and owner is not state and owner.id not in causes:
                causes.append(owner.id)
        return causes

    def _failed_ancestors(self, task: Task) -> list[str]:
        """The nearest tasks upstream of ``task`` (on every path) that did not succeed."""
        found: list[str] = []
        seen: set[str] = set()
        stack = list(reversed(task.after))
        while stack:
            dep = stack.pop()
            if dep in seen:
                continue
            seen.add(dep)
            if self.states[dep].status != "succeeded":
                found.append(dep)
            else:
                stack.extend(reversed(self.states[dep].task.after))
        return found


def _status_of(err: SpellError) -> TaskStatus:
    if err.code == "async_execution/task_timeout":
        return "timed_out"
    if err.code == "async_execution/task_cancelled":
        return "cancelled"
    return "failed"
