"""What a command's start leaves out or does faster (issue 17) gives what it gave before.

``polyspell run`` imports no hook presets, difflib, uuid (with platform) or hashlib when
nothing needs them; the Lua prelude's generated tables escape their text in whole-string
passes; a run's correlation id is made without uuid.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from engines.lua import _generated_tables, _lua_string
from host.runner import _random_hex_id

ROOT = Path(__file__).resolve().parent.parent


def lua_string_by_character(value: str) -> str:
    """The escaping _lua_string did character by character before."""
    return '"' + "".join(
        ch if ch.isprintable() and ch not in '"\\' else f"\\u{{{ord(ch):X}}}" for ch in value
    ) + '"'


@pytest.mark.parametrize("seed", range(3))
def test_lua_string_escapes_as_character_by_character(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = 'ab "\\\n\t\r\x00\x7f\u2028\u00e9{}u'
    for _ in range(3000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        assert _lua_string(value) == lua_string_by_character(value), repr(value)


def test_the_generated_tables_are_escaped_as_before() -> None:
    tables = _generated_tables()
    first = tables.split("\n", 1)[0]
    messages = first.removeprefix("local MESSAGES = ")
    assert messages.startswith('"') and "\\u{A}" in messages and "\\u{9}" in messages


def test_a_runs_id_is_a_random_version_4_uuid() -> None:
    ids = {_random_hex_id() for _ in range(200)}
    assert len(ids) == 200
    for value in ids:
        parsed = uuid.UUID(hex=value)
        assert (parsed.hex, parsed.version, parsed.variant) == (value, 4, uuid.RFC_4122)


def test_hook_presets_load_when_first_used() -> None:
    code = ("import sys\nfrom host import hooks\n"
            "before = 'host.hooks.presets' in sys.modules\n"
            "from host.hooks import presets\n"
            "print(before, hooks.presets is presets, callable(hooks.presets.timing))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["False", "True", "True"]


def test_a_plain_run_imports_none_of_what_it_does_not_need(tmp_path: Path) -> None:
    script = tmp_path / "hello.lua"
    script.write_text('return "hello"')
    code = ("import runpy, sys, json\n"
            f"sys.argv = ['polyspell', 'run', {str(script)!r}, '--errors-db', "
            f"{str(tmp_path / 'errors.db')!r}]\n"
            "try:\n    runpy.run_module('host.cli', run_name='__main__')\n"
            "except SystemExit as exc:\n    code = exc.code\n"
            "print(json.dumps([code, [m for m in ('host.hooks.presets', 'difflib', 'uuid',"
            " 'platform', 'hashlib') if m in sys.modules]]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True, env={"PYTHONPATH": str(ROOT)}).stdout
    result, line = out.rsplit("\n", 2)[-3:-1]
    assert json.loads(result) == "hello"
    assert json.loads(line) == [0, []]


@pytest.mark.parametrize(("argv", "frozen"), [("None", "True"), ("['catalog', 'tool']", "False")])
def test_only_a_process_command_skips_the_last_collection(argv: str, frozen: str) -> None:
    # an exit handler registered before main's runs after it: it sees what main left
    code = ("import atexit, gc, sys\n"
            "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\n"
            "sys.argv = ['polyspell', 'catalog', 'tool']\n"
            "from host.cli import main\n"
            f"main({argv})\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "Tool" in out or "tool" in out
    assert out.rstrip().endswith(f"frozen {frozen}")
