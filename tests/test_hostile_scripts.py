"""A hostile script must not freeze its host: after the time limit, Python runs on.

Once quickjs' time limit has fired, the binding turns the error into Python values with no
limit and the GIL held; any script code run then (a replaced method, a getter) would hang
the whole process. Each case runs in a subprocess whose main thread must keep ticking.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WATCH = """
import sys, threading, time
from host import Host
ticks = []
def tick():
    while True:
        ticks.append(time.monotonic())
        time.sleep(0.05)
threading.Thread(target=tick, daemon=True).start()
try:
    Host(timeout=0.5, on_output=lambda line: None).run_source(sys.argv[1], "js", "hostile.js")
except Exception as exc:
    print(exc.code)
time.sleep(0.5)
print(sum(1 for t in ticks if t > time.monotonic() - 0.5))
"""
HOSTILE = {
    "join": "Array.prototype.join = () => { while (true) {} }; while (true) {}",
    "split_hook": "String.prototype[Symbol.split] = () => { while (true) {} }; while (true) {}",
    "replace_hook": "RegExp.prototype[Symbol.replace] = () => { while (true) {} };\n"
                    "String.prototype.replace = () => { while (true) {} }; while (true) {}",
    "call": "Function.prototype.call = () => { while (true) {} }; while (true) {}",
    "error_to_string": "Error.prototype.toString = () => { while (true) {} }; while (true) {}",
    "error_name": 'Object.defineProperty(Error.prototype, "name", '
                  "{get() { while (true) {} }}); while (true) {}",
    # ToString of the interrupt error looks up Symbol.toPrimitive along the whole chain
    "object_to_primitive": "Object.prototype[Symbol.toPrimitive] = function () "
                           "{ for (;;) {} }; for (;;) {}",
    "error_to_primitive": "Error.prototype[Symbol.toPrimitive] = function () "
                          "{ for (;;) {} }; for (;;) {}",
    "object_value_of": "Object.prototype.valueOf = function () { for (;;) {} }; for (;;) {}",
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_the_host_runs_on_after_a_hostile_script_hits_the_time_limit(case):
    out = subprocess.run([sys.executable, "-c", WATCH, HOSTILE[case]], capture_output=True,
                         text=True, timeout=30, cwd=ROOT)
    code, ticks = out.stdout.split()
    assert code == "script/resource_exhaustion"
    assert int(ticks) >= 5  # the main thread ran while the engine's thread was stopped


def test_scripts_cannot_take_over_the_interrupt_errors_text():
    from bridge import ScriptError
    from host import Host

    with pytest.raises(ScriptError.Javascript, match="TypeError"):
        Host(on_output=lambda line: None).run_source(
            'Object.defineProperty(InternalError.prototype, "toString", {value: () => 1});',
            "js", "take.js")
