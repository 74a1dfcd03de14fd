"""The one writer of the lines polyspell prints about runs (script output, plan progress,
hook presets' log lines), and :func:`shown_text`, what makes a script's text safe to show
in them.

Runs print from their own threads, concurrently. ``print(text, file=sys.stderr)`` writes
the text and the newline in two calls, so two threads' lines merge
(``[apple] getting apple[banana] getting banana``). Here every line is written whole: the
whole block in one ``write`` call, under one lock shared by every writer in the process,
then flushed.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from typing import TextIO

from bridge.render import printable

_lock = threading.Lock()

# What scripts print (Lua's print, JavaScript's console.log), one record a line, at INFO,
# with the run's ``run_id``, ``task_id`` (None outside a plan) and ``language`` as the
# record's attributes: routed like any library's logs (the CLI prints them as lines).
SCRIPT_LOGGER = logging.getLogger("polyspell.script")


def log_script_line(line: str, run_id: str, task_id: str | None, language: str) -> None:
    """What a script printed, as records of :data:`SCRIPT_LOGGER`, one a line: a printed
    line break (of any kind: see _LINE_BREAK) never puts a line in a log file that another
    logger seems to have written."""
    if SCRIPT_LOGGER.isEnabledFor(logging.INFO):
        extra = {"run_id": run_id, "task_id": task_id, "language": language}
        for part in _LINE_BREAK.split(line):
            SCRIPT_LOGGER.info(part, extra=extra)


# Every line end a reader of a log file may see (str.splitlines's; open() reads "\r" as
# one): a script's text holding any of them is one record a line, never a forged line.
_LINE_BREAK = re.compile("\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


def write_lines(text: str, *, prefix: str = "", stream: TextIO | None = None) -> None:
    """Write ``text`` as whole lines on ``stream`` (by default the current ``sys.stderr``).

    Each line of ``text`` (it may hold several) gets ``prefix`` and a newline; they are
    written in one call, under the lock every writer shares, so no other line written
    through here ever lands inside them.
    """
    stream = sys.stderr if stream is None else stream
    if stream is None:  # no stderr at all (pythonw): nowhere to write
        return
    block = "".join(f"{prefix}{line}\n" for line in text.split("\n"))
    with _lock:
        stream.write(block)
        stream.flush()


def shown_text(text: str, *, limit: int, keep: str = "") -> str:
    """``text`` as safe to show among polyspell's lines: every character that is not
    printable (a newline that would start a forged line, an ANSI escape sequence, a bidi
    override) shown as its backslash escape, except those in ``keep``; cut to ``limit``
    characters with the total said (``... (12000 characters)``)."""
    size = len(text)
    text = printable(text[:limit] if size > limit else text, keep)
    return text + f"... ({size} characters)" if size > limit else text
