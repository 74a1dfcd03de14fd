"""The bounds on data crossing between the engines and Python (bridge/data.py).

Size: what the host builds from a script's data is bounded by the run's memory limit,
however often the script shares one string (issue 9, items 5 and 6). Depth: one limit,
``bridge.data.MAX_DEPTH``, and one clean error at every entry point, in both languages
(item 7).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge import BridgeError, ConfigurationError, ResourceError, ScriptError, SpellError
from bridge.data import MAX_DEPTH, TooDeep, json_depth, read_json
from engines import Limits
from host import Host, tool
from tests.cli import polyspell
from tests.conftest import pick

ROOT = Path(__file__).resolve().parent.parent


@tool
def echo(x: object = None) -> object:
    """Hand the parameter back."""
    return x


@tool
def nest(levels: int) -> object:
    """A list nested ``levels`` deep (the outermost list is one level)."""
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


@tool
def many(n: int) -> list:
    """``n`` texts of 1 MiB each, each its own string (nothing counts them twice)."""
    return [chr(65 + i % 26) * 2**20 for i in range(n)]


@tool
def doubling(levels: int, records: bool = False) -> object:
    """One list (or record) held twice at each of ``levels`` levels: 2**levels places,
    small in Python."""
    value: object = {"k": 1, "s": "x"} if records else [1, "x"]
    for _ in range(levels):
        value = {"l": value, "r": value} if records else [value, value]
    return {"d": value, "also": [value]}


def _host(**options: object) -> Host:
    return Host([echo, nest, many, doubling], on_output=lambda line: None, **options)  # type: ignore[arg-type]


def _fails(language: str, lua: str, js: str, **options: object) -> SpellError:
    with pytest.raises(SpellError) as info:
        _host(**options).run_source(pick(language, lua, js), language)
    return info.value


def _nested(levels: int) -> list:
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


# Scripts that build a list nested N levels deep (N substituted), in `v`.
LUA_NEST = "local v = {} for i = 2, N do v = {v} end "
JS_NEST = "let v = []; for (let i = 2; i <= N; i++) v = [v]; "


def _nest(language: str, levels: int, then_lua: str, then_js: str) -> str:
    lua = LUA_NEST.replace("N", str(levels)) + then_lua
    js = "async function main() { " + JS_NEST.replace("N", str(levels)) + then_js + " }"
    return pick(language, lua, js)


# -- item 5 and 6: size ----------------------------------------------------------------

WATCH_MEMORY = """
import sys, time
from host import Host, tool

@tool
def echo(x: object = None) -> object:
    return x

def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
language, source = sys.argv[1], sys.argv[2]
host = Host([echo, sys.argv[3]] if len(sys.argv) > 3 else [echo], timeout=20, memory_mb=16,
            on_output=lambda line: None)
before = peak()
started = time.monotonic()
try:
    host.run_source(source, language)
    code = "ok"
except Exception as exc:
    code = getattr(exc, "code", type(exc).__name__)
print(code, peak() - before, round(time.monotonic() - started, 2))
"""

# One 1 MiB string referenced many times: held once by the engine, a copy per reference
# in Python (3 GB before the fix, in Lua; JS's JSON text is no better).
SHARED = {
    "result": ('local s = string.rep("x", 2^20) local t = {} '
               'for i = 1, 3000 do t[i] = s end return t',
               'function main() { const s = "x".repeat(1 << 20); const t = []; '
               'for (let i = 0; i < 300; i++) t.push(s); return t; }'),
    "parameters": ('local s = string.rep("x", 2^20) local t = {} '
                   'for i = 1, 3000 do t[i] = s end return tools.echo{x = t}',
                   'async function main() { const s = "x".repeat(1 << 20); const t = []; '
                   'for (let i = 0; i < 300; i++) t.push(s); return await tools.echo({x: t}); }'),
    "parameters_caught": ('local s = string.rep("x", 2^20) local t = {} for i = 1, 3000 do '
                          't[i] = s end local ok = pcall(tools.echo, {x = t}) return ok',
                          'async function main() { const s = "x".repeat(1 << 20); const t = [];'
                          ' for (let i = 0; i < 300; i++) t.push(s);'
                          ' try { await tools.echo({x: t}); } catch (e) {} return 1; }'),
    "nested_sharing": ('local s = string.rep("x", 2^16) local t = {} for i = 1, 64 do t[i] = s end '
                       'local u = {} for i = 1, 3000 do u[i] = t end return u',
                       'function main() { const s = "x".repeat(1 << 16); const t = [];'
                       ' for (let i = 0; i < 64; i++) t.push(s); const u = [];'
                       ' for (let i = 0; i < 3000; i++) u.push(t); return u; }'),
    "thrown": ('local s = string.rep("x", 2^20) local t = {} for i = 1, 900 do t[i] = s end '
               'error(t)',
               'const s = "x".repeat(1 << 20); const t = []; for (let i = 0; i < 300; i++) '
               't.push(s); throw t;'),
}


@pytest.mark.parametrize("case", list(SHARED))
def test_a_shared_string_cannot_make_the_host_grow_past_the_memory_limit(language, case):
    source = pick(language, *SHARED[case])
    out = subprocess.run([sys.executable, "-c", WATCH_MEMORY, language, source],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    code, grown_mb, seconds = out.stdout.split()
    if case == "thrown" and language == "javascript":
        # JS reports a thrown value's JSON only when it fits; else its text: no blow-up
        assert code == "script/javascript"
    else:
        assert code == "resource/memory_exhaustion", out.stdout + out.stderr
    assert int(grown_mb) < 150  # 16 MiB engine; a few copies of the limit at most
    assert float(seconds) < 15


def test_a_shared_string_in_a_tools_file_result_is_bounded_too(language, tmp_path):
    helpers = tmp_path / "helpers.lua"
    helpers.write_text('return {big = function() local s = string.rep("x", 2^20) local t = {} '
                       'for i = 1, 3000 do t[i] = s end return t end}\n')
    source = pick(language, "return tools.big()",
                  "async function main() { return await tools.big(); }")
    out = subprocess.run([sys.executable, "-c", WATCH_MEMORY, language, source, str(helpers)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    code, grown_mb, _ = out.stdout.split()
    assert code == "resource/memory_exhaustion", out.stdout + out.stderr
    assert int(grown_mb) < 150


def test_a_proxy_cannot_make_json_text_that_expands_in_python():
    # 2 million empty arrays from a proxy: 6 MB of text, about 170 MB of Python lists
    source = ("function main() { const e = []; return new Proxy([], {get(t, k) { return "
              "k === 'length' ? 2e6 : typeof k === 'string' && k.charCodeAt(0) <= 57 ? e "
              ": undefined; }}); }")
    out = subprocess.run([sys.executable, "-c", WATCH_MEMORY, "javascript", source],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    code, grown_mb, _ = out.stdout.split()
    assert code == "resource/memory_exhaustion", out.stdout + out.stderr
    assert int(grown_mb) < 100


def test_a_result_well_within_the_limit_still_crosses(language):
    result = _host(memory_mb=16).run_source(pick(
        language, 'local s = string.rep("x", 2^20) return {s, s, s, s}',
        'function main() { const s = "x".repeat(1 << 20); return [s, s, s, s]; }'), language)
    assert len(result) == 4 and all(len(item) == 2**20 for item in result)


def test_a_script_cannot_pass_its_own_error_off_as_running_out_of_memory():
    err = _fails("javascript", "", 'function main() { return {toJSON() { '
                 'const e = new Error("out of memory"); e.name = "InternalError"; throw e; '
                 '}}; }', memory_mb=16)
    assert err.code == "script/cross_engine_communication"
    assert "could not be read: InternalError: out of memory" in err.message


def test_converting_lua_data_stops_at_the_deadline():
    from engines.lua import LuaEngine, _OutOfTime

    engine = LuaEngine(limits=Limits(memory_mb=256))
    table = engine._lua.eval("(function() local t = {} for i = 1, 200000 do t[i] = 'item' .. i "
                             "end return t end)()")
    engine._deadline = time.monotonic() - 1
    with pytest.raises(_OutOfTime):
        engine._from_lua(table, "result")
    engine._deadline = time.monotonic() + 60
    assert len(engine._from_lua(table, "result")) == 200000


# -- item 7: depth ----------------------------------------------------------------------


@pytest.mark.parametrize("levels", [MAX_DEPTH, MAX_DEPTH + 1, 3000])
def test_a_deep_result(language, levels):
    source = _nest(language, levels, "return v", "return v;")
    if levels <= MAX_DEPTH:
        assert json_depth(json.dumps(_host().run_source(source, language))) == levels
        return
    with pytest.raises(ScriptError.CrossEngineCommunication,
                       match=f"levels deep|nested more than {MAX_DEPTH}"):
        _host().run_source(source, language)


@pytest.mark.parametrize("levels", [MAX_DEPTH, MAX_DEPTH + 1, 3000])
def test_deep_tool_parameters(language, levels):
    # the parameters object is the outermost level
    source = _nest(language, levels - 1, "return tools.echo{x = v}",
                   "return await tools.echo({x: v});")
    if levels <= MAX_DEPTH:
        assert json_depth(json.dumps(_host().run_source(source, language))) == levels - 1
        return
    err = _fails(language, source, source)
    assert err.code == "tool/invalid_parameters"
    assert f"nested more than {MAX_DEPTH} levels deep" in err.message


@pytest.mark.parametrize("levels", [MAX_DEPTH, MAX_DEPTH + 1, 3000])
def test_a_deep_tool_result(language, levels):
    source = pick(language, f"return tools.nest{{levels = {levels}}}",
                  f"async function main() {{ return await tools.nest({{levels: {levels}}}); }}")
    if levels <= MAX_DEPTH:
        assert json_depth(json.dumps(_host().run_source(source, language))) == levels
        return
    err = _fails(language, source, source)
    assert err.code == "script/cross_engine_communication"
    assert err.fields["from_engine"] == "python" and err.fields["to_engine"] == language
    assert f"nested more than {MAX_DEPTH} levels deep" in err.message


@pytest.mark.parametrize("levels", [MAX_DEPTH, MAX_DEPTH + 1, 5000])
def test_deep_args_given_to_host_run(language, levels):
    args = {"a": _nested(levels - 1)}
    source = pick(language, "return args.a ~= nil",
                  "function main(a) { return a.a !== undefined; }")
    if levels <= MAX_DEPTH:
        assert _host().run_source(source, language, args=args) is True
        return
    with pytest.raises(ConfigurationError.InvalidValue, match=f"nested more than {MAX_DEPTH}"):
        _host().run_source(source, language, args=args)


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 3000])
def test_a_deep_value_crossing_between_tools_files(language, tmp_path, levels):
    (tmp_path / "deep.lua").write_text(
        "return {deep = function() " + LUA_NEST.replace("N", str(levels)) + " return v end}\n")
    (tmp_path / "deep.js").write_text(
        "exports.deepjs = function () { " + JS_NEST.replace("N", str(levels)) + " return v; };\n")
    host = Host([tmp_path / "deep.lua", tmp_path / "deep.js"], on_output=lambda line: None)
    for name in ("deep", "deepjs"):
        source = pick(language, f"return tools.{name}()",
                      f"async function main() {{ return await tools.{name}(); }}")
        with pytest.raises(ScriptError.CrossEngineCommunication, match="levels deep"):
            host.run_source(source, language)


def test_a_deep_value_thrown_in_javascript_is_reported_not_a_recursion_error():
    err = _fails("javascript", "", JS_NEST.replace("N", "3000") + "throw v;")
    assert err.code == "script/javascript"


def test_a_tool_called_from_to_json_does_not_reset_the_depth_count():
    source = ("function main() { let v = []; for (let i = 0; i < 3000; i++) { const inner = v; "
              "v = {toJSON() { tools.echo({}); return [inner]; }}; } return v; }")
    err = _fails("javascript", "", source)
    assert err.code == "script/cross_engine_communication"
    assert "levels deep" in err.message


def test_read_json_refuses_deep_text_before_parsing_it():
    assert read_json('{"a": "[[[[", "b": [[1]]}') == {"a": "[[[[", "b": [[1]]}
    assert json_depth('"\\"[[["') == 0
    text = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert json_depth(text) == MAX_DEPTH and read_json(text) is not None
    with pytest.raises(TooDeep):
        read_json("[" + text + "]")
    with pytest.raises(TooDeep):
        read_json(b"[" * 100000 + b"]" * 100000)


def test_error_json_with_a_deep_cause_chain_is_refused_cleanly():
    head = '{"category": "tool", "kind": "not_found", "fields": {"tool_name": "x"}, "cause": '
    leaf = '{"category": "tool", "kind": "not_found", "fields": {"tool_name": "x"}}'
    with pytest.raises(BridgeError.DeserializationFailed, match="levels deep"):
        SpellError.from_json(head * 3000 + leaf + "}" * 3000)
    # an error whose innermost cause holds data as deep as scripts may pass is still read
    deep = ScriptError.Lua(error="x", thrown=_nested(MAX_DEPTH))
    err = deep
    for _ in range(60):
        outer = ScriptError.Lua(error="y")
        outer.__cause__ = err
        err = outer
    assert SpellError.from_json(err.to_json()).code == "script/lua"


# -- the command line -------------------------------------------------------------------

def _polyspell(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return polyspell(*args, input=stdin)


def test_cli_deep_args_are_a_usage_error(tmp_path):
    script = tmp_path / "args.lua"
    script.write_text("return args.a ~= nil\n")
    deep = "[" * 5000 + "]" * 5000
    for argv in (["--args-json", '{"a": ' + deep + "}"], [f"a={deep}"],
                 ["--args-json", '{"a": ' + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "}"]):
        out = _polyspell("run", script, *argv, "--json")
        assert out.returncode == 2, out.stdout + out.stderr
        assert json.loads(out.stdout)["error"]["kind"] == "invalid_value"
        assert "levels deep" in out.stdout
    under = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    out = _polyspell("run", script, "--args-json", '{"a": ' + under + "}")
    assert (out.returncode, out.stdout.strip()) == (0, "true"), out.stderr


def test_cli_explain_of_a_deep_cause_chain_is_a_usage_error(tmp_path):
    head = '{"category": "tool", "kind": "not_found", "fields": {"tool_name": "x"}, "cause": '
    leaf = '{"category": "tool", "kind": "not_found", "fields": {"tool_name": "x"}}'
    saved = tmp_path / "error.json"
    saved.write_text(head * 3000 + leaf + "}" * 3000)
    out = _polyspell("explain", saved)
    assert out.returncode == 2
    assert "bridge/deserialization_failed" in out.stderr and "Traceback" not in out.stderr
    out = _polyspell("explain", "-", stdin=json.dumps({"ok": False, "error": json.loads(
        head * 3 + leaf + "}" * 3)}))
    assert out.returncode == 0, out.stderr


def test_cli_plan_with_deeply_nested_args_is_a_usage_error(tmp_path):
    plan = tmp_path / "deep.toml"
    plan.write_text('[plan]\nname = "deep"\n[[task]]\nid = "a"\nscript = "a.lua"\n'
                    f'args = {{ v = {"[" * 3000}{"]" * 3000} }}\n')
    out = _polyspell("plan", plan)
    assert out.returncode == 2
    assert "configuration/invalid_plan" in out.stderr and "Traceback" not in out.stderr


def test_memory_errors_name_the_limit():
    err = _fails("lua", 'local s = string.rep("x", 2^20) local t = {} for i = 1, 3000 do '
                 't[i] = s end return t', "", memory_mb=16)
    assert isinstance(err, ResourceError.MemoryExhaustion)
    assert "16 MiB" in err.message


def test_a_tool_result_the_script_cannot_hold_is_a_memory_error(language):
    # 20 MiB of text: past the limit as the engine builds it (in JS, quickjs' JSON parser,
    # out of memory, throws null: it cannot even make its own error; the host calls that
    # what it is, not a script's error "null"), and the run fails: no script can go on
    # with a half-built value
    err = _fails(language, "local ok = pcall(tools.many, {n = 20}) return ok",
                 "async function main() { try { await tools.many({n: 20}); } "
                 "catch (e) { return String(e); } }", memory_mb=16)
    assert isinstance(err, ResourceError.MemoryExhaustion), err
    # one message, whichever engine refused it (engines.base.did_not_fit)
    assert err.message == (f"Memory exhausted in {language}: the tool's result did not fit "
                           f"in the 16 MiB of memory the script may use")
    # the same engine size still takes a result that fits
    assert _host(memory_mb=16).run_source(pick(
        language, "return #tools.many{n = 4}",
        "async function main() { return (await tools.many({n: 4})).length; }"),
        language) == 4



def test_a_result_holding_one_list_in_many_places_is_bounded_by_the_memory_limit(language):
    # copied for each place it is in (as JSON would carry it), the copies counted as made:
    # 2**40 places is a memory error the script can catch, not hours of copying
    for records in ("false", "true"):
        err = _host(memory_mb=16).run_source(pick(
            language, f"local ok, e = pcall(tools.doubling, {{levels = 40, records = {records}}})"
                      " return e.code",
            "async function main() { try { await tools.doubling({levels: 40, records: "
            f"{records}}}); }} catch (e) {{ return e.code; }} }}"), language)
        assert err == "resource/memory_exhaustion"
    # a few places: each a whole copy of its own, the same in both languages
    seen = _host(memory_mb=16).run_source(pick(
        language, "local t = tools.doubling{levels = 2} "
                  "return {t.d[1][2][2], t.also[1][2][1][1], rawequal(t.d, t.also[1])}",
        "async function main() { const t = await tools.doubling({levels: 2}); "
        "return [t.d[0][1][1], t.also[0][1][0][0], t.d === t.also[0]]; }"), language)
    assert seen == ["x", 1, False]


def _walked(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Spy on host.data's fast copy: the items of every list and dict it is handed (its
    own recursion goes through the module's name too)."""
    import host.data as data

    walked = [0]
    fast = data._plain_copy

    def counted(value, *args):  # type: ignore[no-untyped-def]
        walked[0] += len(value)
        return fast(value, *args)

    monkeypatch.setattr(data, "_plain_copy", counted)
    return walked


@pytest.mark.parametrize("leaf", [("a tuple",), 2**80, {1: "int key"}])
def test_copying_deep_data_with_one_odd_leaf_walks_it_a_few_times_not_once_a_level(
        monkeypatch: pytest.MonkeyPatch, leaf: object) -> None:
    """A tool's result nested 90 levels deep, each level holding a list of 1,000 ints
    beside the next, with something the fast copy leaves to the slow way at the bottom:
    each level's attempt used to walk everything below it again (90 levels x 90 x 1,000
    items, seconds for larger lists); now each list is walked a bounded number of times."""
    from host.data import to_script_data

    ints = list(range(1000))
    value: object = {"leaf": leaf}
    for _ in range(90):
        value = {"ints": ints, "next": value}
    walked = _walked(monkeypatch)
    try:
        copied = to_script_data(value, "lua", memory_mb=256)
    except SpellError:  # the huge int or the int key: refused, after the same walk
        pass
    else:
        for _ in range(90):
            assert copied["ints"] == ints and copied["ints"] is not ints  # type: ignore[index]
            copied = copied["next"]  # type: ignore[index]
        assert copied == {"leaf": ["a tuple"]}
    items = 90 * (1000 + 2) + 1  # every list's and dict's items, once
    assert walked[0] <= 4 * items, walked[0]  # (it was 47 times them)
