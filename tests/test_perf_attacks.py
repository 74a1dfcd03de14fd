"""Red team on the data fast paths of issue 17: each test is an attack (a careless tool,
a hostile tools file) that made a fast path give another answer than its slow path gave,
on the real engines. The slow path is the fast one switched off (monkeypatch) or, where
it cannot be switched off, the answer the data itself calls for."""

from __future__ import annotations

from typing import Any

import pytest

import engines.lua as lua_engine
import host.data as host_data
from bridge import SpellError
from host import tool
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
