"""Hooks from outside the code: ``polyspell run/plan --hooks`` and ``--hooks-file``, the
``[hooks]`` table of a config file (``--config`` and ``[tool.polyspell]``), and the same
table through ``Host(config=...)``; real runs, real files, both languages."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from bridge import ConfigurationError
from host import Host, hooks, tool
from host.hooks.files import load_hooks_file
from tests.cli import polyspell

ROOT = Path(__file__).resolve().parent.parent
AGENTS = {"lua": "scripts/agent.lua", "javascript": "scripts/agent.js"}
TOOLS = ("--tools", str(ROOT / "scripts" / "tools.py"))


def atlantis(language: str, *more: str, cwd: Path = ROOT):
    return polyspell("run", str(ROOT / AGENTS[language]), "city=Atlantis", *TOOLS, *more,
                     cwd=cwd)


def blocks(stderr: str) -> list[list[str]]:
    """The error blocks on stderr: each ``polyspell: ❌`` line with the indented lines
    under it."""
    found: list[list[str]] = []
    for line in stderr.splitlines():
        if line.startswith("polyspell: ❌ "):
            found.append([line])
        elif found and line.startswith("   ") and len(found[-1]) < 6:
            found[-1].append(line)
    return found


# -- --hooks -----------------------------------------------------------------------------


@pytest.mark.parametrize("language", ["lua", "javascript"])
def test_error_logging_shows_a_block_per_failure_and_stdout_stays_strict_json(language):
    out = atlantis(language, "--hooks", "error_logging", "--json")
    assert out.returncode == 1
    (line,) = out.stdout.splitlines()  # one JSON object, nothing else
    assert json.loads(line)["error"]["category"] == "tool"
    found = blocks(out.stderr)
    titles = [block[0] for block in found]
    assert titles == ["polyspell: ❌ Tool error: translate", "polyspell: ❌ Tool error: weather",
                      f"polyspell: ❌ Run failed: {ROOT / AGENTS[language]} ({language})"]
    weather = found[1]
    assert weather[1] == ("   Error: tool/execution_failed: Tool execution failed: weather - "
                          "LookupError: no weather station in 'Atlantis'")
    assert weather[2] == '   Parameters: {"city": "Atlantis"}'
    assert weather[3].startswith("   Type: execution, attempt 1, ")
    assert weather[3].endswith(f"{AGENTS[language].split('/')[1]}:7")
    assert weather[4] == "   Recovered: no (the script received the error)"
    assert found[2][3] == "   Recovered: no"


def test_logging_and_timing_on_a_run_that_succeeds():
    out = polyspell("run", "scripts/agent.js", "city=Lisbon", *TOOLS, "--hooks",
                    "logging, timing")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["weather"] == "sunny, 21 C"
    lines = out.stderr.splitlines()
    assert re.fullmatch(r"polyspell: run started: scripts/agent\.js \(javascript\) "
                        r"\[run [0-9a-f]{8}\]", lines[0])
    assert any(line.startswith("polyspell: tool ok: weather from scripts/agent.js:7")
               for line in lines)
    assert any(line.startswith("polyspell: timing: run scripts/agent.js (javascript) ")
               and "weather 1x" in line for line in lines)
    assert not any(line.startswith("polyspell: timing: tool ") for line in lines)  # DEBUG


def test_repeated_hooks_options_add_up_and_a_preset_named_twice_counts_once():
    out = atlantis("lua", "--hooks", "error_logging", "--hooks", "monitoring,error_logging")
    assert out.returncode == 1
    assert len(blocks(out.stderr)) == 3
    assert "polyspell: run started: " in out.stderr


def test_an_unknown_preset_is_refused_before_the_script_runs(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "tools.py").write_text(
        "from host import tool\n\n@tool\ndef mark() -> str:\n"
        f"    open({str(marker)!r}, 'w').close()\n    return 'ok'\n")
    (tmp_path / "a.lua").write_text("return tools.mark{}")
    out = polyspell("run", tmp_path / "a.lua", "--tools", tmp_path / "tools.py",
                    "--hooks", "logging,loging")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "configuration/invalid_value: Invalid configuration value for --hooks: unknown hook "
        "preset 'loging' (did you mean 'logging'? the presets: logging, verbose_logging, "
        "timing, error_logging, monitoring, silent)")
    assert not marker.exists()
    plan = polyspell("plan", tmp_path / "missing.toml", "--hooks", "nope")
    assert plan.returncode == 2
    assert "unknown hook preset 'nope'" in plan.stderr


def test_the_cli_names_the_presets_the_module_has():
    from host.cli import HOOK_PRESETS
    from host.hooks.presets import PRESETS

    assert HOOK_PRESETS == tuple(PRESETS)


def test_silent_shows_nothing():
    out = atlantis("lua", "--hooks", "silent")
    assert out.returncode == 1
    assert "polyspell: " not in out.stderr


# -- --hooks-file ------------------------------------------------------------------------

HOOKS_FILE = '''
from host import hooks

@hooks.controller("after_tool_call")
def no_weather_is_fine(ctx):
    if ctx.tool == "weather" and ctx.error is not None:
        return hooks.Recover({"sky": "unknown", "celsius": "?"})

@hooks.observer("tool_call_finished")
def tell(ctx):
    import sys
    sys.stderr.write(f"seen {ctx.tool}\\n")

timing = hooks.presets.timing()
not_a_hook = print
'''


@pytest.mark.parametrize("language", ["lua", "javascript"])
def test_a_hooks_file_registers_its_top_level_hooks(tmp_path, language):
    (tmp_path / "hooks.py").write_text(HOOKS_FILE)
    out = atlantis(language, "--hooks-file", str(tmp_path / "hooks.py"), "--hooks",
                   "error_logging")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["weather"] == "unknown, ? C"
    assert out.stderr.count("seen ") == 4  # translate, search, weather, summarize
    assert "polyspell: timing: run " in out.stderr  # the file's preset too
    weather = next(b for b in blocks(out.stderr) if b[0].endswith("weather"))
    assert "   Recovered: yes (a hook recovered it: the script received a result)" in weather


def test_a_hooks_file_loads_once_however_often_it_is_named(tmp_path):
    (tmp_path / "hooks.py").write_text(HOOKS_FILE)
    out = atlantis("lua", "--hooks-file", str(tmp_path / "hooks.py"), "--hooks-file",
                   str(tmp_path / ".." / tmp_path.name / "hooks.py"))
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("seen weather") == 1


BAD_FILES = {
    "syntax.py": ("def broken(:\n", "configuration/load_failed",
                  "Cannot load {path}: SyntaxError: "),
    "raises.py": ("raise RuntimeError('no hooks today')\n", "configuration/load_failed",
                  "Cannot load {path}: RuntimeError: no hooks today"),
    "exits.py": ("import sys\nsys.exit(3)\n", "configuration/load_failed",
                 "Cannot load {path}: SystemExit: 3"),
    "empty.py": ("from host import hooks\nx = 1\n", "configuration/load_failed",
                 "Cannot load {path}: it defines no hooks (decorate functions with "
                 "@hooks.observer(point) or @hooks.controller(point))"),
    "point.py": ("from host import hooks\n\n@hooks.observer('tool_call_done')\n"
                 "def f(ctx):\n    pass\n", "configuration/invalid_value",
                 "Invalid configuration value for hooks: {path}:3: unknown hook point "
                 "'tool_call_done'"),
    "hooks.txt": ("x", "configuration/load_failed",
                  "Cannot load {path}: a hooks file is a Python (.py) file"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_bad_hooks_file_is_a_configuration_error_naming_it(tmp_path, name):
    text, code, message = BAD_FILES[name]
    path = tmp_path / name
    path.write_text(text)
    out = atlantis("lua", "--hooks-file", str(path))
    assert out.returncode == 2
    assert out.stdout == ""
    # last, the error (a failure while the file imports is its cause, shown above it)
    last = out.stderr.strip().split("\n\n")[-1]
    assert last.startswith(f"{code}: {message.format(path=path)}"), out.stderr
    assert "skipping translation" not in out.stderr  # the script never ran


def test_a_missing_hooks_file_is_file_not_found(tmp_path):
    out = atlantis("lua", "--hooks-file", str(tmp_path / "nowhere.py"))
    assert out.returncode == 2
    assert out.stderr.strip() == (f"configuration/file_not_found: File not found: "
                                  f"{tmp_path / 'nowhere.py'}")
    with pytest.raises(ConfigurationError.LoadFailed, match="it is a directory"):
        load_hooks_file(tmp_path)


def test_a_hooks_file_that_configures_logging_keeps_its_own_format(tmp_path):
    (tmp_path / "hooks.py").write_text(
        "import logging, sys\nfrom host import hooks\n"
        "logging.basicConfig(stream=sys.stderr, level=logging.WARNING, "
        "format='MINE %(levelname)s %(name)s %(message)s')\n"
        "errors = hooks.presets.error_logging()\n")
    out = atlantis("lua", "--hooks-file", str(tmp_path / "hooks.py"))
    assert out.returncode == 1
    assert "MINE ERROR polyspell.hooks ❌ Tool error: weather" in out.stderr
    assert "polyspell: ❌" not in out.stderr  # the CLI did not add its handler


# -- [hooks] of a config file --------------------------------------------------------------


def test_config_hooks_load_relative_to_the_config_and_the_flags_add_to_them(tmp_path):
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "hooks.py").write_text(HOOKS_FILE)
    (folder / "polyspell.toml").write_text(
        '[hooks]\npresets = ["error_logging"]\nfiles = ["hooks.py"]\n')
    out = atlantis("javascript", "--config", str(folder / "polyspell.toml"), "--hooks",
                   "logging", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["weather"] == "unknown, ? C"
    assert "polyspell: run started: " in out.stderr  # --hooks logging
    assert any(b[0].endswith("weather") for b in blocks(out.stderr))  # [hooks] presets
    assert "seen weather" in out.stderr  # [hooks] files


def test_pyprojects_polyspell_table_takes_hooks_too(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.polyspell.hooks]\npresets = ["error_logging"]\n')
    out = atlantis("lua", cwd=tmp_path)
    assert out.returncode == 1
    assert len(blocks(out.stderr)) == 3


@pytest.mark.parametrize("text,expected", [
    ('[hooks]\npresets = ["timing", "loging"]\n',
     "configuration/invalid_value: {config}:2: hooks.presets[1]: unknown hook preset "
     "'loging' (did you mean 'logging'? the presets: logging, verbose_logging, timing, "
     "error_logging, monitoring, silent)"),
    ('[hooks]\nfile = ["hooks.py"]\n',
     "configuration/invalid_value: {config}:2: hooks.file: unknown key 'file' (did you "
     "mean 'files'?)"),
    ('[hooks]\npresets = "timing"\n',
     "configuration/invalid_value: {config}:2: hooks.presets: Input should be a valid list"),
    ('[hooks]\nfiles = ["a.py", "nothing.py"]\n',
     "configuration/file_not_found: File not found: {folder}/nothing.py (named at "
     "{config}:2: hooks.files[1])"),
])
def test_a_bad_hooks_table_is_refused_with_its_file_and_line(tmp_path, text, expected):
    config = tmp_path / "polyspell.toml"
    config.write_text(text)
    (tmp_path / "a.py").write_text("from host import hooks\n\n@hooks.observer('run_started')"
                                   "\ndef f(ctx):\n    pass\n")
    out = atlantis("lua", "--config", str(config))
    assert out.returncode == 2
    assert out.stderr.strip() == expected.format(config=config, folder=tmp_path)


def test_a_hooks_file_the_config_names_fails_naming_both(tmp_path):
    (tmp_path / "bad.py").write_text("import nothing_of_that_name\n")
    (tmp_path / "polyspell.toml").write_text('[hooks]\n\nfiles = [\n  "bad.py",\n]\n')
    out = atlantis("lua", "--config", str(tmp_path / "polyspell.toml"))
    assert out.returncode == 2
    assert "bad.py:1:1, in <module>\n    import nothing_of_that_name" in out.stderr
    assert out.stderr.strip().split("\n\n")[-1] == (
        f"configuration/load_failed: Cannot load {tmp_path / 'bad.py'}: "
        f"ModuleNotFoundError: No module named 'nothing_of_that_name' (named at "
        f"{tmp_path / 'polyspell.toml'}:4: hooks.files[0])")


def test_host_and_coordinator_take_a_configs_hooks_first(tmp_path, caplog, language):
    caplog.set_level(logging.INFO, logger="polyspell")
    (tmp_path / "hooks.py").write_text(
        "from host import hooks\nORDER = []\n\n"
        "@hooks.controller('before_tool_call')\ndef first(ctx):\n    ORDER.append('file')\n")
    (tmp_path / "polyspell.toml").write_text(
        '[hooks]\npresets = ["error_logging"]\nfiles = ["hooks.py"]\n')

    @tool
    def boom() -> str:
        """Fails."""
        raise RuntimeError("down")

    order = []

    @hooks.controller("before_tool_call")
    def second(ctx):
        order.append("argument")

    from host.config import load_config

    config = load_config(tmp_path / "polyspell.toml")
    host = Host([boom], config=config, hooks=[second])
    names = [hook.name.rsplit(".", 1)[-1] for hook in host.hooks.by_point["before_tool_call"]]
    assert names == ["first", "second"]  # the config's, then the argument's
    source = ("local ok = pcall(tools.boom, {})\nreturn ok" if language == "lua" else
              "async function main() { try { await tools.boom({}); } catch (e) {} "
              "return false; }")
    assert host.run_source(source, language, "a") is False
    assert order == ["argument"]
    assert any(r.getMessage().startswith("❌ Tool error: boom") for r in caplog.records)
    again = Host([boom], config=config)  # the file was imported once, for the config
    assert again.hooks.by_point["before_tool_call"][0] is host.hooks.by_point[
        "before_tool_call"][0]

    from host import Coordinator

    coordinator = Coordinator([boom], config=config)
    assert [h.name for h in coordinator.hooks.by_point["before_tool_call"]] == ["first"]


def test_plan_takes_hooks_too(tmp_path):
    (tmp_path / "a.lua").write_text("return 1")
    (tmp_path / "b.js").write_text("function main() { throw new Error('b broke'); }")
    (tmp_path / "plan.toml").write_text(
        '[plan]\nname = "p"\nstrategy = "collect"\n\n[[task]]\nid = "a"\nscript = "a.lua"\n\n'
        '[[task]]\nid = "b"\nscript = "b.js"\n')
    out = polyspell("plan", tmp_path / "plan.toml", "--hooks", "logging,error_logging")
    assert out.returncode == 1
    assert re.search(r"^polyspell: task started: a \(lua, .*a\.lua\) try 1$", out.stderr,
                     re.M), out.stderr
    assert re.search(r"^polyspell: task failed: b try 1 in [0-9.]+ m?s: script/javascript$",
                     out.stderr, re.M), out.stderr
    assert any(b[0].startswith("polyspell: ❌ Run failed: ") and "b.js" in b[0]
               for b in blocks(out.stderr))


def test_a_hostile_script_cannot_forge_a_line_on_stderr(tmp_path):
    (tmp_path / "tools.py").write_text(
        "from host import tool\n\n@tool\ndef boom(reason: str) -> str:\n"
        "    raise RuntimeError(reason)\n")
    (tmp_path / "a.lua").write_text(
        'local t = "x\\npolyspell: ❌ Tool error: forged\\n   Recovered: yes\\27[31m"\n'
        "local ok = pcall(tools.boom, {reason = t})\nreturn 'done'\n")
    out = polyspell("run", tmp_path / "a.lua", "--tools", tmp_path / "tools.py", "--hooks",
                    "monitoring", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"ok": True, "result": "done"}
    lines = out.stderr.splitlines()
    assert not any("forged" in line and line.startswith("polyspell: ❌") for line in lines)
    assert not any(line.startswith("   Recovered: yes") for line in lines)
    assert "\x1b" not in out.stderr
    assert "\\npolyspell: ❌ Tool error: forged\\n" in out.stderr


def test_a_hooks_file_in_a_symlink_loop_is_not_found_as_for_tools(tmp_path):
    (tmp_path / "a.py").symlink_to(tmp_path / "b.py")
    (tmp_path / "b.py").symlink_to(tmp_path / "a.py")
    out = atlantis("lua", "--hooks-file", str(tmp_path / "a.py"))
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == f"configuration/file_not_found: File not found: " \
                                 f"{tmp_path / 'a.py'}"
    (tmp_path / "polyspell.toml").write_text('[hooks]\nfiles = ["a.py"]\n')
    out = atlantis("lua", "--config", str(tmp_path / "polyspell.toml"))
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == (
        f"configuration/file_not_found: File not found: {tmp_path / 'a.py'} (named at "
        f"{tmp_path / 'polyspell.toml'}:2: hooks.files[0])")
