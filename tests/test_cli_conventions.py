"""The habits a Python command keeps (issue 18): a version, ``python -m``, a subcommand's
own usage on a bad flag, files as positionals; and a blocking call inside an event loop."""

from __future__ import annotations

import asyncio
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from bridge import ConfigurationError, ScriptError
from host import Coordinator, Host, Task
from tests.cli import ROOT, environment, polyspell


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_prints_the_installed_version(flag: str) -> None:
    out = polyspell(flag)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"polyspell {importlib.metadata.version('polyspell')} ")
    assert f"Python {sys.version.split()[0]}" in out.stdout


def test_python_m_host_is_the_polyspell_command(tmp_path: Path) -> None:
    script = tmp_path / "one.lua"
    script.write_text("return 6 * 7\n")
    out = subprocess.run([sys.executable, "-m", "host", "run", str(script), "--no-record"],
                         capture_output=True, text=True, env=environment(), cwd=tmp_path,
                         timeout=60)
    assert (out.returncode, out.stdout.strip()) == (0, "42"), out.stderr
    version = subprocess.run([sys.executable, "-m", "host", "-V"], capture_output=True,
                             text=True, env=environment(), cwd=tmp_path, timeout=60)
    assert version.stdout.startswith("polyspell ")


@pytest.mark.parametrize("command", [["run", "x.lua"], ["plan", "p.toml"], ["tools"]])
def test_a_bad_flag_prints_the_subcommands_usage(command: list[str]) -> None:
    out = polyspell(*command, "--no-such-flag")
    assert out.returncode == 2
    assert out.stderr.startswith(f"usage: polyspell {command[0]} "), out.stderr
    assert f"polyspell {command[0]}: error: unrecognized arguments: --no-such-flag" \
        in out.stderr


def test_tools_takes_files_as_positionals_too(tmp_path: Path) -> None:
    first = tmp_path / "first.py"
    first.write_text('from host import tool\n\n@tool\ndef greet(name: str) -> str:\n'
                     '    """Says hello."""\n    return name\n')
    second = tmp_path / "second.py"
    second.write_text('from host import tool\n\n@tool\ndef shout(text: str) -> str:\n'
                      '    """Says it loud."""\n    return text\n')
    out = polyspell("tools", first, "--tools", second, "--json")
    assert out.returncode == 0, out.stderr
    import json

    assert [entry["name"] for entry in json.loads(out.stdout)] == ["greet", "shout"]


def test_host_run_inside_a_running_loop_says_to_await_arun(tmp_path: Path) -> None:
    """anyio's raw ``RuntimeError: Already running asyncio in this thread`` was all one got
    from ``Host.run`` in a coroutine (or a Jupyter cell)."""
    host = Host()
    script = tmp_path / "one.lua"
    script.write_text("return 1\n")

    async def inside() -> None:
        with pytest.raises(ConfigurationError.Usage) as caught:
            host.run(script)
        assert "await host.arun(...)" in str(caught.value)
        assert "asyncio" in str(caught.value)
        with pytest.raises(ConfigurationError.Usage) as caught:
            host.run_source("return 1", "lua")
        assert "await host.arun_source(...)" in str(caught.value)
        with Coordinator() as coordinator, pytest.raises(ConfigurationError.Usage) as caught:
            coordinator.run([Task(id="t", script=str(script))])
        assert "await coordinator.arun(...)" in str(caught.value)
        assert await host.arun(script) == 1  # what it says works

    asyncio.run(inside())
    assert host.run(script) == 1  # and outside a loop, as before


def test_host_run_inside_trio_says_so_too(tmp_path: Path) -> None:
    trio = pytest.importorskip("trio")
    host = Host()

    async def inside() -> None:
        with pytest.raises(ConfigurationError.Usage) as caught:
            host.run_source("return 1", "lua")
        assert "trio" in str(caught.value)

    trio.run(inside)



def search(q: str) -> str:
    """Searches."""
    return q


def fetch(url: str) -> str:
    """Fetches."""
    return url


NOT_FOUND = {
    "lua": "local ok, err = pcall(function() return tools.serch{q = 'x'} end)\n"
           "return {err.fields.did_you_mean, err.fields.available, err.message}\n",
    "javascript": "async function main() {\n"
                  "  try { await tools.serch({q: 'x'}); } catch (err) {\n"
                  "    return [err.fields.did_you_mean, err.fields.available, err.message];\n"
                  "  }\n}\n",
}


def test_tool_not_found_suggests_the_tool_meant_and_lists_the_tools(language: str) -> None:
    from host import tool

    host = Host([tool(search), tool(fetch)])
    meant, available, message = host.run_source(NOT_FOUND[language], language)
    assert (meant, available) == ("search", ["fetch", "search"])
    assert message == "Tool not found: serch (did you mean 'search'? tools: fetch, search)"
    with pytest.raises(Exception) as caught:
        host.run_source("return tools.zzz{}" if language == "lua"
                        else "async function main() { return await tools.zzz({}); }",
                        language)
    err = caught.value
    assert err.code == "tool/not_found" and err.fields["did_you_mean"] is None
    assert "(tools: fetch, search)" in err.message


def test_a_time_limit_error_says_the_limit_and_how_to_raise_it(tmp_path: Path) -> None:
    script = tmp_path / "spin.lua"
    script.write_text("while true do end\n")
    out = polyspell("run", script, "--timeout", "0.3", "--no-record")
    assert out.returncode == 4
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("script/resource_exhaustion: Script resource exhaustion: time in "
                           "lua (its time limit, 0.3 s, ran out: raise it with --timeout S")
    assert "timeout=S in Host(...)" in last
    with pytest.raises(ScriptError.ResourceExhaustion) as caught:
        Host(timeout=0.2).run_source("while (true) {}", "javascript")
    assert caught.value.fields["limit"] == 0.2 and "0.2 s, ran out" in caught.value.message


def test_explain_of_a_success_envelope_says_it_is_not_an_error(tmp_path: Path) -> None:
    script = tmp_path / "one.lua"
    script.write_text("return {answer = 42}\n")
    envelope = polyspell("run", script, "--json", "--no-record")
    assert envelope.returncode == 0, envelope.stderr
    out = polyspell("explain", "-", input=envelope.stdout)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("not an error: this is the output of a run that succeeded")
    out = polyspell("explain", "-", "--json", input=envelope.stdout)
    import json

    assert json.loads(out.stdout) == {"ok": True, "error": None}


@pytest.mark.parametrize("source", [
    "const x = await Promise.resolve(1);\n",
    "function main() {\n  return await tools.add({a: 1, b: 2});\n}\n",
])
def test_await_outside_an_async_function_says_where_await_works(source: str) -> None:
    with pytest.raises(ScriptError.CompilationFailed) as caught:
        Host().run_source(source, "javascript", "agent.js")
    assert "put the code in async function main(args), or name the script .mjs" \
        in caught.value.fields["error"]


def test_two_tools_of_one_name_name_both_files(tmp_path: Path) -> None:
    text = 'from host import tool\n\n\n@tool\ndef search(q: str) -> str:\n    """S."""\n' \
           '    return q\n'
    first, second = tmp_path / "first.py", tmp_path / "second.py"
    first.write_text(text)
    second.write_text(text)
    with pytest.raises(ConfigurationError.InvalidValue) as caught:
        Host([str(first), str(second)])
    assert f"two tools are named 'search': {first}:4 and {second}:4" in str(caught.value)


@pytest.mark.parametrize(("flags", "env", "colored"), [
    ([], {}, False),  # not a terminal
    ([], {"FORCE_COLOR": "1"}, True),
    (["--color", "never"], {"FORCE_COLOR": "1"}, False),
    (["--color", "always"], {"NO_COLOR": "1"}, True),  # the flag wins
    (["--color", "always"], {}, True),
])
def test_color_follows_the_flag_then_the_environment(tmp_path: Path, flags: list[str],
                                                     env: dict[str, str], colored: bool
                                                     ) -> None:
    script = tmp_path / "bad.lua"
    script.write_text("error('boom')\n")
    clean = {"NO_COLOR": "", "FORCE_COLOR": "", **env}
    out = polyspell("run", script, "--no-record", *flags, env=clean)
    assert out.returncode == 1
    assert ("\x1b[" in out.stderr) is colored, out.stderr


def on_terminal(argv: list[str], env: dict[str, str], stream: str = "stderr") -> bytes:
    """What ``polyspell ARGV`` writes to ``stream`` when that stream is a terminal."""
    import os
    import pty

    leader, follower = pty.openpty()
    try:
        streams = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL,
                   stream: follower}
        subprocess.run([sys.executable, "-m", "host", *argv], env=environment(env),
                       timeout=60, **streams)
        os.close(follower)
        follower = -1
        text = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal's other end is closed: all was read
                return text
            if not chunk:
                return text
            text += chunk
    finally:
        if follower != -1:
            os.close(follower)
        os.close(leader)


@pytest.mark.parametrize(("term", "colored"), [("xterm", True), ("dumb", False)])
def test_on_a_terminal_color_is_on_unless_term_is_dumb(tmp_path: Path, term: str,
                                                       colored: bool) -> None:
    script = tmp_path / "bad.lua"
    script.write_text("error('boom')\n")
    text = on_terminal(["run", str(script), "--no-record"],
                       {"TERM": term, "NO_COLOR": "", "FORCE_COLOR": ""})
    assert b"boom" in text
    assert (b"\x1b[" in text) is colored, text


def test_on_a_terminal_the_plan_table_and_the_catalog_are_drawn(tmp_path: Path) -> None:
    env = {"TERM": "xterm", "NO_COLOR": "", "FORCE_COLOR": "", "COLUMNS": "100"}
    plan = on_terminal(["plan", str(ROOT / "scripts" / "plans" / "cascading.toml"),
                        "--no-record"], env, "stdout").decode()
    assert "\x1b[31mfetch_atlantis" in plan  # a failed task's row in red, drawn by rich
    assert "outcome: \x1b[31mcascading_failure" in plan
    piped = polyspell("plan", ROOT / "scripts" / "plans" / "cascading.toml", "--no-record")
    assert piped.stdout.splitlines()[0].split() == ["task", "engine", "status", "attempts",
                                                    "duration"]  # plain text in a pipe
    catalog = on_terminal(["catalog", "tool"], {**env, "NO_COLOR": "1"}, "stdout").decode()
    assert "\x1b[" not in catalog  # NO_COLOR holds for drawn tables too
    assert "tool (ToolError in scripts):" in catalog and "not_found" in catalog


def test_short_verbose_and_quiet_flags_are_taken_by_every_command(tmp_path: Path) -> None:
    script = tmp_path / "bad.lua"
    script.write_text("error('boom')\n")
    short = polyspell("run", script, "--no-record", "-v")
    long = polyspell("run", script, "--no-record", "--verbose")
    assert short.returncode == long.returncode == 1
    assert short.stderr.count("\n") == long.stderr.count("\n")
    for command in (["catalog", "-q"], ["catalog", "-v"], ["tools", "-q"]):
        out = polyspell(*command)
        assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("constructor", ["AgentError", "ToolError"])
def test_a_multi_line_throw_points_at_the_throw(constructor: str) -> None:
    """A ``throw new AgentError({...})`` spread over lines pointed at the closing ``});``
    (issue 18); the frame names the throw's line, and so does the traceback's excerpt."""
    init = ('{\n    kind: "timeout",\n    fields: {agent_id: "a", duration: 3},\n  }'
            if constructor == "AgentError" else
            '{\n    kind: "not_found",\n    fields: {tool_name: "x"},\n  }')
    source = f"function main() {{\n  throw new {constructor}({init});\n}}\n"
    with pytest.raises(Exception) as caught:
        Host().run_source(source, "javascript", "agent.js")
    frame = caught.value.frames[-1]
    assert (frame.file, frame.line) == ("agent.js", 2), caught.value.frames
    assert frame.source.strip().startswith(f"throw new {constructor}(")


PYTEST_SAMPLE = '''
import sys

from host import Host, tool


@tool
def weather(city: str) -> dict:
    """Fails."""
    raise LookupError(f"no weather station in {{city!r}}")


def test_agent():
    Host([weather]).run({script!r})
'''


@pytest.mark.parametrize("debug", ["", "1"])
def test_pytest_shows_the_tests_line_the_scripts_and_the_tools_not_the_plumbing(
        tmp_path: Path, debug: str) -> None:
    script = tmp_path / "agent.lua"
    script.write_text("local r = tools.weather{city = 'Atlantis'}\nreturn r\n")
    sample = tmp_path / "test_sample.py"
    sample.write_text(PYTEST_SAMPLE.format(script=str(script)))
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(sample)], capture_output=True, text=True, cwd=tmp_path,
                         env=environment({"POLYSPELL_DEBUG": debug}), timeout=120)
    text = out.stdout
    assert "test_sample.py:14: " in text  # the test's own line
    assert "agent.lua:1: in main chunk [lua]" in text  # the script's line, with its text
    assert "local r = tools.weather{city = 'Atlantis'}" in text
    assert "test_sample.py:10: LookupError" in text  # the tool's line
    plumbing = ("anyio/", "asyncio/", "host/runner.py", "host/calls.py", "host/host.py")
    assert any(p in text for p in plumbing) is bool(debug), text
    assert "AsyncLibraryNotFoundError" not in text  # a blocking run's own check


def test_a_blocking_runs_error_keeps_its_own_context(tmp_path: Path) -> None:
    with pytest.raises(ScriptError) as caught:
        Host().run_source("error('boom')", "lua")
    assert caught.value.__context__ is None
    import traceback

    text = "".join(traceback.format_exception(caught.value))
    assert "anyio" not in text and "host/runner.py" not in text
    assert "run_blocking" not in text  # the entry point's own frame only
    assert 'File "<lua>", line 1, in main chunk [lua]' in text


def test_a_plans_printed_lines_are_records_with_their_task_ids(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture
                                                             ) -> None:
    import logging

    (tmp_path / "a.lua").write_text("print('from a')\nreturn 1\n")
    (tmp_path / "b.js").write_text("function main() { console.log('from b'); return 2; }\n")
    caplog.set_level(logging.INFO, logger="polyspell.script")
    with Coordinator() as coordinator:
        report = coordinator.run([Task(id="a", script=str(tmp_path / "a.lua")),
                                  Task(id="b", script=str(tmp_path / "b.js"))])
    assert report.outcome == "succeeded"
    seen = {(r.task_id, r.language, r.getMessage()) for r in caplog.records
            if r.name == "polyspell.script"}
    assert seen == {("a", "lua", "from a"), ("b", "javascript", "from b")}


def test_the_cli_prints_what_scripts_print_as_before(
        tmp_path: Path) -> None:
    (tmp_path / "a.lua").write_text("print('from a')\nreturn 1\n")
    (tmp_path / "plan.toml").write_text('[[task]]\nid = "a"\nscript = "a.lua"\n')
    out = polyspell("plan", tmp_path / "plan.toml", "--no-record")
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == ["[a] from a"]
    script = tmp_path / "b.lua"
    script.write_text("print('hello')\nreturn 1\n")
    out = polyspell("run", script, "--no-record")
    assert (out.stdout.strip(), out.stderr) == ("1", "hello\n")


def test_tools_prints_each_parameter_on_a_line_of_its_own(tmp_path: Path) -> None:
    tools = tmp_path / "draw.py"
    tools.write_text(
        "from typing import Literal\nfrom pydantic import BaseModel, Field\n"
        "from host import tool\n\n\nclass Point(BaseModel):\n    x: int\n\n\n@tool\n"
        "def draw(points: list[Point], color: Literal['red', 'blue'] = 'red',\n"
        "         note: str | None = None, size: int = Field(3, description='pixels')"
        ") -> str:\n    \"\"\"Draws.\"\"\"\n    return ''\n")
    out = polyspell("tools", tools)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "draw  Draws.", "  points: list of Point (required)",
        '  color: "red" | "blue" = "red"', "  note: string | null = null",
        "  size: integer = 3  pixels"]


@pytest.mark.parametrize(("argv", "said"), [
    (["run", "x.lua", "--sandbox", "trustd"],
     "invalid choice: 'trustd' (did you mean 'trusted'? choose from 'constrained', "
     "'trusted')"),
    (["rnu", "x.lua"], "invalid choice: 'rnu' (did you mean 'run'?"),
    (["plan", "p.toml", "--strategy", "isolated"], "(did you mean 'isolate'?"),
    (["catalog", "toool"], "unknown category 'toool' (did you mean 'tool'? one of agent, "),
])
def test_unknown_choices_say_what_was_meant(argv: list[str], said: str) -> None:
    out = polyspell(*argv)
    assert out.returncode == 2
    assert said in out.stderr, out.stderr


CHAIN_SAMPLE = '''
from host import Host, tool


@tool
def fetch(key: str) -> str:
    """Fails."""
    raise KeyError(key)


def test_chain():
    Host([fetch]).run({script!r})
'''


def test_every_error_of_a_chain_shows_its_frames_and_note(tmp_path: Path) -> None:
    """A tool's error caught by a script, which throws another with it as cause: the
    middle of the chain (the tool's unified error) showed in pytest as a bare message."""
    script = tmp_path / "agent.js"
    script.write_text(
        "async function main() {\n  try {\n    await tools.fetch({key: 'x'});\n"
        "  } catch (e) {\n    throw new AgentError({kind: 'execution_failed', "
        "fields: {reason: 'fetch broke'}, cause: e});\n  }\n}\n")
    sample = tmp_path / "test_sample.py"
    sample.write_text(CHAIN_SAMPLE.format(script=str(script)))
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(sample)], capture_output=True, text=True, cwd=tmp_path,
                         env=environment(), timeout=120)
    text = out.stdout
    middle = text.index("ToolExecutionFailed: Tool execution failed: fetch")
    outer = text.index("AgentExecutionFailed: Agent execution failed: fetch broke")
    assert middle < outer
    assert "javascript agent.js:3:" in text[middle:outer]  # the middle's own frames
    assert "python test_sample.py:8:5, in fetch" in text[middle:outer]
    assert "javascript agent.js:5:" in text[outer:]


def test_on_a_terminal_quiet_turns_the_progress_off_and_lines_still_show(tmp_path: Path
                                                                        ) -> None:
    (tmp_path / "a.lua").write_text("print('from a')\nreturn 1\n")
    (tmp_path / "plan.toml").write_text('[[task]]\nid = "a"\nscript = "a.lua"\n')
    env = {"TERM": "xterm", "NO_COLOR": "1", "COLUMNS": "100"}
    shown = on_terminal(["plan", str(tmp_path / "plan.toml"), "--no-record"], env).decode()
    assert "[a] from a" in shown and "a (lua) succeeded after" in shown  # the live display
    quiet = on_terminal(["plan", str(tmp_path / "plan.toml"), "--no-record", "-q"],
                        env).decode()
    assert quiet.split() == ["[a]", "from", "a"]  # the script's line, no progress


def test_a_printed_newline_makes_two_records_never_a_forged_line(
        caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="polyspell.script")
    Host().run_source("print('one\\nERROR polyspell.hooks: forged')", "lua")
    records = [r for r in caplog.records if r.name == "polyspell.script"]
    assert [r.getMessage() for r in records] == ["one", "ERROR polyspell.hooks: forged"]
    assert all(r.language == "lua" and r.levelname == "INFO" for r in records)
