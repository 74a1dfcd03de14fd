"""A two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``): a node removed
while its tasks run fails them with the node's death, and the task's own retry runs them
again on the node that is left (issue 16).

The scenario runs in a Python process of its own (``python tests/test_ray_cluster.py``):
a driver whose cluster's GCS goes away is ended by Ray itself, and the test session has
had other Rays before; neither may take the test session down with it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from host import Coordinator, Task, tool  # noqa: E402
from host.ray_executor import RayExecutor, loopback_only  # noqa: E402


@tool
def hold(seconds: float) -> str:
    """Wait ``seconds`` (long enough for the test to remove the node under it)."""
    time.sleep(seconds)
    return "held"


def test_a_node_removed_mid_task_fails_its_tries_which_succeed_on_retry_elsewhere(
        tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    clean = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    done = subprocess.run([sys.executable, __file__, str(tmp_path)], capture_output=True,
                          text=True, timeout=300, cwd=root,
                          env={**clean, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "scenario passed"


def scenario(tmp_path: Path) -> None:
    """The node's removal, asserted (run by the test in a process of its own)."""
    if ray.is_initialized():
        ray.shutdown()
    loopback_only(ray)  # every node on 127.0.0.1
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    executor = RayExecutor(cluster.address)
    runner: threading.Thread | None = None
    try:
        executor.connect()
        deadline = time.monotonic() + 60  # both nodes' CPUs known, as placement reads them
        while time.monotonic() < deadline and sum(
                node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]) < 2:
            time.sleep(0.1)
        script = tmp_path / "hold.lua"
        script.write_text('print("started")\nreturn tools.hold{seconds = 4}\n')
        started: list[str] = []
        tasks = [Task(id=f"t{n}", script=str(script), retry={"attempts": 2, "initial": 0.1})
                 for n in range(2)]
        reports = []
        with Coordinator([hold], executor=executor,
                         on_output=lambda task, line: started.append(task)) as coordinator:
            runner = threading.Thread(target=lambda: reports.append(coordinator.run(tasks)))
            runner.start()
            deadline = time.monotonic() + 120
            while len(started) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(started) == 2, "both tasks started, one on each node"
            assert sorted(executor.nodes) == sorted([worker.node_id, cluster.head_node.node_id]), (
                executor.nodes, [(n["NodeID"], n["Alive"], n["Resources"]) for n in ray.nodes()])
            cluster.remove_node(worker)
            runner.join(timeout=120)
        (report,) = reports
        by_attempts = sorted(task.attempts for task in report.tasks)
        assert [task.status for task in report.tasks] == ["succeeded", "succeeded"]
        assert by_attempts == [1, 2]  # the one on the removed node ran again
        retried = next(task for task in report.tasks if task.attempts == 2)
        (event,) = [e for e in retried.recovery if e["action"] == "retry"]
        assert event["error"] == "runtime/remote_failed"
        assert worker.node_id not in executor.nodes  # the dead actor is gone
        assert len(executor.nodes) == 2  # and replaced, on the node that is left
    finally:
        if runner is not None:  # (a failed assertion: the plan ends before Ray does)
            runner.join(timeout=120)
        executor.close()
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    import sys

    scenario(Path(sys.argv[1]))
    print("scenario passed")
