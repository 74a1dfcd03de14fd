"""A worker that misbehaves on request, for tests: ``python -m tests.misbehaving_worker``.

It serves like :mod:`engines.worker` (same arguments), except for a script whose source
starts with ``--misbehave:<how> [argument]``: instead of the step, it does what ``how``
says (see ``MODES``), as a compromised worker could.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from engines import wire, worker

MARK = "--misbehave:"
MB = 1 << 20


class Payload:
    """A pickle that runs code when loaded: what a host reading pickles would execute
    (it creates the file ``path``)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))


def _send(sock: Any, data: bytes) -> None:
    sock.sendall(data)


def _environment(sock: Any, name: str) -> None:
    """Answer with the value of an environment variable (what an escaped script sees)."""
    sock.sendall(wire.frame(["F", True, [], os.environ.get(name)]))


def _reach_out(sock: Any, path: str) -> None:
    """Try what a script that escaped into the worker's Python would: read a file of the
    host's, open a socket, start a process; answer with what each gave (the modules it
    uses are imported when the worker starts: a confined worker cannot read them later)."""
    def attempt(action: Any) -> str:
        try:
            action()
        except OSError as exc:
            return exc.__class__.__name__
        return "allowed"

    def fork() -> None:
        if os.fork() == 0:  # the child of an unconfined worker: gone at once
            os._exit(0)

    seen = {"file": attempt(lambda: open(path).read()),
            "socket": attempt(lambda: socket.socket().close()),
            "process": attempt(lambda: subprocess.run(["/bin/true"], check=False)),
            "fork": attempt(fork)}
    sock.sendall(wire.frame(["F", True, [], seen]))


def _descriptors(sock: Any, arg: str) -> None:
    """Answer with what each open descriptor is: ``[fd, kind, device, inode, rdev]`` (what
    an escaped script could write to)."""
    import stat

    seen = []
    for fd in range(1024):
        try:
            info = os.fstat(fd)
        except OSError:
            continue
        kind = "socket" if stat.S_ISSOCK(info.st_mode) else "char" if stat.S_ISCHR(
            info.st_mode) else "other"
        seen.append([fd, kind, info.st_dev, info.st_ino, info.st_rdev])
    sock.sendall(wire.frame(["F", True, [], seen]))


def _outlive(sock: Any, arg: str) -> None:
    """Clear the parent-death signal (what an escaped script would do to outlive its host),
    answer with what prctl gave, then stay busy (not reading: no EOF to see) for minutes."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    code = libc.prctl(1, 0, 0, 0, 0)  # PR_SET_PDEATHSIG, no signal
    sock.sendall(wire.frame(["F", True, [], [code, ctypes.get_errno()]]))
    time.sleep(600)


def _unbound(sock: Any, arg: str) -> None:
    """Try to raise the address-space bound back to infinity (a worker running as root
    holds CAP_SYS_RESOURCE) and to lower it (allowed to anyone, unless refused): answer
    with what each gave and the bound after."""
    import resource

    def attempt(limits: tuple[int, int]) -> str:
        try:
            resource.setrlimit(resource.RLIMIT_AS, limits)
        except (OSError, ValueError) as exc:
            return exc.__class__.__name__
        return "allowed"

    now = resource.getrlimit(resource.RLIMIT_AS)
    seen = [attempt((resource.RLIM_INFINITY,) * 2), attempt((now[0] - 4096, now[1]))]
    sock.sendall(wire.frame(["F", True, [], [*seen, list(resource.getrlimit(
        resource.RLIMIT_AS))]]))


MODES = {
    # bytes that are no JSON, in a well-formed frame
    "garbage": lambda sock, arg: _send(sock, wire.HEADER.pack(9) + b"not json!"),
    # a pickle that would run a command in a host that unpickled it
    "pickle": lambda sock, arg: _send(sock, _framed(pickle.dumps(Payload(arg)))),
    # the value of an environment variable, as a result
    "environment": _environment,
    # a header announcing more than the engine's memory limit, then nothing
    "oversized": lambda sock, arg: (_send(sock, wire.HEADER.pack(int(sys.argv[3]) * MB + 1)),
                               time.sleep(600)),
    # a frame cut off, then the worker ends
    "truncated": lambda sock, arg: (_send(sock, wire.HEADER.pack(100) + b'["F",true,[],'),
                               os._exit(0)),
    # JSON, but no step (a suspension with no requests would loop the host forever)
    "no_requests": lambda sock, arg: _send(sock, wire.frame(["S", True, [], []])),
    # a step whose error is no error of the hierarchy
    "forged_error": lambda sock, arg: _send(sock, wire.frame(
        ["X", True, [], {"category": "nope", "kind": "x", "message": "forged"}, None])),
    # an error whose fields are named like the constructor's arguments
    "colliding_field": lambda sock, arg: _send(sock, wire.frame(
        ["X", True, [], {"category": "script", "kind": "runtime_error",
                         "fields": {"language": "lua", "error": "e", "retryable": True}},
         None])),
    # a request whose frame is no frame
    "bad_frame": lambda sock, arg: _send(sock, wire.frame(
        ["S", True, [], [[1, "echo", {}, None, [["lua", 7, "x", None, None, None]], "tool"]]])),
    # what it can reach of the machine: a file (the argument), a socket, a process
    "reach_out": _reach_out,
    # no answer at all
    "hang": lambda sock, arg: time.sleep(600),
    # a crash of the engine
    "segfault": lambda sock, arg: os.kill(os.getpid(), signal.SIGSEGV),
    # any message (the argument, as JSON) in a well-formed frame
    "send": lambda sock, arg: _send(sock, wire.frame(json.loads(arg))),
    # the same message twice: the second answers a step the host has not asked for yet
    "send_twice": lambda sock, arg: _send(sock, wire.frame(json.loads(arg)) * 2),
    # a finished step whose result nests ``arg`` lists deep (the engines stop at 100)
    "deep": lambda sock, arg: _send(sock, wire.HEADER.pack(14 + 2 * int(arg)) + b'["F",true,[],'
                                    + b"[" * int(arg) + b"]" * int(arg) + b"]"),
    # a message (the argument after the seconds, as JSON) sent that many seconds late
    "late": lambda sock, arg: (time.sleep(float(arg.split(" ", 1)[0])),
                               _send(sock, wire.frame(json.loads(arg.split(" ", 1)[1])))),
    # a finished step whose result is ``arg`` empty lists (3 bytes each as JSON)
    "wide": lambda sock, arg: _send(sock, _framed(
        b'["F",true,[],[' + b"[]," * (int(arg) - 1) + b"[]]]")),
    # the address-space bound raised
    "unbound": _unbound,
    # the parent-death signal cleared
    "outlive": _outlive,
    # a frame cut off, then silence (the worker stays)
    "stalled": lambda sock, arg: (_send(sock, wire.HEADER.pack(100) + b'["F",true,[],'),
                                  time.sleep(600)),
    # the worker's open descriptors
    "descriptors": _descriptors,
    # text written to the worker's stderr, then a finished step
    "stderr": lambda sock, arg: (os.write(2, arg.encode()),
                                 _send(sock, wire.frame(["F", True, [], "done"]))),
}


def _framed(body: bytes) -> bytes:
    return wire.HEADER.pack(len(body)) + body


class Misbehaving(worker.Server):
    """A server that misbehaves for a script marked so."""

    def step(self, verb: str, args: list[Any]) -> tuple[Any, bool]:
        if verb == "start" and isinstance(args[0], str) and args[0].startswith(MARK):
            how, _, arg = args[0][len(MARK):].partition(" ")
            return (MARK, how, arg), False
        return super().step(verb, args)

    def answer(self, outcome: tuple[Any, bool]) -> None:
        step, _ = outcome
        if isinstance(step, tuple) and step[0] == MARK:
            MODES[step[1]](self.connection.sock, step[2])
            return
        super().answer(outcome)


if __name__ == "__main__":
    worker.main(server=Misbehaving)
