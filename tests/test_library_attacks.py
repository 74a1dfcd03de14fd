"""Hostile module names and hostile library folders against ``require`` (issue 15, red
team): real files, real symlinks and FIFOs, real Lua, in both isolation modes where the
worker's side matters."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bridge import SpellError
from host import Host


def lua_error(host: Host, source: str) -> SpellError:
    with pytest.raises(SpellError) as info:
        host.run_source(source, "lua")
    return info.value


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    lib, outside = tmp_path / "lib", tmp_path / "outside"
    lib.mkdir()
    outside.mkdir()
    (outside / "secret.lua").write_text('return "outside the root"\n')
    (lib / "ok.lua").write_text("return {x = 1}\n")
    return lib, outside


def make_host(lib: Path, isolation: str = "thread", **options: object) -> Host:
    return Host(libraries=[lib], script_dir_library=False, isolation=isolation,
                on_output=lambda line: None, **options)


def test_a_symlinked_folder_out_of_the_root_is_refused(roots):
    lib, outside = roots
    (lib / "pkg").symlink_to(outside, target_is_directory=True)
    err = lua_error(make_host(lib), 'return require("pkg.secret")')
    assert err.code == "security/access_denied"
    assert "outside its library root" in str(err) and "'pkg.secret'" in str(err)


def test_a_symlinked_folder_inside_the_root_is_followed(roots):
    lib, _ = roots
    (lib / "real").mkdir()
    (lib / "real" / "init.lua").write_text('return "inside"\n')
    (lib / "alias").symlink_to(lib / "real", target_is_directory=True)
    assert make_host(lib).run_source('return require("alias")', "lua") == "inside"


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_a_symlink_loop_and_a_fifo_are_modules_not_found_and_nothing_hangs(roots, isolation):
    lib, _ = roots
    (lib / "loop1.lua").symlink_to("loop2.lua")
    (lib / "loop2.lua").symlink_to("loop1.lua")
    os.mkfifo(lib / "pipe.lua")  # opening it for reading would wait for a writer
    with make_host(lib, isolation, timeout=5) as host:
        began = time.monotonic()
        for name in ("loop1", "pipe"):
            err = lua_error(host, f'return require("{name}")')
            assert err.code == "script/lua" and f"module '{name}' not found" in str(err)
        assert time.monotonic() - began < 4


@pytest.mark.parametrize("name", ["%s%d%%", "ok %s", "ok%", "100%.x"])
def test_format_directives_in_a_name_are_only_text(roots, name):
    lib, _ = roots
    err = lua_error(make_host(lib), f'return require("{name}")')
    assert f"module '{name}' not found" in str(err)
    relative = name.replace(".", "/")
    assert f"no file '{lib}/{relative}.lua'" in str(err)


@pytest.mark.parametrize(("name", "why"), [
    ("ok\\0x", "no control characters"), ("ok\\nx", "no control characters"),
    ("\\u{202e}ok", "no control characters"), ("ok.", "does not start or end"),
    ("ok..x", "not a path"), ("/etc/passwd", "not an absolute path"),
    ("C:x", "not an absolute path"), ("a\\\\b", "not a path"),
])
def test_names_that_are_no_module_names_are_refused_naming_the_roots(roots, name, why):
    lib, _ = roots
    err = lua_error(make_host(lib), f'return require("{name}")')
    assert err.code == "security/access_denied", err
    assert why in str(err) and str(lib) in str(err)


def test_ten_thousand_distinct_requires_stay_quick_and_bounded(roots):
    lib, _ = roots
    source = ('local missing = 0\nfor i = 1, 10000 do\n'
              '  if not pcall(require, "m" .. i) then missing = missing + 1 end\nend\n'
              'return {missing, require("ok").x}')
    host = make_host(lib, timeout=30)
    began = time.monotonic()
    assert host.run_source(source, "lua") == [10000, 1]
    assert time.monotonic() - began < 15
    assert host.libraries.cache.reads <= 1  # only ok.lua was ever read


def test_a_root_that_is_a_file_is_refused_before_anything_runs(tmp_path):
    file = tmp_path / "lib.lua"
    file.write_text("return 1\n")
    with pytest.raises(SpellError) as info:
        Host(libraries=[file])
    assert info.value.code == "configuration/invalid_value"
    assert "is not one" in str(info.value)


def test_a_module_replaced_during_a_run_is_the_same_module_until_the_next_run(roots):
    lib, _ = roots
    (lib / "ver.lua").write_text("return 1\n")

    from host import tool

    @tool
    def change() -> None:
        """Rewrites the module while the script runs."""
        (lib / "ver.lua").write_text("return 22\n")

    host = Host([change], libraries=[lib], script_dir_library=False,
                on_output=lambda line: None)
    assert host.run_source('local a = require("ver")\ntools.change{}\n'
                           'return {a, require("ver")}', "lua") == [1, 1]
    assert host.run_source('return require("ver")', "lua") == 22


def test_a_folder_swapped_for_a_symlink_while_a_module_is_found_never_leaks_out(tmp_path):
    """A race: the module's path is resolved inside the root, then a folder on the way is
    swapped for a symlink out of it before the file is opened. Before the opened file
    was checked by its own path, up to one require in twenty here gave the outside
    file's text (and realpath tripping on the swap was a runtime/internal_error)."""
    import threading

    lib, outside = tmp_path / "lib", tmp_path / "outside" / "pkg"
    (lib / "pkg").mkdir(parents=True)
    outside.mkdir(parents=True)
    (lib / "pkg" / "m.lua").write_text('return "inside"\n')
    (outside / "m.lua").write_text('return "OUTSIDE"\n')
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            (lib / "pkg").rename(lib / "pkg_real")
            (lib / "pkg").symlink_to(outside, target_is_directory=True)
            (lib / "pkg").unlink()
            (lib / "pkg_real").rename(lib / "pkg")

    host = make_host(lib)
    seen: dict[object, int] = {}
    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        ends = time.monotonic() + 4
        while time.monotonic() < ends:
            try:
                outcome = host.run_source('return require("pkg.m")', "lua")
            except SpellError as err:
                outcome = err.code
            seen[outcome] = seen.get(outcome, 0) + 1
    finally:
        stop.set()
        flipper.join()
    assert "OUTSIDE" not in seen, seen
    assert set(seen) <= {"inside", "security/access_denied", "configuration/load_failed",
                         "script/lua"}, seen  # found, refused, or not there at that moment
    assert host.run_source('return require("pkg.m")', "lua") == "inside"
