"""Wrong arguments to the public entry points (Host, its runs, Coordinator) are
``configuration/invalid_value`` errors, never a raw ValidationError, TypeError or
OverflowError; limits are finite and within what the engines can take.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bridge import SpellError
from host import Host
from host.coordinator import Coordinator

ROOT = Path(__file__).resolve().parent.parent


def _invalid(fn, key: str | None = None) -> SpellError:
    with pytest.raises(SpellError) as info:
        fn()
    assert info.value.code == "configuration/invalid_value", info.value.to_text()
    if key is not None:
        assert info.value.fields["key"] == key
    return info.value


@pytest.mark.parametrize("name", [123, b"agent", ["a"], 1.5])
def test_a_name_that_is_not_text_is_an_invalid_value(language, name):
    host = Host(on_output=lambda line: None)
    _invalid(lambda: host.run_source("return 1", language, name=name), "name")
    _invalid(lambda: host.new_run_source("return 1", language, name), "name")


@pytest.mark.parametrize("path", [5, None, b"scripts/hello.lua", 1.5])
def test_a_script_path_that_is_not_a_path_is_an_invalid_value(path):
    host = Host(on_output=lambda line: None)
    _invalid(lambda: host.new_run(path), "script")
    _invalid(lambda: host.run(path), "script")


@pytest.mark.parametrize("option,value", [
    ("timeout", math.inf), ("timeout", -math.inf), ("timeout", math.nan),
    ("memory_mb", 10**20), ("memory_mb", 99999999999999999999), ("memory_mb", math.inf),
    ("memory_mb", 0.5), ("memory_mb", 10**13),
    ("stack_kb", 10**20), ("stack_kb", math.inf), ("stack_kb", 0.25),
])
def test_limits_out_of_range_are_invalid_values(option, value):
    _invalid(lambda: Host(**{option: value}), option)
    _invalid(lambda: Coordinator(**{option: value}) if option != "timeout"
             else Coordinator(engine_timeouts={"lua": value}))


@pytest.mark.parametrize("timeout", [math.inf, math.nan, "1", 10**400])
def test_a_runs_own_timeout_out_of_range_is_an_invalid_value(language, timeout):
    host = Host(on_output=lambda line: None)
    _invalid(lambda: host.new_run_source("return 1", language, timeout=timeout), "timeout")


@pytest.mark.parametrize("value", [math.inf, math.nan, 0.5])
def test_max_concurrency_out_of_range_is_an_invalid_value(value):
    _invalid(lambda: Coordinator(max_concurrency=value), "max_concurrency")


@pytest.mark.parametrize("tools", [5, None, "scripts/tools.py", b"x", ROOT / "scripts/tools.py"])
def test_tools_that_are_not_a_collection_are_an_invalid_value(tools):
    _invalid(lambda: Host(tools), "tools")
    _invalid(lambda: Coordinator(tools), "tools")


def test_on_output_that_cannot_be_called_is_an_invalid_value():
    _invalid(lambda: Host(on_output=5), "on_output")
    _invalid(lambda: Coordinator(on_output="x"), "on_output")


def test_the_largest_limits_still_run(language):
    host = Host(timeout=1e9, memory_mb=1 << 20, on_output=lambda line: None)
    assert host.run_source("return 1" if language == "lua"
                           else "async function main() { return 1; }", language) == 1
