"""Processes as the tests see them, read from /proc (Linux): whether one is alive, its
children, its CPU time. One reader for the isolation, attack and process tests."""

from __future__ import annotations

import os
import time
from collections.abc import Callable


def stat_fields(pid: int | str) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command's name (state first, then the
    parent's pid...); FileNotFoundError once the process is reaped."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not ended (a zombie has ended)."""
    try:
        return stat_fields(pid)[0] != "Z"
    except FileNotFoundError:
        return False


def children(pid: int | None = None, *, zombies: bool = True) -> list[int]:
    """The processes whose parent is ``pid`` (default: this process), ended but unreaped
    ones too unless ``zombies`` is false."""
    parent = str(os.getpid() if pid is None else pid)
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = stat_fields(entry)
            except (OSError, IndexError):
                continue
            if fields[1] == parent and (zombies or fields[0] != "Z"):
                found.append(int(entry))
    return found


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(condition: Callable[[], object], seconds: float = 5.0) -> bool:
    """Whether ``condition()`` held within ``seconds`` (looked at every 20 ms)."""
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())
