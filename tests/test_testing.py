"""host.testing (issue 18): stubs of tools, a run that keeps its outcome, and the assertion
on a unified error, used as users would: on the example agents, in real engines, and in a
pytest session of its own to see what pytest prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bridge import BridgeError
from host import tool
from host.testing import Outcome, Stub, assert_spell_error, fails, run_script
from tests.cli import environment

ROOT = Path(__file__).resolve().parent.parent
AGENTS = [ROOT / "scripts" / "agent.lua", ROOT / "scripts" / "agent.js"]
SEARCH_LINE = 6  # the line of tools.search in both agents
WEATHER_LINE = 7


@tool
def search(query: str, limit: int = 3) -> list[str]:
    """The real search's signature (its stub validates as it does)."""
    raise AssertionError("a stub answers instead")


@pytest.mark.parametrize("agent", AGENTS, ids=["lua", "js"])
def test_the_agent_runs_on_stubs_and_each_call_is_recorded_with_its_line(agent: Path
                                                                        ) -> None:
    found = Stub("search", ["Lisbon is on the Tagus."], like=search)
    weather = Stub("weather", {"sky": "sunny", "celsius": 21})
    summarize = Stub("summarize", "Lisbon, on the Tagus.")
    outcome = run_script(agent, found, weather, summarize, args={"city": "Lisbon"})
    assert outcome.ok, outcome.error
    assert outcome.result == {"city": "Lisbon", "summary": "Lisbon, on the Tagus.",
                              "weather": "sunny, 21 C"}
    assert found.calls == [(
        {"query": "Lisbon", "limit": 2}, "lua" if agent.suffix == ".lua" else "javascript",
        str(agent), SEARCH_LINE)]
    assert summarize.last.params == {"texts": ["Lisbon is on the Tagus."]}
    assert any("skipping translation" in line for line in outcome.output)


@pytest.mark.parametrize("agent", AGENTS, ids=["lua", "js"])
def test_a_unified_error_by_code_fails_the_call_as_a_real_tools_would(agent: Path) -> None:
    weather = Stub("weather", fails("tool/timeout", duration=2.0))
    outcome = run_script(agent, Stub("search", []), weather, Stub("summarize", ""),
                         args={"city": "Lisbon"})
    err = assert_spell_error(outcome, "tool/timeout", tool_name="weather", duration=2.0)
    assert (err.frames[-2].file, err.frames[-2].line) == (str(agent), WEATHER_LINE)
    assert assert_spell_error(outcome, "tool") is err  # a category is enough


def test_answers_come_in_order_and_the_last_repeats() -> None:
    flaky = Stub("flaky", fails("provider/rate_limited", provider="wiki"), ValueError("x"),
                 "ok")
    source = ("local seen = {}\nfor i = 1, 4 do\n"
              "  local ok, err = pcall(tools.flaky, {n = i})\n"
              "  seen[i] = ok and err or err.code\nend\nreturn seen\n")
    outcome = run_script("loop.lua", flaky, source=source)
    assert outcome.result == ["provider/rate_limited", "tool/execution_failed", "ok", "ok"]
    assert [call.params for call in flaky.calls] == [{"n": n} for n in range(1, 5)]
    assert [call.line for call in flaky.calls] == [3] * 4


def test_a_stub_like_a_real_tool_refuses_what_the_real_tool_refuses() -> None:
    found = Stub(None, [], like=search)
    assert found.name == "search"
    outcome = run_script("bad.js", found, source=(
        "async function main() { return await tools.search({query: 1, lmit: 2}); }"))
    assert_spell_error(outcome, "tool/invalid_parameters", tool_name="search")
    assert found.calls == []  # refused before it was called


def test_bad_stubs_and_codes_fail_in_the_tests_own_line() -> None:
    with pytest.raises(BridgeError.InvalidError):
        fails("tool/no_such_kind")
    with pytest.raises(BridgeError.InvalidError, match="unknown field 'timeout'"):
        fails("tool/timeout", timeout=2.0)
    with pytest.raises(TypeError):
        Stub()


def test_assert_spell_error_says_what_differs_with_the_whole_traceback() -> None:
    outcome = run_script("boom.lua", source="local x = nil\nreturn x.y\n")
    with pytest.raises(AssertionError) as caught:
        assert_spell_error(outcome, "tool/timeout")
    assert str(caught.value).startswith("expected tool/timeout, got script/lua:")
    assert "boom.lua:2" in str(caught.value)
    with pytest.raises(AssertionError, match="expected tool/timeout, but the run succeeded"):
        assert_spell_error(Outcome(result=1), "tool/timeout")
    with pytest.raises(AssertionError, match=r"has tool_name='weather' \(expected 'x'\)"):
        assert_spell_error(run_script("w.lua", Stub("weather", fails("tool/timeout", duration=1)),
                                      source="return tools.weather{}"),
                           "tool/timeout", tool_name="x")


SAMPLE = '''
from pathlib import Path

from host.testing import Stub, assert_spell_error, fails, run_script

AGENT = Path({agent!r})


def test_weather_times_out():
    weather = Stub("weather", fails("tool/timeout", duration=1.0))
    outcome = run_script(AGENT, Stub("search", []), Stub("summarize", ""), weather,
                         args={{"city": "Lisbon"}})
    assert_spell_error(outcome, "provider/rate_limited")
'''


def test_pytest_shows_the_tests_line_and_the_scripts_traceback(tmp_path: Path) -> None:
    sample = tmp_path / "test_sample.py"
    sample.write_text(SAMPLE.format(agent=str(AGENTS[0])))
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(sample)], capture_output=True, text=True, cwd=tmp_path,
                         env=environment(), timeout=120)
    assert out.returncode == 1, out.stdout
    assert "test_sample.py:13: AssertionError" in out.stdout  # the test's line, not ours
    assert "host/testing.py" not in out.stdout  # __tracebackhide__
    assert "expected provider/rate_limited, got tool/timeout" in out.stdout
    assert "agent.lua:7, in describe" in out.stdout
