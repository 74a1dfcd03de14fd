"""Red team of tool calls answered inside the engine's step (``Engine.direct``, issue 17's
ninth pass): hostile scripts that try to have a request read as kind 0 (native ints, no
stash look) while it holds what must be read with care; careless tools (Ctrl-C and other
BaseExceptions, huge errors, StopRun in a tools file); the host loop's duties (recovery
delays, hooks, tools files' state export) that a call answered at once must not skip.

Each attack runs on a host whose tools are plain (answered at once) and on one whose pass-
through layer sends them through the pipeline: both must see the same.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bridge import SpellError, ToolError
from engines import Finished, ToolReply, make_engine
from host import Host, StopRun, tool
from tests.conftest import pick
from tests.test_calls_fused import _seen, passthrough


@tool
def shapes(values: Any) -> list[str]:
    """The Python type of each value a script passed, and its value (strings: length)."""
    return [f"str {len(v)}" if isinstance(v, str) else f"{type(v).__name__} {v!r}"
            for v in values]


@tool
def echo(value: Any) -> Any:
    """Its parameter back, as Python read it."""
    return {"type": type(value).__name__, "value": value}


def both(tools: list[Any], source: str, language: str, filename: str = "attack",
         **options: Any) -> list[Any]:
    """What a run of ``source`` answers (or the error the host sees) with plain tools,
    then with the same tools through the pipeline."""
    seen = []
    for layers in ([], [passthrough]):
        try:  # (a tools file that fails to load fails the host's making)
            host = Host(tools, on_output=lambda line: None, layers=layers, **options)
            seen.append(repr(host.run_source(source, language, filename)))
        except SpellError as err:
            seen.append(_seen(err))
    return seen


# -- kind 0 vs kind 5: data Python must read with care ------------------------------

WARM = "await tools.shapes({values: [1]});\n"  # the tool's first call takes the pipeline

CAREFUL = {
    "proxy_prototype_trap": """
  const p = new Proxy({values: [2 ** 60, 1]}, {getPrototypeOf() { return Object.prototype; }});
  return await tools.shapes(p);""",
    "proxy_get_trap": """
  const p = new Proxy({}, {get(t, k) { return k === "values" ? [2 ** 60 + 2 ** 10] : undefined; },
    ownKeys() { return ["values"]; },
    getOwnPropertyDescriptor() { return {value: 1, enumerable: true, configurable: true}; }});
  return await tools.shapes(p);""",
    "getter": """
  const o = {get values() { return [-(2 ** 55)]; }};
  return await tools.shapes(o);""",
    "to_json_number": """
  return await tools.shapes({values: [{toJSON() { return 2 ** 62; }}]});""",
    "to_json_nested_request": """
  let inner;
  const o = {values: [{toJSON() { inner = tools.shapes({values: [2 ** 58]}); return 1; }}]};
  const outer = await tools.shapes(o);
  return [outer, await inner];""",
    "nested_request_big_outer_small": """
  let inner;
  const o = {values: [2 ** 57, {toJSON() { inner = tools.shapes({values: [3]}); return 1; }}]};
  const outer = await tools.shapes(o);
  return [outer, await inner];""",
    "typed_array": """
  return await tools.shapes({values: Array.from(new Float64Array([2 ** 60, 1]))});""",
    "typed_array_itself": """
  return await tools.echo({value: new Float64Array([2 ** 60, 1])});""",
    "sparse_array": """
  const a = []; a[3] = 2 ** 59;
  return await tools.shapes({values: a});""",
    "number_object_nested": """
  return await tools.shapes({values: [[new Number(2 ** 60)]]});""",
    "array_of_15_numbers": """
  return await tools.shapes({values: Array.from({length: 15}, (_, i) => 2 ** 54 + i * 2)});""",
    "array_of_16_numbers": """
  return await tools.shapes({values: Array.from({length: 16}, (_, i) => 2 ** 54 + i * 2)});""",
    "promise_all_one_careful": """
  return await Promise.all([tools.shapes({values: [1]}), tools.shapes({values: [2 ** 60]}),
                            tools.shapes({values: ["y".repeat(5000)]})]);""",
    "queued_across_polls": """
  const first = tools.shapes({values: [2 ** 60]});
  await null; await null;
  const second = tools.shapes({values: [5]});
  return [await first, await second];""",
    "long_string_key": """
  const o = {}; o["k".repeat(5000)] = 2 ** 60;
  return await tools.echo({value: o});""",
    "long_string_nested": """
  return await tools.echo({value: {a: {b: ["z".repeat(9000)]}}});""",
    "mark_lookalike": """
  return await tools.echo({value: "\\u0000" + "0" + "\\u0000" + "x".repeat(3)});""",
    "bigint": """
  try { return await tools.echo({value: 10n ** 20n}); } catch (e) { return e.code; }""",
    "lone_surrogate": """
  try { return await tools.echo({value: "a\\ud800b"}); } catch (e) { return e.code; }""",
    "lone_surrogate_long": """
  try { return await tools.echo({value: "\\ud800" + "b".repeat(9000)}); }
  catch (e) { return e.code; }""",
    "params_to_json_scalars": """
  const out = [];
  for (const v of [5, 2 ** 60, "s", null, [2 ** 60], "q".repeat(9000)]) {
    try { out.push(await tools.echo({toJSON() { return v; }})); } catch (e) { out.push(e.code); }
  }
  return out;""",
    # a Number object disguised as a plain object (its prototype set to Object.prototype):
    # JSON.stringify still writes its valueOf() as a number, which check never sees
    "number_object_disguised": """
  const n = new Number(5); Object.setPrototypeOf(n, Object.prototype);
  n.valueOf = () => 2 ** 60;
  return await tools.shapes({values: [n, 1]});""",
    "number_object_disguised_to_string": """
  const n = new Number(5); Object.setPrototypeOf(n, Object.prototype);
  n.toString = () => "1152921504606846976"; n.valueOf = undefined;
  return await tools.shapes({values: [n]});""",
    "number_object_disguised_object_prototype_value_of": """
  const n = new Number(5); Object.setPrototypeOf(n, Object.prototype);
  const own = Object.prototype.valueOf;
  Object.prototype.valueOf = function () { return this === n ? -(2 ** 58) : own.call(this); };
  try { return await tools.shapes({values: [n]}); } finally { Object.prototype.valueOf = own; }""",
    "number_object_disguised_to_primitive": """
  const n = new Number(5); Object.setPrototypeOf(n, Object.prototype);
  n[Symbol.toPrimitive] = () => 2 ** 56 + 8; n[Symbol.toStringTag] = "Object";
  return await tools.shapes({values: [{deep: [n]}]});""",
    "string_object_disguised_long": """
  const s = new String("a"); Object.setPrototypeOf(s, Object.prototype);
  s.toString = () => "w".repeat(20000) + (2 ** 60);
  return await tools.shapes({values: [s, 2 ** 53 + 2]});""",
    "result_to_json_request": """
  return {toJSON() { tools.shapes({values: [2 ** 60]}); return 1; }};""",
}


@pytest.mark.parametrize("attack", sorted(CAREFUL))
def test_js_data_read_at_once_is_what_the_pipeline_reads(attack: str) -> None:
    source = "async function main() {\n" + WARM + CAREFUL[attack] + "\n}\n"
    seen = both([shapes, echo], source, "javascript", "care.js")
    assert seen[0] == seen[1]
    for digits in re.findall(r"(?<![\d.])-?\d{16,}(?![\d.e])", str(seen[0])):  # as ints
        assert abs(int(digits)) <= 2**53, (attack, seen[0])


# -- careless tools: what a tool raises inside a call answered at once ---------------


class Odd(BaseException):
    """A BaseException of a tool's own (not Exception, not KeyboardInterrupt)."""


RAISED: dict[str, BaseException] = {
    "keyboard": KeyboardInterrupt(), "exit": SystemExit(3), "generator": GeneratorExit(),
    "odd": Odd("odd"), "stop_iteration": StopIteration(), "recursion": RecursionError("deep"),
    "memory": MemoryError(), "huge": ToolError.ExecutionFailed(tool_name="boom",
                                                               reason="r" * 3_000_000),
}


@tool
def boom(what: str) -> int:
    """Raises what RAISED names (its first call, ``none``, answers 0)."""
    if what == "none":
        return 0
    raise RAISED[what]


def run_both(tools: list[Any], source: str, language: str, **options: Any) -> list[Any]:
    """``both``, with any BaseException out of the run as its class name."""
    seen = []
    for layers in ([], [passthrough]):
        host = Host(tools, on_output=lambda line: None, layers=layers, **options)
        try:
            seen.append(repr(host.run_source(source, language, "careless")))
        except SpellError as err:
            seen.append(_seen(err))
        except BaseException as exc:  # what left the run is the point
            seen.append(type(exc).__name__)
    return seen


@pytest.mark.parametrize("what", sorted(RAISED))
def test_what_a_tool_raises_in_a_call_answered_at_once_is_what_the_pipeline_makes_of_it(
        language: str, what: str) -> None:
    source = pick(language,
                  f"tools.boom{{what = 'none'}}\n"
                  f"local ok, e = pcall(tools.boom, {{what = '{what}'}})\n"
                  "return {ok, e and e.code, e and #tostring(e.message)}",
                  f"async function main() {{ await tools.boom({{what: 'none'}});\n"
                  f"  try {{ await tools.boom({{what: '{what}'}}); return 'ran on'; }}\n"
                  "  catch (e) { return [e.code, e.message.length]; } }")
    seen = run_both([boom], source, language)
    assert seen[0] == seen[1], what
    if what == "keyboard":
        assert seen[0] == "KeyboardInterrupt"


# -- the host loop's duties -----------------------------------------------------------


def _flaky(calls: list[float]) -> Any:
    """A tool that fails with a retryable error three times (its first call, outside the
    retry, warms it), noting when it was called."""

    @tool
    def flaky() -> str:
        """Fails with a retryable error three times."""
        calls.append(time.monotonic())
        if len(calls) <= 3:
            raise ConnectionResetError(f"failure {len(calls)}")
        return f"ok after {len(calls)}"

    return flaky


def test_script_recovery_waits_its_delays_for_calls_answered_at_once(language: str) -> None:
    for layers in ([], [passthrough]):
        calls: list[float] = []
        flaky = _flaky(calls)
        host = Host([flaky], on_output=lambda line: None, layers=layers)
        source = pick(language,
                      "pcall(tools.flaky, {})\nreturn recovery.retry(function() return "
                      "tools.flaky{} end, {attempts = 3, backoff = 'fixed', initial = 0.2, "
                      "jitter = 0})",
                      "async function main() { try { await tools.flaky({}); } catch (e) {}\n"
                      "  return await recovery.retry(() => tools.flaky({}), {attempts: 3, "
                      "backoff: 'fixed', initial: 0.2, jitter: 0}); }")
        assert host.run_source(source, language, "retry") == "ok after 4"
        assert calls[2] - calls[1] >= 0.2 and calls[3] - calls[2] >= 0.2, (layers, calls)


def test_a_call_answered_at_once_past_the_deadline_does_not_run_the_script_on(
        language: str) -> None:
    """The tool itself takes the run past its deadline: the script's next line never runs
    (nothing printed), on either path."""
    printed: list[list[str]] = [[], []]
    for i, layers in enumerate(([], [passthrough])):
        @tool
        def slow(s: float) -> int:
            """Sleeps ``s`` seconds."""
            time.sleep(s)
            return 1

        host = Host([slow], on_output=printed[i].append, layers=layers, timeout=0.5)
        source = pick(language,
                      "tools.slow{s = 0}\ntools.slow{s = 0.7}\nprint('ran on')\n"
                      "while true do end",
                      "async function main() { await tools.slow({s: 0});\n"
                      "await tools.slow({s: 0.7}); console.log('ran on'); while (true) {} }")
        started = time.monotonic()
        with pytest.raises(SpellError) as caught:
            host.run_source(source, language, "late")
        assert caught.value.fields.get("resource_type") == "time", caught.value
        assert time.monotonic() - started < 5
    assert printed == [[], []]


def _stop_at(calls: list[int]) -> Any:
    """A tool that stops the run at its third call."""

    @tool
    def stop_at(n: int) -> int:
        """Stops the run at its third call."""
        calls.append(n)
        if n == 3:
            raise StopRun({"stopped": n})
        return n

    return stop_at


def test_a_stop_run_in_a_tools_file_function_answered_at_once_ends_the_run(
        language: str, tmp_path: Path) -> None:
    (tmp_path / "lib.lua").write_text(
        "return {f = function(p)\n  for i = 1, 5 do tools.stop_at{n = i} end\n"
        "  return 'file ran on'\nend}\n")
    (tmp_path / "lib.js").write_text(
        "exports.f = async function (p) {\n"
        "  for (let i = 1; i <= 5; i++) await tools.stop_at({n: i});\n"
        "  return 'file ran on';\n};\n")
    calls: list[list[int]] = [[], []]
    results = []
    for i, layers in enumerate(([], [passthrough])):
        stop_at = _stop_at(calls[i])
        lib = tmp_path / pick(language, "lib.js", "lib.lua")
        host = Host([stop_at, lib], on_output=lambda line: None, layers=layers)
        results.append(host.run_source(
            pick(language, "local r = tools.f{}\nreturn 'script ran on'",
                 "async function main() { await tools.f({}); return 'script ran on'; }"),
            language, "main"))
    assert results == [{"stopped": 3}] * 2
    assert calls == [[1, 2, 3]] * 2


def test_a_tools_file_reentering_itself_calls_plain_tools_alike(
        language: str, tmp_path: Path) -> None:
    (tmp_path / "lib.lua").write_text(
        "local M = {}\nfunction M.g(p) return tools.echo{value = p.n} end\n"
        "function M.f(p)\n  local a = tools.echo{value = 1}\n  local b = tools.g{n = p.n}\n"
        "  local c = tools.echo{value = 3}\n"
        "  if p.n < 3 then return {a, b, c, tools.f{n = p.n + 1}} end\n  return {a, b, c}\nend\n"
        "return M\n")
    (tmp_path / "lib.js").write_text(
        "exports.g = async function (p) { return await tools.echo({value: p.n}); };\n"
        "exports.f = async function (p) {\n  const a = await tools.echo({value: 1});\n"
        "  const b = await tools.g({n: p.n});\n  const c = await tools.echo({value: 3});\n"
        "  if (p.n < 3) return [a, b, c, await tools.f({n: p.n + 1})];\n  return [a, b, c];\n};\n")
    lib = tmp_path / pick(language, "lib.js", "lib.lua")
    seen = both([echo, lib], pick(language, "tools.echo{value = 0}\nreturn tools.f{n = 1}",
                                  "async function main() { await tools.echo({value: 0});\n"
                                  "return await tools.f({n: 1}); }"), language)
    assert seen[0] == seen[1]
    assert "'value': 3" in seen[0]


def test_a_tools_file_state_export_calling_a_plain_tool_is_refused_alike(
        language: str, tmp_path: Path) -> None:
    """polyspell_state runs outside the host's loop: a tool call there is refused (not
    answered at once by a loop that still runs the file's engine)."""
    (tmp_path / "lib.lua").write_text(
        "local n = 0\nlocal M = {}\nfunction M.f(p) n = n + tools.echo{value = 1}.value\n"
        "  return n end\n"
        "function M.polyspell_state() return {n = tools.echo{value = n}.value} end\n"
        "function M.polyspell_restore(s) n = s.n end\nreturn M\n")
    (tmp_path / "lib.js").write_text(
        "let n = 0;\nexports.f = async function (p) { n += (await tools.echo({value: 1})).value;"
        " return n; };\n"
        "exports.polyspell_state = async function () {"
        " return {n: (await tools.echo({value: n})).value}; };\n"
        "exports.polyspell_restore = function (s) { n = s.n; };\n")
    lib = tmp_path / pick(language, "lib.js", "lib.lua")
    source = pick(language, "tools.echo{value = 0}\nlocal a = tools.f{}\nreturn {a, tools.f{}}",
                  "async function main() { await tools.echo({value: 0});\n"
                  "const a = await tools.f({}); return [a, await tools.f({})]; }")
    seen = both([echo, lib], source, language, recovery={"f": {"restart": {"state": "keep"}}})
    assert seen[0] == seen[1]


# -- never outlive limits: memory per call --------------------------------------------


def test_calls_answered_at_once_leave_nothing_behind_per_call(language: str) -> None:
    """A loop of calls answered at once keeps no record per call: owners, waiting ids,
    call sites, and the engine's memory stay flat."""
    engine = make_engine(language)
    engine.direct = lambda request: ToolReply(request.id, request.params["n"] + 1)
    source = pick(language,
                  "local n = 0\nfor i = 1, args.times do n = tools.inc{n = n} end\n"
                  "return {n = n, mem = collectgarbage('count')}",
                  "async function main(args) { let n = 0;\n"
                  "  for (let i = 0; i < args.times; i++) n = await tools.inc({n});\n"
                  "  return {n}; }")
    try:
        step = engine.start(source, "loop", {"times": 20000}, [], time.monotonic() + 30)
        assert isinstance(step, Finished), step
        assert step.result["n"] == 20000
        for name in ("_owners", "_waiting"):
            assert len(getattr(engine, name, ())) == 0, name
        assert len(getattr(engine, "_sites", {})) <= 2  # (the first call's stack differs)
    finally:
        engine.close()


def _step(calls: list[int], returned: threading.Event) -> Any:
    """A tool whose second call sleeps 0.6 s."""

    @tool
    def step(n: int) -> int:
        """Its second call sleeps 0.6 s."""
        calls.append(n)
        if n == 2:
            time.sleep(0.6)
            returned.set()
        return n

    return step


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # (the engine's side is the point)
async def test_a_run_given_up_during_a_call_answered_at_once_runs_no_further(
        language: str) -> None:
    """The host gives up on the run (its caller's timeout) while a plain tool answered at
    once runs: once the tool returns, the script runs no further (no more tool calls, no
    lines printed), as when the host's loop took the call."""
    import anyio

    for layers in ([], [passthrough]):
        calls: list[int] = []
        printed: list[str] = []
        returned = threading.Event()
        step = _step(calls, returned)
        host = Host([step], on_output=printed.append, layers=layers, timeout=20)
        run = host.new_run_source(pick(language,
                                       "for i = 1, 10 do tools.step{n = i}\n"
                                       "print('after', i) end",
                                       "async function main() { for (let i = 1; i <= 10; i++)"
                                       " { await tools.step({n: i});\n"
                                       "console.log('after', i); } }"),
                                  language, "given_up")
        with anyio.move_on_after(0.3):
            await run.execute()
        await anyio.to_thread.run_sync(returned.wait, 5)
        await anyio.sleep(0.3)
        assert calls == [1, 2], (layers, calls)
        assert len(printed) <= 1, (layers, printed)  # "after 1" at most


def test_a_restored_tools_file_calling_a_plain_tool_is_seen_alike(
        language: str, tmp_path: Path) -> None:
    """polyspell_restore (after a restart) and the reload's load run outside the host's
    loop: a plain tool call there is handled alike on both paths."""
    (tmp_path / "lib.lua").write_text(
        "local n = 0\nlocal M = {}\n"
        "function M.f(p)\n  n = n + tools.echo{value = 1}.value\n"
        "  if p.blow and tools.ticket{} <= 1 then\n"
        "    HOG = {}\n    for i = 1, 1e9 do HOG[i] = string.rep('x', 64) .. i end\n"
        "  end\n  return n\nend\n"
        "function M.polyspell_state() return {n = n} end\n"
        "function M.polyspell_restore(s)\n  local ok, e = pcall(tools.echo, {value = s.n})\n"
        "  n = ok and e.value or -100\nend\nreturn M\n")
    (tmp_path / "lib.js").write_text(
        "let n = 0;\nexports.f = async function (p) {\n"
        "  n += (await tools.echo({value: 1})).value;\n"
        "  if (p.blow && await tools.ticket({}) <= 1) { globalThis.hog = [];"
        " for (let i = 0; i < 1e9; i++) globalThis.hog.push('x'.repeat(64) + i); }\n"
        "  return n;\n};\n"
        "exports.polyspell_state = function () { return {n}; };\n"
        "exports.polyspell_restore = function (s) {\n"
        "  try { tools.echo({value: s.n}).then(() => {}, () => {}); } catch (e) {}\n"
        "  n = s.n; };\n")
    issued: list[int] = []

    @tool
    def ticket() -> int:
        """Numbers its calls."""
        issued.append(1)
        return len(issued)

    lib = tmp_path / pick(language, "lib.js", "lib.lua")
    source = pick(language, "tools.echo{value = 0}\nlocal a = tools.f{}\n"
                  "local ok, b = pcall(tools.f, {blow = true})\n"
                  "return {a, ok and b or b.code, tools.f{}}",
                  "async function main() { await tools.echo({value: 0});\n"
                  "const a = await tools.f({}); let b;\n"
                  "try { b = await tools.f({blow: true}); } catch (e) { b = e.code; }\n"
                  "return [a, b, await tools.f({})]; }")
    seen = []
    for layers in ([], [passthrough]):
        issued.clear()
        host = Host([echo, ticket, lib], on_output=lambda line: None, layers=layers,
                    memory_mb=16, recovery={"f": {"restart": {"state": "keep"}}})
        try:
            seen.append(repr(host.run_source(source, language, "restored")))
        except SpellError as err:
            seen.append(_seen(err))
        assert len(issued) == 1  # the blown call's ticket: the file restarted once
    assert seen[0] == seen[1]
    # a restore that calls a tool (even inside pcall, or without awaiting it) is refused:
    # the reload fails, with no call answered at once by the loop of the call in progress
    assert "polyspell_restore failed to take back the state it kept: it called a tool" \
        in str(seen[0]), seen[0]


def test_the_tool_depth_limit_holds_with_calls_answered_at_once(
        language: str, tmp_path: Path) -> None:
    (tmp_path / "lib.lua").write_text(
        "return {down = function(p)\n  tools.echo{value = p.n}\n"
        "  return tools.down{n = p.n + 1}\nend}\n")
    (tmp_path / "lib.js").write_text(
        "exports.down = async function (p) {\n  await tools.echo({value: p.n});\n"
        "  return await tools.down({n: p.n + 1});\n};\n")
    lib = tmp_path / pick(language, "lib.js", "lib.lua")
    seen = both([echo, lib], pick(language, "tools.echo{value = 0}\nreturn tools.down{n = 0}",
                                  "async function main() { await tools.echo({value: 0});\n"
                                  "return await tools.down({n: 0}); }"), language,
                memory_mb=64)
    assert seen[0] == seen[1]
    assert seen[0]["chain"][-1][2].get("limit") == 64 or "64" in str(seen[0]), seen[0]


def test_calls_of_a_process_isolated_run_are_answered_alike(language: str) -> None:
    """A worker process's engine has no host loop of its own to answer at once from: its
    tool calls still come back to the host, in order, with their errors at the line."""
    source = pick(language, "tools.echo{value = 0}\nlocal r = {}\n"
                  "for i = 1, 50 do r[i] = tools.echo{value = i}.value end\n"
                  "local ok, e = pcall(tools.boom, {what = 'odd'})\nreturn {r[50], e.code}",
                  "async function main() { await tools.echo({value: 0}); let r;\n"
                  "for (let i = 1; i <= 50; i++) r = (await tools.echo({value: i})).value;\n"
                  "try { await tools.boom({what: 'odd'}); } catch (e) { return [r, e.code]; } }")
    with Host([echo, boom], isolation="process", on_output=lambda line: None) as host:
        assert host.run_source(source, language, "iso") == [50, "tool/execution_failed"]


def test_a_host_with_tool_hooks_or_a_monitor_answers_nothing_at_once_and_output_hooks_hold(
        language: str) -> None:
    """A tool-call observer (or a monitor, or run_finished's counts) puts a layer on each
    tool: no call is plain, none is answered at once, each is seen; an output observer
    alone adds none, and still sees each line."""
    import anyio

    from host import hooks

    source = pick(language,
                  "local n = 0\nfor i = 1, 5 do n = tools.inc{n = n} end\nprint('n', n)\n"
                  "n = tools.inc{n = n}\nreturn n",
                  "async function main() { let n = 0;\n"
                  "for (let i = 0; i < 5; i++) n = await tools.inc({n});\n"
                  "console.log('n', n); return await tools.inc({n}); }")
    seen: list[str] = []

    @tool
    def inc(n: int) -> int:
        """Adds one."""
        seen.append(f"inc {n}")
        return n + 1

    @hooks.observer("tool_call_finished")
    def finished(ctx: Any) -> None:
        seen.append(f"hook {ctx.tool}")

    @hooks.observer("output")
    def output(ctx: Any) -> None:
        seen.append("line")

    for options, plain in (({"hooks": [finished]}, False), ({"monitor": True}, False),
                           ({"hooks": [output]}, True)):
        seen.clear()
        host = Host([inc], on_output=lambda line: None, **options)
        run = host.new_run_source(source, language, "hooked")
        assert anyio.run(run.execute) == 6
        assert bool(run._plain_tools) is plain, options
        assert host.hooks.flush(10)  # (observers run on the host's observer thread)
        if options.get("hooks") == [finished]:
            assert seen.count("hook inc") == 6, seen
        if plain:
            assert seen.count("line") == 1, seen  # (on its thread: in order only there)


@pytest.mark.parametrize("how", ["called", "chained"])
def test_a_tools_file_calling_a_plain_tool_at_load_is_refused_alike(
        language: str, tmp_path: Path, how: str) -> None:
    """A tools file loads outside the host's loop (its engine has no direct answer then):
    a call at its top level is refused, on both paths, even when the tool is plain and
    was called before, and when it is chained to run after the file's code (JS), or
    caught (Lua's pcall)."""
    lua_top = {"called": "local got = tools.echo{value = 1}\n",
               "chained": "local ok = pcall(tools.echo, {value = 1})\n"}[how]
    js_top = {"called": "tools.echo({value: 1});\n",
              "chained": "const later = Promise.resolve().then(() => tools.echo({value: 1}));\n"
                         "later.catch(() => {});\n"}[how]
    (tmp_path / "lib.lua").write_text(lua_top + "return {f = function(p) return 7 end}\n")
    (tmp_path / "lib.js").write_text(js_top + "exports.f = async function (p) { return 7; };\n")
    lib = tmp_path / pick(language, "lib.js", "lib.lua")
    seen = both([echo, lib], pick(language, "tools.echo{value = 0}\nreturn tools.f{}",
                                  "async function main() { await tools.echo({value: 0});\n"
                                  "return await tools.f({}); }"), language)
    assert seen[0] == seen[1]
    assert "it calls the tool 'echo' while loading" in str(seen[0]), seen[0]


@tool
def ask(q: str) -> str:
    """Asks a person ``q`` (AskHuman)."""
    from host import AskHuman

    raise AskHuman(q)


@pytest.mark.parametrize("human", ["answers", "fails", "none", "slow"])
def test_ask_human_from_a_call_answered_at_once_is_seen_alike(language: str, human: str) -> None:
    """A plain tool's AskHuman waits for the person inside the engine's step: the answer,
    the failure, no one to ask, and a person slower than the run's deadline (the run ends
    at the deadline, not when they answer) are what the pipeline makes of them."""
    def answers(question: str) -> str:
        return "yes to " + question

    def fails(question: str) -> str:
        raise RuntimeError("no idea")

    def slow(question: str) -> str:
        if question == "go?":  # (the first question warms the tool: answered at once next)
            time.sleep(1.5)
        return "late"

    on_human_input = {"answers": answers, "fails": fails, "none": None, "slow": slow}[human]
    source = pick(language, "tools.ask{q = 'warm'}\nreturn tools.ask{q = 'go?'}",
                  "async function main() { await tools.ask({q: 'warm'});\n"
                  "return await tools.ask({q: 'go?'}); }")
    seen = []
    for layers in ([], [passthrough]):
        host = Host([ask], on_output=lambda line: None, layers=layers,
                    on_human_input=on_human_input, timeout=0.6 if human == "slow" else 10)
        started = time.monotonic()
        try:
            seen.append(repr(host.run_source(source, language, "asks")))
        except SpellError as err:
            seen.append(_seen(err))
        assert time.monotonic() - started < (1.3 if human == "slow" else 10), human
    if human == "slow":  # the deadline's error (its time fields differ)
        assert seen[0]["chain"][0][0] == seen[1]["chain"][0][0], seen
        assert seen[0]["chain"][0][2].get("resource_type") == "time", seen[0]
    else:
        assert seen[0] == seen[1]


# -- the red team's doubt, fixed after: a Number object holding NaN or Infinity ---------

@tool
def shown(v: Any) -> str:
    """What a script passed, as Python shows it."""
    return repr(v)


@pytest.mark.parametrize(("expression", "expected"), [
    ("new Number(NaN)", "params.v is NaN"),
    ("[1, new Number(-Infinity)]", "params.v[1] is -Infinity"),
    ("(() => { const n = new Number(1); n.valueOf = () => Infinity; return n; })()",
     "params.v is Infinity"),
])
def test_a_number_object_without_a_json_form_is_refused_as_a_bare_one(expression: str,
                                                                      expected: str) -> None:
    """JSON.stringify writes a Number object as its valueOf's number, NaN as null: the
    check now makes that number itself (valueOf runs once, as JSON runs it) and refuses
    what has no JSON form, in the parameters and in a result, as a bare NaN is."""
    host = Host([shown], on_output=lambda line: None)
    with pytest.raises(ToolError.InvalidParameters) as caught:
        host.run_source("async function main() { return await tools.shown({v: "
                        f"{expression}}}); }}", "javascript", "boxed.js")
    assert expected in caught.value.message
    with pytest.raises(SpellError) as result:
        host.run_source(f"async function main() {{ return {{v: {expression}}}; }}",
                        "javascript", "boxed.js")
    assert expected.replace("params", "result") in result.value.message


def test_a_number_object_is_read_once_and_what_is_not_one_crosses_as_before() -> None:
    host = Host([shown], on_output=lambda line: None)
    source = """
async function main() {
  let asked = 0;
  const n = new Number(1);
  n.valueOf = () => { asked += 1; return 7; };
  const fine = await tools.shown({v: [n, new Number(2), Object.create(Number.prototype)]});
  return [fine, asked];
}
"""
    assert host.run_source(source, "javascript", "once.js") == ["[7, 2, {}]", 1]
