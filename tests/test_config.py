"""Recovery policies from a config file (host/config.py): the file's shape, the precedence
of its levels, per-error retries, pyproject's [tool.polyspell], every bad input with its
file and line, and the wiring into Host, Coordinator and the CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import pytest

from bridge import SpellError
from host import Coordinator, Host, Retry, Task, tool
from host.config import Config, key_lines, load_config, load_pyproject
from tests.cli import polyspell

ISSUE_EXAMPLE = """\
[recovery]                      # defaults for every tool
retry = { attempts = 2 }

[tools.search]
retry = { attempts = 4, backoff = "exponential", initial = 0.05, max_delay = 1, max_elapsed = 10, jitter = 0.1, on = ["network", "provider/rate_limited"], except = ["tool/invalid_parameters"] }
breaker = { failure_threshold = 3, recovery_timeout = 10, half_open_calls = 1, success_threshold = 1 }
fallback = [ { tool = "search_backup" }, { cached = true, max_age = 3600 }, { value = [] } ]
timeout = { attempt = 2, total = 10 }
optional = true                 # degrade instead of failing
"""  # noqa: E501 - the issue's example

# A script that calls one tool and returns its result, or the code of the error it got.
CALL = {"lua": "local ok, r = pcall(tools[args.tool], {q = 'x'})\n"
               "if ok then return r end\nreturn r.category .. '/' .. r.kind\n",
        "javascript": "async function main() {\n"
                      "  try { return await tools[args.tool]({q: 'x'}); }\n"
                      "  catch (e) { return e.code; }\n}\n"}


def flaky(name: str, failures: int, error: type[Exception] | SpellError | None = None):
    """A tool that fails ``failures`` times (with ``error``: a network error that may be
    retried at once, by default), then answers; its calls counted in ``calls``."""
    calls: list[str] = []

    def fn(q: str) -> str:
        calls.append(q)
        if len(calls) <= failures:
            if error is None:
                raise SpellError(category="network", kind="connection", endpoint="search",
                                 reason="down", retry_after=0)
            raise error if isinstance(error, SpellError) else error("down")
        return f"{name}:{q}:{len(calls)}"

    fn.__name__ = name
    return fn, calls


def rate_limited() -> SpellError:
    return SpellError(category="provider", kind="rate_limited", provider="api",
                      retry_after=0)


def run(host: Host, language: str, tool_name: str) -> tuple[object, list[dict]]:
    """Run CALL for ``tool_name``: its result (or error code) and the run's recovery."""
    the_run = host.new_run_source(CALL[language], language, args={"tool": tool_name})
    return anyio.run(the_run.execute), the_run.recovery


def write(tmp_path: Path, text: str, name: str = "polyspell.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def fast(attempts: int) -> str:
    """An inline retry table of ``attempts`` tries with (almost) no wait."""
    return f'{{ attempts = {attempts}, backoff = "fixed", initial = 0.001, jitter = 0 }}'


# -- the issue's example, on real engines ------------------------------------------------


def test_the_issues_example_loads_field_by_field(tmp_path):
    config = load_config(write(tmp_path, ISSUE_EXAMPLE))
    search = config.tools["search"]
    assert config.recovery.retry.attempts == 2
    assert (search.retry.attempts, search.retry.backoff, search.retry.initial) == \
        (4, "exponential", 0.05)
    assert search.retry.on == ["network", "provider/rate_limited"]
    assert search.retry.except_ == ["tool/invalid_parameters"]
    assert search.breaker.failure_threshold == 3
    assert [o.tool for o in search.fallback.options] == ["search_backup", None, None]
    assert (search.timeout.attempt, search.timeout.total) == (2, 10)
    assert search.optional is True


def test_degradation_levels_from_the_file_and_the_argument_over_them(tmp_path, language):
    text = ('[tools.svc]\nbreaker = { failure_threshold = 1, recovery_timeout = 60 }\n'
            '[degradation]\nlevels = [ { name = "fail", when_open = 1 } ]\n')
    fn, _ = flaky("svc", 100)
    other, other_calls = flaky("other", 0)
    host = Host([fn, other], config=write(tmp_path, text))
    assert run(host, language, "svc")[0] == "network/connection"  # its breaker opens
    assert host.degradation.level.name == "fail"
    assert run(host, language, "other")[0] == "runtime/circuit_breaker_open"
    assert other_calls == []  # the host has stopped calling tools
    host = Host([fn, other], config=write(tmp_path, text),
                degradation={"levels": [{"name": "cached", "when_open": 1}]})
    assert [level.name for level in host.degradation.policy.levels] == ["cached"]
    bad = write(tmp_path, "[degradation]\nlevels = [\n  { name = 'cached', when_open = 0 },\n]\n")
    with pytest.raises(SpellError) as info:
        load_config(bad)
    assert f"{bad}:3: degradation.levels[0].when_open:" in str(info.value)


def test_the_issues_example_retries_a_flaky_tool_in_both_languages(tmp_path, language):
    search, calls = flaky("search", 2)
    backup, backup_calls = flaky("search_backup", 0)
    host = Host([search, backup], config=write(tmp_path, ISSUE_EXAMPLE))
    result, recovery = run(host, language, "search")
    assert result == "search:x:3" and len(calls) == 3 and backup_calls == []
    assert [(e["action"], e["attempt"], e["error"]) for e in recovery] == \
        [("retry", 1, "network/connection"), ("retry", 2, "network/connection")]


def test_the_issues_example_falls_back_when_search_stays_down(tmp_path, language):
    search, calls = flaky("search", 100)
    backup, _ = flaky("search_backup", 0)
    host = Host([search, backup], config=write(tmp_path, ISSUE_EXAMPLE))
    result, recovery = run(host, language, "search")
    # three failures open the breaker (failure_threshold = 3): its refusal ends the retries
    assert result == "search_backup:x:1" and len(calls) == 3
    assert recovery[-1]["action"] == "fallback"
    assert host.breakers.state("search") == "open"


def test_recovery_defaults_apply_to_every_tool(tmp_path, language):
    config = write(tmp_path, f"[recovery]\nretry = {fast(2)}\n")
    once, once_calls = flaky("once", 1)
    twice, twice_calls = flaky("twice", 2)
    host = Host([once, twice], config=config)
    assert run(host, language, "once")[0] == "once:x:2"
    assert run(host, language, "twice")[0] == "network/connection"
    assert (len(once_calls), len(twice_calls)) == (2, 2)


SCRIPT_TOOLS = {
    "lua": ("flaky.lua", "local calls = 0\nreturn {search = function(p)\n"
                         "  calls = calls + 1\n  if calls < 3 then error('down') end\n"
                         "  return 'lua tool ' .. p.q .. ' ' .. calls\nend}\n"),
    "javascript": ("flaky.js", "let calls = 0;\nexports.search = function (p) {\n"
                               "  calls += 1;\n  if (calls < 3) throw new Error('down');\n"
                               "  return 'js tool ' + p.q + ' ' + calls;\n};\n"),
}


def test_a_config_table_drives_a_tool_of_a_lua_or_js_tools_file(tmp_path, language):
    name, text = SCRIPT_TOOLS[language]
    config = write(tmp_path, '[tools.search]\nretry = { attempts = 3, on = "any", '
                             'backoff = "fixed", initial = 0.001 }\n')
    host = Host([str(write(tmp_path, text, name))], config=config)
    for caller in ("lua", "javascript"):  # called from either language
        result, recovery = run(host, caller, "search")
        assert result == f"{language.replace('javascript', 'js')} tool x 3"
        assert [e["action"] for e in recovery] == ["retry", "retry"]


# -- precedence ---------------------------------------------------------------------------


def test_a_tools_own_settings_win_over_the_defaults_for_every_tool(tmp_path, language):
    fn, calls = flaky("svc", 1)
    own = tool(fn, retry=Retry(attempts=1))
    host = Host([own], config=write(tmp_path, f"[recovery]\nretry = {fast(5)}\n"))
    assert run(host, language, "svc")[0] == "network/connection" and len(calls) == 1


def test_a_tools_table_wins_over_its_tool_settings(tmp_path, language):
    fn, calls = flaky("svc", 3)
    own = tool(fn, retry=Retry(attempts=1))
    host = Host([own], config=write(tmp_path, f"[tools.svc]\nretry = {fast(4)}\n"))
    assert run(host, language, "svc")[0] == "svc:x:4" and len(calls) == 4


def test_the_python_argument_wins_over_the_file(tmp_path, language):
    fn, calls = flaky("svc", 3)
    host = Host([fn], config=write(tmp_path, f"[tools.svc]\nretry = {fast(4)}\n"),
                recovery={"svc": {"retry": {"attempts": 2, "initial": 0.001}}})
    assert run(host, language, "svc")[0] == "network/connection" and len(calls) == 2


def test_a_level_replaces_whole_policies_and_keeps_the_others(tmp_path):
    text = (f"[recovery]\nretry = {fast(5)}\nbreaker = {{ failure_threshold = 7 }}\n"
            "[tools.svc]\nretry = { attempts = 2 }\n")
    fn, _ = flaky("svc", 0)
    host = Host([fn], config=write(tmp_path, text))
    policy = host.recovery["svc"]
    assert policy.retry.attempts == 2
    assert policy.retry.backoff == "exponential"  # not the default's "fixed": replaced whole
    assert policy.breaker.failure_threshold == 7  # the default's breaker stays


def test_a_per_error_retry_is_used_for_its_code_only(tmp_path, language):
    text = f'[errors."provider/rate_limited"]\nretry = {fast(4)}\n'
    limited, limited_calls = flaky("limited", 3, rate_limited())
    down, down_calls = flaky("down", 3)  # network/connection: no retry for it
    host = Host([limited, down], config=write(tmp_path, text))
    result, recovery = run(host, language, "limited")
    assert result == "limited:x:4" and len(limited_calls) == 4
    assert {e["error"] for e in recovery} == {"provider/rate_limited"}
    assert run(host, language, "down")[0] == "network/connection" and len(down_calls) == 1


def test_a_per_error_retry_by_category_and_the_code_before_its_category(tmp_path, language):
    fn, calls = flaky("svc", 2)
    limited, limited_calls = flaky("limited", 3, rate_limited())
    text = (f'[errors.network]\nretry = {fast(3)}\n[errors.provider]\nretry = {fast(2)}\n'
            f'[errors."provider/rate_limited"]\nretry = {fast(4)}\n')
    host = Host([fn, limited], config=write(tmp_path, text))
    assert run(host, language, "svc")[0] == "svc:x:3" and len(calls) == 3
    assert run(host, language, "limited")[0] == "limited:x:4" and len(limited_calls) == 4


def test_a_per_error_retry_wins_over_tool_settings_for_its_code(tmp_path, language):
    text = f'[errors."provider/rate_limited"]\nretry = {fast(5)}\n'
    limited, limited_calls = flaky("limited", 4, rate_limited())
    down, down_calls = flaky("down", 4)
    own = Retry(attempts=2, backoff="fixed", initial=0.001, jitter=0)
    host = Host([tool(limited, retry=own), tool(down, retry=own)],
                config=write(tmp_path, text))
    assert run(host, language, "limited")[0] == "limited:x:5" and len(limited_calls) == 5
    assert run(host, language, "down")[0] == "network/connection" and len(down_calls) == 2


def test_a_tools_table_wins_over_the_per_error_table(tmp_path, language):
    text = (f'[errors."provider/rate_limited"]\nretry = {fast(5)}\n'
            f'[tools.limited]\nretry = {fast(2)}\n')
    limited, calls = flaky("limited", 4, rate_limited())
    host = Host([limited], config=write(tmp_path, text))
    assert run(host, language, "limited")[0] == "provider/rate_limited" and len(calls) == 2


def test_a_tools_own_per_error_table(tmp_path, language):
    text = (f'[tools.limited]\nretry = {fast(1)}\n[tools.limited.errors."provider/rate_limited"]\n'
            f'retry = {fast(3)}\n')
    limited, calls = flaky("limited", 2, rate_limited())
    host = Host([limited], config=write(tmp_path, text))
    assert run(host, language, "limited")[0] == "limited:x:3" and len(calls) == 3


def test_a_default_fallback_is_not_given_to_the_tool_it_names(tmp_path, language):
    text = '[recovery]\nfallback = [ { tool = "backup" }, { value = "default" } ]\n'
    search, _ = flaky("search", 100)
    backup, backup_calls = flaky("backup", 100)
    host = Host([search, backup], config=write(tmp_path, text))
    assert [o.value for o in host.recovery["backup"].fallback.options] == ["default"]
    assert run(host, language, "search")[0] == "default"  # search -> backup -> value
    assert run(host, language, "backup")[0] == "default" and len(backup_calls) == 2


def test_config_object_and_no_policies_keep_the_fast_path(tmp_path):
    fn, _ = flaky("svc", 0)
    config = load_config(write(tmp_path, "[errors.network]\nretry = { attempts = 2 }\n"))
    assert Host([fn], config=config).recovery["svc"].errors["network"].retry.attempts == 2
    assert Host([fn], config=Config()).recovery == {}
    built = Config(tools={"svc": {"retry": {"attempts": 3}}})
    assert Host([fn], config=built).recovery["svc"].retry.attempts == 3
    with pytest.raises(SpellError) as info:
        Config(tools={"svc": {"retry": {"attempts": 0}}})
    assert info.value.code == "configuration/invalid_value"
    assert "<config>: tools.svc.retry.attempts: Input should be" in str(info.value)


# -- pyproject.toml ---------------------------------------------------------------------


def test_pyproject_tool_polyspell_table(tmp_path):
    path = write(tmp_path, '[project]\nname = "x"\n\n[tool.polyspell.tools.svc]\n'
                 'retry = { attempts = 3 }\n', "pyproject.toml")
    assert load_pyproject(path).tools["svc"].retry.attempts == 3
    assert load_pyproject(tmp_path / "absent.toml") is None
    assert load_pyproject(write(tmp_path, "[tool.ruff]\n", "other.toml")) is None
    bad = write(tmp_path, '[project]\nname = "x"\n\n[tool.polyspell.tools.svc]\n'
                'retry = { attempts = -1 }\n', "pyproject.toml")
    with pytest.raises(SpellError) as info:
        load_pyproject(bad)
    assert info.value.code == "configuration/invalid_value"
    assert f"{bad}:5: tool.polyspell.tools.svc.retry.attempts:" in str(info.value)


# -- bad input: file, line, tool, field --------------------------------------------------

BAD = [
    ("[recovery]\nretry = { attempts = 2 }\n\n[tools.search]\nretry = { attempts = 0 }\n",
     5, "tools.search.retry.attempts: Input should be greater than or equal to 1"),
    ("[tools.search.retry]\nattempts = 3\n\nbackoff = 'expo'\n",
     4, "tools.search.retry.backoff: Input should be 'fixed'"),
    ("[tools.search]\nretyr = { attempts = 4 }\n", 2,
     "tools.search.retyr: unknown key 'retyr' (did you mean 'retry'?)"),
    ("[tools.search]\nretry = { attempts = 2, initail = 1 }\n", 2,
     "tools.search.retry.initail: unknown key 'initail' (did you mean 'initial'?)"),
    ("# [tools]\n[recovry]\nretry = {}\n", 2, "recovry: unknown key 'recovry' "
     "(did you mean 'recovery'?)"),
    ('[errors."provider/nope"]\nretry = { attempts = 4 }\n', 1,
     'errors."provider/nope": unknown error code or category \'provider/nope\''),
    ("[errors.network]\n# nothing\n", 1, "errors.network.retry: missing key 'retry'"),
    ('[tools.search]\nfallback = [\n  { value = """\n[tools.fake]\n""" },\n'
     '  { value = 1, tool = "b" },\n]\n', 6, "tools.search.fallback[1]: a fallback option"),
    ('[tools.search.retry]\nattempts = 3\non = ["network",\n  "nope"]\n', 3,
     "tools.search.retry.on: unknown error code or category 'nope'"),
    ("[recovery.errors.network]\nretry = {}\n", 1,
     "recovery.errors: per-error tables are top-level"),
    ("[tools.'search']\nbreaker = { half_open_calls = 0 }\n", 2,
     "tools.search.breaker.half_open_calls: Input should be greater than or equal to 1"),
]


@pytest.mark.parametrize(("text", "line", "message"), BAD)
def test_bad_values_name_the_file_line_and_field(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(SpellError) as info:
        load_config(path)
    assert info.value.code == "configuration/invalid_value"
    assert f"{path}:{line}: {message}" in str(info.value)


def test_a_syntax_error_is_parse_failed_with_its_line(tmp_path):
    path = write(tmp_path, "[tools.search]\nretry = { attempts = 4\n")
    with pytest.raises(SpellError) as info:
        load_config(path)
    assert info.value.code == "configuration/parse_failed"
    assert info.value.fields["line"] == 2 and f"{path}:2: not valid TOML" in str(info.value)


def test_unknown_tools_and_fallbacks_name_the_file_and_line(tmp_path):
    fn, _ = flaky("search", 0)
    path = write(tmp_path, "[recovery]\nretry = {attempts = 2}\n\n[tools.serch]\n"
                 "retry = {attempts = 2}\n")
    with pytest.raises(SpellError) as info:
        Host([fn], config=path)
    assert info.value.code == "configuration/invalid_value"
    assert f"{path}:4: tools.serch: there is no tool named 'serch' (did you mean " \
           f"'search'?)" in str(info.value)
    path = write(tmp_path, '[tools.search]\nfallback = [\n  { value = 1 },\n'
                 '  { tool = "backupp" },\n]\n')
    with pytest.raises(SpellError) as info:
        Host([fn], config=path)
    assert f"{path}:4: tools.search.fallback[1].tool: the fallback names a tool that " \
           f"does not exist: 'backupp'" in str(info.value)
    path = write(tmp_path, '[tools.search]\nfallback = [{ tool = "search" }]\n')
    with pytest.raises(SpellError, match="is the tool it protects"):
        Host([fn], config=path)


def test_unreadable_files(tmp_path):
    with pytest.raises(SpellError) as info:
        load_config(tmp_path / "missing.toml")
    assert info.value.code == "configuration/file_not_found"
    with pytest.raises(SpellError) as info:
        load_config(tmp_path)
    assert info.value.code == "configuration/load_failed"
    (tmp_path / "latin.toml").write_bytes(b"[recovery]\n# caf\xe9\n")
    with pytest.raises(SpellError, match="not UTF-8") as info:
        load_config(tmp_path / "latin.toml")
    assert info.value.code == "configuration/load_failed"
    with pytest.raises(SpellError, match="config is the path"):
        Host([], config=42)  # type: ignore[arg-type]


def test_huge_and_deeply_nested_files_fail_at_once(tmp_path):
    huge = tmp_path / "huge.toml"
    with huge.open("wb") as handle:  # 100 MB, sparse
        handle.truncate(100 * 1024 * 1024)
    started = time.monotonic()
    with pytest.raises(SpellError, match="too large for a config file") as info:
        load_config(huge)
    assert info.value.code == "configuration/load_failed"
    deep = write(tmp_path, "x = " + "[" * 100_000 + "]" * 100_000 + "\n", "deep.toml")
    with pytest.raises(SpellError, match="nested too deeply") as info:
        load_config(deep)
    assert info.value.code == "configuration/parse_failed"
    inline = write(tmp_path, "[recovery]\nfallback = [{value = " + "{a = " * 50_000
                   + "1" + "}" * 50_000 + "}]\n", "inline.toml")
    with pytest.raises(SpellError) as info:
        load_config(inline)
    assert info.value.code.startswith("configuration/")
    # a near-limit file of many tables is read and located quickly, too
    many = write(tmp_path, "".join(f"[tools.t{i}]\nretry = {{ attempts = 2 }}\n"
                                   for i in range(20_000)) + "[tools.z]\nbad = 1\n", "many.toml")
    with pytest.raises(SpellError, match=r"many\.toml:40002: tools\.z\.bad"):
        load_config(many)
    assert time.monotonic() - started < 10


# -- the locator --------------------------------------------------------------------------


def test_key_lines_follow_tables_inline_tables_arrays_and_strings():
    text = """\
# [not.a.table] = 1
[recovery]   # a comment with [brackets] and "quotes
retry = { attempts = 2, on = ["network",
  "tool/timeout"] }
"a.b" = 'x # y'
s = '''
[fake]
'''
t = \"\"\"a\\\"\"\" [fake2]
\"\"\"\"
[[plan]]
n = 1
[[plan]]
n = [
  1,
  { k = { deep = true } },
]
[tools."x.y".retry]
attempts = 3
"""
    lines = key_lines(text)
    assert lines[("recovery",)] == 2
    assert lines[("recovery", "retry", "attempts")] == 3
    assert lines[("recovery", "retry", "on", 1)] == 4
    assert lines[("recovery", "a.b")] == 5
    assert lines[("recovery", "t")] == 9
    assert ("fake",) not in lines and ("fake2",) not in lines
    assert lines[("plan", 0, "n")] == 12
    assert lines[("plan", 1, "n")] == 14
    assert lines[("plan", 1, "n", 1, "k", "deep")] == 16
    assert lines[("tools", "x.y", "retry", "attempts")] == 19


# -- Coordinator and CLI -----------------------------------------------------------------

TOOLS_FILE = '''\
from bridge import SpellError
from host import tool

calls = []


@tool
def flaky(q: str) -> str:
    """Fails twice, then answers."""
    calls.append(q)
    if len(calls) <= 2:
        raise SpellError(category="network", kind="connection", endpoint="flaky",
                         reason="down", retry_after=0)
    return f"flaky answered {q} on call {len(calls)}"
'''
SCRIPTS = {"agent.lua": "return tools.flaky{q = args.q or 'lua'}\n",
           "agent.js": "async function main() { return await tools.flaky({q: 'js'}); }\n"}
CONFIG = ('[tools.flaky]\nretry = { attempts = 3, backoff = "fixed", initial = 0.01, '
          'jitter = 0 }\n')


def strict_json(text: str) -> object:
    def refuse(constant: str) -> object:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write(tmp_path, TOOLS_FILE, "tools.py")
    write(tmp_path, CONFIG)
    for name, text in SCRIPTS.items():
        write(tmp_path, text, name)
    return tmp_path


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_cli_run_with_config(project, script):
    done = polyspell("run", script, "--tools", "tools.py", "--config", "polyspell.toml",
                     "--json", cwd=project)
    assert done.returncode == 0, done.stderr
    answer = strict_json(done.stdout)
    assert answer["ok"] is True and answer["result"].endswith("on call 3")
    without = polyspell("run", script, "--tools", "tools.py", "--json", cwd=project)
    assert without.returncode == 1
    assert strict_json(without.stdout)["error"]["category"] == "network"


def test_cli_run_reads_pyproject_without_config(project):
    write(project, "[tool.polyspell]\n" + CONFIG.replace("[tools.flaky]",
                                                         "[tool.polyspell.tools.flaky]"),
          "pyproject.toml")
    done = polyspell("run", "agent.lua", "--tools", "tools.py", cwd=project)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == "flaky answered lua on call 3"


def test_cli_bad_and_missing_config(project):
    done = polyspell("run", "agent.lua", "--tools", "tools.py", "--config", "absent.toml",
                     "--json", cwd=project)
    assert done.returncode == 2
    assert strict_json(done.stdout)["error"]["kind"] == "file_not_found"
    write(project, "[tools.flaky]\nretry = { attempts = 2 }\n\n[tools.nope]\n", "bad.toml")
    done = polyspell("run", "agent.lua", "--tools", "tools.py", "--config", "bad.toml",
                     cwd=project)
    assert done.returncode == 2 and done.stdout == ""
    assert "bad.toml:4: tools.nope: there is no tool named 'nope'" in done.stderr
    done = polyspell("plan", "plan.toml", "--config", "bad.toml", "--json", cwd=project)
    assert done.returncode == 2
    assert strict_json(done.stdout)["error"]["category"] == "configuration"
    for command in ("run", "plan"):
        assert "--config FILE" in polyspell(command, "--help").stdout


def test_cli_plan_with_config(project):
    write(project, '[plan]\nname = "p"\ntools = ["tools.py"]\n\n[[task]]\nid = "a"\n'
                   'script = "agent.lua"\n', "plan.toml")
    done = polyspell("plan", "plan.toml", "--config", "polyspell.toml", "--json", cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    report = strict_json(done.stdout)
    assert report["outcome"] == "succeeded"
    assert report["tasks"][0]["result"] == "flaky answered lua on call 3"
    done = polyspell("plan", "plan.toml", "--json", cwd=project)
    assert strict_json(done.stdout)["outcome"] != "succeeded"


def test_coordinator_takes_recovery_and_config_for_the_plans_tools(project, language):
    script = "agent.lua" if language == "lua" else "agent.js"
    plan = [Task(id="a", script=str(project / script))]
    tools = [str(project / "tools.py")]
    report = Coordinator(tools, config=project / "polyspell.toml").run(plan)
    assert report.outcome == "succeeded", report
    # the Python argument wins over the file, as on Host
    report = Coordinator(tools, config=project / "polyspell.toml",
                         recovery={"flaky": {"retry": {"attempts": 1}}}).run(plan)
    assert report.outcome != "succeeded"
    with pytest.raises(SpellError, match="does not exist: 'nope'"):
        Coordinator(tools, recovery={"nope": {}}).run(plan)


def test_cli_run_skips_a_pyproject_without_the_table_and_reports_a_broken_one(project):
    write(project, '[project]\nname = "agent"\n[tool.ruff]\nline-length = 99\n',
          "pyproject.toml")
    done = polyspell("run", "agent.lua", "--tools", "tools.py", "--json", cwd=project)
    assert strict_json(done.stdout)["ok"] is False  # no policy: the flaky tool fails
    write(project, '[tool.polyspell.tools.flaky]\nretry = { attempts = ', "pyproject.toml")
    done = polyspell("run", "agent.lua", "--tools", "tools.py", "--json", cwd=project)
    assert done.returncode == 2
    assert strict_json(done.stdout)["error"]["kind"] == "parse_failed"
