"""JavaScript modules end to end: ES ``import`` in ``.mjs`` scripts and CommonJS
``require`` in ``.js`` scripts, found and read by the host in the library roots, linked by
the engine (engines/javascript_modules.py), in both isolation modes.

Each test writes its modules into ``tmp_path`` and runs a script through :class:`Host`, so
what is checked is what a user gets: which file a specifier resolves to and in which
order, that a module runs once per run, that paths out of the roots are refused, and
that a module's errors point at its own file and line in the JSON, the text traceback
and Python's traceback. Cycles and a real library (mustache.js, vendored under
tests/vendor/mustache with its MIT licence) are compared with node when it is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import traceback
from pathlib import Path
from typing import Any

import pytest

from bridge import SpellError
from bridge.render import render_text
from host import Host
from host.libraries import JS_SANDBOX_HINT

pytestmark = pytest.mark.usefixtures("isolation")

VENDOR = Path(__file__).parent / "vendor"
NODE = shutil.which("node")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def run(script: Path, *, output: list[str] | None = None, args: Any = None, **options: Any) -> Any:
    sink = output if output is not None else []
    with Host(on_output=sink.append, **options) as host:
        return host.run(script, args)


def failure(script: Path, **options: Any) -> SpellError:
    with pytest.raises(SpellError) as caught:
        run(script, **options)
    return caught.value


def js_frames(err: SpellError) -> list[tuple[str, int | None, str]]:
    return [(f.file, f.line, f.function) for f in err.frames if f.language == "javascript"]


def node(script: Path, *, stderr: bool = True) -> str:
    """What node prints running ``script`` (which calls its own main)."""
    assert NODE is not None
    done = subprocess.run(
        [NODE, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    return done.stdout + (done.stderr if stderr else "")


# -- finding modules ----------------------------------------------------------------------


def test_the_script_folder_then_the_roots_in_the_order_given(tmp_path: Path) -> None:
    a, b, s = tmp_path / "a", tmp_path / "b", tmp_path / "s"
    for folder, name in ((s, "script folder"), (a, "a"), (b, "b")):
        write(folder / "shadow.mjs", f'export default "{name}";')
        write(folder / "shadow.js", f'module.exports = "{name}";')
    for folder, name in ((a, "a"), (b, "b")):
        write(folder / "second.mjs", f'export default "{name}";')
        write(folder / "second.js", f'module.exports = "{name}";')
    write(b / "third.mjs", 'export default "b";')
    write(b / "third.js", 'module.exports = "b";')
    script = write(
        s / "agent.mjs",
        'import x from "shadow";\nimport y from "second";\n'
        'import z from "third";\n'
        "export function main() { return [x, y, z]; }",
    )
    assert run(script, libraries=[a, b]) == ["script folder", "a", "b"]
    required = write(
        s / "agent.js",
        'const r = [require("shadow"), require("second"), '
        'require("third")];\nfunction main() { return r; }',
    )
    assert run(required, libraries=[a, b]) == ["script folder", "a", "b"]
    assert run(script, libraries=[b, a], script_dir_library=False) == ["b", "b", "b"]


def test_relative_specifiers_and_folders_and_package_json(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    write(
        lib / "pkg" / "package.json",
        json.dumps({"main": "dist/cjs.js", "exports": {".": {"import": "./dist/es.mjs"}}}),
    )
    write(lib / "pkg" / "dist" / "es.mjs", 'export {v as default} from "./v.mjs";')
    write(lib / "pkg" / "dist" / "v.mjs", 'export const v = "pkg es";')
    write(lib / "pkg" / "dist" / "cjs.js", 'module.exports = require("./v.js");')
    write(lib / "pkg" / "dist" / "v.js", 'module.exports = "pkg cjs";')
    write(lib / "folder" / "index.mjs", 'export default "folder es";')
    write(lib / "folder" / "index.js", 'module.exports = "folder cjs";')
    write(lib / "data.json", '{"n": [1, 2]}')
    write(tmp_path / "util" / "helper.mjs", 'export * from "../more.mjs";')
    write(tmp_path / "more.mjs", "export const more = 1;")
    script = write(
        tmp_path / "agent.mjs",
        'import p from "pkg";\nimport f from "folder";\n'
        'import {more} from "./util/helper.mjs";\n'
        "export function main() { return [p, f, more]; }",
    )
    assert run(script, libraries=[lib]) == ["pkg es", "folder es", 1]
    script = write(
        tmp_path / "agent.js",
        'const r = [require("pkg"), require("folder"), require("data.json").n];\n'
        "function main() { return r; }",
    )
    assert run(script, libraries=[lib]) == ["pkg cjs", "folder cjs", [1, 2]]


def test_a_module_runs_once_per_run_and_again_in_the_next_run(tmp_path: Path) -> None:
    write(
        tmp_path / "counter.mjs",
        'console.log("loading");\nexport let n = 0;\nexport function bump() { n += 1; return n; }',
    )
    write(tmp_path / "other.mjs", 'import {bump} from "./counter.mjs";\nbump();')
    script = write(
        tmp_path / "agent.mjs",
        'import "./other.mjs";\nimport {n, bump} from "./counter.mjs";\n'
        "export async function main() {\n"
        '  const again = await import("./counter.mjs");\n'
        "  bump();\n  return [n, again.n];\n}",
    )
    output: list[str] = []
    assert run(script, output=output) == [2, 2]  # live bindings, one instance
    assert output == ["loading"]
    write(tmp_path / "counter.js", 'console.log("loading");\nexports.n = 0;')
    cjs = write(
        tmp_path / "agent.js",
        'const a = require("./counter.js");\n'
        'const b = require("./counter");\n'
        "a.n += 1;\nfunction main() { return b.n; }",
    )
    output = []
    with Host(on_output=output.append) as host:
        assert host.run(cjs) == 1
        assert host.run(cjs) == 1
        assert host.libraries.cache.reads == 1  # read once, run once per run
    assert output == ["loading", "loading"]


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_an_es_cycle_behaves_as_in_node(tmp_path: Path) -> None:
    write(
        tmp_path / "a.mjs",
        'import {b, callA} from "./b.mjs";\nconsole.log("a runs", b);\n'
        'export function hoisted() { return "hoisted a"; }\n'
        'export const late = "late a";\n'
        "export function check() { return callA(); }",
    )
    write(
        tmp_path / "b.mjs",
        'import {hoisted, late} from "./a.mjs";\n'
        'console.log("b runs", hoisted());\n'
        "let seen;\ntry { seen = late; } catch (e) { seen = e.name; }\n"
        'console.log("b sees", seen);\nexport const b = "b";\n'
        "export function callA() { return late; }",
    )
    body = (
        'import {check} from "./a.mjs";\nexport function main() { console.log("main", check()); }\n'
    )
    script = write(tmp_path / "agent.mjs", body)
    output: list[str] = []
    run(script, output=output)
    write(tmp_path / "node_agent.mjs", body + "main();\n")
    assert "\n".join(output) + "\n" == node(tmp_path / "node_agent.mjs")
    assert output == ["b runs hoisted a", "b sees ReferenceError", "a runs b", "main late a"]


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_a_commonjs_cycle_sees_partial_exports_as_in_node(tmp_path: Path) -> None:
    write(
        tmp_path / "a.js",
        'exports.early = "a early";\nconst b = require("./b.js");\n'
        'console.log("a sees", b.done);\nexports.done = true;',
    )
    write(
        tmp_path / "b.js",
        'const a = require("./a.js");\n'
        'console.log("b sees", a.early, a.done);\nexports.done = true;',
    )
    body = 'const a = require("./a.js");\nfunction main() { console.log("main", a.done); }\n'
    script = write(tmp_path / "agent.js", body)
    output: list[str] = []
    run(script, output=output)
    write(tmp_path / "node_agent.js", body + "main();\n")
    assert "\n".join(output) + "\n" == node(tmp_path / "node_agent.js", stderr=False)
    assert output == ["b sees a early undefined", "a sees true", "main true"]


def test_a_missing_module_lists_where_it_looked_and_says_it_is_the_sandbox(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    script = write(
        tmp_path / "agent.mjs", 'const x = 1;\nimport nope from "nope";\nexport function main() {}'
    )
    err = failure(script, libraries=[lib])
    message = err.fields["error"]
    assert message.startswith("Error: Cannot find module 'nope', looked for:")
    for looked in ("nope", "nope.mjs", "nope/index.mjs", "lib/nope.mjs", "lib/nope/index.js"):
        assert (
            f"\t{tmp_path / looked if looked.startswith('lib') else looked}" in message
            or looked in message
        )
    assert JS_SANDBOX_HINT in message
    assert js_frames(err) == [(str(script), 2, "<script>")]
    assert err.frames[-1].source == 'import nope from "nope";'
    # a require of a missing module throws where it is called, and can be caught
    script = write(
        tmp_path / "agent.js",
        'let found;\ntry { found = require("./nope"); } catch (e) { found = e.message; }'
        '\nfunction main() { return [found, require("./gone")]; }',
    )
    err = failure(script, libraries=[lib])
    assert "Cannot find module './gone'" in err.fields["error"]
    assert js_frames(err)[-1] == (str(script), 3, "main")


@pytest.mark.parametrize(
    "specifier",
    [
        "/etc/passwd",
        "../../../../etc/passwd",
        "node:fs",
        "file:///etc/passwd",
        "a/../../x",
        "..\\\\x",
    ],
)
def test_a_path_out_of_the_roots_is_a_security_error(tmp_path: Path, specifier: str) -> None:
    lib = tmp_path / "lib"
    write(lib / "x.mjs", "export default 1;")
    script = write(
        tmp_path / "s" / "agent.mjs",
        f'import x from "{specifier}";\nexport function main() {{ return x; }}',
    )
    err = failure(script, libraries=[lib])
    assert err.code == "security/access_denied", err
    assert err.fields["operation"] == "import"
    assert str(lib) in err.message  # the roots are named
    assert js_frames(err)[-1][:2] == (str(script), 1)
    script = write(
        tmp_path / "s" / "agent.js",
        f'let r;\ntry {{ require("{specifier}"); }} catch (e) {{ r = e.code; }}\n'
        "function main() { return r; }",
    )
    assert run(script, libraries=[lib]) == "security/access_denied"


def test_a_dynamic_import_of_a_path_is_refused_too(tmp_path: Path) -> None:
    script = write(
        tmp_path / "agent.mjs",
        "export async function main() {\n"
        '  try { await import("/etc/passwd"); }\n'
        "  catch (e) { return [e.code, e.fields.operation]; }"
        "\n}\nexport const nothing = import.meta.url;",
    )
    assert run(script) == ["security/access_denied", "import"]


def test_a_symlink_out_of_a_root_is_a_security_error(tmp_path: Path) -> None:
    lib, outside = tmp_path / "lib", tmp_path / "outside"
    write(outside / "secret.mjs", 'export default "secret";')
    write(outside / "secret.js", 'module.exports = "secret";')
    lib.mkdir()
    os.symlink(outside / "secret.mjs", lib / "secret.mjs")
    os.symlink(outside, lib / "pkg")
    script = write(
        tmp_path / "s" / "agent.mjs",
        'import s from "secret";\nexport function main() { return s; }',
    )
    err = failure(script, libraries=[lib])
    assert err.code == "security/access_denied"
    assert "outside its library root" in err.message
    script = write(tmp_path / "s" / "agent.js", 'const s = require("pkg/secret");')
    assert failure(script, libraries=[lib]).code == "security/access_denied"


def test_a_relative_import_cannot_leave_its_root_through_a_module(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    write(tmp_path / "private.mjs", 'export default "private";')
    write(lib / "sneaky.mjs", 'export {default} from "../private.mjs";')
    script = write(
        tmp_path / "s" / "agent.mjs",
        'import p from "sneaky";\nexport function main() { return p; }',
    )
    err = failure(script, libraries=[lib])
    assert err.code == "security/access_denied"
    assert "leads out of the importing module's library root" in err.message
    assert js_frames(err) == [
        (str(script), 1, "<script>"),
        (str(lib / "sneaky.mjs"), 1, "<module>"),
    ]


# -- errors in modules --------------------------------------------------------------------


def _library_error_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    lib = tmp_path / "lib"
    write(
        lib / "util.mjs",
        "export function check(x) {\n  if (x < 0) {\n"
        '    throw new RangeError("negative: " + x);\n  }\n  return x;\n}',
    )
    write(
        lib / "util.js",
        "exports.check = function check(x) {\n  if (x < 0) {\n"
        '    throw new RangeError("negative: " + x);\n  }\n  return x;\n};',
    )
    script = write(
        tmp_path / "agent.mjs",
        'import {check} from "util";\nexport function main() {\n  return check(-1);\n}',
    )
    required = write(
        tmp_path / "agent.js",
        'const {check} = require("util");\nfunction main() {\n  return check(-1);\n}',
    )
    return lib, script, required


@pytest.mark.parametrize("kind", ["import", "require"])
def test_a_library_error_is_at_its_own_file_and_line(tmp_path: Path, kind: str) -> None:
    lib, script, required = _library_error_files(tmp_path)
    util = str(lib / ("util.mjs" if kind == "import" else "util.js"))
    script = script if kind == "import" else required
    err = failure(script, libraries=[lib])
    data = err.to_dict()
    assert err.code == "script/javascript"
    assert data["fields"]["error"] == "RangeError: negative: -1"
    assert (data["fields"]["script"], data["fields"]["script_line"]) == (util, 3)
    assert err.message.startswith(f"JavaScript error in {util}: RangeError")
    assert [(f["file"], f["line"], f["source"]) for f in data["frames"]] == [
        (str(script), 3, "return check(-1);"),
        (util, 3, 'throw new RangeError("negative: " + x);'),
    ]
    assert data["frames"][-1]["function"] == "check"
    assert json.loads(json.dumps(data))["frames"][-1]["file"] == util
    assert f"at check ({util}:3:" in data["fields"]["stack_trace"]
    text = render_text(err)
    assert f"{util}:3" in text and 'throw new RangeError("negative: " + x);' in text
    python = "".join(traceback.format_exception(err))
    assert f'File "{util}", line 3, in check [javascript]' in python
    assert 'throw new RangeError("negative: " + x);' in python


def test_a_script_sees_each_modules_file_in_its_stack(tmp_path: Path) -> None:
    lib, _, _ = _library_error_files(tmp_path)
    script = write(
        tmp_path / "agent.mjs",
        'import {check} from "util";\n'
        "export function main() {\n"
        "  try { check(-1); } catch (e) { return e.stack; }\n"
        "}",
    )
    stack = run(script, libraries=[lib])
    assert stack.splitlines()[:2] == [
        f"    at check ({lib / 'util.mjs'}:3:41)",
        f"    at main ({script}:3:9)",
    ]


@pytest.mark.parametrize("kind", ["import", "require"])
def test_a_module_that_fails_to_compile_is_compilation_failed_at_its_line(
    tmp_path: Path, kind: str
) -> None:
    lib = tmp_path / "lib"
    name = "broken.mjs" if kind == "import" else "broken.js"
    write(lib / name, "const x = 1;\nconst = 3;\n")
    text = (
        'const y = 2;\nimport b from "broken";\n'
        if kind == "import"
        else 'const y = 2;\nconst b = require("broken");\n'
    )
    script = write(tmp_path / ("agent.mjs" if kind == "import" else "agent.js"), text)
    err = failure(script, libraries=[lib])
    assert err.code == "script/compilation_failed"
    assert err.fields["file"] == str(lib / name) and err.fields["line"] == 2
    assert err.fields["source_code"] == "const = 3;"
    assert err.frames[-1].file == str(lib / name) and err.frames[-1].line == 2


def test_an_import_form_the_engine_cannot_read_is_compilation_failed_at_its_line(
    tmp_path: Path,
) -> None:
    write(tmp_path / "lib.mjs", "export const a = 1;\nexport default\n")
    write(tmp_path / "odd.mjs", "\nimport {a} from ;\n")
    for name in ("odd.mjs",):
        script = write(tmp_path / "agent.mjs", f'import "./{name}";\n')
        err = failure(script)
        assert err.code == "script/compilation_failed"
        assert (err.fields["file"], err.fields["line"]) == (str(tmp_path / name), 2)


def test_importing_a_name_a_module_does_not_export_is_a_syntax_error(tmp_path: Path) -> None:
    write(tmp_path / "lib.mjs", "export const a = 1;\n")
    script = write(tmp_path / "agent.mjs", '\nimport {a, b} from "./lib.mjs";\n')
    err = failure(script)
    assert err.code == "script/compilation_failed"
    assert (err.fields["file"], err.fields["line"]) == (str(script), 2)
    assert "has no export named 'b'" in err.fields["error"]


def test_a_module_throwing_while_loading_shows_the_import_chain(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    write(lib / "outer.mjs", 'import inner from "inner";\nexport default inner;\n')
    write(lib / "inner.mjs", 'const t = {};\nthrow new Error("inner failed");\nexport default t;\n')
    script = write(tmp_path / "agent.mjs", 'const a = 1;\nimport o from "outer";\n')
    err = failure(script, libraries=[lib])
    assert js_frames(err) == [
        (str(script), 2, "<script>"),
        (str(lib / "outer.mjs"), 1, "<module>"),
        (str(lib / "inner.mjs"), 2, "<module>"),
    ]
    python = "".join(traceback.format_exception(err))
    assert 'import inner from "inner";' in python and 'throw new Error("inner failed");' in python
    write(lib / "outer.js", 'const inner = require("inner");\nmodule.exports = {};\n')
    write(lib / "inner.js", 'const t = {};\nthrow new Error("inner failed");\n')
    script = write(tmp_path / "agent.js", 'const a = 1;\nconst o = require("outer");\n')
    err = failure(script, libraries=[lib])
    assert js_frames(err) == [
        (str(script), 2, "<script>"),
        (str(lib / "outer.js"), 1, "<module>"),
        (str(lib / "inner.js"), 2, "<module>"),
    ]


def test_dynamic_import_loads_a_graph_when_called_and_rejects_what_is_missing(
    tmp_path: Path,
) -> None:
    write(
        tmp_path / "late.mjs",
        'import {x} from "./dep.mjs";\nconsole.log("late");\nexport const y = x + 1;',
    )
    write(tmp_path / "dep.mjs", 'console.log("dep");\nexport const x = 1;')
    script = write(
        tmp_path / "agent.mjs",
        'export async function main() {\n  console.log("before");\n'
        '  const [a, b] = await Promise.all([import("./late.mjs"), '
        'import("./late.mjs")]);\n'
        '  let missing;\n  try { await import("./none.mjs"); } '
        'catch (e) { missing = e.message.split("\\n")[0]; }\n'
        '  const name = "./d" + "ep.mjs";\n'
        "  return [a.y, a === b, (await import(name)).x, missing];\n}",
    )
    output: list[str] = []
    assert run(script, output=output) == [
        2,
        True,
        1,
        "Cannot find module './none.mjs', looked for:",
    ]
    assert output == ["before", "dep", "late"]


def test_require_needs_a_string_literal(tmp_path: Path) -> None:
    write(tmp_path / "a.js", "module.exports = 1;")
    script = write(
        tmp_path / "agent.js",
        'const known = require("./a.js");\n'
        'function main() {\n  const n = "./b.js";\n'
        "  return require(n);\n}",
    )
    err = failure(script)
    assert "with a string literal" in err.fields["error"]
    assert js_frames(err)[-1] == (str(script), 4, "main")


def test_a_script_given_as_text_imports_from_the_roots_only(tmp_path: Path) -> None:
    write(tmp_path / "lib" / "m.mjs", "export default 7;")
    with Host(libraries=[tmp_path / "lib"], on_output=lambda line: None) as host:
        assert (
            host.run_source(
                'import m from "m";\nexport function main() { return m; }',
                "javascript",
                "inline.mjs",
            )
            == 7
        )
        with pytest.raises(SpellError) as caught:
            host.run_source('import m from "./m.mjs";', "javascript", "inline.mjs")
    assert caught.value.code == "security/access_denied"


# -- a real library -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["import", "require"])
def test_mustache_through_import_and_require(tmp_path: Path, kind: str) -> None:
    lib = tmp_path / "lib"
    shutil.copytree(VENDOR / "mustache", lib / "mustache")
    body = (
        'import Mustache from "mustache";\n'
        if kind == "import"
        else 'const Mustache = require("mustache");\n'
    )
    body += (
        "function main() {\n"
        '  const view = {name: "<b>Ada</b>", items: [{n: 1}, {n: 2}], lazy: () => "L"};\n'
        '  return Mustache.render("Hi {{name}} {{{name}}}: '
        '{{#items}}[{{n}}]{{/items}} {{lazy}} {{^none}}none{{/none}}", view);\n}\n'
    )
    name = "agent.mjs" if kind == "import" else "agent.js"
    script = write(
        tmp_path / name,
        body.replace("function main", "export function main") if kind == "import" else body,
    )
    result = run(script, libraries=[lib])
    assert result == "Hi &lt;b&gt;Ada&lt;&#x2F;b&gt; <b>Ada</b>: [1][2] L none"
    if NODE is not None:
        write(tmp_path / "node_modules" / ".keep", "")
        shutil.copytree(VENDOR / "mustache", tmp_path / "node_modules" / "mustache")
        check = write(
            tmp_path / ("node_agent.mjs" if kind == "import" else "node_agent.js"),
            body + "console.log(main());\n",
        )
        assert node(check) == result + "\n"


def test_a_mustache_template_error_is_at_mustaches_line(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    shutil.copytree(VENDOR / "mustache", lib / "mustache")
    script = write(
        tmp_path / "agent.js",
        'const Mustache = require("mustache");\n'
        "function main() {\n"
        '  return Mustache.render("{{#open}}", {});\n}',
    )
    err = failure(script, libraries=[lib])
    assert err.fields["error"] == 'Error: Unclosed section "open" at 9'
    mustache = str(lib / "mustache" / "mustache.js")
    source = (VENDOR / "mustache" / "mustache.js").read_text().split("\n")
    innermost = err.frames[-1]
    assert innermost.file == mustache
    assert "Unclosed section" in source[innermost.line - 1]
    assert js_frames(err)[0] == (str(script), 3, "main")


# -- hints ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "source", "message"),
    [
        (
            "agent.js",
            "function main() { return process.env.HOME; }",
            "ReferenceError: process is not defined",
        ),
        (
            "agent.mjs",
            'export function main() { return require("x"); }',
            "ReferenceError: require is not defined",
        ),
        ("agent.js", 'import x from "y";\nfunction main() {}', "Unexpected identifier 'x'"),
    ],
)
def test_what_the_sandbox_removed_keeps_the_message_and_adds_a_hint(
    tmp_path: Path, name: str, source: str, message: str
) -> None:
    script = write(tmp_path / name, source)
    err = failure(script)
    assert err.fields["error"].startswith(message)
    assert "polyspell's sandbox" in str(err)


# -- the example ---------------------------------------------------------------------------


def test_the_example_agent_and_its_traceback_through_the_library(isolation: str) -> None:
    from tests.cli import ROOT, polyspell

    if isolation != "thread":
        pytest.skip("the CLI chooses its own isolation: one run is enough")
    done = polyspell(
        "run",
        "scripts/lib_agent.mjs",
        "--lib",
        "scripts/lib",
        "--tools",
        "scripts/tools.py",
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["top_word"] == "the"
    done = polyspell(
        "run",
        "scripts/lib_agent.mjs",
        "--lib",
        "scripts/lib",
        "--tools",
        "scripts/tools.py",
        "city=Nowhere",
        cwd=ROOT,
    )
    assert done.returncode == 1
    assert "javascript scripts/lib/textstats.mjs:29:" in done.stderr
    assert "throw new RangeError(`no sentence in the text" in done.stderr
    assert "JavaScript error in scripts/lib/textstats.mjs: RangeError" in done.stderr


# -- a hostile script ----------------------------------------------------------------------


def test_a_symlink_loop_and_a_fifo_are_modules_not_found(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "loop1.mjs").symlink_to("loop2.mjs")
    (lib / "loop2.mjs").symlink_to("loop1.mjs")
    os.mkfifo(lib / "pipe.mjs")  # opening it for reading would wait for a writer
    for name in ("loop1", "pipe"):
        script = write(tmp_path / "s" / "agent.mjs", f'import x from "{name}";')
        err = failure(script, libraries=[lib], timeout=5)
        assert f"Cannot find module '{name}'" in err.fields["error"]


@pytest.mark.parametrize("specifier", ["a\\nb", "a\\u0000b", "\\u202eevil", "x" * 300])
def test_a_specifier_with_control_characters_or_too_long_is_refused(
    tmp_path: Path, specifier: str
) -> None:
    script = write(
        tmp_path / "agent.mjs",
        "export async function main() {\n"
        f'  try {{ await import("{specifier}"); }} catch (e) {{ return e.code; }}\n}}',
    )
    assert run(script) == "security/access_denied"


def test_a_script_cannot_make_a_module_request_of_its_own(tmp_path: Path) -> None:
    write(tmp_path / "m.mjs", "export default 1;")
    script = write(
        tmp_path / "agent.mjs",
        'import m from "./m.mjs";\nexport async function main() {\n'
        '  try { await tools.call(["import", 0, "/etc/passwd"]); } catch (e) { return e.name; }\n'
        "}",
    )
    assert run(script) == "TypeError"


def test_a_json_file_imported_with_its_attributes_is_its_value(tmp_path: Path) -> None:
    write(tmp_path / "data.json", '{"a": [1, 2], "b": "x"}')
    script = write(
        tmp_path / "agent.mjs",
        'import data from "./data.json" with { type: "json" };\n'
        "export function main() { return data; }",
    )
    assert run(script) == {"a": [1, 2], "b": "x"}


def test_imports_that_share_a_module_with_top_level_await_wait_for_it(tmp_path: Path) -> None:
    def slow(n: int) -> int:
        """A tool the shared module awaits while it loads."""
        return n

    write(tmp_path / "shared.mjs", "export const v = await tools.slow({n: 5});")
    write(tmp_path / "a.mjs", 'import {v} from "./shared.mjs";\nexport const a = v + 1;')
    write(tmp_path / "b.mjs", 'import {v} from "./shared.mjs";\nexport const b = v + 2;')
    script = write(
        tmp_path / "agent.mjs",
        "export async function main() {\n"
        '  const [a, b] = await Promise.all([import("./a.mjs"), import("./b.mjs")]);\n'
        "  return [a.a, b.b];\n}",
    )
    assert run(script, tools=[slow]) == [6, 7]


def test_a_binding_read_before_its_module_ran_fails_at_the_line_that_reads_it(
    tmp_path: Path,
) -> None:
    write(tmp_path / "a.mjs", 'import {b} from "./b.mjs";\nexport const late = 1;')
    write(
        tmp_path / "b.mjs", 'import {late} from "./a.mjs";\nconsole.log(late);\nexport const b = 1;'
    )
    script = write(tmp_path / "agent.mjs", 'import "./a.mjs";\n')
    err = failure(script)
    assert err.fields["error"].startswith("ReferenceError: late is not initialized")
    assert js_frames(err) == [
        (str(script), 1, "<script>"),
        (str(tmp_path / "a.mjs"), 1, "<module>"),
        (str(tmp_path / "b.mjs"), 2, "<module>"),
    ]


# -- the scanner (engines/javascript_modules.py) --------------------------------------------

TRICKY = """// import fake from "comment";
/* export const nope = 1; require("in comment") */
import real from "./real.mjs";
const re = /["'`]import x from "y"/g, half = 10 / 2 / 1;
if (half) /'/.test("'");
const t = `a ${`b ${{a: "}"}.a} c`} import z from "w" ${"}"}`;
const s = "export const no = 1; require('no')", u = x.import, v = obj.require("no");
export const [first, second] = [1, 2], {third, k: fourth} = {third: 3, k: 4};
export async function later() { return import("./dyn.mjs"); }
export default class Thing {}
export { half as "half value" };
"""


def test_the_scanner_reads_only_real_imports_and_exports() -> None:
    from engines.javascript_modules import es_module, requires

    module = es_module(TRICKY)
    assert [item.specifier for item in module.imports] == ["./real.mjs"]
    assert module.bindings == {"real": (0, "default")}
    assert module.exports == {
        "first": "first",
        "second": "second",
        "third": "third",
        "fourth": "fourth",
        "later": "later",
        "default": "Thing",
        "half value": "half",
    }
    assert module.dynamic
    assert [item.specifier for item in requires(TRICKY)] == []
    cjs = 'const a = require("./a");\nif (a) /"/.test(a);\nconst b = require(\'./b\');'
    assert [(i.specifier, i.line) for i in requires(cjs)] == [("./a", 1), ("./b", 3)]


@pytest.mark.parametrize("name", ["TRICKY", "mustache.mjs"])
def test_the_transform_keeps_every_line_and_column(name: str) -> None:
    from engines.javascript_modules import es_module

    source = TRICKY if name == "TRICKY" else (VENDOR / "mustache" / name).read_text()
    body = es_module(source).body
    assert len(body) == len(source) or "export default" in source
    before, after = source.split("\n"), body.split("\n")
    assert len(before) == len(after)
    for old, new in zip(before, after, strict=True):
        if not any(word in old for word in ("import", "export")):
            assert old == new
