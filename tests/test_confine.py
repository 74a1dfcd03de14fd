"""engines.confine: a process that confined itself opens no file, socket or process, and
its engines still run scripts, errors and limits included.

Each test runs in a real child process (confinement cannot be undone), which prints one
JSON line of what it saw.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Landlock and seccomp are Linux's")


def in_confined_child(body: str, tmp_path: Path) -> dict:
    """Run ``body`` in a child that settled and confined itself; its JSON answer."""
    program = textwrap.dedent("""
        import json, os, socket, subprocess, sys, threading, time
        import engines
        from engines.confine import confine, settle
        for language in ("lua", "javascript"):
            engines.engine_class(language)
        settle()
        applied = confine()
        out = {"applied": applied}

        def attempt(name, action):
            try:
                action()
                out[name] = "allowed"
            except OSError as exc:
                out[name] = exc.__class__.__name__
    """) + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env={"PYTHONPATH": str(ROOT),
                                                     "SECRET_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text("the host's secret")
    return path


def walls_offered() -> list[str]:
    """What this kernel offers, from a child that confines itself and says."""
    done = subprocess.run(
        [sys.executable, "-c",
         "import json; from engines.confine import confine; print(json.dumps(confine()))"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={"PYTHONPATH": str(ROOT)})
    return json.loads(done.stdout)


def test_a_confined_process_opens_no_file_socket_or_process(tmp_path, secret):
    if "seccomp" not in walls_offered() or "landlock fs" not in walls_offered():
        pytest.skip("this kernel offers neither Landlock nor seccomp to this process")
    seen = in_confined_child(f"""
        attempt("read a file", lambda: open({str(secret)!r}).read())
        attempt("write a file", lambda: open(os.environ["SECRET_DIR"] + "/new", "w"))
        attempt("list a folder", lambda: os.listdir(os.environ["SECRET_DIR"]))
        attempt("open a socket", lambda: socket.socket())
        attempt("connect to loopback", lambda: socket.create_connection(("127.0.0.1", 9)))
        attempt("a Unix socket pair", lambda: socket.socketpair())
        attempt("fork", lambda: os.fork())
        attempt("run a program", lambda: subprocess.run(["/bin/true"]))
        attempt("signal its parent", lambda: os.kill(os.getppid(), 0))
        ran = []
        thread = threading.Thread(target=lambda: ran.append(1))
        thread.start()
        thread.join()
        out["a thread"] = "allowed" if ran else "refused"
        read, write = os.pipe()  # descriptors made, or held, before: still work
        os.write(write, b"x")
        out["a pipe"] = "allowed" if os.read(read, 1) == b"x" else "refused"
    """, tmp_path)
    assert seen["applied"][:2] == ["no_new_privs", "landlock fs"]
    assert {name: seen[name] for name in (
        "read a file", "write a file", "list a folder", "open a socket",
        "connect to loopback", "a Unix socket pair", "fork", "run a program")} == {
        "read a file": "PermissionError", "write a file": "PermissionError",
        "list a folder": "PermissionError", "open a socket": "PermissionError",
        "connect to loopback": "PermissionError", "a Unix socket pair": "PermissionError",
        "fork": "PermissionError", "run a program": "PermissionError"}
    if "landlock scope" in seen["applied"]:
        assert seen["signal its parent"] == "PermissionError"
    assert (seen["a thread"], seen["a pipe"]) == ("allowed", "allowed")


def test_engines_still_run_scripts_errors_and_limits_once_confined(tmp_path):
    if "landlock fs" not in walls_offered():
        pytest.skip("this kernel offers no Landlock to this process")
    seen = in_confined_child("""
        from bridge import ToolError
        from bridge.envelope import error_envelope
        from engines import Limits, ToolInfo, ToolReply, Suspended, make_engine

        failure = error_envelope(ToolError.ExecutionFailed(tool_name="fail", reason="down"),
                                 ref=lambda err: 1)
        scripts = {
            "lua": ["return tools.echo{x = 1}.x + 1", "error('boom')",
                    "local t = nil return t.x", "return tools.fail{}",
                    "while true do end", "local function f() return f() + 1 end return f()",
                    "return function() end",
                    "error({category = 'tool', kind = 'timeout', "
                    "fields = {tool_name = 'x', duration = 1}})"],
            "javascript": [
                "async function main() { return (await tools.echo({x: 1})).x + 1; }",
                "throw new Error('boom')", "null.x",
                "async function main() { return await tools.fail({}); }",
                "while (true) {}", "function f() { return f() + 1; } f()",
                "async function main() { return 10n; }"],
        }
        results = {}
        for language, sources in scripts.items():
            for source in sources:
                engine = make_engine(language, limits=Limits(timeout=0.5, memory_mb=64))
                deadline = time.monotonic() + 0.5
                step = engine.start(source, "agent", None,
                                    [ToolInfo("echo"), ToolInfo("fail")], deadline)
                while isinstance(step, Suspended):
                    step = engine.resume([
                        ToolReply(q.id, result=q.params) if q.tool == "echo"
                        else ToolReply(q.id, error=failure) for q in step.requests], deadline)
                if hasattr(step, "error"):
                    step.error.to_dict()
                    results.setdefault(language, []).append(step.error.code)
                else:
                    results.setdefault(language, []).append(step.result)
                engine.close()
        out["results"] = results
    """, tmp_path)
    assert seen["results"] == {
        "lua": [2, "script/lua", "script/lua", "tool/execution_failed",
                "script/resource_exhaustion", "resource/memory_exhaustion",
                "script/cross_engine_communication", "tool/timeout"],
        "javascript": [2, "script/javascript", "script/javascript", "tool/execution_failed",
                       "script/resource_exhaustion", "script/resource_exhaustion",
                       "script/cross_engine_communication"],
    }


def test_every_error_can_be_built_once_confined(tmp_path):
    """settle() builds only one error variant's model: every other one is built on first
    use, after confinement, and must need no file then (pydantic's modules are in)."""
    if "landlock fs" not in walls_offered():
        pytest.skip("this kernel offers no Landlock to this process")
    seen = in_confined_child("""
        from bridge.errors import variants

        built = failed = 0
        for variant in variants():
            try:
                variant.fields_model.model_rebuild(force=True)
                built += 1
            except Exception as exc:
                failed += 1
                out.setdefault("failures", []).append(f"{variant.__name__}: {exc}"[:200])
        out["built"], out["failed"] = built, failed
    """, tmp_path)
    assert seen["failed"] == 0, seen.get("failures")
    assert seen["built"] > 50
