"""The ``polyspell`` command of this checkout, as the CLI tests run it.

The tests run ``python -m host.cli`` (what the installed ``polyspell`` script calls) with this
checkout first on ``PYTHONPATH``, so they never depend on, nor skip for, what is on ``PATH``
and always run the code under test, whatever folder a test runs the command in. That the
installed script exists and runs this entry point is checked once, in ``test_cli_entry.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

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
    return subprocess.run([*POLYSPELL, *map(str, args)], capture_output=True,  # type: ignore[call-overload]
                          text=True, timeout=60, cwd=cwd, env=environment(env), **options)
