"""``Host``: run agent scripts with tools, sandbox and limits, from sync or async code."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import reprlib
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio

import engines
from bridge import ConfigurationError, SpellError
from bridge.frames import is_internal_file
from bridge.pytraceback import without_frames
from engines import Limits, Sandbox
from engines.specs import LUA_VERSIONS
from host.calls import Layer
from host.data import not_json_like
from host.runner import EngineFactory, ScriptRun
from host.tools import (
    ScriptTool,
    Tool,
    ToolRegistry,
    as_tool,
    check_file,
    load_tools_file,
    parse_recovery,
)

if TYPE_CHECKING:
    from engines.process import WorkerPool
    from host.config import Config
    from host.hooks import Dispatcher
    from host.libraries import Libraries, Root
    from host.recovery import Breakers, ToolRecovery
    from host.recovery.degrade import DegradationState

SANDBOXES = ("constrained", "trusted")
# Where a host's engines run: on threads of the host's process, or in worker processes
# the host can always kill (see engines.process).
ISOLATIONS = ("thread", "process")
DEFAULT_ISOLATION = "thread"  # a host's, when neither its code nor its config file says
DEFAULT_LUA_VERSION = LUA_VERSIONS[0]  # likewise: Lua 5.5
# The Lua versions that run only in worker processes, and why (measured: README).
PROCESS_ONLY = {
    "luajit": "LuaJIT runs only in process isolation (--isolation process, or "
              "isolation='process'): it has no limit on C-stack depth, so a script that "
              "recurses through string.gsub or coroutine.wrap crashes the whole process "
              "(a worker's crash fails only its run), and its count hook does not fire in "
              "JIT-compiled code (a worker is killed at the deadline)",
}
# The largest limits the engines take (bytes in a C long / size_t on 64-bit platforms,
# with room to spare): far beyond any machine, refused rather than overflowing.
MAX_MEMORY_MB = 1 << 32
MAX_STACK_KB = 1 << 32
MAX_TIMEOUT = 1e9  # seconds (about 31 years): a limit, finite for every wait and deadline


def chosen_isolation(isolation: str | WorkerPool | None, config: Config | None,
                     engine_factory: EngineFactory | None) -> str | WorkerPool:
    """Where a host's engines run: the code's ``isolation``, else (unless the code gives an
    engine factory of its own, which decides) its config file's, else
    :data:`DEFAULT_ISOLATION`. The one rule for :class:`Host` and the coordinator."""
    if isolation is not None:
        return isolation
    if engine_factory is not None:
        return "thread"
    return (config.isolation if config is not None else None) or DEFAULT_ISOLATION


class Host:
    """Runs Lua and JavaScript agent scripts that call the given Python tools.

    ``tools`` holds ``@tool`` functions, plain functions, :class:`Tool` objects, or paths
    of tools files: Python files (their ``@tool`` functions), Lua files (the functions
    of the table the chunk returns) or JavaScript files (the functions of the global
    ``exports``), which every script can call, across languages. Every run gets a fresh,
    sandboxed engine on a thread of its own, so runs never share script state and
    several runs proceed in parallel. Failures raise :class:`bridge.SpellError`.

    What scripts print is a record of the ``polyspell.script`` logger (INFO, with
    ``run_id``, ``task_id`` and ``language`` attributes), or, given ``on_output(line)``,
    that callable's, line by line.

    ``engine_factory(language, limits=..., sandbox=...)`` makes every engine the host
    uses (a run's, a tools file's, and the one that lists a tools file's functions); the
    default, :func:`engines.make_engine`, makes the built-in engines. ``layers`` wrap
    every tool call, the first outermost (see :mod:`host.calls`): ``layer(call, next)``.
    ``recovery`` maps tool names to their recovery policies (``{"search": {"retry":
    {"attempts": 4}}}``, or :class:`host.recovery.ToolRecovery` values), which win over
    what ``@tool`` set (see :mod:`host.recovery`). ``degradation`` is the host's
    degradation levels (``{"levels": [{"name": "cached", "when_open": 1}, ...]}`` or a
    :class:`host.recovery.Degradation`; see :mod:`host.recovery.degrade`), followed in
    ``host.degradation``. ``config`` is a config file's path (a ``polyspell.toml``) or a
    loaded :class:`host.config.Config`: its ``[recovery]`` defaults, ``[tools.<name>]``
    and ``[errors."<code>"]`` tables, its ``[degradation]`` levels, its ``[hooks]``
    (registered before ``hooks``: see :mod:`host.hooks.files`); ``recovery`` wins over
    it tool by tool, and ``degradation`` over its levels (the precedence:
    :mod:`host.config`). ``on_human_input(question)`` (sync or async) answers a tool's
    ``AskHuman`` with a string (see :mod:`host.steer`); without it, no one is asked.
    ``hooks`` are observers and controllers (``@hooks.observer``,
    ``@hooks.controller``: see :mod:`host.hooks`); with none, no run pays for them.
    ``on_tool_error(error, tool_name, error_type, params)`` sees every tool call that
    fails (after its controllers): True, the script gets the error as usual; False, the
    run stops with it (no ``pcall``/``catch`` can keep it going; cleanups still run).
    ``stop_on_tool_error=True`` is ``on_tool_error`` always answering False.
    ``monitor`` records every error of the host's runs (a :class:`host.monitor.Monitor`,
    the path of its SQLite file, or True for the default file; see
    :mod:`host.monitor`).

    ``isolation`` says where the engines run (default: the config file's ``isolation``,
    else ``"thread"``): ``"thread"``, in the host's process, each on a thread of its own;
    ``"process"``, each in a worker process from a pool of prewarmed workers the host
    owns (:class:`engines.process.WorkerPool`, its engine factory: so not with
    ``engine_factory``); or a ``WorkerPool`` of the caller's, which several hosts may
    share (the caller closes it). In process mode a run ends at its deadline whatever its
    script does (a long C call, a busy loop: the worker is killed), a crash of an engine
    fails only its run (``runtime/worker_died``), and an engine's memory stays in its
    worker; Python tools still run in the host. Close the host (:meth:`close`, or ``with
    Host(...) as host:``) to end the workers it owns; they end with the process in any
    case.

    ``lua_version`` is the Lua that runs Lua scripts: ``"5.5"`` (the default, else the
    config file's ``lua_version``), ``"5.4"`` or ``"luajit"`` (LuaJIT 2.1, Lua 5.1 with
    its extensions: in process isolation only, since a script can crash a LuaJIT
    process by recursing through C functions, and its count hook does not fire in
    compiled code; a worker's crash fails only its run, and the worker is killed at the
    deadline). A run may choose its own (:meth:`new_run`). The built-in engine
    factories take it; an ``engine_factory`` of the caller's makes its own engines, so
    ``lua_version`` is refused with one.

    ``libraries`` are the folders a script's ``require`` searches (see
    :mod:`host.libraries`): the script's own folder first (unless
    ``script_dir_library=False``), then these in order, then a config file's
    ``libraries``. A folder that does not exist is ``configuration/file_not_found`` here.
    """

    def __init__(
        self,
        tools: Iterable[Any] = (),
        *,
        timeout: float = 30.0,
        memory_mb: int = 256,
        stack_kb: int = 1024,
        sandbox: Sandbox = "constrained",
        on_output: Callable[[str], None] | None = None,
        engine_factory: EngineFactory | None = None,
        layers: Iterable[Layer] = (),
        recovery: Mapping[str, Any] | None = None,
        degradation: Any = None,
        config: str | os.PathLike[str] | Config | None = None,
        on_human_input: Callable[[str], Any] | None = None,
        hooks: Iterable[Any] | None = (),
        on_tool_error: Callable[..., Any] | None = None,
        stop_on_tool_error: bool = False,
        monitor: Any = None,
        libraries: Iterable[str | os.PathLike[str]] = (),
        script_dir_library: bool | None = None,
        isolation: str | WorkerPool | None = None,
        lua_version: str | None = None,
    ) -> None:
        self.pool: WorkerPool | None = None  # the worker processes, in process isolation
        self._owns_pool = False
        if config is not None:  # a bad file fails before any tools file loads
            from host.config import as_config

            config = as_config(config)
        isolation = chosen_isolation(isolation, config, engine_factory)
        shared = None
        if not isinstance(isolation, str):
            from engines.process import WorkerPool

            if isinstance(isolation, WorkerPool):  # a pool of the caller's, shared
                shared, isolation = isolation, "process"
        if isolation not in ISOLATIONS:
            raise ConfigurationError.InvalidValue(
                key="isolation", value=_preview(isolation),
                reason=f"unknown isolation {_preview(isolation)} (one of "
                       f"{', '.join(ISOLATIONS)})")
        if isolation == "process" and engine_factory is not None:
            raise ConfigurationError.InvalidValue(
                key="isolation", value="process",
                reason="give engine_factory or isolation='process', not both (process "
                       "isolation is an engine factory: the worker pool's)")
        check_positive("timeout", timeout, at_most=MAX_TIMEOUT)
        check_positive("memory_mb", memory_mb, at_least=1, at_most=MAX_MEMORY_MB)
        check_positive("stack_kb", stack_kb, at_least=1, at_most=MAX_STACK_KB)
        check_callable("on_output", on_output)
        check_callable("engine_factory", engine_factory)
        check_callable("on_human_input", on_human_input)
        self.on_human_input = on_human_input
        check_callable("on_tool_error", on_tool_error)
        if config is not None:
            if config.hooks is not None:  # its [hooks] first, then the argument's
                from host.hooks.files import with_config_hooks

                hooks = with_config_hooks(hooks, config)
        self.monitor: Any = None
        if monitor is not None and monitor is not False:  # no import of it without one
            from host.monitor import as_monitor

            self.monitor = as_monitor(monitor)
            if config is not None and config.alerts is not None:
                self.monitor.use_alerts(config)  # its file's [alerts], unless it has its own
            # a user of the one dispatcher, after the hooks given
            hooks = [*(hooks or ()), *self.monitor.hooks]
        self.hooks = _dispatcher(hooks, on_tool_error, stop_on_tool_error)
        self.libraries = _libraries(libraries, script_dir_library, config)
        self.layers: list[Layer] = list(layers)
        for layer in self.layers:
            check_callable("layers", layer)
        items = tool_items(tools)
        if sandbox not in SANDBOXES:
            raise ConfigurationError.InvalidValue(
                key="sandbox", value=str(sandbox),
                reason=f"unknown sandbox {sandbox!r} (one of {', '.join(SANDBOXES)})")
        self.limits = Limits(timeout=float(timeout), memory_mb=int(memory_mb),
                             stack_kb=int(stack_kb))
        self.sandbox: Sandbox = sandbox
        self.on_output = on_output  # None: the polyspell.script logger's records
        self.isolation: str = isolation
        if isolation == "process":
            from engines.process import WorkerPool

            if shared is None:
                shared = WorkerPool(memory_mb=self.limits.memory_mb)
                self._owns_pool = True
                # a host dropped unclosed: its workers too
                weakref.finalize(self, shared.close)
            self.pool = shared
            engine_factory = shared.make_engine
        # the built-in factories (engines.make_engine, a pool's) take the Lua version
        self._versioned: EngineFactory | None = (
            None if engine_factory is not None and self.pool is None
            else engine_factory or engines.make_engine)
        if lua_version is None and self._versioned is not None and config is not None:
            lua_version = config.lua_version  # the file's, unless the code says
        self.lua_version: str = DEFAULT_LUA_VERSION
        self.engine_factory: EngineFactory = engine_factory or engines.make_engine
        if lua_version is not None:
            self.lua_version = lua_version
            self.engine_factory = self._factory_for(lua_version)
        self.tools = ToolRegistry()
        self.config: Config | None = config
        self._breakers: Breakers | None = None
        self._caches: dict[str, Any] = {}  # tool name -> its fallback cache (host.recovery)
        try:
            for item in items:
                for loaded in _load(item, sandbox, self.engine_factory, self.libraries):
                    self.tools.add(loaded)
            self.recovery = _recovery_policies(self.tools, recovery, config)
            if degradation is None and config is not None:  # the argument wins over the file
                degradation = config.degradation
            self._degradation = _degradation_state(degradation)
        except BaseException:
            self.close()  # a host that failed to be made leaves no worker behind
            raise

    def close(self) -> None:
        """End the host's worker processes (process isolation; nothing in thread mode).

        Runs still in progress fail at once; runs started later fail with
        ``configuration/invalid_value``. Closing again does nothing.
        """
        if self.pool is not None and self._owns_pool:
            self.pool.close()

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, path: str | Path, args: Any = None) -> Any:
        """Run a script file (engine chosen by extension) and return its result."""
        __tracebackhide__ = True  # pytest shows the caller's line
        try:
            return run_blocking(functools.partial(self.arun, path, args), "Host.run",
                                "await host.arun(...)")
        except SpellError as err:  # here, so that the frames below this one go too
            raise trimmed(err)  # noqa: B904 (the same error, its own cause and context)

    async def arun(self, path: str | Path, args: Any = None) -> Any:
        """:meth:`run` for async code (asyncio or trio)."""
        __tracebackhide__ = True
        try:
            return await self.new_run(path, args).execute()
        except SpellError as err:
            raise trimmed(err)  # noqa: B904 (the same error, its own cause and context)

    def run_source(self, code: str, language: str, name: str | None = None,
                   args: Any = None) -> Any:
        """Run script source given as text; ``language`` is a language's name or alias
        (``lua``, ``javascript``/``js``: see :func:`engines.specs`)."""
        __tracebackhide__ = True
        try:
            return run_blocking(functools.partial(self.arun_source, code, language, name,
                                                  args),
                                "Host.run_source", "await host.arun_source(...)")
        except SpellError as err:
            raise trimmed(err)  # noqa: B904 (the same error, its own cause and context)

    async def arun_source(self, code: str, language: str, name: str | None = None,
                          args: Any = None) -> Any:
        """:meth:`run_source` for async code (asyncio or trio)."""
        __tracebackhide__ = True
        try:
            return await self.new_run_source(code, language, name, args).execute()
        except SpellError as err:
            raise trimmed(err)  # noqa: B904 (the same error, its own cause and context)

    def _factory_for(self, lua_version: str) -> EngineFactory:
        """The engine factory of runs in ``lua_version`` (checked: a usage error if the
        version is unknown, or if the host's engines come from a factory of the caller's)."""
        if not isinstance(lua_version, str) or lua_version not in LUA_VERSIONS:
            raise ConfigurationError.InvalidValue(
                key="lua_version", value=_preview(lua_version),
                reason=f"unknown Lua version {_preview(lua_version)} (one of "
                       f"{', '.join(LUA_VERSIONS)})")
        base = self._versioned
        if base is None:
            raise ConfigurationError.InvalidValue(
                key="lua_version", value=lua_version,
                reason="the host's engines come from its engine_factory, which chooses "
                       "their Lua: give it the version")
        if lua_version in PROCESS_ONLY and self.pool is None:
            raise ConfigurationError.InvalidValue(
                key="lua_version", value=lua_version, reason=PROCESS_ONLY[lua_version])
        if lua_version == DEFAULT_LUA_VERSION:
            return base
        return functools.partial(base, lua_version=lua_version)

    def new_run(self, path: str | Path, args: Any = None, *,
                timeout: float | None = None, lua_version: str | None = None,
                source: ScriptSource | None = None) -> ScriptRun:
        """A run of a script file, prepared but not started: ``await run.execute()``.

        For code that needs the run itself, e.g. to ``run.cancel(error)`` it from another
        task. ``timeout`` replaces the host's for this run, ``lua_version`` its Lua.
        ``source``: the file as :func:`read_sources` read it already (a plan reads each
        script once), else the file is read now.
        """
        code, language, roots = (ScriptSource(*read_script(path)) if source is None
                                 else source)
        run = self.new_run_source(code, language, str(path), args,
                                  timeout=timeout, lua_version=lua_version)
        run.library_roots = self.libraries.roots_for(path) if roots is None else list(roots)
        return run

    def new_run_source(self, code: str, language: str, name: str | None = None,
                       args: Any = None, *, timeout: float | None = None,
                       lua_version: str | None = None) -> ScriptRun:
        """:meth:`new_run` for script source given as text."""
        canonical = engines.language_of(language) if isinstance(language, str) else None
        if canonical is None:
            specs = engines.specs()
            aliases = [repr(alias) for spec in specs for alias in spec.aliases]
            raise ConfigurationError.InvalidValue(
                key="language", value=str(language),
                reason=f"the language must be {engines.spoken(repr(s.name) for s in specs)}"
                       + (f" (or {engines.spoken(aliases)})" if aliases else ""))
        if not isinstance(code, str):
            raise ConfigurationError.InvalidValue(key="code", value=type(code).__name__,
                                                  reason="script source must be a string")
        if name is not None and not isinstance(name, str):
            raise ConfigurationError.InvalidValue(
                key="name", value=_preview(name),
                reason=f"a script's name is a string, not {type(name).__name__}")
        check_json_like(args, "args")
        limits = self.limits
        if timeout is not None:
            check_positive("timeout", timeout, at_most=MAX_TIMEOUT)
            limits = dataclasses.replace(limits, timeout=float(timeout))
        factory = self.engine_factory
        if lua_version is not None and lua_version != self.lua_version:
            factory = self._factory_for(lua_version)
        return ScriptRun(
            source=code, language=canonical, filename=name or f"<{canonical}>",
            args=args, tools=self.tools, limits=limits, sandbox=self.sandbox,
            on_output=self.on_output, engine_factory=factory, layers=self.layers,
            recovery=self.recovery,
            breakers=self.breakers if self.recovery or self._degradation else None,
            caches=self._caches, degradation=self._degradation,
            on_human_input=self.on_human_input, hooks=self.hooks,
            libraries=self.libraries, library_roots=self.libraries.roots_for(None))

    @property
    def breakers(self) -> Breakers:
        """The circuit breakers of this host's tools, shared by all its runs: each one's
        state and counts (``host.breakers.snapshot()``), ``reset(name)``,
        ``force_open(name)`` (see :mod:`host.recovery.breaker`)."""
        if self._breakers is None:
            from host.recovery import Breakers

            breakers = Breakers()
            for name, policy in self.recovery.items():  # so that each can be forced open
                if policy.breaker is not None:       # or reset before its first call
                    breakers.breaker(name, policy.breaker)
            self.breakers = breakers
        return self._breakers  # type: ignore[return-value]

    @breakers.setter
    def breakers(self, value: Breakers) -> None:
        self._breakers = value
        hooks = self.hooks
        if hooks is not None and hooks.has("circuit_changed"):
            value.add_listener(hooks.circuit_changed)
        if self._degradation is not None:  # the levels follow these breakers
            self._degradation.follow(value)

    @property
    def degradation(self) -> DegradationState | None:
        """Where the host stands among its degradation levels (None: it has none):
        ``.level``, ``.history``, ``.on_change(fn)`` (see :mod:`host.recovery.degrade`)."""
        return self._degradation


def _libraries(given: Iterable[str | os.PathLike[str]], script_dir: bool | None,
               config: Config | None) -> Libraries:
    """The host's library roots: ``given``, then the config file's (relative to it); the
    script's folder first unless ``script_dir`` (else the config's key) says not."""
    from host.libraries import Libraries

    if script_dir is None:
        script_dir = config.script_dir_library if config is not None else None
    libraries = Libraries(given, script_dir=True if script_dir is None else script_dir)
    if config is not None and config.libraries:
        libraries = libraries.with_roots(config.library_roots())
    return libraries


def _dispatcher(hooks: Any, on_tool_error: Callable[..., Any] | None,
                stop_on_tool_error: Any) -> Dispatcher | None:
    """The host's hooks (None: it has none, and no run pays for them)."""
    if not isinstance(stop_on_tool_error, bool):
        raise ConfigurationError.InvalidValue(
            key="stop_on_tool_error", value=_preview(stop_on_tool_error),
            reason="stop_on_tool_error is True or False")
    if stop_on_tool_error:
        if on_tool_error is not None:
            raise ConfigurationError.InvalidValue(
                key="stop_on_tool_error", value="True",
                reason="give on_tool_error or stop_on_tool_error=True, not both")
        on_tool_error = _stop_on_tool_error
    if hooks is None:
        hooks = ()
    if on_tool_error is None and isinstance(hooks, (tuple, list)) and not hooks:
        return None
    from host.hooks import Dispatcher

    dispatcher = Dispatcher(hooks, on_tool_error)
    return dispatcher if dispatcher.hooks or on_tool_error is not None else None


def _stop_on_tool_error(error: Any, tool_name: str, error_type: str, params: Any) -> bool:
    """``stop_on_tool_error=True``: every failed tool call stops the run with its error."""
    return False


_stop_on_tool_error.__qualname__ = "stop_on_tool_error"  # its name in hook paths


def _load(item: Any, sandbox: Sandbox, engine_factory: EngineFactory,
          libraries: Libraries) -> list[Tool | ScriptTool]:
    if isinstance(item, (str, Path)):
        from host.libraries import answer

        roots = libraries.roots_for(item)  # a tools file's modules: its folder, then these
        return load_tools_file(item, sandbox, engine_factory=engine_factory,
                               modules=lambda request: answer(libraries, request, roots))
    if isinstance(item, ScriptTool):  # already listed, e.g. by another host
        return [item]
    return [as_tool(item)]


def _degradation_state(given: Any) -> DegradationState | None:
    """The state of the levels ``given`` (a Degradation, a mapping of its fields, None)."""
    if given is None:
        return None
    from host.recovery.degrade import Degradation, DegradationState

    if isinstance(given, Degradation):
        return DegradationState(given)
    if not isinstance(given, Mapping):
        raise ConfigurationError.InvalidValue(
            key="degradation", value=_preview(given),
            reason="degradation is a table of levels: {levels = [{name = ..., when_open = "
                   "...}, ...]}")
    return DegradationState(Degradation(**{str(key): value for key, value in given.items()}))


def _recovery_policies(tools: ToolRegistry, given: Mapping[str, Any] | None,
                       config: Config | None = None) -> dict[str, ToolRecovery]:
    """Each tool's recovery policies: its own (``@tool``), the config file's, and the
    host's (``given``) in their place (the precedence: :mod:`host.config`)."""
    if given is not None and not isinstance(given, Mapping):
        raise ConfigurationError.InvalidValue(
            key="recovery", value=_preview(given),
            reason="recovery maps tool names to their policies")
    if config is None and not given:  # the tools' own: no pydantic imported for none
        policies = {item.name: item.recovery for item in tools
                    if getattr(item, "recovery", None) is not None}
        _check_health_checks(tools, policies)
        _check_fallbacks(tools, policies)
        return policies
    from host.config import Config

    parsed = {}
    if given:
        from host.recovery import ToolRecovery

        for name, data in given.items():
            if not isinstance(name, str) or tools.get(name) is None:
                raise ConfigurationError.InvalidValue(
                    key="recovery", value=_preview(name),
                    reason=f"recovery names a tool that does not exist: {name!r}")
            parsed[name] = parse_recovery(name, data, ToolRecovery)
    policies = (config or Config()).policies(tools, parsed)
    _check_health_checks(tools, policies)
    # a [recovery] default restart applies to the tools files' functions only
    default_restart = config.recovery.restart if (
        config is not None and config.recovery is not None) else None
    for name, policy in policies.items():
        if policy.restart is not None and not (
                policy.restart is default_restart and isinstance(tools.get(name), Tool)):
            from host.recovery.restart import check_restart

            check_restart(name, tools.get(name), policy.restart)
    _check_fallbacks(tools, policies)
    return policies


def _check_fallbacks(tools: ToolRegistry, policies: Mapping[str, ToolRecovery]) -> None:
    """A fallback names a tool of the host, and never leads back to the tool it protects,
    directly or through other tools' fallbacks (a → b → a would call itself until the run
    ran out of time or stack): refused, naming the loop. Checked whatever set the policy
    (``@tool`` alone too)."""
    graph = {name: policy.fallback.tools() for name, policy in policies.items()
             if policy.fallback is not None}
    for name, others in graph.items():
        for other in others:
            if tools.get(other) is None or other == name:
                why = "is the tool it protects" if other == name else "does not exist"
                raise ConfigurationError.InvalidValue(
                    key=f"{name}.fallback", value=other,
                    reason=f"{name}.fallback names a tool that {why}: {other!r}")
    done: set[str] = set()  # tools from which no loop is reachable
    for start in graph:  # depth first, each tool once (linear in the options)
        if start in done:
            continue
        path, stack = [start], [iter(graph[start])]
        while stack:
            other = next(stack[-1], None)
            if other is None:
                done.add(path.pop())
                stack.pop()
            elif other in path:  # back to a tool on the way here: a loop
                loop = [*path[path.index(other):], other]
                raise ConfigurationError.InvalidValue(
                    key=f"{other}.fallback", value=loop[1],
                    reason=f"{other}.fallback loops back to {other!r} through other "
                           f"tools' fallbacks: {' -> '.join(loop)}")
            elif other not in done and other in graph:
                path.append(other)
                stack.append(iter(graph[other]))


def _check_health_checks(tools: ToolRegistry, policies: Mapping[str, ToolRecovery]) -> None:
    """A breaker's ``health_check`` names a Python tool of the host: it is called outside
    any run, where a tools file's function cannot run."""
    for name, policy in policies.items():
        check = policy.breaker.health_check if policy.breaker is not None else None
        if check is not None and not isinstance(tools.get(check), Tool):
            why = ("does not exist" if tools.get(check) is None else
                   "is not a Python tool (a health check is called outside any run, where "
                   "a tools file's function cannot run)")
            raise ConfigurationError.InvalidValue(
                key=f"{name}.breaker.health_check", value=check,
                reason=f"{name}.breaker.health_check names a tool that {why}: {check!r}")


def read_script(path: str | os.PathLike[str]) -> tuple[str, str]:
    """A script file's source and language (by its extension), as a run of it takes
    them; a path that is not one, or of no known language, is
    ``configuration/invalid_value``, a file that cannot be read ``load_failed``."""
    if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
        raise ConfigurationError.InvalidValue(
            key="script", value=_preview(path),
            reason=f"a script is the path of a file (str or Path), not "
            f"{type(path).__name__}")
    path = Path(path)
    language = engines.language_for_path(path)
    if language is None:
        known = ", ".join(sorted(engines.EXTENSIONS))
        raise ConfigurationError.InvalidValue(
            key="script", value=str(path),
            reason=f"cannot tell the language of {path.name!r} (known extensions: {known})")
    from host.libraries import decode_source

    check_file(path)
    try:
        return decode_source(path.read_bytes(), str(path)), language
    except OSError as exc:
        raise ConfigurationError.LoadFailed(path=str(path), reason=exc.strerror or str(exc)) \
            from None


class ScriptSource(NamedTuple):
    """A script file as a run takes it: its source and language (:func:`read_script`)
    and, when known, the library roots a run of it searches (``Libraries.roots_for``)."""

    code: str
    language: str
    roots: list[Root] | None = None


def read_sources(paths: Iterable[Path], libraries: Libraries | None = None,
                 ) -> dict[Path, ScriptSource]:
    """Each path that reads, read (a plan's scripts, once per plan, on a worker thread:
    the reading, and finding the real folder of its library root, touch the file system);
    a path that does not is left out, for its run to read, and fail, itself."""
    sources = {}
    for path in paths:
        try:
            code, language = read_script(path)
        except SpellError:
            continue
        sources[path] = ScriptSource(code, language, None if libraries is None
                                     else libraries.roots_for(path))
    return sources


def check_json_like(value: Any, path: str) -> None:
    """Refuse data that cannot enter a script, naming where it is."""
    unfit = not_json_like(value, path)
    if unfit is not None:
        if unfit.too_deep:
            reason = f"{unfit.path} {unfit.why}"
        else:
            reason = (f"{unfit.path} is not JSON-like data (null, booleans, finite numbers, "
                      f"strings, lists, string-keyed objects)")
        raise ConfigurationError.InvalidValue(key=unfit.path, value=_preview(unfit.piece),
                                              reason=reason)


def _preview(piece: Any) -> str:
    """``repr(piece)`` cut to 200 characters; lists and mappings only a few levels deep."""
    if isinstance(piece, (Mapping, list, tuple)):
        return reprlib.repr(piece)[:200]
    return repr(piece)[:200]


def check_positive(name: str, value: Any, *, at_least: float | None = None,
                   at_most: float | None = None) -> None:
    """Refuse a limit or count that is not a finite positive number, or is out of
    ``[at_least, at_most]`` (``configuration/invalid_value``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        reason = f"{name} must be a positive number"
    elif isinstance(value, float) and not math.isfinite(value):
        reason = f"{name} must be a finite number"
    elif at_least is not None and value < at_least:
        reason = f"{name} must be at least {at_least}"
    elif at_most is not None and value > at_most:
        reason = f"{name} must be at most {at_most}"
    else:
        return
    raise ConfigurationError.InvalidValue(key=name, value=_preview(value), reason=reason)


def check_callable(name: str, value: Any) -> None:
    """Refuse a callback that is neither ``None`` nor callable."""
    if value is not None and not callable(value):
        raise ConfigurationError.InvalidValue(
            key=name, value=_preview(value),
            reason=f"{name} must be a function (or None), not {type(value).__name__}")


def tool_items(tools: Any) -> list[Any]:
    """``tools`` as a list: a collection of tools, never one path or a non-iterable."""
    if isinstance(tools, (str, bytes, os.PathLike)):
        raise ConfigurationError.InvalidValue(
            key="tools", value=_preview(tools),
            reason="tools is a list of tools and tools files: put this path in a list")
    try:
        return list(tools)
    except TypeError:
        raise ConfigurationError.InvalidValue(
            key="tools", value=_preview(tools),
            reason=f"tools is a list of tools and tools files, not "
            f"{type(tools).__name__}") from None


def run_blocking(fn: Callable[[], Awaitable[Any]], what: str, instead: str) -> Any:
    """``fn`` run to its end on an event loop of its own (what the blocking methods do).

    Called where an event loop already runs (a coroutine, a Jupyter cell), it would have
    failed with anyio's raw ``RuntimeError``: ``configuration/usage`` says what to await."""
    import sniffio

    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        library = None
    if library is None:  # (outside the except: the run's errors keep their own context)
        return anyio.run(fn)
    raise ConfigurationError.Usage(
        reason=f"{what} blocks, and was called inside a running {library} event loop: "
               f"use `{instead}` there", command=what)


def trimmed(err: SpellError) -> SpellError:
    """``err`` with polyspell's own plumbing (its modules, and the machinery they run on:
    :func:`bridge.frames.is_internal_file`) left out of its Python traceback, which keeps
    the caller's frames and the script's; all of it with ``POLYSPELL_DEBUG=1``."""
    if os.environ.get("POLYSPELL_DEBUG"):
        return err
    seen: set[int] = set()
    exc: BaseException | None = err
    while exc is not None and id(exc) not in seen and len(seen) < 100:  # and its causes
        seen.add(id(exc))
        exc.__traceback__ = without_frames(exc.__traceback__, is_internal_file)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return err
