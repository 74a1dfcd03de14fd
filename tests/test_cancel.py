"""Cancelling a run: the error is raised in the script at its next tool call, cleanup runs.

``ScriptRun.cancel`` is what the coordinator uses to cancel tasks and to time them out.
"""

from __future__ import annotations

import anyio
import pytest

from bridge import AsyncExecutionError, SpellError
from host import Host, tool
from tests.conftest import pick

# every test in both isolation modes: engines in threads, and in worker processes
pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("isolation")]



def _host(lines: list[str], *tools) -> tuple[Host, anyio.Event]:
    """A host with the tools below, and the event its ``wait`` tool sets once entered."""
    entered = anyio.Event()

    @tool
    async def wait(seconds: float) -> str:
        """Sleeps: the script is suspended here when the test cancels it."""
        entered.set()
        await anyio.sleep(seconds)
        return "woke up"

    @tool
    def note(text: str) -> str:
        lines.append(f"tool {text}")
        return text

    return Host([wait, note, *tools], timeout=10, on_output=lines.append), entered


async def _cancelled_run(run, error: SpellError, waiting: anyio.Event) -> SpellError:
    """Execute ``run``, cancel it with ``error`` once it waits in a tool (``waiting`` is
    set); what it raised."""
    async def cancel_soon() -> None:
        await waiting.wait()  # the script is inside its tool: an event, not a guess
        run.cancel(error)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(cancel_soon)
            with pytest.raises(SpellError) as info:
                await run.execute()
    return info.value


def _cancelled() -> SpellError:
    return AsyncExecutionError.TaskCancelled(task_id="t1", reason="plan cancelled",
                                             cancellation_source="test")


async def test_cleanup_runs_and_the_run_ends_with_the_cancellation(language):
    lines: list[str] = []
    host, waiting = _host(lines)
    source = pick(language, """
on_cancel(function(e) print("on_cancel " .. e.kind) end)
local ok, err = pcall(tools.wait, {seconds = 30})
print("cleanup after " .. tostring(err))
error(err)
""", """
signal.addEventListener("abort", (event) => console.log(`abort ${signal.reason.kind}`));
async function main() {
  try {
    await tools.wait({seconds: 30});
  } finally {
    console.log(`finally aborted=${signal.aborted}`);
  }
}
""")
    run = host.new_run_source(source, language, "task.src")
    error = _cancelled()
    assert await _cancelled_run(run, error, waiting) is error
    assert run.cancelled is error
    if language == "lua":
        assert lines == ["on_cancel task_cancelled",
                         "cleanup after async_execution/task_cancelled: "
                         "Task cancelled: t1 - plan cancelled"]
    else:
        assert lines == ["abort task_cancelled", "finally aborted=true"]
    # the error points at the call the script was waiting in
    site = error.frames[0]
    assert (site.language, site.file) == (language, "task.src")
    assert site.line == pick(language, 3, 5)


async def test_a_script_that_swallows_the_cancellation_is_stopped_at_its_next_tool_call(
        language):
    lines: list[str] = []
    host, waiting = _host(lines)
    source = pick(language, """
pcall(tools.wait, {seconds = 30})
print("swallowed")
tools.note{text = "after"}
print("not reached")
return "finished anyway"
""", """
async function main() {
  try { await tools.wait({seconds: 30}); } catch (e) { console.log("swallowed"); }
  await tools.note({text: "after"});
  console.log("not reached");
  return "finished anyway";
}
""")
    run = host.new_run_source(source, language, "task.src")
    error = AsyncExecutionError.TaskTimeout(task_id="t1", duration=0.05)
    assert await _cancelled_run(run, error, waiting) is error
    assert lines == ["swallowed"]  # the note tool never ran


async def test_a_script_that_swallows_it_and_returns_still_ends_cancelled(language):
    lines: list[str] = []
    host, waiting = _host(lines)
    source = pick(language,
                  "local ok = pcall(tools.wait, {seconds = 30})\nreturn 'done'\n",
                  "async function main() {\n  try { await tools.wait({seconds: 30}); }"
                  " catch {}\n  return 'done';\n}\n")
    run = host.new_run_source(source, language, "task.src")
    error = _cancelled()
    assert await _cancelled_run(run, error, waiting) is error


async def test_a_run_cancelled_before_it_starts_runs_nothing(language):
    lines: list[str] = []
    host, _ = _host(lines)
    run = host.new_run_source(pick(language, "print('ran')", "console.log('ran');"),
                              language, "task.src")
    error = _cancelled()
    run.cancel(error)
    with pytest.raises(SpellError) as info:
        await run.execute()
    assert info.value is error
    assert lines == []


async def test_the_cancellation_reaches_a_script_inside_a_tools_file(language, tmp_path):
    other = "javascript" if language == "lua" else "lua"
    helpers = tmp_path / pick(other, "helpers.lua", "helpers.js")
    helpers.write_text(pick(other,
                            "return {slow = function(p)\n"
                            "  on_cancel(function() print('helper cleanup') end)\n"
                            "  local r = tools.wait{seconds = 30}\n  return r\nend}\n",
                            "exports.slow = async function slow() {\n"
                            "  signal.addEventListener('abort',\n"
                            "                          () => console.log('helper cleanup'));\n"
                            "  return await tools.wait({seconds: 30});\n};\n"))
    lines: list[str] = []
    host, waiting = _host(lines, helpers)
    source = pick(language, "local ok, e = pcall(tools.slow, {})\nprint('agent saw ' .. e.kind)\n",
                  "async function main() {\n  try { await tools.slow({}); }\n"
                  "  catch (e) { console.log(`agent saw ${e.kind}`); }\n}\n")
    run = host.new_run_source(source, language, "agent.src")
    error = _cancelled()
    assert await _cancelled_run(run, error, waiting) is error
    assert lines == ["helper cleanup", "agent saw task_cancelled"]


async def test_a_finished_run_is_not_affected_by_a_later_cancel(language):
    host, _ = _host([])
    run = host.new_run_source(pick(language, "return 1", "function main() { return 1; }"),
                              language, "task.src")
    assert await run.execute() == 1
    run.cancel(_cancelled())  # too late: nothing to stop, nothing raised
