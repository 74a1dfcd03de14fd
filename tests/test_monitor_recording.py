"""Host(monitor=...): every error of a run recorded into a real SQLite file, from Lua, JS,
Python tools, tools files and coordinator tasks."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bridge import SpellError
from host import Coordinator, Host, hooks, tool
from host.monitor import Monitor
from host.plan import Task
from tests.conftest import EXTENSION, pick
from tests.test_hook_failures import shaky_tool


@tool
def boom(reason: str) -> str:
    """Always fails."""
    raise RuntimeError(reason)


@tool
def add(a: int, b: int) -> int:
    """Adds."""
    return a + b


def run(host: Host, language: str, lua: str, js: str):
    js = js.replace("tools.", "await tools.")
    source = pick(language, lua, f"async function main(args) {{\n{js}\n}}")
    return host.run_source(source, language, f"agent.{EXTENSION[language][1:]}")


@pytest.fixture
def monitor(tmp_path: Path):
    monitor = Monitor(tmp_path / "errors.db")
    yield monitor
    monitor.close()


def recorded(monitor: Monitor) -> list[dict]:
    assert monitor.flush()
    return sorted(monitor.store.records(limit=1000), key=lambda r: r["timestamp"])


def test_a_handled_and_a_run_ending_tool_error_are_recorded_as_such(monitor, language):
    host = Host([boom], monitor=monitor)
    with pytest.raises(SpellError) as info:
        run(host, language,
            "pcall(tools.boom, {reason = 'caught'})\nlocal x = tools.boom({reason = 'fatal'})",
            "try { tools.boom({reason: 'caught'}); } catch (e) {}\n"
            "const x = tools.boom({reason: 'fatal'});")
    caught, fatal = recorded(monitor)
    assert [caught["handled"], fatal["handled"]] == [True, False]
    assert "caught" in caught["message"] and "fatal" in fatal["message"]
    for record in (caught, fatal):
        assert (record["code"], record["tool"], record["engine"]) == (
            "tool/execution_failed", "boom", language)
        assert record["file"] == f"agent.{EXTENSION[language][1:]}"
        assert record["run_id"] == info.value.context.correlation_id
        assert record["component"] == "tool:boom"
    assert [caught["line"], fatal["line"]] == [pick(language, 1, 2), pick(language, 2, 3)]
    assert fatal["impact"] > caught["impact"]
    assert fatal["error"]["context"]["error_id"] == info.value.context.error_id


def test_a_script_error_is_recorded_with_its_line(monitor, language):
    host = Host([], monitor=monitor)
    with pytest.raises(SpellError):
        run(host, language, "local t = nil\nreturn t.x", "const t = null;\nreturn t.x;")
    (record,) = recorded(monitor)
    assert (record["category"], record["engine"], record["handled"]) == (
        "script", language, False)
    assert record["line"] == pick(language, 2, 3)
    assert record["tool"] is None


def test_a_retry_that_recovers_is_recorded_with_its_outcome(monitor, language):
    host = Host([shaky_tool()], monitor=monitor, recovery={
        "shaky": {"retry": {"attempts": 2, "initial": 0, "jitter": 0, "on": "any"}}})
    assert run(host, language, "return tools.shaky({n = 4})", "return tools.shaky({n: 4});") == 4
    (record,) = recorded(monitor)
    assert (record["recovered"], record["recovery"], record["handled"]) == (True, "retry", True)
    (recovery,) = [c for c in monitor.store.calls(time.time() - 60) if c["what"] == "recovery"]
    assert (recovery["name"], recovery["count"], recovery["failures"]) == ("retry", 1, 0)


def test_a_controllers_recover_is_recorded_as_recovered(monitor, language):
    @hooks.controller("after_tool_call")
    def rescue(ctx):
        if ctx.error is not None:
            return hooks.Recover("fine")

    host = Host([boom], monitor=monitor, hooks=[rescue])
    assert run(host, language, "return tools.boom({reason = 'r'})",
               "return tools.boom({reason: 'r'});") == "fine"
    (record,) = recorded(monitor)
    assert (record["recovered"], record["recovery"]) == (True, "hook")


def test_runs_and_tool_calls_are_counted(monitor, language):
    host = Host([add, boom], monitor=monitor)
    run(host, language,
        "for i = 1, 5 do tools.add({a = i, b = 1}) end pcall(tools.boom, {reason = 'r'})",
        "for (let i = 1; i <= 5; i++) tools.add({a: i, b: 1});\n"
        "try { tools.boom({reason: 'r'}); } catch (e) {}")
    assert len(recorded(monitor)) == 1
    counts = {(c["what"], c["name"]): (c["count"], c["failures"])
              for c in monitor.store.calls(time.time() - 60)}
    assert counts[("tool", "add")] == (5, 0)
    assert counts[("tool", "boom")] == (1, 1)
    assert counts[("run", f"agent.{EXTENSION[language][1:]}")] == (1, 0)


def test_successful_calls_queue_nothing_for_the_monitor(monitor, language):
    host = Host([add], monitor=monitor)
    delivered = []
    original = host.hooks._delivery._deliver

    def counting(event, *args):
        delivered.append(event.point)
        return original(event, *args)

    host.hooks._delivery._deliver = counting
    run(host, language, "for i = 1, 50 do tools.add({a = i, b = 1}) end",
        "for (let i = 1; i <= 50; i++) tools.add({a: i, b: 1});")
    assert delivered == ["run_finished"]


def test_an_error_through_a_lua_js_python_hop_keeps_every_language(monitor, tmp_path):
    relay = tmp_path / "relay.js"
    relay.write_text("async function relay(p) { return await tools.boom(p); }\n"
                     "var exports = {relay: relay};\n")
    host = Host([boom, str(relay)], monitor=monitor)
    with pytest.raises(SpellError):
        host.run_source("return tools.relay({reason = 'deep'})", "lua", "agent.lua")
    records = recorded(monitor)
    fatal = [r for r in records if not r["handled"]]
    assert len(fatal) == 1
    languages = {frame["language"] for frame in fatal[0]["error"]["frames"]}
    assert {"lua", "javascript", "python"} <= languages


def test_coordinator_tasks_are_counted_and_their_errors_recorded(tmp_path, monitor, language):
    script = tmp_path / f"t{EXTENSION[language]}"
    script.write_text(pick(
        language, "return tools.boom({reason = 'task'})\n",
        "async function main() { return await tools.boom({reason: 'task'}); }\n"))
    report = Coordinator([boom], monitor=monitor).run([Task(id="t", script=str(script))])
    assert report.outcome != "succeeded"
    (record,) = recorded(monitor)
    assert record["handled"] is False and "task" in record["message"]
    assert (record["task_id"], record["plan_id"]) == ("t", report.plan)
    tasks = [c for c in monitor.store.calls(time.time() - 60) if c["what"] == "task"]
    assert [(t["count"], t["failures"]) for t in tasks] == [(1, 1)]


def test_a_broken_store_never_fails_a_run_and_says_so_once(tmp_path, caplog, language):
    path = tmp_path / "errors.db"
    path.write_text("not a database" * 100)
    monitor = Monitor(path)
    assert monitor.failure is not None and monitor.failure.code == "storage/corrupted"
    host = Host([add], monitor=monitor)
    assert run(host, language, "return tools.add({a = 1, b = 1})",
               "return tools.add({a: 1, b: 1});") == 2
    assert caplog.text.count("cannot record errors") == 1
    assert path.read_text() == "not a database" * 100
    with pytest.raises(SpellError) as info:
        Monitor(path, strict=True)
    assert info.value.code == "storage/corrupted"


def test_runs_that_never_tell_their_end_cannot_grow_the_recorder(monitor, monkeypatch):
    from bridge import ToolError
    from host.hooks import Caller, ToolResultContext
    from host.monitor import recorder

    monkeypatch.setattr(recorder, "MAX_RUNS", 2)
    observe = monitor._recorder.tool_call_finished
    for run_id in ("r1", "r2", "r3"):  # interrupted runs: no run_finished ever comes
        err = ToolError.ExecutionFailed(tool_name="t", reason=run_id)
        observe(ToolResultContext(run_id, "t", {}, Caller("lua", "a.lua", 1), 0, None, err,
                                  "execution", 0.1, 1))
    assert sorted(monitor._recorder._runs) == ["r2", "r3"]
    (record,) = recorded(monitor)  # r1's went out as it was, not lost
    assert (record["run_id"], record["handled"]) == ("r1", True)


@tool
def lookup(key: str) -> str:
    """Fails with a LookupError (a well-known exception: wrapped on its way out)."""
    raise LookupError(f"no {key!r}")


def test_an_error_out_through_script_functions_is_one_record_with_its_whole_way(
        monitor, language):
    host = Host([lookup], monitor=monitor)
    with pytest.raises(SpellError) as info:
        run(host, language,
            "local function describe()\n  local found = tools.lookup({key = 'x'})\n"
            "  return found\nend\nreturn describe()",
            "async function describe() {\n  const found = tools.lookup({key: 'x'});\n"
            "  return found;\n}\nreturn await describe();")
    (record,) = recorded(monitor)  # the call's error and the run's are one occurrence
    assert record["handled"] is False
    assert record["error"]["context"]["error_id"] == info.value.context.error_id
