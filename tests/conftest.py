"""Shared fixtures: every behaviour that exists in both languages is tested in both."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

# The script languages exist once the engines' specs are registered (bridge is told them):
# tests that read frames or errors from JSON without running an engine need them too.
import engines  # noqa: F401

if TYPE_CHECKING:
    from engines.process import WorkerPool

LANGUAGES = ["lua", "javascript"]
EXTENSION = {"lua": ".lua", "javascript": ".js"}


@pytest.fixture(autouse=True)
def _errors_db(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
               ) -> None:
    """Every test records errors (``polyspell run`` does by default) into a file of its
    own, never the user's: the CLIs a test starts inherit the variable."""
    folder = tmp_path_factory.mktemp("errors-db")
    monkeypatch.setenv("POLYSPELL_ERRORS_DB", str(folder / "errors.db"))


@pytest.fixture(params=LANGUAGES)
def language(request: pytest.FixtureRequest) -> str:
    """The script language under test."""
    return request.param


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Async tests run under asyncio and trio."""
    return request.param


def pick(language: str, lua: str, javascript: str) -> str:
    """The source for the language under test."""
    return lua if language == "lua" else javascript


@pytest.fixture(scope="session")
def ray_executor() -> Iterator[Any]:
    """One local Ray for the session's Ray tests (bound to 127.0.0.1), started by the
    first test that needs it: a Ray start costs seconds."""
    pytest.importorskip("ray")
    from host.ray_executor import RayExecutor

    executor = RayExecutor()
    yield executor
    executor.close()


@pytest.fixture(scope="session")
def worker_pool() -> Iterator[WorkerPool]:
    """One pool of worker processes for the session's process-isolation tests (engines
    of 64 MB prewarmed, as the engine driver makes by default)."""
    from engines import Limits
    from engines.process import WorkerPool

    with WorkerPool(memory_mb=64) as pool:
        # and four of a host's default 256 MB, so that a test with a short timeout in
        # process mode (the isolation fixture) finds a worker ready, as a warm host does
        warm = [pool.make_engine("lua", limits=Limits(memory_mb=256)) for _ in range(4)]
        for engine in warm:
            engine.start("return 1", "warm.lua", None, [], time.monotonic() + 60)
            engine.close()
        yield pool


@pytest.fixture(params=["thread", "process"])
def isolation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Where engines run: a test module that uses this fixture for all its tests
    (``pytestmark = pytest.mark.usefixtures("isolation")``) runs each test in both modes,
    every Host made without an isolation of its own (and every Coordinator's) taking it
    (see ``host.Host``'s ``isolation``). What works in thread mode works in process mode,
    with the same results, errors, frames and exit codes."""
    import host.host

    mode = request.param
    # process mode: the session's pool, shared by every host (each of them starting its
    # own workers would cost the suite a minute)
    monkeypatch.setattr(host.host, "DEFAULT_ISOLATION", mode if mode == "thread"
                        else request.getfixturevalue("worker_pool"))
    return mode


LUA_VERSIONS = ["5.5", "5.4", "luajit"]
# Why a test of a Lua 5.4+ feature does not run on LuaJIT (Lua 5.1 with extensions).
NO_CLOSE_ON_LUAJIT = "LuaJIT (Lua 5.1) has no to-be-closed variables nor coroutine.close"
NO_INTEGERS_ON_LUAJIT = "LuaJIT (Lua 5.1) has no integer subtype: no math.type, math.maxinteger"


def nil_indexed(lua_version: str, what: str) -> str:
    """Lua's message for indexing a nil ``what`` (``"local 't'"``), as the version words it."""
    if lua_version == "luajit":
        return f"attempt to index {what} (a nil value)"
    return f"attempt to index a nil value ({what})"


@pytest.fixture(params=LUA_VERSIONS)
def lua_version(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The Lua version under test: every Lua engine made in this process without a version
    of its own (``LuaEngine()``, ``Host()``, ``engines.make_engine``) runs it. A module
    marked ``pytestmark = pytest.mark.usefixtures("lua_version")`` runs its Lua tests on
    each version (its tests of other languages only once: skipped on the others). Worker
    processes keep their default (tests/test_lua_versions.py runs each version there)."""
    version = request.param
    callspec = getattr(request.node, "callspec", None)
    params = callspec.params if callspec is not None else {}
    # the language and isolation of a test parametrized by them (the contract's `name`
    # is a (language, isolation) pair)
    language, isolation = params.get("language", "lua"), params.get("isolation", "thread")
    if isinstance(params.get("name"), tuple):
        language, isolation = params["name"]
    if version != "5.5" and language != "lua":
        pytest.skip(f"a {language} test: runs once, not per Lua version")
    if version != "5.5" and isolation == "process":
        pytest.skip("worker processes run their default Lua (see tests/test_lua_versions.py)")
    from engines.lua import LuaEngine

    defaults = LuaEngine.__init__.__kwdefaults__
    assert defaults is not None
    monkeypatch.setitem(defaults, "lua_version", version)
    return version
