"""Red team on the issue 18 features: each test is an attack that made one of them hang,
or do far more than its limit says, before the fix."""

from __future__ import annotations

import os
import threading
import tracemalloc
from pathlib import Path

import pytest

import host.ray_executor as ray_executor
from bridge import ConfigurationError
from host.ray_executor import shipped_files


def _within(seconds: float, fn, *args):  # type: ignore[no-untyped-def]
    """fn(*args), or a failure when it has not returned within ``seconds``."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return thread, box


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_in_a_library_folder_does_not_hang_the_plan(tmp_path: Path) -> None:
    """Library folders travel by content, every file under them read: a FIFO there
    (a socket, a device) blocked the driver forever in open(). Only regular files
    travel (no library module is anything else)."""
    library = tmp_path / "lib"
    library.mkdir()
    (library / "util.lua").write_text("return {}\n")
    fifo = library / "pipe"
    os.mkfifo(fifo)
    thread, box = _within(5, shipped_files, [str(library)])
    if thread.is_alive():  # let the blocked open() return, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        pytest.fail("shipped_files blocked on a FIFO")
    assert "error" not in box, box.get("error")
    digests, contents = box["value"]
    assert list(digests) == [str(library / "util.lua")]
    assert list(contents.values()) == [b"return {}\n"]


def test_a_file_larger_than_what_may_travel_is_refused_before_it_is_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file past MAX_SHIPPED was read whole into memory, then refused: a huge file in a
    library folder took the driver's memory first."""
    monkeypatch.setattr(ray_executor, "MAX_SHIPPED", 2**20)
    library = tmp_path / "lib"
    library.mkdir()
    big = library / "big.lua"
    with big.open("wb") as file:
        file.truncate(2**26)  # sparse: 64 MiB that take no room on the disk
    tracemalloc.start()
    try:
        with pytest.raises(ConfigurationError) as info:
            shipped_files([str(library)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.code == "configuration/invalid_value"
    assert peak < 8 * 2**20  # not the 64 MiB file read whole


@pytest.mark.parametrize("separator", ["\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1e", "\x85",
                                       "\u2028", "\u2029"],
                         ids=["cr", "crlf", "vt", "ff", "fs", "rs", "nel", "ls", "ps"])
def test_a_printed_line_break_of_any_kind_never_forges_a_log_line(
        separator: str, tmp_path: Path) -> None:
    """Only "\\n" made two records: a script printing "ok\\rERROR polyspell.hooks: forged"
    made one record whose text a log file read as two lines (Python's open() reads "\\r"
    as a line end, splitlines() all of these), the second one seemingly another logger's."""
    import json
    import logging

    from host import Host

    log = tmp_path / "run.log"
    handler = logging.FileHandler(log, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("polyspell.script")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        text = json.dumps("one" + separator + "ERROR polyspell.hooks: forged")
        Host().run_source(f"console.log({text});", "javascript")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()
    text = log.read_text(encoding="utf-8")
    for lines in (text.splitlines(), log.open(encoding="utf-8").read().split("\n")[:-1]):
        assert lines and all(line.startswith("INFO polyspell.script: ") for line in lines), lines
