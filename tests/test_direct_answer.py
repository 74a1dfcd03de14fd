"""Tool calls the host answers at once, inside the engine's step (``Engine.direct``).

An engine offers the host each tool call made alone with nothing printed before it; a
reply is delivered right there and the script runs on, with no step through the host's
loop (issue 17: that round cost more than the call). Engine-level tests check the
contract on real engines; host-level tests check that a plain tool's call answered so is
the same, to the script and to the host, as through the pipeline, and that what the
host's loop does between steps (printing, stopping, refusing a tools file's calls at
load) still happens.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import pytest

from bridge import AsyncExecutionError, SpellError, ToolError
from bridge.envelope import error_envelope
from engines import Failed, Finished, Suspended, ToolReply, ToolRequest, make_engine
from host import Host, StopRun, tool
from tests.conftest import pick
from tests.test_calls_fused import (
    CALLS,
    FILE_CALLS,
    _files_hosts,
    _seen,
    fused,
    passthrough,
    pipelined,
)

LOOP = {  # inc three times, print, inc once more, then ask for "other"
    "lua": """
local n = 0
for i = 1, 3 do n = tools.inc{n = n} end
print("after three", n)
n = tools.inc{n = n}
local ok, e = pcall(tools.inc, {n = -1})
return {n = n, other = tools.other{}, caught = e.code}
""",
    "javascript": """
async function main() {
  let n = 0;
  for (let i = 0; i < 3; i++) n = await tools.inc({n});
  console.log("after three", n);
  n = await tools.inc({n});
  let caught = null;
  try { await tools.inc({n: -1}); } catch (e) { caught = e.code; }
  return {n, other: await tools.other({}), caught};
}
""",
}


class Direct:
    """A host's direct answer, for an engine driven by hand: answers ``inc`` (an error
    for a negative n), leaves everything else to the step."""

    def __init__(self) -> None:
        self.offered: list[ToolRequest] = []

    def __call__(self, request: ToolRequest) -> ToolReply | None:
        self.offered.append(request)
        if request.tool != "inc":
            return None
        n = request.params["n"]
        if n < 0:
            err = ToolError.ExecutionFailed(tool_name="inc", reason="negative")
            return ToolReply(request.id, error=error_envelope(err))
        return ToolReply(request.id, n + 1)


def test_an_engine_runs_on_through_the_calls_the_host_answers_at_once(language: str) -> None:
    engine = make_engine(language)
    direct = engine.direct = Direct()
    try:
        deadline = time.monotonic() + 10
        step = engine.start(LOOP[language], pick(language, "loop.lua", "loop.js"), None, [],
                            deadline)
        # the three first calls never came out: the step is the one after the print
        assert isinstance(step, Suspended), step
        assert [r.tool for r in step.requests] == ["inc"]
        assert step.output == (pick(language, "after three\t3", "after three 3"),)
        assert [r.params for r in direct.offered] == [{"n": 0}, {"n": 1}, {"n": 2}]
        step = engine.resume([ToolReply(step.requests[0].id, 4)], deadline)
        # the failing call was answered at once too; "other" was offered, then came out
        assert isinstance(step, Suspended) and step.requests[0].tool == "other", step
        assert [r.tool for r in direct.offered[3:]] == ["inc", "other"]
        assert step.requests[0].frames, "a call left to the host still has its call site"
        step = engine.resume([ToolReply(step.requests[0].id, "o")], deadline)
        assert isinstance(step, Finished), step
        assert step.result == {"n": 4, "other": "o", "caught": "tool/execution_failed"}
    finally:
        engine.close()


def test_an_engine_refuses_a_direct_reply_to_another_request(language: str) -> None:
    engine = make_engine(language)
    engine.direct = lambda request: ToolReply(request.id + 1, 1)
    try:
        step = engine.start(pick(language, "return tools.inc{n = 1}",
                                 "async function main() { return await tools.inc({n: 1}); }"),
                            "wrong", None, [], time.monotonic() + 10)
        assert isinstance(step, Failed), step
        assert step.error.code == "bridge/protocol_violation", step.error
        assert "answered request 1 with the reply to 2" in step.error.message
    finally:
        engine.close()


FOREVER = {
    "lua": "while true do tools.inc{n = 1} end",
    "javascript": "async function main() { while (true) await tools.inc({n: 1}); }",
}


def test_calls_answered_at_once_end_at_the_deadline_and_at_a_stop(language: str) -> None:
    """A script that only calls tools the host answers at once never leaves the engine's
    step: the deadline still ends it, and so does stop() from another thread."""
    for stopping in (False, True):
        engine = make_engine(language)
        engine.direct = Direct()
        try:
            started = time.monotonic()
            if stopping:
                threading.Timer(0.3, engine.stop).start()
            step = engine.start(FOREVER[language], "forever", None, [],
                                started + (30 if stopping else 0.3))
            took = time.monotonic() - started
            assert isinstance(step, Failed), step
            assert step.error.fields.get("resource_type") == "time", step.error
            assert took < 10, took
            assert len(engine.direct.offered) > 10  # type: ignore[union-attr]
        finally:
            engine.close()


# -- through the host: the same as the pipeline ---------------------------------------


def _warmed(language: str, name: str, lua: str, js: str) -> str:
    """test_calls_fused's uncaught call (line 3 in Lua, 4 in JS), after a first call of
    the same tool that fails or not: the tested call is answered at once."""
    return pick(language,
                f"pcall(tools.{name}, {lua})\n\nlocal r = tools.{name}({lua})\nreturn r\n",
                f"\n\nasync function main() {{ try {{ await tools.{name}({js}); }} catch (e) {{}}\n"
                f"  return await tools.{name}({js});\n}}\n")


@pytest.mark.parametrize(("name", "lua", "js"), CALLS)
def test_a_call_answered_at_once_is_seen_as_through_the_pipeline(
        language: str, name: str, lua: str, js: str) -> None:
    source = _warmed(language, name, lua, js)
    seen = []
    for host in (fused(), pipelined()):
        try:
            seen.append(repr(host.run_source(source, language,
                                             "calls" + pick(language, ".lua", ".js"))))
        except SpellError as err:
            seen.append(_seen(err))
    assert seen[0] == seen[1]
    if not isinstance(seen[0], str):  # it points at the line of the second call
        frames = seen[0]["chain"][0][3]
        assert frames[0][1:3] == ("calls" + pick(language, ".lua", ".js"),
                                  int(pick(language, "3", "4"))), frames


@pytest.mark.parametrize(("name", "lua", "js"), FILE_CALLS)
def test_a_tools_file_call_answered_at_once_is_seen_as_through_the_pipeline(
        language: str, name: str, lua: str, js: str, tmp_path: Any) -> None:
    """test_calls_fused's tools-file functions, each called a second time: answered at
    once (the functions' own calls of tools too), as through the pipeline."""
    printed: tuple[list[str], list[str]] = ([], [])
    seen = []
    for host in _files_hosts(tmp_path, printed):
        try:
            seen.append(repr(host.run_source(_warmed(language, name, lua, js), language,
                                             "calls" + pick(language, ".lua", ".js"))))
        except SpellError as err:
            seen.append(_seen(err))
    assert seen[0] == seen[1]
    assert printed[0] == printed[1]


CALLED: list[str] = []


@tool
def note(text: str) -> int:
    """Notes that it was called, in order with the script's printed lines."""
    CALLED.append(f"tool {text}")
    return len(CALLED)


@tool
def stop_at(n: int) -> int:
    """Stops the run at its third call."""
    CALLED.append(f"stop_at {n}")
    if n == 3:
        raise StopRun({"stopped": n})
    return n


PRINTS = {
    "lua": 'tools.note{text = "a"}\ntools.note{text = "b"}\nprint("line")\n'
           'tools.note{text = "c"}\ntools.note{text = "d"}\nreturn 1',
    "javascript": 'async function main() { await tools.note({text: "a"});\n'
                  'await tools.note({text: "b"}); console.log("line");\n'
                  'await tools.note({text: "c"}); await tools.note({text: "d"}); return 1; }',
}


def test_lines_printed_between_calls_answered_at_once_come_out_in_order(language: str) -> None:
    CALLED.clear()
    host = Host([note], on_output=lambda line: CALLED.append(f"line {line}"))
    assert host.run_source(PRINTS[language], language, "prints") == 1
    assert CALLED == ["tool a", "tool b", "line line", "tool c", "tool d"]


def test_a_stop_run_from_a_call_answered_at_once_ends_the_run_there(language: str) -> None:
    source = pick(language, "for i = 1, 10 do tools.stop_at{n = i} end\nreturn 'ran on'",
                  "async function main() { for (let i = 1; i <= 10; i++) "
                  "await tools.stop_at({n: i}); return 'ran on'; }")
    results = []
    for layers in ([], [passthrough]):
        CALLED.clear()
        host = Host([stop_at], on_output=lambda line: None, layers=layers)
        results.append((host.run_source(source, language, "stops"), list(CALLED)))
    assert results[0] == results[1] == ({"stopped": 3}, ["stop_at 1", "stop_at 2",
                                                         "stop_at 3"])


@pytest.mark.anyio
async def test_a_run_cancelled_while_calls_are_answered_at_once_ends_at_its_next_call(
        language: str) -> None:
    """Cancelling a run sets its stop reason from the event loop: the next call is not
    answered at once but taken by the host's loop, which hands the script the reason."""
    busy = threading.Event()

    @tool
    def tick() -> int:
        """Counts; tells the test once the script has made 50 calls."""
        CALLED.append("tick")
        if len(CALLED) == 50:
            busy.set()
        return len(CALLED)

    CALLED.clear()
    host = Host([tick], on_output=lambda line: None, timeout=20)
    run = host.new_run_source(pick(language, "while true do tools.tick{} end",
                                   "async function main() { while (true) await tools.tick({}); }"),
                              language, "cancelled")
    error = AsyncExecutionError.TaskCancelled(task_id="t1", reason="test",
                                              cancellation_source="test")

    async def cancel_when_busy() -> None:
        await anyio.to_thread.run_sync(busy.wait)
        run.cancel(error)

    started = time.monotonic()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(cancel_when_busy)
            with pytest.raises(SpellError) as caught:
                await run.execute()
    assert caught.value.code == error.code, caught.value
    assert time.monotonic() - started < 10


def test_a_tools_file_calls_tools_answered_at_once_and_its_host_loop_ends_with_it(
        language: str, tmp_path: Any) -> None:
    """A tools file's engine is answered at once while the host's loop runs it, and only
    then: its calls and its caller's come out in order, and the caller's next call after
    the file's function returned is answered at once again."""
    (tmp_path / "lib.lua").write_text(
        "return {f = function(p)\n"
        "  for i = 1, 3 do tools.note{text = p.who .. i} end\n"
        "  return tools.note{text = p.who .. 'end'}\nend}\n")
    (tmp_path / "lib.js").write_text(
        "exports.f = async function (p) {\n"
        "  for (let i = 1; i <= 3; i++) await tools.note({text: p.who + i});\n"
        "  return await tools.note({text: p.who + 'end'});\n};\n")
    CALLED.clear()
    lib = pick(language, "lib.js", "lib.lua")  # the other language's file
    host = Host([note, tmp_path / lib], on_output=lambda line: None)
    source = pick(language,
                  "tools.note{text = 'm1'}\ntools.note{text = 'm2'}\n"
                  "local r = tools.f{who = 'a'}\ntools.note{text = 'm3'}\n"
                  "return {r, tools.f{who = 'b'}}",
                  "async function main() { await tools.note({text: 'm1'});\n"
                  "await tools.note({text: 'm2'}); const r = await tools.f({who: 'a'});\n"
                  "await tools.note({text: 'm3'}); return [r, await tools.f({who: 'b'})]; }")
    assert host.run_source(source, language, "main") == [6, 11]
    assert CALLED == ["tool m1", "tool m2", "tool a1", "tool a2", "tool a3", "tool aend",
                      "tool m3", "tool b1", "tool b2", "tool b3", "tool bend"]


@tool
def shapes(values: Any) -> list[str]:
    """The Python type of each value a script passed, and its value (strings: length)."""
    return [f"str {len(v)}" if isinstance(v, str) else f"{type(v).__name__} {v!r}"
            for v in values]


def test_js_requests_answered_at_once_read_their_unusual_data_with_care() -> None:
    """A request is read with no look for data handed over apart from its text only when
    the prelude handed none over (a long string, an array of numbers: `careful`), and its
    ints are read as JS holds them (past 2**53, doubles) however they were written (a
    scalar, a Number object, an array of numbers). Each call here is answered at once (the
    tool has been called before)."""
    host = Host([shapes], on_output=lambda line: None)
    source = """
async function main() {
  await tools.shapes({values: [1]});
  return [
    await tools.shapes({values: [25261409972196210, 2 ** 53]}),
    await tools.shapes({values: [new Number(2 ** 60)]}),
    await tools.shapes({values: Array.from({length: 20}, (_, i) => i === 7 ? 2 ** 61 : i)}),
    await tools.shapes({values: ["x".repeat(20000), 3]}),
    await tools.shapes({values: [3, 0.5, -(2 ** 53)]}),
  ];
}
"""
    big, boxed, array, text, plain = host.run_source(source, "javascript", "care.js")
    assert big == [f"float {25261409972196208.0!r}", f"int {2**53}"]
    assert boxed == [f"float {float(2**60)!r}"]
    assert array[7] == f"float {float(2**61)!r}" and array[8] == "int 8"
    assert text == ["str 20000", "int 3"]
    assert plain == ["int 3", "float 0.5", f"int {-(2**53)}"]


def test_a_loop_of_plain_calls_takes_no_step_through_the_host(language: str,
                                                              tmp_path: Any) -> None:
    """The calls answered at once are the point: a loop of plain calls (Python tools and a
    tools file's function) resumes the script's engine once per first call of each, not
    once per call."""
    resumed: list[str] = []

    def factory(name: str, **options: Any) -> Any:
        engine = make_engine(name, **options)
        resume = engine.resume

        def counted(replies: list[ToolReply], deadline: float) -> Any:
            resumed.append(name)
            return resume(replies, deadline)

        engine.resume = counted  # type: ignore[method-assign]
        return engine

    (tmp_path / "lib.lua").write_text("return {twice = function(p) return 2 * p.n end}\n")
    (tmp_path / "lib.js").write_text("exports.twice = function (p) { return 2 * p.n; };\n")
    lib = tmp_path / pick(language, "lib.js", "lib.lua")
    host = Host([note, lib], on_output=lambda line: None, engine_factory=factory)
    source = pick(language,
                  "local t = 0\nfor i = 1, 20 do t = t + tools.note{text = 'x'} + "
                  "tools.twice{n = i} end\nreturn t",
                  "async function main() { let t = 0; for (let i = 1; i <= 20; i++) "
                  "t += (await tools.note({text: 'x'})) + (await tools.twice({n: i})); "
                  "return t; }")
    CALLED.clear()
    assert host.run_source(source, language, "loop") == sum(range(1, 21)) + 2 * sum(range(1, 21))
    assert resumed.count(language) == 2, resumed  # the first call of note, then of twice
