"""Data handed from Python into a Lua engine never takes the host process down.

lupa pushes Python values onto the Lua stack outside any protected call; with the memory
limit's allocator refusing, Lua panicked and abort()ed the whole host process (SIGABRT).
Every case runs in a child process: it must end normally, report the run as
``resource/memory_exhaustion``, and the same host must run the next script.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PRELUDE = '''
import sys
from host import Host, tool
from bridge import SpellError

MiB = 2**20

@tool
def echo(text: str) -> str:
    """Returns its input."""
    return text

@tool
def big(kind: str, n: int) -> object:
    """n MiB of text in the given shape."""
    piece = "y" * MiB
    if kind == "str":
        return "y" * (n * MiB)
    if kind == "list":
        return [piece] * n
    if kind == "dict":
        return {f"k{i}": piece for i in range(n)}
    if kind == "nested":
        return {"a": [{"b": [piece] * n}]}
    if kind == "small_strings":  # small per item in Python, large as Lua strings
        return [f"item{i}" for i in range(n * 30_000)]
    raise ValueError(kind)

@tool
def boom(n: int) -> object:
    """Fails with an n MiB message."""
    raise ValueError("z" * (n * MiB))

def attempt(host, language, source, **options):
    try:
        result = host.run_source(source, language, **options)
        print(language, "RESULT", repr(result)[:60])
    except SpellError as e:
        print(language, "CODE", e.code)

def next_run(host):
    print("NEXT", host.run_source("return 1 + 1", "lua"),
          host.run_source("function main() { return 3; }", "javascript"))
'''

# A tools file that fills its engine's memory to just under the limit when it is loaded.
HOG_HELPERS = '''
local hog, piece = {}, string.rep("h", 2^14)
while collectgarbage("count") < MEMORY * 1024 - 3000 do hog[#hog + 1] = piece .. #hog end
return {
  size = function(p) return #p.s + 0 * #hog end,
  relay = function(p) return #tools.big{kind = "str", n = p.n} + 0 * #hog end,
}
'''


def _child(body: str, tmp_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    program = PRELUDE + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path or ROOT, env={"PYTHONPATH": str(ROOT)})


def _check(out: subprocess.CompletedProcess[str], languages: tuple[str, ...]) -> None:
    assert out.returncode == 0, f"rc {out.returncode}\n{out.stdout}\n{out.stderr[-2000:]}"
    assert "PANIC" not in out.stderr
    for language in languages:
        assert f"{language} CODE resource/memory_exhaustion" in out.stdout, out.stdout
    assert "NEXT 2 3" in out.stdout, out.stdout + out.stderr[-2000:]


FILL = '''
local s = string.rep("a", 2^22)                       -- 4 MiB, made first
local hog, piece = {}, string.rep("h", 2^14)
while collectgarbage("count") < 32 * 1024 - 6000 do   -- fill to just below the limit
  hog[#hog + 1] = piece .. #hog
end
return #tools.echo{text = s}                          -- 4 MiB back into Lua
'''


def test_a_script_that_fills_its_memory_then_gets_a_tool_reply_back():
    out = _child(f'''
        host = Host([echo], memory_mb=32)
        attempt(host, "lua", {FILL!r})
        next_run(host)
    ''')
    _check(out, ("lua",))


JS_BIG = "async function main() { return await tools.big({kind: '%s', n: 20}); }"


@pytest.mark.parametrize("kind", ["str", "list", "dict", "nested", "small_strings"])
def test_a_tool_result_larger_than_the_memory_limit(kind):
    # small_strings: 600,000 short strings pass the size pre-check and overrun while built
    languages = ("lua",) if kind == "small_strings" else ("javascript", "lua")
    out = _child(f'''
        host = Host([big], memory_mb=16)
        for language in {languages!r}[:-1]:
            attempt(host, language, {JS_BIG % kind!r})
        attempt(host, "lua", "return tools.big{{kind = '{kind}', n = 20}}")
        attempt(host, "lua", "return select(2, pcall(tools.big, {{kind = '{kind}', n = 20}}))")
        next_run(host)
    ''')
    _check(out, languages)
    assert "lua RESULT" not in out.stdout


def test_a_tool_error_larger_than_the_memory_limit():
    out = _child('''
        host = Host([boom], memory_mb=16)
        attempt(host, "javascript", "async function main() { try { await tools.boom({n: 20}); }"
                                    " catch (e) { return 1; } }")
        attempt(host, "lua", "local ok, e = pcall(tools.boom, {n = 20}) return tostring(ok)")
        next_run(host)
    ''')
    _check(out, ("javascript", "lua"))


@pytest.mark.parametrize("shape", ["str", "list"])
def test_run_args_larger_than_the_memory_limit(shape):
    value = '"x" * (20 * MiB)' if shape == "str" else '["x" * MiB] * 20'
    out = _child(f'''
        host = Host(memory_mb=16)
        attempt(host, "javascript", "function main(args) {{ return args.s.length; }}",
                args={{"s": {value}}})
        attempt(host, "lua", "return #args.s", args={{"s": {value}}})
        next_run(host)
    ''')
    _check(out, ("javascript", "lua"))


@pytest.mark.parametrize("caller", ["lua", "javascript"])
def test_tools_file_params_and_tool_results_past_its_memory_limit(caller, tmp_path):
    helpers = tmp_path / "helpers.lua"
    helpers.write_text(HOG_HELPERS.replace("MEMORY", "24"))
    size = {"lua": "return tools.size{s = string.rep('p', 4 * 2^20)}",
            "javascript": "async function main() "
                          "{ return await tools.size({s: 'p'.repeat(4 << 20)}); }"}
    relay = {"lua": "return tools.relay{n = 4}",
             "javascript": "async function main() { return await tools.relay({n: 4}); }"}
    out = _child(f'''
        host = Host([{str(helpers)!r}, big], memory_mb=24)
        attempt(host, {caller!r}, {size[caller]!r})
        attempt(host, {caller!r}, {relay[caller]!r})
        next_run(host)
    ''')
    _check(out, (caller,))
    assert out.stdout.count(f"{caller} CODE resource/memory_exhaustion") == 2, out.stdout


def test_data_that_fits_still_crosses_after_a_refusal():
    out = _child('''
        host = Host([big, echo], memory_mb=16)
        attempt(host, "lua", "return tools.big{kind = 'list', n = 20}")
        print("FITS", host.run_source("return #tools.big{kind = 'str', n = 4}", "lua"),
              host.run_source("return #tools.echo{text = string.rep('e', 2^22)}", "lua"),
              host.run_source("return #args.s", "lua", args={"s": "x" * (4 * MiB)}))
        next_run(host)
    ''')
    _check(out, ("lua",))
    assert f"FITS {4 * 2**20} {4 * 2**20} {4 * 2**20}" in out.stdout
