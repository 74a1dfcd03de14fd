"""The tool call as one pipeline, the engine factory, and the run's one control object."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import pytest

import engines
from bridge import AsyncExecutionError, SpellError
from host import Coordinator, Host, Task, ToolCall, tool
from tests.conftest import EXTENSION, pick


@tool
def echo(text: str) -> str:
    """Gives the text back."""
    return text


@tool
def boom(text: str) -> str:
    """Fails with the text."""
    raise ValueError(text)


CALL_TWICE = {
    "lua": 'return {tools.echo{text = "a"}, tools.echo{text = "b"}}',
    "javascript": 'async function main() { return [await tools.echo({text: "a"}),'
                  ' await tools.echo({text: "b"})]; }',
}


# -- layers -------------------------------------------------------------------------------


def test_layers_wrap_every_call_in_order_and_see_what_the_call_carries(language):
    seen: list[tuple[str, ...]] = []

    def outer(call: ToolCall, next: Any) -> Any:
        seen.append(("outer in", call.name, call.caller, str(call.params["text"])))
        result = next(call)
        seen.append(("outer out", result))
        return result

    def inner(call: ToolCall, next: Any) -> Any:
        seen.append(("inner", call.frames[-1].file, str(call.frames[-1].line), str(call.depth)))
        return next(call)

    host = Host([echo], layers=[outer, inner])
    assert host.run_source(CALL_TWICE[language], language, "agent.src") == ["a", "b"]
    assert seen[:3] == [("outer in", "echo", language, "a"),
                        ("inner", "agent.src", pick(language, "1", "1"), "0"),
                        ("outer out", "a")]
    assert [entry[0] for entry in seen[3:]] == ["outer in", "inner", "outer out"]


def test_a_layer_can_change_the_call_and_answer_in_place_of_the_tool(language):
    def shout(call: ToolCall, next: Any) -> Any:
        call.params = {"text": call.params["text"].upper()}
        return next(call)

    def cached(call: ToolCall, next: Any) -> Any:
        return "from cache" if call.params["text"] == "B" else next(call)

    host = Host([echo], layers=[shout, cached])
    assert host.run_source(CALL_TWICE[language], language) == ["A", "from cache"]


def test_a_layers_error_reaches_the_script_decorated_like_a_tools(language):
    def refuse(call: ToolCall, next: Any) -> Any:
        raise RuntimeError(f"refused {call.name}")

    host = Host([echo], layers=[refuse])
    source = pick(language, 'tools.echo{text = "a"}',
                  'async function main() { await tools.echo({text: "a"}); }')
    with pytest.raises(SpellError) as info:
        host.run_source(source, language, "agent.src")
    err = info.value
    assert err.code == "tool/execution_failed"
    assert "refused echo" in err.message
    # the boundary is outside every layer: the path and context are the tool call's
    assert [f.language for f in err.frames[:2]] == [language, "host"]
    assert err.frames[1].function == "echo"
    assert err.context.component.type == "tool"


def test_an_error_gets_each_boundary_once_however_often_it_is_rethrown(language, tmp_path):
    """A tools-file function that keeps an error and throws it again on its next call:
    the outer boundary is on its path once, not once per throw."""
    other = "javascript" if language == "lua" else "lua"
    library = tmp_path / f"keep{EXTENSION[other]}"
    library.write_text(pick(other, """
local kept
return {
  keep = function(p)
    if kept == nil then
      local ok, err = pcall(tools.boom, {text = "x"})
      kept = err
    end
    error(kept)
  end,
}
""", """
let kept;
exports.keep = async function (p) {
  if (kept === undefined) {
    try { await tools.boom({text: "x"}); } catch (e) { kept = e; }
  }
  throw kept;
};
"""))
    host = Host([boom, library])
    source = pick(language, """
local ok, first = pcall(tools.keep, {})
tools.keep({})
""", """
async function main() {
  try { await tools.keep({}); } catch (e) {}
  await tools.keep({});
}
""")
    with pytest.raises(SpellError) as info:
        host.run_source(source, language, "agent.src")
    err = info.value
    assert err.code == "tool/execution_failed"
    boundaries = [f.function for f in err.frames if f.language == "host"]
    assert boundaries == ["keep", "boom"]  # the outer boundary once, then the inner one


# -- timeouts -----------------------------------------------------------------------------


def test_timed_sync_tools_reuse_worker_threads(language):
    threads: list[int] = []

    @tool(timeout=5.0)
    def where() -> int:
        threads.append(threading.get_ident())
        return len(threads)

    host = Host([where])
    source = pick(language, "for i = 1, 20 do tools.where{} end",
                  "async function main() { for (let i = 0; i < 20; i++) await tools.where({}); }")
    before = threading.active_count()
    idle = sum(t.name == "polyspell tool worker" for t in threading.enumerate())
    host.run_source(source, language)
    assert len(threads) == 20
    # reused: the workers idle from earlier tests, plus one new (two if one was just ending)
    assert len(set(threads)) <= idle + 2
    assert threading.get_ident() not in threads  # not on the caller's thread
    assert threading.active_count() <= before + 2


def test_a_timed_sync_tool_that_overruns_is_a_tool_timeout_and_the_run_goes_on(language):
    release = threading.Event()

    @tool(timeout=0.2)
    def stuck() -> str:
        release.wait(10)
        return "late"

    host = Host([stuck, echo], timeout=10)
    source = pick(language, """
local ok, err = pcall(tools.stuck, {})
return {err.kind, tools.echo{text = "after"}}
""", """
async function main() {
  let kind;
  try { await tools.stuck({}); } catch (e) { kind = e.kind; }
  return [kind, await tools.echo({text: "after"})];
}
""")
    started = time.monotonic()
    try:
        assert host.run_source(source, language) == ["timeout", "after"]
    finally:
        release.set()
    assert time.monotonic() - started < 5


def test_an_async_tool_past_its_timeout_is_cancelled(language):
    cancelled = threading.Event()

    @tool(timeout=0.2)
    async def slow() -> str:
        try:
            await anyio.sleep(10)
        except BaseException:
            cancelled.set()
            raise
        return "late"

    host = Host([slow], timeout=10)
    source = pick(language, "local ok, err = pcall(tools.slow, {})"
                            " return err.category .. '/' .. err.kind",
                  "async function main() { try { await tools.slow({}); }"
                  " catch (e) { return `${e.category}/${e.kind}`; } }")
    assert host.run_source(source, language) == "tool/timeout"
    assert cancelled.is_set()


# -- the engine factory -------------------------------------------------------------------


class _Counting:
    """An engine factory that wraps the built-in one and records what it made."""

    def __init__(self) -> None:
        self.made: list[tuple[str, engines.Limits, str]] = []
        self.steps: list[str] = []

    def __call__(self, language: str, *, limits: engines.Limits,
                 sandbox: engines.Sandbox) -> engines.Engine:
        self.made.append((language, limits, sandbox))
        engine = engines.make_engine(language, limits=limits, sandbox=sandbox)
        steps = self.steps
        start, resume = engine.start, engine.resume

        def recorded_start(*args: Any) -> engines.Step:
            step = start(*args)
            steps.append(f"{language} {type(step).__name__}")
            return step

        def recorded_resume(*args: Any) -> engines.Step:
            step = resume(*args)
            steps.append(f"{language} {type(step).__name__}")
            return step

        engine.start, engine.resume = recorded_start, recorded_resume  # type: ignore[method-assign]
        return engine


def test_an_injected_engine_factory_makes_every_engine_a_run_uses(language, tmp_path):
    other = "javascript" if language == "lua" else "lua"
    library = tmp_path / f"lib{EXTENSION[other]}"
    library.write_text(pick(other, "return {twice = function(p) return p.n * 2 end}",
                            "exports.twice = function (p) { return p.n * 2; };"))
    factory = _Counting()
    host = Host([echo, library], engine_factory=factory, timeout=7, memory_mb=32,
                sandbox="constrained")
    assert [m[0] for m in factory.made] == [other]  # the tools file, listed once
    assert factory.made[0][2] == "constrained"
    factory.made.clear()
    source = pick(language, 'return {tools.echo{text = "a"}, tools.twice{n = 4}}',
                  'async function main() { return [await tools.echo({text: "a"}),'
                  ' await tools.twice({n: 4})]; }')
    assert host.run_source(source, language) == ["a", 8]
    assert [m[0] for m in factory.made] == [language, other]  # one engine per engine used
    assert all(m[1] == engines.Limits(timeout=7, memory_mb=32) for m in factory.made)
    assert factory.steps[0] == f"{language} Suspended"
    assert factory.steps[-1] == f"{language} Finished"


def test_the_coordinator_uses_its_engine_factory_and_loads_tools_files_once(tmp_path):
    library = tmp_path / "lib.js"
    library.write_text("exports.twice = function (p) { return p.n * 2; };")
    script = tmp_path / "task.lua"
    script.write_text("return tools.twice{n = args.n}")
    factory = _Counting()
    coordinator = Coordinator([library], engine_factory=factory)
    assert [m[0] for m in factory.made] == ["javascript"]
    report = coordinator.run([Task(id="a", script=str(script), args={"n": 3})])
    assert report.results == {"a": 6}
    # the task's engine and the tools file's, and no second listing of the tools file
    assert [m[0] for m in factory.made] == ["javascript", "lua", "javascript"]


def test_an_engine_factory_that_is_not_callable_is_an_invalid_value():
    with pytest.raises(SpellError) as info:
        Host(engine_factory="lua")  # type: ignore[arg-type]
    assert info.value.code == "configuration/invalid_value"
    assert info.value.fields["key"] == "engine_factory"


# -- the run's control --------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_run_control_goes_from_running_to_delivered_to_ended(language):
    inside = anyio.Event()
    states: list[str] = []

    @tool
    async def wait() -> str:
        states.append(run.control.state)
        inside.set()
        await anyio.sleep(10)
        return "woke"

    host = Host([wait], timeout=10)
    source = pick(language, "local ok, err = pcall(tools.wait, {}) error(err)",
                  "async function main() { await tools.wait({}); }")
    run = host.new_run_source(source, language)
    assert run.control.state == "running"
    reason = AsyncExecutionError.TaskCancelled(task_id="t", reason="test",
                                               cancellation_source="test")
    outcome: list[BaseException] = []

    async def execute() -> None:
        try:
            await run.execute()
        except SpellError as err:
            outcome.append(err)

    async with anyio.create_task_group() as group:
        group.start_soon(execute)
        await inside.wait()
        run.cancel(reason)
        assert run.control.state in ("stop_requested", "delivered", "ended")
        assert run.control.request_stop(AsyncExecutionError.TaskCancelled(
            task_id="t", reason="second", cancellation_source="test")) is False
    assert states == ["running"]
    assert outcome == [reason]  # the first reason wins
    assert run.control.state == "ended"
    assert run.cancelled is reason
