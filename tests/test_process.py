"""The polyspell process as users drive it: Ctrl-C, time limits, and exiting when done.

These run the real ``polyspell`` command (``python -m host.cli`` on this checkout) and the
real signals. Wall-clock bounds are generous upper bounds for "it ends" on a loaded
machine; what the tests check is that nothing waits for a script that can no longer
matter: an interrupted run, or one that has already been reported as out of time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import anyio
import pytest

from bridge import SpellError
from host import Host, tool
from tests.conftest import pick
from tests.procs import children

ROOT = Path(__file__).resolve().parent.parent

TOOLS = r'''
import sys
import time

from host import tool


@tool
def ready() -> bool:
    """Tells the test that the script runs."""
    sys.stderr.write("READY\n")  # one write: tools of concurrent tasks print at once
    sys.stderr.flush()
    return True


@tool
def stuck(seconds: float = 30, say_ready: bool = False) -> str:
    """A careless sync tool: it sleeps (once it has told the test it is in here)."""
    if say_ready:
        ready()
    time.sleep(seconds)
    return "woke up"
'''

# Each script says READY on stderr when it is about to loop, or is inside its stuck tool.
SCRIPTS = {
    "loop.js": "tools.ready().then(() => { while (true) {} });",
    "loop.lua": "tools.ready{}\nwhile true do end",
    "stuck.lua": "return tools.stuck{say_ready = true}",
    "stuck.js": "async function main() { return await tools.stuck({say_ready: true}); }",
}


class Process:
    """A polyspell process whose stderr lines are read as they come, with their times."""

    def __init__(self, command: list[str], cwd: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
        self.proc = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True)  # its own process group: see the end
        self.lines: list[tuple[float, str]] = []
        self._seen = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._seen:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self._seen.notify_all()

    def wait_for_line(self, text: str, count: int = 1, timeout: float = 30) -> float:
        """When the ``count``-th stderr line containing ``text`` came."""
        def found() -> float | None:
            times = [t for t, line in self.lines if text in line]
            return times[count - 1] if len(times) >= count else None

        with self._seen:
            when = self._seen.wait_for(found, timeout=timeout)
        assert when, f"not {count} {text!r} on stderr within {timeout}s: {self.stderr()}"
        return when

    def wait(self, timeout: float) -> tuple[int, float]:
        """The exit code and when the process ended; kills it if it does not in time."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"still running {timeout}s later; stderr: {self.stderr()}")
        ended = time.monotonic()
        self._reader.join(5)
        return code, ended

    def stderr(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def wait_for_spinning(self, count: int, timeout: float = 30) -> None:
        """Until ``count`` of its threads have each burnt 0.1 s of CPU since this was called:
        its busy loops run (READY comes just before them, from a tool)."""
        if count == 0:
            return
        if not Path("/proc/self/task").is_dir():  # no per-thread CPU times to read here
            time.sleep(0.5)
            return
        before = _thread_cpu(self.proc.pid)
        deadline = time.monotonic() + timeout
        while True:
            now = _thread_cpu(self.proc.pid)
            spinning = [tid for tid, cpu in now.items() if cpu - before.get(tid, 0.0) >= 0.1]
            if len(spinning) >= count:
                return
            assert time.monotonic() < deadline, (
                f"not {count} busy threads within {timeout}s: {self.stderr()}")
            time.sleep(0.02)

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def assert_nothing_left(self) -> None:
        """No process of its group runs any more (it started none that outlived it)."""
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return
        self.kill()
        pytest.fail("a process of polyspell's group outlived it")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "tools.py").write_text(TOOLS)
    for name, source in SCRIPTS.items():
        (tmp_path / name).write_text(source + "\n")
    return tmp_path


@pytest.fixture
def started():
    """Processes started by a test, killed if the test leaves one running."""
    processes: list[Process] = []
    yield processes
    for process in processes:
        if process.proc.poll() is None:
            process.kill()


def _start(started: list[Process], *args: str | Path, cwd: Path) -> Process:
    """``polyspell ARGS`` (this checkout's, as ``python -m host.cli``)."""
    process = Process([sys.executable, "-m", "host.cli", *map(str, args)], cwd)
    started.append(process)
    return process


def _thread_cpu(pid: int) -> dict[int, float]:
    """The CPU seconds (user + system) each thread of process ``pid`` has used."""
    tick = os.sysconf("SC_CLK_TCK")
    times = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):  # the thread just ended
            continue
        times[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return times


# -- Ctrl-C ------------------------------------------------------------------------------


def _interrupt(process: Process, loops: int) -> None:
    """Ctrl-C once the scripts run (``loops`` of them in busy loops, the others inside
    their stuck tool): polyspell ends at once, says so, exits 130."""
    process.wait_for_spinning(loops)
    interrupted = time.monotonic()
    process.proc.send_signal(signal.SIGINT)
    code, ended = process.wait(timeout=20)
    assert code == 130, process.stderr()  # not -6: nothing aborts the exit either
    assert ended - interrupted < 5, process.stderr()
    assert process.lines[-1][1] == "polyspell: interrupted"
    assert "Traceback" not in process.stderr()
    process.assert_nothing_left()


@pytest.mark.parametrize("script", ["loop.js", "loop.lua", "stuck.lua", "stuck.js"])
def test_ctrl_c_ends_a_run_at_once(workdir, started, script):
    process = _start(started, "run", script, "--tools", "tools.py", "--timeout", "30",
                     cwd=workdir)
    process.wait_for_line("READY")
    _interrupt(process, loops=1 if script.startswith("loop") else 0)


@pytest.mark.parametrize("script", ["loop.js", "loop.lua"])
def test_ctrl_c_ends_a_run_and_its_worker_at_once(workdir, started, script):
    """With --isolation process the busy loop runs in a worker process (of polyspell's
    process group): Ctrl-C ends polyspell at once, and its worker with it."""
    process = _start(started, "run", script, "--tools", "tools.py", "--timeout", "30",
                     "--isolation", "process", cwd=workdir)
    process.wait_for_line("READY")
    workers = children(process.proc.pid)
    assert workers, "no worker process runs the script"
    time.sleep(0.3)  # the loop spins in the worker
    _interrupt(process, loops=0)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]




def test_ctrl_c_ends_a_plan_at_once(workdir, started):
    (workdir / "plan.toml").write_text(textwrap.dedent("""
        [plan]
        name = "busy"
        tools = ["tools.py"]

        [[task]]
        id = "spin_js"
        script = "loop.js"

        [[task]]
        id = "spin_lua"
        script = "loop.lua"

        [[task]]
        id = "sleeper"
        script = "stuck.lua"
    """))
    process = _start(started, "plan", "plan.toml", cwd=workdir)
    process.wait_for_line("READY", count=3)
    _interrupt(process, loops=2)


# -- the time limit ----------------------------------------------------------------------


# A JS busy loop may run cpu_factor (the number of cores) times past its deadline: 3 s
# make that wait long enough to see; the others would wait 30 s (the tool's sleep).
@pytest.mark.parametrize("script,timeout", [("loop.js", "3"), ("loop.lua", "1.5"),
                                            ("stuck.lua", "1.5"), ("stuck.js", "1.5")])
def test_a_run_out_of_time_exits_once_it_has_said_so(workdir, started, script, timeout):
    process = _start(started, "run", script, "--tools", "tools.py", "--timeout", timeout,
                     cwd=workdir)
    reported = process.wait_for_line("script/resource_exhaustion")
    code, ended = process.wait(timeout=40)
    assert code == 4, process.stderr()
    assert ended - reported < 1.5, process.stderr()
    process.assert_nothing_left()


def test_a_python_program_that_used_host_run_exits_when_it_is_done(workdir, started):
    program = workdir / "program.py"
    program.write_text(textwrap.dedent("""
        import sys
        from bridge import SpellError
        from host import Host

        host = Host(["tools.py"], timeout=1)
        for source, language in [("while (true) {}", "js"), ("return tools.stuck{}", "lua")]:
            try:
                host.run_source(source, language)
            except SpellError as err:
                print(err.code, file=sys.stderr, flush=True)
        print("DONE", file=sys.stderr, flush=True)
    """))
    process = Process([sys.executable, str(program)], workdir)
    started.append(process)
    done = process.wait_for_line("DONE")
    code, ended = process.wait(timeout=40)
    assert code == 0, process.stderr()
    assert [line for _, line in process.lines[:2]] == ["script/resource_exhaustion"] * 2
    assert ended - done < 1.5, process.stderr()


# -- in a program: a run given up on leaves the host as it was -------------------------


@pytest.mark.anyio
async def test_the_script_runs_on_a_daemon_thread(language):
    seen: list[bool] = []

    @tool
    def where() -> bool:
        """Where sync tools run: on the run's engine thread."""
        seen.append(threading.current_thread().daemon)
        return True

    host = Host([where], timeout=5)
    assert await host.arun_source(pick(language, "return tools.where{}",
                                       "tools.where()"), language) in (True, None)
    assert seen == [True]


@pytest.mark.anyio
async def test_a_run_given_up_on_leaves_the_host_working(language):
    host = Host(timeout=20)
    with anyio.move_on_after(0.3) as scope:
        await host.arun_source(pick(language, "while true do end", "while (true) {}"),
                               language)
    assert scope.cancelled_caught
    for other in ("lua", "javascript"):  # the next runs, in both engines, are not disturbed
        assert await host.arun_source(pick(other, "return args.n + 1",
                                           "function main(a) { return a.n + 1; }"),
                                      other, args={"n": 1}) == 2


@pytest.mark.anyio
async def test_a_lua_run_given_up_on_stops_its_engine():
    def runs() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "polyspell run spin.lua"]

    host = Host(timeout=30)
    with anyio.move_on_after(0.3):
        await host.arun_source("while true do end", "lua", "spin.lua")
    assert runs()
    with anyio.fail_after(5):
        while runs():  # the run's thread ends soon
            await anyio.sleep(0.02)


@pytest.mark.anyio
async def test_a_time_limit_in_a_stuck_tool_does_not_wait_for_the_tool(language):
    @tool
    def stuck() -> str:
        """Sleeps past the run's time limit."""
        time.sleep(3)
        return "woke up"

    host = Host([stuck], timeout=0.3)
    started = time.monotonic()
    with pytest.raises(SpellError) as info:
        await host.arun_source(pick(language, "return tools.stuck{}", "tools.stuck()"),
                               language)
    assert info.value.code == "script/resource_exhaustion"
    assert time.monotonic() - started < 2.5
