"""Tries on a Ray cluster: the coordinator's plan, run by polyspell hosts in Ray actors.

The coordinator stays where it is (strategies, retries, timeouts, classification, report,
task listeners: all on the driver). Each try of a task runs in a Ray actor that keeps a
polyspell host (and its engines) for the plan, built from the same :class:`HostRecipe`
as the driver's host; an actor per CPU of the cluster, each try on the least busy one.

What travels. The script, by content (read by the driver, run under its own file name, so
frames are the same as a local run's); ``@tool`` functions, recovery policies and the
config, by Ray's own serialisation (cloudpickle); tools files and the files of library
roots by content (:func:`shipped_files`): a worker whose node lacks one writes the
driver's copy at the same path (so frames name what they name on the driver); one whose
content is not the driver's is ``configuration/load_failed`` naming it, before any task
runs. Observers of runs and tool calls (a monitor among them) see the workers' events on
the driver: each worker forwards the contexts of the points the driver observes, as data,
through the try's stream, to the driver's one dispatcher. Controllers of those points (and
``on_human_input``) would decide on a worker: a plan with any is refused before anything
runs; task hooks and listeners run on the driver as always.

What comes back. A try's result (JSON-like data), or its unified error whole, as
:meth:`SpellError.to_dict` writes it (class, fields, frames, cause chain, and the context
of where it was made: the worker's host name and pid), read back with ``from_dict`` (the
JSON Ray's history advises, never a pickled exception); the lines the script printed,
streamed as they come (a Ray generator), in order, with the task's prefix; its recovery
history. Ray's own failures (a worker or node that died, an actor that died, an object
lost, Ray's out-of-memory killer) are ``runtime/remote_failed`` with the Ray error as
cause: retryable, by the task's own ``retry`` (Ray's ``max_retries`` and actors'
``max_restarts`` stay 0: one retry layer). Stopping a try (a timeout, a strategy's
cancel) asks its actor to cancel the run, which delivers the error to the script at its
next tool call, so its ``on_cancel``/``signal`` cleanup runs on the worker.

Network: a local Ray started here binds the loopback address (``127.0.0.1``): no traffic
leaves the machine. ``ray_address`` (``"auto"``, ``"host:port"``) joins a running cluster;
one that does not answer within :data:`CONNECT_TIMEOUT` is ``network/connection``.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import os
import socket
import stat
import tempfile
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from bridge import (
    AsyncExecutionError,
    ConfigurationError,
    NetworkError,
    ResourceError,
    SpellError,
    SpellRuntimeError,
)
from bridge.jsontext import unicode_text
from host.control import RunControl
from host.executors import Executor, TaskRun
from host.history import RecoveryHistory
from host.lines import log_script_line

if TYPE_CHECKING:
    from host.coordinator import Coordinator
    from host.host import Host, ScriptSource
    from host.plan import Plan

MIN_RAY = (2, 40)  # the oldest Ray the executor is tested against (generators, actors)
CONNECT_TIMEOUT = 5.0  # seconds to reach a cluster's address before giving up
READY_TIMEOUT = 120.0  # seconds for a plan's actors to be up (their hosts made)
# the points whose hooks run where the tries run; the others are the driver's
DRIVER_POINTS = frozenset({"task_started", "task_finished", "task_completed",
                           "after_task_failure", "cancellation_started",
                           "cancellation_finished"})


def _ray() -> Any:
    """The ray module, or a clear ``configuration`` error saying what to install."""
    try:
        import ray
    except ImportError:
        raise ConfigurationError.Missing(
            key="ray (the ray executor needs Ray: pip install 'polyspell[ray]')") from None
    version = tuple(int(part) for part in ray.__version__.split(".")[:2] if part.isdigit())
    if version < MIN_RAY:
        raise ConfigurationError.InvalidValue(
            key="executor", value="ray",
            reason=f"Ray {ray.__version__} is too old for the ray executor (it needs "
                   f"{'.'.join(map(str, MIN_RAY))} or newer)")
    return ray


@dataclass
class HostRecipe:
    """What a host is made of, as the coordinator made its own: what a remote worker
    needs to make an equal one. Tools are ``@tool`` objects or tools files' paths."""

    tools: list[Any]
    memory_mb: int
    stack_kb: int
    sandbox: str
    recovery: Mapping[str, Any] | None = None
    config: Any = None
    libraries: list[str] = field(default_factory=list)
    script_dir_library: bool | None = None
    files: dict[str, str] = field(default_factory=dict)  # path -> sha256 of its content
    contents: dict[str, bytes] = field(default_factory=dict)  # sha256 -> the driver's bytes
    # the points of runs and tool calls the driver observes -> whether it wants successes
    observed: dict[str, bool] = field(default_factory=dict)
    # where the worker's engines run: as the coordinator's ("process": a script that broke
    # out of its engine is in a confined process, not in the Ray worker)
    isolation: str = "thread"
    lua_version: str | None = None  # the host's Lua (None: the default, or the config's)

    def build(self, on_output: Callable[[str], None],
              on_event: Callable[[str, Any, bool], None] | None = None) -> Host:
        """The host, here (on a worker): every file checked against the driver's first.
        ``on_event(point, context, failed)`` gets what the observed points see."""
        for path, digest in self.files.items():
            _same_file_here(path, digest, self.contents.get(digest))
        from host.hooks import observer
        from host.host import Host

        hooks = []
        if on_event is not None:
            for point, successes in self.observed.items():
                def forward(ctx: Any, point: str = point, successes: bool = successes) -> None:
                    on_event(point, ctx, not successes or _failed(ctx))

                hooks.append(observer(point, failures_only=not successes,
                                      name=f"ray.forward.{point}")(forward))
        config = self.config
        if config is not None and getattr(config, "hooks", None):  # the driver runs them
            config = config.model_copy(update={"hooks": None})
        return Host(self.tools, memory_mb=self.memory_mb, stack_kb=self.stack_kb,
                    sandbox=self.sandbox, on_output=on_output, recovery=self.recovery,
                    config=config, libraries=self.libraries, hooks=hooks,
                    script_dir_library=self.script_dir_library, isolation=self.isolation,
                    lua_version=self.lua_version)


def _failed(context: Any) -> bool:
    """Whether an observed event tells of a failure (or of something recovery answered)."""
    return (getattr(context, "error", None) is not None
            or getattr(context, "recovered_from", None) is not None)


def context_data(value: Any) -> Any:
    """A hook's context as data that crosses a process: named tuples by their class
    name, errors by ``to_dict`` (see :func:`context_from_data`)."""
    if isinstance(value, SpellError):
        return {"$error": value.to_dict()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return {"$context": type(value).__name__, "fields": [context_data(v) for v in value]}
    if isinstance(value, dict):
        return {"$dict": [[key, context_data(item)] for key, item in value.items()]}
    if isinstance(value, (list, tuple)):
        return [context_data(item) for item in value]
    return value


def context_from_data(data: Any) -> Any:
    """The context :func:`context_data` wrote; only the hook points' own classes."""
    from host.hooks import points

    if isinstance(data, dict):
        if "$error" in data:
            return SpellError.from_dict(data["$error"])
        if "$dict" in data:
            return {key: context_from_data(item) for key, item in data["$dict"]}
        name = data.get("$context")
        kind = getattr(points, name, None) if isinstance(name, str) else None
        if kind is None or not (isinstance(kind, type) and issubclass(kind, tuple)):
            raise ValueError(f"not a hook context: {name!r}")
        return kind(*(context_from_data(item) for item in data["fields"]))
    if isinstance(data, list):
        return [context_from_data(item) for item in data]
    return data


MAX_SHIPPED = 64 * 2**20  # bytes of tools files and libraries a plan's workers receive


def shipped_files(paths: Iterable[str]) -> tuple[dict[str, str], dict[str, bytes]]:
    """What travels of tools files and library folders: each file's sha256 by path (each
    file under each folder), and each content once by its sha256. More than
    :data:`MAX_SHIPPED` bytes is ``configuration/invalid_value`` before anything runs."""
    digests: dict[str, str] = {}
    contents: dict[str, bytes] = {}
    size = 0

    def add(path: str, in_folder: bool) -> None:
        nonlocal size
        content = _read(path, MAX_SHIPPED - size, in_folder)
        if content is None:  # not a regular file: no library module (a FIFO, a socket...)
            return
        if len(content) > MAX_SHIPPED - size:
            raise ConfigurationError.InvalidValue(
                key="libraries", value=path[:200],
                reason=f"tools files and libraries travel to Ray workers by content, "
                       f"{MAX_SHIPPED // 2**20} MiB at most; give the plan smaller "
                       "library folders")
        digest = hashlib.sha256(content).hexdigest()
        digests[path] = digest
        if digest not in contents:
            size += len(content)
            contents[digest] = content

    for path in paths:
        if os.path.isdir(path):
            for folder, _, names in os.walk(path):
                for name in sorted(names):
                    add(os.path.join(folder, name), True)
        else:
            add(path, False)
    return digests, contents


def _read(path: str, most: int | None = None, skip_other: bool = False) -> bytes | None:
    """The bytes of the regular file at ``path``; with ``most``, no more than ``most + 1``
    of them (what is past the limit is not read). Anything else (a FIFO, a device, a
    socket: opened without blocking, never read) is None with ``skip_other``, else
    ``configuration/load_failed``, as a file that cannot be opened is."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(descriptor, "rb") as file:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                if skip_other:
                    return None
                raise OSError(0, "not a regular file")
            return file.read() if most is None else file.read(max(most, 0) + 1)
    except OSError as exc:
        raise ConfigurationError.LoadFailed(path=path, reason=exc.strerror or str(exc)) \
            from None


def _same_file_here(path: str, digest: str, content: bytes | None) -> None:
    """Make sure ``path`` holds the driver's file on this node: a missing file is written
    from the driver's ``content`` (at the same path, so frames and tracebacks name what
    they name on the driver); a file there with other content is never overwritten."""
    if not os.path.lexists(path) and content is not None:
        _write_new(path, content)
    try:
        same = hashlib.sha256(_read(path) or b"").hexdigest() == digest
    except SpellError as exc:
        raise ConfigurationError.LoadFailed(
            path=path, reason=f"missing on this Ray worker's node, and it could not be "
                              f"written there ({exc.fields.get('reason', exc)})") from None
    if not same:
        raise ConfigurationError.LoadFailed(
            path=path, reason="its content on this Ray worker is not the driver's (a file "
                              "there is used as it is, never overwritten: give the node the "
                              "driver's file, or none)")


def _write_new(path: str, content: bytes) -> None:
    """``content`` at ``path``, only if nothing is there (two workers of one node may
    write it at once: each writes its own temporary file, then links it into place)."""
    folder = os.path.dirname(path) or "."
    try:
        os.makedirs(folder, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=".polyspell-")
    except OSError:
        return  # (then reading it fails, and says the file is missing)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(content)
        os.link(temporary, path)
    except OSError:
        pass  # another worker's copy is there now, or none can be: reading it tells
    finally:
        os.unlink(temporary)


# -- the actor (on a Ray worker) -------------------------------------------------------------

_output_to: contextvars.ContextVar[Callable[[str], None] | None] = \
    contextvars.ContextVar("polyspell_remote_output", default=None)


ENDED_KEPT = 4096  # tries an actor remembers as ended (a stop may come after its try)
BATCH = 1000  # the most lines and events one item of a try's stream carries
BATCH_CHARS = 4 * 2**20  # and the most characters of lines (a Ray object each, in memory)


def _queued(items: asyncio.Queue[Any], chars: int = 0) -> list[Any]:
    """What ``items`` holds now, taken out of it: :data:`BATCH` items at most, and no
    more once their lines hold :data:`BATCH_CHARS` characters (``chars`` already)."""
    batch = []
    while len(batch) < BATCH and chars < BATCH_CHARS and not items.empty():
        item = items.get_nowait()
        if item[0] == "out":
            chars += len(item[1])
        batch.append(item)
    return batch


def _batch(first: Any, items: asyncio.Queue[Any]) -> tuple[str, list[Any]]:
    """``first`` and what is queued after it (see :func:`_queued`), as one stream item."""
    return ("batch", [first, *_queued(items, len(first[1]) if first[0] == "out" else 0)])


class TryRunner:
    """A polyspell host on a Ray worker: runs tries and streams back what they print and
    how they ended (made a Ray actor by :class:`RayExecutor`)."""

    def __init__(self, recipe: HostRecipe) -> None:
        self._host = recipe.build(self._print, self._event)
        self._runs: dict[str, Any] = {}
        self._streams: dict[str, Callable[[Any], None]] = {}  # a run's id -> its stream
        self._stops: dict[str, SpellError] = {}  # stops that came before their run
        # the last ENDED_KEPT tries that ended, oldest first (an OrderedDict: forgetting
        # the oldest is O(1), where a dict's first key is found past every one removed)
        self._ended: OrderedDict[str, None] = OrderedDict()

    @staticmethod
    def _print(line: str) -> None:
        send = _output_to.get()
        if send is not None:
            send(line)

    def _event(self, point: str, context: Any, failed: bool) -> None:
        """An observed point's event (on the host's observers' thread): to its run's
        stream; one of no run of this worker's (a breaker's change) is dropped."""
        send = self._streams.get(getattr(context, "run_id", None) or "")
        if send is not None:
            send(("event", point, context_data(context), failed))

    def ready(self) -> str:
        """The Ray node this worker runs on (and that it is up): its id."""
        import ray

        return str(ray.get_runtime_context().get_node_id())

    async def run(self, key: str, script: str, source: str, language: str, args: Any,
                  timeout: float, lua_version: str | None, task_id: str | None,
                  plan_id: str | None) -> Any:
        """Run one try; yields ``("batch", [("out", line) | ("event", ...), ...])`` items
        (what was queued when the stream was read: each item of a Ray generator is a
        round trip of its own), then ``("done", outcome)``."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[Any] = asyncio.Queue()

        def send(item: Any) -> None:
            loop.call_soon_threadsafe(items.put_nowait, item)

        _output_to.set(lambda line: send(("out", line)))
        try:
            run = self._host.new_run_source(source, language, script, args, timeout=timeout,
                                            lua_version=lua_version)
        except SpellError as err:
            yield ("done", {"ok": False, "error": err.to_dict()})
            return
        run.library_roots = self._host.libraries.roots_for(script)
        run.task_id, run.plan_id = task_id, plan_id
        self._runs[key] = run
        self._streams[run.correlation_id] = send
        early = self._stops.pop(key, None)
        if early is not None:
            run.cancel(early, announce=False)
        ending = asyncio.ensure_future(self._outcome(run))
        try:
            while True:
                item = asyncio.ensure_future(items.get())
                done, _ = await asyncio.wait({ending, item},
                                             return_when=asyncio.FIRST_COMPLETED)
                if item not in done:
                    item.cancel()
                    break
                yield _batch(item.result(), items)
            hooks = self._host.hooks
            if hooks is not None:  # the observers have told the run's last events
                await asyncio.to_thread(hooks.catch_up)
                await asyncio.sleep(0)  # (their sends land in the queue)
            while not items.empty():
                yield ("batch", _queued(items))
            yield ("done", ending.result())
        finally:
            if not ending.done():  # the stream was cancelled (ray.cancel): so is the run,
                # whose cleanup (on_cancel, signal) runs here; the stop the driver sends
                # after it (its own reason) would find no run
                run.cancel(self._stops.pop(key, None) or AsyncExecutionError.TaskCancelled(
                    task_id=task_id or key, reason="its Ray task was cancelled",
                    cancellation_source="caller"), announce=False)
            self._runs.pop(key, None)
            self._streams.pop(run.correlation_id, None)
            self._stops.pop(key, None)
            self._ended[key] = None  # a stop sent as it ended is not kept for ever
            if len(self._ended) > ENDED_KEPT:
                self._ended.popitem(last=False)

    @staticmethod
    async def _outcome(run: Any) -> dict[str, Any]:
        try:
            value = await run.execute()
            outcome: dict[str, Any] = {"ok": True, "value": value}
        except SpellError as err:
            stop = run.control.reason
            outcome = {"ok": False, "error": err.to_dict(), "is_stop": err is stop,
                       "failed_fast": stop is not None and stop is run.failed_fast}
        outcome.update(recovery=list(run.recovery), dropped=run.recovery.dropped,
                       degraded=run.degraded)
        return outcome

    def stop(self, key: str, error: dict[str, Any]) -> None:
        """Stop the try ``key`` with ``error`` (delivered at its next tool call)."""
        if key in self._ended:
            return
        reason = SpellError.from_dict(error)
        run = self._runs.get(key)
        if run is None:
            self._stops[key] = reason
        else:
            run.cancel(reason, announce=False)


# -- the driver's side ----------------------------------------------------------------------


class RayExecutor(Executor):
    """Runs tries on a Ray cluster (see the module). ``address``: None starts a local Ray
    on the loopback address (or uses the one this process already joined); ``"auto"`` or
    ``"host:port"`` joins a running cluster."""

    name = "ray"

    def __init__(self, address: str | None = None) -> None:
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ConfigurationError.InvalidValue(
                key="ray_address", value=repr(address)[:200],
                reason="a Ray address is 'auto' or 'host:port'")
        if address is not None:
            _host_port(address)  # a malformed one is refused here, before anything runs
        self.address = address
        self._ray: Any = None
        self._started = False  # whether this executor started the local Ray it uses
        self._keeper: threading.Event | None = None  # set: the local Ray's thread may end
        self._plans = 0  # plans running on the actors (made for one host, the last's)
        self._actors: list[Any] = []
        self._busy: list[int] = []
        self._recipe_key: Any = None
        self._recipe: HostRecipe | None = None
        self._actor_class: Any = None
        self._lock = threading.Lock()
        self.nodes: list[str] = []  # the Ray node id of each actor, in their order

    # -- set-up -----------------------------------------------------------------

    def connect(self) -> Any:
        """Join (or start) the cluster once; the ray module."""
        if self._ray is not None:
            return self._ray
        ray = _ray()
        # Ray's progress bars would replace builtins.print in this process (its
        # tqdm_ray.safe_print): not a library's to change in its user's program
        os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")
        if self.address is not None:
            _reachable(self.address)
            if self.address.startswith("ray://") and _client_missing(ray):
                raise ConfigurationError.Missing(
                    key=f"ray[client] (a ray:// address, {self.address[:200]}, needs Ray "
                        "Client: pip install 'ray[client]')")
        _utf8_entrypoint(ray)
        if not ray.is_initialized():  # else: the cluster this process joined already
            if self.address is None:
                loopback_only(ray)
                self._keeper = _start_local_ray(ray)
                self._started = True
            else:
                parts = _host_port(self.address)
                if parts is not None and _is_loopback(parts[0]):
                    loopback_only(ray)  # else Ray rewrites it to the outward address
                try:
                    ray.init(address=self.address, configure_logging=False,
                             log_to_driver=False)
                except (ConnectionError, RuntimeError, ValueError,
                        ray.exceptions.RayError) as exc:  # (a cluster's token refused)
                    raise NetworkError.Connection(endpoint=self.address,
                                                  reason=str(exc)[:500]) from exc
        self._ray = ray
        return ray

    def prepare(self, coordinator: Coordinator, plan: Plan, host: Host) -> None:
        """Refuse what cannot travel, then make the actors for the plan's host (see the
        module)."""
        hooks = host.hooks
        if hooks is not None:
            deciding = sorted(point for point, registered in hooks.by_point.items()
                              if point not in DRIVER_POINTS
                              and any(hook.kind != "observer" for hook in registered))
            if deciding or hooks.on_tool_error is not None:
                raise ConfigurationError.InvalidValue(
                    key="hooks", value=", ".join(deciding or ["on_tool_error"]),
                    reason="controllers of runs and tool calls would decide on the Ray "
                           "workers, away from this process: the ray executor takes "
                           "observers (they see the workers' events here), task hooks "
                           "and listeners")
        if host.on_human_input is not None:
            raise ConfigurationError.InvalidValue(
                key="on_human_input", value=repr(host.on_human_input)[:200],
                reason="a tool's question to a human cannot reach this process from a "
                       "Ray worker")
        ray = self.connect()
        key = (id(coordinator), tuple(plan.tools), tuple(plan.libraries), plan.base_dir)
        with self._lock:
            if key == self._recipe_key and self._actors:  # the same host: its actors
                self._plans += 1
                return
            if self._plans:  # the actors are another host's, and a plan runs on them
                raise ResourceError.PoolExhausted(
                    pool="this RayExecutor's workers (made for another plan's host, whose "
                         "plan is running: run the plans one after the other, or each "
                         "coordinator with its own cluster)", capacity=len(self._actors))
            self._plans = 1  # this plan's, from now (a second one waits for none)
        try:
            self._make_actors(ray, coordinator, plan, key, hooks)
        except BaseException:
            with self._lock:
                self._plans = 0
            raise

    def _make_actors(self, ray: Any, coordinator: Coordinator, plan: Plan, key: Any,
                     hooks: Any) -> None:
        """End the actors of the last plan's host; make those of ``plan``'s."""
        recipe = coordinator.recipe(plan)
        if hooks is not None:
            recipe.observed = {point: hooks.wants_successes(point)
                               for point, registered in hooks.by_point.items()
                               if registered and point not in DRIVER_POINTS}
        self._end_actors()
        if self._actor_class is None:
            # one retry layer, polyspell's: Ray's stays off. No CPU held for the actor's
            # life (num_cpus=0), so plans of several drivers share a cluster instead of
            # waiting for each other's idle actors; SPREAD for a replacement.
            self._actor_class = ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0,
                                           scheduling_strategy="SPREAD")(TryRunner)
        try:
            actors = [self._actor_class.options(scheduling_strategy=place).remote(recipe)
                      for place in _placements(ray)]
        except Exception as exc:  # cloudpickle refused something in it
            raise ConfigurationError.InvalidValue(
                key="tools", value=type(exc).__name__,
                reason=f"the plan's host cannot travel to the Ray workers (its tools, "
                       f"recovery policies and config go by Ray's serialisation): "
                       f"{str(exc).splitlines()[0][:300] if str(exc) else exc!r}") from exc
        # the actors that came up (one pinned to a node that went away meanwhile did not)
        answers = [a.ready.remote() for a in actors]
        ray.wait(answers, num_returns=len(answers), timeout=READY_TIMEOUT)
        up, nodes, failure = [], [], None
        for actor, answer in zip(actors, answers, strict=True):
            try:
                nodes.append(ray.get(answer, timeout=0))
                up.append(actor)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
                failure = failure or exc
                ray.kill(actor)
        if not up:
            assert failure is not None
            raise _actor_failure(failure)
        self.nodes = nodes
        self._actors, self._busy = up, [0] * len(up)
        self._recipe_key, self._recipe = key, recipe

    def new_run(self, host: Host, script: Path, args: Any, *, timeout: float,
                lua_version: str | None = None, source: ScriptSource | None = None,
                ) -> TaskRun:
        from host.host import read_script

        # here: the script travels by content (read once per plan, when the plan gives it)
        code, language = read_script(script) if source is None else source[:2]
        return RemoteRun(self, host, str(script), code, language, args, timeout,
                         lua_version)

    def finish(self, host: Host) -> None:
        """A plan :meth:`prepare` let run has ended: another host's may replace its
        actors."""
        with self._lock:
            self._plans = max(0, self._plans - 1)

    def close(self) -> None:
        self._end_actors()
        self._plans = 0
        if self._started and self._ray is not None:
            self._ray.shutdown()
        if self._keeper is not None:  # its thread may end now: Ray's processes are gone
            self._keeper.set()
        self._ray, self._started, self._keeper = None, False, None

    def _end_actors(self) -> None:
        for actor in self._actors:
            try:
                self._ray.kill(actor)
            except Exception:  # an actor already gone
                pass
        self._actors, self._busy, self.nodes, self._recipe_key = [], [], [], None

    def _replace(self, dead: Any) -> None:
        """Drop ``dead`` (its worker or node died); a new actor takes its place, on a node
        that is alive."""
        with self._lock:
            if dead not in self._actors:
                return
            index = self._actors.index(dead)
            del self._actors[index], self._busy[index], self.nodes[index]
            if self._recipe is not None \
                    and any(node.get("Alive") for node in self._ray.nodes()):
                self._actors.append(self._actor_class.remote(self._recipe))
                self._busy.append(0)
                self.nodes.append("")  # not known until it answers
            if not self._actors:  # every node gone: the next plan makes them anew
                self._recipe_key = None

    def _take(self) -> tuple[Any, str]:
        """The least busy actor, counted busy one more time, and its node."""
        with self._lock:
            if not self._actors:
                raise SpellRuntimeError.RemoteFailed(
                    executor="ray", reason="no Ray worker is left to run the task")
            index = min(range(len(self._busy)), key=self._busy.__getitem__)
            self._busy[index] += 1
            return self._actors[index], self.nodes[index]

    def _give_back(self, actor: Any) -> None:
        with self._lock:
            if actor in self._actors:
                self._busy[self._actors.index(actor)] -= 1


def loopback_only(ray: Any) -> None:
    """Make the Ray this process starts (its nodes, and their workers) use the loopback
    address, not the machine's own interface: nothing it sends leaves the machine.

    Ray takes a node's address from the interface that routes outward unless clusters
    are switched off for the platform (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: then
    ``127.0.0.1``); set here for this process (read at call time) and for the processes
    Ray starts (which inherit the environment)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray._private.ray_constants.ENABLE_RAY_CLUSTER = False


def _is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback address."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _client_missing(ray: Any) -> bool:
    """Whether Ray Client (``ray[client]``, which ``ray://`` addresses need) is missing."""
    check = getattr(ray._private.utils, "get_ray_client_dependency_error", None)
    return check is not None and check() is not None


def _utf8_entrypoint(ray: Any) -> None:
    """Make the name Ray gives this driver's job (its command line, read from
    ``/proc``) text UTF-8 can encode: Ray sends it as UTF-8, and a file name that is not
    UTF-8 on the command line (surrogate escapes) made ``ray.init`` fail. Once per
    process; only the job's displayed name changes (U+FFFD for each such byte)."""
    utils = ray._private.utils
    original = getattr(utils, "get_entrypoint_name", None)
    if original is None or getattr(original, "polyspell_utf8", False):
        return

    def entrypoint_name() -> str:
        return unicode_text(original())

    entrypoint_name.polyspell_utf8 = True  # type: ignore[attr-defined]
    utils.get_entrypoint_name = entrypoint_name


def _start_local_ray(ray: Any) -> threading.Event:
    """Start a local Ray (on the loopback address) from a thread of its own, which lives
    until the returned event is set (:meth:`RayExecutor.close`, after ``ray.shutdown``).

    Ray's processes are started with Linux's parent-death signal, which fires when the
    *thread* that started them ends, not the process: a local Ray started by a plan run
    from a short-lived thread (a web server's request) would die with it, and Ray then
    ends the whole process when it cannot reach its GCS."""
    done = threading.Event()
    keep = threading.Event()
    failure: list[BaseException] = []

    def keeper() -> None:
        loggers = [logging.getLogger(name) for name in _NOTICES]
        for ray_logger in loggers:
            ray_logger.addFilter(_notice)
        try:  # "local": a new Ray, whatever Ray's discovery finds (RAY_ADDRESS, a cluster
            # someone started on this machine with `ray start`)
            ray.init(address="local", num_cpus=os.cpu_count() or 1,
                     _node_ip_address="127.0.0.1", include_dashboard=False,
                     configure_logging=False, log_to_driver=False)
        except BaseException as exc:  # handed to the thread that asked
            failure.append(exc)
            done.set()
            return
        finally:
            for ray_logger in loggers:
                ray_logger.removeFilter(_notice)
        done.set()
        keep.wait()

    threading.Thread(target=keeper, name="polyspell-local-ray", daemon=True).start()
    done.wait()
    if failure:
        exc = failure[0]
        if isinstance(exc, SpellError) or not isinstance(exc, Exception):
            raise exc
        raise SpellRuntimeError.RemoteFailed(
            executor="ray", reason=f"a local Ray did not start: {type(exc).__name__}: "
                                   f"{str(exc)[:300]}", cause=exc)
    return keep


# What Ray tells of a local Ray it starts that is polyspell's choice, not the user's: it
# leaves SIGTERM alone off the main thread (as a library should), and protects the cluster
# with a token (~/.ray/auth_token), Ray's default, kept
_NOTICES = {
    "ray._private.worker": "SIGTERM handler is not set",
    "ray._private.authentication.authentication_token_setup":
        "Token authentication is enabled for this Ray cluster",
}


def _notice(record: logging.LogRecord) -> bool:
    """A logging filter: one of :data:`_NOTICES`, left out."""
    return not str(record.msg).startswith(_NOTICES.get(record.name, "\0"))


def _reachable(address: str) -> None:
    """An explicit ``host:port`` that does not answer: ``network/connection`` at once."""
    parts = _host_port(address)
    if parts is None:
        return
    try:
        with socket.create_connection(parts, timeout=CONNECT_TIMEOUT) as sock:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("0", "false", ""):
                problem = _not_grpc(sock)
            else:
                problem = None  # a TLS handshake comes first: Ray's own time-outs apply
    except OSError as exc:
        raise NetworkError.Connection(endpoint=address, reason=exc.strerror or str(exc)) \
            from None
    if problem is not None:
        # ray.init would wait for a GCS there for minutes
        raise NetworkError.Connection(endpoint=address, reason=problem)


# An HTTP/2 client's first words (RFC 9113, 3.4) and an empty SETTINGS frame
_HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _not_grpc(sock: socket.socket) -> str | None:
    """Why the server on ``sock`` is not a Ray cluster's GCS (a gRPC server), or None.

    A gRPC server answers an HTTP/2 client's preface with a SETTINGS frame of its own at
    once; a server of another kind answers something else, or nothing."""
    what = "it accepted a connection but did not answer as a Ray cluster (a GCS) "
    try:
        sock.sendall(_HTTP2_HELLO)
        header = b""
        while len(header) < 9:
            chunk = sock.recv(9 - len(header))
            if not chunk:
                return what + "(it closed the connection)"
            header += chunk
    except TimeoutError:
        return what + f"within {CONNECT_TIMEOUT:g} s"
    except OSError as exc:
        return what + f"({exc.strerror or exc})"
    if header[3] != 4 or int.from_bytes(header[5:9], "big") & 0x7FFFFFFF != 0:
        return what + "(it does not speak gRPC)"
    return None


def _host_port(address: str) -> tuple[str, int] | None:
    """The host and port of ``address`` as Ray reads it (``host:port``, an IPv6 host in
    brackets: ``[::1]:6379``); None for ``"auto"`` and client URLs (``ray://``), which
    Ray resolves itself. Anything else (no port, a port out of 1-65535 or not in ASCII
    digits, an IPv6 host without brackets) is ``configuration/invalid_value``."""
    if address == "auto" or address.startswith(("ray://", "anyscale://")):
        return None
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ok = ":" in host
    else:
        ok = ":" not in host  # an IPv6 host needs its brackets: where would its port be?
    number = int(port) if port.isascii() and port.isdigit() and len(port) <= 5 else 0
    if not (ok and host and 1 <= number <= 65535):
        raise ConfigurationError.InvalidValue(
            key="ray_address", value=address[:200],
            reason=f"{address[:200]!r} is not a Ray address: 'auto', 'host:port' or "
                   "'[IPv6]:port', the port a number from 1 to 65535")
    return host, number


def _placements(ray: Any) -> list[Any]:
    """Where a plan's actors go: as many on each live node as it has CPUs (at least one
    actor in all), each pinned to its node (one whose node goes away before it is up is
    left out). SPREAD, or a soft affinity, balances only best-effort: both actors of a
    two-node cluster were seen on one node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    places = [NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
              for node in ray.nodes() if node.get("Alive")
              for _ in range(int(node.get("Resources", {}).get("CPU", 0)))]
    return places or ["SPREAD"]


def _actor_failure(exc: BaseException, node: str = "") -> SpellError:
    """A Ray failure as ``runtime/remote_failed`` (retryable), the Ray error its cause; an
    error the worker's host raised while it was made is that error."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, SpellError):
        return cause
    return SpellRuntimeError.RemoteFailed(
        executor="ray", reason=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        if str(exc) else type(exc).__name__, node=node, cause=exc)


class RemoteRun:
    """One try on a Ray actor, driven like a :class:`host.runner.ScriptRun`."""

    def __init__(self, executor: RayExecutor, host: Host, script: str, source: str,
                 language: str, args: Any, timeout: float,
                 lua_version: str | None = None) -> None:
        self._executor, self._host = executor, host
        self._request = (script, source, language, args, timeout, lua_version)
        self.correlation_id = uuid.uuid4().hex
        self.language = language
        self.task_id: str | None = None
        self.plan_id: str | None = None
        self.control = RunControl()
        self.failed_fast: SpellError | None = None
        self.recovery = RecoveryHistory()
        self._degraded: list[str] = []
        self._actor: Any = None

    @property
    def degraded(self) -> list[str]:
        """The tools that answered degraded in this try (as ``ScriptRun.degraded``)."""
        return list(self._degraded)

    def cancel(self, error: SpellError, *, announce: bool = True) -> None:
        """Stop the try with ``error``: its actor delivers it at the next tool call."""
        if not self.control.request_stop(error):
            return
        if self._actor is not None:
            self._actor.stop.remote(self.correlation_id, error.to_dict())

    async def execute(self) -> Any:
        """Run the try on the least busy actor; its result, or raise its error."""
        executor = self._executor
        ray = executor._ray
        actor, node = executor._take()
        self._actor = actor
        try:
            stream = actor.run.options(num_returns="streaming").remote(
                self.correlation_id, *self._request, self.task_id, self.plan_id)
            if self.control.reason is not None:  # stopped before it was sent
                actor.stop.remote(self.correlation_id, self.control.reason.to_dict())
            outcome = None
            try:
                while True:
                    item = await anyio.to_thread.run_sync(_next_item, ray, stream,
                                                          abandon_on_cancel=True)
                    if item is None:
                        break
                    if item[0] == "done":
                        outcome = item[1]
                        continue
                    for kind, *data in item[1]:
                        if kind == "out":
                            if self._host.on_output is not None:
                                self._host.on_output(data[0])
                            else:
                                log_script_line(data[0], self.correlation_id, self.task_id,
                                                self.language)
                        else:
                            self._observe(*data)
            except anyio.get_cancelled_exc_class():
                ray.cancel(stream, force=False)
                raise
            except ray.exceptions.RayError as exc:
                if isinstance(exc, ray.exceptions.RayActorError):  # dead: another in its place
                    executor._replace(actor)
                raise _actor_failure(exc, node)  # noqa: B904 - its cause is set: the Ray error
        finally:
            executor._give_back(actor)
        if outcome is None:
            raise _actor_failure(RuntimeError("the Ray worker ended the try without an answer"))
        return self._ended(outcome)

    def _observe(self, point: str, data: Any, failed: bool) -> None:
        """A worker's event, to this host's observers of ``point`` (the one dispatcher)."""
        hooks = self._host.hooks
        if hooks is not None:
            hooks.observe(point, context_from_data(data), failed=failed)

    def _ended(self, outcome: dict[str, Any]) -> Any:
        self.recovery.absorb(outcome.get("recovery", []), outcome.get("dropped", 0))
        self._degraded = list(outcome.get("degraded", []))
        if outcome["ok"]:
            return outcome["value"]
        error = SpellError.from_dict(outcome["error"])
        stop = self.control.reason
        if outcome.get("is_stop") and stop is not None:  # the stop it was given, delivered
            stop.frames = error.frames
            raise stop
        if outcome.get("failed_fast"):
            self.failed_fast = error
            self.control.request_stop(error)
        raise error


def _next_item(ray: Any, stream: Any) -> Any:
    """The next item of a Ray generator (blocking), or None at its end."""
    try:
        ref = next(stream)
    except StopIteration:
        return None
    return ray.get(ref)
