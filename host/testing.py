"""Testing agent scripts with pytest: tool stubs, a run that keeps its outcome, and an
assertion on the unified error.

    from host.testing import Stub, fails, run_script, assert_spell_error

    def test_the_agent_gives_up_when_search_is_rate_limited():
        search = Stub("search", fails("provider/rate_limited", provider="wiki"))
        outcome = run_script("scripts/agent.lua", search, args={"city": "Lisbon"})
        assert_spell_error(outcome, "provider/rate_limited", provider="wiki")
        assert search.calls[0].params == {"query": "Lisbon", "limit": 2}
        assert search.calls[0].line == 6

A :class:`Stub` is a real tool (registered, validated, called through the host's whole
pipeline, recovery included): only its answers are made up. Scripts run in real engines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict

import engines
from bridge import SpellError
from bridge.errors import field_defaults, variant_class
from host.steer import ToolContext
from host.tools import as_tool, make_tool

__all__ = ["Outcome", "Stub", "StubCall", "assert_spell_error", "fails", "run_script"]


class _AnyParams(BaseModel):
    """What a stub without ``like=`` accepts: any keyword parameters."""

    model_config = ConfigDict(extra="allow")


class StubCall(NamedTuple):
    """One call of a stub: its parameters as validated, and the script line that made it."""

    params: dict[str, Any]
    language: str
    file: str | None
    line: int | None


@dataclass(frozen=True)
class _Failure:
    """An answer that fails the call with the unified error ``code`` (see :func:`fails`)."""

    code: str
    fields: dict[str, Any]


def fails(code: str, message: str | None = None, **fields: Any) -> Any:
    """An answer of a :class:`Stub` that fails the call with the unified error ``code``
    (``"provider/rate_limited"``, ``"tool/timeout"``...) and ``fields``; ``tool_name``
    is filled in with the stub's name where the error has that field."""
    category, _, kind = code.partition("/")
    cls = variant_class(category, kind)  # an unknown code or field fails here, in the test
    cls(message, **({"tool_name": "stub"} if "tool_name" in field_defaults(cls) else {}),
        **fields)
    return _Failure(code, {**fields, **({"message": message} if message else {})})


class Stub:
    """A tool that answers from a script of answers and records every call.

    ``answers``: one per call, in order; each a value (the tool's result), an exception
    (raised as a Python tool's would be: the host maps it), or :func:`fails` (a unified
    error by code). After the last, the last answers again (so ``Stub("t", 42)`` always
    answers 42). ``like``: a real tool (or ``@tool`` function) whose parameters the stub
    validates as that tool would, name and description included, so a script calling it
    wrongly fails as it would against the real one; without it, any parameters pass.
    """

    def __init__(self, name: str | None = None, *answers: Any, like: Any = None,
                 description: str | None = None) -> None:
        model: type[BaseModel] = _AnyParams
        real = as_tool(like) if like is not None else None
        if real is not None:
            model = real.params_model
            name = name or real.name
            description = description or real.description
        if not name:
            raise TypeError("a Stub needs a name, or like= a real tool")
        self.name = name
        self.answers = list(answers) or [None]
        self.calls: list[StubCall] = []
        self.tool = make_tool(self._answer, name=name, params=model,
                              description=description or f"A stub of {name}.")

    def _answer(self, params: BaseModel, context: ToolContext) -> Any:
        self.calls.append(StubCall(params.model_dump(), context.caller.language,
                                   context.caller.file, context.caller.line))
        answer = self.answers[min(len(self.calls), len(self.answers)) - 1]
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, _Failure):
            raise self._error(answer)
        return answer

    def _error(self, failure: _Failure) -> SpellError:
        category, _, kind = failure.code.partition("/")
        cls = variant_class(category, kind)
        fields = dict(failure.fields)
        message = fields.pop("message", None)
        if "tool_name" in field_defaults(cls) and "tool_name" not in fields:
            fields["tool_name"] = self.name
        return cls(message, **fields)

    @property
    def last(self) -> StubCall:
        """The latest call (an AssertionError if there was none)."""
        assert self.calls, f"the stub {self.name!r} was never called"
        return self.calls[-1]

    def __repr__(self) -> str:
        return f"Stub({self.name!r}, {len(self.answers)} answers, {len(self.calls)} calls)"


@dataclass
class Outcome:
    """How a script run ended: its result, or its unified error; what it printed."""

    result: Any = None
    error: SpellError | None = None
    output: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the run succeeded."""
        return self.error is None


def run_script(script: str | Path, *tools: Any, args: Any = None, source: str | None = None,
               language: str | None = None, **host_options: Any) -> Outcome:
    """Run ``script`` (a file; or ``source`` text, named ``script``, in ``language``, by
    default the one of its extension, else Lua) with
    ``tools`` (stubs, ``@tool`` functions, tools files) on a fresh :class:`host.Host`
    (``host_options``: its keyword arguments), and keep how it ended instead of raising."""
    from host.host import Host

    outcome = Outcome()
    registered = [item.tool if isinstance(item, Stub) else item for item in tools]
    with Host(registered, on_output=outcome.output.append, **host_options) as host:
        try:
            if source is None:
                outcome.result = host.run(script, args)
            else:
                language = language or engines.language_for_path(script) or "lua"
                outcome.result = host.run_source(source, language, str(script), args)
        except SpellError as err:
            outcome.error = err
    return outcome


def assert_spell_error(outcome: Outcome | SpellError | Callable[[], Any], code: str,
                       **fields: Any) -> SpellError:
    """Assert that ``outcome`` (of :func:`run_script`; or an error; or a callable to call)
    failed with the unified error ``code`` (``"tool/timeout"``, or a category such as
    ``"tool"``), its fields equal to ``fields``; the error, for more checks. On a mismatch,
    the message shows the error's whole polyglot traceback."""
    __tracebackhide__ = True  # pytest shows the test's line, not this one
    err = _error_of(outcome)
    if err is None:
        result = outcome.result if isinstance(outcome, Outcome) else None
        raise AssertionError(f"expected {code}, but the run succeeded with {result!r}")
    if code not in (err.code, err.category):
        raise AssertionError(f"expected {code}, got {err.code}:\n{err.to_text()}")
    wrong = {key: (err.fields.get(key, "<missing>"), value)
             for key, value in fields.items() if err.fields.get(key, _MISSING) != value}
    if wrong:
        said = ", ".join(f"{key}={got!r} (expected {want!r})"
                         for key, (got, want) in wrong.items())
        raise AssertionError(f"{err.code} has {said}:\n{err.to_text()}")
    return err


_MISSING = object()


def _error_of(outcome: Outcome | SpellError | Callable[[], Any]) -> SpellError | None:
    if isinstance(outcome, SpellError):
        return outcome
    if isinstance(outcome, Outcome):
        return outcome.error
    try:
        outcome()
    except SpellError as err:
        return err
    return None

