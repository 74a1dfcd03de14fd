"""Library roots and Lua ``require``, end to end: real Lua, real files, the host's resolution.

Each test writes its modules into ``tmp_path`` and runs a script through :class:`Host` (or
the CLI), so what is checked is what a user gets: which file a name resolves to and in
which order, that a module runs once per run, that the host reads a file once, that
names which are paths and files outside a root are refused, and that a library's errors
point at its own file and line in the JSON, the text traceback and Python's traceback.
Cycles are compared with real, unsandboxed Lua 5.5 on the same files.
"""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path
from typing import Any

import lupa.lua55 as lupa
import pytest

from bridge import SpellError
from bridge.render import render_text
from host import Host
from host.libraries import MAX_MODULE_BYTES, SANDBOX_HINT
from tests.cli import polyspell


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def run(script: Path, *, output: list[str] | None = None, args: Any = None,
        **options: Any) -> Any:
    sink = output if output is not None else []
    return Host(on_output=sink.append, **options).run(script, args)


def failure(script: Path, **options: Any) -> SpellError:
    with pytest.raises(SpellError) as caught:
        run(script, **options)
    return caught.value


def lua_frames(err: SpellError) -> list[tuple[str, int | None]]:
    return [(f.file, f.line) for f in err.frames if f.language == "lua"]


# -- finding modules ----------------------------------------------------------------------


def test_the_script_folder_then_the_roots_in_the_order_given(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(tmp_path / "s" / "shadow.lua", 'return "script folder"')
    write(a / "shadow.lua", 'return "a"')
    write(b / "shadow.lua", 'return "b"')
    write(a / "second.lua", 'return "a"')
    write(b / "second.lua", 'return "b"')
    write(b / "only_b.lua", 'return "b"')
    script = write(tmp_path / "s" / "agent.lua",
                   'return {require "shadow", require "second", (require "only_b")}')
    assert run(script, libraries=[a, b]) == ["script folder", "a", "b"]
    assert run(script, libraries=[b, a]) == ["script folder", "b", "b"]
    assert run(script, libraries=[a, b], script_dir_library=False) == ["a", "a", "b"]


def test_dotted_names_are_folders_and_init_lua_is_a_folders_module(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    write(lib / "pl" / "init.lua", 'return {name = "pl"}')
    write(lib / "pl" / "pretty.lua", 'return {name = "pl.pretty"}')
    write(lib / "pl" / "deep" / "x.lua", 'return {name = "pl.deep.x"}')
    script = write(tmp_path / "agent.lua",
                   'return {require("pl").name, require("pl.pretty").name, '
                   'require("pl.deep.x").name}')
    assert run(script, libraries=[lib]) == ["pl", "pl.pretty", "pl.deep.x"]


def test_a_module_runs_once_per_run_and_again_in_the_next_run(tmp_path: Path) -> None:
    write(tmp_path / "counter.lua",
          'print("loading", ...)\ncount = (count or 0) + 1\nreturn {n = count}')
    script = write(tmp_path / "agent.lua",
                   'local a, file = require "counter"\n'
                   'local b, again = require "counter"\n'
                   'return {a == b, a == package.loaded.counter, a.n, count, file, again}')
    host = Host(on_output=(lines := []).append)
    expected = [True, True, 1, 1, str(tmp_path / "counter.lua")]
    assert host.run(script) == expected
    assert host.run(script) == expected  # a fresh environment: the module ran again
    assert lines == [f"loading\tcounter\t{tmp_path / 'counter.lua'}"] * 2


def test_package_loaded_is_the_runs_as_in_lua(tmp_path: Path) -> None:
    write(tmp_path / "nothing.lua", "x = 1")  # returns nothing: loaded as true
    write(tmp_path / "sets.lua", 'package.loaded.sets = "own"')  # sets its own entry
    script = write(tmp_path / "agent.lua",
                   'package.loaded.preset = {42}\n'
                   'return {require "nothing", require "sets", require("preset")[1], '
                   'require("string") == string, require("_G") == _G}')
    assert run(script) == [True, "own", 42, True, True]


def test_a_missing_module_lists_where_it_looked_and_says_it_is_the_sandbox(
        tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    script = write(tmp_path / "agent.lua", 'local x = 1\nlocal json = require "json"\n')
    err = failure(script, libraries=[lib])
    assert err.code == "script/lua"
    assert err.fields["script_line"] == 2
    assert err.fields["error"] == "\n".join([
        "module 'json' not found:",
        f"\tno file '{tmp_path / 'json.lua'}'",
        f"\tno file '{tmp_path / 'json/init.lua'}'",
        f"\tno file '{lib / 'json.lua'}'",
        f"\tno file '{lib / 'json/init.lua'}'",
        SANDBOX_HINT])
    assert "--lib DIR" in SANDBOX_HINT


def test_require_with_no_roots_keeps_luas_message_and_adds_the_hint() -> None:
    host = Host()
    with pytest.raises(SpellError) as caught:
        host.run_source('return require("json")', "lua", "agent.lua")
    assert caught.value.fields["error"] == (
        f"module 'json' not found:\n\tno library roots to search\n{SANDBOX_HINT}")


def test_require_checks_its_argument_as_lua_does(tmp_path: Path) -> None:
    script = write(tmp_path / "agent.lua", "return {pcall(require)}")
    assert run(script) == [False, "bad argument #1 to 'require' (string expected, got no value)"]


# -- cycles, as in real Lua 5.5 -------------------------------------------------------------


def _real_lua(folder: Path, code: str) -> tuple[Any, list[str]]:
    """``code`` run by unsandboxed Lua 5.5 with ``folder`` as package.path's only folder."""
    lua = lupa.LuaRuntime()
    printed: list[str] = []
    lua.globals().print = lambda *args: printed.append("\t".join(map(str, args)))
    lua.globals().package.path = f"{folder}/?.lua;{folder}/?/init.lua"
    return lua.execute(code), printed


@pytest.mark.parametrize("name", ["a", "self"])
def test_a_cycle_recurses_as_in_real_lua_until_its_stack_overflow(tmp_path: Path,
                                                                 name: str) -> None:
    write(tmp_path / "a.lua", 'print("a")\nlocal b = require "b"\nreturn {}')
    write(tmp_path / "b.lua", 'print("b")\nlocal a = require "a"\nreturn {}')
    write(tmp_path / "self.lua", 'print("self")\nlocal s = require "self"\nreturn 1')
    code = f'local ok, e = pcall(require, "{name}") return e'
    real, real_printed = _real_lua(tmp_path, code)
    lines: list[str] = []
    script = write(tmp_path / "agent.lua", code)
    ours = run(script, output=lines)
    assert ours == real
    assert real.startswith("error loading module '") and real.endswith(
        ".lua':\n\tC stack overflow")
    assert str(tmp_path) in real  # the file named as the host named it, as Lua does
    assert lines == real_printed  # as many nested loads as real Lua allows
    # the run goes on: the loads in progress were counted down as the error unwound
    write(tmp_path / "plain.lua", "return {ok = true}")
    after = write(tmp_path / "after.lua", f'pcall(require, "{name}")\nreturn require "plain"')
    assert run(after, output=[]) == {"ok": True}


# -- names that are paths, files outside a root -----------------------------------------------


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "..", "a..b", "pl/pretty",
                                  ".hidden", "trailing.", "x\ny", "x\0y", "C:evil", "\\\\srv",
                                  "", "x" * 300])
def test_a_name_that_is_not_a_module_name_is_a_security_error(tmp_path: Path,
                                                              name: str) -> None:
    lib = tmp_path / "lib"
    write(lib / "x.lua", "return 1")
    literal = "".join(ch if ch.isascii() and ch.isprintable() and ch not in '"\\'
                      else f"\\{ord(ch)}" for ch in name)
    script = write(tmp_path / "agent.lua", f'local x = 1\nlocal m = require("{literal}")')
    err = failure(script, libraries=[lib])
    assert err.code == "security/access_denied"
    assert err.fields["operation"] == "require"
    assert repr(name[:197] + "..." if len(name) > 200 else name) in err.message
    assert f"library roots: {tmp_path}, {lib}" in err.message
    assert lua_frames(err) == [(str(script), 2)]


def test_a_symlink_out_of_a_root_is_a_security_error(tmp_path: Path) -> None:
    outside = write(tmp_path / "outside" / "secret.lua", 'return "secret"')
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "json.lua").symlink_to(outside)
    (lib / "pkg").symlink_to(outside.parent, target_is_directory=True)
    for name in ("json", "pkg.secret"):
        script = write(tmp_path / "run" / "agent.lua", f'return require "{name}"')
        err = failure(script, libraries=[lib])
        assert err.code == "security/access_denied", name
        assert "outside its library root" in err.message


def test_a_symlink_inside_its_root_is_followed(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    write(lib / "real" / "impl.lua", 'return "impl"')
    (lib / "alias.lua").symlink_to(lib / "real" / "impl.lua")
    script = write(tmp_path / "run" / "agent.lua", 'return require "alias"')
    assert run(script, libraries=[lib]) == "impl"


def test_a_script_cannot_forge_a_module_request(tmp_path: Path) -> None:
    """A tool named "module" (or any name) is a tool call: only require makes the kind."""
    write(tmp_path / "json.lua", "return 1")
    calls: list[Any] = []

    def module(name: str) -> Any:
        calls.append({"name": name})
        return {"file": "/etc/passwd", "source": "return 'forged'"}

    script = write(tmp_path / "agent.lua",
                   'local r = tools.module{name = "json"}\n'
                   'local s = tools.call("json", {})\nreturn r')
    err = failure(script, tools=[module])
    assert calls == [{"name": "json"}]  # the tool ran, as a tool
    assert err.code == "tool/not_found"  # "json" is no tool, whatever file is there


def test_a_huge_module_is_refused_clearly(tmp_path: Path) -> None:
    big = tmp_path / "big.lua"
    with big.open("wb") as file:
        file.truncate(MAX_MODULE_BYTES + 1)  # sparse: nothing is written
    script = write(tmp_path / "agent.lua", 'local b = require "big"')
    err = failure(script)
    assert err.code == "configuration/load_failed"
    assert err.fields["path"] == str(big)
    assert f"at most {MAX_MODULE_BYTES} bytes" in err.fields["reason"]
    assert lua_frames(err) == [(str(script), 1)]


def test_a_lua_module_that_is_not_utf8_loads_as_its_bytes(tmp_path: Path) -> None:
    (tmp_path / "latin.lua").write_bytes(b'return "caf\xe9"')  # Latin-1: legal Lua
    script = write(tmp_path / "agent.lua", 'local s = require "latin"\nreturn {#s, s:byte(4)}')
    assert run(script) == [4, 0xE9]


# -- the host's cache -----------------------------------------------------------------------


def test_the_host_reads_a_module_once_and_again_after_it_changes(tmp_path: Path) -> None:
    module = write(tmp_path / "m.lua", 'return "v1"')
    script = write(tmp_path / "agent.lua", 'return require "m"')
    host = Host(on_output=lambda line: None)
    assert [host.run(script) for _ in range(5)] == ["v1"] * 5
    assert host.libraries.cache.reads == 1
    stat = module.stat()
    module.write_text('return "v2"')  # the same size: cached by time and size
    os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert host.run(script) == "v1"  # so this is the cache, not the disk
    module.write_text('return "v3!"')  # another size
    assert host.run(script) == "v3!"
    assert host.libraries.cache.reads == 2


# -- errors in libraries: their own file and line ------------------------------------------------


def _library_error_files(tmp_path: Path) -> tuple[Path, Path]:
    lib = tmp_path / "lib"
    write(lib / "util.lua", "local M = {}\n"
                            "function M.check(x)\n"
                            "  if x < 0 then\n"
                            "    error('negative: ' .. x)\n"
                            "  end\n"
                            "  return x\n"
                            "end\n"
                            "return M\n")
    script = write(tmp_path / "agent.lua", 'local util = require "util"\n'
                                           "local function main_work()\n"
                                           "  local r = util.check(-1)\n"
                                           "  return r\n"
                                           "end\n"
                                           "return main_work()\n")
    return lib, script


def test_a_library_error_is_at_its_own_file_and_line(tmp_path: Path) -> None:
    lib, script = _library_error_files(tmp_path)
    util = str(lib / "util.lua")
    err = failure(script, libraries=[lib])
    data = err.to_dict()
    assert err.code == "script/lua"
    assert data["fields"]["script"] == util and data["fields"]["script_line"] == 4
    assert data["fields"]["error"] == "negative: -1"
    assert [(f.file, f.line, f.source) for f in err.frames][-2:] == [
        (str(script), 3, "local r = util.check(-1)"), (util, 4, "error('negative: ' .. x)")]
    assert err.frames[-1].function == "check"
    assert json.loads(json.dumps(data))["frames"][-1]["file"] == util
    text = render_text(err)
    assert f"{util}:4" in text and "error('negative: ' .. x)" in text
    python = "".join(traceback.format_exception(err))
    assert f'File "{util}", line 4, in check [lua]' in python
    assert "error('negative: ' .. x)" in python


def test_a_module_that_fails_to_compile_is_compilation_failed_at_its_line(
        tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    write(lib / "broken.lua", "local x = 1\nreturn = 3\n")
    script = write(tmp_path / "agent.lua", 'local y = 2\nlocal b = require "broken"\n')
    err = failure(script, libraries=[lib])
    broken = str(lib / "broken.lua")
    assert err.code == "script/compilation_failed"
    assert err.fields["file"] == broken and err.fields["line"] == 2
    assert err.fields["source_code"] == "return = 3"
    assert err.fields["error"] == "unexpected symbol near '='"
    assert [(f.file, f.line, f.source) for f in err.frames] == [
        (str(script), 2, 'local b = require "broken"'), (broken, 2, "return = 3")]
    assert not err.raised_by_script


def test_a_module_raising_while_loading_shows_the_require_chain(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    write(lib / "outer.lua", "local inner = require 'inner'\nreturn {}\n")
    write(lib / "inner.lua", "local t = {}\nerror('inner failed')\n")
    script = write(tmp_path / "agent.lua", "local a = 1\nlocal o = require 'outer'\n")
    err = failure(script, libraries=[lib])
    assert [(f.file, f.line, f.function) for f in err.frames] == [
        (str(script), 2, "main chunk"),
        (str(lib / "outer.lua"), 1, "main chunk"),
        (str(lib / "inner.lua"), 2, "main chunk")]
    assert err.fields["script"] == str(lib / "inner.lua") and err.fields["script_line"] == 2
    python = "".join(traceback.format_exception(err))
    assert "local inner = require 'inner'" in python and "error('inner failed')" in python


# -- roots: Host, config, CLI, plans ----------------------------------------------------------


def test_a_root_that_does_not_exist_fails_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(SpellError) as caught:
        Host(libraries=[tmp_path / "nowhere"])
    assert caught.value.code == "configuration/file_not_found"
    assert caught.value.fields["path"] == str(tmp_path / "nowhere")
    with pytest.raises(SpellError) as caught:
        Host(libraries=str(tmp_path))  # one path, not a list
    assert caught.value.code == "configuration/invalid_value"


def test_the_config_file_names_roots_relative_to_itself(tmp_path: Path) -> None:
    write(tmp_path / "conf" / "vendor" / "m.lua", 'return "vendor"')
    write(tmp_path / "s" / "m.lua", 'return "script folder"')
    script = write(tmp_path / "s" / "agent.lua", 'return require "m"')
    config = write(tmp_path / "conf" / "polyspell.toml", 'libraries = ["vendor"]\n')
    assert run(script, config=config) == "script folder"
    off = write(tmp_path / "conf" / "off.toml",
                'libraries = ["vendor"]\nscript_dir_library = false\n')
    assert run(script, config=off) == "vendor"
    assert run(script, config=off, script_dir_library=True) == "script folder"
    missing = write(tmp_path / "conf" / "bad.toml", 'libraries = ["gone"]\n')
    with pytest.raises(SpellError) as caught:
        Host(config=missing)
    assert caught.value.code == "configuration/file_not_found"
    assert f"{missing}:1" in caught.value.message


def test_the_cli_lib_option_and_switch(tmp_path: Path) -> None:
    write(tmp_path / "one" / "m.lua", 'return "one"')
    write(tmp_path / "two" / "m.lua", 'return "two"')
    write(tmp_path / "two" / "n.lua", 'return "two"')
    write(tmp_path / "s" / "m.lua", 'return "script folder"')
    script = write(tmp_path / "s" / "agent.lua", 'return {require "m", (require "n")}')
    done = polyspell("run", script, "--lib", "one", "--lib", "two", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["script folder", "two"]
    done = polyspell("run", script, "--lib", "two", "--lib", "one", "--no-script-dir-lib",
                     cwd=tmp_path)
    assert json.loads(done.stdout) == ["two", "two"]
    done = polyspell("run", script, "--lib", "gone", "--json", cwd=tmp_path)
    assert done.returncode == 2
    error = json.loads(done.stdout)["error"]
    assert (error["category"], error["kind"]) == ("configuration", "file_not_found")
    config = write(tmp_path / "polyspell.toml",
                   'libraries = ["two"]\nscript_dir_library = false\n')
    done = polyspell("run", script, "--config", config, cwd=tmp_path)
    assert json.loads(done.stdout) == ["two", "two"], done.stderr
    done = polyspell("run", script, "--config", config, "--lib", "one", cwd=tmp_path)
    assert json.loads(done.stdout) == ["one", "two"], done.stderr  # --lib first
    plan = write(tmp_path / "plan.toml", f'[[task]]\nid = "t"\nscript = "{script}"\n')
    done = polyspell("plan", plan, "--json", "--lib", "one", "--lib", "two",
                     "--no-script-dir-lib", cwd=tmp_path)
    assert json.loads(done.stdout)["tasks"][0]["result"] == ["one", "two"], done.stdout


def test_the_cli_traceback_goes_through_the_library_frame(tmp_path: Path) -> None:
    lib, script = _library_error_files(tmp_path)
    done = polyspell("run", script, "--lib", lib, cwd=tmp_path)
    assert done.returncode == 1
    assert "lib/util.lua:4" in done.stderr  # shown relative to the working folder
    assert "error('negative: ' .. x)" in done.stderr
    escape = write(tmp_path / "escape.lua", 'return require "../../etc/passwd"')
    done = polyspell("run", escape, cwd=tmp_path)
    assert done.returncode == 3  # a security error's exit code
    assert "security/access_denied: Access denied: require '../../etc/passwd'" in done.stderr


def test_a_plan_names_roots_relative_to_itself(tmp_path: Path) -> None:
    write(tmp_path / "vendor" / "m.lua", 'return "vendor"')
    write(tmp_path / "tasks" / "t.lua", 'return require "m"')
    plan = write(tmp_path / "plan.toml", '[plan]\nlibraries = ["vendor"]\n\n'
                                         '[[task]]\nid = "t"\nscript = "tasks/t.lua"\n')
    done = polyspell("plan", plan, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    report = json.loads(done.stdout)
    assert report["tasks"][0]["result"] == "vendor"
    gone = write(tmp_path / "gone.toml", '[plan]\nlibraries = ["nowhere"]\n\n'
                                         '[[task]]\nid = "t"\nscript = "tasks/t.lua"\n')
    done = polyspell("plan", gone, "--json", cwd=tmp_path)
    assert done.returncode == 2
    error = json.loads(done.stdout)["error"]
    assert (error["category"], error["kind"]) == ("configuration", "file_not_found")
    assert "libraries[0]" in error["message"]


# -- a real library ------------------------------------------------------------------------------

# A small JSON library in the style of rxi's json.lua (MIT): encode and decode, with a
# class-like error for bad input, all in plain Lua.
JSON_LUA = r'''
local json = {_version = "0.1"}

local escapes = {['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\t"] = "\\t"}

local function encode(v)
  local t = type(v)
  if t == "table" then
    if rawlen(v) > 0 or next(v) == nil then
      local out = {}
      for i = 1, #v do out[i] = encode(v[i]) end
      return "[" .. table.concat(out, ",") .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys)
    local out = {}
    for _, k in ipairs(keys) do out[#out + 1] = encode(k) .. ":" .. encode(v[k]) end
    return "{" .. table.concat(out, ",") .. "}"
  elseif t == "string" then
    return '"' .. v:gsub('[%c"\\]', escapes) .. '"'
  elseif t == "number" or t == "boolean" then
    return tostring(v)
  end
  error("unexpected type '" .. t .. "'")
end

local decode_value
local function skip(s, i) return s:find("[^ \n\r\t]", i) or #s + 1 end

local function decode_error(s, i, msg)
  error(string.format("%s at character %d", msg, i))
end

function decode_value(s, i)
  i = skip(s, i)
  local c = s:sub(i, i)
  if c == "{" then
    local t = {}
    i = skip(s, i + 1)
    if s:sub(i, i) == "}" then return t, i + 1 end
    while true do
      local k
      k, i = decode_value(s, i)
      i = skip(s, i)
      if s:sub(i, i) ~= ":" then decode_error(s, i, "expected ':'") end
      t[k], i = decode_value(s, i + 1)
      i = skip(s, i)
      local d = s:sub(i, i)
      i = i + 1
      if d == "}" then return t, i end
      if d ~= "," then decode_error(s, i - 1, "expected '}' or ','") end
    end
  elseif c == "[" then
    local t = {}
    i = skip(s, i + 1)
    if s:sub(i, i) == "]" then return t, i + 1 end
    while true do
      t[#t + 1], i = decode_value(s, i)
      i = skip(s, i)
      local d = s:sub(i, i)
      i = i + 1
      if d == "]" then return t, i end
      if d ~= "," then decode_error(s, i - 1, "expected ']' or ','") end
    end
  elseif c == '"' then
    local j = s:find('"', i + 1, true)
    return s:sub(i + 1, j - 1), j + 1
  elseif s:sub(i, i + 3) == "true" then return true, i + 4
  elseif s:sub(i, i + 4) == "false" then return false, i + 5
  end
  local n = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", i)
  if not n or n == "" then decode_error(s, i, "unexpected character '" .. c .. "'") end
  return tonumber(n), i + #n
end

function json.encode(v) return encode(v) end
function json.decode(s)
  local v, i = decode_value(s, 1)
  i = skip(s, i)
  if i <= #s then decode_error(s, i, "trailing garbage") end
  return v
end

return json
'''


def test_a_json_library_through_require(tmp_path: Path) -> None:
    write(tmp_path / "vendor" / "json.lua", JSON_LUA)
    script = write(tmp_path / "agent.lua",
                   'local json = require "json"\n'
                   'local v = json.decode(args.text)\n'
                   'v.extra = {1, 2, "three"}\n'
                   'return {encoded = json.encode(v), name = v.name, n = v.list[2]}\n')
    result = run(script, libraries=[tmp_path / "vendor"],
                 args={"text": '{"name": "polyspell", "list": [10, 20.5, true]}'})
    assert result == {"encoded": '{"extra":[1,2,"three"],"list":[10,20.5,true],'
                                 '"name":"polyspell"}', "name": "polyspell", "n": 20.5}
    err = failure(script, libraries=[tmp_path / "vendor"], args={"text": '{"a" 1}'})
    assert err.fields["script"] == str(tmp_path / "vendor" / "json.lua")
    assert err.fields["error"] == "expected ':' at character 6"
    assert err.frames[-1].source == 'error(string.format("%s at character %d", msg, i))'


# -- require inside other machinery: tools, coroutines, limits, the engine's protocol ------


def test_a_module_may_call_tools_while_it_loads_and_from_a_coroutine(tmp_path: Path) -> None:
    def lookup(key: str) -> str:
        return key.upper()

    write(tmp_path / "config.lua", 'return {value = tools.lookup{key = "abc"}}')
    script = write(tmp_path / "agent.lua",
                   'local co = coroutine.wrap(function() return require("config").value end)\n'
                   'return {co(), require("config").value}')
    assert run(script, tools=[lookup]) == ["ABC", "ABC"]


def test_a_module_that_never_ends_stops_at_the_time_limit_in_its_own_line(
        tmp_path: Path) -> None:
    write(tmp_path / "spin.lua", "local n = 0\nwhile true do n = n + 1 end\n")
    err = failure(write(tmp_path / "agent.lua", 'local s = require "spin"'), timeout=0.3)
    assert err.code == "script/resource_exhaustion"
    assert err.fields["resource_type"] == "time"
    assert lua_frames(err) == [(str(tmp_path / "agent.lua"), 1), (str(tmp_path / "spin.lua"), 2)]


def test_the_engine_asks_with_the_module_kind_and_refuses_a_malformed_answer() -> None:
    from tests.engine_driver import drive

    good = drive("lua", 'local m = require "m"\nreturn m.f()',
                 tools={"m": lambda _: {"file": "lib/m.lua",
                                        "source": "return {f = function()\n"
                                                  "  error('in m')\nend}"}})
    assert [request.kind for request in good.requests] == ["module"]
    assert good.requests[0].tool == "m" and good.requests[0].params is None
    assert good.error.fields["script"] == "lib/m.lua" and good.error.fields["script_line"] == 2
    assert good.error.frames[-1].source == "error('in m')"
    plain = drive("lua", 'return tools.m{}', tools={"m": lambda _: 1})
    assert [request.kind for request in plain.requests] == ["tool"]  # a name is only a name
    bad = drive("lua", 'return require "m"', tools={"m": lambda _: {"file": "/etc/passwd"}})
    assert bad.error.code == "bridge/protocol_violation"


def test_a_plans_tasks_read_a_module_once(tmp_path: Path) -> None:
    from host.coordinator import Coordinator
    from host.plan import Plan, Task

    lib = tmp_path / "lib"
    write(lib / "shared.lua", 'return {n = 7}')
    write(tmp_path / "task.lua", 'return require("shared").n + args.k')
    coordinator = Coordinator(libraries=[lib], on_output=lambda task, line: None)
    plan = Plan(tasks=[Task(id=f"t{k}", script=str(tmp_path / "task.lua"), args={"k": k})
                       for k in range(20)])
    report = coordinator.run(plan)
    assert report.outcome == "succeeded"
    assert sorted(task.result for task in report.tasks) == [7 + k for k in range(20)]
    assert coordinator._host.libraries.cache.reads == 1


def test_a_lua_tools_files_functions_may_require(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    write(lib / "shout.lua", "return function(s)\n  if s == '' then error('nothing to shout') end\n"
                             "  return s:upper() .. '!'\nend\n")
    helpers = write(tmp_path / "tools" / "helpers.lua",
                    "return {loud = function(p)\n"
                    "  local shout = require 'shout'\n"
                    "  local r = shout(p.text)\n"
                    "  return r\n"
                    "end}\n")
    script = write(tmp_path / "agent.lua", "return tools.loud{text = 'hi'}")
    assert run(script, tools=[helpers], libraries=[lib]) == "HI!"
    failing = write(tmp_path / "fail.lua", "local r = tools.loud{text = ''}\nreturn r")
    err = failure(failing, tools=[helpers], libraries=[lib])
    assert lua_frames(err)[-2:] == [(str(helpers), 3), (str(lib / "shout.lua"), 2)]



def test_a_lua_tools_file_requires_at_load_from_its_folder_then_the_roots(
        tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    write(lib / "shout.lua", "return function(s) return s:upper() .. '!' end\n")
    write(lib / "word.lua", "return 'from lib'")
    write(tmp_path / "tools" / "word.lua", "return 'from the tools folder'")
    top = write(tmp_path / "tools" / "top.lua",
                "local shout, word = require 'shout', require 'word'\n"
                "return {loud = function(p) return shout(p.text) .. ' ' .. word end}\n")
    script = write(tmp_path / "run" / "agent.lua", "return tools.loud{text = 'hi'}")
    write(tmp_path / "run" / "word.lua", "return 'from the script folder'")
    host = Host([top], libraries=[lib], on_output=lambda line: None)  # listed: loads once
    assert host.run(script) == "HI! from the tools folder"
    bad = write(tmp_path / "tools" / "bad.lua", "local x = require '../secret'\nreturn {}\n")
    with pytest.raises(SpellError) as caught:
        Host([bad], libraries=[lib])
    assert caught.value.code == "configuration/load_failed"
    assert caught.value.cause.code == "security/access_denied"


def test_the_tools_command_lists_a_tools_file_that_requires(tmp_path: Path) -> None:
    write(tmp_path / "vendor" / "dep.lua", "return {x = 1}")
    tools = write(tmp_path / "tools.lua",
                  'local dep = require "dep"\nreturn {f = function(p) return dep.x end}\n')
    done = polyspell("tools", "--tools", tools, "--lib", "vendor", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [entry["name"] for entry in json.loads(done.stdout)] == ["f"]
    done = polyspell("tools", "--tools", tools, cwd=tmp_path)
    assert done.returncode != 0 and "module 'dep' not found" in done.stderr


def test_require_in_process_isolation_where_the_worker_opens_no_file(tmp_path: Path) -> None:
    """The confined worker cannot open files: the host reads the module and hands it over."""
    lib, script = _library_error_files(tmp_path)
    write(tmp_path / "ok.lua", 'return require("util").check(5)')
    with Host(isolation="process", libraries=[lib], on_output=lambda line: None) as host:
        assert host.run(tmp_path / "ok.lua") == 5
        with pytest.raises(SpellError) as caught:
            host.run(script)
    err = caught.value
    assert err.fields["script"] == str(lib / "util.lua") and err.fields["script_line"] == 4
    assert lua_frames(err)[-2:] == [(str(script), 3), (str(lib / "util.lua"), 4)]
    assert err.frames[-1].source == "error('negative: ' .. x)"
