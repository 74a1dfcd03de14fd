"""A fork server for the CLI tests: each ``polyspell`` command in a process of its own,
without paying Python's start and polyspell's imports (half a second) each time.

Run as ``python -m tests.cli_server`` by :mod:`tests.cli`: it imports what a command
imports, then, for each request read from stdin (one JSON line: ``argv``, ``cwd``,
``env``, ``input``, ``timeout``), forks a child that is the command: its own
environment, working directory, ``sys.argv`` and ``sys.path[0]`` (as ``python -m
host.cli`` would have them), stdin, stdout and stderr on files, exit code its own, and
Python's end (non-daemon threads joined, ``atexit`` functions run, streams flushed). The
server answers one JSON line: the exit code (or ``"timeout"``, the child killed) and the
files holding what it wrote. The server stays single-threaded, so forking it is safe.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import signal
import sys
import threading
import time
import traceback

import host.cli  # what every command imports, imported once
import host.coordinator
import host.host
import host.runner


def _stream(fd: int, mode: str, like: io.TextIOWrapper, line_buffering: bool
            ) -> io.TextIOWrapper:
    raw = io.FileIO(fd, mode, closefd=False)
    buffered = io.BufferedReader(raw) if mode == "r" else io.BufferedWriter(raw)
    return io.TextIOWrapper(buffered, encoding=like.encoding, errors=like.errors,
                            line_buffering=line_buffering)


def _child(request: dict, stdin_path: str | None, out_path: str, err_path: str) -> None:
    """Become the command; never returns."""
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        stdin = os.open(stdin_path or os.devnull, os.O_RDONLY)
        out = os.open(out_path, os.O_WRONLY | os.O_TRUNC)
        err = os.open(err_path, os.O_WRONLY | os.O_TRUNC)
        for fd, target in ((stdin, 0), (out, 1), (err, 2)):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = sys.__stdin__ = _stream(0, "r", sys.__stdin__, False)
        sys.stdout = sys.__stdout__ = _stream(1, "w", sys.__stdout__, False)
        sys.stderr = sys.__stderr__ = _stream(2, "w", sys.__stderr__, True)
        sys.argv = [host.cli.__file__, *request["argv"]]
        sys.path[0] = os.getcwd()  # as python -m host.cli has it
        try:
            code = host.cli.main(request["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, int) and exc.code is not None:
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
        threading._shutdown()  # type: ignore[attr-defined]  # as Python's end does
        atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code if isinstance(code, int) else 1)


def _serve_one(request: dict) -> dict:
    folder = request["folder"]
    stdin_path = None
    if request.get("input") is not None:
        stdin_path = os.path.join(folder, "stdin")
        with open(stdin_path, "wb") as f:
            f.write(request["input"].encode(sys.__stdin__.encoding, "surrogateescape"))
    out_path, err_path = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
    for path in (out_path, err_path):
        open(path, "wb").close()
    pid = os.fork()
    if pid == 0:
        _child(request, stdin_path, out_path, err_path)
    deadline = time.monotonic() + request["timeout"]
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return {"code": os.waitstatus_to_exitcode(status)}
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"code": "timeout"}
        time.sleep(0.002)


def main() -> None:
    for line in sys.stdin:
        try:
            answer = _serve_one(json.loads(line))
        except Exception as exc:  # the test sees it as the command's failure
            answer = {"code": "error", "error": repr(exc)}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
