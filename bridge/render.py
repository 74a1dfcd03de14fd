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
    # the outermost error with a history has the whole of it: shown once, at the end
    for outer in chain:
        context = getattr(outer, "_context", None)  # made on first use: none, no history
        metadata = context.metadata if context is not None else {}
        events = metadata.get("recovery")
        if isinstance(events, list) and events:
            dropped = metadata.get("recovery_dropped")
            lines = recovery_summary(events, dropped if isinstance(dropped, int) else 0)
            text += "\n" + "\n".join(_paint(line, "note", color) for line in lines)
            break
    for outer in chain:  # the hooks that ran for the failing operation: the outermost's
        context = getattr(outer, "_context", None)
        path = context.execution_trace.hook_execution_path if context is not None else []
        if path:
            text += "\n" + "\n".join(_paint(line, "note", color) for line in hook_summary(path))
            break
    return text


MAX_HOOK_LINES = 8  # lines of a hook path block


def hook_summary(path: list) -> list[str]:
    """A hook path (``context.execution_trace.hook_execution_path``) as lines::

        hook: watch at tool_call_finished: observed (0.2 ms)
        hook: on_tool_error at on_tool_error: stop_run (0.1 ms)
    """
    lines = []
    for hook in path[:MAX_HOOK_LINES]:
        took = f" ({hook.duration * 1000:.1f} ms)" if hook.duration is not None else ""
        failed = f" - {hook.error}" if hook.error else ""
        lines.append(f"hook: {hook.hook_name} at {hook.hook_point}: {hook.outcome}{took}"
                     f"{failed}")
    if len(path) > MAX_HOOK_LINES:
        lines.append(f"[... {len(path) - MAX_HOOK_LINES} more hooks not shown]")
    return lines


# -- the recovery history, summarised ------------------------------------------------------

MAX_RECOVERY_TOOLS = 8  # lines of a recovery block, one per tool
MAX_FALLBACKS_NAMED = 4  # options named in a tool's line
MAX_NAME_CHARS = 80
_OPTION_NAMES = {"value": "a default value", "cached": "the cached result"}


def recovery_summary(events: list, dropped: int = 0, lead: str = "recovery: ") -> list[str]:
    """A recovery history (the events of ``context.metadata["recovery"]``, a run's or a
    task's) as a few lines: one per tool, what was done in the order first done::

        recovery: search retried 3x (0.1 s → 0.4 s; tool/execution_failed), then fell
                  back to search_backup, then to a default value (after tool/timeout)

    Bounded whatever the history holds (at most :data:`MAX_RECOVERY_TOOLS` lines and a
    line for the rest); events that are not well-formed (read back from any JSON) are
    skipped. ``lead`` starts the first line; the others are indented under it.
    """
    tools: dict[str, dict[str, list[dict]]] = {}
    for event in events:
        if not isinstance(event, dict) or not isinstance(event.get("action"), str):
            continue
        tool = _short(str(event.get("tool", "?")))
        tools.setdefault(tool, {}).setdefault(_short(event["action"]), []).append(event)
    lines = []
    for n, (tool, actions) in enumerate(tools.items()):
        if n == MAX_RECOVERY_TOOLS:
            lines.append(f"[... {len(tools) - n} more tools recovered]")
            break
        parts = [_action_text(action, done) for action, done in actions.items()]
        lines.append(f"{tool} " + ", then ".join(parts))
    if dropped > 0:
        lines.append(f"[... {dropped} more recovery events not recorded]")
    if not lines:
        return []
    return [lead + lines[0], *(" " * len(lead) + line for line in lines[1:])]


def _action_text(action: str, events: list[dict]) -> str:
    count = len(events)
    codes = list(dict.fromkeys(_short(_why(e)) for e in events))
    why = ", ".join(codes[:3]) + (f" and {len(codes) - 3} more" if len(codes) > 3 else "")
    if action == "retry":
        delays = [e["delay"] for e in events
                  if isinstance(e.get("delay"), (int, float)) and not isinstance(
                      e.get("delay"), bool)]
        waited = ""
        if delays:
            first, last = _seconds(delays[0]), _seconds(delays[-1])
            waited = f"{first} → {last}; " if count > 1 and first != last else f"{first}; "
        return f"retried {count}x ({waited}{why})"
    if action == "fallback":
        options: dict[str, int] = {}  # option -> times, in the order first used
        for event in events:
            option = _option_text(event.get("option"))
            options[option] = options.get(option, 0) + 1
        named = [f"{option} ({times}x)" if times > 1 else option
                 for option, times in list(options.items())[:MAX_FALLBACKS_NAMED]]
        more = len(options) - len(named)
        text = "fell back to " + ", then to ".join(named)
        # the codes are what the tool (or an earlier option) failed with, not the options'
        # own outcomes: a run that failed shows those in "errors in the order tried"
        return text + (f" and {more} more options" if more else "") + f" (after {why})"
    if action == "breaker_refused":
        return f"refused {count}x by its open circuit breaker"
    if action == "restart":
        return f"restarted {count}x ({why})"
    if action == "degraded":
        return f"answered degraded {count}x ({why})"
    if action == "degradation":  # the host's degradation level changed (no error)
        levels = [_short(str(e.get("level") or "normal")) for e in events]
        return "took the host's degradation level to " + " → ".join(levels[:8])
    return f"{action} {count}x ({why})"


def _why(event: dict) -> str:
    """An event's error code, or for an event no error caused, the degradation level
    that decided it."""
    error = event.get("error", "?")
    if error is None and event.get("level") is not None:
        return f"level {event['level']}"
    return str(error)


def _option_text(option: object) -> str:
    if not isinstance(option, str):
        return "the next option"
    return _OPTION_NAMES.get(option) or _short(option)


def _short(text: str) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= MAX_NAME_CHARS else text[:MAX_NAME_CHARS - 1] + "…"


def _seconds(value: float) -> str:
    return f"{value:.3g} s"


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
    lines.append(f"{_paint(err.code, 'code', color)}: {_message(message)}")
    if err.code == "runtime/all_fallbacks_failed":
        tried = _options_tried(err.fields.get("errors"), err.fields.get("operation"))
        if tried:
            lines.append(_paint(f"  errors in the order tried: {tried}", "note", color))
    return "\n".join(lines)


def _options_tried(errors: object, operation: object) -> str:
    """``network/connection (search), tool/timeout (search_backup)``: the errors of an
    ``all_fallbacks_failed`` (its ``fields.errors``, any JSON; the first is the
    operation's own), bounded."""
    if not isinstance(errors, list):
        return ""
    parts = []
    for n, entry in enumerate(errors[:MAX_RECOVERY_TOOLS]):
        if not isinstance(entry, dict):
            parts.append("?")
            continue
        code = _short(f"{entry.get('category', '?')}/{entry.get('kind', '?')}")
        fields = entry.get("fields") if isinstance(entry.get("fields"), dict) else {}
        name = next((fields[key] for key in ("tool_name", "provider", "endpoint", "service")
                     if isinstance(fields.get(key), str) and fields[key]), None)
        if name is None and n == 0 and isinstance(operation, str) and operation:
            name = operation
        parts.append(f"{code} ({_short(name)})" if name else code)
    if len(errors) > MAX_RECOVERY_TOOLS:
        parts.append(f"and {len(errors) - MAX_RECOVERY_TOOLS} more")
    return ", ".join(parts)


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
             f"{_paint(printable(_relative(frame.location)), 'location', color)}")
    if frame.function:
        where += f", in {_paint(printable(frame.function), 'function', color)}"
    if frame.source:
        return [where, _paint(f"    {printable(frame.source.strip())}", "source", color)]
    return [where]


def printable(text: str, keep: str = "") -> str:
    """``text`` with every character that is not printable (a newline that would start a
    forged line, an ANSI escape sequence, a bidi override) shown as its backslash escape,
    except those in ``keep``: script text on a terminal among polyspell's own lines."""
    if text.isprintable():
        return text
    return "".join(ch if ch in keep or (ch.isprintable() and ch != "\x7f")
                   else ch.encode("unicode_escape").decode("ascii") for ch in text)


def _message(text: str) -> str:
    """An error's message as shown: its lines kept, each after the first indented under
    the code, so that none can pass for a traceback's own line, and its tabs (Lua's
    messages indent with them: "module 'x' not found:\n\tno file ..."); the rest escaped."""
    return printable(text, keep="\n\t").replace("\n", "\n    ")
