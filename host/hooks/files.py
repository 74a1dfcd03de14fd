"""Hooks registered from outside the code: hooks files (``--hooks-file``) and the
``[hooks]`` table of a config file.

A hooks file is a Python file; every :class:`~host.hooks.dispatch.Hook` at its top level
(made with ``@hooks.observer(point)`` / ``@hooks.controller(point)``, defined there or
imported) and every preset there (``timing = hooks.presets.timing()``) is registered, in
the order the file defines them::

    # hooks.py
    from host import hooks

    @hooks.observer("tool_call_finished")
    def slow_calls(ctx):
        if ctx.duration > 1:
            print(f"slow: {ctx.tool} {ctx.duration:.1f} s")

The file is imported once, as tools files are (:func:`host.tools.import_python_file`).
A missing file is ``configuration/file_not_found``; a file that is not a ``.py`` file,
does not import, or holds no hook is ``configuration/load_failed`` naming it; a hook on
an unknown point is ``configuration/invalid_value`` naming the file and line.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge import ConfigurationError, SpellError
from host.hooks.dispatch import Hook
from host.hooks.presets import Preset, merge, named

if TYPE_CHECKING:
    from host.config import Config


def load_hooks_file(path: str | os.PathLike[str]) -> Preset:
    """The hooks of the Python file ``path`` (see the module docstring), as a preset."""
    from host.tools import check_file, import_python_file

    path = Path(path)
    check_file(path)
    if path.suffix != ".py":
        raise ConfigurationError.LoadFailed(
            path=str(path), reason="a hooks file is a Python (.py) file")
    try:
        module = import_python_file(path, "polyspell_hooks")
    except SpellError as err:
        if err.code != "configuration/invalid_value":
            raise
        raise _located(err, path) from None  # a decorator refused a hook: say where
    found = [value for value in vars(module).values() if isinstance(value, (Hook, Preset))]
    if not found:
        raise ConfigurationError.LoadFailed(
            path=str(path), reason="it defines no hooks (decorate functions with "
            "@hooks.observer(point) or @hooks.controller(point))")
    return merge(*found)


def _located(err: SpellError, path: Path) -> SpellError:
    """``configuration/invalid_value`` raised while ``path`` imports, with the file and
    line that raised it at the front of its reason."""
    lines = [frame.lineno for frame in traceback.extract_tb(err.__traceback__)
             if Path(frame.filename).resolve() == path.resolve()]
    where = f"{path}:{lines[-1]}" if lines else str(path)
    reason = f"{where}: {err.fields.get('reason', err.message)}"
    return ConfigurationError.InvalidValue(key=str(err.fields.get("key") or "hooks"),
                                           value=err.fields.get("value"), reason=reason)


def load_hooks(presets: Iterable[str] = (), files: Iterable[str | os.PathLike[str]] = (),
               *, key: str = "--hooks") -> Preset:
    """The presets named in ``presets`` and the hooks of ``files``, merged in that order
    (each file loaded once, however often it is named)."""
    items: list[Any] = [named(presets, key)]
    seen: set[Path] = set()
    for file in files:
        resolved = _resolved(Path(file))
        if resolved in seen:
            continue
        seen.add(resolved)
        items.append(load_hooks_file(file))
    return merge(*items)


def _resolved(path: Path) -> Path:
    """``path`` resolved, to load each file once; a path that does not lead to a regular
    file (a symlink loop too, which ``resolve`` cannot follow) is refused as
    :func:`host.tools.check_file` refuses it."""
    from host.tools import check_file

    check_file(path)
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a loop, before Python 3.13
        raise ConfigurationError.FileNotFound(path=str(path)) from None


def config_hooks(config: Config) -> Preset:
    """The hooks of ``config``'s ``[hooks]`` table: its presets, then its files (relative
    to the config file). Loaded once per config: every host made with it shares them. A
    file that fails to load is named with the config's line that names it."""
    cached = config._hooks
    if cached is not None:
        return cached
    table = config.hooks
    if table is None:
        loaded = merge()
    else:
        base = Path(config.source).parent if config.source else Path()
        items: list[Any] = [named(table.presets, "hooks.presets")]
        seen: set[Path] = set()
        for index, file in enumerate(table.files):
            path = base / file
            try:
                resolved = _resolved(path)
                if resolved in seen:
                    continue
                seen.add(resolved)
                items.append(load_hooks_file(path))
            except SpellError as err:  # the same error, saying where the config names it
                raise _named_at(err, config.where(("hooks", "files", index))) \
                    from err.__cause__
        loaded = merge(*items)
    config._hooks = loaded
    return loaded


def with_config_hooks(hooks: Any, config: Config | None) -> Any:
    """``Host(hooks=...)`` with ``config``'s ``[hooks]`` before them (``hooks`` as they
    are when the config has no such table)."""
    if config is None or config.hooks is None:
        return hooks
    from host.hooks.dispatch import hook_items

    return merge(config_hooks(config), *hook_items(() if hooks is None else hooks))


def _named_at(err: SpellError, where: str) -> SpellError:
    """``err`` (a hooks file's) saying which line of the config named the file."""
    if err.category != "configuration":
        return err
    return type(err)(f"{err.message} (named at {where})", **err.fields)
