"""Scripts read an error's retryable and retry_after; changing them changes nothing."""

from __future__ import annotations

import pytest

from bridge import ProviderError, SpellError, ToolError
from host import Host, tool


@tool
def limited() -> None:
    """Rate-limited, with a Retry-After of its own."""
    raise ProviderError.RateLimited(provider="p", retry_after=2.5)


@tool
def broken() -> None:
    """Fails in a way that is not worth retrying."""
    raise ToolError.ExecutionFailed(tool_name="broken", reason="bad data")


SOURCES = {
    "lua": """
local ok, a = pcall(tools.limited, {})
local ok2, b = pcall(tools.broken, {})
print(tostring(a.retryable) .. " " .. tostring(a.retry_after) .. " "
      .. tostring(b.retryable) .. " " .. tostring(b.retry_after))
a.retryable = false
a.retry_after = 0
error(a)
""",
    "javascript": """
async function main() {
  let a, b;
  try { await tools.limited({}); } catch (e) { a = e; }
  try { await tools.broken({}); } catch (e) { b = e; }
  console.log(`${a.retryable} ${a.retry_after} ${b.retryable} ${b.retry_after}`);
  a.retryable = false;
  a.retry_after = 0;
  throw a;
}
""",
}


@pytest.mark.parametrize("language", ["lua", "javascript"])
def test_scripts_read_retryable_and_retry_after_but_cannot_change_them(language):
    lines: list[str] = []
    host = Host([limited, broken], on_output=lines.append)
    with pytest.raises(SpellError) as caught:
        host.run_source(SOURCES[language], language)
    no_delay = "nil" if language == "lua" else "null"
    assert lines == [f"true 2.5 false {no_delay}"]
    err = caught.value  # the rethrown envelope is the host's own error, as it was
    assert err.code == "provider/rate_limited"
    assert err.retryable is True and err.retry_after == 2.5


@pytest.mark.parametrize(("language", "source"), [
    ("lua", "local ok, e = pcall(tools.broken, {}); local made = errors.AgentError{"
            "kind = 'execution_failed', reason = 'r'}; print(e.code .. ' ' .. made.code)"),
    ("javascript", "async function main() { try { await tools.broken({}); } catch (e) {"
                   " const made = new AgentError({kind: 'execution_failed', reason: 'r'});"
                   " console.log(e.code + ' ' + made.code); } }"),
])
def test_scripts_read_an_errors_code_as_python_does(language, source):
    lines: list[str] = []
    Host([broken], on_output=lines.append).run_source(source, language)
    assert lines == ["tool/execution_failed agent/execution_failed"]
