"""Plans on a real local Ray (issue 16): the same report as the local executor, errors whole,
output streamed, Ray's failures as unified errors, what cannot travel refused up front.

One local Ray for the session (the `ray_executor` fixture of conftest), bound to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray")

from bridge import ConfigurationError, NetworkError, SpellError
from host import Coordinator, Task, tool
from host.hooks import observer
from host.ray_executor import RayExecutor
from tests.cli import polyspell

ROOT = Path(__file__).resolve().parent.parent
PLANS = ROOT / "scripts" / "plans"
EXAMPLES = ["succeeded", "cascading", "partial", "all_failed", "degraded"]


def comparable(report: Any) -> Any:
    """A report as data, without what differs from run to run and node to node (times,
    error ids, pids, host names)."""
    # which of several equally severe failures came first is timing too
    skipped = ("duration", "context", "at", "timestamp", "elapsed", "execution_time",
               "representative_task", "representative_error")

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items() if key not in skipped}
        if isinstance(value, list):
            return [clean(item) for item in value]
        return value

    return clean(report.model_dump(mode="json"))


def test_propagate_stops_everything_on_ray_too(ray_executor: RayExecutor) -> None:
    """The one strategy no example plan uses: which tasks were still running when the
    first failure came is timing (and so whether any succeeded: a Ray that is still
    making its actors cancels them all), so the report is compared where it is not."""
    reports = []
    for executor in (None, ray_executor):
        with Coordinator(on_output=lambda task, line: None, executor=executor) as coordinator:
            reports.append(coordinator.run(PLANS / "cascading.toml", strategy="propagate"))
    local, remote = reports
    assert remote.root_causes == local.root_causes == ["fetch_atlantis"]
    assert {local.outcome, remote.outcome} <= {"cascading_failure", "all_failed"}
    assert remote.error("fetch_atlantis").to_dict()["frames"] == \
        local.error("fetch_atlantis").to_dict()["frames"]  # type: ignore[union-attr]
    assert {t.status for t in remote.tasks} <= {"succeeded", "failed", "cancelled"}


@pytest.mark.parametrize("plan", EXAMPLES)
def test_every_example_plan_reports_the_same_on_ray(plan: str,
                                                    ray_executor: RayExecutor) -> None:
    with Coordinator(on_output=lambda task, line: None) as local:
        expected = local.run(PLANS / f"{plan}.toml")
    with Coordinator(on_output=lambda task, line: None, executor=ray_executor) as remote:
        got = remote.run(PLANS / f"{plan}.toml")
    assert comparable(got) == comparable(expected)
    assert got.outcome == expected.outcome
    if expected.representative_task is not None:  # one of the root causes, as locally
        assert got.representative_task in expected.root_causes
        assert got.representative_error["kind"] == expected.representative_error["kind"]
    assert any(task.status != "succeeded" for task in got.tasks) == (plan != "succeeded")


@tool
def shout(text: str) -> str:
    """The text, upper case (a tool that travels to the Ray workers by value)."""
    if text == "boom":
        raise ValueError("no boom on a Ray worker")
    return text.upper()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_python_tool_travels_and_its_error_comes_back_whole(
        tmp_path: Path, ray_executor: RayExecutor) -> None:
    script = write(tmp_path / "agent.lua", 'print("before")\n'
                                           'local r = tools.shout{text = args.text}\n'
                                           'print("after " .. r)\nreturn r\n')
    lines: list[tuple[str, str]] = []
    with Coordinator([shout], executor=ray_executor,
                     on_output=lambda task, line: lines.append((task, line))) as coordinator:
        report = coordinator.run([Task(id="ok", script=str(script), args={"text": "hi"}),
                                  Task(id="bad", script=str(script), args={"text": "boom"})])
    assert report.task("ok").result == "HI"
    assert [line for task, line in lines if task == "ok"] == ["before", "after HI"]
    assert [line for task, line in lines if task == "bad"] == ["before"]
    err = report.error("bad")
    assert err is not None and err.code == "tool/execution_failed"
    assert err.cause is not None and err.cause.code == "runtime/python_exception"
    assert "no boom on a Ray worker" in err.message
    files = [(frame.language, frame.file, frame.line) for frame in err.frames]
    assert ("lua", str(script), 2) in files
    assert any(lang == "python" and file == __file__ for lang, file, _ in files)
    assert err.context is not None and err.context.environment.pid != os.getpid()
    import ray

    nodes = ray.nodes()  # a local Ray started here listens on the loopback address only
    assert nodes and {node["NodeManagerAddress"] for node in nodes} == {"127.0.0.1"}


def test_ray_failures_are_retryable_unified_errors_and_the_actor_is_replaced(
        tmp_path: Path, ray_executor: RayExecutor) -> None:
    marker = tmp_path / "died-once"

    @tool
    def die_once() -> str:
        """Kill the process it runs in (a Ray worker), the first time only."""
        if not marker.exists():
            marker.write_text("x")
            os.kill(os.getpid(), signal.SIGKILL)
        return "alive"

    script = write(tmp_path / "agent.lua", "return tools.die_once()\n")
    with Coordinator([die_once], executor=ray_executor,
                     on_output=lambda task, line: None) as coordinator:
        once = coordinator.run([Task(id="t", script=str(script))])
        marker.unlink()
        retried = coordinator.run([Task(id="t", script=str(script),
                                        retry={"attempts": 2, "initial": 0.1})])
    err = once.error("t")
    assert err is not None and err.code == "runtime/remote_failed" and err.retryable
    assert err.fields["executor"] == "ray" and "Actor" in err.fields["reason"]
    assert err.cause is not None  # Ray's own error
    task = retried.task("t")
    assert (task.status, task.attempts, task.result) == ("succeeded", 2, "alive")


def test_a_timeout_stops_the_remote_script_and_its_cleanup_runs_there(
        tmp_path: Path, ray_executor: RayExecutor) -> None:
    @tool
    def nap() -> None:
        """Sleep a little."""
        time.sleep(0.05)

    script = write(tmp_path / "loop.lua", 'on_cancel(function(err) print("cleanup: " .. '
                                          'err.kind) end)\n'
                                          "while true do tools.nap() end\n")
    lines: list[str] = []
    with Coordinator([nap], executor=ray_executor,
                     on_output=lambda task, line: lines.append(line)) as coordinator:
        report = coordinator.run([Task(id="loop", script=str(script), timeout=1.0)])
    assert report.task("loop").status == "timed_out"
    assert report.error("loop").code == "async_execution/task_timeout"  # type: ignore[union-attr]
    assert lines == ["cleanup: task_timeout"]


def test_observers_see_the_workers_events_here_and_a_monitor_records_them(
        tmp_path: Path, ray_executor: RayExecutor) -> None:
    from host.monitor import Monitor

    seen: list[tuple[str, str | None]] = []

    @observer("tool_call_finished")
    def watch(ctx: Any) -> None:
        seen.append((ctx.tool, ctx.error.code if ctx.error is not None else None))

    @observer("run_finished")
    def runs(ctx: Any) -> None:
        seen.append(("run", ctx.script))

    script = write(tmp_path / "agent.lua", "local ok = pcall(tools.shout, {text = 'boom'})\n"
                                           "return tools.shout{text = 'hi'}\n")
    monitor = Monitor(tmp_path / "errors.db")
    with Coordinator([shout], hooks=[watch, runs], monitor=monitor, executor=ray_executor,
                     on_output=lambda task, line: None) as coordinator:
        report = coordinator.run([Task(id="t", script=str(script))])
    assert report.task("t").result == "HI"
    assert seen == [("shout", "tool/execution_failed"), ("shout", None), ("run", str(script))]
    monitor.close()
    records = Monitor(tmp_path / "errors.db").records()
    assert [record["code"] for record in records] == ["tool/execution_failed"]
    assert records[0]["tool"] == "shout"


def test_controllers_and_questions_cannot_travel_and_are_refused_first(
        tmp_path: Path, ray_executor: RayExecutor) -> None:
    from host.hooks import Continue, controller

    @controller("before_tool_call")
    def decide(ctx: Any) -> Any:
        return Continue()

    script = write(tmp_path / "agent.lua", "return 1\n")
    with Coordinator(hooks=[decide], executor=ray_executor) as coordinator, \
            pytest.raises(ConfigurationError.InvalidValue) as caught:
        coordinator.run([Task(id="t", script=str(script))])
    assert caught.value.fields["value"] == "before_tool_call"
    assert "Ray workers" in str(caught.value)
    with Coordinator(executor=ray_executor, on_human_input=lambda q: "yes") as coordinator, \
            pytest.raises(ConfigurationError.InvalidValue) as caught:
        coordinator.run([Task(id="t", script=str(script))])
    assert caught.value.fields["key"] == "on_human_input"


def test_a_context_crosses_as_data_and_only_as_a_hook_context() -> None:
    from bridge import ToolError
    from host.hooks.points import Caller, ToolResultContext
    from host.ray_executor import context_data, context_from_data

    ctx = ToolResultContext("r", "t", {"a": [1]}, Caller("lua", "x.lua", 3), 1, None,
                            ToolError.NotFound(tool_name="t"), "execution", 0.5, 1)
    back = context_from_data(json.loads(json.dumps(context_data(ctx))))
    assert back._replace(error=None) == ctx._replace(error=None)
    assert back.error.to_dict()["fields"] == ctx.error.to_dict()["fields"]
    with pytest.raises(ValueError):
        context_from_data({"$context": "Popen", "fields": []})


def test_a_tools_file_that_differs_on_the_worker_is_refused(tmp_path: Path) -> None:
    from host.ray_executor import HostRecipe, shipped_files

    tools = write(tmp_path / "tools.py", "x = 1\n")
    files, contents = shipped_files([str(tools)])
    recipe = HostRecipe(tools=[str(tools)], memory_mb=64, stack_kb=256,
                        sandbox="constrained", files=files, contents=contents)
    tools.write_text("x = 2\n")  # as if the worker's node had another version
    with pytest.raises(ConfigurationError.LoadFailed) as caught:
        recipe.build(print)
    assert str(tools) in str(caught.value) and "not the driver's" in str(caught.value)
    assert tools.read_text() == "x = 2\n"  # never overwritten


def test_tools_files_and_libraries_travel_by_content_to_a_node_without_them(
        tmp_path: Path) -> None:
    """A worker's node without the plan's files (another machine) gets the driver's
    copies at the same paths: the tool and the library work there, and a failure in the
    tools file names its file and line as on the driver."""
    import shutil

    from host.ray_executor import HostRecipe, shipped_files

    tools = write(tmp_path / "driver" / "tools.py",
                  "from host import tool\n\n@tool\ndef twice(x: int) -> int:\n"
                  "    \"\"\"Doubles x, or fails on 0.\"\"\"\n"
                  "    if x == 0:\n        raise ValueError('zero')\n    return 2 * x\n")
    library = tmp_path / "driver" / "lib"
    write(library / "helper.lua", "return { inc = function(n) return n + 1 end }\n")
    files, contents = shipped_files([str(tools), str(library)])
    recipe = HostRecipe(tools=[str(tools)], memory_mb=64, stack_kb=256,
                        sandbox="constrained", libraries=[str(library)], files=files,
                        contents=contents)
    shutil.rmtree(tmp_path / "driver")  # as on a node that never had them
    lines: list[str] = []
    host = recipe.build(lines.append)
    source = ("local helper = require('helper')\n"
              "return helper.inc(tools.twice{x = 20})\n")
    assert host.run_source(source, "lua", str(tmp_path / "a.lua")) == 41
    assert tools.read_text().startswith("from host import tool")
    with pytest.raises(SpellError) as caught:
        host.run_source("return tools.twice{x = 0}\n", "lua", str(tmp_path / "b.lua"))
    python_frames = [f for e in caught.value.chain() for f in e.frames
                     if f.language == "python"]
    assert any(f.file == str(tools) and f.line == 7 for f in python_frames), python_frames


def test_more_than_the_shipping_limit_is_refused_before_anything_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from host import ray_executor

    library = tmp_path / "lib"
    write(library / "a.lua", "return 1\n" * 100)
    write(library / "b.lua", "return 2\n" * 100)
    monkeypatch.setattr(ray_executor, "MAX_SHIPPED", 1500)
    with pytest.raises(ConfigurationError.InvalidValue) as caught:
        ray_executor.shipped_files([str(library)])
    assert "by content" in str(caught.value)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_address_is_a_network_error_naming_it_at_once() -> None:
    address = f"127.0.0.1:{_closed_port()}"
    began = time.monotonic()
    with pytest.raises(NetworkError.Connection) as caught:
        RayExecutor(address).connect()
    assert address in str(caught.value)
    assert time.monotonic() - began < 10


def test_a_silent_server_at_the_address_is_a_network_error_within_seconds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A port that accepts connections but is no Ray cluster (a listener that never
    answers): ray.init waited minutes for a GCS there; the probe gives up in seconds."""
    from host import ray_executor

    monkeypatch.setattr(ray_executor, "CONNECT_TIMEOUT", 0.5)  # 5 s by default
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        began = time.monotonic()
        with pytest.raises(NetworkError.Connection) as caught:
            RayExecutor(address).connect()
    assert address in str(caught.value)
    assert "did not answer as a Ray cluster (a GCS) within 0.5 s" in str(caught.value)
    assert time.monotonic() - began < 30  # not Ray's minutes


def test_a_web_server_at_the_address_is_a_network_error_saying_it_is_not_ray() -> None:
    """A real HTTP/1 server on loopback answers the probe with its own error page."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        address = f"127.0.0.1:{server.server_address[1]}"
        with pytest.raises(NetworkError.Connection) as caught:
            RayExecutor(address).connect()
    finally:
        server.shutdown()
        server.server_close()
    assert address in str(caught.value) and "does not speak gRPC" in str(caught.value)


def test_without_ray_the_executor_is_a_configuration_error_saying_what_to_install(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    script = write(tmp_path / "agent.lua", "return 1\n")
    with pytest.raises(ConfigurationError) as caught:
        Coordinator(executor="ray").run([Task(id="t", script=str(script))])
    assert "pip install 'polyspell[ray]'" in str(caught.value)


def test_the_cli_joins_a_cluster_and_prints_the_local_report(
        ray_executor: RayExecutor) -> None:
    import ray

    ray_executor.connect()  # the session's local Ray: the CLI joins it by its address
    address = ray.get_runtime_context().gcs_address
    local = polyspell("plan", PLANS / "partial.toml", "--json", "--no-record")
    remote = polyspell("plan", PLANS / "partial.toml", "--executor", "ray", "--ray-address",
                       address, "--json", "--no-record", timeout=180)
    assert remote.returncode == local.returncode == 1, remote.stderr
    assert comparable_json(remote.stdout) == comparable_json(local.stdout)


def comparable_json(text: str) -> Any:
    from host import PlanReport

    return comparable(PlanReport.model_validate(json.loads(text)))


def test_ray_address_with_the_local_executor_is_a_usage_error() -> None:
    out = polyspell("plan", PLANS / "partial.toml", "--executor", "local",
                    "--ray-address", "auto")
    assert out.returncode == 2 and "--ray-address goes with --executor ray" in out.stderr


def test_a_plan_names_its_executor_and_the_code_wins_over_it(
        tmp_path: Path, ray_executor: RayExecutor) -> None:
    script = write(tmp_path / "pid.lua", "return 1\n")
    plan = write(tmp_path / "plan.toml", '[plan]\nexecutor = "ray"\nray_address = "auto"\n'
                                         f'[[task]]\nid = "t"\nscript = "{script.name}"\n')
    from host.plan import load_plan

    loaded = load_plan(plan)
    assert (loaded.executor, loaded.ray_address) == ("ray", "auto")
    with Coordinator(on_output=lambda task, line: None) as coordinator:
        assert coordinator._executor_for(loaded).name == "ray"  # the plan's
    with Coordinator(executor="local") as coordinator:
        assert coordinator._executor_for(loaded) is coordinator.executor  # the code's
        assert coordinator.run(loaded).task("t").result == 1
    bad = write(tmp_path / "bad.toml", '[plan]\nexecutor = "dask"\n[[task]]\nid = "t"\n'
                                       f'script = "{script.name}"\n')
    with pytest.raises(ConfigurationError.InvalidPlan):
        load_plan(bad)


def test_an_unknown_executor_is_refused() -> None:
    with pytest.raises(ConfigurationError.InvalidValue):
        Coordinator(executor="dask")
    out = polyspell("plan", PLANS / "partial.toml", "--executor", "dask")
    assert out.returncode == 2


def test_errors_made_remotely_read_back_as_the_same_variant() -> None:
    err = SpellError.from_dict(json.loads(json.dumps(
        SpellError.from_dict({"category": "runtime", "kind": "remote_failed",
                              "message": "x", "fields": {"executor": "ray",
                                                          "reason": "ActorDiedError"}})
        .to_dict())))
    assert err.code == "runtime/remote_failed" and err.retryable


def test_a_ray_too_old_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from host.ray_executor import _ray

    monkeypatch.setattr(ray, "__version__", "2.9.3")
    with pytest.raises(ConfigurationError.InvalidValue) as caught:
        _ray()
    assert "Ray 2.9.3 is too old" in str(caught.value)


@tool
def engine_workers() -> list[str]:
    """The command lines of this process's children that are polyspell engine workers."""
    me = os.getpid()
    children = set()
    for task in os.listdir(f"/proc/{me}/task"):
        with open(f"/proc/{me}/task/{task}/children") as listed:
            children.update(listed.read().split())
    lines = []
    for child in children:
        with open(f"/proc/{child}/cmdline", "rb") as cmdline:
            lines.append(cmdline.read().replace(b"\0", b" ").decode())
    return [line for line in lines if "engines.worker" in line]


def test_in_process_isolation_the_workers_engines_run_in_confined_processes(
        tmp_path: Path, ray_executor: RayExecutor) -> None:
    script = write(tmp_path / "agent.lua", "return tools.engine_workers()\n")
    for isolation, expected in (("thread", False), ("process", True)):
        with Coordinator([engine_workers], executor=ray_executor, isolation=isolation,
                         on_output=lambda task, line: None) as coordinator:
            report = coordinator.run([Task(id="t", script=str(script))])
        assert bool(report.task("t").result) is expected, (isolation, report.task("t"))


def test_a_task_runs_on_its_lua_version_on_a_ray_worker(
        tmp_path: Path, ray_executor: RayExecutor) -> None:
    script = write(tmp_path / "version.lua", "return _VERSION\n")
    tasks = [Task(id="default", script=str(script)),
             Task(id="old", script=str(script), lua_version="5.4")]
    with Coordinator(executor=ray_executor, on_output=lambda task, line: None) as coordinator:
        report = coordinator.run(tasks)
    assert report.results == {"default": "Lua 5.5", "old": "Lua 5.4"}


def test_a_tool_that_cannot_travel_is_refused_before_anything_runs(
        tmp_path: Path, ray_executor: RayExecutor) -> None:
    import threading

    lock = threading.Lock()  # no pickle of it exists

    @tool
    def locked() -> int:
        """Holds a lock."""
        with lock:
            return 1

    script = write(tmp_path / "agent.lua", "return tools.locked()\n")
    with Coordinator([locked], executor=ray_executor) as coordinator, \
            pytest.raises(ConfigurationError.InvalidValue) as caught:
        coordinator.run([Task(id="t", script=str(script))])
    assert "cannot travel to the Ray workers" in str(caught.value)


def test_ray_leaves_this_process_print_alone(ray_executor: RayExecutor) -> None:
    import builtins

    original = builtins.print
    ray_executor.connect()
    import ray
    from ray.experimental import tqdm_ray

    tqdm_ray.instance()  # what Ray calls when a worker's progress bar reaches the driver
    assert builtins.print is original and ray.is_initialized()
