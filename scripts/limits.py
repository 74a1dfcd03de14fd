"""Measure what a hostile script does to its host, in each isolation mode.

    python scripts/limits.py                       # thread mode, every case
    python scripts/limits.py --isolation process   # engines in worker processes
    python scripts/limits.py --only lua_find --json

For each case: how long until the run failed (the deadline is 1 s), with which error, how
much CPU the host and its worker processes burned from 1 to 3 s after (a thread that
could not be stopped keeps burning it; a killed worker's replacement has started by then),
and how much the host's own memory grew. The
README's "Known limits" quotes these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge import SpellError
from host import Host

DEADLINE = 1.0
CASES: dict[str, tuple[str, str, str]] = {  # name: (language, sandbox, source)
    # one long C call the count hook cannot interrupt (about 45 s here, run alone)
    "lua_find": ("lua", "constrained", 'return string.rep("a", 600):find(".-.-.-b")'),
    # quickjs counts its limit in process CPU time: a busy loop past its deadline
    "js_loop": ("javascript", "constrained", "while (true) {}"),
    # Lua runs finalizers with hooks off: a finalizer that never returns
    "lua_finalizer": ("lua", "trusted",
                      "setmetatable({}, {__gc = function() while true do end end})\n"
                      "collectgarbage()\nreturn 1"),
    # one 1 MB string referenced 3,000 times: 3 GB once copied out one by one
    "lua_big_result": ("lua", "constrained",
                       'local s = string.rep("x", 1000000)\nlocal t = {}\n'
                       "for i = 1, 3000 do t[i] = s end\nreturn t"),
    "js_big_result": ("javascript", "constrained",
                      'async function main() { const s = "x".repeat(1000000);\n'
                      "  return Array(3000).fill(s); }"),
}


def cpu_seconds() -> float:
    """CPU seconds of this process and of every process it started, living now."""
    total = time.process_time()
    me = os.getpid()
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:  # ppid
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def measure(name: str, isolation: str) -> dict[str, object]:
    language, sandbox, source = CASES[name]
    options = {} if isolation == "thread" else {"isolation": isolation}
    host = Host(on_output=lambda line: None, sandbox=sandbox, timeout=DEADLINE, **options)
    host.run_source("return 1", "lua")  # start-up (a worker ready, the engine imported)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    began = time.monotonic()
    try:
        host.run_source(source, language, f"{name}.{'lua' if language == 'lua' else 'js'}")
        code = "finished"
    except SpellError as err:
        code = err.code
    failed_after = time.monotonic() - began
    time.sleep(1.0)  # a killed worker's replacement starts meanwhile
    cpu = cpu_seconds()
    time.sleep(2.0)
    burned = cpu_seconds() - cpu
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    close = getattr(host, "close", None)
    if close is not None:
        close()
    return {"case": name, "isolation": isolation, "error": code,
            "failed_after_s": round(failed_after, 2),
            "cpu_1_to_3s_after": round(burned, 2), "host_rss_growth_mb": round(grew / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--isolation", default="thread", choices=["thread", "process"])
    parser.add_argument("--only", choices=sorted(CASES), action="append")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    options = parser.parse_args()
    for name in options.only or list(CASES):
        # each case in a process of its own: a case that leaves a thread burning, or a
        # grown heap, must not colour the next
        if len(options.only or CASES) > 1:
            import subprocess

            args = [sys.executable, __file__, "--isolation", options.isolation, "--only",
                    name, *(["--json"] if options.json else [])]
            subprocess.run(args, check=False)
            continue
        row = measure(name, options.isolation)
        if options.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"{row['case']:15} {row['isolation']:8} {row['error']:34} failed after "
                  f"{row['failed_after_s']:5} s, CPU 1 to 3 s after {row['cpu_1_to_3s_after']:5}"
                  f" s, host memory +{row['host_rss_growth_mb']} MB", flush=True)


if __name__ == "__main__":
    main()
