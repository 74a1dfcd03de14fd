"""What a controller answers: typed actions.

Before a call (``before_tool_call``): :class:`Proceed` (with changed ``params``, which the
tool validates again), :class:`Skip` (the script receives ``result``, the tool is not
called) or :class:`Fail` (the script receives ``error``). After a call or an error
(``after_tool_call``, ``after_script_error``, ``after_task_failure``): :class:`Continue`
(as it is), :class:`Recover` (the caller sees success with ``result``), :class:`Retry`
(the call again, after ``delay`` seconds: bounded, see :mod:`host.hooks.layer`) or
:class:`Rethrow` (``error`` in the original's place, the original as its cause; or the
original itself). A controller returning ``None`` answers ``Proceed()``/``Continue()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Proceed:
    """Call the tool; with ``params`` (not None) in place of the script's."""

    params: Any = None


@dataclass(frozen=True, slots=True)
class Skip:
    """Do not call the tool: the script receives ``result`` (JSON-like data)."""

    result: Any = None


@dataclass(frozen=True, slots=True)
class Fail:
    """Do not call the tool: the script receives ``error`` (a SpellError; an exception
    becomes the tool's ``tool/execution_failed``; a string is ``hook/rejected``'s reason)."""

    error: Any


@dataclass(frozen=True, slots=True)
class Continue:
    """Leave the outcome as it is."""


@dataclass(frozen=True, slots=True)
class Recover:
    """The caller sees success with ``result`` in place of the error."""

    result: Any = None


@dataclass(frozen=True, slots=True)
class Retry:
    """Make the call again after ``delay`` seconds (None: the hooks' retry policy's)."""

    delay: float | None = None


@dataclass(frozen=True, slots=True)
class Rethrow:
    """Fail with ``error`` (its cause: the original error), or the original if None."""

    error: Any = None


BEFORE = (Proceed, Skip, Fail)
AFTER = (Continue, Recover, Retry, Rethrow)
NAMES = {Proceed: "proceed", Skip: "skip", Fail: "fail", Continue: "continue",
         Recover: "recover", Retry: "retry", Rethrow: "rethrow"}
