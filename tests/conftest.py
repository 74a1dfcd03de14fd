"""Shared fixtures: every behaviour that exists in both languages is tested in both."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

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
def worker_pool() -> Iterator[WorkerPool]:
    """One pool of worker processes for the session's process-isolation tests (engines
    of 64 MB prewarmed, as the engine driver makes by default)."""
    from engines.process import WorkerPool

    with WorkerPool(memory_mb=64) as pool:
        yield pool
