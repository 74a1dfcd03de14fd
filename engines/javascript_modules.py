"""JavaScript modules without a module loader: what the engine hands quickjs instead.

quickjs-ng's Python binding (``quickjs`` 0.17) sets no module loader (``import "./x.mjs"``
fails with ``could not load module``, so no script can read a file) and takes no file
name (``eval``/``module`` take only the text; every source is ``<input>``, and
``//# sourceURL=`` is not honoured). So the engine links modules itself, from texts the
host found and read (host/libraries.py), with two line-preserving transforms made here:

- :func:`es_module`: an ES module's ``import`` declarations are blanked and its
  ``export`` keywords dropped (``export default`` becomes ``const $dflt$ =``, as long);
  the body becomes an async function inside ``with (imports)``, whose getters read the
  imported modules' live bindings; its first statement hands over getters of its own
  exports (so hoisted functions are there before any module runs, as in a cycle of ES
  modules), then it waits for its turn (the prelude runs modules in ES order).
  ``import(x)`` becomes ``$impt$(x)`` and ``import.meta`` ``$impt$.meta``.
- :func:`commonjs`: Node's wrapper, ``(function $module$(exports, require, module,
  __filename, __dirname) {`` on the module's first line.

Each text is prefixed with newlines so that its lines are a range of ``<input>`` lines
no other module uses: :class:`LineMap` turns ``<input>:line:column`` back into the
module's file, line and column.

The scanner is a tokenizer, not a parser: it skips comments, strings, template literals
and regular expressions (``/`` after an operator, a keyword such as ``return``, or at the
start, is a regex), and reads only ``import``/``export`` declarations at the top level and
``require("literal")`` calls.
"""

from __future__ import annotations

import bisect
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

BODY = "$module$"  # the module function's name: its frames say <module>
DEFAULT = "$dflt$"  # export default's binding: as long as what it replaces, see es_module
IMPORT = "$impt$"  # import(...) and import.meta, in a module's scope
EXPORTS = "$xprt$"  # the module's own function's parameter (registers exports, waits)


class ModuleSyntaxError(Exception):
    """An import or export form the scanner cannot read: (message, line, column)."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(message)
        self.message, self.line, self.column = message, line, column


@dataclass
class Token:
    kind: str  # "id", "str", "num", "tpl", "re", "p" (punctuator)
    text: str
    start: int
    end: int
    newline: bool  # a line break before it (automatic semicolons)


_TEMPLATE = re.compile(r"(?:[^`\\$]|\\.|\$(?!\{))*", re.DOTALL)
_REGEX = re.compile(r"/(?:[^/\\\[\n]|\\.|\[(?:[^\]\\\n]|\\.)*\])+/[\w$]*")
_PUNCT = re.compile(
    r">>>=|\.\.\.|===|!==|\*\*=|<<=|>>=|>>>|\?\?=|&&=|\|\|=|=>|==|!=|<=|>="
    r"|&&|\|\||\?\?|\?\.|\+\+|--|<<|>>|\*\*|[-+*/%&|^]=|[^\s]"
)
_CONTROL = {"if", "while", "for", "with"}
# After these a "/" starts a regular expression, not a division.
_BEFORE_REGEX = {
    "return",
    "typeof",
    "instanceof",
    "in",
    "of",
    "new",
    "delete",
    "void",
    "throw",
    "case",
    "do",
    "else",
    "yield",
    "await",
}


_TOKEN = re.compile(
    r"(?P<space>(?:\s+|//[^\n]*|/\*.*?\*/)+)"
    r"|(?P<str>'(?:[^'\\\n]|\\.|\\\n)*'|\"(?:[^\"\\\n]|\\.|\\\n)*\")"
    r"|(?P<id>\#?[A-Za-z_$\u0080-\uffff][\w$\u0080-\uffff]*)"
    r"|(?P<num>\.?\d[\w.]*(?:[eE][+-]\d+)?)"
    r"|(?P<special>[/`}])",
    re.DOTALL,
)


def tokens(source: str) -> list[Token]:
    """The tokens of ``source`` (comments and white space left out)."""
    out: list[Token] = []
    braces: list[int] = []  # per open ${ of a template: the brace depth it opened at
    depth = 0
    i, n = 0, len(source)
    newline = False
    match_token, match_punct, match_regex = _TOKEN.match, _PUNCT.match, _REGEX.match
    parens: list[bool] = []  # per open "(": whether it is the head of an if, while, for
    control = False  # the last token is the ")" of such a head
    while i < n:
        match = match_token(source, i)
        kind = match.lastgroup if match else None
        if kind == "space":
            newline = newline or "\n" in match.group()
            i = match.end()
            continue
        if kind == "special":
            c = source[i]
            if c == "}" and braces and braces[-1] == depth:
                braces.pop()  # the end of a template's ${...}: the template goes on
                i = _template(source, i + 1, braces, depth, out, newline)
                newline = False
                continue
            if c == "`":
                i = _template(source, i + 1, braces, depth, out, newline)
                newline = False
                continue
            allowed = control or _regex_allowed(out)
            match = match_regex(source, i) if c == "/" and allowed else None
            kind = "re" if match else None
        control = False
        if kind is None:  # a punctuator (or an unterminated string: quickjs will say so)
            match = match_punct(source, i)
            kind = "p"
            text = match.group()
            if text in "{([":
                depth += 1
                if text == "(":  # if (...) /re/: a regex after the head's ")"
                    parens.append(bool(out) and out[-1].text in _CONTROL)
            elif text in "})]":
                depth -= 1
                if text == ")" and parens:
                    control = parens.pop()
        end = match.end()
        out.append(Token(kind, match.group(), i, end, newline))
        i, newline = end, False
    return out


def _template(
    source: str, i: int, braces: list[int], depth: int, out: list[Token], newline: bool
) -> int:
    """Scan a template literal from ``i`` (after ` or a ${...}'s }) to its end or its next
    ${ (pushed on ``braces``); returns where scanning goes on."""
    start = i - 1
    end = _TEMPLATE.match(source, i).end()
    if source.startswith("${", end):
        braces.append(depth)
        out.append(Token("tpl", source[start : end + 2], start, end + 2, newline))
        return end + 2
    out.append(Token("tpl", source[start : end + 1], start, min(end + 1, len(source)), newline))
    return end + 1


def _regex_allowed(out: list[Token]) -> bool:
    if not out:
        return True
    last = out[-1]
    if last.kind == "id":
        return last.text in _BEFORE_REGEX
    if last.kind == "p":
        return last.text not in (")", "]", "}", "++", "--")
    return last.kind == "tpl" and last.text.endswith("${")


def _string_value(token: Token) -> str:
    """The value of a string literal token (JSON's escapes cover the common ones)."""
    body = token.text[1:-1]
    if token.text[0] == "'":
        body = body.replace('\\"', '"').replace('"', '\\"').replace("\\'", "'")
    try:
        return json.loads(f'"{body}"')
    except ValueError:
        return body


def _line_column(source: str, offset: int) -> tuple[int, int]:
    line = source.count("\n", 0, offset) + 1
    return line, offset - (source.rfind("\n", 0, offset) + 1) + 1


@dataclass
class Import:
    """One static dependency: ``specifier`` at ``line``:``column`` of its module."""

    specifier: str
    line: int
    column: int


@dataclass
class EsModule:
    """An ES module, transformed (see the module doc).

    ``bindings``: local name -> (import index, imported name, or "*" for the namespace);
    ``exports``: exported name -> local name; ``reexports``: exported name -> (import
    index, name or "*"); ``stars``: import indexes of ``export * from``.
    """

    body: str
    imports: list[Import] = field(default_factory=list)
    bindings: dict[str, tuple[int, str]] = field(default_factory=dict)
    exports: dict[str, str] = field(default_factory=dict)
    reexports: dict[str, tuple[int, str]] = field(default_factory=dict)
    stars: list[int] = field(default_factory=list)
    dynamic: bool = False  # uses import() or import.meta

    @property
    def linked(self) -> bool:
        """Whether a script must be linked (it imports); else quickjs runs it as it is."""
        return bool(self.imports or self.dynamic)

    def wrapper(self) -> str:
        """The function expression the prelude calls with the module's scope object (one
        line, before the body's first line)."""
        getters = [  # named polyspell$...: read too early, they throw from a hidden frame
            f"{json.dumps(name)}: function polyspell$export() {{ return {local}; }}"
            for name, local in self.exports.items()
        ]
        return (
            f"(function (polyspell$scope) {{ with (polyspell$scope) {{ return async "
            f'function {BODY}({EXPORTS}) {{ "use strict"; {EXPORTS}({{'
            f"{', '.join(getters)}}}); await {EXPORTS}.ready; "
        )

    def text(self, main: bool) -> str:
        """The whole function expression (``main``: the script, whose ``main`` function
        the prelude runs, exported or not)."""
        tail = f'\n;{EXPORTS}.main = typeof main === "function" ? main : undefined;' if main else ""
        return self.wrapper() + self.body + tail + "\n}; } })"


def _blank(chars: list[str], start: int, end: int) -> None:
    for k in range(start, end):
        if chars[k] != "\n":
            chars[k] = " "


def _put(chars: list[str], start: int, end: int, text: str) -> None:
    """Write ``text`` over ``start:end`` (blanking the rest), keeping line breaks."""
    _blank(chars, start, end)
    for k, ch in enumerate(text):
        chars[start + k] = ch


class _Cache:
    """Results by source text, for at most :data:`CACHED_CHARS` characters of sources
    (least recently used dropped first): a plan's runs import the same modules, and
    scanning lodash-es's 640 files takes longer than linking them."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()

    def get(self, source: str, make: Callable[[str], Any]) -> Any:
        with self._lock:
            found = self._items.get(source, _NONE)
            if found is not _NONE:
                self._items.move_to_end(source)
                return found
        value = make(source)  # outside the lock: it raises for bad sources, never caches
        with self._lock:
            if source not in self._items:
                self._items[source] = value
                self._chars += len(source)
            while self._chars > CACHED_CHARS and len(self._items) > 1:
                dropped, _ = self._items.popitem(last=False)
                self._chars -= len(dropped)
        return value


_NONE = object()
CACHED_CHARS = 32 << 20
_es_cache, _require_cache = _Cache(), _Cache()


def es_module(source: str) -> EsModule:
    """``source`` (an ES module) transformed (cached by its text; see :func:`_es_module`)."""
    return _es_cache.get(source, _es_module)


def json_module(source: str) -> EsModule:
    """A JSON file imported as an ES module: its value is its default export."""
    return EsModule(
        f"const {DEFAULT} = JSON.parse({json.dumps(source)});", exports={"default": DEFAULT}
    )


def _es_module(source: str) -> EsModule:
    """``source`` (an ES module) transformed; ``ModuleSyntaxError`` for an import or export
    form it cannot read (quickjs reports every other syntax error itself)."""
    toks = tokens(source)
    chars = list(source)
    module = EsModule("")
    depth = 0
    i = 0
    count = len(toks)

    def at(k: int) -> Token | None:
        return toks[k] if k < count else None

    def fail(message: str, k: int) -> ModuleSyntaxError:
        token = at(k) or toks[-1]
        return ModuleSyntaxError(message, *_line_column(source, token.start))

    def expect_string(k: int) -> str:
        token = at(k)
        if token is None or token.kind != "str":
            raise fail("SyntaxError: a module specifier (a string) expected", k)
        return _string_value(token)

    def add_import(k: int) -> int:
        token = toks[k]
        module.imports.append(Import(_string_value(token), *_line_column(source, token.start)))
        return len(module.imports) - 1

    def end_of(k: int) -> int:
        """The end offset of the statement whose last token is k (with its ;)."""
        nxt = at(k + 1)
        return nxt.end if nxt is not None and nxt.text == ";" and nxt.kind == "p" else toks[k].end

    def names_list(k: int) -> tuple[list[tuple[str, str]], int]:
        """``{a, b as c, "x" as d}`` from k (at "{"): [(name, alias)], index after "}"."""
        pairs = []
        k += 1
        while True:
            token = at(k)
            if token is None:
                raise fail("SyntaxError: '}' expected", k - 1)
            if token.text == "}":
                return pairs, k + 1
            name = _string_value(token) if token.kind == "str" else token.text
            alias = name
            if at(k + 1) is not None and at(k + 1).text == "as":  # type: ignore[union-attr]
                alias_token = at(k + 2)
                if alias_token is None:
                    raise fail("SyntaxError: a name expected after 'as'", k + 1)
                alias = (
                    _string_value(alias_token) if alias_token.kind == "str" else alias_token.text
                )
                k += 2
            pairs.append((name, alias))
            k += 1
            if at(k) is not None and at(k).text == ",":  # type: ignore[union-attr]
                k += 1

    while i < count:
        token = toks[i]
        if token.kind == "p":
            if token.text in "{([":
                depth += 1
            elif token.text in "})]":
                depth -= 1
            i += 1
            continue
        if token.kind == "tpl":
            if token.text.endswith("${"):
                depth += 1
            if token.text.startswith("}"):
                depth -= 1
            i += 1
            continue
        if token.kind != "id" or token.text not in ("import", "export"):
            i += 1
            continue
        previous = toks[i - 1] if i else None
        if previous is not None and previous.text in (".", "?."):
            i += 1  # a property: x.import
            continue
        nxt = at(i + 1)
        if token.text == "import":
            if nxt is not None and nxt.text == "(":
                _put(chars, token.start, token.end, IMPORT)
                module.dynamic = True
                i += 1
                continue
            if nxt is not None and nxt.text == ".":
                _put(chars, token.start, token.end, IMPORT)  # import.meta -> $impt$.meta
                module.dynamic = True
                i += 1
                continue
            if depth != 0:
                i += 1
                continue
            i = _import(toks, i, module, chars, names_list, add_import, expect_string, end_of, fail)
            continue
        if depth != 0:
            i += 1
            continue
        i = _export(
            toks, i, module, chars, names_list, add_import, expect_string, end_of, fail, source
        )
    module.body = "".join(chars)
    return module


def _import(toks, i, module, chars, names_list, add_import, expect_string, end_of, fail):
    """One import declaration from toks[i] ("import"): blanked, its bindings recorded."""
    start = toks[i].start
    k = i + 1
    if k < len(toks) and toks[k].kind == "str":  # import "x"
        expect_string(k)
        add_import(k)
        last = _attributes(toks, k + 1, fail)
        _blank(chars, start, end_of(last))
        return last + 1
    bindings: list[tuple[str, str]] = []  # (local, imported name or "*")
    if (k < len(toks) and toks[k].kind == "id" and toks[k].text != "from") or (
        k < len(toks)
        and toks[k].text == "from"
        and k + 1 < len(toks)
        and toks[k + 1].text in (",", "from")
    ):
        bindings.append((toks[k].text, "default"))
        k += 1
        if k < len(toks) and toks[k].text == ",":
            k += 1
    if k < len(toks) and toks[k].text == "*":
        if k + 2 >= len(toks) or toks[k + 1].text != "as":
            raise fail("SyntaxError: 'as' expected after 'import *'", k)
        bindings.append((toks[k + 2].text, "*"))
        k += 3
    elif k < len(toks) and toks[k].text == "{":
        pairs, k = names_list(k)
        bindings += [(alias, name) for name, alias in pairs]
    if k >= len(toks) or toks[k].text != "from":
        raise fail("SyntaxError: 'from' expected in this import", min(k, len(toks) - 1))
    expect_string(k + 1)
    index = add_import(k + 1)
    for local, name in bindings:
        module.bindings[local] = (index, name)
    last = _attributes(toks, k + 2, fail)
    _blank(chars, start, end_of(last))
    return last + 1


def _attributes(toks: list[Token], k: int, fail: Any) -> int:
    """The index of an import's last token: its specifier (at k - 1), or the ``}`` of the
    ``with {type: "json"}`` (or older ``assert {...}``) after it."""
    if (
        k < len(toks)
        and toks[k].text in ("with", "assert")
        and not toks[k].newline
        and k + 1 < len(toks)
        and toks[k + 1].text == "{"
    ):
        for end in range(k + 2, len(toks)):
            if toks[end].text == "}":
                return end
        raise fail("SyntaxError: '}' expected after the import's attributes", k)
    return k - 1


def _export(toks, i, module, chars, names_list, add_import, expect_string, end_of, fail, source):
    """One export from toks[i] ("export"): rewritten, its names recorded."""
    token = toks[i]
    k = i + 1
    nxt = toks[k] if k < len(toks) else None
    if nxt is None:
        raise fail("SyntaxError: unexpected end after 'export'", i)
    if nxt.text == "default":
        after = toks[k + 1] if k + 1 < len(toks) else None
        named = _declared_name(toks, k + 1)
        if named is not None:  # export default function f / class C: a declaration
            _blank(chars, token.start, nxt.end)
            module.exports["default"] = named
        else:
            _put(chars, token.start, nxt.end, f"const {DEFAULT} =")
            module.exports["default"] = DEFAULT
        del after
        return k + 1
    if nxt.text == "*":
        k += 1
        alias = None
        if k < len(toks) and toks[k].text == "as":
            alias = toks[k + 1].text if toks[k + 1].kind != "str" else _string_value(toks[k + 1])
            k += 2
        if k >= len(toks) or toks[k].text != "from":
            raise fail("SyntaxError: 'from' expected after 'export *'", k - 1)
        expect_string(k + 1)
        index = add_import(k + 1)
        if alias is None:
            module.stars.append(index)
        else:
            module.reexports[alias] = (index, "*")
        _blank(chars, token.start, end_of(k + 1))
        return k + 2
    if nxt.text == "{":
        pairs, k = names_list(k)
        if k < len(toks) and toks[k].text == "from":
            expect_string(k + 1)
            index = add_import(k + 1)
            for name, alias in pairs:
                module.reexports[alias] = (index, name)
            _blank(chars, token.start, end_of(k + 1))
            return k + 2
        for name, alias in pairs:
            module.exports[alias] = name
        _blank(chars, token.start, end_of(k - 1))
        return k
    named = _declared_name(toks, k)
    if named is not None:
        module.exports[named] = named
        _blank(chars, token.start, token.end)
        return k
    if nxt.text in ("const", "let", "var"):
        for name in _declared_names(toks, k + 1):
            module.exports[name] = name
        _blank(chars, token.start, token.end)
        return k + 1
    raise fail(f"SyntaxError: unexpected token '{nxt.text}' after 'export'", k)


def _declared_name(toks: list[Token], k: int) -> str | None:
    """The name of ``function f``/``async function f``/``function* f``/``class C`` at k."""
    if k < len(toks) and toks[k].text == "async":
        k += 1
    if k >= len(toks) or toks[k].text not in ("function", "class"):
        return None
    k += 1
    if k < len(toks) and toks[k].text == "*":
        k += 1
    if k < len(toks) and toks[k].kind == "id" and toks[k].text not in ("extends",):
        return toks[k].text
    return None


def _declared_names(toks: list[Token], k: int) -> list[str]:
    """The names a ``const``/``let``/``var`` list from k declares (patterns included)."""
    names: list[str] = []
    depth = 0
    expecting = True  # a binding comes next (after the keyword or a top-level comma)
    in_default = False
    while k < len(toks):
        token = toks[k]
        if (
            depth == 0
            and token.newline
            and not expecting
            and k > 0
            and toks[k - 1].text not in ("=", ",")
            and token.kind != "p"
        ):
            break
        if token.text == ";" and depth == 0:
            break
        if token.text in "{[(" and token.kind == "p":
            depth += 1
        elif token.text in "}])" and token.kind == "p":
            depth -= 1
            if depth < 0:
                break
        elif token.text == "," and token.kind == "p" and depth == 0:
            expecting, in_default = True, False
        elif token.text == "=" and depth == 0:
            in_default, expecting = True, False
        elif token.kind == "id" and expecting and not in_default:
            after = toks[k + 1].text if k + 1 < len(toks) else ""
            if after != ":":  # {a: b}: b is the name (it comes as the next id)
                names.append(token.text)
            if depth == 0:
                expecting = False
        k += 1
    return names


_REQUIRE = re.compile(r"\brequire\b")


def requires(source: str) -> tuple[Import, ...]:
    """The ``require("literal")`` calls of a CommonJS source (not ``x.require(...)``)."""
    if not _REQUIRE.search(source):
        return ()
    return _require_cache.get(source, _requires)


def _requires(source: str) -> tuple[Import, ...]:
    toks = tokens(source)
    found = []
    for k in range(len(toks) - 3):
        token = toks[k]
        if token.kind != "id" or token.text != "require":
            continue
        if k and toks[k - 1].text in (".", "?."):
            continue
        if toks[k + 1].text == "(" and toks[k + 2].kind == "str" and toks[k + 3].text == ")":
            string = toks[k + 2]
            found.append(Import(_string_value(string), *_line_column(source, string.start)))
    return tuple(found)


def commonjs(body: str, json_file: bool = False) -> str:
    """A CommonJS module's function expression (Node's wrapper, on the first line)."""
    if json_file:
        body = f"module.exports = JSON.parse({json.dumps(body)});"
    return f"(function {BODY}(exports, require, module, __filename, __dirname) {{{body}\n}})"


@dataclass
class Segment:
    """The ``<input>`` lines ``first`` on of one module's text (its line 1 at ``first``,
    ``shift`` characters of wrapper before its first line's text)."""

    first: int
    file: str
    lines: list[str]
    shift: int


class LineMap:
    """Where every module's text lies in ``<input>`` lines (see the module doc)."""

    def __init__(self, first: int = 1) -> None:
        self.segments: list[Segment] = []
        self._starts: list[int] = []
        self.next_line = max(first, 2)  # the first line no text has (the script's own
        # lines before it); never 1: the "[" of the array of modules goes on the line before

    def add(self, file: str, lines: list[str], shift: int, span: int) -> int:
        """Place a module's text (``span`` lines, the module's ``lines`` first, its first
        line after ``shift`` characters of wrapper): the ``<input>`` line it starts on."""
        first = self.next_line
        self.segments.append(Segment(first, file, lines, shift))
        self._starts.append(first)
        self.next_line = first + span
        return first

    def place(self, line: int, column: int) -> tuple[str, int, int] | None:
        """The file, line and column of ``<input>`` line ``line``; None: not a module's."""
        at = bisect.bisect_right(self._starts, line) - 1
        if at < 0:
            return None
        segment = self.segments[at]
        local = line - segment.first + 1
        if local > len(segment.lines) + 2:
            return None
        if local == 1:
            column = max(1, column - segment.shift)
        return segment.file, min(local, len(segment.lines)), column

    def source_line(self, file: str, line: int) -> str | None:
        for segment in self.segments:
            if segment.file == file:
                if 1 <= line <= len(segment.lines):
                    return segment.lines[line - 1].strip() or None
                return None
        return None

    _AT = re.compile(r"<input>:(\d+):(\d+)")

    def relocate(self, text: str) -> str:
        """``text`` (a stack) with every module's ``<input>:line:column`` its own."""
        if not self.segments or "<input>:" not in text:
            return text

        def replace(match: re.Match[str]) -> str:
            found = self.place(int(match[1]), int(match[2]))
            if found is None:
                return match.group()
            return f"{found[0]}:{found[1]}:{found[2]}"

        return self._AT.sub(replace, text).replace(f"at {BODY} (", "at <module> (")
