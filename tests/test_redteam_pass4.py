"""Red team on issue 17's fourth pass: the JavaScript prelude read as byte code
(engines/javascript_bytecode.py) and the Lua round trip's fused paths (flat/flat_call in the
Lua prelude, resume()'s direct scalars, ScriptRun._plain with Tool.kwargs_validator).

Real engines only. Each test says what it attacks; the Lua tests run on each Lua version
(tests/conftest.py: lua_version), the JavaScript ones once.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.engine_driver import drive

pytestmark = pytest.mark.usefixtures("lua_version")


# -- Lua: flat parameters walked while a trusted script's hook calls a tool --------------

# A trusted script's own hook that, once, calls a tool (pcall: a hook cannot yield, so
# the inner call fails) while the prelude walks the outer call's parameters (`flat`).
REENTERED = """local done = false
debug.sethook(function()
  if done or debug.getinfo(2, "n").name ~= "flat" then return end
  local calls = (seen or 0) + 1
  seen = calls
  if calls < {at} then return end
  done = true
  pcall(tools.t, {{z = 1}})
end, "{events}")
local r = tools.t({params})
debug.sethook()
return r
"""


def _reentered(params: str, events: str, at: int = 1, **limits: Any) -> Any:
    source = REENTERED.format(params=params, events=events, at=at)
    return drive("lua", source, tools={"t": lambda p: p}, sandbox="trusted", **limits)


@pytest.mark.parametrize("events", ["r", "c"])
def test_a_tool_called_from_a_hook_during_the_walk_does_not_cut_the_outer_params(
        events: str) -> None:
    """The walk's state (whole, spent) was shared by every call: a call from a return hook
    made a walk that had stopped at a nested value look whole, and the tool got the pairs
    before it ({'a': 1} for {a = 1, b = {1, 2}})."""
    run = _reentered("{a = 1, b = {1, 2}}", events)
    assert run.result == {"a": 1, "b": [1, 2]}


def test_a_tool_called_from_a_hook_during_the_walk_does_not_reset_its_count() -> None:
    """Nor may it reset the outer walk's count of bytes: two 24 MiB values (one string,
    counted twice as the host copies it twice) are past a 32 MiB run's budget, with the hook
    or without."""
    params = "{a = big, b = big}"
    source = "big = string.rep('x', 24 * 1024 * 1024)\n"
    plain = drive("lua", source + f"return tools.t({params})", tools={"t": lambda p: 1},
                  sandbox="trusted", memory_mb=48)
    assert plain.error.code == "resource/memory_exhaustion"
    run = drive("lua", source + REENTERED.format(params=params, events="c", at=2),
                tools={"t": lambda p: 1}, sandbox="trusted", memory_mb=48)
    assert run.error.code == "resource/memory_exhaustion"


# -- JavaScript: the prelude read as byte code ------------------------------------------

# Scripts that reach into the prelude's own functions (a proxy's trap or a getter run by
# the prelude, toJSON, console's toString, the error constructors' getters, a stack
# captured on a plain object, which the stack getter does not clean): what they see must
# not tell the two ways of making the prelude apart.
PRELUDE_PROBES = [
    "function main() { const o = {}; Error.captureStackTrace(o); return o.stack; }",
    "function main() { let s; const p = new Proxy({}, {get() { s = new Error('x').stack;"
    " return 1; }}); tools.add(p); return s; }",
    "function main() { try { tools.add({toJSON() { throw new Error('tj'); }}); }"
    " catch (e) { return e.stack + '|' + e.message; } }",
    "function main() { try { console.log({toString() { throw new Error('ts'); }}); }"
    " catch (e) { return e.stack; } }",
    "function main() { return Object.getOwnPropertyNames(globalThis).map((k) => {"
    " const d = Object.getOwnPropertyDescriptor(globalThis, k);"
    " return k + ':' + typeof d.value + ':' + (d.get ? String(d.get) : ''); }).join('\\n'); }",
    "function main() { return [Object.getOwnPropertyDescriptor(globalThis, 'SpellError').get,"
    " Object.getOwnPropertyDescriptor(Error.prototype, 'stack').get,"
    " Object.getOwnPropertyDescriptor(Error, 'prepareStackTrace').get].map(String)"
    ".join('|'); }",
    "async function main() { try { await tools.nope({}); } catch (e) {"
    " return [e.stack, e.name, e.message, String(e.constructor)].join('|'); } }",
    "function main() { try { new InternalError(); } catch (e) { return e.stack; } }",
    "function main() { const e = new SpellError({category: 'tool', kind: 'timeout',"
    " tool_name: 'x', duration: 2}); return [e.message, e.stack]; }",
    "function main() { try { tools.add(1n); } catch (e) { return e.stack; } }",
    "function main() { return [typeof polyspell$completion, typeof polyspell$setup,"
    " typeof globalThis['polyspell$poll'], 'polyspell$run' in globalThis]; }",
]


def _seen(step: Any) -> Any:
    """What a step says: a result, or its error's code, message, fields and frames."""
    from engines import Finished
    from tests.test_js_bytecode import error_view

    return ("result", step.result, step.output) if isinstance(step, Finished) \
        else (*error_view(step), step.output)


@pytest.mark.parametrize("language", ["javascript"])  # once, not per Lua version
@pytest.mark.parametrize("source", PRELUDE_PROBES)
def test_scripts_that_reach_into_the_prelude_see_the_same_either_way(
        monkeypatch: pytest.MonkeyPatch, source: str, language: str) -> None:
    from engines import javascript_bytecode as bytecode
    from tests.test_js_bytecode import drive as drive_js

    tools = {"add": lambda p: 1}
    read = _seen(drive_js(source, tools=tools))
    monkeypatch.setattr(bytecode, "_lib", False)
    assert _seen(drive_js(source, tools=tools)) == read


FIRST_USE = """
import threading, time
from engines import Finished, Limits
from engines import javascript_bytecode as bytecode
from engines.javascript import JavaScriptEngine

assert not bytecode._codes  # a fresh process: the byte code is made by the first start
barrier = threading.Barrier(12)
results, made = [], []

def work(i):
    barrier.wait()
    engine = JavaScriptEngine(limits=Limits(timeout=5, memory_mb=64))
    step = engine.start("function main() { return args.i * 2; }", "a.js", {"i": i}, [],
                        time.monotonic() + 5)
    results.append(step.result if isinstance(step, Finished) else repr(step))
    made.append(engine)

threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
for engine in made:  # closed on another thread than the one that made it
    engine.close()
print(sorted(results), len(bytecode._codes))
"""


@pytest.mark.parametrize("language", ["javascript"])  # once, not per Lua version
def test_many_engines_starting_at_once_in_a_fresh_process(language: str) -> None:
    # the byte code made while other threads wait for it, each context read on its own
    # thread; a crash (a context used from two threads) would end the process
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", FIRST_USE], capture_output=True, text=True,
                          timeout=60, cwd=root, env={**os.environ, "PYTHONPATH": root})
    assert done.returncode == 0, done.stderr
    from engines import javascript_bytecode as bytecode

    made = 1 if bytecode.prepare() else 0  # the byte code made once, where it can be
    assert done.stdout.strip() == f"{[2 * i for i in range(12)]} {made}"


# -- the fused call: a host's Tool subclass with its own validate or arguments ----------


def _subclassed(cls: type) -> Any:
    import dataclasses

    from host import tool
    from host.tools import TOOL_ATTRIBUTE

    @tool
    def double(n: int) -> int:
        """Doubles."""
        return 2 * n

    base = getattr(double, TOOL_ATTRIBUTE)
    return cls(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})


DOUBLES = {"lua": "return {tools.double{n = 1}, tools.double{n = 2}}",
           "javascript": "async function main() {\n  return [await tools.double({n: 1}),\n"
                         "          await tools.double({n: 2})];\n}\n"}
FILES = {"lua": "agent.lua", "javascript": "agent.js"}


@pytest.mark.parametrize("language", ["lua", "javascript"])
def test_a_tool_subclass_with_its_own_validate_or_arguments_is_honoured(
        language: str) -> None:
    """Tool is public: a host's subclass that overrides validate (to normalise or audit
    parameters) or arguments is called by Tool.invoke, so the fused path must call it too
    (it did before the fused path inlined the model's validator)."""
    from host import Host, Tool

    seen: list[Any] = []

    class Audited(Tool):
        def validate(self, params: Any) -> Any:
            seen.append(dict(params))
            return super().validate({"n": params["n"] * 10})

    class Shifted(Tool):
        def arguments(self, model: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
            return (), {"n": model.n + 100}

    host = Host([_subclassed(Audited)], on_output=lambda line: None)
    assert host.run_source(DOUBLES[language], language, FILES[language]) == [20, 40]
    assert seen == [{"n": 1}, {"n": 2}]
    host = Host([_subclassed(Shifted)], on_output=lambda line: None)
    assert host.run_source(DOUBLES[language], language, FILES[language]) == [202, 204]


@pytest.mark.parametrize("language", ["javascript"])  # once, not per Lua version
@pytest.mark.xfail(strict=True, reason="pre-existing (both ways of making the prelude): the "
                   "prelude cleans `stack` on errors (Error.prototype's getter), but a stack "
                   "captured on a plain object (Error.captureStackTrace(obj)) is quickjs' own "
                   "text: it names the script's file <input> and shows the prelude's frames "
                   "(polyspell$begin, polyspell$run with their lines in the prelude)")
def test_a_stack_captured_on_a_plain_object_names_the_script_and_hides_the_prelude(
        language: str) -> None:
    from tests.test_js_bytecode import result

    stack = result("function main() { const o = {}; Error.captureStackTrace(o);"
                   " return o.stack; }")
    assert "agent.js:1:" in stack
    assert "<input>" not in stack and "polyspell" not in stack
