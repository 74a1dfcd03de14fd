"""Red team on issue 17's fourth pass: the JavaScript prelude read as byte code
(engines/javascript_bytecode.py) and the Lua round trip's fused paths (flat/flat_call in the
Lua prelude, resume()'s direct scalars, ScriptRun._plain with Tool.kwargs_validator).

Real engines only. Each test says what it attacks; the Lua tests run on each Lua version
(tests/conftest.py: lua_version), the JavaScript ones once.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.engine_driver import drive

pytestmark = pytest.mark.usefixtures("lua_version")


# -- Lua: flat parameters walked while a trusted script's hook calls a tool --------------

# A trusted script's own hook that, once, calls a tool (pcall: a hook cannot yield, so
# the inner call fails) while the prelude walks the outer call's parameters (`flat`).
REENTERED = """local done = false
debug.sethook(function()
  if done or debug.getinfo(2, "n").name ~= "flat" then return end
  local calls = (seen or 0) + 1
  seen = calls
  if calls < {at} then return end
  done = true
  pcall(tools.t, {{z = 1}})
end, "{events}")
local r = tools.t({params})
debug.sethook()
return r
"""


def _reentered(params: str, events: str, at: int = 1, **limits: Any) -> Any:
    source = REENTERED.format(params=params, events=events, at=at)
    return drive("lua", source, tools={"t": lambda p: p}, sandbox="trusted", **limits)


@pytest.mark.parametrize("events", ["r", "c"])
def test_a_tool_called_from_a_hook_during_the_walk_does_not_cut_the_outer_params(
        events: str) -> None:
    """The walk's state (whole, spent) was shared by every call: a call from a return hook
    made a walk that had stopped at a nested value look whole, and the tool got the pairs
    before it ({'a': 1} for {a = 1, b = {1, 2}})."""
    run = _reentered("{a = 1, b = {1, 2}}", events)
    assert run.result == {"a": 1, "b": [1, 2]}


def test_a_tool_called_from_a_hook_during_the_walk_does_not_reset_its_count() -> None:
    """Nor may it reset the outer walk's count of bytes: two 24 MiB values (one string,
    counted twice as the host copies it twice) are past a 32 MiB run's budget, with the hook
    or without."""
    params = "{a = big, b = big}"
    source = "big = string.rep('x', 24 * 1024 * 1024)\n"
    plain = drive("lua", source + f"return tools.t({params})", tools={"t": lambda p: 1},
                  sandbox="trusted", memory_mb=48)
    assert plain.error.code == "resource/memory_exhaustion"
    run = drive("lua", source + REENTERED.format(params=params, events="c", at=2),
                tools={"t": lambda p: 1}, sandbox="trusted", memory_mb=48)
    assert run.error.code == "resource/memory_exhaustion"
