"""``@tool``: parameter models from type hints or pydantic models, validation, tools files."""

from __future__ import annotations

import textwrap

import pytest
from pydantic import BaseModel

from bridge import ConfigurationError, ScriptError, ToolError
from host import Host, tool
from host.tools import ToolRegistry, as_tool, load_tools_file


@tool
def search(query: str, limit: int = 3) -> list[str]:
    """Search the index.

    Returns at most ``limit`` hits.
    """
    return [query] * limit


@tool(timeout=2.0, name="fetch_page")
async def fetch(url: str) -> str:
    return url


class Point(BaseModel):
    x: float
    y: float


@tool
def norm(point: Point) -> float:
    """Length of a vector."""
    return (point.x**2 + point.y**2) ** 0.5


@tool
def tags(names: list[str], extra: list[int] | None = None) -> int:
    return len(names)


def test_decorated_function_stays_callable():
    assert search("x", 2) == ["x", "x"]


def test_tool_metadata_from_the_function():
    t = as_tool(search)
    assert t.name == "search" and not t.is_async and t.timeout is None
    assert t.description == "Search the index.\n\nReturns at most ``limit`` hits."
    f = as_tool(fetch)
    assert f.name == "fetch_page" and f.is_async and f.timeout == 2.0


def test_validation_fills_defaults_and_calls_with_keywords():
    t = as_tool(search)
    args, kwargs = t.arguments(t.validate({"query": "x"}))
    assert args == () and kwargs == {"query": "x", "limit": 3}


def test_validation_errors_name_the_parameter():
    t = as_tool(search)
    with pytest.raises(ToolError.InvalidParameters) as info:
        t.validate({"query": "x", "limit": "many"})
    err = info.value
    assert err.fields["error_type"] == "validation"
    assert err.fields["tool_name"] == "search"
    assert err.fields["validation_error"].startswith("limit: Input should be a valid integer")
    assert err.fields["received_parameters"] == {"query": "x", "limit": "many"}
    assert err.fields["expected_schema"]["properties"]["query"]["type"] == "string"
    with pytest.raises(ToolError.InvalidParameters, match="missing parameter 'query'"):
        t.validate({})
    with pytest.raises(ToolError.InvalidParameters, match="unknown parameter 'qurey'"):
        t.validate({"qurey": "x"})


def test_parameters_that_are_not_a_table_are_a_parse_error():
    with pytest.raises(ToolError.InvalidParameters) as info:
        as_tool(search).validate(["x"])
    assert info.value.fields["error_type"] == "parse"
    assert "must be a table/object" in info.value.fields["validation_error"]


def test_a_pydantic_model_parameter_is_the_schema():
    t = as_tool(norm)
    assert t.takes_model
    args, kwargs = t.arguments(t.validate({"x": 3, "y": 4}))
    assert norm(*args, **kwargs) == 5.0
    with pytest.raises(ToolError.InvalidParameters, match="y"):
        t.validate({"x": 3})


def test_an_empty_table_is_a_list_where_the_schema_says_list():
    t = as_tool(tags)
    model = t.validate({"names": {}, "extra": {}})
    assert model.names == [] and model.extra == []
    with pytest.raises(ToolError.InvalidParameters):
        as_tool(search).validate({"query": {}})  # a str field takes no table


def test_bad_timeout_and_duplicate_names_are_configuration_errors():
    with pytest.raises(ConfigurationError.InvalidValue, match="timeout must be positive"):
        tool(timeout=0)(lambda: None)
    other = tool(name="search")(lambda query: query)
    with pytest.raises(ConfigurationError.InvalidValue, match="two tools are named 'search'"):
        ToolRegistry([as_tool(search), as_tool(other)])


def test_tools_file_loading(tmp_path):
    good = tmp_path / "tools.py"
    good.write_text(textwrap.dedent('''
        from host import tool

        @tool
        def add(a: int, b: int) -> int:
            """Add two numbers."""
            return a + b

        def helper():  # not a tool
            pass
    '''))
    assert [t.name for t in load_tools_file(good)] == ["add"]

    with pytest.raises(ConfigurationError.FileNotFound):
        load_tools_file(tmp_path / "missing.py")
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module_anywhere\n")
    with pytest.raises(ConfigurationError.LoadFailed) as info:
        load_tools_file(broken)
    assert "ModuleNotFoundError" in str(info.value)
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(ConfigurationError.LoadFailed, match="no @tool functions"):
        load_tools_file(empty)
    exits = tmp_path / "exits.py"
    exits.write_text("raise SystemExit(3)\n")
    with pytest.raises(ConfigurationError.LoadFailed, match="SystemExit"):
        load_tools_file(exits)


def test_host_refuses_bad_settings():
    with pytest.raises(ConfigurationError.InvalidValue, match="timeout"):
        Host(timeout=0)
    with pytest.raises(ConfigurationError.InvalidValue, match="memory_mb"):
        Host(memory_mb=-1)
    with pytest.raises(ConfigurationError.InvalidValue, match="unknown sandbox"):
        Host(sandbox="open")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError.InvalidValue, match="a tool must be"):
        Host(tools=[42])


def test_host_refuses_bad_scripts_and_args(tmp_path):
    host = Host()
    with pytest.raises(ConfigurationError.FileNotFound):
        host.run(tmp_path / "nope.lua")
    odd = tmp_path / "agent.py"
    odd.write_text("print(1)")
    with pytest.raises(ConfigurationError.InvalidValue, match="cannot tell the language"):
        host.run(odd)
    binary = tmp_path / "agent.js"  # (Lua source may be any bytes, as Lua takes it)
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigurationError.LoadFailed, match="not UTF-8"):
        host.run(binary)
    binary.rename(tmp_path / "agent.lua")
    with pytest.raises(ScriptError.CompilationFailed, match="unexpected symbol"):
        host.run(tmp_path / "agent.lua")
    with pytest.raises(ConfigurationError.InvalidValue, match="must be 'lua' or 'javascript'"):
        host.run_source("return 1", "python")
    with pytest.raises(ConfigurationError.InvalidValue, match=r"args\.when is not JSON-like"):
        host.run_source("return 1", "lua", args={"when": object()})
    with pytest.raises(ConfigurationError.InvalidValue, match=r"args\[0\]"):
        host.run_source("return 1", "lua", args=[float("nan")])
