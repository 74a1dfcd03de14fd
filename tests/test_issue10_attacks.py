"""Attacks on the seams issue 10 made: error refs as data, the boundary's crossed-depth
record, the tool-call pipeline's layers, timed tools on pooled workers, the engine factory.

Each test is a defect a red-team pass found (or an attack that held and should keep
holding), with real engines in both languages where the attack exists in both.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import engines
from bridge import SpellError
from bridge.envelope import REF_KEY
from host import Host, tool
from tests.conftest import EXTENSION, pick


@tool
def fail() -> None:
    """Always fails, with nothing to hide."""
    raise ValueError("plain")


@tool
def secret() -> None:
    """Fails with something only the tools file that calls it should see."""
    raise ValueError("SECRET=hunter2")


def _no_ref_anywhere(err: SpellError) -> None:
    assert REF_KEY not in err.to_json()
    for one in err.chain():
        assert REF_KEY not in one.context.metadata


# -- refs as data ------------------------------------------------------------------------

LOAD_FAILS_WITH_REF = {
    "lua": ("error({category = 'tool', kind = 'execution_failed',"
            " fields = {tool_name = 'x', reason = 'y'}, ref = 12345})\n"),
    "javascript": ("const e = new ToolError({kind: 'execution_failed', tool_name: 'x',"
                   " reason: 'y'});\ne.ref = 12345;\nthrow e;\n"),
}


def test_a_tools_file_that_fails_to_load_with_a_ref_leaks_no_ref_key(
        language: str, tmp_path: Path) -> None:
    """A ref a tools file puts on the error it fails to load with is the host's private
    data: it must not show in the configuration/load_failed error or its JSON."""
    path = tmp_path / f"lib{EXTENSION[language]}"
    path.write_text(LOAD_FAILS_WITH_REF[language])
    with pytest.raises(SpellError) as info:
        Host(tools=[path])
    assert info.value.code == "configuration/load_failed"
    _no_ref_anywhere(info.value)


LIBRARY = {  # a tools file that hides the error of the tool it calls, and a rethrow helper
    "lua": ("local M = {}\n"
            "function M.hidden() pcall(tools.secret) return 'fine' end\n"
            "function M.rethrow(e) error(e) end\n"
            "return M\n"),
    "javascript": ("exports.hidden = async function () {\n"
                   "  try { await tools.secret() } catch (e) {}\n  return 'fine';\n}\n"
                   "exports.rethrow = function (e) {\n"
                   "  const err = new ToolError({kind: e.kind, ...e.fields}); err.ref = e.ref;\n"
                   "  throw err;\n}\n"),
}

# The script sees the refs of its own errors, made just before and after the one the
# tools file hid, and guesses the hidden one's ref between them.
GUESS_REF = {
    "lua": """
for i = 1, 3 do pcall(tools.fail) end
local _, before = pcall(tools.fail)
tools.hidden()
local _, after = pcall(tools.fail)
if math.abs(after.ref - before.ref) > 1 << 20 then return {before.ref, after.ref} end
for guess = math.min(before.ref, after.ref) - 4096, math.max(before.ref, after.ref) + 4096, 8 do
  local ok, e = pcall(tools.rethrow, {category = 'tool', kind = 'execution_failed',
                                     fields = {tool_name = 'x', reason = 'y'}, ref = guess})
  if type(e) == 'table' and tostring(e):find('SECRET') then return 'leaked' end
end
return {before.ref, after.ref}
""",
    "javascript": """
async function main() {
  for (let i = 0; i < 3; i++) { try { await tools.fail() } catch (e) {} }
  let before, after;
  try { await tools.fail() } catch (e) { before = e }
  await tools.hidden();
  try { await tools.fail() } catch (e) { after = e }
  if (Math.abs(after.ref - before.ref) > 2 ** 20) return [before.ref, after.ref];
  const lo = Math.min(before.ref, after.ref) - 4096, hi = Math.max(before.ref, after.ref) + 4096;
  for (let guess = lo; guess <= hi; guess += 8) {
    try {
      await tools.rethrow({kind: 'execution_failed', fields: {tool_name: 'x', reason: 'y'},
                           ref: guess});
    } catch (e) { if (String(e).includes('SECRET')) return 'leaked' }
  }
  return [before.ref, after.ref];
}
""",
}


def test_a_script_cannot_guess_the_ref_of_an_error_only_a_tools_file_saw(
        language: str, tmp_path: Path) -> None:
    """Refs were ``id(err)``: heap addresses, handed to the script and close together, so
    a script could guess the ref of an error a tools file caught and kept to itself, and
    get that error (its message, fields, frames and Python cause) by rethrowing the guess.
    A ref tells nothing about memory and cannot be guessed from the refs a script saw."""
    path = tmp_path / f"lib{EXTENSION[language]}"
    path.write_text(LIBRARY[language])
    host = Host(tools=[fail, secret, path])
    result = host.run_source(GUESS_REF[language], language)
    assert result != "leaked"
    before, after = result
    assert abs(after - before) > 1 << 20  # nothing like neighbouring addresses


# -- the boundary's record -----------------------------------------------------------------

SHARED: list[SpellError] = []


@tool
def shared_error() -> None:
    """Raises one error instance, the same at every call (a module-level constant)."""
    raise SHARED[0]


def test_an_error_instance_raised_again_in_a_second_run_gets_that_runs_path(
        language: str) -> None:
    """A tool raising one shared error instance in two runs of one host: the second run's
    error must point at the second run's script and call site, not keep the first's."""
    from bridge import ProviderError

    SHARED[:] = [ProviderError.RateLimited(provider="p", retry_after=1.0)]
    host = Host(tools=[shared_error])
    seen = []
    for n, name in enumerate(["first", "second"]):
        padding = pick(language, "local x = 1\n", "var x = 1;\n") * (3 * n)
        script = padding + pick(language, "tools.shared_error()",
                                "await tools.shared_error()")
        if language == "javascript":
            script = f"async function main() {{\n{script}\n}}"
        with pytest.raises(SpellError) as info:
            host.run_source(script, language, f"{name}{EXTENSION[language]}")
        err = info.value
        seen.append((err.context.correlation_id, [(f.file, f.line) for f in err.frames]))
    (first_id, _), (second_id, second_frames) = seen
    assert second_frames[0][0] == f"second{EXTENSION[language]}"
    assert [f for f in second_frames if f[0].startswith("first")] == []
    assert [f for f in second_frames if f[0] == "<tool call>"] == [("<tool call>", None)]
    assert second_id != first_id
    assert info.value.context.metadata["execution_path"][0].startswith(
        f"{language} second{EXTENSION[language]}")


INNER = Host(tools=[fail])


@tool
def nested() -> None:
    """Runs a script of its own (in a host of its own), which fails."""
    INNER.run_source("local y = 2\ntools.fail()", "lua", "inner.lua")


def test_an_error_out_of_a_run_inside_a_tool_keeps_both_paths(language: str) -> None:
    """A tool that runs a script of its own: the error crosses the inner run's boundary,
    then the outer one. Its path is the outer script's call site, then the inner run's
    (the outer frames were missing: the inner crossing's depth was taken for this run's)."""
    script = pick(language, "local x = 1\ntools.nested()",
                  "async function main() {\n  await tools.nested()\n}")
    with pytest.raises(SpellError) as info:
        Host(tools=[nested]).run_source(script, language, f"outer{EXTENSION[language]}")
    path = [(f.file, f.line) for f in info.value.frames if f.language != "python"]
    assert path == [(f"outer{EXTENSION[language]}", 2), ("<tool call>", None),
                    ("inner.lua", 2), ("<tool call>", None)]
    assert info.value.frames[-1].function == "fail"


# -- parameters kept in errors -------------------------------------------------------------


def test_a_failing_tool_called_with_a_non_finite_number_is_execution_failed() -> None:
    """Lua passes NaN and infinities in tool parameters; a tool that then fails is
    ``tool/execution_failed`` (its parameters kept as text), not ``bridge/invalid_error``
    about the error's own parameters field."""

    @tool
    def boom(x: float = 0) -> None:
        raise ValueError("boom")

    host = Host(tools=[boom])
    result = host.run_source("local ok, e = pcall(tools.boom, {x = 0/0})\n"
                             "return {e.category, e.kind}", "lua")
    assert result == ["tool", "execution_failed"]


def test_a_layer_that_puts_unfit_parameters_into_the_call_still_fails_as_a_tool_error(
        language: str) -> None:
    """A layer may change the call; an error out of it keeps its parameters as text when
    they are no JSON, instead of failing the whole run as runtime/internal_error."""

    def spoil(call, next):
        call.params = {"x": object()}
        raise ValueError("layer failed")

    host = Host(tools=[fail], layers=[spoil])
    script = pick(language, "local ok, e = pcall(tools.fail, {}) return {e.category, e.kind}",
                  "async function main() { try { await tools.fail({}) } catch (e) "
                  "{ return [e.category, e.kind] } }")
    assert host.run_source(script, language) == ["tool", "execution_failed"]


def test_refs_and_the_tools_file_helpers_keep_json_clean(language: str, tmp_path: Path) -> None:
    """An error rethrown through a tools file and out of the run: its JSON has no ref key."""
    path = tmp_path / f"lib{EXTENSION[language]}"
    path.write_text(LIBRARY[language])
    host = Host(tools=[fail, secret, path])
    script = pick(language, "local ok, e = pcall(tools.fail)\ntools.rethrow(e)",
                  "async function main() {\n  try { await tools.fail() } catch (e) "
                  "{ await tools.rethrow({kind: e.kind, fields: e.fields, ref: e.ref}) }\n}")
    with pytest.raises(SpellError) as info:
        host.run_source(script, language)
    _no_ref_anywhere(info.value)
    data = json.loads(info.value.to_json())
    assert (data["category"], data["kind"]) == ("tool", "execution_failed")


# -- the engine factory --------------------------------------------------------------------


def _raises(exc: BaseException):
    def factory(language, **kwargs):
        raise exc
    return factory


def _other_language(language, **kwargs):
    other = "javascript" if language == "lua" else "lua"
    return engines.make_engine(other, **kwargs)


class _ClosesBadly:
    """A factory whose engines fail to close (a bug in a custom engine)."""

    def __call__(self, language, **kwargs):
        engine = engines.make_engine(language, **kwargs)
        real_close = engine.close

        def close() -> None:
            real_close()
            raise RuntimeError("close failed")

        engine.close = close  # type: ignore[method-assign]
        return engine


BAD_FACTORIES = {
    "returns_none": lambda language, **kwargs: None,
    "returns_object": lambda language, **kwargs: object(),
    "raises_value_error": _raises(ValueError("no engine today")),
    "raises_system_exit": _raises(SystemExit(2)),
    "wrong_signature": lambda language: engines.make_engine(language),
    "other_language": _other_language,
}


@pytest.mark.parametrize("factory", BAD_FACTORIES.values(), ids=BAD_FACTORIES.keys())
def test_a_bad_engine_factory_is_a_configuration_error(language: str, factory, tmp_path: Path
                                                       ) -> None:
    """A factory that raises or returns no engine of the language: the run, and listing a
    tools file, fail with configuration/invalid_value naming the factory, never a raw
    AttributeError/TypeError/SystemExit out of Host.run."""
    with pytest.raises(SpellError) as info:
        Host(engine_factory=factory).run_source(
            pick(language, "return 1", "function main() { return 1 }"), language)
    assert info.value.code == "configuration/invalid_value"
    assert info.value.fields["key"] == "engine_factory"
    path = tmp_path / f"lib{EXTENSION[language]}"
    path.write_text(pick(language, "return {f = function() return 1 end}\n",
                         "exports.f = function() { return 1 }\n"))
    with pytest.raises(SpellError) as info:
        Host(tools=[path], engine_factory=factory)
    assert info.value.code == "configuration/invalid_value"


def test_a_bad_engine_factory_for_a_tools_file_is_an_error_the_script_can_catch(
        language: str, tmp_path: Path) -> None:
    """The run's engine is fine; the tools file's engine, made at its first call, is not:
    the script catches the configuration error at that call."""
    path = tmp_path / f"lib{EXTENSION[language]}"
    path.write_text(pick(language, "return {f = function() return 1 end}\n",
                         "exports.f = function() { return 1 }\n"))
    made: list[str] = []

    def factory(lang, **kwargs):
        made.append(lang)
        if len(made) > 2:  # the listing's engine, the run's: then the tools file's
            return None
        return engines.make_engine(lang, **kwargs)

    host = Host(tools=[path], engine_factory=factory)
    script = pick(language, "local ok, e = pcall(tools.f) return {e.category, e.kind}",
                  "async function main() { try { await tools.f() } catch (e) "
                  "{ return [e.category, e.kind] } }")
    assert host.run_source(script, language) == ["configuration", "invalid_value"]


def test_an_engine_that_fails_to_close_is_an_internal_error(language: str) -> None:
    with pytest.raises(SpellError) as info:
        Host(engine_factory=_ClosesBadly()).run_source(
            pick(language, "return 1", "function main() { return 1 }"), language)
    assert info.value.code == "runtime/internal_error"


# -- engine specs --------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["python", "host"])
def test_a_spec_cannot_take_the_hosts_languages_as_an_alias(alias: str) -> None:
    """``python`` and ``host`` name the host's own frames; as an alias of a script
    language, ``run_source(code, "python")`` would run the code in that engine."""
    from engines.base import EngineSpec

    spec = EngineSpec(name="lua_alias_test", display_name="Lua", aliases=(alias,),
                      extensions=(".luaalias",), engine="engines.lua:LuaEngine", exports="t")
    try:
        with pytest.raises(SpellError) as info:
            engines.register(spec)
        assert info.value.code == "configuration/invalid_value"
        assert engines.language_of(alias) is None
    finally:
        engines.unregister(spec.name)


# -- stopping a run while it waits ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["timed_sync", "async"])
def test_a_stop_request_ends_the_wait_for_a_tool_and_is_delivered(language: str,
                                                                   kind: str) -> None:
    """``run.cancel`` while the script waits for a timed sync tool (on a pooled worker)
    or an async one: the script gets the reason at once (it waited for the sync tool to
    return, however long), and the run's state says it was delivered."""
    import threading
    import time

    import anyio

    from bridge import AsyncExecutionError

    entered, release = threading.Event(), threading.Event()

    @tool(timeout=20)
    def blocking() -> int:
        entered.set()
        release.wait(20)
        return 1

    @tool
    async def waiting() -> int:
        entered.set()
        await anyio.sleep(20)
        return 1

    states: list[str] = []
    name = "blocking" if kind == "timed_sync" else "waiting"
    script = pick(language, f"local ok, e = pcall(tools.{name})\nprint(e.kind)\nreturn 1",
                  f"async function main() {{\n  try {{ await tools.{name}() }} catch (e) "
                  f"{{ console.log(e.kind) }}\n  return 1;\n}}")
    host = Host(tools=[blocking, waiting], timeout=30,
                on_output=lambda line: states.append(f"{line} {run.control.state}"))
    run = host.new_run_source(script, language)

    async def main() -> float:
        async def stop() -> None:
            await anyio.to_thread.run_sync(entered.wait, 10)
            run.cancel(AsyncExecutionError.TaskCancelled(task_id="t", reason="stop"))

        started = time.monotonic()
        async with anyio.create_task_group() as group:
            group.start_soon(stop)
            with pytest.raises(SpellError) as info:
                await run.execute()
        assert info.value.code == "async_execution/task_cancelled"
        return time.monotonic() - started

    try:
        took = anyio.run(main)
    finally:
        release.set()
    assert took < 5
    assert states == ["task_cancelled delivered"]
    assert run.control.state == "ended"


# -- layers --------------------------------------------------------------------------------


def test_a_layer_calling_a_tools_file_function_on_another_thread_is_refused(
        language: str, tmp_path: Path) -> None:
    """A layer that calls ``next`` on a thread of its own (a home-made timeout, a hedged
    retry) would drive the tools file's engine from two threads: eight at once crashed
    the process (quickjs) or mixed up the Lua engine's steps. It is a configuration error
    the script sees at that call; Python tools are unaffected."""
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / f"lib{EXTENSION[language]}"
    path.write_text(pick(language, "return {f = function(p) return p.n + 1 end}\n",
                         "exports.f = function f(p) { return p.n + 1 }\n"))
    pool = ThreadPoolExecutor(1)

    def elsewhere(call, next):
        return pool.submit(next, call).result()

    @tool
    def plus(n: int) -> int:
        """A Python tool: any thread will do."""
        return n + 1

    host = Host(tools=[path, plus], layers=[elsewhere])
    script = pick(language,
                  "local ok, e = pcall(tools.f, {n = 1})\n"
                  "return {e.category, e.kind, e.fields.key, tools.plus({n = 1})}",
                  "async function main() {\n  try { await tools.f({n: 1}) } catch (e) {\n"
                  "    return [e.category, e.kind, e.fields.key, await tools.plus({n: 1})]\n"
                  "  }\n}")
    try:
        assert host.run_source(script, language) == ["configuration", "invalid_value",
                                                      "layers", 2]
    finally:
        pool.shutdown()


@pytest.mark.parametrize("answer", [{1, 2}, object(), b"x", {"a": {1: 2}}],
                         ids=["set", "object", "bytes", "int_key"])
def test_a_layer_answering_with_data_a_script_cannot_hold_is_an_error_it_can_catch(
        language: str, answer) -> None:
    """A layer answering in the tool's place with a set, an object...: the script gets
    ``bridge/type_conversion`` at that call, as for a tool returning it (it was a reply the
    engine refused: script/cross_engine_communication, failing the whole run)."""
    host = Host(tools=[fail], layers=[lambda call, next: answer])
    script = pick(language, "local ok, e = pcall(tools.fail) return {e.category, e.kind}",
                  "async function main() { try { await tools.fail() } catch (e) "
                  "{ return [e.category, e.kind] } }")
    assert host.run_source(script, language) == ["bridge", "type_conversion"]


def test_a_layer_that_fails_to_set_up_for_a_tool_is_a_configuration_error(
        language: str) -> None:
    """A layer's ``applies(tool)`` (the pipeline's way to leave a layer out) raising: the
    script gets configuration/invalid_value at that call (it was runtime/internal_error,
    "lua engine failed", ending the run)."""

    class Broken:
        def applies(self, tool: object) -> bool:
            raise ValueError("applies broke")

        def __call__(self, call, next):
            return next(call)

    host = Host(tools=[fail], layers=[Broken()])
    script = pick(language, "local ok, e = pcall(tools.fail) return {e.category, e.kind}",
                  "async function main() { try { await tools.fail() } catch (e) "
                  "{ return [e.category, e.kind] } }")
    assert host.run_source(script, language) == ["configuration", "invalid_value"]
