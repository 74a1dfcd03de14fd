"""The ``polyspell`` command of this checkout, as the CLI tests run it.

The tests run ``python -m host.cli`` (what the installed ``polyspell`` script calls) with this
checkout first on ``PYTHONPATH``, so they never depend on, nor skip for, what is on ``PATH``
and always run the code under test, whatever folder a test runs the command in. That the
installed script exists and runs this entry point is checked once, in ``test_cli_entry.py``.

Each command is a process of its own, forked by :mod:`tests.cli_server` (polyspell
imported once, not at each of the hundreds of commands the tests run); a command whose
environment sets ``PYTHON...`` variables (which act as Python starts), or that asks for
other :func:`subprocess.run` options, starts ``python -m host.cli`` itself, and so do all
of them with ``POLYSPELL_TEST_SUBPROCESS=1``.
"""

from __future__ import annotations

import atexit
import io
import json
import locale
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
POLYSPELL: list[str] = [sys.executable, "-m", "host.cli"]


def environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment, with this checkout first on ``PYTHONPATH``."""
    env = {**os.environ, **(extra or {})}
    paths = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def polyspell(*args: str | Path, cwd: Path = ROOT, env: Mapping[str, str] | None = None,
              **options: object) -> subprocess.CompletedProcess[str]:
    """Run ``polyspell ARGS`` to its end; ``options`` go to :func:`subprocess.run`."""
    argv = [str(arg) for arg in args]
    full_env = environment(env)
    forkable = (not os.environ.get("POLYSPELL_TEST_SUBPROCESS")
                and not set(options) - {"input", "timeout"}
                and not any(key.startswith("PYTHON") and key != "PYTHONPATH"
                            for key in (env or {})))
    if forkable:
        done = _SERVER.run(argv, str(cwd), full_env, options.get("input"),  # type: ignore[arg-type]
                           float(options.get("timeout", 60)))  # type: ignore[arg-type]
        if done is not None:
            return done
    return subprocess.run([*POLYSPELL, *argv], capture_output=True,  # type: ignore[call-overload]
                          text=True, timeout=60, cwd=cwd, env=full_env, **options)


class _ForkServer:
    """The client of :mod:`tests.cli_server`, started at the first command."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def run(self, argv: list[str], cwd: str, env: dict[str, str], stdin: str | None,
            timeout: float) -> subprocess.CompletedProcess[str] | None:
        """The command's outcome, or None if the server cannot run it (then the caller
        starts the command itself)."""
        folder = tempfile.mkdtemp(prefix="polyspell-cli-")
        try:
            with self._lock:
                answer = self._ask({"argv": argv, "cwd": cwd, "env": env, "input": stdin,
                                    "timeout": timeout, "folder": folder})
            if answer is None or not isinstance(answer.get("code"), (int, str)) \
                    or answer["code"] == "error":
                return None
            out, err = (_decoded(os.path.join(folder, name)) for name in ("stdout", "stderr"))
            if answer["code"] == "timeout":
                raise subprocess.TimeoutExpired([*POLYSPELL, *argv], timeout, out, err)
            return subprocess.CompletedProcess([*POLYSPELL, *argv], answer["code"], out, err)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _ask(self, request: dict[str, Any]) -> dict[str, Any] | None:
        for _ in range(2):  # a server that died is started again, once
            process = self._process
            if process is None or process.poll() is not None:
                process = self._process = subprocess.Popen(
                    [sys.executable, "-m", "tests.cli_server"], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, cwd=ROOT, env=environment(), text=True)
            try:
                assert process.stdin is not None and process.stdout is not None
                process.stdin.write(json.dumps(request) + "\n")
                process.stdin.flush()
                line = process.stdout.readline()
            except (BrokenPipeError, OSError):
                line = ""
            if line:
                return json.loads(line)
            process.kill()
            self._process = None
        return None

    def close(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()


def _decoded(path: str) -> str:
    """What the command wrote, read as :func:`subprocess.run` with ``text=True`` reads it
    (the locale's encoding, universal newlines)."""
    with open(path, "rb") as f:
        data = f.read()
    return io.TextIOWrapper(io.BytesIO(data), encoding=locale.getpreferredencoding(False)).read()


_SERVER = _ForkServer()
atexit.register(_SERVER.close)
