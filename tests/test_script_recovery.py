"""A script's own recovery, ``recovery.retry`` and ``recovery.fallback``, on the real engines:
the host decides on the real error and does the waiting (host/recovery/script.py)."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from bridge import ProviderError, SpellError
from host import Coordinator, Host, Plan, Task, tool
from host.history import MAX_EVENTS
from host.recovery.script import MAX_SESSIONS
from tests.conftest import EXTENSION, pick
from tests.loopback import run_outcome


def _flaky(failures: int, exc: type[Exception] = RuntimeError, name: str = "flaky"):
    """A tool that raises ``exc`` ``failures`` times, then answers; ``calls`` times each call."""
    calls: list[float] = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) <= failures:
            raise exc(f"failure {len(calls)}")
        return f"ok after {len(calls)}"

    return tool(flaky, name=name), calls


_run = run_outcome


FAST = 'backoff: "fixed", initial: 0.01, jitter: 0'


def _retry(language: str, opts: str, *, call: str = "tools.flaky({})") -> str:
    """A script returning recovery.retry of ``call`` (or, caught, the error's code)."""
    lua_opts = opts.replace(":", " =").replace("[", "{").replace("]", "}")
    return pick(
        language,
        f"local ok, r = pcall(recovery.retry, function() return {call} end, {{{lua_opts}}})\n"
        "if ok then return r end\n"
        "return r.category .. '/' .. r.kind",
        f"async function main() {{ try {{ return await recovery.retry(() => {call}, {{{opts}}});"
        " } catch (e) { return e.code; } }")


def test_retry_succeeds_on_the_third_attempt_of_a_flaky_tool(language):
    flaky, calls = _flaky(2, ConnectionResetError)  # network/connection: retryable
    host = Host([flaky])
    result, run = _run(host, _retry(language, f'attempts: 3, {FAST}'), language)
    assert result == "ok after 3"
    assert len(calls) == 3
    assert [(e["action"], e["tool"], e["attempt"], e["error"], e["delay"])
            for e in run.recovery] == [("retry", "flaky", 1, "network/connection", 0.01),
                                       ("retry", "flaky", 2, "network/connection", 0.01)]


def test_a_retry_after_the_error_was_given_is_a_floor(language):
    calls: list[float] = []

    @tool
    def limited() -> str:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise ProviderError.RateLimited(provider="api", retry_after=0.3)
        return "through"

    result, run = _run(Host([limited]), _retry(language, FAST, call="tools.limited({})"),
                       language)
    assert result == "through"
    assert [e["delay"] for e in run.recovery] == [0.3]
    assert calls[1] - calls[0] >= 0.3


def test_the_script_gets_what_its_function_returned_and_no_retry_on_success(language):
    flaky, _ = _flaky(0)
    source = pick(language,
                  "local a, b = recovery.retry(function() return 1, tools.flaky{} end)\n"
                  "return {a, b}",
                  "async function main() { return await recovery.retry(async () =>"
                  " [1, await tools.flaky({})]); }")
    result, run = _run(Host([flaky]), source, language)
    assert result == [1, "ok after 1"]
    assert run.recovery == []


def test_by_default_an_error_that_is_not_retryable_is_not_retried(language):
    flaky, calls = _flaky(2)  # RuntimeError: tool/execution_failed, not retryable
    result, run = _run(Host([flaky]), _retry(language, FAST), language)
    assert result == "tool/execution_failed"
    assert len(calls) == 1
    assert run.recovery == []


def test_on_codes_retries_it_and_except_never_does(language):
    flaky, calls = _flaky(2)
    host = Host([flaky])
    result, _ = _run(host, _retry(language, f'{FAST}, on: ["tool/execution_failed"]'), language)
    assert (result, len(calls)) == ("ok after 3", 3)
    calls.clear()
    result, _ = _run(host, _retry(language, f'{FAST}, on: ["tool"]'), language)  # a category
    assert (result, len(calls)) == ("ok after 3", 3)
    calls.clear()
    result, _ = _run(host, _retry(language, f'{FAST}, on: "any", except: ["tool"]'), language)
    assert (result, len(calls)) == ("tool/execution_failed", 1)
    calls.clear()
    result, _ = _run(host, _retry(language, f'{FAST}, on: ["network"]'), language)
    assert (result, len(calls)) == ("tool/execution_failed", 1)


def test_jitter_zero_delays_follow_the_schedule(language):
    flaky, calls = _flaky(3)
    opts = 'attempts: 4, backoff: "exponential", initial: 0.05, jitter: 0, on: "any"'
    result, run = _run(Host([flaky]), _retry(language, opts), language)
    assert result == "ok after 4"
    assert [e["delay"] for e in run.recovery] == [0.05, 0.1, 0.2]
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert all(gap >= delay for gap, delay in zip(gaps, [0.05, 0.1, 0.2], strict=True)), gaps


def test_a_forged_error_cannot_make_a_tool_error_retryable(language):
    """The script edits the tool's error (code, retryable, retry_after) and rethrows it: the
    host decides on its own original, which is not retryable and is not network/..."""
    flaky, calls = _flaky(5)
    forge = pick(
        language,
        "function()\n"
        "  local ok, e = pcall(tools.flaky, {})\n"
        "  if ok then return e end\n"
        "  e.category, e.kind, e.retryable, e.retry_after = 'network', 'timeout', true, 0\n"
        "  e.fields = {endpoint = 'x', duration = 1}\n"
        "  error(e)\n"
        "end",
        "async () => { try { return await tools.flaky({}); } catch (e) {"
        " e.category = 'network'; e.kind = 'timeout'; e.retryable = true; e.retry_after = 0;"
        " e.fields = {endpoint: 'x', duration: 1}; throw e; } }")
    source = pick(
        language,
        f"return recovery.retry({forge}, {{attempts = 5, on = {{'network'}}, initial = 0}})",
        f"async function main() {{ return await recovery.retry({forge},"
        " {attempts: 5, on: ['network'], initial: 0}); }")
    err, run = _run(Host([flaky]), source, language)
    assert isinstance(err, SpellError)
    assert len(calls) == 1
    assert err.code == "tool/execution_failed"  # the original, not the edited copy
    assert run.recovery == []


def test_a_script_made_error_is_not_retryable_on_its_own_word(language):
    """Without a ref it is the script's own: read as what it says for codes, but the default
    condition (retryable) does not retry it, whatever its class would say."""
    count = "local n = 0\n" if language == "lua" else "let n = 0;\n"
    raise_ = pick(language,
                  "function() n = n + 1 error(errors.NetworkError{kind = 'timeout',"
                  " endpoint = 'x', duration = 1}) end",
                  "() => { n++; throw new NetworkError({kind: 'timeout', endpoint: 'x',"
                  " duration: 1}); }")
    for opts, tries in (("", 1), ("on: ['network'], initial: 0", 3)):
        lua_opts = opts.replace(":", " =").replace("[", "{").replace("]", "}")
        source = pick(
            language,
            f"{count}local ok, e = pcall(recovery.retry, {raise_}, {{{lua_opts}}})\n"
            "return {n, e.category .. '/' .. e.kind}",
            f"{count}async function main() {{ try {{ await recovery.retry({raise_}, {{{opts}}}); }}"
            " catch (e) { return [n, e.code]; } }")
        result, _ = _run(Host(), source, language)
        assert result == [tries, "network/timeout"], opts


def test_fallback_tries_each_function_in_order_until_one_works(language):
    order: list[str] = []

    @tool
    def service(name: str) -> str:
        order.append(name)
        if name != "c":
            raise ProviderError.Unavailable(provider=name, reason="down")
        return f"from {name}"

    source = pick(
        language,
        "return recovery.fallback({function() return tools.service{name = 'a'} end,"
        " function() return tools.service{name = 'b'} end,"
        " function() return tools.service{name = 'c'} end,"
        " function() return tools.service{name = 'd'} end})",
        "async function main() { return await recovery.fallback(["
        "() => tools.service({name: 'a'}), () => tools.service({name: 'b'}),"
        " () => tools.service({name: 'c'}), () => tools.service({name: 'd'})]); }")
    result, run = _run(Host([service]), source, language)
    assert result == "from c"
    assert order == ["a", "b", "c"]
    assert [(e["action"], e["tool"], e["attempt"], e["error"]) for e in run.recovery] == [
        ("fallback", "service", 1, "provider/unavailable"),
        ("fallback", "service", 2, "provider/unavailable")]


FALLING = {
    "lua": ("local r = recovery.fallback({\n"
            "  function() return tools.service{} end,\n"
            "  function() error('own failure') end,\n"
            "  function() return tools.missing{} end,\n"
            "})\n"
            "return r\n"),
    "javascript": ("async function main() {\n"
                   "  return await recovery.fallback([\n"
                   "    () => tools.service({}),\n"
                   "    () => { throw new Error('own failure'); },\n"
                   "    () => tools.missing({}),\n"
                   "  ]);\n"
                   "}\n"),
}


def test_all_fallbacks_failing_keeps_every_error_in_order(language):
    @tool
    def service() -> str:
        raise ProviderError.Unavailable(provider="svc", reason="down")

    err, run = _run(Host([service]), FALLING[language], language)
    assert isinstance(err, SpellError)
    assert err.code == "runtime/all_fallbacks_failed"
    assert err.fields["attempted_options"] == 3
    assert err.fields["operation"] == "recovery.fallback"
    codes = [f"{e['category']}/{e['kind']}" for e in err.fields["errors"]]
    assert codes == ["provider/unavailable", pick(language, "script/lua", "script/javascript"),
                     "tool/not_found"]
    assert "own failure" in err.fields["errors"][1]["message"]
    assert isinstance(err.__cause__, SpellError)
    assert err.__cause__.code == "provider/unavailable"  # the first, as its cause
    assert err.to_dict()["fields"]["errors"] == err.fields["errors"]  # JSON keeps them all
    # it points at the script's recovery.fallback call
    script = [f for f in err.frames if f.is_script]
    assert script and script[-1].line == (1 if language == "lua" else 2)
    assert [e["action"] for e in run.recovery] == ["fallback", "fallback"]


def test_all_fallbacks_failed_is_catchable_in_the_script(language):
    source = pick(
        language,
        "local ok, e = pcall(recovery.fallback, {function() error('x') end,"
        " function() error('y') end})\n"
        "return {e.kind, #e.fields.errors, e.fields.attempted_options}",
        "async function main() { try { await recovery.fallback([() => { throw new Error('x'); },"
        " () => { throw new Error('y'); }]); } catch (e) {"
        " return [e.kind, e.fields.errors.length, e.fields.attempted_options]; } }")
    result, _ = _run(Host(), source, language)
    assert result == ["all_fallbacks_failed", 2, 2]


def test_a_final_failure_points_at_the_script_line_of_the_tool_call(language):
    flaky, _ = _flaky(10)
    source = pick(language,
                  "local function fetch()\n"
                  "  local r = tools.flaky{}  -- not a tail call: the frame stays\n"
                  "  return r\n"
                  "end\n"
                  "local r = recovery.retry(fetch, {attempts = 2, on = 'any', initial = 0.01})\n"
                  "return r\n",
                  "async function fetch() {\n"
                  "  return await tools.flaky({});\n"
                  "}\n"
                  "async function main() {\n"
                  "  return await recovery.retry(fetch, {attempts: 2, on: 'any', initial: 0.01});\n"
                  "}\n")
    err, _ = _run(Host([flaky]), source, language)
    assert isinstance(err, SpellError)
    assert err.code == "tool/execution_failed"
    script = [f for f in err.frames if f.is_script]
    assert script[-1].line == 2  # the tool call inside the retried function
    assert [e["attempt"] for e in err.context.metadata["recovery"]] == [1]  # its history


@pytest.mark.parametrize("opts, key", [
    ("attempts: 0", "retry.attempts"),
    ('backoff: "sometimes"', "retry.backoff"),
    ("initial: -1", "retry.initial"),
    ('on: ["no/such_code"]', "retry.on"),
    ("jitter: 2", "retry.jitter"),
    ("sleep: 5", "retry.sleep"),
])
def test_bad_options_are_a_configuration_error_raised_at_the_call(language, opts, key):
    flaky, calls = _flaky(0)
    lua_opts = opts.replace(":", " =").replace("[", "{").replace("]", "}")
    source = pick(
        language,
        f"local ok, e = pcall(recovery.retry, function() return tools.flaky{{}} end,"
        f" {{{lua_opts}}})\nreturn {{e.category .. '/' .. e.kind, e.fields.key}}",
        f"async function main() {{ try {{ await recovery.retry(() => tools.flaky({{}}),"
        f" {{{opts}}}); }} catch (e) {{ return [e.code, e.fields.key]; }} }}")
    result, _ = _run(Host([flaky]), source, language)
    assert result == ["configuration/invalid_value", key]
    assert calls == []  # refused before the function ran


def test_options_that_cannot_cross_and_bad_arguments_are_refused(language):
    source = pick(
        language,
        "local out = {}\n"
        "local ok, e = pcall(recovery.retry, function() end, {on = function() end})\n"
        "out[1] = e.category .. '/' .. e.kind\n"
        "ok, e = pcall(recovery.retry, 42)\n"
        "out[2] = e\n"
        "ok, e = pcall(recovery.fallback, {})\n"
        "out[3] = e.category .. '/' .. e.kind\n"
        "local many = {}\n"
        "for i = 1, 33 do many[i] = function() end end\n"
        "ok, e = pcall(recovery.fallback, many)\n"
        "out[4] = e.category .. '/' .. e.kind\n"
        "return out",
        "async function main() { const out = [];\n"
        "  try { await recovery.retry(() => 1, {on: () => true}); }"
        " catch (e) { out.push(e.code); }\n"
        "  try { await recovery.retry(42); } catch (e) { out.push(String(e)); }\n"
        "  try { await recovery.fallback([]); } catch (e) { out.push(e.code); }\n"
        "  try { await recovery.fallback(Array(33).fill(() => 1)); } catch (e) {"
        " out.push(e.code); }\n"
        "  return out; }")
    result, _ = _run(Host(), source, language)
    assert result[0] == "configuration/invalid_value"
    assert "function expected" in result[1] or "must be a function" in result[1]
    assert result[2:] == ["configuration/invalid_value", "configuration/invalid_value"]


def test_a_retry_whose_delay_passes_the_deadline_gives_up_with_the_error(language):
    flaky, calls = _flaky(100)
    host = Host([flaky], timeout=1.0)
    opts = 'attempts: 50, backoff: "fixed", initial: 0.3, jitter: 0, on: "any"'
    started = time.monotonic()
    result, _ = _run(host, _retry(language, opts), language)
    took = time.monotonic() - started
    assert result == "tool/execution_failed"  # the error it caught, not the time limit
    assert took < 1.0  # no wait reaches past the run's deadline
    assert 2 <= len(calls) <= 4


def test_a_script_retrying_in_a_loop_stops_at_its_time_limit(language):
    source = pick(
        language,
        "while true do pcall(recovery.retry, function() error('x') end,"
        " {attempts = 100, backoff = 'fixed', initial = 0.2, jitter = 0, on = 'any'}) end",
        "async function main() { for (;;) { try { await recovery.retry(() => {"
        " throw new Error('x'); }, {attempts: 100, backoff: 'fixed', initial: 0.2, jitter: 0,"
        " on: 'any'}); } catch (e) {} } }")
    started = time.monotonic()
    err, _ = _run(Host(timeout=1.0), source, language)
    assert isinstance(err, SpellError)
    assert (err.code, err.fields["resource_type"]) == ("script/resource_exhaustion", "time")
    assert time.monotonic() - started < 2.0


def test_the_history_and_the_sessions_stay_bounded(language):
    per_call = 100
    loops = MAX_EVENTS // (per_call - 1) + 5
    source = pick(
        language,
        f"for i = 1, {loops} do pcall(recovery.retry, function() error('x') end,"
        f" {{attempts = {per_call}, initial = 0, on = 'any'}}) end\n"
        f"for i = 1, {MAX_SESSIONS + 50} do recovery.retry(function() return 1 end) end\n"
        "return 'done'",
        f"async function main() {{ for (let i = 0; i < {loops}; i++) {{ try {{"
        " await recovery.retry(() => { throw new Error('x'); },"
        f" {{attempts: {per_call}, initial: 0, on: 'any'}}); }} catch (e) {{}} }}\n"
        f"for (let i = 0; i < {MAX_SESSIONS + 50}; i++) await recovery.retry(() => 1);\n"
        " return 'done'; }")
    result, run = _run(Host(), source, language)
    assert result == "done"
    assert len(run.recovery) == MAX_EVENTS
    assert run.recovery.dropped == loops * (per_call - 1) - MAX_EVENTS
    assert len(run._script_recovery.sessions) <= MAX_SESSIONS


def test_no_tool_name_reaches_the_recovery_handler(language):
    """A tool call named like a recovery step is a tool call (tool/not_found)."""
    source = pick(language,
                  "local ok, e = pcall(tools.call, 'retry', {opts = {}})\n"
                  "local ok2, e2 = pcall(tools.call, 'failed', {session = 1})\n"
                  "return {e.kind, e2.kind}",
                  "async function main() { const out = [];"
                  " for (const name of ['retry', 'failed', '[\"retry\"]']) {"
                  " try { await tools.call(name, {opts: {}}); } catch (e) { out.push(e.kind); } }"
                  " return out; }")
    result, _ = _run(Host(), source, language)
    assert set(result) == {"not_found"}


# -- cancellation by the coordinator --------------------------------------------------------

IN_BACKOFF = threading.Event()


@tool
def down() -> str:
    """Always unavailable (retryable); tells the test it was called."""
    IN_BACKOFF.set()
    raise ProviderError.Unavailable(provider="down", reason="still down")


@tool
def fail_once_waiting() -> str:
    """Fails once the other task has called ``down`` (and so is in its backoff)."""
    IN_BACKOFF.wait(10)
    time.sleep(0.1)
    raise LookupError("the sibling fails")


def test_a_task_in_a_retry_backoff_is_cancelled_promptly_by_a_failing_sibling(language, tmp_path):
    IN_BACKOFF.clear()
    waiting = tmp_path / f"waiting{EXTENSION[language]}"
    waiting.write_text(pick(
        language,
        "on_cancel(function() print('cleaned up') end)\n"
        "return recovery.retry(function() return tools.down{} end,"
        " {attempts = 5, backoff = 'fixed', initial = 10, jitter = 0})",
        "signal.addEventListener('abort', () => console.log('cleaned up'));\n"
        "async function main() { return await recovery.retry(() => tools.down({}),"
        " {attempts: 5, backoff: 'fixed', initial: 10, jitter: 0}); }"))
    failing = tmp_path / f"failing{EXTENSION[language]}"
    failing.write_text(pick(language, "return tools.fail_once_waiting{}",
                            "async function main() { return await tools.fail_once_waiting({}); }"))
    lines: list[tuple[str, str]] = []
    coordinator = Coordinator([down, fail_once_waiting],
                              on_output=lambda task, line: lines.append((task, line)))
    started = time.monotonic()
    report = coordinator.run(Plan(strategy="propagate", tasks=[
        Task(id="waiting", script=waiting), Task(id="failing", script=failing)]))
    took = time.monotonic() - started
    assert took < 3  # not the 10 s backoff
    statuses = {t.id: t.status for t in report.tasks}
    assert statuses == {"waiting": "cancelled", "failing": "failed"}
    assert report.task("waiting").error["kind"] == "task_cancelled"
    assert ("waiting", "cleaned up") in lines  # its cleanup ran, in the script


TOOLS_FILE = {
    "lua": ("local M = {}\n"
            "function M.sturdy(params)\n"
            "  return recovery.retry(function() return tools.flaky{} end,\n"
            "                        {attempts = 3, on = 'any', initial = 0.01, jitter = 0})\n"
            "end\n"
            "return M\n"),
    "javascript": ("exports.sturdy = async (params) => recovery.retry(() => tools.flaky({}),\n"
                   "  {attempts: 3, on: 'any', initial: 0.01, jitter: 0});\n"),
}


@pytest.mark.parametrize("library", ["lua", "javascript"])
def test_a_tools_file_function_retries_too(language, library, tmp_path):
    """recovery.retry in a tools file's function called from a script of either language."""
    flaky, calls = _flaky(2)
    path = tmp_path / f"helpers{EXTENSION[library]}"
    path.write_text(TOOLS_FILE[library])
    source = pick(language, "local r = tools.sturdy{} return r",
                  "async function main() { return await tools.sturdy({}); }")
    result, run = _run(Host([flaky, path]), source, language)
    assert result == "ok after 3"
    assert len(calls) == 3
    assert [(e["tool"], e["attempt"]) for e in run.recovery] == [("flaky", 1), ("flaky", 2)]


def test_retries_asked_for_together_wait_together():
    """JS: two retries in one Promise.all wait once (their delays overlap), not one after
    the other."""
    first, first_calls = _flaky(1)
    second, second_calls = _flaky(1, name="second")
    source = ("async function main() { const o = {attempts: 2, backoff: 'fixed', initial: 0.5,"
              " jitter: 0, on: 'any'};\n"
              " return await Promise.all([recovery.retry(() => tools.flaky({}), o),"
              " recovery.retry(() => tools.second({}), o)]); }")
    started = time.monotonic()
    result, run = _run(Host([first, second]), source, "javascript")
    took = time.monotonic() - started
    assert result == ["ok after 2", "ok after 2"]
    assert [e["delay"] for e in run.recovery] == [0.5, 0.5]
    assert first_calls[1] - first_calls[0] >= 0.5 and second_calls[1] - second_calls[0] >= 0.5
    assert took < 0.9  # one wait of 0.5 s, not two
