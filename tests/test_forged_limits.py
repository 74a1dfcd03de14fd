"""Limits and violations a script forges: classified from what the engine observed.

A script can write any message ("not enough memory", "stack overflow", "interrupted") and
raise any unified error. Only what the engine and the host observed (the allocator
refused, the stack was full, the deadline passed, the prelude caught a forbidden use) may
give a resource limit or a sandbox violation; a security or resource error a script
raised itself stays allowed, marked as the script's, and exits as a script failure.
"""

from __future__ import annotations

import json

import pytest

from bridge import SpellError
from bridge.render import SCRIPT_RAISED_NOTE
from host import Host
from host.cli import exit_code
from tests.conftest import pick


def failure(language: str, source: str, **limits: float) -> SpellError:
    host = Host(on_output=lambda line: None, **{"timeout": 5.0, "memory_mb": 64, **limits})
    with pytest.raises(SpellError) as info:
        host.run_source(source, language, f"agent.{pick(language, 'lua', 'js')}")
    return info.value


def result(language: str, source: str) -> object:
    host = Host(on_output=lambda line: None, timeout=5.0, memory_mb=64)
    return host.run_source(source, language, f"agent.{pick(language, 'lua', 'js')}")


def is_limit(err: SpellError) -> bool:
    return err.category == "resource" or err.code == "script/resource_exhaustion"


# -- forged limits ---------------------------------------------------------------------

LUA_FORGED = {
    "memory_message": 'error("not enough memory", 0)',
    "memory_assert": 'local f = coroutine.wrap(assert)\nf(false, "not enough memory")',
    "memory_wrap": 'coroutine.wrap(function() error("not enough memory", 0) end)()',
    "stack_message": 'error("stack overflow")',
    "c_stack_message": 'error("C stack overflow", 0)',
    "stack_deep": 'local function f(n)\n  if n == 0 then error("stack overflow", 0) end\n'
                  '  return 1 + f(n - 1)\nend\nf(500)',
    "limit_text": 'error("Script resource exhaustion: time in lua", 0)',
    "memory_text": 'error("Memory exhausted in lua: the script needed more", 0)',
}
JS_FORGED = {
    "interrupted": 'const e = new Error("interrupted");\n'
                   "Object.setPrototypeOf(e, InternalError.prototype);\nthrow e;",
    "interrupted_constructed": 'throw new InternalError("interrupted");',
    "memory_constructed": 'throw new InternalError("out of memory");',
    "stack_constructed": 'throw new RangeError("Maximum call stack size exceeded");',
    "stack_proxy": "throw new Proxy(new TypeError('x'), {get(target, key) {\n"
                   "  return key === 'message' ? 'Maximum call stack size exceeded'\n"
                   "    : key === 'name' ? 'RangeError' : target[key]; },\n"
                   "  getPrototypeOf() { return RangeError.prototype; }});",
    "memory_getter": 'const e = new RangeError("x");\n'
                     'Object.defineProperty(e, "message", {get() { return "out of memory"; }});\n'
                     "Object.setPrototypeOf(e, InternalError.prototype);\nthrow e;",
    "stack_tojson": "Object.prototype.toJSON = function () {\n"
                    '  return {name: "RangeError", message: "Maximum call stack size exceeded",'
                    ' stack: ""};\n};\nthrow new Error("plain");',
    "time_tojson": "Object.prototype.toJSON = function () {\n"
                   '  const e = new Error("interrupted");\n'
                   "  Object.setPrototypeOf(e, InternalError.prototype);\n  throw e;\n};\n"
                   'function main() { return {a: 1}; }',
    "limit_text": 'throw "Script resource exhaustion: time in javascript";',
}


# What each forgery's error says: the forgery ran (a script that fails for another reason
# is no limit either, and would pass the tests below without testing anything).
LUA_SAYS = {
    "memory_message": "not enough memory", "memory_assert": "not enough memory",
    "memory_wrap": "not enough memory", "stack_message": "stack overflow",
    "c_stack_message": "C stack overflow", "stack_deep": "stack overflow",
    "limit_text": "Script resource exhaustion: time in lua",
    "memory_text": "Memory exhausted in lua: the script needed more",
}
JS_SAYS = {
    "interrupted": "InternalError: interrupted",
    # quickjs-ng's InternalError cannot be constructed: that forgery is refused before it
    # is thrown (a binding that allows it makes this fail, and the case test something)
    "interrupted_constructed": "TypeError: not a constructor",
    "memory_constructed": "TypeError: not a constructor",
    "stack_constructed": "RangeError: Maximum call stack size exceeded",
    "stack_proxy": "RangeError: Maximum call stack size exceeded",
    "memory_getter": "InternalError: out of memory",
    "stack_tojson": "Error: plain",
    "time_tojson": "result could not be read: InternalError: interrupted",
    "limit_text": "Script resource exhaustion: time in javascript",
}


@pytest.mark.parametrize("case", list(LUA_FORGED))
def test_a_lua_script_cannot_forge_a_limit(case):
    err = failure("lua", LUA_FORGED[case])
    assert LUA_SAYS[case] in err.message, err.message
    assert not is_limit(err) or err.raised_by_script, err.code
    assert exit_code(err) == 1


@pytest.mark.parametrize("case", list(JS_FORGED))
def test_a_javascript_script_cannot_forge_a_limit(case):
    err = failure("javascript", JS_FORGED[case])
    assert JS_SAYS[case] in err.message, err.message
    assert not is_limit(err) or err.raised_by_script, err.code
    assert exit_code(err) == 1


def test_a_forged_lua_memory_error_is_an_ordinary_catchable_error():
    source = """
local caught = {}
caught[1] = select(2, pcall(error, "not enough memory", 0))
caught[2] = select(2, pcall(assert, false, "not enough memory"))
caught[3] = select(2, xpcall(function() error("x") end, function() return "not enough memory" end))
local co = coroutine.create(function() error("not enough memory", 0) end)
caught[4] = select(2, coroutine.resume(co))
caught[5] = select(2, coroutine.close(co))
caught[6] = select(2, load(function() error("not enough memory", 0) end))
caught[7] = select(2, pcall(coroutine.wrap(function() error("not enough memory", 0) end)))
caught[8] = select(2, pcall(function()
  local x <close> = setmetatable({}, {__close = function() pcall(error, "y") end})
  error("not enough memory", 0)
end))
return caught
"""
    assert result("lua", source) == ["not enough memory"] * 8


def test_lua_error_and_assert_keep_their_levels_and_messages():
    source = """
local function f() error("boom", 2) end
local ok1, e1 = pcall(function() f() end)
local ok2, e2 = pcall(function() assert(false, "sure") end)
local ok3, e3 = pcall(function() assert(nil) end)
local ok4, e4 = pcall(error)
local ok5, e5 = pcall(error, {code = 1})
return {e1, e2, e3, tostring(e4), e5.code, select("#", assert(1, 2, 3))}
"""
    assert result("lua", source) == ["agent.lua:3: boom", "agent.lua:4: sure",
                                     "agent.lua:5: assertion failed!", "<no error object>", 1,
                                     3]


# -- genuine limits are still limits ---------------------------------------------------

GENUINE = {
    "memory": ('local t = {} for i = 1, 1e9 do t[i] = string.rep("x", 1024) .. i end',
               'let t = []; for (let i = 0; ; i++) t.push("x".repeat(1e5) + i);',
               "resource/memory_exhaustion", None),
    "memory_caught": ("local ok = pcall(function()\n  local t = {}\n"
                      "  for i = 1, 1e9 do t[i] = {} end\nend)\nreturn 'caught'",
                      "function main() { let s = 'x'; while (true) s += s; }",
                      "resource/memory_exhaustion", None),
    "stack": ("local function f(n) return 1 + f(n + 1) end return f(1)",
              "function f(n) { return 1 + f(n + 1); } f(1);",
              "script/resource_exhaustion", "stack"),
    "stack_rethrown": ("local function f(n) return 1 + f(n + 1) end\n"
                       "local ok, e = pcall(f, 1)\nerror(e, 0)",
                       "function f(n) { return 1 + f(n + 1); }\n"
                       "try { f(1); } catch (e) { throw e; }",
                       "script/resource_exhaustion", "stack"),
    "stack_in_coroutine": ("local function f(n) return 1 + f(n + 1) end\n"
                           "return coroutine.wrap(function() return f(1) end)()",
                           "function f(n) { return 1 + f(n + 1); }\n"
                           "async function main() { await null; return f(1); }",
                           "script/resource_exhaustion", "stack"),
    "time": ("while true do end", "while (true) {}", "script/resource_exhaustion", "time"),
}


@pytest.mark.parametrize("case", list(GENUINE))
def test_genuine_limits_are_still_classified(language, case):
    lua, js, code, resource = GENUINE[case]
    err = failure(language, pick(language, lua, js), timeout=5.0 if case != "time" else 0.5,
                  memory_mb=32 if case.startswith("memory") else 256)
    assert err.code == code
    if resource:
        assert err.fields["resource_type"] == resource
    assert not err.raised_by_script
    assert exit_code(err) == 4


def test_a_lua_c_stack_overflow_is_a_stack_limit():
    err = failure("lua", 'local t = setmetatable({}, {__index = function(t, k)\n'
                         '  return t[k .. "x"]\nend})\nreturn t.x')
    assert (err.code, err.fields["resource_type"]) == ("script/resource_exhaustion", "stack")


# -- security errors: the script's own, and the sandbox's -----------------------------


def test_a_script_may_raise_a_security_error_but_it_says_it_is_the_scripts(language):
    source = pick(language,
                  'error(errors.SecurityError{kind = "script_safety_violation", '
                  'engine = "lua", violation = "prompt injection"})',
                  'throw new SecurityError({kind: "script_safety_violation", '
                  'engine: "javascript", violation: "prompt injection"});')
    err = failure(language, source)
    assert err.code == "security/script_safety_violation"
    assert err.raised_by_script
    assert err.context.metadata["raised_by"] == "script"
    assert SCRIPT_RAISED_NOTE in err.to_text()
    assert exit_code(err) == 1
    back = SpellError.from_json(err.to_json())
    assert back.raised_by_script and exit_code(back) == 1


def test_a_script_raised_resource_error_is_not_a_limit(language):
    source = pick(language,
                  'error(errors.ResourceError{kind = "memory_exhaustion", location = "lua",'
                  ' description = "fake", available = 1})',
                  'throw new ResourceError({kind: "memory_exhaustion", location: "js",'
                  ' description: "fake", available: 1});')
    err = failure(language, source)
    assert err.code == "resource/memory_exhaustion" and err.raised_by_script
    assert exit_code(err) == 1


def test_the_sandboxs_own_violations_stay_genuine():
    for source in ('return load("\\27Lua binary chunk")',
                   "setmetatable({}, {__gc = function() end})",
                   'collectgarbage("stop")',
                   # caught and raised again: still the prelude's own error
                   'local ok, e = pcall(load, "\\27Lua")\nerror(e)'):
        err = failure("lua", source)
        assert err.code == "security/script_safety_violation"
        assert not err.raised_by_script
        assert SCRIPT_RAISED_NOTE not in err.to_text()
        assert exit_code(err) == 3


def test_a_violation_the_script_edited_is_the_scripts():
    source = ('local ok, e = pcall(load, "\\27Lua")\ne.category = "resource"\n'
              'e.kind = "memory_exhaustion"\ne.fields = {location = "lua", description = "x",'
              ' available = 1}\nerror(e)')
    err = failure("lua", source)
    assert err.code == "resource/memory_exhaustion"
    assert err.raised_by_script and exit_code(err) == 1


def test_the_mark_survives_json():
    err = failure("javascript", 'throw new SecurityError({kind: "script_safety_violation",'
                                ' engine: "javascript", violation: "x"});')
    assert err.code == "security/script_safety_violation"
    data = json.loads(err.to_json())
    assert data["context"]["metadata"]["raised_by"] == "script"


def test_the_cli_exits_as_for_a_script_failure_on_a_forged_limit(tmp_path):
    from tests.test_cli_run import polyspell

    forged = tmp_path / "forged.lua"
    forged.write_text('error("not enough memory", 0)\n')
    out = polyspell("run", forged)
    assert out.returncode == 1, out.stderr  # before: 4, "resource/memory_exhaustion"
    assert "not enough memory" in out.stderr and "memory_exhaustion" not in out.stderr


# -- what still does not hold (README "Known limits") ---------------------------------


@pytest.mark.xfail(strict=True, reason="quickjs-ng gives nothing to tell a script's error "
                   "with the engine's InternalError prototype from its own out-of-memory error")
def test_a_relabelled_error_is_not_a_memory_limit():
    err = failure("javascript", 'const e = new Error("out of memory");\n'
                                "Object.setPrototypeOf(e, InternalError.prototype);\nthrow e;")
    assert not is_limit(err)


@pytest.mark.xfail(strict=True, reason="quickjs-ng keeps one frame per async call in a "
                   "backtrace: a stack overflow in async recursion is not seen as deep")
def test_a_stack_overflow_in_async_recursion_is_a_stack_limit():
    err = failure("javascript", "async function f(n) { return 1 + await f(n + 1); }\n"
                                "async function main() { return await f(1); }", memory_mb=256)
    assert err.code == "script/resource_exhaustion"


@pytest.mark.xfail(strict=True, reason="quickjs-ng throws a RangeError for a stack overflow, "
                   "which scripts can construct too: a deep enough backtrace is all it checks")
def test_a_range_error_thrown_deep_in_a_recursion_is_not_a_stack_limit():
    err = failure("javascript",
                  "function f(n) {\n"
                  '  if (n === 0) throw new RangeError("Maximum call stack size exceeded");\n'
                  "  return f(n - 1) + 1;\n}\nf(80);")
    assert not is_limit(err)


# -- error values Lua replaces in flight, deep C stacks, edited violations -------------

FORGED_MEMORY_CLOSE = """
local f = coroutine.wrap(function()
  local x <close> = setmetatable({}, {__close = function() error("not enough memory", 0) end})
  error("orig", 0)
end)
f()
"""


@pytest.mark.parametrize("source", [
    FORGED_MEMORY_CLOSE,
    # a __close handler of the main chunk replaces the error in flight
    'local x <close> = setmetatable({}, {__close = function() error("not enough memory", 0)'
    ' end})\nerror("orig", 0)',
    # an xpcall handler's result, raised again
    'local ok, e = xpcall(error, function() return "not enough memory" end, "x")\nerror(e, 0)',
    # thrown from a coroutine closed by coroutine.close, then raised again
    'local co = coroutine.create(function()\n  local x <close> = setmetatable({}, {__close ='
    ' function() error("not enough memory", 0) end})\n  coroutine.yield()\nend)\n'
    'coroutine.resume(co)\nlocal ok, e = coroutine.close(co)\nerror(e, 0)',
])
def test_a_forged_memory_error_lua_replaces_in_flight_is_a_script_error(source):
    err = failure("lua", source)
    assert err.code == "script/lua", err.code
    assert err.fields["error"] == "not enough memory"
    assert exit_code(err) == 1


REAL_OOM_AFTER_DROPPED = """
pcall(function()
  local x <close> = setmetatable({}, {__close = function() error("b", 0) end})
  error("not enough memory", 0)
end)
local t = {}
local ok, e = pcall(function()
  while true do t[#t + 1] = string.rep("x", 1000) .. #t end
end)
t = nil
collectgarbage()
return "survived"
"""


def test_a_real_out_of_memory_error_after_a_dropped_forged_one_is_not_catchable():
    err = failure("lua", REAL_OOM_AFTER_DROPPED, memory_mb=32)
    assert err.code == "resource/memory_exhaustion"
    assert not err.raised_by_script and exit_code(err) == 4


def test_scripts_see_a_forged_memory_error_as_the_plain_string():
    source = """
local seen = {}
local ok, e = pcall(coroutine.wrap(function()
  local x <close> = setmetatable({}, {__close = function() error("not enough memory", 0) end})
  error("orig", 0)
end))
seen[1] = e
xpcall(error, function(m) seen[2] = m return m end, "not enough memory", 0)
seen[3] = select(2, xpcall(error, function(m) return m end, "not enough memory", 0))
local co = coroutine.wrap(function() error("not enough memory", 0) end)
seen[4] = select(2, pcall(co))
seen[5] = select(2, pcall(error, "not enough memory"))
return {seen[1], seen[2], seen[3], seen[4], seen[5]}
"""
    assert result("lua", source) == ["not enough memory"] * 5


FORGED_STACK = {
    # the C stack filled by the script itself, then its own message
    "c_stack": 'local function f(n)\n  if n == 0 then error("stack overflow", 0) end\n'
               '  return (string.gsub("a", "a", function() return f(n - 1) end))\nend\nf(185)',
    "c_stack_assert": 'local function f(n)\n  if n == 0 then assert(false, "stack overflow") end\n'
                      '  return (string.gsub("a", "a", function() return f(n - 1) end))\nend\n'
                      'f(185)',
    "c_stack_pcall": 'local function f(n)\n  if n == 0 then local ok, e = pcall(error, '
                     '"stack overflow", 0) error(e, 0) end\n'
                     '  return (string.gsub("a", "a", function() return f(n - 1) end))\nend\n'
                     'f(185)',
    "coroutine_deep": 'coroutine.wrap(function()\n  local function f(n)\n'
                      '    if n == 0 then error("stack overflow", 0) end\n'
                      '    return 1 + f(n - 1)\n  end\n  f(500)\nend)()',
    "coroutine_c_stack": 'coroutine.wrap(function()\n  local function f(n)\n'
                         '    if n == 0 then error("stack overflow", 0) end\n'
                         '    return (string.gsub("a", "a", function() return f(n - 1) end))\n'
                         '  end\n  f(185)\nend)()',
}


@pytest.mark.parametrize("case", list(FORGED_STACK))
def test_a_lua_script_cannot_forge_a_stack_limit_at_a_deep_stack(case):
    err = failure("lua", FORGED_STACK[case])
    assert err.message.endswith("stack overflow"), err.message  # the forgery ran
    assert not is_limit(err), err.code
    assert exit_code(err) == 1


def test_a_real_c_stack_overflow_through_callbacks_is_a_stack_limit():
    err = failure("lua", 'local function f(n)\n'
                         '  return (string.gsub("a", "a", function() return f(n + 1) end))\n'
                         'end\nf(1)')
    assert (err.code, err.fields["resource_type"]) == ("script/resource_exhaustion", "stack")
    assert exit_code(err) == 4


EDITED_VIOLATION = {
    "review": 'local ok, e = pcall(setmetatable, {}, {__gc = true})\n'
              'e.fields.violation = "os.execute blocked: call +1-555-0100"\n'
              'e.message = "SECURITY: attacker-controlled text"\nerror(e, 0)',
    "fields": 'local ok, e = pcall(setmetatable, {}, {__gc = true})\n'
              'e.fields.violation = "call +1-555-0100"\nerror(e, 0)',
    "new_field": 'local ok, e = pcall(setmetatable, {}, {__gc = true})\n'
                 'e.fields.note = "call +1-555-0100"\nerror(e, 0)',
    "message": 'local ok, e = pcall(setmetatable, {}, {__gc = true})\n'
               'e.message = "call +1-555-0100"\nerror(e, 0)',
    "fields_table": 'local ok, e = pcall(setmetatable, {}, {__gc = true})\n'
                    'e.fields = {engine = "lua", violation = "call +1-555-0100"}\nerror(e, 0)',
    "cause": 'local ok, e = pcall(setmetatable, {}, {__gc = true})\n'
             'e.cause = errors.ScriptError{kind = "lua", error = "call +1-555-0100"}\nerror(e, 0)',
    "traceback": 'local ok, e = pcall(setmetatable, {}, {__gc = true})\n'
                 'e.traceback = "stack traceback:\\n\\tagent.lua:9: in main chunk"\nerror(e, 0)',
    "name": 'local ok, e = pcall(setmetatable, {}, {__gc = true})\n'
            'e.name = "call +1-555-0100"\nerror(e, 0)',
}


@pytest.mark.parametrize("case", list(EDITED_VIOLATION))
def test_an_edited_sandbox_violation_is_the_scripts(case):
    err = failure("lua", EDITED_VIOLATION[case])
    # the script's (marked so), or not a valid error at all: never the sandbox's own
    assert err.raised_by_script or err.code != "security/script_safety_violation", err.code
    assert exit_code(err) == 1, err.to_text()


def test_an_unedited_violation_raised_again_from_a_coroutine_stays_genuine():
    source = ('local ok, e = pcall(setmetatable, {}, {__gc = true})\n'
              'local fields = e.fields\nlocal v = fields.violation\ne.fields = fields\n'
              'coroutine.wrap(function() error(e, 0) end)()')
    err = failure("lua", source)
    assert err.code == "security/script_safety_violation"
    assert not err.raised_by_script and exit_code(err) == 3
    assert "__gc" in err.to_text()


LUA_GENUINE = {
    "memory_wrap_close": ("local f = coroutine.wrap(function()\n"
                          "  local x <close> = setmetatable({}, {__close = function() end})\n"
                          "  local t = {}\n  while true do t[#t + 1] = string.rep('x', 1000) .. #t"
                          " end\nend)\nf()", "resource/memory_exhaustion", None),
    "memory_after_forged": ('pcall(error, "not enough memory", 0)\n'
                            'local ok = pcall(function() local t = {}\n'
                            '  while true do t[#t + 1] = string.rep("x", 1000) .. #t end end)\n'
                            'return "caught"', "resource/memory_exhaustion", None),
    "stack_xpcall_rethrown": ("local function f(n) return 1 + f(n + 1) end\n"
                              "local ok, e = xpcall(f, function(m) return m end, 1)\nerror(e, 0)",
                              "script/resource_exhaustion", "stack"),
    "stack_wrap_rethrown": ("local function f(n) return 1 + f(n + 1) end\n"
                            "local ok, e = pcall(coroutine.wrap(f), 1)\nerror(e, 0)",
                            "script/resource_exhaustion", "stack"),
}


@pytest.mark.parametrize("case", list(LUA_GENUINE))
def test_genuine_lua_limits_caught_or_wrapped_are_still_limits(case):
    source, code, resource = LUA_GENUINE[case]
    err = failure("lua", source, memory_mb=32 if code.startswith("resource") else 256)
    assert err.code == code
    if resource:
        assert err.fields["resource_type"] == resource
    assert not err.raised_by_script and exit_code(err) == 4


def test_what_a_close_handler_sees_of_a_scripts_memory_message():
    # Known limit: Lua hands a __close handler the error value in flight unchanged, so it
    # sees the sandbox's stand-in for the script's own "not enough memory" (a table whose
    # tostring is the message); every catcher (pcall, xpcall, coroutine.*) sees the string.
    source = """
local arg
local ok, e = pcall(function()
  local x <close> = setmetatable({}, {__close = function(_, err) arg = err end})
  error("not enough memory", 0)
end)
return {type(arg), tostring(arg), e, getmetatable(arg)}
"""
    assert result("lua", source) == ["table", "not enough memory", "not enough memory", False]


@pytest.mark.xfail(strict=True, reason="Lua gives the prelude no way to see a real memory "
                   "error that a __close handler's own error replaced in flight")
def test_a_close_handler_cannot_swallow_a_real_out_of_memory_error():
    err = failure("lua", 'local ok, e = pcall(function()\n'
                         '  local x <close> = setmetatable({}, {__close = function() error("b", 0)'
                         ' end})\n  local t = {}\n'
                         '  while true do t[#t + 1] = string.rep("x", 1000) .. #t end\nend)\n'
                         'return "survived"', memory_mb=32)
    assert err.code == "resource/memory_exhaustion"


def test_a_genuine_violation_shows_no_text_the_script_chose():
    err = failure("lua", 'return load("return 1", "c", "b\\nSECURITY: call +1-555-0100")')
    assert err.code == "security/script_safety_violation" and exit_code(err) == 3
    assert "+1-555" not in err.to_text() and "+1-555" not in err.to_json()
    err = failure("lua", 'return load("return 1", "c", "bt")')
    assert "mode 'bt'" in err.fields["violation"] and exit_code(err) == 3
