"""The coordinator on the real engines: scheduling, strategies, outcomes, root causes,
cancellation, timeouts, retries and state isolation, in Lua and in JavaScript."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import anyio
import pytest

from bridge import CrossEngineCoordinationError, ProviderError, SpellError
from host import Coordinator, Plan, PlanReport, Retry, Task, TaskReport, tool
from tests.conftest import EXTENSION, pick

# every test in both isolation modes: engines in threads, and in worker processes
pytestmark = pytest.mark.usefixtures("isolation")

CALLS: Counter[str] = Counter()
FAILURES: dict[str, SpellError] = {}
FAILED = threading.Event()
RUNNING = {"now": 0, "peak": 0}
LOCK = threading.Condition()
TICKED = threading.Event()  # some script has called tick: it is inside its loop
ENDED: set[str] = set()  # the tasks the coordinator has reported ended
ENDING = threading.Condition()


@tool
def fetch(source: str) -> str:
    """Text of a source; ``bad`` fails (tool/execution_failed, not retryable)."""
    CALLS[source] += 1
    if source == "bad":
        raise LookupError(f"no source {source!r}")
    return f"text of {source}"


@tool
async def tick(seconds: float = 0.01) -> int:
    """A suspension point: scripts looping on it can be cancelled at every call."""
    TICKED.set()
    await anyio.sleep(seconds)
    return 1


@tool
def flaky(key: str, failures: int) -> str:
    """Fails with a retryable provider error ``failures`` times per key, then works."""
    CALLS[key] += 1
    if CALLS[key] <= failures:
        raise ProviderError.Unavailable(provider=key, reason=f"try {CALLS[key]}")
    return f"{key} after {CALLS[key]} tries"


@tool
def lookup(key: str) -> str:
    """A shared negative cache: the first failure is kept, later calls raise from it."""
    if key in FAILURES:
        raise ProviderError.RequestFailed(provider="cache", reason=f"{key} failed before") \
            from FAILURES[key]
    FAILURES[key] = ProviderError.Unavailable(provider="origin", reason=f"{key} is down")
    FAILED.set()
    raise FAILURES[key]


@tool
def wait_for_failure() -> bool:
    """Block until some lookup has failed (orders two independent tasks)."""
    return FAILED.wait(5)


@tool
def after_a_tick() -> bool:
    """Block until some script has called tick (a failure then finds the loop running)."""
    if not TICKED.wait(10):
        raise TimeoutError("no script called tick")
    return True


@tool
def after(tasks: list[str]) -> bool:
    """Block until the coordinator has reported these tasks ended (orders the failures)."""
    with ENDING:
        if not ENDING.wait_for(lambda: ENDED >= set(tasks), timeout=10):
            raise TimeoutError(f"tasks {sorted(set(tasks) - ENDED)} did not end")
    return True


def _ended(report: TaskReport) -> None:
    """A listener: tells the ``after`` tool that a task ended."""
    with ENDING:
        ENDED.add(report.id)
        ENDING.notify_all()


@tool
def busy(seconds: float) -> int:
    """Count how many tasks are inside at once (the first waits up to 5 s for a second)."""
    with LOCK:
        RUNNING["now"] += 1
        RUNNING["peak"] = max(RUNNING["peak"], RUNNING["now"])
        LOCK.notify_all()
        LOCK.wait_for(lambda: RUNNING["peak"] >= 2, timeout=5)
    time.sleep(seconds)  # holds its place: one more, if let in, would raise the peak
    with LOCK:
        RUNNING["now"] -= 1
    return RUNNING["peak"]


BARRIER = threading.Barrier(2, timeout=5)


@tool
def meet() -> bool:
    """Returns only when two tasks are in here at the same time."""
    BARRIER.wait()
    return True


TOOLS = [fetch, tick, flaky, lookup, wait_for_failure, after_a_tick, after, busy, meet]


@pytest.fixture(autouse=True)
def fresh_tools():
    CALLS.clear()
    FAILURES.clear()
    FAILED.clear()
    TICKED.clear()
    ENDED.clear()
    RUNNING.update(now=0, peak=0)
    BARRIER.reset()


@pytest.fixture
def output() -> list[tuple[str, str]]:
    return []


@pytest.fixture
def coordinator(output) -> Coordinator:
    coordinator = Coordinator(TOOLS, on_output=lambda task, line: output.append((task, line)))
    coordinator.on_task_completed(_ended)
    return coordinator


class Scripts:
    """Writes scripts into a folder and makes tasks of them."""

    def __init__(self, folder: Path, language: str = "lua") -> None:
        self.folder = folder
        self.language = language

    def task(self, task_id: str, lua: str, js: str | None = None, *, language: str | None = None,
             **fields) -> Task:
        language = language or self.language
        source = lua if language == "lua" else js
        assert source is not None
        path = self.folder / f"{task_id}{EXTENSION[language]}"
        path.write_text(source)
        return Task(id=task_id, script=path, **fields)


@pytest.fixture
def scripts(tmp_path, language) -> Scripts:
    return Scripts(tmp_path, language)


def ok(scripts: Scripts, task_id: str, **fields) -> Task:
    return scripts.task(task_id, f'return "{task_id} ok"',
                        f'function main() {{ return "{task_id} ok"; }}', **fields)


def fail(scripts: Scripts, task_id: str, **fields) -> Task:
    return scripts.task(task_id, 'return tools.fetch{source = "bad"}',
                        'async function main() { return await tools.fetch({source: "bad"}); }',
                        **fields)


def looping(scripts: Scripts, task_id: str, **fields) -> Task:
    """Calls a tool every 10 ms for up to 5 s: cancellable at each call."""
    return scripts.task(
        task_id, "for i = 1, 500 do tools.tick{} end return 'finished'",
        "async function main() { for (let i = 0; i < 500; i++) await tools.tick({}); "
        "return 'finished'; }", **fields)


def statuses(report: PlanReport) -> dict[str, str]:
    return {t.id: t.status for t in report.tasks}


# -- running ----------------------------------------------------------------------------


def test_dependencies_results_arrive_in_args_inputs_across_languages(tmp_path, coordinator):
    scripts = Scripts(tmp_path)
    plan = [
        scripts.task("a", 'return {text = tools.fetch{source = args.source}}', language="lua",
                     args={"source": "a"}),
        scripts.task("b", None, "function main(args) { return args.inputs.a.text.length; }",
                     language="javascript", after=["a"]),
        scripts.task("c", "return args.inputs.a.text .. ' / ' .. args.inputs.b * 2",
                     language="lua", after=["a", "b"]),
    ]
    report = coordinator.run(plan)
    assert report.outcome == "succeeded"
    assert report.results == {"a": {"text": "text of a"}, "b": 9, "c": "text of a / 18"}
    assert [(t.engine, t.attempts) for t in report.tasks] == [
        ("lua", 1), ("javascript", 1), ("lua", 1)]
    assert report.root_causes == report.propagation == []


def test_independent_tasks_run_at_the_same_time(scripts, coordinator):
    # meet() returns only when both tasks are inside it at once
    tasks = [scripts.task(n, "return tools.meet{}", "function main() { return tools.meet({}); }")
             for n in ("a", "b")]
    report = coordinator.run(tasks)
    assert report.results == {"a": True, "b": True}


def test_max_concurrency_bounds_the_tasks_running_at_once(scripts, coordinator):
    tasks = [scripts.task(f"t{n}", "return tools.busy{seconds = 0.05}",
                          "function main() { return tools.busy({seconds: 0.05}); }")
             for n in range(6)]
    report = coordinator.run(tasks, max_concurrency=2)
    assert report.outcome == "succeeded"
    assert RUNNING["peak"] == 2


@pytest.mark.parametrize("writer,reader", [("lua", "lua"), ("javascript", "javascript"),
                                           ("lua", "javascript")])
def test_globals_of_one_task_are_never_seen_by_another(tmp_path, coordinator, writer, reader):
    scripts = Scripts(tmp_path)
    write = ("leaked = 'yes' return type(leaked)",
             "globalThis.leaked = 'yes'; function main() { return typeof leaked; }")
    read = ("return type(leaked)", "function main() { return typeof globalThis.leaked; }")
    plan = [scripts.task("w", *write, language=writer)]
    # readers after the writer (engines may be reused by then) and beside it
    plan += [scripts.task(f"r{n}", *read, language=reader, after=["w"] * (n % 2))
             for n in range(4)]
    report = coordinator.run(plan)
    nothing = "nil" if reader == "lua" else "undefined"
    assert report.results == {"w": "string", **{f"r{n}": nothing for n in range(4)}}


# -- strategies -------------------------------------------------------------------------


def test_propagate_cancels_everything_running_or_pending(scripts, coordinator):
    plan = Plan(strategy="propagate", tasks=[
        ok(scripts, "first"),
        fail(scripts, "bad", after=["first"]),
        looping(scripts, "loop"),
        ok(scripts, "later", after=["loop"]),
    ])
    started = time.monotonic()
    report = coordinator.run(plan)
    assert time.monotonic() - started < 2  # the loop was stopped, not waited for
    assert statuses(report) == {"first": "succeeded", "bad": "failed", "loop": "cancelled",
                                "later": "cancelled"}
    loop = report.task("loop")
    assert loop.error["kind"] == "task_cancelled"
    assert loop.error["fields"]["reason"] == "task 'bad' failed"
    assert loop.error["fields"]["cancellation_source"] == "propagate"
    assert (loop.caused_by, report.task("later").caused_by) == (["bad"], ["bad"])
    assert report.task("later").attempts == 0
    assert report.outcome == "cascading_failure"
    assert report.root_causes == ["bad"]
    assert sorted(report.propagation) == ["bad -> later", "bad -> loop"]


def test_collect_runs_everything_that_can_run_and_skips_the_rest(scripts, coordinator):
    plan = Plan(strategy="collect", tasks=[
        fail(scripts, "bad"),
        ok(scripts, "after_bad", after=["bad"]),
        ok(scripts, "after_after", after=["after_bad"]),
        ok(scripts, "free"),
        scripts.task("bad2", 'error("own failure")', 'throw new Error("own failure");'),
    ])
    report = coordinator.run(plan)
    assert statuses(report) == {"bad": "failed", "after_bad": "skipped",
                                "after_after": "skipped", "free": "succeeded",
                                "bad2": "failed"}
    assert report.task("after_bad").error["fields"]["reason"] == "dependency 'bad' failed"
    assert report.task("after_after").error["fields"]["reason"] == \
        "dependency 'after_bad' skipped"
    assert report.outcome == "cascading_failure"
    assert report.root_causes == ["bad", "bad2"]  # both failures reported together
    assert sorted(report.propagation) == ["after_bad -> after_after", "bad -> after_bad"]
    assert report.error("bad2").code == pick(scripts.language, "script/lua",
                                             "script/javascript")


def test_cancel_dependents_cancels_only_what_depends_on_the_failure(scripts, coordinator):
    plan = Plan(strategy="cancel_dependents", tasks=[
        fail(scripts, "bad"),
        ok(scripts, "child", after=["bad"]),
        ok(scripts, "grandchild", after=["child"]),
        scripts.task("independent", "for i = 1, 5 do tools.tick{} end return 'done'",
                     "async function main() { for (let i = 0; i < 5; i++) await tools.tick({});"
                     " return 'done'; }"),
    ])
    report = coordinator.run(plan)
    assert statuses(report) == {"bad": "failed", "child": "cancelled",
                                "grandchild": "cancelled", "independent": "succeeded"}
    assert report.task("grandchild").caused_by == ["child"]
    assert report.task("grandchild").error["fields"]["cancellation_source"] == \
        "cancel_dependents"
    assert report.outcome == "cascading_failure"
    assert report.root_causes == ["bad"]
    assert report.propagation == ["bad -> child", "child -> grandchild"]


def test_isolate_hands_the_failure_to_dependents_as_data(scripts, coordinator):
    degrade = scripts.task(
        "degrade",
        "local a = args.inputs.bad return {status = a.status, code = a.category .. '/' .. a.kind,"
        " tool = a.fields.tool_name, message = a.message}",
        "function main(args) { const a = args.inputs.bad; return {status: a.status, "
        "code: a.category + '/' + a.kind, tool: a.fields.tool_name, message: a.message}; }",
        after=["bad"])
    report = coordinator.run(Plan(strategy="isolate", tolerance=0.5,
                                  tasks=[fail(scripts, "bad"), degrade]))
    assert report.task("degrade").result == {
        "status": "failed", "code": "tool/execution_failed", "tool": "fetch",
        "message": "Tool execution failed: fetch - LookupError: no source 'bad'"}
    # the dependent degraded and succeeded: nothing was caused by the failure
    assert report.outcome == "partial_failure"
    assert report.decision == "continue_with_successful"
    assert report.propagation == []


# -- outcomes and root causes -----------------------------------------------------------


def test_all_failed_names_the_most_severe_root_cause(scripts, coordinator):
    plan = Plan(strategy="collect", tasks=[
        scripts.task("warns", 'error(errors.ProviderError{kind = "rate_limited", provider = "p"})',
                     'throw new ProviderError({kind: "rate_limited", provider: "p"});'),
        # the critical one fails last: severity wins over order
        scripts.task("corrupt", 'tools.after{tasks = {"warns", "plain"}} error(errors.AgentError{'
                     'kind = "state_corruption", agent_id = "x", description = "bad state"})',
                     'async function main() { await tools.after({tasks: ["warns", "plain"]}); '
                     'throw new '
                     'AgentError({kind: "state_corruption", agent_id: "x", '
                     'description: "bad state"}); }'),
        fail(scripts, "plain"),
        ok(scripts, "never", after=["plain"]),
    ])
    report = coordinator.run(plan)
    assert report.outcome == "all_failed"
    assert report.root_causes == ["warns", "corrupt", "plain"]
    assert report.representative_task == "corrupt"
    assert report.representative_error["kind"] == "state_corruption"
    assert report.representative_error["severity"] == "critical"


def test_all_failed_ties_go_to_the_first_to_fail(scripts, coordinator):
    report = coordinator.run(Plan(strategy="collect", tasks=[
        scripts.task("late", 'tools.after{tasks = {"early"}} return tools.fetch{source = "bad"}',
                     'async function main() { await tools.after({tasks: ["early"]}); '
                     'return await tools.fetch({source: "bad"}); }'),
        fail(scripts, "early"),
    ]))
    assert report.outcome == "all_failed"
    assert report.representative_task == "early"


@pytest.mark.parametrize("tolerance,decision", [(0.25, "continue_with_successful"),
                                                (0.2, "fail_entire_operation")])
def test_partial_failure_decides_by_tolerance(scripts, coordinator, tolerance, decision):
    plan = Plan(strategy="collect", tolerance=tolerance,
                tasks=[fail(scripts, "bad"), ok(scripts, "a"), ok(scripts, "b"),
                       ok(scripts, "c")])
    report = coordinator.run(plan)
    assert (report.outcome, report.decision) == ("partial_failure", decision)
    assert (report.failed_fraction, report.root_causes) == (0.25, ["bad"])
    assert report.representative_error is None


def test_a_root_cause_is_found_through_a_cause_chain(scripts, coordinator):
    # no dependency: "second" fails because a shared tool raises from "first"'s error
    plan = Plan(strategy="collect", tasks=[
        scripts.task("first", 'return tools.lookup{key = "k"}',
                     'function main() { return tools.lookup({key: "k"}); }'),
        scripts.task("second", 'tools.wait_for_failure{} return tools.lookup{key = "k"}',
                     'async function main() { await tools.wait_for_failure({}); '
                     'return await tools.lookup({key: "k"}); }'),
        ok(scripts, "fine"),
    ])
    report = coordinator.run(plan)
    assert statuses(report) == {"first": "failed", "second": "failed", "fine": "succeeded"}
    assert report.task("second").caused_by == ["first"]
    assert report.outcome == "cascading_failure"
    assert (report.root_causes, report.propagation) == (["first"], ["first -> second"])
    second = report.error("second")
    assert second.code == "provider/request_failed"
    assert second.cause is report.error("first")


def test_a_failure_is_caused_by_a_failed_transitive_dependency(scripts, coordinator):
    # isolate: "middle" degrades and succeeds, "last" fails; its root cause is "bad"
    plan = Plan(strategy="isolate", tasks=[
        fail(scripts, "bad"),
        ok(scripts, "middle", after=["bad"]),
        scripts.task("last", 'error("cannot work without bad")',
                     'throw new Error("cannot work without bad");', after=["middle"]),
    ])
    report = coordinator.run(plan)
    assert statuses(report) == {"bad": "failed", "middle": "succeeded", "last": "failed"}
    assert report.task("last").caused_by == ["bad"]
    assert report.outcome == "cascading_failure"
    assert (report.root_causes, report.propagation) == (["bad"], ["bad -> last"])


def test_the_report_is_json_and_errors_come_back_as_unified_errors(scripts, coordinator):
    report = coordinator.run(Plan(tasks=[fail(scripts, "bad"), ok(scripts, "child",
                                                                  after=["bad"])]))
    again = PlanReport.model_validate_json(report.model_dump_json())
    assert again.model_dump() == report.model_dump()
    err = again.error("bad")  # rebuilt from JSON
    assert err.code == "tool/execution_failed"
    assert err.cause.fields["exception_type"] == "LookupError"
    assert {"host", "python"} <= {f.language for f in err.frames}  # the tool call's path
    assert again.task("child").error["kind"] == "task_cancelled"


def test_raise_on_failure_raises_the_coordination_error_with_the_report(scripts, coordinator):
    plan = Plan(name="research", tasks=[fail(scripts, "bad"), ok(scripts, "child",
                                                                  after=["bad"]),
                                        ok(scripts, "fine")])
    with pytest.raises(CrossEngineCoordinationError) as info:
        coordinator.run(plan, raise_on_failure=True)
    err = info.value
    assert err.code == "cross_engine_coordination/cascading_failure"
    assert (err.fields["plan"], err.fields["root_causes"]) == ("research", ["bad"])
    assert err.fields["propagation"] == ["bad -> child"]
    assert PlanReport.model_validate(err.fields["report"]).outcome == "cascading_failure"
    assert err.cause.code == "tool/execution_failed"
    assert "Plan research failed in a cascade from ['bad']" in err.to_text()

    with pytest.raises(CrossEngineCoordinationError) as info:
        coordinator.run([fail(scripts, "x"), fail(scripts, "y")], raise_on_failure=True)
    assert info.value.kind == "all_failed"
    with pytest.raises(CrossEngineCoordinationError) as info:
        coordinator.run(Plan(tolerance=0.5, tasks=[fail(scripts, "x"), ok(scripts, "y")]),
                        raise_on_failure=True)
    assert (info.value.kind, info.value.fields["decision"]) == (
        "partial_failure", "continue_with_successful")
    assert coordinator.run([ok(scripts, "y")], raise_on_failure=True).outcome == "succeeded"


@pytest.mark.anyio
async def test_arun_under_asyncio_and_trio(tmp_path, coordinator):
    scripts = Scripts(tmp_path)
    plan = Plan(strategy="cancel_dependents", tasks=[
        scripts.task("a", "return 1", language="lua"),
        scripts.task("b", None, "function main(args) { return args.inputs.a + 1; }",
                     language="javascript", after=["a"]),
        fail(scripts, "bad"), ok(scripts, "child", after=["bad"]),
    ])
    report = await coordinator.arun(plan)
    assert report.results == {"a": 1, "b": 2}
    assert report.outcome == "cascading_failure"


@pytest.mark.anyio
async def test_a_caller_that_gives_up_stops_the_scripts_too(tmp_path, coordinator):
    scripts = Scripts(tmp_path)
    # left alone, the loop runs 25 s: far longer than the 10 s it is given to stop
    task = scripts.task("loop", 'for i = 1, 500 do tools.fetch{source = "x"} '
                        'tools.tick{seconds = 0.05} end', language="lua")
    name = f"polyspell run {task.script}"  # the script's engine thread
    async with anyio.create_task_group() as group:
        group.start_soon(coordinator.arun, [task])
        with anyio.fail_after(10):
            while CALLS["x"] < 2:  # the script is inside its loop
                await anyio.sleep(0.01)
        (thread,) = [t for t in threading.enumerate() if t.name == name]
        group.cancel_scope.cancel()  # the caller gives up
    calls = CALLS["x"]
    await anyio.to_thread.run_sync(thread.join, 10)
    assert not thread.is_alive()  # no script left running behind the caller's back
    assert CALLS["x"] - calls <= 1  # at most the call it was in when the caller gave up


# -- cancellation -----------------------------------------------------------------------

CLEANUP = (
    """
    on_cancel(function(e) print("on_cancel: " .. e.kind) end)
    local ok, err = pcall(function() for i = 1, 500 do tools.tick{} end end)
    print("pcall handler: " .. err.kind .. " " .. err.fields.task_id)
    error(err)
    """,
    """
    signal.addEventListener("abort", () => console.log("abort listener: " + signal.reason.kind));
    async function main() {
      try {
        for (let i = 0; i < 500; i++) await tools.tick({});
      } finally {
        console.log("finally: " + signal.aborted);
      }
    }
    """,
)


def test_cancellation_runs_the_scripts_cleanup(scripts, coordinator, output):
    plan = Plan(strategy="propagate", tasks=[
        scripts.task("loop", *CLEANUP),
        scripts.task("bad", 'tools.after_a_tick{} error("x")',
                     'async function main() { await tools.after_a_tick({}); '
                     'throw new Error("x"); }')])
    report = coordinator.run(plan)
    assert report.task("loop").status == "cancelled"
    lines = [line for task, line in output if task == "loop"]
    assert lines == pick(scripts.language,
                         ["on_cancel: task_cancelled", "pcall handler: task_cancelled loop"],
                         ["abort listener: task_cancelled", "finally: true"])


@pytest.mark.parametrize("then", ["loops", "returns"])
def test_a_script_that_swallows_its_cancellation_is_still_stopped(scripts, coordinator, then):
    swallow = scripts.task(
        "stubborn",
        "for i = 1, 500 do pcall(tools.tick, {}) end" if then == "loops"
        else "pcall(tools.tick, {seconds = 1}) return 'pretended'",
        "async function main() { for (let i = 0; i < 500; i++) { try { await tools.tick({}); }"
        " catch (e) {} } }" if then == "loops"
        else "async function main() { try { await tools.tick({seconds: 1}); } catch (e) {} "
             "return 'pretended'; }")
    started = time.monotonic()
    report = coordinator.run(Plan(strategy="propagate", tasks=[
        swallow, scripts.task("bad", 'tools.after_a_tick{} error("x")',
                              'async function main() { await tools.after_a_tick({}); '
                              'throw new Error("x"); }')]))
    assert time.monotonic() - started < 1.5
    assert report.task("stubborn").status == "cancelled"
    assert report.task("stubborn").error["kind"] == "task_cancelled"
    assert report.task("stubborn").result is None


def test_python_listeners_and_cleanups_per_task(scripts, output):
    events: list[tuple] = []
    coordinator = Coordinator(TOOLS, on_output=lambda task, line: None)
    coordinator.on_task_started(lambda task_id, attempt: events.append(("started", task_id)))
    coordinator.on_task_completed(lambda report: events.append(("completed", report.id,
                                                                report.status)))
    coordinator.on_cancellation_started(
        lambda task_id, err: events.append(("cancelling", task_id, err.kind)), task="loop")
    coordinator.on_cancel(lambda task_id, err: events.append(("cleanup", task_id)), task="loop")

    async def async_cleanup(task_id, err):
        await anyio.sleep(0)
        events.append(("async cleanup", task_id))

    coordinator.on_cancel(async_cleanup)
    coordinator.on_cancellation_completed(
        lambda task_id, err: events.append(("cancelled", task_id)))

    def broken(report):
        raise ValueError("listener bug")

    coordinator.on_task_completed(broken, task="bad")
    plan = Plan(strategy="propagate", tasks=[
        looping(scripts, "loop"),
        scripts.task("bad", 'tools.after_a_tick{} error("x")',
                     'async function main() { await tools.after_a_tick({}); '
                     'throw new Error("x"); }'),
        ok(scripts, "pending", after=["loop"]),
    ])
    report = coordinator.run(plan)
    assert statuses(report) == {"loop": "cancelled", "bad": "failed", "pending": "cancelled"}
    loop = [e for e in events if "loop" in e]
    assert loop == [("started", "loop"), ("cancelling", "loop", "task_cancelled"),
                    ("cleanup", "loop"), ("async cleanup", "loop"), ("cancelled", "loop"),
                    ("completed", "loop", "cancelled")]
    pending = [e for e in events if "pending" in e]  # never started: cleaned up at once
    assert pending == [("async cleanup", "pending"), ("cancelled", "pending"),
                       ("completed", "pending", "cancelled")]
    (problem,) = report.task("bad").callback_errors
    assert problem["fields"]["exception_type"] == "ValueError"


# -- timeouts ---------------------------------------------------------------------------


def test_a_task_timeout_stops_it_at_its_next_tool_call(scripts, coordinator, output):
    started = time.monotonic()
    report = coordinator.run([scripts.task("loop", *CLEANUP, timeout=0.3), ok(scripts, "ok")])
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 1.0
    loop = report.task("loop")
    assert loop.status == "timed_out"
    assert loop.error["kind"] == "task_timeout"
    assert loop.error["fields"]["duration"] == 0.3
    assert 0.3 <= loop.duration < 0.6
    lines = [line for task, line in output if task == "loop"]
    assert lines[0] == pick(scripts.language, "on_cancel: task_timeout",
                            "abort listener: task_timeout")
    assert report.outcome == "partial_failure"


def test_a_pure_cpu_loop_is_stopped_by_the_engine_limit(scripts, coordinator):
    spin = scripts.task("spin", "while true do end", "function main() { while (true) {} }",
                        timeout=0.2)
    started = time.monotonic()
    report = coordinator.run([spin])
    assert time.monotonic() - started < 2.5
    assert report.task("spin").status == "timed_out"
    err = report.error("spin")
    assert err.code == "async_execution/task_timeout"
    assert err.fields["duration"] == 0.2


def test_the_plan_timeout_bounds_every_task(scripts, coordinator):
    plan = Plan(timeout=0.4, tasks=[looping(scripts, "loop"), ok(scripts, "after",
                                                                 after=["loop"]),
                                    ok(scripts, "quick")])
    started = time.monotonic()
    report = coordinator.run(plan)
    assert time.monotonic() - started < 1.2
    assert statuses(report) == {"loop": "timed_out", "after": "cancelled", "quick": "succeeded"}
    assert report.task("loop").error["fields"]["duration"] <= 0.4


def test_default_timeouts_per_engine(tmp_path):
    scripts = Scripts(tmp_path)
    coordinator = Coordinator(TOOLS, engine_timeouts={"javascript": 0.25},
                              on_output=lambda task, line: None)
    plan = Plan(engine_timeouts={"lua": 0.05}, tasks=[
        scripts.task("js_loop", None, "async function main() { for (let i = 0; i < 500; i++)"
                     " await tools.tick({}); }", language="javascript"),
        scripts.task("lua_loop", "for i = 1, 500 do tools.tick{} end return 1",
                     language="lua"),
    ])
    report = coordinator.run(plan)
    assert statuses(report) == {"js_loop": "timed_out", "lua_loop": "timed_out"}
    assert report.task("js_loop").error["fields"]["duration"] == 0.25  # the coordinator's
    assert report.task("lua_loop").error["fields"]["duration"] == 0.05  # the plan's


# -- retries ----------------------------------------------------------------------------


def test_a_retryable_failure_is_retried_with_backoff(scripts, coordinator):
    task = scripts.task("flaky", 'return tools.flaky{key = "k", failures = 2}',
                        'function main() { return tools.flaky({key: "k", failures: 2}); }',
                        retry=Retry(attempts=3, backoff="exponential", initial=0.05, jitter=0))
    started = time.monotonic()
    report = coordinator.run([task])
    assert time.monotonic() - started >= 0.05 + 0.1  # the two delays
    assert report.task("flaky").status == "succeeded"
    assert report.task("flaky").attempts == 3
    assert report.results == {"flaky": "k after 3 tries"}


def test_retries_give_up_after_the_last_attempt(scripts, coordinator):
    task = scripts.task("flaky", 'return tools.flaky{key = "k", failures = 5}',
                        'function main() { return tools.flaky({key: "k", failures: 5}); }',
                        retry=Retry(attempts=2, initial=0))
    report = coordinator.run([task])
    assert (report.task("flaky").status, report.task("flaky").attempts) == ("failed", 2)
    assert report.error("flaky").fields["reason"] == "try 2"


@pytest.mark.parametrize("on,attempts", [("retryable", 1), ("any", 3)])
def test_only_retryable_errors_are_retried_unless_on_any(scripts, coordinator, on, attempts):
    report = coordinator.run([fail(scripts, "bad", retry=Retry(attempts=3, initial=0, on=on))])
    assert report.task("bad").attempts == attempts
    assert CALLS["bad"] == attempts


def test_a_timed_out_try_is_retried(scripts, coordinator):
    # the first try loops past its timeout; the second finds the key cached and returns
    task = scripts.task(
        "slow_once",
        "local first = tools.flaky{key = 'once', failures = 0} == 'once after 1 tries' "
        "if first then for i = 1, 500 do tools.tick{} end end return 'second try'",
        "async function main() { const first = (await tools.flaky({key: 'once', failures: 0}))"
        " === 'once after 1 tries'; if (first) for (let i = 0; i < 500; i++) "
        "await tools.tick({}); return 'second try'; }",
        timeout=0.2, retry=Retry(attempts=2, initial=0))
    report = coordinator.run([task])
    assert report.task("slow_once").status == "succeeded"
    assert (report.task("slow_once").attempts, report.results) == (2, {"slow_once":
                                                                       "second try"})


def test_a_cancelled_task_is_not_retried(scripts, coordinator):
    plan = Plan(strategy="propagate", tasks=[
        looping(scripts, "loop", retry=Retry(attempts=5, on="any", initial=0)),
        scripts.task("bad", 'tools.after_a_tick{} error("x")',
                     'async function main() { await tools.after_a_tick({}); '
                     'throw new Error("x"); }')])
    report = coordinator.run(plan)
    assert (report.task("loop").status, report.task("loop").attempts) == ("cancelled", 1)


def test_a_bad_plan_runs_nothing(scripts, coordinator):
    tasks = [fail(scripts, "a", after=["b"]), fail(scripts, "b", after=["a"])]
    with pytest.raises(SpellError) as info:
        coordinator.run(tasks)
    assert info.value.code == "configuration/invalid_plan"
    assert CALLS["bad"] == 0
