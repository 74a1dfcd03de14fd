"""A worker process that runs engines for a host: ``python -m engines.worker FD PARENT MB``.

Started by :class:`engines.process.WorkerPool`. ``FD`` is its end of a socket pair with the
host, ``PARENT`` the host's pid, ``MB`` the engine memory limit it serves. It imports
lupa and quickjs and runs one script in each before it says it is ready, so a run pays
none of that; then, for each proxy it serves, it makes a fresh engine
(:func:`engines.make_engine`) on ``open``, runs the steps it is asked for, and drops the
engine on ``close``. One thread only: every engine lives on the thread that made it
(quickjs requires it), and there is nothing to wait for but the host.

Once ready it confines itself (:mod:`engines.confine`: no file, socket or process can be
opened any more, where the kernel offers Landlock and seccomp), so a script that found a
way out of its engine into the worker's Python finds nothing to reach.

It never outlives the host: the kernel kills it when the host's spawning thread ends
(``PR_SET_PDEATHSIG``, which covers a host killed with SIGKILL while a script runs), and
it exits when the host's end of the socket closes (EOF while it waits). Its address space
is bounded (``RLIMIT_AS``, from the engine's limit: :data:`MEMORY_MARGIN_MB`), so the
engine and everything the worker builds from its steps stay inside a known size.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import sys
import time
from typing import Any

import engines
from bridge import SpellError
from bridge.errors import describe_exception
from bridge.hierarchy import ResourceError
from engines import confine, wire
from engines.base import Engine, Limits, protocol_violation

# The address space of a worker, in MB: RESULT_COPIES times its engine's memory limit
# plus MEMORY_MARGIN_MB. The margin is the interpreter with lupa, quickjs, pydantic and
# bridge imported and one engine of each language made (VmSize 24 MB here, sent in the
# ready frame) with room for the step machinery; the copies are what the worker builds
# from a result as large as the engine holds, while the engine still holds it: the
# Python data and its JSON text (measured: a Lua result of 70% of a 64 MB limit needs
# about 210 MB in all; with one copy fewer it failed as out of memory).
MEMORY_MARGIN_MB = 64
RESULT_COPIES = 3
_HEADER_SIZE = wire.HEADER.size
_unpack = wire.HEADER.unpack_from
# Exit status of a worker whose Python code ran out of address space outside a step.
EXIT_OUT_OF_MEMORY = 3
# Exit status of a worker the host talked to in a way it does not understand.
EXIT_PROTOCOL = 4
_PR_SET_PDEATHSIG = 1

# Scripts run once at start-up in each built-in language: what the first real engine
# would otherwise pay (the binding's import, the prelude's first compilation).
_WARM_UP = {"lua": "return 1", "javascript": "async function main() { return 1; }"}


def die_with_parent(parent: int) -> None:
    """Ask the kernel for SIGKILL when the host's spawning thread ends (Linux only), and
    exit now if the host is already gone (it died before the request took effect)."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(0)


def bound_memory(memory_mb: int) -> None:
    """Bound the worker's address space (see :data:`MEMORY_MARGIN_MB`), for good (soft
    and hard: even code that escaped the sandbox cannot raise it again)."""
    size = (RESULT_COPIES * memory_mb + MEMORY_MARGIN_MB) << 20
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    if hard != resource.RLIM_INFINITY:
        size = min(size, hard)
    resource.setrlimit(resource.RLIMIT_AS, (size, size))


def let_go_of_stderr() -> None:
    """Point the worker's stderr at the null device once start-up is done.

    Until then it is the host's (an import that fails at start-up is seen there); after
    it, no script runs with a descriptor of the host's terminal or log: one that escaped
    into the worker's Python could otherwise write anything there (a forged error
    report, escape sequences), at any time, beside the host's own output. Its socket is
    then the one descriptor the worker keeps of the host (stdin and stdout are the null
    device from the start).
    """
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
    finally:
        os.close(null)


def warm_up() -> None:
    """Import the built-in engines and run a script in each.

    An engine here runs alone on the worker's one thread, so the process's CPU time is
    its own: an engine class that scales a CPU-time limit for other threads' work
    (``cpu_factor``, JavaScript's) counts one CPU second per second left, and a busy loop
    reports its own time limit, with its frames, at the deadline. JavaScript's alarms (a
    thread that interrupts at the deadline) stay off: a thread's stack and malloc arena
    would take the address space the worker's bound leaves the script.
    """
    for spec in engines.specs():
        cls = engines.engine_class(spec.name)
        if hasattr(cls, "cpu_factor"):
            cls.cpu_factor = 1.0  # type: ignore[attr-defined]
        if hasattr(cls, "alarms"):  # no thread of its own: this process has one
            cls.alarms = False  # type: ignore[attr-defined]
        if hasattr(cls, "jit"):  # the host kills a worker at the deadline: LuaJIT may compile
            cls.jit = True  # type: ignore[attr-defined]
        if hasattr(cls, "before_confinement"):  # what it would open later (Lua versions)
            cls.before_confinement()  # type: ignore[attr-defined]
    for language, source in _WARM_UP.items():
        engine = engines.make_engine(language)
        try:
            engine.start(source, "<warm-up>", None, [], time.monotonic() + 10)
        finally:
            engine.close()


def address_space_kb() -> int:
    """This process's VmSize in kB (0 where /proc is not there)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Connection:
    """The worker's end of the socket: blocking frames in, frames out."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._pending = bytearray()  # bytes received past the last frame

    def receive(self) -> Any:
        """The next message from the host; None at EOF (the host is gone)."""
        if not self._pending:  # the usual case: one read brings one whole small frame
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return None
            if len(chunk) > _HEADER_SIZE and \
                    _unpack(chunk)[0] + _HEADER_SIZE == len(chunk):
                return wire.message(chunk[_HEADER_SIZE:])
            self._pending += chunk
        header = self._exactly(_HEADER_SIZE)
        if header is None:
            return None
        body = self._exactly(_unpack(header)[0])
        if body is None:
            return None
        return wire.message(body)

    def _exactly(self, size: int) -> bytearray | None:
        buffer = self._pending
        while len(buffer) < size:  # one read takes a whole small frame, header and all
            chunk = self.sock.recv(max(size - len(buffer), 1 << 16))
            if not chunk:
                return None
            buffer += chunk
        data = buffer[:size]
        del buffer[:size]
        return data

    def send(self, message: Any) -> None:
        """One frame to the host."""
        self.send_frame(wire.frame(message))

    def send_frame(self, frame: bytes | memoryview) -> None:
        """A frame made by :func:`engines.wire.frame`, written whole."""
        self.sock.sendall(frame)


class Server:
    """Serves one proxy after another on one connection, a fresh engine for each."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.engine: Engine | None = None
        self.failure: SpellError | None = None  # why the engine could not be made
        # a fresh engine made while the worker waited, for the next proxy that asks for
        # the same language, limits and sandbox as the last one, so that a run does not
        # wait for it (a Lua runtime and its prelude: 0.3 ms of 0.8 here; the JavaScript
        # engine makes its context at its first step, for now); never used twice
        self.spare: Engine | None = None
        self.spare_for: tuple[Any, ...] | None = None
        self.last: tuple[Any, ...] | None = None  # what the last proxy asked for

    def serve(self) -> None:
        """Answer the host until it closes its end."""
        while True:
            message = self.connection.receive()
            if message is None:
                return
            verb = message[0]
            if verb == "open":
                self.open(*message[1:])
            elif verb == "close":
                self.close()
                self.make_spare()  # the host does not wait for the close: time to spare
            else:
                self.answer(self.step(verb, message[1:]))

    def open(self, spec: dict[str, Any], timeout: float, memory_mb: int, stack_kb: int,
             sandbox: str, lua_version: str | None = None) -> None:
        """Make the engine of the next proxy (a failure is told at its first step)."""
        self.close()
        try:
            known = wire.spec_from_wire(spec)
            if engines.spec_of(known.name) != known:  # a language the host registered
                engines.register(known)
            wanted = (known.name, timeout, memory_mb, stack_kb, sandbox, lua_version)
            self.last = wanted
            spare, self.spare = self.spare, None
            if spare is not None and self.spare_for == wanted:
                self.engine = spare
                return
            if spare is not None:
                spare.close()
            self.engine = engines.make_engine(known.name, sandbox=sandbox,  # type: ignore
                                              limits=Limits(timeout, memory_mb, stack_kb),
                                              lua_version=lua_version)
        except Exception as exc:
            self.failure = SpellError.wrap(
                exc, "runtime", "internal_error",
                reason=f"the worker could not make an engine: {describe_exception(exc)}")

    def make_spare(self) -> None:
        """Make the engine the next proxy most likely asks for: as the last one did."""
        if self.last is None or self.spare is not None:
            return
        name, timeout, memory_mb, stack_kb, sandbox, lua_version = self.last
        try:
            self.spare = engines.make_engine(name, sandbox=sandbox,
                                             limits=Limits(timeout, memory_mb, stack_kb),
                                             lua_version=lua_version)
            self.spare_for = self.last
        except Exception:  # then the next proxy makes its own, and says what failed
            self.spare = None

    def close(self) -> None:
        """Drop the engine (the next proxy gets a fresh one)."""
        engine, self.engine, self.failure = self.engine, None, None
        if engine is not None:
            try:
                engine.close()
            except Exception:  # a broken engine that fails to close is gone all the same
                pass

    def step(self, verb: str, args: list[Any]) -> tuple[Any, bool]:
        """Run one step: the step and whether the engine can still run code."""
        engine = self.engine
        if engine is None:
            error = self.failure or protocol_violation(f"{verb} with no engine open")
            return engines.Failed(error), False
        try:
            if verb == "start":
                source, filename, args_, tools, deadline = args
                step = engine.start(source, filename, args_, wire.tools_from_wire(tools),
                                    deadline)
            elif verb == "load":
                source, filename, tools, deadline = args
                step = engine.load(source, filename, wire.tools_from_wire(tools), deadline)
            elif verb == "call":
                function, params, deadline = args
                step = engine.call(function, params, deadline)
            elif verb == "resume":
                replies, deadline = args
                step = engine.resume(wire.replies_from_wire(replies), deadline)
            else:
                return engines.Failed(protocol_violation(f"unknown step {verb!r}")), False
        except MemoryError:  # the worker's own bound, outside the engine's limit
            return engines.Failed(ResourceError.MemoryExhaustion(
                location="worker process",
                description="the worker ran out of address space (RLIMIT_AS)")), False
        except Exception as exc:  # a bug in an engine still answers as a unified error
            why = describe_exception(exc, qualified=False)
            return engines.Failed(SpellError.wrap(
                exc, "runtime", "internal_error",
                reason=f"{engine.language} engine failed: {why}")), engine.usable
        return step, engine.usable

    def answer(self, outcome: tuple[Any, bool]) -> None:
        """Send a step to the host."""
        step, usable = outcome
        try:
            message = wire.frame(wire.step_to_wire(step, usable))
        except MemoryError:
            step = engines.Failed(ResourceError.MemoryExhaustion(
                location="worker process",
                description="the step's data did not fit in the worker's address space"))
            message = wire.frame(wire.step_to_wire(step, False))
        except (TypeError, ValueError) as exc:  # no JSON form, or longer than a frame
            step = engines.Failed(SpellError.wrap(
                exc, "runtime", "internal_error",
                reason=f"the worker cannot send its step: {describe_exception(exc)}"))
            message = wire.frame(wire.step_to_wire(step, False))
        self.connection.send_frame(message)


def main(argv: list[str] | None = None, server: type[Server] = Server) -> None:
    """Run a worker (see the module's docstring); ``server`` serves the host (tests give
    one that misbehaves)."""
    fd, parent, memory_mb = (int(arg) for arg in (argv or sys.argv[1:])[:3])
    die_with_parent(parent)
    # Ctrl-C reaches the whole foreground process group: the host decides what it ends
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    warm_up()
    confine.settle()
    let_go_of_stderr()
    bound_memory(memory_mb)
    size = address_space_kb()
    # from here on the worker opens no file, socket or process (engines.confine)
    walls = confine.confine()
    connection = Connection(sock)
    connection.send(["R", os.getpid(), size, walls])
    try:
        server(connection).serve()
    except MemoryError:
        os._exit(EXIT_OUT_OF_MEMORY)
    except (OSError, ValueError, TypeError, IndexError):
        os._exit(EXIT_PROTOCOL)  # the host is gone mid-frame, or spoke nonsense
    os._exit(0)


if __name__ == "__main__":
    main()
