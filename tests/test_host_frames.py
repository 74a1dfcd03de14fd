"""Error identity and the whole frame list, end to end through ``Host``, in both languages.

The engine tests check each engine's frames, and other host tests check parts of the path
(the first frame, the languages in order). These check the whole list a user gets from
``Host.run_source`` / ``Host.arun_source``, frame by frame (language, file, line, function,
source line), outermost first: the script's frames down to the tool call, the host's
boundary frame, then the tool's own Python frames; and through a tools file of either
language, all three languages in order. The error raised is the very object the tool
raised (a unified error), or wraps the very exception it raised (any other exception).
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import anyio
import pytest

from bridge import Frame, SpellError, ToolError
from host import Host, tool
from tests.conftest import EXTENSION, LANGUAGES, pick

# every test in both isolation modes: engines in threads, and in worker processes
pytestmark = pytest.mark.usefixtures("isolation")

HERE = str(Path(__file__))
RAISED: list[BaseException] = []  # what the tool raised, last one last


def _line(marker: str) -> int:
    """The line of this file that ends with ``# <marker>``."""
    lines = Path(__file__).read_text().splitlines()
    (number,) = [n for n, text in enumerate(lines, 1) if text.endswith(f"# {marker}")]
    return number


def _refuse(city: str, how: str) -> NoReturn:
    """Raise a unified error, or a plain Python exception, from a frame below the tool."""
    err: BaseException = (ToolError.Timeout(tool_name=f"station {city}", duration=1.5)
                          if how == "spell" else LookupError(f"no station in {city}"))
    RAISED.append(err)
    raise err  # raise site


@tool
def weather(city: str, how: str) -> str:
    """A sync tool that fails one call down."""
    return _refuse(city, how)  # sync call site


@tool
async def weather_async(city: str, how: str) -> str:
    """An async tool that fails one call down."""
    await anyio.sleep(0)
    return _refuse(city, how)  # async call site


def _python_frames(tool_name: str) -> list[tuple]:
    """The tool's own frames: the tool function, then the helper that raised."""
    site = "sync call site" if tool_name == "weather" else "async call site"
    return [("python", HERE, _line(site), tool_name, f"return _refuse(city, how)  # {site}"),
            ("python", HERE, _line("raise site"), "_refuse", "raise err  # raise site")]


def _boundary(tool_name: str) -> tuple:
    return ("host", "<tool call>", None, tool_name, None)


def _rows(frames: list[Frame]) -> list[tuple]:
    return [(f.language, f.file, f.line, f.function, f.source) for f in frames]


# The agent calls its tool from a function, catches the error and throws it again.
AGENT = {
    "lua": ("local function ask(city)\n"
            "  local ok, err = pcall(tools.TOOL, {city = city, how = args.how})\n"
            "  error(err)\n"
            "end\n"
            "local r = ask('Lisbon')\n"
            "return r\n"),
    "javascript": ("async function ask(city) {\n"
                   "  try { return await tools.TOOL({city, how: args.how}); }\n"
                   "  catch (e) { throw e; }\n"
                   "}\n"
                   "async function main() { return await ask('Lisbon'); }\n"),
}


def _agent_frames(language: str, tool_name: str) -> list[tuple]:
    """The agent's frames, outermost first: its main chunk / main, then ``ask``."""
    source = AGENT[language].replace("TOOL", tool_name).splitlines()
    main = pick(language, "main chunk", "main")
    return [(language, "agent.src", 5, main, source[4].strip()),
            (language, "agent.src", 2, "ask", source[1].strip())]


def _check_raised(err: SpellError, how: str) -> None:
    """``err`` is what the tool raised, or the tool's failure wrapping what it raised."""
    sent = RAISED[-1]
    if how == "spell":
        assert err is sent  # the very object, not a copy
    else:
        assert type(err) is ToolError.ExecutionFailed
        assert err.__cause__ is sent
        assert err.fields["reason"] == "LookupError: no station in Lisbon"


@pytest.mark.parametrize("how", ["spell", "python"])
@pytest.mark.parametrize("tool_name", ["weather", "weather_async"])
def test_a_rethrown_tool_error_has_the_whole_path_through_host(language, how, tool_name):
    host = Host([weather, weather_async], timeout=10, on_output=lambda line: None)
    source = AGENT[language].replace("TOOL", tool_name)
    with pytest.raises(SpellError) as info:
        host.run_source(source, language, "agent.src", {"how": how})
    err = info.value
    _check_raised(err, how)
    assert _rows(err.frames) == [*_agent_frames(language, tool_name), _boundary(tool_name),
                                 *_python_frames(tool_name)]


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["spell", "python"])
async def test_the_same_path_through_arun(language, how):
    host = Host([weather, weather_async], timeout=10, on_output=lambda line: None)
    source = AGENT[language].replace("TOOL", "weather_async")
    with pytest.raises(SpellError) as info:
        await host.arun_source(source, language, "agent.src", {"how": how})
    _check_raised(info.value, how)
    assert _rows(info.value.frames) == [*_agent_frames(language, "weather_async"),
                                        _boundary("weather_async"),
                                        *_python_frames("weather_async")]


# A tools file's function that calls the Python tool (and lets its error through).
FORECAST = {
    "lua": ("local M = {}\n"
            "function M.forecast(p)\n"
            "  local r = tools.weather{city = p.city, how = p.how}\n"
            "  return r\n"
            "end\n"
            "return M\n"),
    "javascript": ("exports.forecast = async function forecast(p) {\n"
                   "  const r = await tools.weather({city: p.city, how: p.how});\n"
                   "  return r;\n"
                   "};\n"),
}


@pytest.mark.parametrize("how", ["spell", "python"])
@pytest.mark.parametrize("helper", LANGUAGES)
def test_a_tool_error_through_a_tools_file_has_the_path_through_three_languages(
        language, helper, how, tmp_path):
    path = tmp_path / f"forecast{EXTENSION[helper]}"
    path.write_text(FORECAST[helper])
    host = Host([path, weather], timeout=10, on_output=lambda line: None)
    with pytest.raises(SpellError) as info:
        host.run_source(AGENT[language].replace("TOOL", "forecast"), language, "agent.src",
                        {"how": how})
    err = info.value
    _check_raised(err, how)
    line = pick(helper, 3, 2)  # the tools file's call of tools.weather
    call = FORECAST[helper].splitlines()[line - 1].strip()
    assert _rows(err.frames) == [
        *_agent_frames(language, "forecast"), _boundary("forecast"),
        (helper, str(path), line, "forecast", call), _boundary("weather"),
        *_python_frames("weather")]
