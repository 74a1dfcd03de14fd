"""Recovery policies (and hooks) from a config file: ``polyspell.toml``, or
``[tool.polyspell]`` of a ``pyproject.toml``.

The file's shape (each table is a :class:`host.recovery.ToolRecovery`, field by field)::

    isolation = "process"            # where engines run (Host(isolation=), --isolation win)
    lua_version = "5.4"              # Lua scripts' Lua: 5.5, 5.4, luajit (Host(lua_version=),
                                     # --lua, a plan's and a task's own win)

    [recovery]                       # defaults for every tool
    retry = { attempts = 2 }

    [tools.search]                   # one tool's own policies
    retry = { attempts = 4, backoff = "exponential", initial = 0.05 }
    breaker = { failure_threshold = 3, recovery_timeout = 10 }
    fallback = [ { tool = "search_backup" }, { value = [] } ]
    timeout = { attempt = 2, total = 10 }

    [errors."provider/rate_limited"] # how calls failing with this code (or category) retry
    retry = { attempts = 6, backoff = "fixed", initial = 1 }

    [degradation]                    # the host's levels (Host(degradation=) wins over it)
    levels = [ { name = "cached", when_open = 1 }, { name = "fail", when_open = 3 } ]

    [hooks]                          # hook presets and hooks files (host.hooks.files)
    presets = ["error_logging", "timing"]
    files = ["hooks.py"]             # relative to this file

    [alerts]                         # the monitor's alerts (host.monitor.alerts)
    repeat_interval = "1h"
    [[alerts.rules]]
    kind = "rate"
    threshold = 10
    window = "5m"
    [[alerts.channels]]
    type = "file"
    path = "alerts.jsonl"            # relative to this file

At the top, before any table: ``libraries = ["lib"]`` (folders a script's ``require``
searches, relative to this file, after those given in code or with ``--lib``) and
``script_dir_library = false`` (the script's own folder is no library root; see
:mod:`host.libraries`).

Precedence, most specific first (a policy given at a level replaces the whole policy of
the levels below it; policies are not merged field by field):

1. ``Host(recovery={"search": ...})``, the Python argument;
2. ``[tools.search]`` of the config file;
3. ``[errors."<code>"]``, then ``[errors."<category>"]``: the retry of a call that failed
   with that code, for every tool whose ``retry`` (or ``errors``) levels 1 and 2 do not
   set;
4. ``@tool(retry=..., ...)``, the tool's own settings in code;
5. ``[recovery]``, the defaults for every tool (a default fallback is not given to the
   tool it names).

A tool's table and ``Host(recovery=)`` speak about one tool completely, so they win over a
per-error table; ``@tool`` settings are the code's defaults that a config file overrides
(as ``Host(recovery=)`` does), but a tool's own settings are more specific than the
defaults for every tool. ``[tools.<name>.errors."<code>"]`` sets a per-error retry for one
tool (level 2). After each failed try the retry layer asks the retry of the error's code,
else of its category, else the tool's ``retry`` (none: not retried); one count of tries
and one clock run through them all.

``[hooks]`` names hook presets and hooks files (:mod:`host.hooks.files`): ``Host(config=)``
and ``Coordinator(config=)`` register them before their own ``hooks``, and ``polyspell
run/plan``'s ``--hooks`` and ``--hooks-file`` add to them.

``Host(config=)``, ``Coordinator(config=)`` and ``polyspell run/plan --config`` read a
file; only the command line falls back to ``[tool.polyspell]`` of ``./pyproject.toml``
when it is given no ``--config`` (a library's host never reads the working directory).

Every problem is one unified error naming the file and line: ``configuration/parse_failed``
(not TOML), ``configuration/load_failed`` (unreadable, not UTF-8, larger than
:data:`MAX_CONFIG_BYTES`), ``configuration/file_not_found``, and
``configuration/invalid_value`` for anything the models refuse (``polyspell.toml:7:
tools.search.retry.attempts: Input should be greater than or equal to 1``). tomllib gives
no positions for values, so :func:`key_lines` finds them by scanning the text for table
headers and keys, inline tables and arrays included.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    PrivateAttr,
    StrictBool,
    ValidationError,
    field_validator,
)

from bridge import ConfigurationError, SpellError
from bridge.names import closest, did_you_mean, known_or_meant
from host.recovery.degrade import Degradation
from host.recovery.policy import ErrorCode, ErrorRecovery, ToolRecovery

MAX_CONFIG_BYTES = 1 << 20  # a config file is a few hundred bytes: 1 MiB is far past any
PYPROJECT_TABLE = ("tool", "polyspell")

Path_ = tuple[str | int, ...]  # a place in a TOML document: keys, and indexes in arrays


def _known_preset(name: str) -> str:
    from host.hooks.presets import PRESETS

    if name not in PRESETS:
        hint = did_you_mean(closest(name, PRESETS))
        raise ValueError(f"unknown hook preset {name[:100]!r} ({hint}the presets: "
                         f"{', '.join(PRESETS)})")
    return name


class HooksTable(BaseModel):
    """A config file's ``[hooks]``: ``presets``, names of :mod:`host.hooks.presets`
    (``--hooks``'s names), and ``files``, Python hooks files (``--hooks-file``), relative
    to the config file. Loaded by :func:`host.hooks.files.config_hooks`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    presets: list[Annotated[str, AfterValidator(_known_preset)]] = []
    files: list[str] = []


class Config(BaseModel):
    """A polyspell config file, validated: ``recovery`` (the defaults for every tool),
    ``tools`` (each tool's own policies), ``errors`` (per error code or category),
    ``degradation`` (the host's degradation levels, :mod:`host.recovery.degrade`),
    ``hooks`` (presets and hooks files, :mod:`host.hooks.files`) and ``alerts`` (the
    monitor's alert rules and channels, :mod:`host.monitor.alerts`).

    Load one with :func:`load_config` (or :func:`load_pyproject`); build one from a
    mapping with :meth:`from_mapping`. :meth:`policies` resolves each tool's policies
    (see the module docstring for the precedence).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    recovery: ToolRecovery | None = None
    tools: dict[str, ToolRecovery] = {}
    errors: dict[ErrorCode, ErrorRecovery] = {}
    degradation: Degradation | None = None
    hooks: HooksTable | None = None
    # the monitor's (a host.monitor.alerts.AlertConfig), imported only for a config that
    # has [alerts]: host.monitor loads sqlite3 and the hooks, which a run without a
    # monitor does not pay for
    alerts: Any = None
    # folders a script's require searches (relative to the file), and whether the
    # script's own folder is searched first (None: as the host says, by default yes)
    libraries: list[str] = []
    script_dir_library: StrictBool | None = None
    # where engines run (host.Host's ``isolation``): the file's unless the code or the
    # command line says
    isolation: Literal["thread", "process"] | None = None
    # where a plan's tries run (Coordinator's ``executor``, ``ray_address``): the file's
    # unless the code or the command line says
    executor: Literal["local", "ray"] | None = None
    ray_address: str | None = None
    # the Lua of Lua scripts (host.Host's ``lua_version``): the file's unless the code or
    # the command line says
    lua_version: Literal["5.5", "5.4", "luajit"] | None = None

    _source: str | None = PrivateAttr(None)  # the file, for messages
    _text: str | None = PrivateAttr(None)  # its text, to find lines in
    _prefix: Path_ = PrivateAttr(())  # where the table is in the file ([tool.polyspell])
    _lines: dict[Path_, int] | None = PrivateAttr(None)
    _hooks: Any = PrivateAttr(None)  # [hooks] loaded (host.hooks.files.config_hooks): once

    @field_validator("alerts", mode="before")
    @classmethod
    def _alerts(cls, value: Any) -> Any:
        if value is None:
            return None
        from host.monitor.alerts import AlertConfig

        if isinstance(value, AlertConfig):
            return value
        if not isinstance(value, Mapping):
            raise ValueError("[alerts] is a table")
        return AlertConfig.model_validate(dict(value))

    def __init__(self, **data: Any) -> None:
        from host.recovery.model import VALIDATING

        if VALIDATING.get():  # from_mapping validates: it knows the file to name
            super().__init__(**data)
            return
        token = VALIDATING.set(True)  # nested policies leave their errors to this one
        try:  # built in code (Config(tools={...})): bad values are one unified error too
            super().__init__(**data)
        except ValidationError as exc:
            raise _from_validation(exc, None, None, (), data) from None
        finally:
            VALIDATING.reset(token)

    @classmethod
    def from_mapping(cls, data: Any, *, source: str | None = None, text: str | None = None,
                     prefix: Path_ = ()) -> Config:
        """``data`` (a parsed TOML table) as a Config; ``source``, ``text`` and ``prefix``
        (the table's place in the file) locate problems by line."""
        from host.recovery.model import VALIDATING

        if not isinstance(data, Mapping):
            raise _invalid(source, text, prefix, data, (), "a config is a table")
        if isinstance(data.get("recovery"), Mapping) and "errors" in data["recovery"]:
            raise _invalid(source, text, prefix, data, ("recovery", "errors"),
                           'per-error tables are top-level: [errors."<code>"]')
        data = dict(data)
        token = VALIDATING.set(True)  # nested policies leave their errors to this one
        try:
            if isinstance(data.get("alerts"), Mapping):  # validated apart: see the field
                from host.monitor.alerts import AlertConfig

                try:
                    data["alerts"] = AlertConfig.model_validate(dict(data["alerts"]))
                except ValidationError as exc:
                    raise _from_validation(exc, source, text, (*prefix, "alerts"),
                                           data["alerts"], root=AlertConfig) from None
            config = cls.model_validate(data)
        except ValidationError as exc:
            raise _from_validation(exc, source, text, prefix, data) from None
        finally:
            VALIDATING.reset(token)
        config._source, config._text, config._prefix = source, text, prefix
        return config

    @property
    def source(self) -> str | None:
        """The file this config was read from (None for one built in code)."""
        return self._source

    def library_roots(self) -> list[str]:
        """``libraries`` relative to the file's folder; a folder that does not exist is
        ``configuration/file_not_found`` naming the file and line."""
        base = Path(self._source).parent if self._source is not None else None
        roots = []
        for index, given in enumerate(self.libraries):
            root = given if base is None or os.path.isabs(given) else str(base / given)
            if not os.path.isdir(root):
                raise ConfigurationError.FileNotFound(
                    f"{self.where(('libraries', index))}: library folder not found: {root}",
                    path=root)
            roots.append(root)
        return roots

    def line_of(self, path: Path_) -> int | None:
        """The line of ``path`` (under this config's table) in its file, or of the nearest
        enclosing key or table found; None without a file."""
        if self._text is None:
            return None
        if self._lines is None:
            self._lines = key_lines(self._text)
        return _line(self._lines, (*self._prefix, *path))

    def where(self, path: Path_) -> str:
        """``file:line: dotted.path`` for a message (as much of it as is known)."""
        return _where(self._source, self.line_of(path), (*self._prefix, *path))

    def policies(self, tools: Iterable[Any], given: Mapping[str, ToolRecovery] | None = None
                 ) -> dict[str, ToolRecovery]:
        """Each tool's resolved policies (``tools``: the host's, each with its ``name`` and
        its own ``recovery`` from ``@tool``); ``given`` the ``Host(recovery=)`` ones,
        parsed. Tools with no policy at any level are left out (their calls keep the fast
        path). A ``[tools.<name>]`` naming no tool is ``configuration/invalid_value``."""
        given = given or {}
        known = {item.name: getattr(item, "recovery", None) for item in tools}
        for name in self.tools:
            if name not in known:
                close = closest(name, known)
                hint = (f" (did you mean {close!r}?)" if close
                        else f" (tools: {', '.join(sorted(known)) or 'none'})")
                path = ("tools", name)
                raise _located(_dotted((*self._prefix, *path)), name,
                               f"{self.where(path)}: there is no tool named {name!r}{hint}")
        tables = [(("tools", name), name, table) for name, table in self.tools.items()]
        tables.append((("recovery",), None, self.recovery))
        for path, owner, table in tables:
            if table is None or table.fallback is None:
                continue
            for index, option in enumerate(table.fallback.options):
                if option.tool is None or (option.tool in known and option.tool != owner):
                    continue
                why = "is the tool it protects" if option.tool == owner else "does not exist"
                where = (*path, "fallback", index, "tool")
                raise _located(_dotted((*self._prefix, *where)), option.tool,
                               f"{self.where(where)}: the fallback names a tool that {why}: "
                               f"{option.tool!r}")
        resolved: dict[str, ToolRecovery] = {}
        for name, own in known.items():
            policy = resolve(name, own=own, defaults=self.recovery, errors=self.errors,
                             table=self.tools.get(name), given=given.get(name))
            if policy is not None:
                resolved[name] = policy
        return resolved


def resolve(name: str, *, own: ToolRecovery | None = None,
            defaults: ToolRecovery | None = None,
            errors: Mapping[str, ErrorRecovery] | None = None,
            table: ToolRecovery | None = None, given: ToolRecovery | None = None
            ) -> ToolRecovery | None:
    """Tool ``name``'s policies from every level (see the module docstring): the defaults,
    its own (``@tool``), the per-error retries, its config table, the Python argument."""
    if defaults is not None and defaults.fallback is not None:
        options = [o for o in defaults.fallback.options if o.tool != name]
        if len(options) != len(defaults.fallback.options):  # not its own fallback
            fallback = defaults.fallback.model_copy(update={"options": options}) \
                if options else None
            defaults = defaults.model_copy(update={"fallback": fallback})
    policy: ToolRecovery | None = None
    for level in (defaults, own, table, given):
        if level is not None:
            policy = level if policy is None else policy.merged(level)
    explicit = any(level is not None and ({"retry", "errors"} & level.model_fields_set)
                   for level in (table, given))
    if errors and not explicit:
        policy = (policy or ToolRecovery()).model_copy(update={"errors": dict(errors)})
    return policy


# -- reading ----------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and check a polyspell config file (TOML, the shape of the module docstring)."""
    path = Path(path)
    text = _read(path)
    return Config.from_mapping(_parse(text, str(path)), source=str(path), text=text)


def load_pyproject(path: str | os.PathLike[str] = "pyproject.toml") -> Config | None:
    """The ``[tool.polyspell]`` table of a ``pyproject.toml`` as a Config; None when there
    is no such file or no such table."""
    path = Path(path)
    if not path.is_file():
        return None
    text = _read(path)
    data = _parse(text, str(path))
    table = data.get("tool", {}).get("polyspell") if isinstance(data.get("tool"), dict) \
        else None
    if table is None:
        return None
    return Config.from_mapping(table, source=str(path), text=text, prefix=PYPROJECT_TABLE)


def as_config(config: Any) -> Config:
    """``config`` (a :class:`Config`, or the path of a config file) as a Config."""
    if isinstance(config, Config):
        return config
    if isinstance(config, (str, os.PathLike)) and isinstance(os.fspath(config), str):
        return load_config(config)
    raise ConfigurationError.InvalidValue(
        key="config", value=repr(config)[:200],
        reason=f"config is the path of a config file or a host.config.Config, not "
        f"{type(config).__name__}")


def _read(path: Path) -> str:
    from host.tools import check_file

    check_file(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigurationError.LoadFailed(path=str(path), reason=exc.strerror or str(exc)) \
            from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigurationError.LoadFailed(
            path=str(path), reason=f"larger than {MAX_CONFIG_BYTES // 1024} KiB, too large "
            f"for a config file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigurationError.LoadFailed(
            path=str(path), reason=f"not UTF-8 text ({exc.reason} at byte {exc.start})") \
            from None


def _parse(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"at line (\d+)", str(exc))
        line = int(found.group(1)) if found else None
        where = f"{source}:{line}" if line else source
        raise ConfigurationError.ParseFailed(
            source=source, line=line, reason=f"{where}: not valid TOML ({exc})") from None
    except RecursionError:  # tomllib recurses into nested arrays and tables
        raise ConfigurationError.ParseFailed(
            source=source, reason=f"{source}: nested too deeply to read") from None


# -- problems -------------------------------------------------------------------------


def _from_validation(exc: ValidationError, source: str | None, text: str | None,
                     prefix: Path_, data: Any, root: Any = None) -> SpellError:
    problems = exc.errors()
    first = next((p for p in problems if p["type"] == "extra_forbidden"), problems[0])
    path = _data_path(data, first["loc"])
    if first["type"] == "extra_forbidden":
        reason = f"unknown key {str(path[-1])!r}{_hint(path, root)}"
    elif first["type"] == "missing":
        reason = f"missing key {str(path[-1])!r}"
    else:
        reason = first["msg"].removeprefix("Value error, ")
    return _invalid(source, text, prefix, first.get("input"), path, reason)


def _invalid(source: str | None, text: str | None, prefix: Path_, value: Any,
             path: Path_, reason: str) -> SpellError:
    full = (*prefix, *path)
    line = _line(key_lines(text), full) if text is not None else None
    return _located(_dotted(full), repr(value)[:200],
                    f"{_where(source, line, full)}: {reason}")


def _located(key: str, value: str, where_and_why: str) -> SpellError:
    """``configuration/invalid_value`` whose message is ``file:line: key: problem``, said
    once as a compiler says it (not after the template's "Invalid configuration value for
    <key>:" again)."""
    return ConfigurationError.InvalidValue(where_and_why, key=key, value=value,
                                           reason=where_and_why)


def _where(source: str | None, line: int | None, path: Path_) -> str:
    place = f"{source or '<config>'}:{line}" if line else (source or "<config>")
    return f"{place}: {_dotted(path)}" if path else place


def _data_path(data: Any, loc: tuple[Any, ...]) -> Path_:
    """pydantic's location of a problem as the keys and indexes of the raw data: without
    the names it gives union members (``literal['fixed',...]``) and a model's own field
    for a list (a fallback's ``options``)."""
    path: list[str | int] = []
    last_found = False
    for part in loc:
        last_found = True
        if isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        elif isinstance(data, Mapping) and part in data:
            data = data[part]
        else:
            last_found = False
            continue
        path.append(part)
    last = loc[-1] if loc else None
    if not last_found and isinstance(data, Mapping) and isinstance(last, str) \
            and last.isidentifier():
        path.append(last)  # a required key the table lacks
    return tuple(path)


def _hint(path: Path_, root: Any = None) -> str:
    """A "did you mean" for an unknown key at ``path``, from the model that holds it
    (``path`` from ``root``, a model: by default :class:`Config`)."""
    known = _known_keys(path[:-1], root)
    if not known:
        return ""
    return known_or_meant(str(path[-1]), known)


def _known_keys(path: Path_, root: Any = None) -> list[str]:
    model: Any = Config if root is None else root
    for part in path:
        if isinstance(part, int):
            continue
        fields = getattr(model, "model_fields", None)
        if fields is None:
            return []
        field = fields.get(part) or next(
            (f for f in fields.values() if f.alias == part), None)
        if field is None:  # a key of a dict field (a tool's name, a code): same model
            continue
        model = _model_in(field.annotation)
        if model is None:
            return []
    fields = getattr(model, "model_fields", None) or {}
    return [f.alias or name for name, f in fields.items()]


def _model_in(annotation: Any) -> Any:
    """The pydantic model a field's type holds (through unions, lists, dicts)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    args = typing.get_args(annotation)
    for arg in reversed(args):  # a dict's value, a union's model
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _dotted(path: Path_) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", part):
            text += f".{part}" if text else part
        else:
            quoted = json.dumps(part, ensure_ascii=False)
            text += f".{quoted}" if text else quoted
    return text


def _line(lines: Mapping[Path_, int], path: Path_) -> int | None:
    """The line of the longest prefix of ``path`` that the text has."""
    for end in range(len(path), 0, -1):
        line = lines.get(path[:end])
        if line is not None:
            return line
    return None


# -- where keys are ---------------------------------------------------------------------

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_SPACE = re.compile(r"[ \t\r]+")
_SCALAR = re.compile(r"[^ \t\r\n,\]}#]+")


def key_lines(text: str) -> dict[Path_, int]:
    """The line of every table, key and array element of a TOML document (which tomllib
    has parsed already), by its path: ``("tools", "search", "retry", "attempts")``,
    ``("fallback", 0)``. The first line a path (or a table that contains it) appears on.

    A scan of the text, not a parser: it follows table headers, dotted and quoted keys,
    strings of every kind, comments, arrays and inline tables across lines, iteratively
    (no recursion, linear in the text).
    """
    lines: dict[Path_, int] = {}

    def note(path: Path_, line: int) -> None:
        if path in lines:  # and so are the tables that contain it
            return
        for end in range(1, len(path) + 1):
            lines.setdefault(path[:end], line)

    pos, line, size = 0, 1, len(text)
    table: Path_ = ()
    arrays: dict[Path_, int] = {}  # [[x]] headers seen: their next index
    stack: list[list[Any]] = []  # open arrays and inline tables: [kind, path, index]
    statement = True  # at the start of a statement (a header or key), outside any value
    value: Path_ = ()  # the key whose value is being read
    while pos < size:
        char = text[pos]
        if char == "\n":
            line += 1
            pos += 1
            statement = statement or not stack
            continue
        if char in " \t\r":
            pos = _SPACE.match(text, pos).end()  # type: ignore[union-attr]
            continue
        if char == "#":
            end = text.find("\n", pos)
            pos = size if end < 0 else end
            continue
        if statement and not stack:
            if char == "[":
                double = text.startswith("[[", pos)
                key, pos = _key(text, pos + (2 if double else 1), "]")
                pos += 2 if double else 1
                if double:
                    index = arrays[key] = arrays.get(key, -1) + 1
                    table = (*key, index)
                else:
                    table = key
                note(table, line)
            else:
                key, pos = _key(text, pos, "=")
                pos += 1
                value = (*table, *key)
                note(value, line)
            statement = False
            continue
        if char in "\"'":
            if stack and stack[-1][0] == "array":
                note((*stack[-1][1], stack[-1][2]), line)
            start = pos
            pos = _skip_string(text, pos)
            line += text.count("\n", start, pos)
            continue
        if char in "[{":
            path = (*stack[-1][1], stack[-1][2]) if stack and stack[-1][0] == "array" \
                else value
            note(path, line)
            pos += 1
            if char == "[":
                stack.append(["array", path, 0])
            else:
                stack.append(["table", path, 0])
                pos, value = _inline_key(text, pos, path, line, note)
            continue
        if char == ",":
            pos += 1
            if stack and stack[-1][0] == "array":
                stack[-1][2] += 1
            elif stack:
                pos, value = _inline_key(text, pos, stack[-1][1], line, note)
            continue
        if char in "]}":
            if stack:
                stack.pop()
            pos += 1
            continue
        if stack and stack[-1][0] == "array":  # a number, boolean or date in an array
            note((*stack[-1][1], stack[-1][2]), line)
        pos = _SCALAR.match(text, pos).end()  # type: ignore[union-attr]
    return lines


def _inline_key(text: str, pos: int, table: Path_, line: int, note: Any
                ) -> tuple[int, Path_]:
    """After ``{`` or a ``,`` of an inline table (one line in TOML 1.0): its next key."""
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    if pos >= len(text) or text[pos] == "}":
        return pos, table
    key, pos = _key(text, pos, "=")
    note((*table, *key), line)
    return pos + 1, (*table, *key)


def _key(text: str, pos: int, stop: str) -> tuple[Path_, int]:
    """A dotted key (bare and quoted parts) from ``pos`` up to ``stop``; its parts and the
    position of ``stop``."""
    parts: list[str | int] = []
    size = len(text)
    while pos < size and text[pos] != stop:
        char = text[pos]
        if char in " \t.":
            pos += 1
        elif char in "\"'":
            end = _skip_string(text, pos)
            raw = text[pos + 1:end - 1]
            if char == '"':
                try:
                    raw = json.loads(f'"{raw}"')
                except ValueError:  # a TOML escape JSON lacks (\U0001F600): keep it as written
                    pass
            parts.append(raw)
            pos = end
        else:
            bare = _BARE.match(text, pos)
            if bare is None:  # not a key character: tomllib accepted it, so skip it
                pos += 1
                continue
            parts.append(bare.group())
            pos = bare.end()
    return tuple(parts), pos


_STRING_END = {'"': re.compile(r'(?:[^"\\\n]|\\.)*(?:"|$)', re.M),
               "'": re.compile(r"[^'\n]*(?:'|$)", re.M),
               '"""': re.compile(r'(?:[^"\\]|\\.|"(?!""))*(?:"""|\Z)', re.S),
               "'''": re.compile(r"(?:[^']|'(?!''))*(?:'''|\Z)", re.S)}


def _skip_string(text: str, pos: int) -> int:
    """The position just after the string that starts at ``pos`` (any TOML string)."""
    quote = text[pos]
    opening = quote * 3 if text.startswith(quote * 3, pos) else quote
    end = _STRING_END[opening].match(text, pos + len(opening)).end()  # type: ignore[union-attr]
    if len(opening) == 3:  # up to two more quotes belong to the string: """a""""
        extra = 0
        while end < len(text) and text[end] == quote and extra < 2:
            end += 1
            extra += 1
    return end
