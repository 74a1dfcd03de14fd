"""Red team of issue 17's fifth pass: its Lua fast ways attacked as a hostile script (or a
careless tool author) would.

- SpellError.wrap's shortcut: a user's variant with another exception base (OSError, a
  mixin's own __new__ or __init__; the BUG found: see the first test), exceptions whose
  text or type names misbehave, fields named like the constructor's keywords: the same
  error (or refusal) as the constructor gives.
- The flat error envelope: odd envelopes (NaN, infinities, ints at each version's edges,
  keys named like the error table's own, str/int/float subclasses, a dict met twice or
  holding itself, a level that is its own cause, a tool author's own variant, the most
  values put_error takes, a trusted script's hook on the main thread): the script sees
  what the long way gives, and the sizes agree.
- registry._LOADED emptied while a call site is made: to-be-closed handlers and
  metamethods calling tools, the script's own string metatable, a site out of memory at
  each margin near the limit: always put back, the empty table stays empty, Lua's own
  messages still name the libraries; a trusted script's package.loaded still names.
- The remembered traceback lines: two real scripts whose tracebacks are the same text
  with other source lines, in two threads; lines at 511/512/513 characters; more lines
  than are kept; more file names than scans kept.
"""

from __future__ import annotations

import enum
import math
import threading
import time
from typing import Any

import pytest

import bridge.errors as errors
import bridge.lua as bridge_lua
import engines.lua as lua_engine
from bridge import SpellError
from bridge.hierarchy import ToolError
from bridge.lua import LuaScript
from engines.base import Failed, Finished, Limits, Suspended, ToolInfo, ToolReply
from tests.test_error_fast_paths import _state
from tests.test_lua_error_delivery import CAUGHT, both_ways, inner, level, same

pytestmark = pytest.mark.usefixtures("lua_version")


class _Text(str):
    pass


# -- SpellError.wrap's shortcut -------------------------------------------------------------

class _Tagging(Exception):
    """A mixin exception whose own __new__ marks what it makes."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Tagging:
        made = super().__new__(cls, *args, **kwargs)
        made.tagged = True
        return made


def _variant(name: str, *bases: type) -> type[SpellError]:
    """A tool variant a user defines with ``bases`` after ToolError (unregistered by
    :func:`_forget`)."""
    return type(name, (ToolError, *bases), {"__annotations__": {"tool_name": "str"}},
                kind=f"red_{name.lower()}", template="{tool_name} failed")


def _forget(variant: type[SpellError]) -> None:
    errors._VARIANTS.pop((variant.category, variant.kind), None)
    category = errors._CATEGORIES[variant.category]
    if hasattr(category, errors.camel(variant.kind)):
        delattr(category, errors.camel(variant.kind))


class _Initing(Exception):
    """A mixin exception whose own __init__ keeps what it was given."""

    def __init__(self, *args: Any) -> None:
        self.inited = args
        super().__init__(*args)


@pytest.mark.parametrize("base,shortcut", [(OSError, False), (_Tagging, False),
                                           (KeyError, False), (_Initing, True)],
                         ids=["oserror", "mixin-new", "keyerror", "mixin-init"])
def test_wrap_into_a_variant_with_another_exception_base_is_the_constructors(
        base: type, shortcut: bool) -> None:
    """A BUG found here: the shortcut made every variant with Exception.__new__, which
    refuses a class based on OSError (TypeError: "not safe") and skips a mixin's own
    __new__; the constructor (SpellError.__new__'s super()) does neither."""
    variant = _variant("Mixed" + base.__name__.strip("_"), base)
    try:
        err = ToolError.wrap(ValueError("v"), kind=variant.kind, tool_name="t")
        slow = variant(frames=err.frames, cause=err.__cause__, tool_name="t")
        assert type(err) is variant and _state(err) == _state(slow)
        for name in ("tagged", "inited"):
            assert getattr(err, name, None) == getattr(slow, name, None)
        assert getattr(err, "tagged", False) == (base is _Tagging)
        assert getattr(err, "inited", None) == (("t failed",) if base is _Initing else None)
        # (only where Exception.__new__ is what the constructor reaches: the shortcut)
        assert variant._exception_new == shortcut
        assert type(ToolError.wrap(ValueError("v"), tool_name="t"))._exception_new
    finally:
        _forget(variant)


class _LyingMeta(type):  # a class whose names are not text
    def __getattribute__(cls, name: str) -> Any:
        lie = {"__qualname__": 42, "__module__": _Text("mod")}.get(name)
        return super().__getattribute__(name) if lie is None else lie


_Weird = type("Weird", (Exception,), {})
_Weird.__qualname__ = "Outer.<locals>.W\u00e9ird" + "q" * 3000
_self_args = Exception()
_self_args.args = (_self_args,)
_HOSTILE = [type("StrNotText", (Exception,), {"__str__": lambda self: 42})("x"),
            type("ReprBroken", (Exception,), {"__repr__": lambda self: 1 / 0})("y"),
            type("StrSubclass", (Exception,), {"__str__": lambda self: _Text("sub")})(),
            _LyingMeta("Lying", (Exception,), {})("l"), _Weird("z"), _self_args,
            BaseException("base"), KeyboardInterrupt(), Exception(),
            Exception(None, 1, {"a": [1]})]


@pytest.mark.parametrize("exc", _HOSTILE, ids=range(len(_HOSTILE)))
def test_wrap_of_hostile_exceptions_is_what_the_constructor_makes(
        exc: BaseException, monkeypatch: pytest.MonkeyPatch) -> None:
    def made() -> list[Any]:
        out = []
        for make in (lambda: ToolError.wrap(exc, tool_name="t", parameters={"a": 1}),
                     lambda: SpellError.wrap(exc),
                     lambda: ToolError.wrap(exc, tool_name="t").cause):
            try:
                out.append(_state(make()))
            except Exception as refused:  # (compared both ways)
                out.append((type(refused), str(refused)))
        return out

    fast = made()
    view = SpellError.wrap(exc)  # a view's two fields (taken unvalidated): exact text
    assert [type(v) for v in view.fields.values()] == [str, str]
    # every field named like a keyword: the constructor's way, the view's too
    monkeypatch.setattr(errors, "_KEYWORDS", errors._KEYWORDS | {
        "tool_name", "exception_type", "exception_message", "reason"})
    assert made() == fast


@pytest.mark.parametrize("name", ["message", "severity", "kind", "category", "fields",
                                  "context", "retryable", "retry_after"])
def test_wrap_with_a_field_named_like_a_keyword_is_taken_or_refused_as_before(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    values = {"message": "m", "severity": "critical", "kind": "execution_failed",
              "category": "tool", "fields": {"x": 1}, "context": None, "retryable": True,
              "retry_after": 2.0}

    def made() -> Any:
        try:
            err = ToolError.wrap(ValueError("v"), tool_name="t", **{name: values[name]})
        except Exception as refused:  # (compared both ways)
            return type(refused), str(refused)
        return _state(err)

    fast = made()
    monkeypatch.setattr(errors, "_KEYWORDS", errors._KEYWORDS | {"tool_name", name})
    assert made() == fast


# -- the flat error envelope --------------------------------------------------------------

_P = {"a": 1}
_SELFISH = {"tool_name": "t"}
_SELFISH["me"] = _SELFISH
_LOOP = level()
_LOOP["cause"] = _LOOP

# name -> (envelope, whether it goes flat on Lua 5.4/5.5, on LuaJIT)
ODD: dict[str, tuple[Any, bool, bool]] = {
    "retry after NaN": (level(retryable=True, retry_after=math.nan), True, True),
    "retry after -inf": (level(retry_after=-math.inf), True, True),
    "ref at the 64-bit edges": (level(inner(ref=-(2**63)), ref=2**63 - 1), True, False),
    "ref past them": (level(ref=2**63), False, False),
    "ref at 2**53 and past": (level(inner(ref=2**53), ref=2**53 + 1), True, False),
    "retry after 2**63 - 1": (level(retry_after=2**63 - 1), True, False),
    "fields named as the table's keys": (level(fields={
        "cause": "c", "traceback": "t", "fields": "f", "code": "x", "__index": 1,
        "": "", "ref": -1, "message": None}), True, True),
    "a str subclass message": (level(message=_Text("sub")), False, False),
    "an IntEnum field": (level(fields={"n": enum.IntEnum("Count", "ONE").ONE}), False, False),
    "a float subclass in a parameter": (
        level(fields={"p": {"x": type("Real", (float,), {})(1.5)}}), False, False),
    "a bool as ref": (level(ref=True), False, False),
    "a float ref": (level(ref=1.0), False, False),
    "the parameters are the inner level's fields": (
        level(level(fields=_P), fields={"p": _P}), False, False),
    "eight dict fields": (level(fields={f"d{i}": {"k": "v" * i} for i in range(8)}),
                          True, True),
    "a list of NaN, inf and an int at the edge": (
        level(fields={"xs": [math.nan, math.inf, -(2**63)]}), True, False),
    "a fields dict holding itself": (level(fields=_SELFISH), False, False),
    "a level that is its own cause": (_LOOP, False, False),
    "an empty category and name": (level(category="", kind="", name=""), True, True),
}


@pytest.mark.parametrize("name", ODD)
def test_an_odd_envelope_reaches_the_script_as_the_long_way_gives_it(
        name: str, monkeypatch: pytest.MonkeyPatch, lua_version: str) -> None:
    envelope, flat, flat_on_jit = ODD[name]
    fast, slow, went_flat = both_ways(monkeypatch, CAUGHT, envelope)
    assert same(fast, slow)
    assert went_flat == (1 if (flat_on_jit if lua_version == "luajit" else flat) else 0)
    ints = lua_engine._INT53 if lua_version == "luajit" else lua_engine._INT64
    made = lua_engine._flat_envelope(envelope, ints)
    if made is not None:
        assert made[1] == lua_engine._envelope_size(envelope, ints)


def _tool_chain(depth: int, **fields: Any) -> dict:
    """The envelope of a tool author's own variant (its own fields: a dict, a list),
    ``depth`` levels deep, as the host hands a script its error."""
    from bridge.envelope import error_envelope

    variant = type("RedToolFailure", (ToolError,), {
        "__annotations__": {"tool_name": "str", "detail": "str", "data": "dict[str, Any]",
                            "items": "list[Any]"}, "__module__": __name__},
                   kind="red_tool_failure", template="{tool_name}: {detail}")
    try:
        err: BaseException | None = None
        for n in range(depth):
            err = variant(tool_name="t", detail=f"level {n}", cause=err, **fields)
        assert isinstance(err, SpellError)
        return error_envelope(err, ref=lambda one: id(one) % 2**40)
    finally:
        _forget(variant)


TOOL_CHAINS = {
    "flat data": (dict(data={"a": 1, "b": "x"}, items=[1, "two", None]), 3, True),
    "nested data (the long way)": (dict(data={"a": {"b": [1]}}, items=[]), 2, False),
    "five levels (the long way)": (dict(data={}, items=[]), 5, False),
    "a big int (the long way on LuaJIT)": (dict(data={"n": 2**60}, items=[2**60]), 1, True),
    "four levels of eight fields": (None, 4, True),
}


@pytest.mark.parametrize("name", TOOL_CHAINS)
def test_a_tool_authors_own_error_reaches_the_script_as_the_long_way_gives_it(
        name: str, monkeypatch: pytest.MonkeyPatch, lua_version: str) -> None:
    fields, depth, flat = TOOL_CHAINS[name]
    if fields is None:  # the most values put_error takes: 4 x (8 + 2 x 8), tables too
        envelope = None
        for _ in range(depth):
            envelope = level(envelope, fields={f"f{i}": {"k": i} for i in range(8)})
    else:
        envelope = _tool_chain(depth, **fields)
    if lua_version == "luajit" and "LuaJIT" in name:
        flat = False
    fast, slow, went_flat = both_ways(monkeypatch, CAUGHT, envelope)
    assert same(fast, slow) and went_flat == (1 if flat else 0)
    if lua_version == "luajit" and "LuaJIT" in name:  # refused as it crosses, both ways
        assert fast[0][0] == "script/cross_engine_communication"
        return
    code = "tool/execution_failed" if fields is None else "tool/red_tool_failure"
    assert isinstance(fast[0], list) and fast[0][2] == code  # the script caught it


HOOKED = """local main
for _, v in pairs(debug.getregistry()) do if type(v) == "thread" then main = v end end
assert(main, "no main thread")
local fired = 0
debug.sethook(main, function() fired = fired + 1 %s end, "c")
local ok, e = pcall(tools.t, {a = 1})
debug.sethook(main)
return {tostring(ok), type(e) == "table" and e.code or tostring(e), fired > 0}"""


@pytest.mark.parametrize("body", ["", "error('hook says no')", "tools.t{}"],
                         ids=["counting", "raising", "calling-a-tool"])
def test_a_trusted_scripts_hook_on_the_main_thread_sees_both_ways_alike(
        body: str, monkeypatch: pytest.MonkeyPatch, lua_version: str) -> None:
    # put_error (like put) is Lua code the host runs on the main thread: a trusted
    # script's hook there fires inside it, raises, or calls a tool (which cannot yield)
    def run() -> Any:
        engine = lua_engine.LuaEngine(sandbox="trusted")
        deadline = time.monotonic() + 10
        try:
            step = engine.start(HOOKED % body, "agent.lua", None, [ToolInfo("t", "")],
                                deadline)
            while isinstance(step, Suspended):
                request = step.requests[0]
                step = engine.resume([ToolReply(request.id, error=level(inner()))],
                                     deadline)
            if isinstance(step, Finished):
                return step.result
            assert isinstance(step, Failed)
            return step.error.code, str(step.error).split("\n")[0]
        finally:
            engine.close()

    fast = run()
    monkeypatch.setattr(lua_engine, "_flat_envelope", lambda envelope, ints: None)
    assert run() == fast
    if not body and lua_version != "luajit":  # (LuaJIT keeps no main thread there)
        assert fast == ["false", "tool/execution_failed", True]


# -- registry._LOADED emptied while a call site is made -------------------------------------

def _run(source: str, envelope: Any = None, *, memory_mb: int = 32) -> tuple[Any, list[int]]:
    """Run ``source``, answering each request with ``envelope`` (an error) or ``1``;
    after each step, registry._LOADED must be package.loaded again. The outcome, and
    each request's number of site frames."""
    engine = lua_engine.LuaEngine(limits=Limits(timeout=10, memory_mb=memory_mb))
    deadline = time.monotonic() + 10
    sites = []
    # the table is back, the empty one stays empty, and (Lua 5.4, 5.5) the swap is on
    back = """(function(site)
  local up = {}
  for i = 1, 64 do
    local name, value = debug.getupvalue(site, i)
    if not name then break end
    up[name] = value
  end
  return debug.getregistry()._LOADED == package.loaded and next(up.UNLOADED) == nil
    and (up.REGISTRY ~= nil) == (jit == nil)
end)"""
    try:
        step = engine.start(source, "agent.lua", None, [ToolInfo("t", "")], deadline)
        while True:
            if isinstance(step, Suspended):
                request = step.requests[0]
                sites.append(len(request.frames))  # (the site is made here)
            engine._set_max_memory(0)  # (the check's own chunk: not the script's memory)
            assert engine._lua.eval(back)(engine._lua_site)
            engine._set_max_memory(engine._memory_limit)
            if not isinstance(step, Suspended):
                break
            reply = ToolReply(request.id, error=envelope) if envelope is not None \
                else ToolReply(request.id, result=1)
            step = engine.resume([reply], deadline)
        if isinstance(step, Finished):
            return step.result, sites
        assert isinstance(step, Failed)
        return step.error.code, sites
    finally:
        engine.close()


NAMES = """local _, m1 = pcall(string.rep)
local _, m2 = pcall(math.floor, "x")
"""


def test_a_to_be_closed_handler_calling_tools_sees_the_libraries_named(
        lua_version: str) -> None:
    if lua_version == "luajit":
        pytest.skip("LuaJIT (Lua 5.1) has no to-be-closed variables")
    source = """local seen = {}
local function f()
  local guard <close> = setmetatable({}, {__close = function()
    local ok, e = pcall(tools.t, {})
    """ + NAMES + """    seen[#seen + 1] = m1 .. " | " .. m2
  end})
  local r = tools.t{}
  return r
end
for _ = 1, 2 do pcall(f) end
local co = coroutine.wrap(function() return setmetatable({}, {__index = function()
  return tools.t{}
end}).x end)
pcall(co)
""" + NAMES + """seen[#seen + 1] = m1 .. " | " .. m2
return seen"""
    result, sites = _run(source, level(inner()))
    assert len(sites) == 5 and all(sites)
    assert len(result) == 3
    for text in result:
        assert "'string.rep'" in text and "'math.floor'" in text


def test_the_scripts_string_metatable_runs_nothing_while_a_site_is_made() -> None:
    # strings' metatable is the script's for its run (getmetatable("") may be changed):
    # an __index, __concat or __len it puts there must never run in the prelude's site
    source = """local calls, lib = 0, string
local mt = getmetatable("")
mt.__index = function(s, k) calls = calls + 1 return lib[k] end
mt.__concat = function() calls = calls + 1000 return "" end
mt.__len = function() calls = calls + 1000000 return 0 end
local function f(n)
  local r = tools.t{n = n}
  return r
end
for i = 1, 3 do pcall(f, i) end
local _ = ("x"):rep(2)
return calls"""
    result, sites = _run(source, level(inner()))
    assert sites == [2, 2, 2] and result == 1  # only the script's own ("x"):rep


def test_a_trusted_scripts_own_package_loaded_still_names_its_sites(lua_version: str) -> None:
    if lua_version == "luajit":
        pytest.skip("LuaJIT's traceback looks for no such names")
    source = """package.loaded.mylib = {helper = function() local r = tools.t{} return r end}
local lib = package.loaded.mylib
local ok, e = pcall(function() return lib.helper() end)
return e.traceback"""
    engine = lua_engine.LuaEngine(sandbox="trusted")
    deadline = time.monotonic() + 10
    try:
        step = engine.start(source, "agent.lua", None, [ToolInfo("t", "")], deadline)
        assert isinstance(step, Suspended)
        request = step.requests[0]
        assert [f.function for f in request.frames][-1] == "mylib.helper"
        step = engine.resume([ToolReply(request.id, error=level())], deadline)
        assert isinstance(step, Finished) and "in function 'mylib.helper'" in step.result
    finally:
        engine.close()


def test_a_finalizer_cannot_run_while_the_table_is_emptied() -> None:
    # (the only script code a traceback's allocations could run: refused outright)
    code, _ = _run("setmetatable({}, {__gc = function() end})\nreturn 1")
    assert code == "security/script_safety_violation"


def test_a_site_out_of_memory_at_any_margin_puts_the_table_back(lua_version: str) -> None:
    # the script holds `hog` bytes, then waits in a deep call: the largest hog that
    # reaches the call is found, then each margin below it is tried: at some the site's
    # traceback does not fit (no frames), at others it does; the table is always back
    source = """local function deep(n)
  if n == 0 then
    local r = tools.t{}
    return r
  end
  local r = deep(n - 1)
  return r
end
local hog = string.rep("h", %d)
return {deep(40), #hog > 0}"""
    mb = 4

    def run(hog: int) -> bool | None:
        outcome, sites = _run(source % hog, memory_mb=mb)
        assert outcome in ("resource/memory_exhaustion", [1, True]), (hog, outcome)
        return (sites[0] > 0) if sites else None

    low, high = 0, mb * 2**20  # reaches the call / does not
    while high - low > 64:
        middle = (low + high) // 2
        low, high = (middle, high) if run(middle) is not None else (low, middle)
    outcomes = {run(hog) for hog in range(low - 6000, low + 1, 100)}
    if lua_version == "5.5":  # (where the attack is seen to reach a failing site)
        assert False in outcomes


# -- the remembered traceback lines -----------------------------------------------------

A = """local function alpha()
  error("from alpha")
end
alpha()"""
# the same traceback lines' text as A's (same lines, same names), other source lines
B = """local function alpha()
  local x = 1; error("from b")
end
alpha() -- b"""


@pytest.mark.parametrize("most", [3, None], ids=["emptied-often", "kept"])
def test_two_scripts_with_the_same_traceback_text_in_threads_get_their_own_sources(
        most: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if most is not None:
        monkeypatch.setattr(bridge_lua, "MAX_KNOWN_LINES", most)
    limit = bridge_lua.MAX_KNOWN_LINES
    wanted = {A: [("agent.lua", 4, "main chunk", "alpha()"),
                  ("agent.lua", 2, "alpha", 'error("from alpha")')],
              B: [("agent.lua", 4, "main chunk", "alpha() -- b"),
                  ("agent.lua", 2, "alpha", 'local x = 1; error("from b")')]}
    problems: list[Any] = []
    texts = []

    def work(first: str, second: str) -> None:
        try:
            for n in range(6):
                source = first if n % 2 else second
                engine = lua_engine.LuaEngine()
                try:
                    step = engine.start(source, "agent.lua", None, [],
                                        time.monotonic() + 10)
                finally:
                    engine.close()
                assert isinstance(step, Failed)
                texts.append((source, step.error.fields["stack_trace"]))
                got = [(f.file, f.line, f.function, f.source) for f in step.error.frames]
                if got != wanted[source]:
                    problems.append((source[-6:], got))
                assert len(bridge_lua._KNOWN_LINES) <= limit
        except Exception as exc:  # (reported below)
            problems.append(exc)

    threads = [threading.Thread(target=work, args=pair) for pair in ((A, B), (B, A))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert problems == []
    # (the attack: both scripts' tracebacks are the same text)
    assert len({text for _, text in texts}) == 1 and len({src for src, _ in texts}) == 2


def test_lines_at_the_remembered_length_edge_and_past_the_count_read_the_same() -> None:
    from tests.test_translation_fast_paths import general_frames

    source = "\n".join(f"call{n}()" for n in range(1, 60))
    edge = []
    for length in (bridge_lua.MAX_KNOWN_LINE - 1, bridge_lua.MAX_KNOWN_LINE,
                   bridge_lua.MAX_KNOWN_LINE + 1):
        head = "\tagent.lua:7: in function '"
        edge.append(head + "n" * (length - len(head) - 1) + "'")
        assert len(edge[-1]) == length
    text = "stack traceback:\n" + "\n".join(edge)
    for _ in range(2):  # the second time from what was remembered
        script = LuaScript("agent.lua", source)
        assert script.frames(text) == general_frames(script, text)
    assert edge[0] in bridge_lua._KNOWN_LINES and edge[1] in bridge_lua._KNOWN_LINES
    assert edge[2] not in bridge_lua._KNOWN_LINES
    # more distinct lines than are kept, in one traceback: bounded, and read the same
    many = "stack traceback:\n" + "\n".join(
        f"\tagent.lua:{n % 59 + 1}: in local 'f{n}'" for n in range(
            bridge_lua.MAX_KNOWN_LINES + 500))
    script = LuaScript("agent.lua", source)
    frames = script.frames(many)
    assert len(bridge_lua._KNOWN_LINES) <= bridge_lua.MAX_KNOWN_LINES
    assert frames == general_frames(script, many)
    assert frames[0].function == f"f{bridge_lua.MAX_KNOWN_LINES + 499}"


def test_more_file_names_than_scans_kept_read_the_same() -> None:
    # 300 file names > the 256 scans kept: a scan made again is another object, and the
    # lines a forgotten one read are read again, not taken as its
    from tests.test_translation_fast_paths import general_frames

    source = "a()\nb()\nc()"
    for _ in range(2):
        for n in range(300):
            name = f"f{n}.lua"
            text = (f"stack traceback:\n\t{name}:2: in local 'g'\n\tf{n + 1}.lua:3: in x"
                    f"\n\t{name}:3: in main chunk")
            script = LuaScript(name, source)
            frames = script.frames(text)
            assert frames == general_frames(script, text)
            assert [(f.line, f.source) for f in frames] == [(3, "c()"), (2, "b()")]
