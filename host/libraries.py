"""Library roots and module resolution: the host finds, checks and reads every module.

A script's ``require "json"`` (Lua) suspends the script with a request of the reserved
kind ``"module"`` (see ``engines.base.ToolRequest``); the run answers it from here with
the module's file name and source text, which the engine loads under that name. Engines
never open files: module resolution is the host's.

Roots, searched in order: the script's own folder (unless switched off:
``Host(script_dir_library=False)``, ``--no-script-dir-lib``, ``script_dir_library =
false`` in a config file), then the roots given (``Host(libraries=[...])``, ``--lib DIR``),
then a config file's ``libraries``, then a plan's. A root that does not exist is
``configuration/file_not_found`` when the host is made, before anything runs. A Lua tools
file's ``require`` searches its own folder in place of the script's (:func:`answer` is
the one reply, for runs and for the listing of a tools file's functions).

Names. A module name is a name, never a path: dot-separated parts (``pl.pretty`` is
``pl/pretty.lua``), each non-empty, without ``/``, ``\\``, ``:``, NUL or any other control
character, at most :data:`MAX_NAME_LENGTH` characters. Anything else (``../../etc/passwd``,
``/etc/passwd``, a name with a newline) is refused with ``security/access_denied`` naming
the module and the roots, and so is a file that resolves (after symlinks) outside its root.

JavaScript. An ``import`` (``.mjs``) or ``require`` (``.js``) asks the same way, with a
specifier in place of a name (:meth:`Libraries.resolve_js`: ``./x.mjs`` relative to the
importing file, in its root; ``dayjs`` in every root; a folder's ``package.json`` entry or
index file); the reply also says where the file is, for the imports it makes in turn.

Reading. Sources are read by the host, at most :data:`MAX_MODULE_BYTES` each, as UTF-8,
and cached per host (:class:`Libraries`) by real path, modification time and size: a plan
of a thousand tasks reads a module once, and a changed file is read again.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import engines
from bridge import ConfigurationError, SecurityError, SpellError
from bridge.envelope import error_envelope
from engines import ToolReply, ToolRequest
from engines.base import protocol_violation, sandbox_hint

MAX_MODULE_BYTES = 8 << 20  # a module's source: lodash is 0.5 MiB; 8 MiB is far past any
MAX_NAME_LENGTH = 256  # characters of a module name
MAX_CACHED_BYTES = 64 << 20  # sources a host keeps; the least recently used go first
# The files a module name may be, per language, as Lua's package.path writes them.
LUA_TEMPLATES = ("?.lua", "?/init.lua")
# What a JavaScript specifier's path may be followed by, per style (import or require),
# and the index files of a folder (see Libraries.resolve_js).
JS_SUFFIXES = {"import": ("", ".mjs", ".js"), "require": ("", ".js", ".cjs", ".json")}
JS_INDEX = {"import": ("index.mjs", "index.js"), "require": ("index.js",)}
SANDBOX_HINT = sandbox_hint(
    "require searches only the library roots, the script's folder and those given with "
    "--lib DIR, Host(libraries=[...]) or libraries = [...] in a config file or plan")

JS_SANDBOX_HINT = sandbox_hint(
    "modules are looked for only in the library roots, the script's folder and those given "
    "with --lib DIR, Host(libraries=[...]) or libraries = [...] in a config file or plan")


@dataclass(frozen=True)
class Root:
    """A library root: the folder as it is named in file names (``shown``) and its real
    path (symlinks resolved), which every module file must stay inside."""

    shown: str
    real: str

    @property
    def inside(self) -> str:
        """What the real path of every file inside the root starts with."""
        return self.real if self.real.endswith(os.sep) else self.real + os.sep

    def file_name(self, relative: str) -> str:
        """The name a module file under this root goes by in frames and messages."""
        return relative if self.shown in ("", ".") else os.path.join(self.shown, relative)


@dataclass(frozen=True)
class Found:
    """A module found: its file name (as frames name it) and its source text; the index
    of its root in the roots searched and its path in that root (how a JavaScript module
    names the module that imports: see :meth:`Libraries.resolve_js`)."""

    file: str
    source: str
    root: int = -1
    path: str = ""


@dataclass(frozen=True)
class Missing:
    """A module found in no root: the files looked for, in order."""

    tried: tuple[str, ...]


def make_root(path: str | os.PathLike[str], *, key: str = "libraries") -> Root:
    """A root for the folder ``path``: ``configuration/file_not_found`` if there is none,
    ``configuration/invalid_value`` if it is not a folder."""
    if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
        raise ConfigurationError.InvalidValue(
            key=key, value=repr(path)[:200],
            reason=f"a library root is the path of a folder (str or Path), not "
                   f"{type(path).__name__}")
    shown = os.fspath(path)
    if "\0" in shown:
        raise ConfigurationError.InvalidValue(key=key, value=repr(shown)[:200],
                                              reason="a folder's path has no NUL character")
    if not os.path.exists(shown):
        raise ConfigurationError.FileNotFound(f"Library folder not found: {shown}",
                                              path=shown)
    if not os.path.isdir(shown):
        raise ConfigurationError.InvalidValue(
            key=key, value=shown, reason=f"a library root is a folder; {shown} is not one")
    return Root(shown.rstrip("/") or "/", os.path.realpath(shown))


def script_root(script: str | os.PathLike[str]) -> Root:
    """The folder of a script file as a root (its name as the script's path names it)."""
    folder = os.path.dirname(os.fspath(script))
    return Root(folder, os.path.realpath(folder or "."))


def check_name(name: Any, roots: Sequence[Root]) -> list[str]:
    """The parts of module name ``name`` (``pl.pretty`` -> ``["pl", "pretty"]``), or
    ``security/access_denied`` when it is not a module name (a path, a control character)."""
    why = None
    if not isinstance(name, str) or not name:
        why = "a module name is a non-empty string"
    elif len(name) > MAX_NAME_LENGTH:
        why = f"a module name is at most {MAX_NAME_LENGTH} characters"
    elif name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        why = "a module name is a name, not an absolute path"
    elif ".." in name or "/" in name or "\\" in name:
        why = ("a module name is a name, not a path: dot-separated parts (pl.pretty), "
               "without '..', '/' or '\\'")
    elif any(not ch.isprintable() for ch in name) or ":" in name:
        why = "a module name has no control characters (NUL, newline...) and no ':'"
    elif name.startswith(".") or name.endswith("."):
        why = "a module name does not start or end with '.'"
    if why is not None:
        raise refused(str(name), roots, why)
    return name.split(".")


def refused(name: str, roots: Sequence[Root], why: str,
            operation: str = "require") -> SpellError:
    """``security/access_denied`` for a module that may not be loaded, naming the roots
    (``operation``: "require" or "import")."""
    shown = _shown_name(str(name))
    where = ", ".join(root.shown or "." for root in roots) or "none"
    return SecurityError.AccessDenied(
        f"Access denied: {operation} {shown}: {why} (library roots: {where})",
        resource=shown, operation=operation, reason=f"{why} (library roots: {where})")


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def check_specifier(specifier: Any, roots: Sequence[Root], operation: str) -> str:
    """A JavaScript module specifier, checked: ``./x``, ``../x`` or a bare name whose
    ``/``-separated parts are names. Anything else is ``security/access_denied``."""
    why = None
    if not isinstance(specifier, str) or not specifier:
        why = "a module specifier is a non-empty string"
    elif len(specifier) > MAX_NAME_LENGTH:
        why = f"a module specifier is at most {MAX_NAME_LENGTH} characters"
    elif any(not ch.isprintable() for ch in specifier) or "\\" in specifier:
        why = "a module specifier has no control characters (NUL, newline...) and no '\\'"
    elif specifier.startswith("/") or _URL.match(specifier):
        why = ("a module specifier is relative (./util.mjs) or a bare name (dayjs), not an "
               "absolute path or a URL")
    elif specifier in (".", "..") or specifier.startswith(("./", "../")):
        return specifier if specifier not in (".", "..") else specifier + "/"
    elif any(part in ("", ".", "..") for part in specifier.split("/")):
        why = "a bare module name is made of names: no empty part, no '.' or '..'"
    if why is not None:
        raise refused(str(specifier), roots, why, operation)
    return specifier


def package_entry(text: str, style: str) -> str | None:
    """The file a folder's ``package.json`` (``text``) names as its entry for ``style``:
    for an import, ``exports["."].import``, ``exports.import``, ``module``, then ``main``;
    for a require, ``exports["."].require``, ``exports.require``, a string ``exports``
    (or ``exports["."]``), then ``main``. None when it names none (or is not JSON)."""
    try:
        package = json.loads(text)
    except ValueError:
        return None
    if not isinstance(package, dict):
        return None
    exports = package.get("exports")
    choices: list[Any] = []
    for table in (exports.get(".") if isinstance(exports, dict) else None, exports):
        if isinstance(table, dict):
            choices += [table.get(style), table.get("default")]
        elif isinstance(table, str):
            choices.append(table)
    if style == "import":
        choices.append(package.get("module"))
    choices.append(package.get("main"))
    for choice in choices:
        if isinstance(choice, dict):  # {"import": {"types": ..., "default": "x.mjs"}}
            choice = choice.get("default")
        if isinstance(choice, str) and choice and "\0" not in choice:
            return choice
    return None


def _shown_name(name: str) -> str:
    text = name if len(name) <= 200 else name[:197] + "..."
    return repr(text)


class SourceCache:
    """Module sources read from disk, by real path, kept while the file's modification
    time and size stay the same (at most :data:`MAX_CACHED_BYTES`, least recently used
    dropped first). Thread-safe: runs resolve modules from their own threads."""

    def __init__(self) -> None:
        self.reads = 0  # files read from disk (the cache's misses)
        self._files: OrderedDict[str, tuple[int, int, str]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def read(self, real: str, shown: str, within: str | None = None) -> str:
        """The text of file ``real`` (named ``shown`` in errors): from the cache while
        its modification time and size are the same, else read (bounded, UTF-8).

        ``within``: what the path of the file opened must start with. ``real`` was
        resolved before it is opened: a folder on the way swapped for a symlink in
        between would have the open follow it out of the root, so the file opened is
        checked by its own path (``/proc/self/fd``, Linux; elsewhere the check is the
        resolution's alone).

        One read at a time, under the cache's lock: runs that start together (a plan's
        tasks) wait for the first one's read instead of each reading the file.
        """
        with self._lock:
            return self._read(real, shown, within)

    def _read(self, real: str, shown: str, within: str | None) -> str:
        try:
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
                         | getattr(os, "O_NONBLOCK", 0))
        except OSError as exc:
            raise ConfigurationError.LoadFailed(path=shown, reason=exc.strerror or str(exc)) \
                from None
        try:
            if within is not None and not _opened_within(fd, within):
                raise _Outside()
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ConfigurationError.LoadFailed(path=shown, reason="not a regular file")
            key = (info.st_mtime_ns, info.st_size)
            cached = self._files.get(real)
            if cached is not None and cached[:2] == key:
                self._files.move_to_end(real)
                return cached[2]
            if info.st_size > MAX_MODULE_BYTES:
                raise _too_large(shown, info.st_size)
            chunks, size = [], 0
            while size <= MAX_MODULE_BYTES:  # bounded, whatever the file grew to since
                chunk = os.read(fd, MAX_MODULE_BYTES + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            data = b"".join(chunks)
        finally:
            os.close(fd)
        if len(data) > MAX_MODULE_BYTES:
            raise _too_large(shown, len(data))
        text = decode_source(data, shown)
        self.reads += 1
        old = self._files.pop(real, None)
        if old is not None:
            self._bytes -= len(old[2])
        self._files[real] = (*key, text)
        self._bytes += len(text)
        while self._bytes > MAX_CACHED_BYTES and len(self._files) > 1:
            _, (_, _, dropped) = self._files.popitem(last=False)
            self._bytes -= len(dropped)
        return text


class _Outside(Exception):
    """The file opened is not where its path was resolved to (see SourceCache.read)."""


def _opened_within(fd: int, within: str) -> bool:
    """Whether the file open as ``fd`` has a path that starts with ``within`` (true where
    the system does not say: no ``/proc``)."""
    try:
        opened = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return True
    return opened.startswith(within)


class Libraries:
    """A host's library roots and its :class:`SourceCache` (shared by all its runs, and
    by the hosts a coordinator makes for its plans).

    ``roots`` are searched after the script's folder (when ``script_dir`` is true) for
    every run of a script file.
    """

    def __init__(self, roots: Iterable[str | os.PathLike[str]] = (), *,
                 script_dir: bool = True, cache: SourceCache | None = None) -> None:
        if not isinstance(script_dir, bool):
            raise ConfigurationError.InvalidValue(
                key="script_dir_library", value=repr(script_dir)[:200],
                reason="script_dir_library is True or False")
        if isinstance(roots, (str, bytes, os.PathLike)):
            raise ConfigurationError.InvalidValue(
                key="libraries", value=repr(roots)[:200],
                reason="libraries is a list of folders: put this path in a list")
        try:
            given = list(roots)
        except TypeError:
            raise ConfigurationError.InvalidValue(
                key="libraries", value=repr(roots)[:200],
                reason=f"libraries is a list of folders, not {type(roots).__name__}") from None
        self.roots: list[Root] = [make_root(path) for path in given]
        self.script_dir = script_dir
        self.cache = cache if cache is not None else SourceCache()

    def with_roots(self, roots: Iterable[str | os.PathLike[str]]) -> Libraries:
        """These libraries with more roots after their own, sharing their cache."""
        more = Libraries(roots, script_dir=self.script_dir, cache=self.cache)
        more.roots = [*self.roots, *more.roots]
        return more

    def roots_for(self, script: str | os.PathLike[str] | None) -> list[Root]:
        """The roots a run of ``script`` (a file's path; None for source text) searches."""
        if script is None or not self.script_dir:
            return list(self.roots)
        return [script_root(script), *self.roots]

    def resolve(self, name: Any, roots: Sequence[Root],
                templates: Sequence[str] = LUA_TEMPLATES) -> Found | Missing:
        """Find module ``name`` in ``roots``: the first file of the first root that has
        one. Raises ``security/access_denied`` for a name that is not a module name or a
        file outside its root, ``configuration/load_failed`` for a file that cannot be
        read (too large, not UTF-8, unreadable)."""
        relative = "/".join(check_name(name, roots))
        tried: list[str] = []
        for index, root in enumerate(roots):
            for template in templates:
                found = self._file(root, index, template.replace("?", relative), name,
                                   roots, tried)
                if found is not None:
                    return found
        return Missing(tuple(tried))

    def _file(self, root: Root, index: int, path: str, name: str, roots: Sequence[Root],
              tried: list[str], operation: str = "require") -> Found | None:
        """The module file ``path`` (relative, normalised) of ``root``, read; None (and
        its name added to ``tried``) when there is no such file. A file that resolves
        outside its root is ``security/access_denied``."""
        shown = root.file_name(path)
        candidate = os.path.join(root.real, path)
        if not os.path.lexists(candidate):
            tried.append(shown)
            return None
        try:
            real = os.path.realpath(candidate)
        except OSError as exc:  # a link changed under realpath (EINVAL, ENOENT)
            raise ConfigurationError.LoadFailed(
                path=shown, reason=exc.strerror or str(exc)) from None
        if not real.startswith(root.inside) and real != root.real:
            raise refused(name, roots, f"{shown} resolves to a file outside its "
                                       f"library root", operation)
        if not os.path.isfile(real):
            tried.append(shown)
            return None
        try:
            return Found(shown, self.cache.read(real, shown, root.inside), index, path)
        except _Outside:
            raise refused(name, roots, f"{shown} resolved to a file outside its "
                                       f"library root as it was opened", operation) from None

    def resolve_js(self, specifier: Any, importer: tuple[int, str] | None,
                   roots: Sequence[Root], style: str) -> Found | Missing:
        """Find the file of a JavaScript ``import`` (``style`` "import") or ``require``
        (``style`` "require") of ``specifier`` by the module ``importer`` (its root's
        index in ``roots`` and its path in that root; None: a script that is in no root).

        A relative specifier (``./util.mjs``, ``../x``) is the importer's folder's file,
        which must stay inside the importer's root; a bare one (``dayjs``,
        ``dayjs/plugin/utc``, ``@scope/pkg``) is looked for in every root in order. The
        files looked for: the path itself, then (see :data:`JS_SUFFIXES`) ``.mjs`` and
        ``.js`` for an import, ``.js``, ``.cjs`` and ``.json`` for a require; a folder's
        ``package.json`` entry (:func:`package_entry`), then its ``index.mjs``/``index.js``
        (import) or ``index.js`` (require). Absolute paths, URLs (``node:fs``,
        ``file:///``), backslashes and control characters are ``security/access_denied``.
        """
        operation = "import" if style == "import" else "require"
        relative = check_specifier(specifier, roots, operation)
        tried: list[str] = []
        if relative.startswith("."):
            if importer is None:
                raise refused(specifier, roots, "a relative specifier names a file next to "
                              "the importing one, and this script is in no library root "
                              "(its folder is a root unless script_dir_library is off)",
                              operation)
            index, path = importer
            joined = posixpath.normpath(posixpath.join(posixpath.dirname(path), relative))
            if joined == ".." or joined.startswith("../") or joined.startswith("/"):
                raise refused(specifier, roots, "it leads out of the importing module's "
                                                "library root", operation)
            places = [(index, joined)]
        else:
            places = [(index, relative) for index in range(len(roots))]
        for index, path in places:
            found = self._js_file(roots, index, path, specifier, style, tried, operation)
            if found is not None:
                return found
        return Missing(tuple(tried))

    def _js_file(self, roots: Sequence[Root], index: int, path: str, specifier: str,
                 style: str, tried: list[str], operation: str) -> Found | None:
        """The file ``path`` of root ``index`` stands for (see :meth:`resolve_js`)."""
        root = roots[index]
        for suffix in JS_SUFFIXES[style]:
            found = self._file(root, index, path + suffix, specifier, roots, tried, operation)
            if found is not None:
                return found
        if path == ".":
            path = ""
        package = self._file(root, index, posixpath.join(path, "package.json"), specifier,
                             roots, [], operation)
        if package is not None:
            entry = package_entry(package.source, style)
            if entry is not None:
                target = posixpath.normpath(posixpath.join(path, entry))
                if target == ".." or target.startswith(("../", "/")):
                    raise refused(specifier, roots, f"{package.file} names an entry outside "
                                                    f"its library root", operation)
                for suffix in ("", *JS_SUFFIXES[style][1:]):
                    found = self._file(root, index, target + suffix, specifier, roots, tried,
                                       operation)
                    if found is not None:
                        return found
        for index_file in JS_INDEX[style]:
            found = self._file(root, index, posixpath.join(path, index_file), specifier, roots,
                               tried, operation)
            if found is not None:
                return found
        return None


def decode_source(data: bytes, file: str) -> str:
    """The text of source ``file`` read as ``data``.

    A language whose source is bytes (``EngineSpec.byte_source``: Lua, where a Latin-1
    string literal is legal) takes any file: bytes that are not UTF-8 are kept as surrogate
    escapes, which its engine turns back into the same bytes. A file of any other language
    that is not UTF-8 is ``configuration/load_failed``.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        language = engines.language_for_path(file)
        spec = engines.spec_of(language) if language is not None else None
        if spec is not None and spec.byte_source:
            return data.decode("utf-8", "surrogateescape")
        raise ConfigurationError.LoadFailed(
            path=file, reason=f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def answer(libraries: Libraries, request: ToolRequest, roots: Sequence[Root],
           ref: Callable[[SpellError], int] | None = None,
           loaded: dict[str, str] | None = None) -> ToolReply:
    """The host's reply to a ``require`` or ``import`` (a request of kind ``"module"``):
    the module's file and text, or a "not found" message (Lua's own for Lua); a refusal
    (a name that is a path, a file outside its root, one too large) is an error envelope,
    with the request's frames. ``ref`` gives errors their refs (a run's), ``loaded``
    collects the files read.

    A JavaScript request's ``params`` are ``{"style": "import" | "require", "importer":
    [root index, path] | None}`` (see :meth:`Libraries.resolve_js`); its reply also says
    where the module is (``"importer"``, for the requests the module makes in turn).
    Lua's are None."""
    params = request.params
    try:
        if params is None:
            found = libraries.resolve(request.tool, roots)
        else:
            style, importer = _js_request(params, roots)
            found = libraries.resolve_js(request.tool, importer, roots, style)
    except SpellError as err:
        err.frames = [*request.frames, *err.frames]
        return ToolReply(request.id, error=error_envelope(err, ref=ref))
    if isinstance(found, Missing):
        message = (not_found_message(request.tool, found.tried) if params is None
                   else js_not_found_message(request.tool, found.tried))
        return ToolReply(request.id, result={"missing": message})
    if loaded is not None:
        loaded.setdefault(found.file, found.source)
    result: dict[str, Any] = {"file": found.file, "source": found.source}
    if params is not None:
        result["importer"] = [found.root, found.path]
    return ToolReply(request.id, result=result)


def _js_request(params: Any, roots: Sequence[Root]) -> tuple[str, tuple[int, str] | None]:
    """The style and importer of a JavaScript module request (made by the engine, never
    by a script's own data), checked all the same."""
    style = params.get("style") if isinstance(params, dict) else None
    importer = params.get("importer") if isinstance(params, dict) else None
    if style not in ("import", "require"):
        raise protocol_violation(f"a module request's style is import or require: {style!r}")
    if importer is None:
        return style, None
    if (not isinstance(importer, list) or len(importer) != 2
            or not isinstance(importer[0], int) or not 0 <= importer[0] < len(roots)
            or not isinstance(importer[1], str)):
        raise protocol_violation(f"a module request's importer is [root, path]: {importer!r}")
    path = posixpath.normpath(importer[1])
    if path.startswith(("../", "/")) or path == "..":
        raise protocol_violation(f"a module request's importer is in its root: {importer!r}")
    return style, (importer[0], path)


def _too_large(shown: str, size: int) -> SpellError:
    return ConfigurationError.LoadFailed(
        path=shown, reason=f"the module is {size} bytes; a module is at most "
                           f"{MAX_MODULE_BYTES} bytes ({MAX_MODULE_BYTES >> 20} MiB)")


def js_not_found_message(specifier: str, tried: Sequence[str]) -> str:
    """A JavaScript module found nowhere: where it was looked for, and the sandbox's hint."""
    lines = [f"Cannot find module '{specifier}', looked for:"]
    lines += [f"\t{path}" for path in tried] or ["\tno library roots to search"]
    return "\n".join([*lines, JS_SANDBOX_HINT])


def not_found_message(name: str, tried: Sequence[str]) -> str:
    """Lua's own message for a module found nowhere, and the sandbox's hint."""
    lines = [f"module '{name}' not found:"]
    lines += [f"\tno file '{path}'" for path in tried] or ["\tno library roots to search"]
    return "\n".join([*lines, SANDBOX_HINT])
