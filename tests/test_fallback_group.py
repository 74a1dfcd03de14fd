"""``runtime/all_fallbacks_failed`` seen from Python: every option's error, as errors and as
an ``ExceptionGroup``; and read back from JSON."""

from __future__ import annotations

import pytest

from bridge import SpellError, ToolError
from bridge.hierarchy import RuntimeAllFallbacksFailed
from host import Host, tool

RAISE = {"lua": "return tools.service{q = 'x'}",
         "javascript": "async function main() { return await tools.service({q: 'x'}); }"}


def _failing(name: str, exc: Exception):
    def fn(q: str) -> str:
        raise exc

    return tool(fn, name=name)


@pytest.fixture
def failed(language) -> RuntimeAllFallbacksFailed:
    host = Host([_failing("service", RuntimeError("service is down")),
                 _failing("backup", TimeoutError("backup is slow")),
                 _failing("other", ConnectionRefusedError("other refuses"))],
                recovery={"service": {"fallback": [{"tool": "backup"}, {"tool": "other"}]}})
    with pytest.raises(SpellError) as info:
        host.run_source(RAISE[language], language)
    assert isinstance(info.value, RuntimeAllFallbacksFailed)
    return info.value


def test_exceptions_are_every_options_error_in_order(failed):
    errors = failed.exceptions
    assert [e.code for e in errors] == ["tool/execution_failed", "tool/timeout",
                                        "network/connection"]
    assert errors[0] is failed.cause  # the first keeps its whole cause chain
    assert isinstance(errors[0].__cause__, RuntimeError)
    assert [e.fields.get("tool_name") for e in errors[:2]] == ["service", "backup"]


def test_the_exception_group_works_with_except_star(failed):
    group = failed.as_exception_group()
    assert isinstance(group, ExceptionGroup)
    assert str(group).startswith("All fallbacks failed: 2 options attempted")
    caught: list[str] = []
    try:
        raise group
    except* ToolError as tools:
        caught += [e.code for e in tools.exceptions]
    except* SpellError as others:
        caught += [e.code for e in others.exceptions]
    assert sorted(caught) == ["network/connection", "tool/execution_failed", "tool/timeout"]


def test_every_error_round_trips_through_json(failed):
    data = failed.to_dict()
    again = SpellError.from_dict(data)
    assert again.to_dict() == data
    assert SpellError.from_json(failed.to_json()).to_dict() == data
    assert isinstance(again, RuntimeAllFallbacksFailed)
    assert [e.to_dict() for e in again.exceptions[1:]] == \
        [e.to_dict() for e in failed.exceptions[1:]]
    assert again.exceptions[0].to_dict() == failed.cause.to_dict()
    assert [e.code for e in again.as_exception_group().exceptions] == \
        [e.code for e in failed.exceptions]


def test_entries_that_are_no_error_become_invalid_error_in_their_place():
    err = SpellError(category="runtime", kind="all_fallbacks_failed", attempted_options=3,
                     errors=[1, {"category": "nope", "kind": "x"},
                             ToolError.Timeout(tool_name="t", duration=1.0).to_dict()])
    assert [e.code for e in err.exceptions] == ["bridge/deserialization_failed",
                                                "bridge/deserialization_failed", "tool/timeout"]
    assert "$.fields.errors[1].category" in err.exceptions[1].message
    empty = SpellError(category="runtime", kind="all_fallbacks_failed", attempted_options=0)
    assert empty.exceptions == ()
    assert empty.as_exception_group().exceptions == (empty,)
