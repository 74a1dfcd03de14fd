"""Instructions per call of the round-trip rows, counted by valgrind's callgrind.

A shared machine's load moves wall-clock and even CPU-time ratios of a few microseconds;
the number of instructions a call executes it does not. Each row runs twice under
callgrind, with 5,200 calls and with 200, and the difference is divided by 5,000 (so
start-up and warm-up cancel out). User-space instructions only: system calls (the CPU
clock quickjs' time limit reads on every call into JS) are not in them.

    python scripts/instructions.py              # every row
    python scripts/instructions.py lua naive-lua

Needs ``valgrind`` on the PATH (not a dependency of polyspell). Each row takes about a
minute; the README's issue-17 table gives the figures this printed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench


def _host_loop(language: str, source: str) -> Callable[[int], None]:
    def run(n: int) -> None:
        # (callgrind runs code some 50 times slower: no run's time limit is near)
        host = bench.hop_host(Path(tempfile.mkdtemp()), bench.explode, timeout=3600)
        host.run_source(source, language, "b", {"n": 10, "call": True})
        host.run_source(source, language, "b", {"n": n, "call": True})

    return run


ROWS: dict[str, Callable[[int], None]] = {
    "naive-lua": lambda n: bench.naive_lua_call(n),
    "lua": _host_loop("lua", bench.LUA_LOOP),
    "floor-lua": lambda n: bench.raw_lua_suspension(n),
    "naive-js": lambda n: bench.naive_js_call(n),
    "js": _host_loop("javascript", bench.JS_LOOP),
    "floor-js": lambda n: bench.raw_js_suspension(n, "alarm"),
    "js-lua": _host_loop("javascript", bench.JS_LOOP.replace("tools.add", "tools.add_lua")),
    "lua-js": _host_loop("lua", bench.LUA_LOOP.replace("tools.add", "tools.add_js")),
    # a tool failure caught in the script (the bench's "tool failure caught in ...")
    "fail-lua": _host_loop("lua", bench.LUA_CATCH),
    "fail-js": _host_loop("javascript", bench.JS_CATCH),
}
SMALL, LARGE = 200, 5200


def collected(row: str, n: int) -> int:
    """Instructions callgrind counted for a process that runs ``row`` with ``n`` calls."""
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         __file__, "--inner", row, str(n)], capture_output=True, text=True, check=False)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"callgrind failed for {row}:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", nargs="*", help=f"of {', '.join(ROWS)} (default: all)")
    parser.add_argument("--inner", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        ROWS[args.inner[0]](int(args.inner[1]))
        return
    unknown = [row for row in args.rows if row not in ROWS]
    if unknown:
        parser.error(f"no such row: {', '.join(unknown)} (rows: {', '.join(ROWS)})")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: it counts the instructions")
    for row in args.rows or ROWS:
        per_call = (collected(row, LARGE) - collected(row, SMALL)) / (LARGE - SMALL)
        print(f"{row:10} {per_call:10,.0f} instructions a call", flush=True)


if __name__ == "__main__":
    main()
