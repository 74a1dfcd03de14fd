"""The JSON size budget counts every value a script hands to Python, null, holes,
numbers and booleans included: a huge sparse array fails on memory at once rather than
running to the time limit (and the same for tool parameters). JavaScript only: a Lua
table has no holes that cost nothing to make.
"""

from __future__ import annotations

import time

import pytest

from bridge import ResourceError
from host import Host, tool


@tool
def echo(value: object = None) -> int:
    """Takes anything."""
    return 1


def _host() -> Host:
    return Host([echo], memory_mb=32, timeout=30, on_output=lambda line: None)


@pytest.mark.parametrize("make", [
    "const a = []; a.length = 1e8; return a;",
    "return [new Array(1e8)];",
    "const a = []; a.length = 1e8; return {a};",
    "return {a: Array(3e7).fill(0)};",
])
def test_a_huge_sparse_or_zero_filled_array_fails_on_memory_at_once(make):
    started = time.monotonic()
    with pytest.raises(ResourceError.MemoryExhaustion) as info:
        _host().run_source(f"async function main() {{ {make} }}", "javascript")
    assert info.value.fields["location"] == "javascript"
    assert info.value.fields["available"] == 32 * 2**20
    assert time.monotonic() - started < 25  # not the 30 s time limit


def test_a_huge_sparse_array_as_tool_parameters_fails_on_memory_at_once():
    started = time.monotonic()
    with pytest.raises(ResourceError.MemoryExhaustion) as info:
        _host().run_source("async function main() { const a = []; a.length = 1e8;"
                           " return await tools.echo({value: a}); }", "javascript")
    assert info.value.fields["location"] == "javascript"
    assert "its parameters" in info.value.fields["description"]
    assert time.monotonic() - started < 25


def test_a_sparse_result_within_the_budget_still_crosses():
    got = _host().run_source("async function main() { const a = []; a.length = 3;"
                             " a[2] = 1; return {n: 1, t: a, z: Array(1000).fill(0)}; }",
                             "javascript")
    assert got == {"n": 1, "t": [None, None, 1], "z": [0] * 1000}
