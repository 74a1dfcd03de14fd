"""The ``polyspell`` command exists: declared by the project, installed, and running this code.

The other CLI tests run ``python -m host.cli`` (see ``tests/cli.py``) so that none of them
can skip. These check what that leaves out: that ``polyspell`` on ``PATH`` is the console
script the project declares. They fail, never skip, when it is missing: the README installs
the package before running the tests, and so does CI (``.ci/run``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import shutil
import subprocess
import tomllib

from tests.cli import POLYSPELL, ROOT, environment, polyspell

ENTRY = "host.cli:main"


def test_the_project_declares_the_polyspell_script():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert declared == {"polyspell": ENTRY}
    module, _, name = ENTRY.partition(":")
    assert callable(getattr(importlib.import_module(module), name))


def test_python_m_host_cli_is_the_polyspell_command():
    out = polyspell("--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: polyspell "), out.stdout
    assert POLYSPELL[1:] == ["-m", "host.cli"]


def test_the_installed_polyspell_script_runs_the_declared_entry_point():
    (installed,) = importlib.metadata.entry_points(group="console_scripts", name="polyspell")
    assert installed.value == ENTRY
    path = shutil.which("polyspell")
    assert path, ("no polyspell on PATH: install the package as the README says "
                  "(python -m pip install -e '.[dev]') before running the tests")
    out = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=60,
                         cwd=ROOT, env=environment())
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: polyspell "), out.stdout
