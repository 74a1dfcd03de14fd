"""Steps carry only data: every kind of step from both engines pickles to an equal value.

A step is what an engine hands the host (engines.base); to cross a pipe to a worker
process it must hold no callable and no live object: output lines, JSON-like values,
frames, problems, and errors whose envelope refs the host resolves
(bridge.envelope.resolve_refs), also after the step was pickled.
"""

from __future__ import annotations

import dataclasses
import enum
import pickle
import time
from collections.abc import Callable
from typing import Any

import pydantic
import pytest

from bridge import Frame, SpellError, ToolError
from bridge.envelope import REF_KEY, error_envelope, resolve_refs
from engines import make_engine
from engines.base import Failed, Finished, Limits, Problem, Step, Suspended, ToolInfo, ToolReply

# One script per kind of step, in each language. Most print a line before the step they
# come to, so that the steps carry output too.
SCRIPTS: dict[str, dict[str, str]] = {
    "lua": {
        "suspended": "print('a')\nlocal r = tools.t{q = 1}\nreturn r",
        "suspended_problem": "print('a')\nlocal r = tools.t{f = print}\nreturn r",
        "finished": "print('a')\nreturn {n = 1, list = {1, 'x', true}}",
        "script_error": "print('a')\nlocal function f() error('boom') end\nf()",
        "rethrown": "local ok, e = pcall(tools.t, {})\nprint('a')\nerror(e)",
        "rethrown_cause": ("local ok, e = pcall(tools.t, {})\n"
                           "error(errors.ToolError{kind = 'execution_failed', tool_name = 'u',"
                           " reason = 'wrapped', cause = e})"),
        "time": "print('a')\nwhile true do end",
        "memory": "print('a')\nlocal t = {}\nfor i = 1, 1e8 do t[i] = {i} end",
        "compile": "return +",
        "problem": "print('a')\nreturn {f = print}",
    },
    "javascript": {
        "suspended": "async function main() { console.log('a'); return await tools.t({q: 1}) }",
        "suspended_problem": ("async function main() {\n  console.log('a');\n"
                              "  return await tools.t({f: () => 1});\n}"),
        "finished": "function main() { console.log('a'); return {n: 1, list: [1, 'x', true]} }",
        "script_error": ("function f() { throw new TypeError('boom') }\n"
                         "function main() { console.log('a'); f() }"),
        "rethrown": ("async function main() {\n"
                     "  try { await tools.t({}) } catch (e) { console.log('a'); throw e }\n}"),
        "rethrown_cause": ("async function main() {\n  try { await tools.t({}) } catch (e) {\n"
                           "    throw new ToolError({kind: 'execution_failed', tool_name: 'u',"
                           " reason: 'wrapped', cause: e});\n  }\n}"),
        "time": "console.log('a'); while (true) {}",
        # big allocations: the engine can still make its out-of-memory error (tiny ones
        # may leave it a thrown null, a known limit: README "Known limits")
        "memory": "console.log('a'); const a = []; "
                  "while (true) a.push(new Array(100000).fill(1));",
        "compile": "function (",
        "problem": "function main() { console.log('a'); return {f: () => 1} }",
    },
}
LANGUAGES = sorted(SCRIPTS)


class Driven:
    """The step a script came to, and the errors its envelopes' refs stand for."""

    def __init__(self, step: Step, refs: dict[int, SpellError]) -> None:
        self.step = step
        self.refs = refs


def drive(language: str, name: str, *, answer: bool = True, source: str | None = None
          ) -> Driven:
    """Run one of SCRIPTS (or ``source``) to the step asked for; the tool ``t`` fails
    with a timeout. Without ``answer`` the first step is the one wanted (a Suspended step).
    """
    timeout = 0.3 if name == "time" else 5.0
    engine = make_engine(language, limits=Limits(timeout=timeout, memory_mb=16))
    refs: dict[int, SpellError] = {}

    def ref(err: SpellError) -> int:
        refs[id(err)] = err
        return id(err)

    deadline = time.monotonic() + timeout
    try:
        step = engine.start(source or SCRIPTS[language][name], f"steps.{language}", None,
                            [ToolInfo("t", "a tool")], deadline)
        while answer and isinstance(step, Suspended):
            err = ToolError.Timeout(tool_name="t", duration=1.0)
            err.__cause__ = ToolError.NotFound(tool_name="backend")
            envelope = error_envelope(err, ref=ref)
            step = engine.resume([ToolReply(step.requests[0].id, error=envelope)], deadline)
    finally:
        engine.close()
    return Driven(step, refs)


def roundtrip(value: Any) -> Any:
    return pickle.loads(pickle.dumps(value))


# -- what counts as data ------------------------------------------------------------------

_SCALARS = (type(None), bool, int, float, str)


def assert_data(value: Any, where: str = "step") -> None:
    """Fail unless ``value`` is made only of data: no callable, no live object.

    Data: JSON-like scalars and containers, frames, the step dataclasses, and errors:
    SpellErrors never raised (no traceback, which holds live frames), whose causes are
    errors too and whose attributes are data (their context a pydantic model of data).
    """
    assert not callable(value), f"{where} is callable"
    if isinstance(value, _SCALARS) or isinstance(value, enum.Enum):
        return
    if isinstance(value, Frame):
        for name, item in zip(Frame._fields, value, strict=True):
            assert isinstance(item, _SCALARS), f"{where}.{name} is {type(item).__name__}"
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            assert_data(item, f"{where}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str), f"{where} has a {type(key).__name__} key"
            assert_data(item, f"{where}.{key}")
        return
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        assert type(value).__module__ == "engines.base", f"{where} is a {type(value)}"
        for field in dataclasses.fields(value):
            assert_data(getattr(value, field.name), f"{where}.{field.name}")
        return
    if isinstance(value, SpellError):
        assert value.__traceback__ is None, f"{where} holds a traceback (live frames)"
        assert value.__context__ is None or value.__context__ is value.__cause__, \
            f"{where} holds a live __context__"
        cause = value.__cause__
        assert cause is None or isinstance(cause, SpellError), \
            f"{where} has a live cause: {cause!r}"
        for name, item in vars(value).items():
            if name == "_cause_view":
                continue  # a cache of the cause, None when the cause is a SpellError
            assert_data(item, f"{where}.{name}")
        if cause is not None:
            assert_data(cause, f"{where}.__cause__")
        return
    if isinstance(value, pydantic.BaseModel):  # an error's context
        assert type(value).__module__ == "bridge.context", f"{where} is a {type(value)}"
        assert_data(value.model_dump(mode="json"), f"{where}")
        return
    raise AssertionError(f"{where} is a {type(value).__name__}, not data: {value!r}")


# -- every kind of step -------------------------------------------------------------------

KINDS: dict[str, Callable[[Step], bool]] = {
    "suspended": lambda step: isinstance(step, Suspended) and step.requests[0].frames != [],
    "suspended_problem": lambda step: isinstance(step, Suspended)
    and isinstance(step.requests[0].problem, Problem),
    "finished": lambda step: isinstance(step, Finished),
    "script_error": lambda step: isinstance(step, Failed)
    and step.error.category == "script",
    "rethrown": lambda step: isinstance(step, Failed) and step.error.code == "tool/timeout",
    "rethrown_cause": lambda step: isinstance(step, Failed)
    and step.error.code == "tool/execution_failed",
    "time": lambda step: isinstance(step, Failed)
    and step.error.fields.get("resource_type") == "time",
    "memory": lambda step: isinstance(step, Failed)
    and step.error.code == "resource/memory_exhaustion",
    "compile": lambda step: isinstance(step, Failed)
    and step.error.code == "script/compilation_failed",
    "problem": lambda step: isinstance(step, Failed) and step.problem is not None,
}
SUSPENDING = {"suspended", "suspended_problem"}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("language", LANGUAGES)
def test_every_kind_of_step_pickles_to_an_equal_value(language: str, kind: str) -> None:
    step = drive(language, kind, answer=kind not in SUSPENDING).step
    assert KINDS[kind](step), step
    assert_data(step)
    copy = roundtrip(step)
    assert type(copy) is type(step)
    assert copy == step
    assert_data(copy)
    if kind not in ("compile", "rethrown_cause"):
        assert step.output == ("a",)


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_problem_says_where_and_what(language: str) -> None:
    request = drive(language, "suspended_problem", answer=False).step.requests[0]
    assert request.problem == Problem("params.f", "function", "params.f is a function")
    assert roundtrip(request) == request
    failed = drive(language, "problem").step
    assert failed.problem == Problem("result.f", "function", "result.f is a function")
    assert failed.error.fields["error"] == "result.f is a function"
    assert failed.error.fields["data_type"] == "function"
    assert failed.error.fields["to_engine"] == "python"


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_rethrown_error_resolves_to_the_original_after_pickling(language: str) -> None:
    driven = drive(language, "rethrown")
    [original] = [err for err in driven.refs.values() if err.code == "tool/timeout"]
    copy = roundtrip(driven.step)
    assert copy.error is not original
    assert copy.error.context.metadata[REF_KEY] == id(original)
    assert resolve_refs(copy.error, driven.refs.get) is original


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_rethrown_cause_is_relinked_to_the_original(language: str) -> None:
    driven = drive(language, "rethrown_cause")
    [original] = [err for err in driven.refs.values() if err.code == "tool/timeout"]
    err = resolve_refs(roundtrip(driven.step).error, driven.refs.get)
    assert err.code == "tool/execution_failed" and err.__cause__ is original
    assert REF_KEY not in err.context.metadata


@pytest.mark.parametrize("language", LANGUAGES)
def test_an_unknown_ref_leaves_no_trace(language: str) -> None:
    err = resolve_refs(drive(language, "rethrown_cause").step.error, lambda ref: None)
    assert [one.code for one in err.chain()] == [
        "tool/execution_failed", "tool/timeout", "tool/not_found"]
    assert REF_KEY not in err.to_json()
    assert all(REF_KEY not in one.context.metadata for one in err.chain())


def test_frames_problems_and_requests_pickle() -> None:
    frame = Frame("lua", "a.lua", 3, None, "f", "local x = 1")
    problem = Problem("params[2]", "cycle", "cyclic table at params[2]")
    assert roundtrip(frame) == frame and roundtrip(problem) == problem
    assert str(roundtrip(problem)) == "cyclic table at params[2]"


SPOILED = {"lua": "local ok, e = pcall(tools.t, {})\ne.fields = 5\nerror(e)",
           "javascript": ("async function main() {\n  try { await tools.t({}) } catch (e) {\n"
                          "    e.fields.f = () => 1; throw e;\n  }\n}")}


@pytest.mark.parametrize("language", LANGUAGES)
def test_an_envelope_rethrown_with_spoiled_fields_still_resolves(language: str) -> None:
    driven = drive(language, "spoiled", source=SPOILED[language])
    [original] = [err for err in driven.refs.values() if err.code == "tool/timeout"]
    assert driven.step.error.code == "bridge/invalid_error"  # the copy could not be built
    copy = roundtrip(driven.step)
    assert copy == driven.step
    assert resolve_refs(copy.error, driven.refs.get) is original
