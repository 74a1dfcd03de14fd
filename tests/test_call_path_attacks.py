"""Attacks on the fused tool call path and the lazy failure work (issue 17): a careless
tool, a tool's parameter model, two tools files with the same code, one error instance
shared by every run. Each shows where a fast path answered differently from the slow one
(or kept more than it did); real engines, both languages where a script is involved."""

from __future__ import annotations

import functools
import gc
import importlib.util
import re
import weakref
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, field_validator

from bridge import SpellError, ToolError
from host import Host, tool
from host.steer import StopRun
from tests.conftest import pick


def passthrough(call: Any, next: Any) -> Any:
    """A host layer that changes nothing: its tools take the pipeline (the slow path)."""
    return next(call)


# -- python_frames' cache: equal code objects of two files -------------------------------

_SAME_CODE = "def fail(reason: str) -> None:\n    raise ValueError(reason)\n"


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_files_with_the_same_code_keep_their_own_file_in_frames(
        language: str, tmp_path: Path) -> None:
    """Code objects compare equal across files (co_filename is not part of a code's
    equality): the frames of a tool in plugins/b.py must not name plugins/a.py because a
    tool of a.py with the same body failed first."""
    files = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        files.append(tmp_path / folder / "same_tools.py")
        files[-1].write_text(_SAME_CODE)
    first = _load(files[0], "polyspell_attack_same_a")
    second = _load(files[1], "polyspell_attack_same_b")
    assert first.fail.__code__ == second.fail.__code__  # the premise: equal code objects
    host = Host([tool(name="fail_a")(first.fail), tool(name="fail_b")(second.fail)],
                on_output=lambda line: None)
    for name, path in (("fail_a", files[0]), ("fail_b", files[1])):
        source = pick(language, f"\nreturn tools.{name}{{reason = 'x'}}\n",
                      "\nasync function main() {\n"
                      f"  return await tools.{name}({{reason: 'x'}});\n}}\n")
        with pytest.raises(SpellError) as caught:
            host.run_source(source, language, "same" + pick(language, ".lua", ".js"))
        raised = [f.file for f in caught.value.frames if f.function == "fail"]
        assert raised == [str(path)], (name, raised)


# -- update_context: updates nobody reads ---------------------------------------------------


class _Held:
    """Something an update holds (weakly referable, unlike the data a script passes)."""


def _named(held: _Held, n: int, context: Any) -> Any:
    return context.model_copy(update={"operation": f"{context.operation or ''}{n % 10}"[-8:]})


def test_updates_nobody_reads_are_not_kept_without_bound() -> None:
    """An error whose context is never read (a shared instance a careless tool raises in
    every run of a long-lived host) must not keep every update, and what each holds (the
    call's parameters), forever: the updates are bounded, and still apply in order."""
    err = ToolError.Timeout(tool_name="t", duration=1.0)
    first = _Held()
    gone = weakref.ref(first)
    err.update_context(functools.partial(_named, first, 0))
    del first
    for n in range(1, 5000):
        err.update_context(functools.partial(_named, _Held(), n))
    gc.collect()
    assert gone() is None, "the first update (and what it holds) is still kept"
    assert len(err._context_updates or ()) < 100
    assert err.context.operation == "".join(str(n % 10) for n in range(4992, 5000))


SHARED = ToolError.ExecutionFailed(tool_name="shared", reason="always the same instance")


@tool
def shared_failure(payload: str) -> None:
    """Raises one instance in every run (a careless tool), without its old traceback."""
    raise SHARED.with_traceback(None)


def test_a_shared_error_raised_in_many_runs_keeps_a_bounded_context_work(
        language: str) -> None:
    host = Host([shared_failure], on_output=lambda line: None)
    source = pick(language, "local ok = pcall(tools.shared_failure,\n"
                            "                 {payload = ('x'):rep(1000)})\nreturn ok\n",
                  "async function main() {\n  try { await tools.shared_failure("
                  "{payload: 'x'.repeat(1000)}); return true; }\n"
                  "  catch (e) { return false; }\n}\n")
    for _ in range(300):
        assert host.run_source(source, language, "shared") is False
    assert len(SHARED._context_updates or ()) < 100
    # and its context is still that of the last run's boundary
    stack = SHARED.context.execution_trace.call_stack
    assert [step.function_name for step in stack] == ["shared_failure"]
    assert stack[0].parameters == {"payload": "x" * 1000}


# -- the fused path steers only for the tool's own StopRun/AskHuman ------------------------


class _Odd(BaseModel):
    n: int

    @field_validator("n")
    @classmethod
    def _stop_on_odd(cls, n: int) -> int:
        if n % 2:  # a careless validator: steering is a tool's, not its parameters'
            raise StopRun("odd")
        return n


@tool
def even(p: _Odd) -> int:
    """The number, if even."""
    return p.n


def test_a_parameter_validator_raising_stop_run_answers_as_the_pipeline(
        language: str) -> None:
    """Tool.invoke steers for what the function raises, not for what its parameters'
    validation raises: the fused path must answer the same."""
    source = pick(language,
                  "local ok, e = pcall(tools.even, {n = 1})\n"
                  "if ok then return {ok = true, value = e} end\n"
                  "return {ok = false, code = e.code}\n",
                  "async function main() {\n  try {\n"
                  "    return {ok: true, value: await tools.even({n: 1})};\n"
                  "  } catch (e) {\n    return {ok: false, code: e.code};\n  }\n}\n")
    answers = []
    for layers in ([], [passthrough]):
        host = Host([even], on_output=lambda line: None, layers=layers)
        run = host.new_run_source(source, language, "odd")
        import anyio

        try:
            answers.append((repr(anyio.run(run.execute)), run.stopped is not None))
        except SpellError as err:
            answers.append((err.code, run.stopped is not None))
    assert answers[0] == answers[1]


# -- a host's own Tool (a subclass overriding invoke) ------------------------------------


def test_a_tool_subclass_with_its_own_invoke_is_not_fused(language: str) -> None:
    """Tool is public and a registry takes Tool instances: a host's subclass that
    overrides invoke (auditing, caching...) must see every call, as the pipeline calls it;
    the fused path calls the function itself."""
    import dataclasses

    from host import Tool
    from host.tools import TOOL_ATTRIBUTE

    seen: list[Any] = []

    class Audited(Tool):
        def invoke(self, call: Any) -> Any:
            seen.append(call.params)
            return super().invoke(call)

    @tool
    def double(n: int) -> int:
        """Doubles."""
        return 2 * n

    base = getattr(double, TOOL_ATTRIBUTE)
    audited = Audited(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})
    host = Host([audited], on_output=lambda line: None)
    source = pick(language, "\nreturn {tools.double{n = 1}, tools.double{n = 2}}\n",
                  "\nasync function main() {\n  return [await tools.double({n: 1}),\n"
                  "          await tools.double({n: 2})];\n}\n")
    assert host.run_source(source, language, "audited") == [2, 4]
    assert seen == [{"n": 1}, {"n": 2}]


# -- the errors handed to a script: a forgotten ref -----------------------------------------


@tool
def refuse(n: int) -> None:
    """Fails, numbered."""
    raise ValueError(f"refused {n}")


@pytest.mark.parametrize("which", ["first", "last"])
def test_a_script_rethrowing_a_forgotten_error_gets_its_copy(language: str, which: str
                                                             ) -> None:
    """Past MAX_HANDED_ERRORS the oldest handed error is forgotten (the OrderedDict): a
    script rethrowing it gets the copy it holds (same code and message, no Python frames),
    one rethrowing a recent one the original."""
    from host.runner import MAX_HANDED_ERRORS

    count = MAX_HANDED_ERRORS + 10
    source = pick(language,
                  f"local first, last\nfor i = 1, {count} do\n"
                  "  local ok, e = pcall(tools.refuse, {n = i})\n"
                  "  if i == 1 then first = e end\n  last = e\nend\n"
                  f"error({which})\n",
                  f"async function main() {{\n  let first, last;\n"
                  f"  for (let i = 1; i <= {count}; i++) {{\n"
                  "    try { await tools.refuse({n: i}); } catch (e) {\n"
                  "      if (i === 1) first = e;\n      last = e;\n    }\n  }\n"
                  f"  throw {which};\n}}\n")
    host = Host([refuse], on_output=lambda line: None)
    with pytest.raises(SpellError) as caught:
        host.run_source(source, language, "refs")
    err = caught.value
    assert err.code == "tool/execution_failed"
    n = 1 if which == "first" else count
    assert err.cause is not None and err.cause.message.endswith(f"refused {n}")
    python = [f for e in err.chain() for f in e.frames if f.function == "refuse"]
    assert bool(python) == (which == "last"), python
    assert "_envelope_ref" not in err.context.metadata


# -- every kind of exception a careless tool raises: the same answer on both paths ------------


class _BrokenText(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class _NotAnException(BaseException):
    """A BaseException that is not an Exception (nor one that ends a run)."""


def _raise(what: str) -> Any:
    import math as _math

    from host.calls import DeadlineReached
    from host.steer import AskHuman

    made: dict[str, Any] = {
        "broken_text": lambda: _BrokenText(),
        "base": lambda: _NotAnException("base"),
        "generator_exit": lambda: GeneratorExit(),
        "stop_iteration": lambda: StopIteration(3),
        "recursion": lambda: RecursionError("deep"),
        "memory": lambda: MemoryError(),
        "timeout": lambda: TimeoutError("slow"),
        "deadline_past": lambda: DeadlineReached(0.0),
        "deadline_far": lambda: DeadlineReached(_math.inf),
        "spell": lambda: ToolError.Timeout(tool_name="other", duration=1.0),
        "stop_bad_result": lambda: StopRun({1, 2}),
        "stop": lambda: StopRun({"done": True}),
        "ask_no_one": lambda: AskHuman("who?"),
        "args_not_text": lambda: ValueError({"k": [1, 2]}, 3),
        "exit": lambda: SystemExit(0),
    }
    raise made[what]()


@tool
def careless(what: str) -> None:
    """Raises what it is told to."""
    _raise(what)


CARELESS = ["broken_text", "base", "generator_exit", "stop_iteration", "recursion", "memory",
            "timeout", "deadline_past", "deadline_far", "spell", "stop_bad_result", "stop",
            "ask_no_one", "args_not_text", "exit"]


@pytest.mark.parametrize("what", CARELESS)
def test_every_exception_a_tool_raises_answers_as_the_pipeline(language: str, what: str
                                                               ) -> None:
    import anyio

    source = pick(language,
                  f"local ok, e = pcall(tools.careless, {{what = '{what}'}})\n"
                  "if ok then return {ok = true} end\n"
                  "return {code = e.code, message = e.message,\n"
                  "        cause = e.cause and e.cause.message}\n",
                  "async function main() {\n  try {\n"
                  f"    await tools.careless({{what: '{what}'}});\n    return {{ok: true}};\n"
                  "  } catch (e) {\n    return {code: e.code, message: e.message,\n"
                  "            cause: e.cause && e.cause.message};\n  }\n}\n")
    answers = []
    for layers in ([], [passthrough]):
        host = Host([careless], on_output=lambda line: None, layers=layers)
        run = host.new_run_source(source, language, "careless")
        try:
            outcome: Any = repr(anyio.run(run.execute))
        except SpellError as err:
            outcome = (err.code, err.message, [e.code for e in err.chain()])
        except BaseException as exc:  # what ends the run, as it is
            outcome = type(exc).__name__
        # (a timeout's message says how long the call took)
        answers.append((re.sub(r"after [0-9.e-]+s", "after ?s", str(outcome)),
                        repr(run.stopped)))
    assert answers[0] == answers[1]


def _host_view(err: SpellError) -> Any:
    from bridge.frames import is_internal

    context = err.context
    return ([(e.code, re.sub(r"after [0-9.e-]+s", "after ?s", e.message),
              [(f.language, f.file, f.line, f.function, f.source) for f in e.frames
               if not is_internal(f) and f.function != "passthrough"])
             for e in err.chain()],
            context.operation, context.component.model_dump(),
            [(s.function_name, s.file_location and s.file_location.model_dump(), s.parameters)
             for s in context.execution_trace.call_stack])


@pytest.mark.parametrize("what", CARELESS)
def test_every_exception_a_tool_raises_reaches_the_host_as_through_the_pipeline(
        language: str, what: str) -> None:
    import anyio

    source = pick(language, f"\n\nreturn tools.careless{{what = '{what}'}}\n",
                  "\n\nasync function main() {\n"
                  f"  return await tools.careless({{what: '{what}'}});\n}}\n")
    seen = []
    for layers in ([], [passthrough]):
        host = Host([careless], on_output=lambda line: None, layers=layers)
        run = host.new_run_source(source, language, "careless" + pick(language, ".lua", ".js"))
        try:
            outcome: Any = repr(anyio.run(run.execute))
        except SpellError as err:
            outcome = _host_view(err)
        except BaseException as exc:  # what ends the run, as it is
            outcome = type(exc).__name__
        seen.append((outcome, repr(run.stopped)))
    assert seen[0] == seen[1]


# -- refs: a script cannot reach another run's errors ------------------------------------------


def test_a_ref_of_another_run_stands_for_nothing() -> None:
    """A script that learnt the ref of an error another run handed out (here: that run's
    result) and throws a table carrying it gets its own table back, not that error; the
    same ref of its own run stands for its own error (as designed)."""
    host = Host([refuse], on_output=lambda line: None)
    ref = host.run_source("local ok, e = pcall(tools.refuse, {n = 1})\nreturn e.ref",
                          "lua", "a.lua")
    assert type(ref) is int and 0 <= ref < 2**53
    forged = ("error({{ref = {ref}, category = 'tool', kind = 'execution_failed',\n"
              "       message = 'forged', fields = {{tool_name = 'refuse', reason = 'x'}}}})")
    with pytest.raises(SpellError) as caught:
        host.run_source(forged.format(ref=ref), "lua", "b.lua")
    err = caught.value
    assert err.code == "tool/execution_failed" and "forged" in err.message
    assert not [f for e in err.chain() for f in e.frames if f.function == "refuse"]
    assert "_envelope_ref" not in err.context.metadata
    own = "local ok, e = pcall(tools.refuse, {n = 2})\n" + forged.format(ref="e.ref")
    with pytest.raises(SpellError) as caught:
        host.run_source(own, "lua", "c.lua")
    assert caught.value.message.endswith("refused 2")


# -- a cancel arriving while a fused tool runs ----------------------------------------------


def test_a_cancel_during_a_fused_call_ends_the_run_as_through_the_pipeline(
        language: str) -> None:
    """The run is cancelled while a plain tool runs (the tool asks for it, as another
    thread would): the tool's result still reaches the script, the next call raises the
    cancel's error, and the run ends with it, on both paths."""
    import anyio

    from bridge import AsyncExecutionError

    holder: dict[str, Any] = {}

    @tool
    def cancel_me(n: int) -> int:
        """Cancels its run on its second call, then answers."""
        if n == 2:
            holder["run"].cancel(AsyncExecutionError.TaskCancelled(
                task_id="t", cancellation_source="test", reason="cancelled mid-call"))
        return n

    source = pick(language,
                  "local got = {}\nfor i = 1, 4 do\n"
                  "  local ok, v = pcall(tools.cancel_me, {n = i})\n"
                  "  got[#got + 1] = ok and v or v.code\nend\nreturn got\n",
                  "async function main() {\n  const got = [];\n"
                  "  for (let i = 1; i <= 4; i++) {\n"
                  "    try { got.push(await tools.cancel_me({n: i})); }\n"
                  "    catch (e) { got.push(e.code); }\n  }\n  return got;\n}\n")
    seen = []
    for layers in ([], [passthrough]):
        host = Host([cancel_me], on_output=lambda line: None, layers=layers)
        run = holder["run"] = host.new_run_source(source, language, "cancel")
        try:
            outcome: Any = repr(anyio.run(run.execute))
        except SpellError as err:
            outcome = (err.code, [e.code for e in err.chain()])
        seen.append(outcome)
    assert seen[0] == seen[1]
    assert seen[0][0] == "async_execution/task_cancelled", seen


# -- lazy frames: a reader on another thread and the boundary's path ------------------------


def test_frames_read_late_on_another_thread_never_undo_frames_set_meanwhile() -> None:
    """A wrapped tool error reads its exception's frames when first asked. An observer
    (the hooks' thread sees a call's error while the run goes on) may be reading them
    when the run's boundary sets the error's path: the path set must stay, not be
    replaced by the frames the reader made from the traceback."""
    import sys
    import threading
    import time

    from bridge.frames import Frame

    old_interval, old_limit = sys.getswitchinterval(), sys.getrecursionlimit()
    sys.setswitchinterval(1e-5)  # (the reader is interrupted while it reads)
    sys.setrecursionlimit(max(old_limit, 10_000))
    lost = 0
    try:
        for attempt in range(30):
            namespace: dict[str, Any] = {}
            exec(compile("def deep(n):\n    if n == 0:\n        raise ValueError('x')\n"
                         "    deep(n - 1)\n", f"<deep {attempt}>", "exec"), namespace)
            try:
                namespace["deep"](4000)  # a long traceback: a read that takes a while
            except ValueError as exc:
                err = ToolError.wrap(exc, tool_name="t")
            path = [Frame("host", "<tool call>", None, None, "t")]
            reading = threading.Event()

            def read(err: SpellError = err, reading: threading.Event = reading) -> None:
                reading.set()
                err.frames  # noqa: B018 - what an observer does

            reader = threading.Thread(target=read)
            reader.start()
            reading.wait()
            time.sleep(0.001)
            err.frames = path  # what the boundary does
            reader.join()
            lost += err.frames != path
    finally:
        sys.setswitchinterval(old_interval)
        sys.setrecursionlimit(old_limit)
    assert lost == 0, f"the path set was undone {lost} times of 30"


def test_names_of_tools_that_do_not_exist_are_not_kept_by_the_run() -> None:
    """A script calling thousands of made-up tool names kept a pipeline for each for the
    whole run (46,000 in 30 s, about 26 MB)."""
    from host import Host as _Host

    host = _Host()
    run = host.new_run_source(
        "for i = 1, 3000 do pcall(tools.call, 'made_up_' .. i, {}) end\nreturn 1\n", "lua")
    import anyio

    assert anyio.run(run.execute) == 1
    assert len(run._paths) == 0
