"""Red team on the data fast paths of issue 17: each test is an attack (a careless tool,
a hostile tools file) that made a fast path give another answer than its slow path gave,
on the real engines. The slow path is the fast one switched off (monkeypatch) or, where
it cannot be switched off, the answer the data itself calls for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import engines.lua as lua_engine
import host.data as host_data
from bridge import SpellError
from host import Host, tool
from host.data import to_script_data
from host.testing import run_script


class LazyText:
    """A lazy proxy, as Django's SimpleLazyObject or werkzeug's LocalProxy are: it says
    its ``__class__`` is its target's (``str``), while its type is its own."""

    def __init__(self, text: str) -> None:
        self.text = text

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return str

    def __len__(self) -> int:
        return len(self.text)

    def __str__(self) -> str:
        return self.text


class LazyInt:
    """The same for an int."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return int


def _outcome(value: Any, language: str) -> Any:
    try:
        return ("value", to_script_data(value, language))
    except SpellError as exc:
        return ("error", exc.code, str(exc))
    except Exception as exc:
        return ("raised", type(exc).__name__, str(exc))


PROXIED = [{"name": LazyText("Ann")}, {"ids": [1, 2], "name": LazyText("Ann")},
           [{"name": LazyText("Ann")}], [1, LazyInt()], {"a": [2, LazyInt()]},
           [LazyText("x"), "y"]]


@pytest.mark.parametrize("language", ["lua", "javascript"])
@pytest.mark.parametrize("value", PROXIED, ids=range(len(PROXIED)))
def test_a_value_that_claims_a_builtin_class_is_not_taken_for_one(
        value: Any, language: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast copy looked at ``x.__class__``, which a proxy answers as it likes: the
    proxy crossed as if it were a str (or an int), where the slow path, which looks at
    ``type(x)``, does not let it through."""
    fast = _outcome(value, language)
    assert fast[0] != "value" or all(
        type(item) in (str, int, list, dict) for item in _leaves(fast[1]))
    monkeypatch.setattr(host_data, "_plain_copy", lambda *args: None)
    assert fast == _outcome(value, language)


def _leaves(value: Any) -> list[Any]:
    if type(value) is dict:
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if type(value) is list:
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


@pytest.mark.parametrize("value", PROXIED, ids=range(len(PROXIED)))
def test_lua_plain_size_does_not_take_a_proxy_for_data(value: Any) -> None:
    """_plain_size either says "not plain" or raises nothing: never counts a proxy."""
    assert lua_engine._plain_size(value, lua_engine._INT64, 0, set()) is None


@tool
def profile() -> dict:
    """A profile, with one field a lazy proxy (a careless tool)."""
    return {"ids": [1, 2], "name": LazyText("Ann")}


SOURCES = {"lua": "local r = tools.profile{}\nreturn type(r.name)\n",
           "javascript": "async function main() {\n  const r = await tools.profile({});\n"
                         "  return typeof r.name;\n}\n"}


@pytest.mark.parametrize("language", ["lua", "javascript"])
def test_a_tool_returning_a_proxy_fails_as_the_slow_path_failed(
        language: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not an internal error of the engine (Lua) or a misleading "str is not JSON
    serializable" (JavaScript): the error the slow path gives."""
    def run() -> Any:
        outcome = run_script("s", profile, source=SOURCES[language], language=language)
        assert outcome.error is not None
        return outcome.error.code
    fast = run()
    monkeypatch.setattr(host_data, "_plain_copy", lambda *args: None)
    monkeypatch.setattr(lua_engine, "_plain_size", lambda *args: None)
    assert fast == run()
    assert fast != "runtime/internal_error"


received: list[str] = []


@tool
def take(values: Any) -> int:
    """Keeps what it was given (the first characters)."""
    received.append(values[:12] if isinstance(values, str) else repr(values))
    return 1


def test_a_long_string_is_read_as_itself_however_late_its_request_is_sent(
        tmp_path: Path) -> None:
    """A long string in a request's parameters is handed to Python by itself (its mark in
    the JSON text). A request made while the poll that answers a result runs (a toJSON
    of the result calls a tool) is sent with the next poll: its mark then named the
    string of another text, of the next activation (Python read "OTHER", not "SECRET")."""
    helpers = tmp_path / "helpers.js"
    helpers.write_text(
        'exports.leak = (p) => ({ok: 1, later: {toJSON() {\n'
        '  tools.take({values: "SECRET".repeat(4000)}); return 0; }}});\n'
        'exports.other = async (p) => {\n'
        '  await tools.take({values: "OTHER".repeat(4000)}); return 2; };\n')
    received.clear()
    with Host([take, helpers], timeout=10, on_output=lambda line: None) as host:
        result = host.run_source("local a = tools.leak{}\nlocal b = tools.other{}\n"
                                 "return {a, b}\n", "lua", "s.lua")
    assert result == [{"later": 0, "ok": 1}, 2]
    assert received == ["SECRETSECRET", "OTHEROTHEROT"]


def test_long_strings_of_params_that_cannot_cross_are_not_kept(tmp_path: Path) -> None:
    """A conversion that fails (a function among the params) after long strings were put
    aside keeps none of them: a script that tries again and again does not fill the
    engine's memory with strings it no longer holds."""
    source = ("async function main() {\n"
              "  let failed = 0;\n"
              "  for (let i = 0; i < 400; i++) {\n"
              "    const big = String(i).padEnd(200000, 'x');\n"
              "    try { await tools.take({values: [big, () => 1]}); } catch (e) { failed++; }\n"
              "  }\n"
              "  await tools.take({values: 'y'.repeat(20000)});\n"
              "  return failed;\n"
              "}\n")
    received.clear()
    outcome = run_script("s.js", take, source=source, memory_mb=32)
    assert outcome.error is None, outcome.error and outcome.error.to_text()
    assert outcome.result == 400
    assert received == ["yyyyyyyyyyyy"]
