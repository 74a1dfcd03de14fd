"""Engines in worker processes the host can always kill (process isolation).

:class:`ProcessEngine` is an :class:`engines.base.Engine` whose steps run in a worker
process (:mod:`engines.worker`): each step's request goes over a socket as one frame
(:mod:`engines.wire`), the worker runs it in a real engine and sends the step back. The
runner drives it like any engine (httpx: one transport interface, several transports).
:class:`WorkerPool` keeps prewarmed workers and is the engine factory of a host in
process mode (``Host(isolation="process")``).

What the worker cannot do to the host:

- make it wait: every read has the step's deadline plus :data:`KILL_GRACE`; past it the
  worker is killed (SIGKILL) and the step fails with ``script/resource_exhaustion``
  (time), whatever the script is doing (a long C call in Lua, a JS loop, a hang);
- run code in it: what it sends is JSON, checked field by field
  (:func:`engines.wire.step_from_wire`), errors rebuilt by ``SpellError.from_dict``;
- grow its memory: a message longer than the engine's memory limit is refused before it
  is read; garbage, a truncated message, a bad step: the worker is killed and the step
  fails with ``bridge/protocol_violation``;
- crash it: a worker that dies (a signal, an exit, the kernel's OOM killer) fails its
  step with ``runtime/worker_died`` saying how, and the pool starts another.

Workers never outlive the host: :meth:`WorkerPool.close`, interpreter exit (atexit), and
a host killed with SIGKILL (each worker asks for SIGKILL when its parent dies, and exits
at EOF on its socket).
"""

from __future__ import annotations

import atexit
import math
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import Future
from typing import Any

import engines
from bridge import BridgeError, ConfigurationError, ScriptError, SpellError
from bridge.data import fits_as_json
from bridge.hierarchy import SpellRuntimeError
from engines import wire
from engines.base import (
    Engine,
    Failed,
    Limits,
    Sandbox,
    Step,
    Suspended,
    ToolInfo,
    ToolReply,
    did_not_fit,
    protocol_violation,
)

# Seconds past a step's deadline the host waits for the worker's answer before it kills
# the worker: time for the engine to report its own time limit, with the script line it
# stopped at (Lua looks at the clock every 20 ms or so; quickjs at its interrupt).
KILL_GRACE = 0.5
# Runs a worker serves before it is replaced (a long-lived interpreter's heap only grows).
RECYCLE_AFTER = 100
# Seconds to wait for a worker being started by the pool's spawner thread.
SPAWN_TIMEOUT = 30.0
# Workers of one memory limit a pool keeps, busy or idle, per core it was sized for: past
# it a new engine waits for a worker to come back rather than starting one (200 runs at
# once share 16 workers on 2 cores, not 200 processes of 30 MB each) ...
WORKERS_PER_CORE = 8
# ... for at most this long: an engine a run needs while it holds another (a tools file
# in another language) must not wait for workers that wait for it, so past this wait one
# more worker is started anyway (sooner for a run with less time than that)
WAIT_FOR_WORKER = 5.0
# Seconds a worker may wait idle before the pool ends it (WorkerPool's idle_timeout) ...
IDLE_TIMEOUT = 60.0
# ... and seconds an ended idle worker has to exit on its own (it reads EOF) before SIGKILL
RETIRE_GRACE = 1.0
# Seconds close() waits for the spawner to end a worker it was starting (milliseconds
# usually; at most an idle worker's retirement, or a kill and reap)
CLOSE_WAIT = 5.0
_MB = 1 << 20
# flags as plain ints (the socket module's are enums: or-ing them costs microseconds)
_NO_WAIT = int(socket.MSG_DONTWAIT)
_SEND = _NO_WAIT | int(getattr(socket, "MSG_NOSIGNAL", 0))  # a dead worker: EPIPE, no signal
_PEEK = _NO_WAIT | int(socket.MSG_PEEK)
_POLLIN, _POLLOUT = select.POLLIN, select.POLLOUT
_HEADER_SIZE = wire.HEADER.size
_unpack = wire.HEADER.unpack_from
_LONGEST_POLL_MS = 86_400_000  # one day: a timeout may be up to host.host.MAX_TIMEOUT (1e9 s)


class _Late(Exception):
    """The deadline (and its grace) passed before the worker answered; ``received`` bytes
    of its answer had come (0: none)."""

    received = 0


class _Ended(Exception):
    """The worker's end closed; ``received`` bytes of a frame had come (0: none)."""

    def __init__(self, received: int) -> None:
        super().__init__(received)
        self.received = received


class Worker:
    """One worker process and the host's end of its socket (used by one thread at a time,
    except :meth:`kill`, which any thread may call)."""

    def __init__(self, process: subprocess.Popen[bytes], sock: socket.socket,
                 memory_mb: int) -> None:
        self.process = process
        self.pid = process.pid
        self.sock = sock
        self.memory_mb = memory_mb
        self.runs = 0  # proxies served
        self.ready = False  # its ready frame has been read
        self.address_space_kb = 0  # as it reported when ready
        self.walls: list[str] = []  # what confines it (engines.confine), as it reported
        self.idle_since = 0.0  # time.monotonic() when it last became idle
        self._pending = bytearray()  # bytes received past the last frame
        self._poller = select.poll()
        self._poller.register(sock, _POLLIN)
        self._events = _POLLIN  # what the poller waits for

    @property
    def alive(self) -> bool:
        """Whether the process has not ended (as far as the host has seen)."""
        return self.process.poll() is None

    def send(self, data: bytes, deadline: float) -> None:
        """One frame to the worker, by ``deadline`` (:class:`_Late`, :class:`_Ended`).

        The socket stays in blocking mode; each call says not to wait (MSG_DONTWAIT),
        and the waiting is a poll with the deadline: a small message is one system call.
        """
        try:
            sent = self.sock.send(data, _SEND)
            if sent == len(data):
                return
            view = memoryview(data)[sent:]
            while view:
                try:
                    view = view[self.sock.send(view, _SEND):]
                except BlockingIOError:
                    self._wait(_POLLOUT, deadline)
        except BlockingIOError:  # the very first write found the buffer full
            self._wait(_POLLOUT, deadline)
            self.send(data, deadline)
        except OSError:  # EPIPE, ECONNRESET, a closed socket: it is gone
            raise _Ended(0) from None

    def _wait(self, events: int, deadline: float) -> None:
        """Until the socket is ready for ``events`` (:class:`_Late` past ``deadline``)."""
        poller = self._poller
        if events != self._events:
            poller.modify(self.sock, events)
            self._events = events
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Late()
            # poll takes a C int of milliseconds (24 days): a longer wait is several polls
            if poller.poll(min(math.ceil(remaining * 1000), _LONGEST_POLL_MS)):
                return

    def receive(self, deadline: float, limit: int) -> Any:
        """The worker's next message (its ready frame first read and checked), by
        ``deadline``; at most ``limit`` bytes (:class:`wire.WireError` past it)."""
        if not self.ready:
            hello = self._message(deadline, limit)
            if (type(hello) is not list or len(hello) != 4 or hello[:2] != ["R", self.pid]
                    or type(hello[2]) is not int or type(hello[3]) is not list):
                raise wire.WireError("the worker's first message is not its ready frame")
            self.ready, self.address_space_kb = True, hello[2]
            self.walls = [str(wall) for wall in hello[3][:8]]  # what confines it
        return self._message(deadline, limit)

    def _message(self, deadline: float, limit: int) -> Any:
        if not self._pending:  # the usual case: one read brings one whole small frame
            chunk = self._read(deadline, 0)
            if len(chunk) > _HEADER_SIZE:
                size = _unpack(chunk)[0]
                if size + _HEADER_SIZE == len(chunk) and size <= limit:
                    return wire.message(chunk[_HEADER_SIZE:], limit)
            self._pending += chunk
        (size,) = _unpack(self._exactly(_HEADER_SIZE, deadline, 0))
        if size > limit:
            raise wire.WireError(f"the worker sent a message of {size} bytes, more than "
                                 f"the engine's memory limit ({limit} bytes)")
        return wire.message(self._exactly(size, deadline, _HEADER_SIZE), limit)

    def _read(self, deadline: float, before: int, size: int = 1 << 16) -> bytes:
        """What the worker has sent, once it has sent something; :class:`_Ended` at EOF
        (``before``: the bytes of the frame read so far)."""
        while True:
            try:
                self._wait(_POLLIN, deadline)
            except _Late as late:
                late.received = before
                raise
            try:
                chunk = self.sock.recv(size, _NO_WAIT)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                raise _Ended(before)
            return chunk

    def _exactly(self, size: int, deadline: float, before: int) -> bytearray:
        buffer = self._pending
        while len(buffer) < size:
            buffer += self._read(deadline, before + len(buffer),
                                 min(max(size - len(buffer), 1 << 16), 1 << 20))
        if len(buffer) == size:
            self._pending = bytearray()
            return buffer
        data = buffer[:size]
        del buffer[:size]
        return data

    def quiet(self) -> bool:
        """Whether the worker has said nothing it was not asked for: no bytes past its last
        answer, none waiting on the socket, no EOF (a worker not yet read has only its
        ready frame to say). An idle worker that talks (an answer queued for a step not
        yet asked, a closed end) is not fit to serve: what it queued would answer the
        next run's first step."""
        if not self.ready:
            return True
        if self._pending:
            return False
        try:
            self.sock.recv(1, _PEEK)
        except BlockingIOError:
            return True
        except OSError:  # reset, or a closed socket
            return False
        return False  # a byte, or EOF

    def kill(self) -> None:
        """SIGKILL the process (any thread; nothing if it has already been reaped)."""
        try:
            self.process.kill()
        except OSError:
            pass

    def end(self) -> None:
        """Kill the process, reap it and close the socket (the owning thread)."""
        self.kill()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # unkillable (stopped in the kernel): left
            pass
        self.sock.close()

    def retire(self, deadline: float) -> None:
        """End an idle worker cleanly: its socket closed, it reads EOF and exits; SIGKILL if
        it is still there at ``deadline``; reaped either way (the owning thread)."""
        self.sock.close()
        try:
            self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:  # unkillable (stopped in the kernel): left
                pass

    def death(self) -> SpellError:
        """``runtime/worker_died`` saying how the process ended (reaped here)."""
        self.kill()  # an end of the socket closed, yet alive: it ends now
        try:
            status = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            status = None
        self.sock.close()
        return died(self.pid, status)


def died(pid: int, status: int | None) -> SpellError:
    """``runtime/worker_died`` for a process that ended with ``status`` (Popen's: a
    negative number is the signal that killed it)."""
    if status is None:
        return SpellRuntimeError.WorkerDied(reason=f"worker {pid} stopped answering",
                                            pid=pid)
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        why = " (out of memory?)" if name == "SIGKILL" else ""
        return SpellRuntimeError.WorkerDied(reason=f"worker {pid} was killed by {name}{why}",
                                            signal=name, pid=pid)
    from engines.worker import EXIT_OUT_OF_MEMORY

    why = " (out of memory)" if status == EXIT_OUT_OF_MEMORY else ""
    return SpellRuntimeError.WorkerDied(
        reason=f"worker {pid} exited with status {status}{why}", exit_status=status, pid=pid)


class ProcessEngine(Engine):
    """An engine running in a worker process, driven through the socket.

    One subclass per language (:func:`proxy_class`) carries that language's spec, so the
    runner reads ``engine.language`` and ``engine.spec`` as for the real engine. Made by
    :meth:`WorkerPool.make_engine`, which hands it a worker; :meth:`close` gives the
    worker back (or ends it, if it is not healthy).
    """

    def __init__(self, pool: WorkerPool, worker: Worker, *, limits: Limits = engines.DEFAULT_LIMITS,
                 sandbox: Sandbox = "constrained", lua_version: str | None = None) -> None:
        super().__init__(limits=limits, sandbox=sandbox)
        self._pool = pool
        self._worker: Worker | None = worker
        self._lock = threading.Lock()  # close() against stop() from another thread
        self._usable = True  # as the worker last said
        self._busy = False  # a request is out and its answer not read: not reusable
        self._stopped = False  # stop() killed the worker
        # the code of what made the host kill the worker (a step after it is refused);
        # a limit the engine reports itself leaves the worker to answer as the engine does
        self._ended: str | None = None
        self._limit = min(limits.memory_mb * _MB, wire.MAX_FRAME)
        self._open = wire.frame(["open", wire.spec_to_wire(self.spec), limits.timeout,
                                 limits.memory_mb, limits.stack_kb, sandbox, lua_version])

    # -- the steps ------------------------------------------------------------------

    def start(self, source: str, filename: str, args: Any, tools: list[ToolInfo],
              deadline: float) -> Step:
        """See :meth:`Engine.start`: run in the worker (args that would not fit as JSON
        text writes them fail here: see :meth:`resume`)."""
        if args is not None and not fits_as_json(args, self.limits.memory_mb * _MB):
            return self._unfit("the run's arguments")
        return self._step(["start", source, filename, args, wire.tools_to_wire(tools),
                           deadline], deadline)

    def load(self, source: str, filename: str, tools: list[ToolInfo], deadline: float) -> Step:
        """See :meth:`Engine.load`: run in the worker."""
        return self._step(["load", source, filename, wire.tools_to_wire(tools), deadline],
                          deadline)

    def call(self, function: str, params: Any, deadline: float) -> Step:
        """See :meth:`Engine.call`: run in the worker."""
        return self._step(["call", function, params, deadline], deadline)

    def resume(self, replies: list[ToolReply], deadline: float) -> Step:
        """See :meth:`Engine.resume`: run in the worker.

        A tool's error whose data cannot fit in the engine's memory, held in many places,
        fails here as it would there: JSON text would write it out place by place
        (:func:`bridge.data.fits_as_json`)."""
        for reply in replies:
            if reply.error is not None and not fits_as_json(reply.error,
                                                            self.limits.memory_mb * _MB):
                return self._unfit("the tool's error")
        return self._step(["resume", wire.replies_to_wire(replies), deadline], deadline)

    def _unfit(self, what: str) -> Failed:
        return Failed(did_not_fit(self.language, what, self.limits.memory_mb))

    def _step(self, message: list[Any], deadline: float) -> Step:
        worker = self._worker
        if self._stopped:
            return self._out_of_time()
        if worker is None:
            return Failed(protocol_violation("a step of a closed engine"))
        if self._ended is not None:  # the worker was killed: it answers nothing more
            return Failed(protocol_violation(
                f"a step of an engine whose worker was ended ({self._ended})"))
        try:
            data = wire.frame(message)
        except (TypeError, ValueError) as exc:  # the host's own data: not JSON-like
            return Failed(protocol_violation(f"a step the worker cannot be sent: {exc}"))
        ends = deadline + KILL_GRACE
        self._busy = True
        try:
            if self._open:  # the proxy's first step: the worker makes the engine first
                data, self._open = self._open + data, b""
            worker.send(data, ends)
            step, usable = wire.step_from_wire(worker.receive(ends, self._limit))
        except _Late as late:
            received = late.received
            if received and not self._stopped:  # it began its answer, then fell silent
                return self._broken(Failed(BridgeError.ProtocolViolation(
                    reason=f"worker {worker.pid}: its message was cut off after {received} "
                           f"bytes, and nothing more came by the step's deadline and its "
                           f"grace")))
            return self._broken(self._out_of_time())
        except _Ended as ended:
            if self._stopped:
                return self._broken(self._out_of_time())
            error = worker.death()
            if self._pool.closed:  # the host was closed under the run: not a crash
                error = SpellRuntimeError.WorkerDied(
                    reason=f"worker {worker.pid} was ended: its host was closed",
                    signal=error.fields["signal"], exit_status=error.fields["exit_status"],
                    pid=worker.pid)
            if ended.received:
                error = BridgeError.ProtocolViolation(
                    reason=f"the worker's message was cut off after {ended.received} bytes "
                           f"({error.fields['reason']})", cause=error)
            return self._broken(Failed(error))
        except Exception as bad:  # WireError, a SpellError from_dict raised, or anything
            if self._stopped:     # else the worker's data made the checks trip over
                return self._broken(self._out_of_time())
            reason = (bad.message if isinstance(bad, SpellError) else str(bad)
                      if isinstance(bad, wire.WireError) else
                      f"its step could not be read ({type(bad).__name__}: {str(bad)[:200]})")
            cause = bad if isinstance(bad, SpellError) else None
            return self._broken(Failed(BridgeError.ProtocolViolation(
                reason=f"worker {worker.pid}: {reason}", cause=cause)))
        if step.__class__ is Suspended and time.monotonic() >= deadline:
            # an engine stops at its deadline (it looks at the clock as it runs, and at
            # every resume): a request sent past it would have its tool run after the
            # run's time, in the grace the host gives for the engine's own time error
            # (up to the runner's DEADLINE_GRACE); the worker is ended instead
            return self._broken(self._out_of_time())
        self._busy = False
        self._usable = usable
        return step

    def _out_of_time(self) -> Failed:
        return Failed(ScriptError.ResourceExhaustion(
            language=self.language, resource_type="time", limit=self.limits.timeout))

    def _broken(self, step: Failed) -> Failed:
        """The worker is not to be trusted again: it is killed, the engine unusable."""
        self._usable = False
        self._ended = step.error.code
        worker = self._worker
        if worker is not None:
            worker.kill()
        return step

    # -- state ----------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Whether the engine can still run code (see :attr:`Engine.usable`)."""
        return self._usable and not self._stopped and self._worker is not None

    @property
    def walls(self) -> list[str]:
        """What confines the worker (:func:`engines.confine.confine`), as it said when it
        was ready (empty before its first step, and once the engine is closed)."""
        worker = self._worker
        return [] if worker is None else list(worker.walls)

    @property
    def pid(self) -> int | None:
        """The worker process's id (None once the engine is closed)."""
        worker = self._worker
        return None if worker is None else worker.pid

    def stop(self) -> bool:
        """Kill the worker (any thread): the step in progress, or the next one, fails
        with the time limit at once."""
        with self._lock:
            self._stopped = True
            worker = self._worker
            if worker is not None:
                worker.kill()
        return True

    def close(self) -> None:
        """Give the worker back to the pool, or end it if it is not fit to serve again."""
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is None:
            return
        healthy = self._usable and not self._stopped and not self._busy
        self._pool.give_back(worker, healthy, opened=not self._open)


_PROXIES: dict[str, type[ProcessEngine]] = {}


def proxy_class(language: str) -> type[ProcessEngine]:
    """The :class:`ProcessEngine` subclass of a registered language (made once)."""
    spec = engines.spec_of(language)
    if spec is None or spec.name != language:
        raise KeyError(language)
    cls = _PROXIES.get(language)
    if cls is None or cls.spec != spec:
        cls = _PROXIES[language] = type(
            f"Process{spec.name.title()}Engine", (ProcessEngine,),
            {"spec": spec, "__module__": __name__,
             "__doc__": f"A {spec.display_name} engine in a worker process."})
    return cls


class WorkerPool:
    """Prewarmed worker processes, and the engine factory that hands them out.

    ``size`` workers (default: the cores this process may use) are started at once, in
    the background, for engines of ``memory_mb``; an engine of another memory limit gets
    a worker started for it. :meth:`make_engine` is an engine factory
    (``Host(engine_factory=pool.make_engine)``, which ``Host(isolation="process")`` does):
    each engine takes an idle worker, or one started then if none is idle (so more runs
    at once than ``size`` still run at once, the extra ones paying a worker's start), and
    its ``close()`` gives the worker back. As many workers of each memory limit are kept
    idle as were ever busy at once (at least ``size``, at most :attr:`max_workers`): a
    host that runs ten scripts at once keeps ten workers, rather than ending and starting
    workers at each run (a worker costs about 30 MB while idle; all end with the pool).
    Past ``max_workers`` busy at once, a new engine waits for a worker to come back (at
    most :data:`WAIT_FOR_WORKER`, then one more is started: see there); at most
    ``max_workers`` are kept idle over every memory limit together. One ended after a limit,
    a crash, a kill, or :data:`RECYCLE_AFTER` engines is replaced in the background
    while fewer are idle.

    The pool shrinks when it is not used: a worker idle for ``idle_timeout`` seconds
    (default :data:`IDLE_TIMEOUT`; None: never) is ended (its socket closed, SIGKILL if it
    has not exited :data:`RETIRE_GRACE` later, reaped), and the pool then keeps only as
    many as are idle or busy; ``min_idle`` workers of ``memory_mb`` are kept however long
    they wait (default 1: a host that runs again later finds a warm worker), none of another
    memory limit. A busy worker is never ended by the time-out. The spawner thread does it.

    ``entry`` is the module workers run (``python -m entry``): tests give one that
    misbehaves. Workers are started with ``subprocess.Popen`` of a new interpreter, not a
    fork of the host (the host has threads: a fork copies locks held by other threads),
    with the socket as the one inherited file (``pass_fds``): stdin and stdout stay free,
    so nothing a library prints can corrupt a frame, and one socket carries both ways.
    They are started on one thread of the pool's own (the spawner), because the kernel's
    parent-death signal follows the *thread* that started a process: a worker started on
    a run's thread would be killed when that run's thread ends.
    """

    def __init__(self, size: int | None = None, *, memory_mb: int = 256,
                 recycle_after: int = RECYCLE_AFTER, entry: str = "engines.worker",
                 idle_timeout: float | None = IDLE_TIMEOUT, min_idle: int = 1) -> None:
        if idle_timeout is not None and not (
                type(idle_timeout) in (int, float) and 0 < idle_timeout < math.inf):
            raise ConfigurationError.InvalidValue(
                key="idle_timeout", value=str(idle_timeout),
                reason="a worker pool's idle_timeout is a finite number of seconds above 0, "
                       "or None (never)")
        if type(min_idle) is not int or min_idle < 0:
            raise ConfigurationError.InvalidValue(
                key="min_idle", value=str(min_idle),
                reason="a worker pool's min_idle is a whole number of workers, 0 or more")
        self.idle_timeout = None if idle_timeout is None else float(idle_timeout)
        self.min_idle = min_idle
        if size is None:
            size = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
                else (os.cpu_count() or 1)
        self.size = max(1, int(size))
        self.max_workers = WORKERS_PER_CORE * self.size  # of one memory limit, at once
        self.memory_mb = int(memory_mb)
        self.recycle_after = recycle_after
        self.entry = entry
        self._lock = threading.Lock()
        self._idle: dict[int, list[Worker]] = {}
        self._workers: set[Worker] = set()  # every worker not yet ended, to end at close
        self._starting: dict[int, int] = {}  # by memory limit: being started to be idle
        # by memory limit: workers engines hold now, and the most they ever held at once
        # (how many the pool keeps idle)
        self._busy: dict[int, int] = {}
        self._keep: dict[int, int] = {}
        self._closed = False
        self._requests: list[tuple[int, Future[Worker] | None] | None] = []
        self._wake = threading.Condition(self._lock)  # the spawner: a worker to start
        self._returned = threading.Condition(self._lock)  # a worker is idle again
        self._waits_forever = False  # the spawner waits with no idle time-out to watch
        self._spawner = threading.Thread(target=self._spawn_loop, daemon=True,
                                         name="polyspell worker spawner")
        self._spawner.start()
        with self._lock:
            for _ in range(self.size):
                self._ask(self.memory_mb, None)
        _POOLS.add(self)

    # -- the engine factory ---------------------------------------------------------

    def make_engine(self, language: str, *, limits: Limits = engines.DEFAULT_LIMITS,
                    sandbox: Sandbox = "constrained",
                    lua_version: str | None = None) -> ProcessEngine:
        """A fresh engine for ``language`` in a worker (an engine factory; ``lua_version``
        as :func:`engines.make_engine`'s)."""
        cls = proxy_class(language)
        return cls(self, self._take(limits.memory_mb, min(WAIT_FOR_WORKER, limits.timeout / 4)),
                   limits=limits, sandbox=sandbox, lua_version=lua_version)

    def _take(self, memory_mb: int, wait: float = WAIT_FOR_WORKER) -> Worker:
        future: Future[Worker] | None = None
        with self._lock:
            idle = self._idle.setdefault(memory_mb, [])
            if not idle and self._busy.get(memory_mb, 0) >= self.max_workers:
                # at the bound: wait for one to come back
                self._returned.wait_for(lambda: idle or self._closed, wait)
            if self._closed:
                raise ConfigurationError.InvalidValue(
                    key="isolation", value="process",
                    reason="the worker pool is closed (its host was closed)")
            busy = self._busy[memory_mb] = self._busy.get(memory_mb, 0) + 1
            if busy > self._keep.get(memory_mb, self.size):
                self._keep[memory_mb] = min(busy, self.max_workers)
            while idle:
                worker = idle.pop()
                if worker.alive and worker.quiet():
                    break
                self._workers.discard(worker)
                worker.end()
            else:
                future = Future()
                self._ask(memory_mb, future)
        if future is None:
            return worker
        try:
            return future.result(SPAWN_TIMEOUT)
        except Exception as exc:
            with self._lock:
                self._busy[memory_mb] -= 1
            raise SpellError.wrap(exc, "runtime", "internal_error",
                                  reason=f"could not start a worker process: {exc}") from exc

    def give_back(self, worker: Worker, healthy: bool, *, opened: bool = True) -> None:
        """Take back a worker its engine is done with: idle again if ``healthy`` and it
        may serve more, else ended (and another started in its place)."""
        worker.runs += opened
        keep = (healthy and worker.runs < self.recycle_after and worker.alive
                and worker.quiet())
        if keep and opened:
            try:
                worker.send(wire.frame(["close"]), time.monotonic() + 1)
            except (_Late, _Ended):
                keep = False
        with self._lock:
            memory_mb = worker.memory_mb
            self._busy[memory_mb] = max(0, self._busy.get(memory_mb, 0) - 1)
            idle = self._idle.setdefault(memory_mb, [])
            if keep and not self._closed and len(idle) < self._keep.get(memory_mb, self.size) \
                    and self._idle_total() < self.max_workers:
                worker.idle_since = time.monotonic()
                idle.append(worker)
                self._returned.notify()
                if self._waits_forever and len(idle) > self._floor(memory_mb):
                    self._wake.notify()  # the spawner now has a time-out to wait for
                return
            self._workers.discard(worker)
            if not self._closed:
                self._ask(worker.memory_mb, None)  # another in its place, if idle is short
        worker.end()

    def _idle_total(self) -> int:
        """Idle workers of every memory limit (under the lock): at most ``max_workers``, so
        that hosts with many different limits sharing a pool keep a bounded number."""
        return sum(len(workers) for workers in self._idle.values())

    # -- starting workers -----------------------------------------------------------

    def _ask(self, memory_mb: int, future: Future[Worker] | None) -> None:
        """Have the spawner start a worker (under the lock): for ``future``, or idle."""
        if future is None:
            idle = len(self._idle.get(memory_mb, ()))
            starting = self._starting.get(memory_mb, 0)
            busy = self._busy.get(memory_mb, 0)  # they come back to the idle list
            if idle + starting + busy >= self._keep.get(memory_mb, self.size) \
                    or self._idle_total() + starting >= self.max_workers:
                return
            self._starting[memory_mb] = starting + 1
        self._requests.append((memory_mb, future))
        self._wake.notify()

    def _spawn_loop(self) -> None:
        """The spawner thread: starts the workers asked for, and ends those idle too long."""
        while True:
            with self._lock:
                while True:
                    expired = self._expired()
                    if expired or self._requests:
                        break
                    wait = self._until_expiry()
                    self._waits_forever = wait is None
                    self._wake.wait(wait)
                    self._waits_forever = False
                request = None if expired else self._requests.pop(0)
            if expired:
                ends = time.monotonic() + RETIRE_GRACE
                for worker in expired:
                    try:
                        worker.retire(ends)
                    except Exception:  # the spawner must go on: the next one still ends
                        worker.kill()
                continue
            if request is None:
                return
            memory_mb, future = request
            try:
                worker = self._spawn(memory_mb)
            except BaseException as exc:
                with self._lock:
                    if future is None:
                        self._starting[memory_mb] -= 1
                if future is not None:
                    future.set_exception(exc)
                continue
            with self._lock:
                if future is None:
                    self._starting[memory_mb] -= 1
                closed = self._closed
                if not closed:
                    self._workers.add(worker)
                    if future is None:
                        worker.idle_since = time.monotonic()
                        self._idle.setdefault(memory_mb, []).append(worker)
            if closed:
                worker.end()
                if future is not None:
                    future.set_exception(RuntimeError("the worker pool is closed"))
            elif future is not None:
                future.set_result(worker)

    def _spawn(self, memory_mb: int) -> Worker:
        ours, theirs = socket.socketpair()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", self.entry, str(theirs.fileno()), str(os.getpid()),
                 str(memory_mb)],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, env=_worker_environment())
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return Worker(process, ours, memory_mb)

    # -- idle workers ---------------------------------------------------------------

    def _floor(self, memory_mb: int) -> int:
        """How many idle workers of ``memory_mb`` the time-out leaves."""
        return self.min_idle if memory_mb == self.memory_mb else 0

    def _expired(self) -> list[Worker]:
        """Take out the workers idle past the time-out, oldest first, down to the floor of
        their memory limit, and keep no more of that limit than are busy or idle now
        (under the lock)."""
        if self.idle_timeout is None or self._closed:
            return []
        since = time.monotonic() - self.idle_timeout
        expired: list[Worker] = []
        for memory_mb, idle in self._idle.items():
            floor = self._floor(memory_mb)
            count = 0  # the list is in the order they became idle: the oldest first
            while len(idle) - count > floor and idle[count].idle_since <= since:
                count += 1
            if count:
                expired += idle[:count]
                del idle[:count]
                self._keep[memory_mb] = max(self._busy.get(memory_mb, 0) + len(idle), floor)
        self._workers.difference_update(expired)
        return expired

    def _until_expiry(self) -> float | None:
        """Seconds until the next idle worker may be ended (None: no time-out to wait for;
        under the lock)."""
        if self.idle_timeout is None:
            return None
        oldest = [idle[0].idle_since for memory_mb, idle in self._idle.items()
                  if len(idle) > self._floor(memory_mb)]
        if not oldest:
            return None
        return max(0.0, min(oldest) + self.idle_timeout - time.monotonic()) + 0.001

    # -- the end --------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def pids(self, *, busy: bool | None = None) -> list[int]:
        """The process ids of the pool's workers not yet ended: all of them, or (``busy``
        true) those an engine holds, or (false) the idle ones."""
        with self._lock:
            idle = {worker for workers in self._idle.values() for worker in workers}
            if busy is None:
                chosen = self._workers
            else:
                chosen = self._workers - idle if busy else idle & self._workers
            return sorted(worker.pid for worker in chosen)

    def close(self) -> None:
        """End every worker (idle or in use: engines still running fail at once)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers, self._workers = list(self._workers), set()
            self._idle.clear()
            self._requests.insert(0, None)
            self._wake.notify()
            self._returned.notify_all()
        for worker in workers:
            worker.kill()
        for worker in workers:
            worker.end()
        # A worker the spawner is starting now is in no list yet: the spawner ends it when
        # it sees the pool closed, then returns. Wait for that, or the host could exit
        # (the CLI at Ctrl-C) with a worker still alive (killed only by its parent's death).
        if threading.current_thread() is not self._spawner:
            self._spawner.join(CLOSE_WAIT)
        _POOLS.discard(self)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# What a worker gets of the host's environment: what the interpreter and its native
# libraries need to start, never the rest (API keys, tokens): a script that escaped its
# sandbox into a worker finds none of the host's secrets there.
_INHERITED = frozenset({"PATH", "LANG", "TZ", "TMPDIR", "HOME", "LD_LIBRARY_PATH",
                        "SYSTEMROOT"})


def _worker_environment() -> dict[str, str]:
    """The environment of a worker: the inherited names (:data:`_INHERITED`, ``LC_*``,
    ``PYTHON*``), with this package importable (``python -m`` from any directory finds it
    where the host found it)."""
    env = {name: value for name, value in os.environ.items()
           if name in _INHERITED or name.startswith(("LC_", "PYTHON"))}
    root = os.path.dirname(os.path.dirname(os.path.abspath(engines.__file__)))
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = root if not path else root + os.pathsep + path
    return env


_POOLS: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


@atexit.register
def _close_pools() -> None:
    for pool in list(_POOLS):
        pool.close()
