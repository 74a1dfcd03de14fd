"""Red team on the Ray executor (issue 16): addresses a careless user types, coordinators
that share one executor, what workers forward. Real sockets and a real local Ray.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray")

from bridge import ConfigurationError, NetworkError, SpellError
from host import Coordinator, Task, tool
from host.ray_executor import RayExecutor


@tool
def wait_for(started: str, release: str) -> str:
    """Say it started (a file), then wait until told to finish (another file)."""
    Path(started).touch()
    for _ in range(6000):
        if Path(release).exists():
            return "released"
        time.sleep(0.01)
    return "never released"


@tool
def echo(text: str) -> str:
    """The text."""
    return text


# -- addresses ----------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1:99999", "127.0.0.1:65536", "127.0.0.1:0",
                                     "127.0.0.1:\u0663", "::1:6379"])
def test_an_address_with_no_port_ray_could_use_is_refused_as_configuration(
        address: str) -> None:
    """A port out of range is no port: Python's resolver would silently wrap 99999 to
    34463 and probe that one; a digit that is not ASCII is not one Ray reads; an IPv6
    address without brackets is ambiguous (Ray refuses it)."""
    with pytest.raises(ConfigurationError.InvalidValue) as caught:
        RayExecutor(address)
    assert address in str(caught.value)


def test_a_bracketed_ipv6_address_is_probed_at_that_address() -> None:
    """``[::1]:port`` (how Ray writes an IPv6 address) is probed at ``::1``, not looked up
    as a host name called ``[::1]``."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    with socket.socket(socket.AF_INET6) as sock:
        try:
            sock.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback here")
        port = sock.getsockname()[1]
    address = f"[::1]:{port}"
    with pytest.raises(NetworkError.Connection) as caught:
        RayExecutor(address).connect()
    assert address in str(caught.value)
    assert "refused" in str(caught.value).lower()


def test_a_cluster_on_the_loopback_address_is_joined_there(tmp_path: Path) -> None:
    """``ray_address="127.0.0.1:PORT"``: Ray rewrites a loopback host to the machine's
    outward interface address (its node IP) unless clusters are off, so joining a cluster
    bound to the loopback address (as every Ray here is) waited forever for a GCS at the
    other address."""
    import os
    import subprocess
    import sys

    import psutil

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    import tempfile

    temp = Path(tempfile.mkdtemp(prefix="rt-ray-", dir="/tmp"))  # Ray's socket paths: short
    # what an earlier local Ray of this test session left in the environment stays out
    clean = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env = {**clean, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
    ray_cli = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=1",
                    "--node-ip-address=127.0.0.1", "--include-dashboard=false",
                    f"--temp-dir={temp}"], env=env, check=True, capture_output=True,
                   timeout=120)
    try:
        script = tmp_path / "agent.lua"
        script.write_text("return 1\n")
        root = Path(__file__).resolve().parent.parent
        code = ("import sys\nfrom host import Coordinator, Task\n"
                f"with Coordinator(executor='ray', ray_address='127.0.0.1:{port}', "
                "on_output=lambda task, line: None) as c:\n"
                "    print(c.run([Task(id='t', script=sys.argv[1])]).outcome)\n")
        try:
            out = subprocess.run([sys.executable, "-c", code, str(script)],
                                 capture_output=True, text=True, timeout=90, cwd=root,
                                 env={**clean, "PYTHONPATH": str(root)})
        except subprocess.TimeoutExpired:
            pytest.fail("joining the loopback cluster never finished")
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.strip().splitlines()[-1] == "succeeded"
    finally:  # that cluster's processes (only those: found by its temp folder)
        for proc in psutil.process_iter(["cmdline"]):
            if any(str(temp) in part for part in proc.info["cmdline"] or ()):
                try:
                    proc.kill()
                except psutil.Error:
                    pass
        import shutil

        shutil.rmtree(temp, ignore_errors=True)


# -- coordinators sharing one executor ------------------------------------------------------


def test_a_second_coordinator_does_not_kill_the_workers_of_a_plan_running(
        tmp_path: Path, ray_executor: RayExecutor) -> None:
    """Two coordinators, one RayExecutor: the second's plan must not end the actors the
    first one's task is running on (they were made for the first's host, its tools); it
    waits its turn or is refused clearly, and never runs on the other's workers."""
    started, release = tmp_path / "started", tmp_path / "release"
    slow = tmp_path / "slow.lua"
    slow.write_text(f"return tools.wait_for{{started = {str(started)!r}, "
                    f"release = {str(release)!r}}}\n")
    quick = tmp_path / "quick.lua"
    quick.write_text('return tools.echo{text = "quick"}\n')
    reports: dict[str, Any] = {}

    def first() -> None:
        with Coordinator([wait_for], executor=ray_executor,
                         on_output=lambda task, line: None) as coordinator:
            reports["first"] = coordinator.run([Task(id="slow", script=str(slow))])

    thread = threading.Thread(target=first)
    thread.start()
    try:
        for _ in range(12000):  # its task is running on a Ray worker
            if started.exists() or not thread.is_alive():
                break
            time.sleep(0.01)
        assert started.exists()
        with Coordinator([echo], executor=ray_executor,
                         on_output=lambda task, line: None) as second:
            try:
                reports["second"] = second.run([Task(id="quick", script=str(quick))])
            except SpellError as err:
                reports["second"] = err
    finally:
        release.touch()
        thread.join(120)
    first_report = reports["first"]
    assert first_report.task("slow").status == "succeeded", first_report.error("slow")
    assert first_report.task("slow").result == "released"
    second_report = reports["second"]
    if isinstance(second_report, SpellError):  # refused while the other plan runs
        assert "another plan" in str(second_report)
    else:
        assert second_report.task("quick").result == "quick"


# -- a local Ray started in awkward places ---------------------------------------------------

# Three ways a local Ray failed to start or died, checked in one process (a Ray start costs
# seconds): the plan is run from a thread that then ends, RAY_ADDRESS names another cluster,
# and the command line holds a file name that is not UTF-8.
AWKWARD_START = b'''
import sys, threading
from host import Coordinator
from host.ray_executor import RayExecutor

executor = RayExecutor()
plan_file = sys.argv[1]
outcomes = []

def plan():
    with Coordinator(executor=executor, on_output=lambda task, line: None) as coordinator:
        outcomes.append(coordinator.run(plan_file).outcome)

thread = threading.Thread(target=plan)  # a web server's request thread, say
thread.start()
thread.join()
plan()  # the same executor, from another thread, once the first has ended
executor.close()
print(outcomes)
'''


def test_a_local_ray_starts_and_lives_wherever_it_is_started_from(tmp_path: Path) -> None:
    """- Ray's processes die with the *thread* that started them (Linux's parent-death
    signal is per thread): a local Ray started by a plan run from a short-lived thread
    must not go away with it, taking the next plan (and then the process) down.
    - ``ray_address=None`` starts a local Ray: Ray's own discovery (``RAY_ADDRESS``, a
    cluster someone started with ``ray start``) must not make it join another cluster,
    nor fail with Ray's raw ``ValueError`` about ``num_cpus``.
    - Ray names the driver's job by its command line, sent as UTF-8: a file name that is
    not UTF-8 there (``polyspell plan café/plan.toml`` in Latin-1) made Ray fail to start.
    - Ray's notices about choices polyspell made for the Ray it started are not shown."""
    import os
    import subprocess
    import sys

    folder = os.path.join(os.fsencode(tmp_path), b"caf\xe9")
    os.mkdir(folder)
    with open(os.path.join(folder, b"agent.lua"), "wb") as file:
        file.write(b"return 1\n")
    plan = os.path.join(folder, b"plan.toml")
    with open(plan, "wb") as file:
        file.write(b'[[task]]\nid = "t"\nscript = "agent.lua"\n')
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([os.fsencode(sys.executable), b"-c", AWKWARD_START, plan],
                         capture_output=True, timeout=240, cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root),
                              "RAY_ADDRESS": f"127.0.0.1:{closed}"})
    stderr = out.stderr.decode(errors="replace")
    assert out.returncode == 0, stderr[-3000:]
    assert out.stdout.decode().strip().splitlines()[-1] == "['succeeded', 'succeeded']"
    assert "SIGTERM handler" not in stderr and "Token authentication" not in stderr


# -- a flood of printed lines -------------------------------------------------------------


@tool
def flooded(done: str) -> bool:
    """Say the script has printed everything (a file)."""
    Path(done).touch()
    return True


def test_stops_that_come_after_their_try_ended_are_not_kept(tmp_path: Path) -> None:
    """The driver stops a try as its time runs out, and the try may end just then: its
    actor kept each such late stop for ever (a plan of many tries timing out grew it)."""
    import asyncio

    from bridge import AsyncExecutionError
    from host.ray_executor import HostRecipe, TryRunner

    runner = TryRunner(HostRecipe(tools=[], memory_mb=64, stack_kb=256,
                                  sandbox="constrained"))
    stop = AsyncExecutionError.TaskCancelled(task_id="t", reason="late",
                                             cancellation_source="caller").to_dict()

    async def run(key: str) -> list[Any]:
        return [item async for item in runner.run(
            key, str(tmp_path / "a.lua"), "return 1\n", "lua", None, 60.0, None, None, None)]

    for number in range(50):
        items = asyncio.run(run(f"k{number}"))
        assert items[-1] == ("done", items[-1][1]) and items[-1][1]["ok"], items[-1]
        runner.stop(f"k{number}", stop)  # after it ended
    runner.stop("early", stop)  # before its run came: kept for it
    assert list(runner._stops) == ["early"]
    items = asyncio.run(run("early"))
    assert not items[-1][1]["ok"] and "late" in str(items[-1][1]["error"])
    assert runner._stops == {}


def test_a_flood_of_lines_travels_in_batches_whole_and_in_order(tmp_path: Path) -> None:
    """Each item of a try's stream is a Ray object (a round trip of its own, about a
    millisecond): a script printing 20,000 lines took half a minute where the local
    executor takes a fifth of a second. What is queued when the stream is read goes as
    one item. Driven here as the actor's method, on its real host, without Ray."""
    import asyncio

    from host.ray_executor import HostRecipe, TryRunner

    done = tmp_path / "done"
    count = 5000
    source = (f"for i = 1, {count} do print('line ' .. i) end\n"
              f"tools.flooded{{done = {str(done)!r}}}\nreturn 1\n")
    runner = TryRunner(HostRecipe(tools=[flooded], memory_mb=64, stack_kb=256,
                                  sandbox="constrained"))

    async def read() -> list[Any]:
        stream = runner.run("k", str(tmp_path / "flood.lua"), source, "lua", None, 60.0, None,
                            None, None)
        items = [await stream.__anext__()]
        while not done.exists():  # everything printed is queued by now
            await asyncio.sleep(0.01)
        items += [item async for item in stream]
        return items

    items = asyncio.run(read())
    lines: list[str] = []
    for item in items:
        for kind, *rest in (item[1] if item[0] == "batch" else [item]):
            if kind == "out":
                lines.append(rest[0])
    assert lines == [f"line {i}" for i in range(1, count + 1)]
    assert len(items) <= 2 + count // 100, len(items)
    assert items[-1][0] == "done" or items[-1][1][-1][0] == "done"


# -- a plan its caller cancels ---------------------------------------------------------------


@tool
def mark(path: str) -> bool:
    """Touch ``path``, then take a short nap (a tool call in a loop)."""
    Path(path).touch()
    time.sleep(0.05)
    return True


def test_a_plan_its_caller_cancels_stops_the_script_on_the_worker(
        tmp_path: Path, ray_executor: RayExecutor) -> None:
    """The caller gives up on the plan (an anyio cancel): Ray cancels the try's stream
    first, and the stop the coordinator sends next found no run on the actor: the script
    went on calling its tools on the worker until its engine's time limit (minutes)."""
    import anyio

    started = tmp_path / "started"
    script = tmp_path / "loop.lua"
    script.write_text(f"while true do tools.mark{{path = {str(started)!r}}} end\n")

    async def main() -> None:
        with Coordinator([mark], executor=ray_executor,
                         on_output=lambda task, line: None) as coordinator:
            async with anyio.create_task_group() as group:
                group.start_soon(coordinator.arun, [Task(id="loop", script=str(script),
                                                         timeout=120)])
                while not started.exists():
                    await anyio.sleep(0.05)
                group.cancel_scope.cancel()

    anyio.run(main)
    for _ in range(60):  # the script stops at its next tool call: no more marks
        started.unlink(missing_ok=True)
        time.sleep(0.5)  # (a slow worker can only make this pass late, never fail)
        if not started.exists():
            break
    assert not started.exists()


def test_long_lines_travel_in_batches_of_bounded_size(tmp_path: Path) -> None:
    """A batch of queued lines is one Ray object: 1,000 lines of a megabyte each would be
    a gigabyte in one; a batch stops at BATCH_CHARS characters of lines."""
    import asyncio

    from host.ray_executor import BATCH_CHARS, HostRecipe, TryRunner

    done = tmp_path / "done"
    source = ("local line = string.rep('x', 2^20)\nfor i = 1, 12 do print(line) end\n"
              f"tools.flooded{{done = {str(done)!r}}}\nreturn 1\n")
    runner = TryRunner(HostRecipe(tools=[flooded], memory_mb=64, stack_kb=256,
                                  sandbox="constrained"))

    async def read() -> list[Any]:
        stream = runner.run("k", str(tmp_path / "long.lua"), source, "lua", None, 60.0, None,
                            None, None)
        items = [await stream.__anext__()]
        while not done.exists():
            await asyncio.sleep(0.01)
        items += [item async for item in stream]
        return items

    batches = [item[1] for item in asyncio.run(read()) if item[0] == "batch"]
    sizes = [sum(len(rest[0]) for kind, *rest in batch if kind == "out") for batch in batches]
    assert sum(sizes) == 12 * 2**20
    assert max(sizes) <= BATCH_CHARS + 2**20


def test_a_ray_client_url_without_ray_client_is_a_configuration_error() -> None:
    """``ray://`` needs Ray Client (``ray[client]``): without it, what to install is
    ``configuration/missing``, not a ``network/connection`` failure to an address."""
    from ray._private.utils import get_ray_client_dependency_error

    if get_ray_client_dependency_error() is None:
        pytest.skip("Ray Client is installed here")
    with pytest.raises(ConfigurationError.Missing) as caught:
        RayExecutor("ray://127.0.0.1:10001").connect()
    assert "ray[client]" in str(caught.value)
