"""Hook presets (``hooks.presets``): what they log (captured through ``logging``), what
they time, how they merge, and that a hostile script cannot forge their lines; on the
real engines in both languages."""

from __future__ import annotations

import logging
import re

import pytest

from bridge import ConfigurationError, SpellError
from host import Coordinator, Host, Task, hooks, tool
from host.hooks import presets
from tests.conftest import pick
from tests.test_hooks import add, boom

LOGGER = "polyspell.hooks"


TOOLS = [add, boom]


def run(host: Host, language: str, lua: str, js: str):
    """Run ``lua`` (a chunk) or ``js`` (the body of main, its tool calls awaited)."""
    js = js.replace("tools.", "await tools.")
    source = pick(language, lua, f"async function main(args) {{ {js} }}")
    return host.run_source(source, language, f"agent.{pick(language, 'lua', 'js')}")


def records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in records(caplog)]


CALLS = ("local ok = pcall(tools.boom, {reason = 'disk on fire'})\n"
         "local n = tools.add{a = 2, b = 3}\nreturn n",  # not a tail call: it has a line
         "try { tools.boom({reason: 'disk on fire'}); } catch (e) {}\n"
         "const n = tools.add({a: 2, b: 3});\nreturn n;")


# -- logging -----------------------------------------------------------------------------


def test_logging_tells_runs_and_calls_on_the_polyspell_logger(language, caplog):
    caplog.set_level(logging.INFO, logger="polyspell")
    host = Host(TOOLS, hooks=presets.logging())
    assert run(host, language, *CALLS) == 5
    lines = messages(caplog)
    script = f"agent.{pick(language, 'lua', 'js')}"
    assert re.fullmatch(rf"run started: {script} \({language}\) \[run [0-9a-f]{{8}}\]",
                        lines[0])
    assert re.fullmatch(rf"tool failed: boom from {script}:1 \(execution error\): "
                        rf"tool/execution_failed \[run [0-9a-f]{{8}}\]", lines[1])
    assert re.fullmatch(rf"tool ok: add from {script}:2 \[run [0-9a-f]{{8}}\]", lines[2])
    assert re.fullmatch(rf"run finished: {script} \({language}\) in [0-9.]+ m?s "
                        rf"\[run [0-9a-f]{{8}}\]", lines[3])
    assert len(lines) == 4  # not verbose: no parameters, no results, no start of calls
    levels = [r.levelname for r in records(caplog)]
    assert levels == ["INFO", "WARNING", "INFO", "INFO"]
    assert all(r.name.startswith("polyspell") for r in caplog.records)


def test_verbose_logging_shows_parameters_and_results(language, caplog):
    caplog.set_level(logging.INFO, logger="polyspell")
    host = Host(TOOLS, hooks=presets.logging(verbose=True))
    assert run(host, language, "return {sum = tools.add{a = 2, b = 3}}",
               "return {sum: tools.add({a: 2, b: 3})};") == {"sum": 5}
    lines = messages(caplog)
    assert any(re.match(r'tool call: add \{"[ab]": [23], "[ab]": [23]\} from agent', line)
               for line in lines), lines
    assert any(line.startswith("tool ok: add from agent") and ": 5 [run" in line
               for line in lines), lines
    assert any(line.startswith("run finished") and ': {"sum": 5} [run' in line
               for line in lines), lines


def test_verbose_logging_cuts_huge_parameters_and_results(language, caplog):
    caplog.set_level(logging.INFO, logger="polyspell")
    host = Host([echo], hooks=presets.logging(verbose=True))
    result = run(host, language, "return tools.echo{text = string.rep('x', 1000000)}",
                 "return tools.echo({text: 'x'.repeat(1000000)});")
    assert len(result) == 1_000_000
    lines = messages(caplog)
    assert lines and max(len(line) for line in lines) < 1000
    assert any(line.startswith('tool call: echo {"text": "xxx') and "..." in line
               for line in lines)


@tool
def echo(text: str) -> str:
    """Answer the text."""
    return text


@tool
def login(user: str, password: str, options: dict) -> str:
    """Fails, whatever it is given."""
    raise PermissionError("denied")


def test_parameters_that_name_secrets_are_never_shown(language, caplog):
    caplog.set_level(logging.INFO, logger="polyspell")
    host = Host([login], hooks=presets.merge(presets.logging(verbose=True),
                                             presets.error_logging()))
    run(host, language,
        "pcall(tools.login, {user = 'ann', password = 'hunter2', "
        "options = {API_KEY = 'k-123', nested = {auth_token = 'abc'}}})",
        "try { tools.login({user: 'ann', password: 'hunter2', "
        "options: {API_KEY: 'k-123', nested: {auth_token: 'abc'}}}); } catch (e) {}")
    shown = "\n".join(messages(caplog))
    assert '"user": "ann"' in shown and '"password": "***"' in shown
    assert '"API_KEY": "***"' in shown and '"auth_token": "***"' in shown
    for secret in ("hunter2", "k-123", "abc"):
        assert secret not in shown


@pytest.mark.parametrize("key,secret", [
    ("password", True), ("apiKey", True), ("X-Auth-Token", True), ("authorization", True),
    ("client_secret", True), ("private_key", True), ("sessionId", True),
    ("max_tokens", False), ("author", False), ("passage", False), ("query", False)])
def test_which_parameter_names_are_secrets(key, secret):
    from host.hooks.presets import _data

    assert (_data({key: "v"}) == f'{{"{key}": "***"}}') is secret


# -- error logging -----------------------------------------------------------------------


def test_error_logging_writes_one_block_per_failed_call_and_nothing_for_the_rest(
        language, caplog):
    caplog.set_level(logging.INFO, logger="polyspell")
    host = Host(TOOLS, hooks=presets.error_logging())
    assert run(host, language, *CALLS) == 5
    (record,) = records(caplog)  # the call that succeeded and the run: nothing
    assert record.levelname == "ERROR"
    lines = record.getMessage().split("\n")
    assert lines[0] == "❌ Tool error: boom"
    assert lines[1] == ("   Error: tool/execution_failed: Tool execution failed: boom - "
                        "RuntimeError: disk on fire")
    assert lines[2] == '   Parameters: {"reason": "disk on fire"}'
    assert re.fullmatch(rf"   Type: execution, attempt 1, [0-9.]+ ms, from "
                        rf"agent\.{pick(language, 'lua', 'js')}:1", lines[3])
    assert lines[4] == "   Recovered: no (the script received the error)"
    assert re.fullmatch(r"   Run: [0-9a-f]{8}", lines[5])


def test_error_logging_says_a_call_a_controller_recovered_was_recovered(language, caplog):
    caplog.set_level(logging.INFO, logger="polyspell")

    @hooks.controller("after_tool_call")
    def recover(ctx):
        return hooks.Recover("fine") if ctx.error is not None else None

    host = Host(TOOLS, hooks=[presets.error_logging(), recover])
    assert run(host, language, "return tools.boom{reason = 'x'}",
               "return tools.boom({reason: 'x'});") == "fine"
    (record,) = records(caplog)
    assert record.levelname == "WARNING"
    block = record.getMessage()
    assert block.startswith("❌ Tool error: boom\n   Error: tool/execution_failed: ")
    assert "   Recovered: yes (a hook recovered it: the script received a result)" in block


def test_error_logging_writes_a_block_for_a_failed_run(language, caplog):
    caplog.set_level(logging.INFO, logger="polyspell")
    host = Host(TOOLS, hooks=presets.error_logging())
    with pytest.raises(SpellError) as info:
        run(host, language, "return tools.boom{reason = 'no disk'}",
            "return tools.boom({reason: 'no disk'});")
    assert info.value.code == "tool/execution_failed"
    call, failed_run = records(caplog)
    assert call.getMessage().startswith("❌ Tool error: boom\n")
    assert failed_run.levelname == "ERROR"
    lines = failed_run.getMessage().split("\n")
    assert lines[0] == f"❌ Run failed: agent.{pick(language, 'lua', 'js')} ({language})"
    assert lines[1] == ("   Error: tool/execution_failed: Tool execution failed: boom - "
                        "RuntimeError: no disk")
    assert re.fullmatch(r"   Duration: [0-9.]+ m?s", lines[2])
    assert lines[3] == "   Recovered: no"


def test_error_logging_says_a_run_an_after_script_error_controller_saved_was_recovered(
        language, caplog):
    caplog.set_level(logging.INFO, logger="polyspell")

    @hooks.controller("after_script_error")
    def save(ctx):
        return hooks.Recover("saved")

    host = Host(TOOLS, hooks=presets.merge(presets.error_logging(), save))
    assert run(host, language, "error('plain failure')",
               "throw new Error('plain failure');") == "saved"
    (record,) = records(caplog)
    assert record.levelname == "WARNING"
    block = record.getMessage()
    assert block.startswith("❌ Run failed: agent.")
    assert "plain failure" in block
    assert "   Recovered: yes (an after_script_error controller answered a result)" in block


def test_error_logging_tells_a_degraded_answer_as_recovered(language, caplog):
    caplog.set_level(logging.INFO, logger="polyspell")
    host = Host(TOOLS, hooks=presets.error_logging(),
                recovery={"boom": {"optional": True, "degraded": "n/a"}})
    assert run(host, language, "return tools.boom{reason = 'x'}",
               "return tools.boom({reason: 'x'});") == "n/a"
    blocks = [r.getMessage() for r in records(caplog)]
    assert any(b.startswith("❌ Tool error: boom\n   Error: tool/execution_failed\n")
               and "Recovered: yes (the tool answered its degraded value)" in b
               for b in blocks), blocks
    assert all("Recovered: no" not in b for b in blocks)


def test_a_fallback_is_logged_and_its_error_told_as_being_recovered(language, caplog):
    caplog.set_level(logging.INFO, logger="polyspell")
    host = Host(TOOLS, hooks=presets.monitoring(),
                recovery={"boom": {"fallback": [{"value": "backup"}]}})
    assert run(host, language, "local r = tools.boom{reason = 'x'}\nreturn r",
               "const r = tools.boom({reason: 'x'});\nreturn r;") == "backup"
    lines = messages(caplog)
    assert any(re.fullmatch(r"fallback: boom -> a default value \(after "
                            r"tool/execution_failed\) \[run [0-9a-f]{8}\]", line)
               for line in lines), lines
    (block,) = [r for r in records(caplog) if r.getMessage().startswith("❌")]
    assert block.levelname == "WARNING"
    assert block.getMessage().split("\n")[:3] == [
        "❌ Tool error: boom", "   Error: tool/execution_failed",
        "   Recovered: falling back to a default value (if it fails too, the call's own "
        "block follows)"]
    assert any(line.startswith(f"tool ok: boom from agent.{pick(language, 'lua', 'js')}:1")
               for line in lines)


# -- timing ------------------------------------------------------------------------------


def test_timing_logs_each_run_and_keeps_per_tool_aggregates(language, caplog):
    caplog.set_level(logging.DEBUG, logger="polyspell")
    seen: list[presets.Measurement] = []
    timing = presets.timing(on_measure=seen.append)
    host = Host(TOOLS, hooks=timing)
    for _ in range(2):
        assert run(host, language, *CALLS) == 5
    summary = timing.summary()
    assert summary["tools"]["add"]["calls"] == 2
    assert summary["tools"]["add"]["failures"] == 0
    assert summary["tools"]["boom"] == {**summary["tools"]["boom"], "calls": 2, "failures": 2}
    for row in summary["tools"].values():
        assert 0 < row["min"] <= row["mean"] <= row["max"]
        assert row["total"] == pytest.approx(row["mean"] * row["calls"], abs=1e-5)
    script = f"agent.{pick(language, 'lua', 'js')}"
    assert summary["runs"][script]["calls"] == 2
    assert summary["tasks"] == {}
    run_lines = [r.getMessage() for r in records(caplog) if r.levelname == "INFO"]
    assert len(run_lines) == 2
    assert re.fullmatch(rf"timing: run {re.escape(script)} \({language}\) [0-9.]+ m?s; "
                        rf"tools: boom 1x [0-9.]+ ms \(1 failed\), add 1x [0-9.]+ ms "
                        rf"\[run [0-9a-f]{{8}}\]", run_lines[0])
    debug = [r.getMessage() for r in records(caplog) if r.levelname == "DEBUG"]
    assert len(debug) == 4 and all(line.startswith("timing: tool ") for line in debug)
    assert [(m.kind, m.name, m.ok) for m in seen[:3]] == [
        ("tool_call", "boom", False), ("tool_call", "add", True), ("run", script, True)]
    assert seen[0].error == "tool/execution_failed"


def test_a_preset_that_does_not_time_has_an_empty_summary():
    assert presets.logging().summary() == {}
    assert presets.silent().summary() == {}
    assert set(presets.monitoring().summary()) == {"tools", "runs", "tasks"}


# -- monitoring, silent, merge -----------------------------------------------------------


def test_monitoring_is_logging_timing_and_error_logging(language, caplog):
    caplog.set_level(logging.INFO, logger="polyspell")
    monitoring = presets.monitoring()
    assert [part.name for part in monitoring.parts] == ["logging", "timing", "error_logging"]
    host = Host(TOOLS, hooks=monitoring)
    assert run(host, language, *CALLS) == 5
    lines = messages(caplog)
    assert lines[0].startswith("run started: ")
    assert any(line.startswith("❌ Tool error: boom\n") for line in lines)
    assert any(line.startswith("timing: run ") for line in lines)
    assert monitoring.summary()["tools"]["add"]["calls"] == 1


def test_silent_registers_nothing():
    assert list(presets.silent()) == []
    assert Host(TOOLS, hooks=presets.silent()).hooks is None  # no dispatcher, no cost


def test_merge_keeps_each_hook_and_each_preset_once(caplog, language):
    caplog.set_level(logging.INFO, logger="polyspell")

    @hooks.observer("run_started")
    def mine(ctx):
        pass

    merged = presets.merge(presets.monitoring(), presets.error_logging(), mine, mine,
                           [mine], presets.silent())
    assert [part.name for part in merged.parts] == ["logging", "timing", "error_logging"]
    assert list(merged).count(mine) == 1
    assert len(merged) == len(presets.monitoring()) + 1
    host = Host(TOOLS, hooks=merged)
    run(host, language, *CALLS)
    blocks = [m for m in messages(caplog) if m.startswith("❌")]
    assert len(blocks) == 1  # error_logging given twice: one block, not two


def test_merge_refuses_one_preset_with_two_sets_of_options_and_what_is_no_hook():
    with pytest.raises(ConfigurationError.InvalidValue) as info:
        presets.merge(presets.monitoring(), presets.logging(verbose=True))
    assert "'logging' is given twice with different options" in info.value.message
    assert "verbose=False and verbose=True" in info.value.message
    with pytest.raises(ConfigurationError.InvalidValue) as info:
        presets.merge(presets.timing(), print)
    assert info.value.fields["key"] == "hooks[1]"
    with pytest.raises(ConfigurationError.InvalidValue) as info:
        Host(TOOLS, hooks=[presets.timing(), [print]])
    assert info.value.fields["key"] == "hooks[1][0]"
    with pytest.raises(ConfigurationError.InvalidValue):
        presets.logging(verbose="yes")


def test_controllers_merged_from_several_lists_all_chain_by_priority(language):
    order: list[str] = []

    @hooks.controller("before_tool_call", priority=1)
    def low(ctx):
        order.append("low")

    @hooks.controller("before_tool_call", priority=5)
    def high(ctx):
        order.append("high")

    host = Host(TOOLS, hooks=[presets.timing(), [low], presets.merge(high)])
    assert run(host, language, "return tools.add{a = 1, b = 1}",
               "return tools.add({a: 1, b: 1});") == 2
    assert order == ["high", "low"]


def test_presets_are_observers_only_and_change_nothing_of_a_run(language):
    plain = Host(TOOLS)
    watched = Host(TOOLS, hooks=presets.monitoring(verbose=True))
    assert all(hook.kind == "observer" for hook in presets.monitoring(verbose=True))
    source = ("local ok, err = pcall(tools.boom, {reason = 'r'})\n"
              "return {err.code, tools.add{a = 40, b = 2}}",
              "let code; try { tools.boom({reason: 'r'}); } catch (e) { code = e.code; }\n"
              "return [code, tools.add({a: 40, b: 2})];")
    assert run(plain, language, *source) == run(watched, language, *source) == [
        "tool/execution_failed", 42]


def test_a_coordinator_logs_its_tasks(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="polyspell")
    (tmp_path / "a.lua").write_text("return tools.add{a = 1, b = 2}")
    (tmp_path / "b.js").write_text("function main() { return tools.add({a: 3, b: 4}); }")
    monitoring = presets.monitoring()
    coordinator = Coordinator(TOOLS, hooks=monitoring, on_output=lambda *_: None)
    report = coordinator.run([Task(id="a", script=str(tmp_path / "a.lua")),
                              Task(id="b", script=str(tmp_path / "b.js"), after=["a"])])
    assert report.outcome == "succeeded"
    lines = messages(caplog)
    assert any(re.fullmatch(r"task started: a \(lua, .*a\.lua\) try 1", line) for line in lines)
    assert any(re.fullmatch(r"task succeeded: b try 1 in [0-9.]+ m?s", line) for line in lines)
    assert set(monitoring.summary()["tasks"]) == {"a", "b"}


# -- hostile scripts ---------------------------------------------------------------------

FORGED = "x\n❌ Run failed: forged.lua (lua)\n   Recovered: no\x1b[2J\x1b[31m\u202e\x85"


def test_a_script_cannot_forge_a_log_line_through_its_parameters_or_messages(
        language, caplog):
    caplog.set_level(logging.DEBUG, logger="polyspell")
    host = Host(TOOLS, hooks=presets.monitoring(verbose=True))
    lua_text = ('"x\\n❌ Run failed: forged.lua (lua)\\n   Recovered: no\\27[2J\\27[31m'
                '\\u{202E}\\u{85}"')
    js_text = ('"x\\n❌ Run failed: forged.lua (lua)\\n   Recovered: no\\x1b[2J\\x1b[31m'
               '\\u202e\\x85"')
    text = pick(language, lua_text, js_text)
    with pytest.raises(SpellError):
        run(host, language,
            f"local t = {text}\npcall(tools.boom, {{reason = t}})\n"
            f"local ok = pcall(tools.echo, {{[t] = t}})\nerror(t)",
            f"const t = {text};\ntry {{ tools.boom({{reason: t}}); }} catch (e) {{}}\n"
            f"try {{ tools.echo({{[t]: t}}); }} catch (e) {{}}\nthrow new Error(t);")
    assert records(caplog)
    for record in records(caplog):
        message = record.getMessage()
        for char in "\x1b\u202e\x85\r":
            assert char not in message, (char, message)
        lines = message.split("\n")
        if lines[0].startswith("❌"):  # a block: its lines are its own
            assert all(re.match(r"   (Error|Parameters|Type|Recovered|Run|Duration): ", line)
                       for line in lines[1:]), lines
            assert "forged" not in lines[0]
        else:
            assert len(lines) == 1
    shown = "\n".join(messages(caplog))
    assert "\\n❌ Run failed: forged.lua (lua)\\n" in shown  # escaped where it is shown
    assert "\\x1b[2J" in shown


def test_shown_text_escapes_what_would_break_a_line():
    from host.lines import shown_text

    assert shown_text("a\nb\x1b[31m\u202e\x7f", limit=100) == "a\\nb\\x1b[31m\\u202e\\x7f"
    assert shown_text("a\tb\nc", limit=100, keep="\n\t") == "a\tb\nc"
    assert shown_text("x" * 50, limit=10) == "x" * 10 + "... (50 characters)"
