"""One traceback through every language, as text: what the CLI, ``to_text()`` and logs show.

Like Python's own: the cause first, then "The above exception was the direct cause of
the following exception:", then the error; frames outermost first, each with the source
line under it; ``category/kind: message`` last. Output stays bounded: repeated frames
collapse, deep stacks and huge messages are cut with a marker.
"""

from __future__ import annotations

import os

from bridge.errors import MAX_COUNTED, SpellError, cause_chain
from bridge.frames import Frame, is_internal

CAUSE_SEPARATOR = "\n\nThe above exception was the direct cause of the following exception:\n\n"
MAX_FRAMES = 60  # per error: the outermost and innermost halves are kept
MAX_MESSAGE_CHARS = 4000
MAX_CHAIN = 20
REPEAT_THRESHOLD = 3  # like Python: identical frames beyond three collapse into one line
# after the message of a security or resource error a script raised itself
SCRIPT_RAISED_NOTE = " (raised by the script itself, not observed by the host)"

# ANSI styles for terminals (no dependency: four codes do not need a library).
_STYLES = {"language": "\033[36m", "location": "\033[1m", "function": "\033[35m",
           "source": "\033[2m", "code": "\033[1;31m", "note": "\033[33m"}
_RESET = "\033[0m"


def _paint(text: str, style: str, color: bool) -> str:
    return f"{_STYLES[style]}{text}{_RESET}" if color else text


def render_text(err: SpellError, *, verbose: bool = False, color: bool = False) -> str:
    """The error and its cause chain as a polyglot traceback (ANSI-coloured if ``color``)."""
    walk = cause_chain(err)
    chain = walk.errors[:MAX_CHAIN]
    hidden = len(walk.errors) - len(chain) + walk.omitted
    blocks = [_render_one(e, verbose, color) for e in reversed(chain)]
    text = _paint(CAUSE_SEPARATOR, "note", color).join(blocks)
    if hidden:
        more = "more than " if walk.omitted >= MAX_COUNTED else ""
        loop = ", then the chain loops back" if walk.loops else ""
        text = f"[... {more}{hidden} earlier causes not shown{loop}]\n" + text
    elif walk.loops:
        text = "[the cause chain loops back to an error shown below]\n" + text
    return text


def _render_one(err: SpellError, verbose: bool, color: bool) -> str:
    frames = err.frames if verbose else [f for f in err.frames if not is_internal(f)]
    lines = []
    if frames:
        lines.append("Traceback (most recent call last):")
        lines.extend(_frame_lines(frames, color))
    message = err.message
    if len(message) > MAX_MESSAGE_CHARS:
        hidden = len(message) - MAX_MESSAGE_CHARS
        message = message[:MAX_MESSAGE_CHARS] + f" [... {hidden} more characters]"
    if err.raised_by_script:
        message += SCRIPT_RAISED_NOTE
    lines.append(f"{_paint(err.code, 'code', color)}: {message}")
    return "\n".join(lines)


def _frame_lines(frames: list[Frame], color: bool = False) -> list[str]:
    lines: list[str] = []
    if len(frames) > MAX_FRAMES:
        half = MAX_FRAMES // 2
        hidden = len(frames) - MAX_FRAMES
        shown: list[Frame | None] = [*frames[:half], None, *frames[-half:]]
    else:
        hidden, shown = 0, list(frames)
    previous, repeats = None, 0
    for frame in shown:
        if frame is None:
            lines.append(f"  [... {hidden} frames not shown]")
            previous, repeats = None, 0
            continue
        if frame == previous:
            repeats += 1
            if repeats >= REPEAT_THRESHOLD:
                continue
        else:
            if repeats >= REPEAT_THRESHOLD:
                lines.append(_repeated(repeats - REPEAT_THRESHOLD + 1))
            previous, repeats = frame, 0
        lines.extend(format_frame(frame, color))
    if repeats >= REPEAT_THRESHOLD:
        lines.append(_repeated(repeats - REPEAT_THRESHOLD + 1))
    return lines


def _relative(location: str) -> str:
    """Paths under the working directory are shown relative to it, as people typed them."""
    cwd = os.getcwd() + os.sep
    return location[len(cwd):] if location.startswith(cwd) else location


def _repeated(count: int) -> str:
    return f"  [Previous line repeated {count} more time{'s' if count > 1 else ''}]"


def format_frame(frame: Frame, color: bool = False) -> list[str]:
    """``  lua agent.lua:12:5, in main`` and the source line under it."""
    where = (f"  {_paint(frame.language, 'language', color)} "
             f"{_paint(_relative(frame.location), 'location', color)}")
    if frame.function:
        where += f", in {_paint(frame.function, 'function', color)}"
    if frame.source:
        return [where, _paint(f"    {frame.source.strip()}", "source", color)]
    return [where]
