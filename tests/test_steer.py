"""Tools that steer their run (host.steer): StopRun, AskHuman, ToolContext and its abort
signal, and the ``{ask = ...}`` fallback option, on the real engines, in both languages."""

from __future__ import annotations

import json
import os
import select
import subprocess
import threading
import time

import anyio
import anyio.to_thread
import pytest
from pydantic import BaseModel

from bridge import AsyncExecutionError, SpellError
from host import AskHuman, Coordinator, Host, Plan, StopRun, Task, ToolContext, tool
from tests.cli import POLYSPELL, ROOT, environment, polyspell
from tests.conftest import EXTENSION, pick

# -- StopRun ------------------------------------------------------------------------------


@tool
def finish(answer: str) -> dict:
    """Ends the run with the answer."""
    raise StopRun({"answer": answer, "sure": True})


@tool
async def finish_later(answer: str) -> dict:
    """Ends the run from an async tool."""
    await anyio.sleep(0)
    raise StopRun(answer)


@tool
def note(text: str) -> str:
    """Records a line."""
    NOTES.append(text)
    return text


NOTES: list[str] = []

STOP_THROUGH_PCALL = {
    "lua": """
on_cancel(function(e) print("on_cancel " .. e.kind) end)
local ok, err = pcall(tools.finish, {answer = "42"})
print("caught " .. tostring(ok) .. " " .. err.kind)
local ok2 = pcall(tools.note, {text = "after the stop"})
print("second call " .. tostring(ok2))
return "not the result"
""",
    "javascript": """
signal.addEventListener("abort", (e) => console.log(`abort ${signal.reason.kind}`));
async function main() {
  try {
    await tools.finish({answer: "42"});
  } catch (e) {
    console.log(`caught ${e.kind}`);
  } finally {
    console.log("finally");
  }
  try { await tools.note({text: "after the stop"}); }
  catch (e) { console.log("second call failed"); }
  return "not the result";
}
""",
}


def test_stop_run_ends_the_run_with_its_result_through_pcall_and_try(language):
    NOTES.clear()
    lines: list[str] = []
    host = Host([finish, note], on_output=lines.append)
    run = host.new_run_source(STOP_THROUGH_PCALL[language], language, "stop.src")
    cleaned: list[object] = []
    run.on_cleanup(cleaned.append)
    assert anyio.run(run.execute) == {"answer": "42", "sure": True}
    assert run.stopped is not None and run.stopped.tool == "finish"
    assert cleaned == [None]  # the cleanup saw a success
    assert NOTES == []  # no tool runs after the stop
    assert lines == pick(language,
                         ["on_cancel task_cancelled", "caught false task_cancelled"],
                         ["abort task_cancelled", "caught task_cancelled", "finally"])
    # the second tool call ended the script there: it never printed what came after


def test_stop_run_from_an_async_tool_and_a_script_that_swallows_and_returns(language):
    source = pick(language, "pcall(tools.finish_later, {answer = 'done'})\nreturn 1\n",
                  "async function main() {\n  try { await tools.finish_later({answer: 'done'}); }"
                  " catch (e) {}\n  return 1;\n}\n")
    assert Host([finish_later]).run_source(source, language) == "done"


def test_stop_run_reaches_through_a_tools_file(language, tmp_path):
    helper = tmp_path / f"helper{EXTENSION[language]}"
    helper.write_text(pick(language,
                           "return {wrap = function(p)\n"
                           "  local ok = pcall(tools.finish, {answer = p.answer})\n"
                           "  return 'helper went on'\nend}\n",
                           "exports.wrap = async (p) => {\n"
                           "  try { await tools.finish({answer: p.answer}); } catch (e) {}\n"
                           "  return 'helper went on';\n};\n"))
    source = pick(language, "local r = tools.wrap{answer = 'deep'}\nreturn r\n",
                  "async function main() { return await tools.wrap({answer: 'deep'}); }\n")
    assert Host([finish, helper]).run_source(source, language) == {"answer": "deep",
                                                                    "sure": True}


@tool
def finish_badly() -> None:
    """Stops with something that is no data."""
    raise StopRun({1, 2})


def test_a_stop_result_that_is_no_data_fails_the_call_clearly(language):
    source = pick(language, "local ok, e = pcall(tools.finish_badly)\nreturn e.code\n",
                  "async function main() {\n  try { await tools.finish_badly(); }"
                  " catch (e) { return e.code; }\n}\n")
    assert Host([finish_badly]).run_source(source, language) == "bridge/type_conversion"
    with pytest.raises(SpellError) as info:
        Host([finish_badly]).run_source(
            pick(language, "tools.finish_badly()",
                 "async function main() { await tools.finish_badly(); }"), language)
    assert "StopRun result is a set" in info.value.message


def test_stop_run_on_the_cli_prints_the_result_and_exits_0(language, tmp_path):
    tools = tmp_path / "steer_tools.py"
    tools.write_text("from host import StopRun, tool\n\n@tool\ndef finish(answer: str):\n"
                     "    \"\"\"Ends the run.\"\"\"\n    raise StopRun({'answer': answer})\n")
    script = tmp_path / f"stop{EXTENSION[language]}"
    script.write_text(STOP_THROUGH_PCALL[language].replace("tools.note", "tools.nothing"))
    done = polyspell("run", script, "--tools", tools)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout[done.stdout.index("{"):]) == {"answer": "42"}
    done = polyspell("run", script, "--tools", tools, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"ok": True, "result": {"answer": "42"},
                                                         "stopped_by": "finish"}


# -- AskHuman -----------------------------------------------------------------------------


@tool
def ask(question: str) -> str:
    """Asks the person."""
    raise AskHuman(question)


ASKING = {"lua": "return 'got ' .. tools.ask{question = 'Which city?'}\n",
          "javascript": "async function main() {\n"
                        "  return 'got ' + await tools.ask({question: 'Which city?'});\n}\n"}


def test_ask_human_is_answered_by_a_sync_function(language):
    asked: list[str] = []

    def answer(question: str) -> str:
        asked.append(question)
        return "Atlantis"

    assert Host([ask], on_human_input=answer).run_source(ASKING[language], language) == \
        "got Atlantis"
    assert asked == ["Which city?"]


def test_ask_human_is_answered_by_an_async_function(language):
    async def answer(question: str) -> str:
        await anyio.sleep(0.01)
        return question.upper()

    assert Host([ask], on_human_input=answer).run_source(ASKING[language], language) == \
        "got WHICH CITY?"


def test_with_no_one_to_ask_the_call_fails_clearly(language):
    source = pick(language, "local ok, e = pcall(tools.ask, {question = 'Which city?'})\n"
                            "return {e.code, e.fields.dependency}\n",
                  "async function main() {\n  try { await tools.ask({question: 'Which city?'}); }"
                  " catch (e) { return [e.code, e.fields.dependency]; }\n}\n")
    assert Host([ask]).run_source(source, language) == ["tool/dependency_error", "human input"]
    with pytest.raises(SpellError) as info:
        Host([ask]).run_source(ASKING[language], language)
    assert "no one to ask 'Which city?'" in info.value.message
    assert "on_human_input" in info.value.message


@pytest.mark.parametrize("answer, why", [(lambda q: 42, "answered a int, not a string"),
                                         (lambda q: 1 / 0, "on_human_input failed: ")])
def test_a_bad_answer_is_a_clear_error(language, answer, why):
    with pytest.raises(SpellError) as info:
        Host([ask], on_human_input=answer).run_source(ASKING[language], language)
    assert info.value.code == "tool/dependency_error"
    assert why in info.value.message


def test_a_person_who_does_not_answer_meets_the_run_deadline(language):
    gate = threading.Event()

    def never(question: str) -> str:
        gate.wait(5)
        return "too late"

    started = time.monotonic()
    with pytest.raises(SpellError) as info:
        Host([ask], timeout=0.3, on_human_input=never).run_source(ASKING[language], language)
    gate.set()
    assert info.value.code == "script/resource_exhaustion"
    assert time.monotonic() - started < 2


@tool
def ask_badly() -> str:
    """Asks something that is no question."""
    raise AskHuman({"not": "a string"})


def test_a_question_that_is_no_string_is_a_clear_error(language):
    with pytest.raises(SpellError) as info:
        Host([ask_badly], on_human_input=lambda q: "x").run_source(
            pick(language, "return tools.ask_badly()",
                 "async function main() { return await tools.ask_badly(); }"), language)
    assert info.value.code == "configuration/invalid_value"
    assert "the question of AskHuman is a string, not dict" in info.value.message


@pytest.mark.anyio
async def test_a_cancelled_run_stops_waiting_for_the_answer(language):
    asking = threading.Event()
    gate = threading.Event()

    def slow_person(question: str) -> str:
        asking.set()
        gate.wait(5)
        return "too late"

    host = Host([ask], on_human_input=slow_person)
    run = host.new_run_source(ASKING[language], language)
    cancelled = AsyncExecutionError.TaskCancelled(task_id="t", reason="no more waiting")

    async def cancel_when_asking() -> None:
        await anyio.to_thread.run_sync(asking.wait, 5)
        run.cancel(cancelled)

    started = time.monotonic()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(cancel_when_asking)
            with pytest.raises(SpellError) as info:
                await run.execute()
    gate.set()
    assert info.value is cancelled
    assert time.monotonic() - started < 2


def test_a_coordinator_answers_its_tasks(language, tmp_path):
    script = tmp_path / f"ask{EXTENSION[language]}"
    script.write_text(ASKING[language])
    coordinator = Coordinator([ask], on_human_input=lambda question: "Atlantis")
    report = coordinator.run([Task(id="a", script=str(script))])
    assert report.task("a").result == "got Atlantis"


def test_on_human_input_must_be_callable():
    for make in (Host, Coordinator):
        with pytest.raises(SpellError) as info:
            make([ask], on_human_input="yes")
        assert info.value.code == "configuration/invalid_value"
        assert info.value.fields["key"] == "on_human_input"


def _pty_run(args: list[str], answer: bytes) -> tuple[int, str]:
    """Run polyspell with stdin, stdout and stderr on a real pseudo-terminal; type
    ``answer`` once the question shows; its exit code and everything it wrote."""
    primary, secondary = os.openpty()
    proc = subprocess.Popen([*POLYSPELL, *args], stdin=secondary, stdout=secondary,
                            stderr=secondary, cwd=ROOT, env=environment(), close_fds=True)
    os.close(secondary)
    seen = b""
    ends = time.monotonic() + 30
    answered = False
    try:
        while time.monotonic() < ends:
            ready, _, _ = select.select([primary], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(primary, 4096)
                except OSError:  # the other end closed: the process is done
                    break
                if not chunk:
                    break
                seen += chunk
            if not answered and b"> " in seen:
                os.write(primary, answer)
                answered = True
            if proc.poll() is not None and not ready:
                break
        return proc.wait(10), seen.decode("utf-8", "replace")
    finally:
        os.close(primary)
        if proc.poll() is None:
            proc.kill()


def test_the_cli_asks_on_a_real_terminal(language, tmp_path):
    tools = tmp_path / "ask_tools.py"
    tools.write_text("from host import AskHuman, tool\n\n@tool\ndef ask(question: str):\n"
                     "    \"\"\"Asks.\"\"\"\n    raise AskHuman(question)\n")
    script = tmp_path / f"ask{EXTENSION[language]}"
    script.write_text(ASKING[language])
    code, seen = _pty_run(["run", str(script), "--tools", str(tools)], b"Atlantis\n")
    assert code == 0, seen
    assert "polyspell: Which city?" in seen
    assert '"got Atlantis"' in seen


def test_a_question_cannot_send_escape_sequences_to_the_terminal(language, tmp_path):
    tools = tmp_path / "ask_tools.py"
    tools.write_text("from host import AskHuman, tool\n\n@tool\ndef ask(question: str):\n"
                     "    \"\"\"Asks.\"\"\"\n    raise AskHuman(question)\n")
    script = tmp_path / f"ask{EXTENSION[language]}"
    script.write_text(pick(language, "return tools.ask{question = 'title\\27]0;pwned\\7?'}\n",
                           "async function main() {\n  return await tools.ask("
                           "{question: 'title\\x1b]0;pwned\\x07?'});\n}\n"))
    code, seen = _pty_run(["run", str(script), "--tools", str(tools)], b"fine\n")
    assert code == 0, seen
    assert "\x1b" not in seen and "\x07" not in seen
    assert "polyspell: title\\x1b]0;pwned\\x07?" in seen


def test_the_cli_without_a_terminal_has_no_one_to_ask(language, tmp_path):
    tools = tmp_path / "ask_tools.py"
    tools.write_text("from host import AskHuman, tool\n\n@tool\ndef ask(question: str):\n"
                     "    \"\"\"Asks.\"\"\"\n    raise AskHuman(question)\n")
    script = tmp_path / f"ask{EXTENSION[language]}"
    script.write_text(ASKING[language])
    done = polyspell("run", script, "--tools", tools, "--json", input="Atlantis\n")
    assert done.returncode != 0
    error = json.loads(done.stdout)["error"]
    assert error["category"] == "tool" and error["kind"] == "dependency_error"
    assert "no one to ask" in error["message"]


# -- ToolContext --------------------------------------------------------------------------

STOPPED = threading.Event()
STARTED = threading.Event()
CONTEXTS: list[ToolContext] = []


@tool
def crunch(steps: int, ctx: ToolContext) -> int:
    """A long sync tool that stops when its run does."""
    CONTEXTS.append(ctx)
    STARTED.set()
    done = 0
    while done < steps and not ctx.signal.aborted:
        time.sleep(0.005)
        done += 1
    STOPPED.set()
    ctx.signal.throw_if_aborted()
    return done


@tool(timeout=0.2)
def crunch_timed(ctx: ToolContext) -> int:
    """A sync tool with its own timeout that waits on its signal."""
    STARTED.set()
    ctx.signal.wait(10)  # ends at the call's deadline (0.2 s)
    STOPPED.set()
    ctx.signal.throw_if_aborted()  # the call's deadline: reported as its timeout
    return 0


def _reset() -> None:
    STOPPED.clear()
    STARTED.clear()
    CONTEXTS.clear()


def test_the_context_of_a_call(language):
    _reset()
    source = pick(language, "\n\nlocal n = tools.crunch{steps = 2}\nreturn n\n",
                  "\n\nasync function main() { return await tools.crunch({steps: 2}); }\n")
    host = Host([crunch])
    run = host.new_run_source(source, language, "ctx.src")
    assert anyio.run(run.execute) == 2
    (ctx,) = CONTEXTS
    assert ctx.tool == "crunch" and ctx.run_id == run.correlation_id
    assert tuple(ctx.caller) == (language, "ctx.src", 3)
    assert ctx.deadline == run.deadline and ctx.time_left > 0
    assert not ctx.signal.aborted and ctx.signal.reason is None
    run.cancel(SpellError(category="async_execution", kind="task_cancelled", task_id="t",
                          reason="late"))
    assert ctx.signal.aborted and ctx.signal.reason is run.cancelled


def test_a_sync_tool_stops_on_its_signal_when_the_run_times_out(language):
    _reset()
    source = pick(language, "return tools.crunch{steps = 100000}\n",
                  "async function main() { return await tools.crunch({steps: 100000}); }\n")
    started = time.monotonic()
    with pytest.raises(SpellError) as info:
        Host([crunch], timeout=0.3).run_source(source, language)
    assert info.value.code == "script/resource_exhaustion"
    assert STOPPED.wait(2)  # it stopped by itself, long before its 100000 steps
    assert time.monotonic() - started < 2


def test_a_timed_tool_stops_on_its_signal_at_its_own_timeout(language):
    _reset()
    source = pick(language, "local ok, e = pcall(tools.crunch_timed)\nreturn e.code\n",
                  "async function main() {\n  try { await tools.crunch_timed(); }"
                  " catch (e) { return e.code; }\n}\n")
    assert Host([crunch_timed]).run_source(source, language) == "tool/timeout"
    assert STOPPED.wait(2)


def test_a_sync_tool_stops_on_its_signal_when_a_coordinator_cancels_it(language, tmp_path):
    _reset()
    script = tmp_path / f"long{EXTENSION[language]}"
    script.write_text(pick(language,
                           "on_cancel(function(e) print('on_cancel ' .. e.kind) end)\n"
                           "return tools.crunch{steps = 100000}\n",
                           "signal.addEventListener('abort', () => console.log('aborted'));\n"
                           "async function main() {"
                           " return await tools.crunch({steps: 100000}); }\n"))
    lines: list[tuple[str, str]] = []
    coordinator = Coordinator([crunch], on_output=lambda task, line: lines.append(
        (task, line)))
    started = time.monotonic()
    report = coordinator.run([Task(id="long", script=str(script), timeout=0.3)])
    assert report.task("long").status == "timed_out"
    assert STOPPED.wait(2)
    assert time.monotonic() - started < 2


@tool
def fail_once_crunching() -> None:
    """Fails once crunch is running (the coordinator then cancels it)."""
    if not STARTED.wait(5):
        raise TimeoutError("crunch never started")
    raise LookupError("failed on purpose")


def test_a_sync_tool_stops_on_its_signal_when_a_failure_elsewhere_cancels_it(
        language, tmp_path):
    _reset()
    ext = EXTENSION[language]
    (tmp_path / f"long{ext}").write_text(pick(
        language, "return tools.crunch{steps = 100000}\n",
        "async function main() { return await tools.crunch({steps: 100000}); }\n"))
    (tmp_path / f"bad{ext}").write_text(pick(
        language, "return tools.fail_once_crunching()\n",
        "async function main() { return await tools.fail_once_crunching(); }\n"))
    plan = Plan(strategy="propagate", tasks=[
        Task(id="long", script=str(tmp_path / f"long{ext}"), timeout=60),
        Task(id="bad", script=str(tmp_path / f"bad{ext}"), timeout=60)])
    started = time.monotonic()
    report = Coordinator([crunch, fail_once_crunching]).run(plan)
    assert STOPPED.wait(2)
    assert time.monotonic() - started < 3  # not the 60 s of its timeout, nor 100000 steps
    assert report.task("long").status == "cancelled"
    (ctx,) = CONTEXTS
    reason = ctx.signal.reason
    assert isinstance(reason, SpellError) and reason.code == "async_execution/task_cancelled"


def test_the_context_is_not_part_of_the_schema(tmp_path):
    tools = tmp_path / "ctx_tools.py"
    tools.write_text("from host import ToolContext, tool\n\n@tool\n"
                     "def crunch(steps: int, ctx: ToolContext) -> int:\n"
                     "    \"\"\"Crunches.\"\"\"\n    return steps\n")
    done = polyspell("tools", "--tools", tools)
    assert done.returncode == 0, done.stderr
    assert "steps: integer (required)" in done.stdout and "ctx" not in done.stdout
    assert "ctx" not in json.dumps(crunch.__polyspell_tool__.schema())


class Steps(BaseModel):
    steps: int


@tool
def crunch_model(params: Steps, context: ToolContext | None = None) -> list:
    """A tool that takes a model, and the context (optional)."""
    assert context is not None
    return [params.steps, context.tool]


def test_a_tool_taking_a_model_gets_the_context_too(language):
    source = pick(language, "return tools.crunch_model{steps = 3}",
                  "async function main() { return await tools.crunch_model({steps: 3}); }")
    assert Host([crunch_model]).run_source(source, language) == [3, "crunch_model"]
    assert "context" not in json.dumps(crunch_model.__polyspell_tool__.schema())


def test_two_context_parameters_are_refused():
    def twice(a: ToolContext, b: ToolContext) -> None:
        """Two contexts."""

    with pytest.raises(SpellError) as info:
        tool(twice)
    assert info.value.code == "configuration/invalid_value"
    assert "declares 2 ToolContext parameters (a, b)" in info.value.message


def test_a_script_cannot_pass_the_context(language):
    source = pick(language, "local ok, e = pcall(tools.crunch, {steps = 1, ctx = 'forged'})\n"
                            "return e.code\n",
                  "async function main() {\n  try { await tools.crunch({steps: 1, ctx: 'x'}); }"
                  " catch (e) { return e.code; }\n}\n")
    assert Host([crunch]).run_source(source, language) == "tool/invalid_parameters"


# -- the {ask = ...} fallback -------------------------------------------------------------


@tool
def forecast(city: str) -> str:
    """Always down."""
    raise ConnectionError(f"weather service down for {city}")


ASK_FALLBACK = {"forecast": {"fallback": [
    {"ask": "{tool} failed ({error}); what is the forecast for {params}?"},
    {"value": "unknown"}]}}
FORECAST = {"lua": "return tools.forecast{city = 'Atlantis'}\n",
            "javascript": "async function main() {"
                          " return await tools.forecast({city: 'Atlantis'}); }\n"}


def test_the_ask_fallback_asks_the_person(language):
    asked: list[str] = []

    def answer(question: str) -> str:
        asked.append(question)
        return "sunny"

    host = Host([forecast], recovery=ASK_FALLBACK, on_human_input=answer)
    run = host.new_run_source(FORECAST[language], language)
    assert anyio.run(run.execute) == "sunny"
    assert asked == ['forecast failed (Connection failed: forecast - ConnectionError: weather '
                     'service down for Atlantis); what is the forecast for '
                     '{"city": "Atlantis"}?']
    assert [e["option"] for e in run.recovery] == ["ask"]


def test_with_no_one_to_ask_the_next_option_is_tried(language):
    host = Host([forecast], recovery=ASK_FALLBACK)
    run = host.new_run_source(FORECAST[language], language)
    assert anyio.run(run.execute) == "unknown"
    assert [e["option"] for e in run.recovery] == ["ask", "value"]


def test_when_asking_was_the_last_option_every_error_is_kept(language):
    host = Host([forecast], recovery={"forecast": {"fallback": [{"ask": "{tool}?"}]}})
    with pytest.raises(SpellError) as info:
        host.run_source(FORECAST[language], language)
    assert info.value.code == "runtime/all_fallbacks_failed"
    assert [e["kind"] for e in info.value.fields["errors"]] == ["connection",
                                                               "dependency_error"]


@pytest.mark.parametrize("template", ["{tool.__class__}", "{secret}", "{0}", "{params[0]}",
                                      "{tool", "{error:{x}}"])
def test_an_ask_template_names_only_the_call(template):
    with pytest.raises(SpellError) as info:
        Host([forecast], recovery={"forecast": {"fallback": [{"ask": template}]}})
    assert info.value.code == "configuration/invalid_value"


def test_an_ask_fallback_in_a_config_file(tmp_path, language):
    config = tmp_path / "polyspell.toml"
    config.write_text('[tools.forecast]\nfallback = [{ask = "{tool} is down: your guess?"}]\n')
    host = Host([forecast], config=config, on_human_input=lambda q: f"guess for {q}")
    assert host.run_source(FORECAST[language], language) == \
        "guess for forecast is down: your guess?"
