"""Restart of a Lua or JavaScript tools file's broken engine (state reset or kept), and
timeouts (attempt, total) on the functions of tools files, on the real engines."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from bridge import SpellError
from host import Host, Restart, tool

FILES = Path(__file__).parent / "restart_files"
EXTENSION = {"lua": "lua", "javascript": "js"}
# Calls the tools args.calls names, in order; each call's result, or its error's code.
CALLS = {
    "lua": "local out = {}\n"
           "for i, c in ipairs(args.calls) do\n"
           "  local ok, r = pcall(tools[c[1]], c[2])\n"
           "  out[i] = ok and r or (r.category .. '/' .. r.kind)\n"
           "end\n"
           "return out",
    "javascript": "async function main(args) {\n"
                  "  const out = [];\n"
                  "  for (const [name, p] of args.calls) {\n"
                  "    try { out.push(await tools[name](p)); } catch (e) { out.push(e.code); }\n"
                  "  }\n"
                  "  return out;\n"
                  "}",
}


def _ticket():
    """A Python tool that numbers the calls that ask it (1, 2, 3...)."""
    issued: list[int] = []

    def ticket() -> int:
        issued.append(1)
        return len(issued)

    return tool(ticket), issued


def _host(language: str, recovery: dict, name: str = "counter", **options) -> Host:
    ticket, _ = _ticket()
    options.setdefault("memory_mb", 16)
    return Host([ticket, FILES / f"{name}.{EXTENSION[language]}"], recovery=recovery,
                **options)


def _run(host: Host, language: str, *calls: tuple[str, dict]):
    run = host.new_run_source(CALLS[language], language,
                              args={"calls": [[name, params] for name, params in calls]})
    return anyio.run(run.execute), run


def _events(run) -> list[tuple[str, str, str]]:
    return [(e["action"], e["tool"], e["error"]) for e in run.recovery]


@pytest.mark.parametrize("state, expected", [("keep", 4), ("reset", 1)])
def test_a_function_past_the_memory_limit_restarts_its_file_and_the_call_succeeds(
        language, state, expected):
    host = _host(language, {"bump": {"restart": {"state": state}}})
    result, run = _run(host, language, ("bump", {}), ("bump", {}), ("bump", {}),
                       ("bump", {"blow": 1}), ("bump", {}))
    # keep: the count the file exported after its last good call (3) survives the
    # restart; reset: the file starts again from 0
    assert result == [1, 2, 3, expected, expected + 1]
    assert _events(run) == [("restart", "bump", "resource/memory_exhaustion")]
    assert run.recovery[0]["attempt"] == 1


def test_a_function_past_the_stack_limit_restarts_its_file(language):
    host = _host(language, {"deep": {"restart": {"state": "keep", "max_restarts": 2}}},
                 memory_mb=64)
    result, run = _run(host, language, ("bump", {}), ("deep", {"times": 2}), ("bump", {}))
    # the kept count is 1 at each restart: the failed calls' increments are gone
    assert result == [1, 2, 3]
    assert _events(run) == [("restart", "deep", "script/resource_exhaustion")] * 2


def test_max_restarts_bounds_the_restarts_then_the_error_escapes_with_the_history(language):
    host = _host(language, {"bump": {"restart": {"max_restarts": 2, "state": "keep"}}})
    result, run = _run(host, language, ("bump", {}), ("bump", {"blow": 3}))
    # the call blew up three times: two restarts, then the error
    assert result == [1, "resource/memory_exhaustion"]
    assert _events(run) == [("restart", "bump", "resource/memory_exhaustion")] * 2

    host = _host(language, {"bump": {"restart": {"max_restarts": 1}}})
    code = pick_raise(language, "bump", {"blow": 5})
    with pytest.raises(SpellError) as info:
        host.run_source(code, language)
    err = info.value
    assert err.code == "resource/memory_exhaustion"
    history = err.context.metadata["recovery"]
    assert [(e["action"], e["tool"], e["error"]) for e in history] == \
        [("restart", "bump", "resource/memory_exhaustion")]


def test_an_agent_state_corruption_the_file_raises_restarts_it_with_its_last_good_state(
        language):
    host = _host(language, {"corrupt": {"restart": {"state": "keep"}},
                            "bump": {"restart": {"state": "keep"}}})
    result, run = _run(host, language, ("bump", {}), ("bump", {}), ("corrupt", {"times": 1}),
                       ("bump", {}))
    assert result == [1, 2, 2, 3]  # the kept count, never the -999 of the failed call
    assert _events(run) == [("restart", "corrupt", "agent/state_corruption")]

    # without a restart policy the error reaches the script and the engine goes on as is
    host = _host(language, {})
    result, run = _run(host, language, ("bump", {}), ("corrupt", {"times": 1}), ("bump", {}))
    assert result == [1, "agent/state_corruption", -998]
    assert run.recovery == []


def test_an_agent_state_corruption_a_tool_raised_is_not_the_files(language):
    @tool
    def ticket() -> int:
        raise SpellError(category="agent", kind="state_corruption", agent_id="other",
                         description="not the counter's")

    host = Host([ticket, FILES / f"counter.{EXTENSION[language]}"],
                recovery={"corrupt": {"restart": {"state": "reset"}}})
    result, run = _run(host, language, ("corrupt", {"times": 1}))
    assert result == ["agent/state_corruption"]
    assert run.recovery == []  # the file only let it through: no restart


def test_no_restart_while_another_call_into_the_file_is_in_progress(language):
    host = _host(language, {"bump": {"restart": {"state": "reset"}}})
    result, run = _run(host, language, ("nested", {"blow": 1}))
    # the engine is in use by nested, which waits for bump: it is not thrown away under it
    assert result == ["resource/memory_exhaustion"]
    assert run.recovery == []
    host = _host(language, {"bump": {"restart": {"state": "reset"}}})
    result, run = _run(host, language, ("nested", {"blow": 1}), ("bump", {}))
    assert result[0] == "resource/memory_exhaustion" and isinstance(result[1], int)
    # Lua: the memory limit ended the engine, and bump's policy restarts it; JavaScript
    # goes on after it (its memory, held by the file, may still be full)
    assert _events(run) in ([], [("restart", "bump", "script/runtime_error")],
                            [("restart", "bump", "resource/memory_exhaustion")])
    if language == "lua":
        assert _events(run) == [("restart", "bump", "script/runtime_error")]


def test_the_state_hooks_are_not_tools(language):
    host = _host(language, {})
    assert sorted(t.name for t in host.tools) == ["bump", "corrupt", "deep", "nested", "patient",
                                                  "spin", "ticket"]
    result, _ = _run(host, language, ("polyspell_state", {}))
    assert result == ["tool/not_found"]


@pytest.mark.parametrize("kind, says", [("function", "JSON-like"), ("cycle", "JSON-like"),
                                        ("huge", "memory")])
def test_a_state_that_is_not_json_data_is_a_clear_error(language, kind, says):
    host = _host(language, {"set_kind": {"restart": {"state": "keep"}}}, name="hostile")
    result, run = _run(host, language, ("set_kind", {"kind": kind}),
                       ("set_kind", {"kind": kind}))
    if kind == "huge":  # too large to copy: it ended the engine, restarted once, in vain
        assert result == ["configuration/invalid_value", "script/runtime_error"]
        assert _events(run) == [("restart", "set_kind", "configuration/invalid_value")]
    else:  # the engine goes on; the state was not kept
        assert result == ["configuration/invalid_value"] * 2
        assert run.recovery == []
    code = pick_raise(language, "set_kind", {"kind": kind})
    with pytest.raises(SpellError) as info:
        host.run_source(code, language)
    err = info.value
    assert err.code == "configuration/invalid_value"
    assert err.fields["key"].endswith(f"hostile.{EXTENSION[language]}:polyspell_state")
    assert "did not give a state to keep" in err.message
    text = err.message + " " + (str(err.__cause__) if err.__cause__ else "")
    if says == "JSON-like":
        assert "JSON-like" in text
    else:
        assert err.__cause__ is not None and err.__cause__.code == "resource/memory_exhaustion"


def test_a_state_hook_that_calls_a_tool_or_a_restore_that_fails_is_a_clear_error(language):
    host = _host(language, {"set_kind": {"restart": {"state": "keep"}},
                            "corrupt": {"restart": {"state": "keep"}}}, name="hostile")
    result, run = _run(host, language, ("set_kind", {"kind": "tool"}),
                       ("set_kind", {"kind": "poison"}), ("corrupt", {}), ("set_kind", {}))
    # the state hook may not call tools; a restore that fails is the file failing to load
    # again (and the next call tries to load it again)
    assert result == ["configuration/invalid_value", "poison", "configuration/load_failed",
                      "configuration/load_failed"]
    assert _events(run) == [("restart", "corrupt", "agent/state_corruption")]
    code = pick_raise(language, "set_kind", {"kind": "tool"})
    with pytest.raises(SpellError) as info:
        host.run_source(code, language)
    assert "it called a tool" in info.value.message


@pytest.mark.parametrize("stem", ["half"])
def test_a_file_exporting_one_state_hook_is_refused(language, stem):
    with pytest.raises(SpellError) as info:
        Host([FILES / f"{stem}.{EXTENSION[language]}"])
    assert info.value.code == "configuration/load_failed"
    assert "polyspell_state without polyspell_restore" in info.value.message


def test_bad_restart_policies_are_refused(language):
    counter = FILES / f"counter.{EXTENSION[language]}"
    ticket, _ = _ticket()
    cases = [
        ({"ticket": {"restart": {}}}, "ticket.restart"),  # a Python tool: no engine
        ({"bump": {"restart": {"max_restarts": 0}}}, "bump.restart.max_restarts"),
        ({"bump": {"restart": {"state": "maybe"}}}, "bump.restart.state"),
        ({"bump": {"restart": {"forever": True}}}, "bump.restart.forever"),
    ]
    for recovery, key in cases:
        with pytest.raises(SpellError) as info:
            Host([ticket, counter], recovery=recovery)
        assert info.value.code == "configuration/invalid_value", recovery
        assert info.value.fields["key"] == key
    with pytest.raises(SpellError) as info:
        Restart(max_restarts=-1)
    assert info.value.fields["key"] == "restart.max_restarts"


def test_keep_needs_the_file_to_export_its_state(language, tmp_path):
    plain = tmp_path / f"plain.{EXTENSION[language]}"
    plain.write_text({"lua": "return {work = function() return 1 end}",
                      "javascript": "exports.work = function () { return 1; };"}[language])
    with pytest.raises(SpellError) as info:
        Host([plain], recovery={"work": {"restart": {"state": "keep"}}})
    assert info.value.fields["key"] == "work.restart.state"
    assert "polyspell_state() and polyspell_restore(state)" in info.value.message
    Host([plain], recovery={"work": {"restart": {"state": "reset"}}})  # reset needs nothing


def test_an_attempt_timeout_stops_a_function_that_never_returns_and_a_retry_runs_it_again(
        language):
    lines: list[str] = []
    host = _host(language, {"spin": {
        "timeout": {"attempt": 0.2},
        "retry": {"attempts": 2, "backoff": "fixed", "initial": 0.01, "jitter": 0,
                  "on": ["tool/timeout"]}}}, on_output=lines.append)
    started = time.monotonic()
    result, run = _run(host, language, ("bump", {}), ("spin", {}), ("bump", {}))
    elapsed = time.monotonic() - started
    # stopped twice; the engine each timeout stopped was thrown away, so the retry and
    # the next call ran on a new one (no Restart(state="keep"): the count starts again)
    assert result == [1, "tool/timeout", 1]
    assert lines == ["spin 1", "spin 0"]
    assert _events(run) == [("restart", "spin", "tool/timeout"),
                            ("retry", "spin", "tool/timeout"),
                            ("restart", "spin", "tool/timeout")]
    assert 0.4 <= elapsed < 5

    with pytest.raises(SpellError) as info:  # escaping, it carries what was tried
        host.run_source(pick_raise(language, "spin", {}), language)
    assert info.value.code == "tool/timeout"
    assert [e["action"] for e in info.value.context.metadata["recovery"]] == \
        ["restart", "retry", "restart"]


def test_a_timeout_keeps_the_state_of_a_file_that_keeps_it(language):
    host = _host(language, {"spin": {"timeout": {"attempt": 0.1}},
                            "bump": {"restart": {"state": "keep"}}})
    result, run = _run(host, language, ("bump", {}), ("bump", {}), ("spin", {}), ("bump", {}))
    assert result == [1, 2, "tool/timeout", 3]  # the count kept after the last good call
    assert _events(run) == [("restart", "spin", "tool/timeout")]


def test_a_total_timeout_and_a_tools_own_deadline_reach_the_tools_it_calls(language):
    import threading

    release = threading.Event()

    @tool
    def ticket() -> int:
        release.wait(10)  # stuck: the function's deadline ends it
        return 0

    host = Host([ticket, FILES / f"counter.{EXTENSION[language]}"],
                recovery={"bump": {"timeout": {"total": 0.3}}})
    started = time.monotonic()
    try:
        result, run = _run(host, language, ("bump", {"blow": 1}), ("bump", {}))
    finally:
        release.set()
    assert result == ["tool/timeout", 1]
    assert time.monotonic() - started < 3
    assert _events(run) == [("restart", "bump", "tool/timeout")]


def test_a_scripts_own_retry_in_a_timed_function_waits_no_longer_than_its_timeout(language):
    host = _host(language, {"patient": {"timeout": {"attempt": 1}}})
    started = time.monotonic()
    result, run = _run(host, language, ("patient", {}), ("bump", {}))
    assert time.monotonic() - started < 3  # no 5 s wait: it would end past the timeout
    assert result == [f"script/{language}", 1]  # the error it caught, the engine goes on
    assert run.recovery == []


def test_a_config_file_sets_restart_and_a_default_restart_skips_python_tools(language,
                                                                          tmp_path):
    config = tmp_path / "polyspell.toml"
    config.write_text('[recovery]\nrestart = { max_restarts = 2 }\n\n'
                      '[tools.bump]\nrestart = { state = "keep" }\n')
    ticket, _ = _ticket()
    host = Host([ticket, FILES / f"counter.{EXTENSION[language]}"], memory_mb=16,
                config=config)
    assert host.recovery["bump"].restart == Restart(state="keep")
    assert host.recovery["deep"].restart == Restart(max_restarts=2)  # the default
    result, run = _run(host, language, ("bump", {}), ("bump", {"blow": 1}),
                       ("deep", {"times": 4}))
    # bump kept its count; deep's restart (state reset, the default) started the file
    # again from 0, once: the restarts are counted per file (ticket 3 failed, then 4 too,
    # and the file had had its two restarts)
    assert result == [1, 2, "script/resource_exhaustion"]
    assert _events(run) == [("restart", "bump", "resource/memory_exhaustion"),
                            ("restart", "deep", "script/resource_exhaustion")]
    result, run = _run(host, language, ("deep", {"times": 5}))
    assert result == [1]  # a new run: restarts to spare, and the file starts from 0

    config.write_text('[tools.ticket]\nrestart = { max_restarts = 2 }\n')
    with pytest.raises(SpellError) as info:  # named for a Python tool: refused
        Host([ticket, FILES / f"counter.{EXTENSION[language]}"], config=config)
    assert info.value.fields["key"] == "ticket.restart"


def pick_raise(language: str, name: str, params: dict) -> str:
    """A script that calls ``name`` once and lets its error escape."""
    import json

    text = json.dumps(params)
    return {"lua": f"local p = {_lua_table(params)} return tools.{name}(p)",
            "javascript": f"async function main() {{ return await tools.{name}({text}); }}"
            }[language]


def _lua_table(params: dict) -> str:
    items = ", ".join(f"{key} = {value!r}" if not isinstance(value, str) else
                      f"{key} = '{value}'" for key, value in params.items())
    return "{" + items + "}"
