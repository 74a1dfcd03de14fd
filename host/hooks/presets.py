"""Hook presets: ready-made observers that log, time and report errors.

``from host import hooks``::

    Host(tools, hooks=hooks.presets.error_logging())
    Host(tools, hooks=hooks.presets.merge(hooks.presets.logging(verbose=True), my_hook))

=======================  ==============================================================
preset                   what it does
=======================  ==============================================================
``logging(verbose)``     a line per run started and finished, per tool call, per retry,
                         fallback and degraded answer, per task try; ``verbose``: with
                         the calls' parameters and results (cut to 200 characters)
``timing()``             a line per tool call (DEBUG) and one per run with its tools'
                         times (INFO); ``.summary()`` the per-tool aggregates
``error_logging()``      one block per failed tool call or failed run: tool, error code,
                         message, parameters, recovered or not (the seed's
                         ``❌ Gadget Error``)
``monitoring()``         ``logging() + timing() + error_logging()``; the metrics of the
                         monitoring issue will be fed from its measurements
``silent()``             no hooks at all
``merge(*items)``        presets and hooks as one preset
=======================  ==============================================================

A preset is a :class:`Preset`: a list of observers, usable wherever hooks are
(``Host(hooks=...)``, ``Coordinator(hooks=...)``, a list of hooks holding presets).
Presets only observe: they never change a run.

**Logs.** Every preset logs through Python's :mod:`logging`, on the logger
``polyspell.hooks`` (a child of ``polyspell``, the logger of the dispatcher's own
warnings), so it is routed like any library's logs: ``logging.basicConfig(level="INFO")``
shows everything; ``logging.getLogger("polyspell").setLevel(...)`` or a handler on
``polyspell`` picks them out. Levels: INFO for what went as planned, WARNING for an error
that was recovered (and a fallback being tried), ERROR for one that was not; timing's
per-call lines are DEBUG. A script's text (parameters, results, messages, file names) is
shown on one line with its control characters escaped (:func:`host.lines.shown_text`) and
cut, so a hostile script cannot forge a log line, colour a terminal or flood the log; the
values of keys that name secrets (``password``, ``token``, ``api_key``, ``auth``...) are
shown as ``"***"`` (an error's message is the tool's own: it is shown, cut).

**Merging.** ``merge`` flattens presets and hooks, in order, into one :class:`Preset`:
the same hook object given twice is kept once; the same preset given twice (``merge(
monitoring(), error_logging())``) is kept once, where it first appears, when its
options are the same, and refused (``configuration/invalid_value``) when they differ
(``logging()`` and ``logging(verbose=True)``: which one was meant?). Distinct hooks are
all kept: observers all run, controllers chain by priority as always (no hook replaces
another).
"""

from __future__ import annotations

import json
import logging as _logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bridge import ConfigurationError
from bridge.names import closest, did_you_mean
from host.hooks.dispatch import Hook, observer
from host.lines import shown_text

LOGGER_NAME = "polyspell.hooks"
logger = _logging.getLogger(LOGGER_NAME)

SHOWN_CHARS = 200  # parameters and results in a log line, at most (then "... (N characters)")
MESSAGE_CHARS = 500  # an error's message in a log line, at most
NAME_CHARS = 120  # a tool, script or task name
MAX_OPEN_RUNS = 1000  # runs a preset follows at once (their per-run state)


class Preset(list[Hook]):
    """A list of hooks with a ``name`` (``Host(hooks=preset)``). ``parts`` are the presets
    it is made of (itself for a plain preset); :meth:`summary` is its timing's
    aggregates, when it times."""

    def __init__(self, name: str, hooks: Iterable[Hook] = (), *,
                 options: dict[str, Any] | None = None,
                 parts: list[Preset] | None = None, timings: Timings | None = None) -> None:
        super().__init__(hooks)
        self.name = name
        self.options = options or {}
        self.parts: list[Preset] = [self] if parts is None else parts
        self.timings = timings

    def summary(self) -> dict[str, Any]:
        """The timing aggregates of every run and tool call seen so far (see
        :meth:`Timings.summary`); ``{}`` for a preset that does not time."""
        return self.timings.summary() if self.timings is not None else {}

    def __repr__(self) -> str:
        return f"<preset {self.name}: {len(self)} hooks>"


# -- what is shown -------------------------------------------------------------------


def _text(value: Any, limit: int = NAME_CHARS) -> str:
    """A name or message from a script, on one line, escaped and cut."""
    return shown_text(value if isinstance(value, str) else str(value), limit=limit)


_SECRET_WORDS = frozenset({"password", "passwd", "pass", "secret", "token", "apikey", "auth",
                           "authorization", "credential", "credentials", "cookie",
                           "session", "sessionid", "privatekey", "passphrase"})
_SECRET_PAIRS = ("api_key", "private_key", "access_key", "secret_key", "session_id")


def _secret(key: str) -> bool:
    """Whether a parameter named ``key`` holds a secret: one of its words (``api_key``,
    ``apiKey``, ``X-Auth-Token``...) names one. ``max_tokens`` and ``author`` do not."""
    words = re.findall(r"[a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key[:100]).lower())
    joined = "_".join(words)
    return any(word in _SECRET_WORDS for word in words) or any(
        pair in joined for pair in _SECRET_PAIRS)


def _data(value: Any, limit: int = SHOWN_CHARS) -> str:
    """JSON-like data from a script as JSON text on one line, escaped and cut; the work
    is bounded by ``limit`` too (a 10 MB parameter is not encoded whole). The value of a
    key that names a secret (``password``, ``api_key``, ``token``...) is ``"***"``."""
    parts: list[str] = []
    room = [limit + 1]  # one more: to know that it was cut

    def add(text: str) -> bool:
        parts.append(text[:room[0]])
        room[0] -= len(text)
        return room[0] > 0

    def walk(item: Any, depth: int) -> bool:
        if isinstance(item, str):
            return add(json.dumps(item[:room[0]], ensure_ascii=False)
                       + ("" if len(item) <= room[0] else "..."))
        if item is None or isinstance(item, bool):
            return add(json.dumps(item))
        if isinstance(item, int):
            return add(str(item) if item.bit_length() < 200 else "<a huge integer>")
        if isinstance(item, float):
            return add(repr(item) if math.isfinite(item) else "null")
        if depth > 20:
            return add("...")
        if isinstance(item, dict):
            if not add("{"):
                return False
            for n, (key, sub) in enumerate(item.items()):
                if (n and not add(", ")) or not walk(str(key), depth + 1) or not add(": "):
                    return False
                if _secret(str(key)):  # never a password in a log
                    if not add('"***"'):
                        return False
                elif not walk(sub, depth + 1):
                    return False
            return add("}")
        if isinstance(item, (list, tuple)):
            if not add("["):
                return False
            for n, sub in enumerate(item):
                if (n and not add(", ")) or not walk(sub, depth + 1):
                    return False
            return add("]")
        return add(f"<{type(item).__name__}>")

    whole = walk(value, 0)
    text = "".join(parts)
    if not whole or len(text) > limit:
        text = text[:limit] + "..."
    return shown_text(text, limit=limit * 2)  # escapes may lengthen it: bounded anyway


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 0.001:
        return f"{seconds * 1000:.3f} ms"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _run(run_id: Any) -> str:
    return _text(run_id, 12)[:8]


def _where(ctx: Any) -> str:
    caller = ctx.caller
    if caller.file:
        line = f":{caller.line}" if caller.line else ""
        return f" from {_text(caller.file)}{line}"
    return f" from {_text(caller.language)}"


def _error(err: Any) -> str:
    """``category/kind: message`` of a unified error, shown safely."""
    code = getattr(err, "code", None)
    message = getattr(err, "message", None)
    if code is None:
        return _text(err, MESSAGE_CHARS)
    return f"{_text(code)}: {_text(message or '', MESSAGE_CHARS)}"


def _code(err: Any) -> str:
    return _text(getattr(err, "code", err))


class _Runs:
    """Per-run state of a preset (runs end in any order, some never: bounded)."""

    def __init__(self) -> None:
        self._state: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run_id: str, make: Callable[[], Any]) -> Any:
        with self._lock:
            state = self._state.get(run_id)
            if state is None:
                state = self._state[run_id] = make()
                if len(self._state) > MAX_OPEN_RUNS:
                    self._state.popitem(last=False)
            return state

    def pop(self, run_id: str) -> Any:
        with self._lock:
            return self._state.pop(run_id, None)


# -- logging ------------------------------------------------------------------------


def logging(verbose: bool = False) -> Preset:
    """A line (INFO) per run started and finished, per tool call, per retry, fallback and
    degraded answer, per coordinator task try started and finished (WARNING for a
    failure); ``verbose``: each call's parameters as it starts, its result as it ends
    (cut to :data:`SHOWN_CHARS` characters)."""
    if not isinstance(verbose, bool):
        raise ConfigurationError.InvalidValue(key="logging.verbose", value=repr(verbose)[:200],
                                              reason="verbose is True or False")

    @observer("run_started", name="presets.logging.run_started")
    def run_started(ctx: Any) -> None:
        logger.info("run started: %s (%s) [run %s]", _text(ctx.script),
                    _text(ctx.language), _run(ctx.run_id))

    @observer("run_finished", name="presets.logging.run_finished")
    def run_finished(ctx: Any) -> None:
        if ctx.error is None:
            result = f": {_data(ctx.result)}" if verbose else ""
            logger.info("run finished: %s (%s) in %s%s [run %s]", _text(ctx.script),
                        _text(ctx.language), _ms(ctx.duration), result, _run(ctx.run_id))
        else:
            logger.warning("run failed: %s (%s) after %s: %s [run %s]", _text(ctx.script),
                           _text(ctx.language), _ms(ctx.duration), _code(ctx.error),
                           _run(ctx.run_id))

    @observer("tool_call_started", name="presets.logging.tool_call_started")
    def call_started(ctx: Any) -> None:
        logger.info("tool call: %s %s%s [run %s]", _text(ctx.tool), _data(ctx.params),
                    _where(ctx), _run(ctx.run_id))

    @observer("tool_call_finished", name="presets.logging.tool_call_finished")
    def call_finished(ctx: Any) -> None:
        attempt = f", attempt {ctx.attempt}" if ctx.attempt > 1 else ""
        if ctx.error is not None:
            logger.warning("tool failed: %s%s (%s error%s): %s [run %s]", _text(ctx.tool),
                           _where(ctx), _text(ctx.error_type), attempt, _code(ctx.error),
                           _run(ctx.run_id))
            return
        result = f": {_data(ctx.result)}" if verbose else ""
        how = "recovered" if ctx.recovered_from is not None else "ok"
        why = f" (from {_code(ctx.recovered_from)}{attempt})" if ctx.recovered_from \
            is not None else (f" ({attempt[2:]})" if attempt else "")
        logger.info("tool %s: %s%s%s%s [run %s]", how, _text(ctx.tool), _where(ctx), why,
                    result, _run(ctx.run_id))

    @observer("retry", name="presets.logging.retry")
    def retried(ctx: Any) -> None:
        logger.info("retry: %s after attempt %d (%s), again in %s [run %s]",
                    _text(ctx.tool), ctx.attempt, _text(ctx.error), _ms(ctx.delay),
                    _run(ctx.run_id))

    @observer("fallback", name="presets.logging.fallback")
    def fell_back(ctx: Any) -> None:
        logger.info("fallback: %s -> %s (after %s) [run %s]", _text(ctx.tool),
                    _FALLBACKS.get(ctx.option) or _text(ctx.option or "the next option"),
                    _text(ctx.error),
                    _run(ctx.run_id))

    @observer("degraded", name="presets.logging.degraded")
    def degraded(ctx: Any) -> None:
        logger.info("degraded: %s answered its degraded value (%s) [run %s]",
                    _text(ctx.tool), _text(ctx.error or "degradation level"),
                    _run(ctx.run_id))

    @observer("task_started", name="presets.logging.task_started")
    def task_started(ctx: Any) -> None:
        logger.info("task started: %s (%s, %s) try %d", _text(ctx.task_id),
                    _text(ctx.language), _text(ctx.script), ctx.attempt)

    @observer("task_finished", name="presets.logging.task_finished")
    def task_finished(ctx: Any) -> None:
        level = _logging.INFO if ctx.status == "succeeded" else _logging.WARNING
        error = f": {_code(ctx.error)}" if ctx.error is not None else ""
        logger.log(level, "task %s: %s try %d in %s%s", _text(ctx.status), _text(ctx.task_id),
                   ctx.attempt, _ms(ctx.duration), error)

    hooks = [run_started, run_finished, call_finished, retried, fell_back, degraded,
             task_started, task_finished]
    if verbose:
        hooks.insert(2, call_started)
    return Preset("logging", hooks, options={"verbose": verbose})


# -- timing -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measurement:
    """One duration a timing preset measured: ``kind`` ``"tool_call"``, ``"run"`` or
    ``"task"``; ``name`` the tool, script or task; ``ok`` whether it succeeded; ``error``
    the error's code when not. (What the monitoring issue's metrics will be fed.)"""

    kind: str
    name: str
    duration: float
    ok: bool
    run_id: str | None = None
    error: str | None = None


class _Aggregate:
    __slots__ = ("calls", "failures", "least", "most", "total")

    def __init__(self) -> None:
        self.calls = self.failures = 0
        self.total = 0.0
        self.least = math.inf
        self.most = 0.0

    def add(self, duration: float, ok: bool) -> None:
        self.calls += 1
        self.failures += not ok
        self.total += duration
        self.least = min(self.least, duration)
        self.most = max(self.most, duration)

    def as_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "failures": self.failures,
                "total": round(self.total, 6),
                "mean": round(self.total / self.calls, 6) if self.calls else 0.0,
                "min": round(self.least, 6) if self.calls else 0.0,
                "max": round(self.most, 6)}


MAX_AGGREGATES = 10_000  # names aggregated per kind (names come from the host's tools,
# scripts and plans: a bound, not a limit anyone meets)


class Timings:
    """The aggregates of a timing preset: per tool, per script, per task; thread-safe.
    ``on_measure(measurement)``, when given, sees each :class:`Measurement` as it is
    taken (what the monitoring issue's metrics will use)."""

    def __init__(self, on_measure: Callable[[Measurement], Any] | None = None) -> None:
        if on_measure is not None and not callable(on_measure):
            raise ConfigurationError.InvalidValue(
                key="timing.on_measure", value=repr(on_measure)[:200],
                reason="on_measure is a function taking one Measurement")
        self.on_measure = on_measure
        self._kinds: dict[str, dict[str, _Aggregate]] = {
            "tool_call": {}, "run": {}, "task": {}}
        self._lock = threading.Lock()

    def add(self, measurement: Measurement) -> None:
        """Count ``measurement`` in its aggregate (and hand it to ``on_measure``)."""
        with self._lock:
            table = self._kinds[measurement.kind]
            aggregate = table.get(measurement.name)
            if aggregate is None:
                if len(table) >= MAX_AGGREGATES:
                    return
                aggregate = table[measurement.name] = _Aggregate()
            aggregate.add(measurement.duration, measurement.ok)
        if self.on_measure is not None:
            self.on_measure(measurement)

    def summary(self) -> dict[str, Any]:
        """``{"tools": {name: {...}}, "runs": {script: {...}}, "tasks": {id: {...}}}``,
        each ``{"calls", "failures", "total", "mean", "min", "max"}`` (seconds)."""
        with self._lock:
            return {plural: {name: aggregate.as_dict() for name, aggregate in
                             self._kinds[kind].items()}
                    for kind, plural in (("tool_call", "tools"), ("run", "runs"),
                                         ("task", "tasks"))}


def timing(on_measure: Callable[[Measurement], Any] | None = None) -> Preset:
    """Durations: a DEBUG line per tool call, an INFO line per run (its duration and its
    tools' calls and times) and per task try; the preset's :meth:`Preset.summary` keeps
    per-tool, per-script and per-task aggregates for the host's life. ``on_measure``:
    see :class:`Timings`."""
    timings = Timings(on_measure)
    runs = _Runs()
    lock = threading.Lock()  # a run's calls may finish together (JS Promise.all)

    @observer("tool_call_finished", name="presets.timing.tool_call_finished")
    def call_finished(ctx: Any) -> None:
        ok = ctx.error is None
        timings.add(Measurement("tool_call", ctx.tool, ctx.duration, ok, ctx.run_id,
                                None if ok else getattr(ctx.error, "code", None)))
        per_run = runs.get(ctx.run_id, dict)
        with lock:
            per_run.setdefault(ctx.tool, _Aggregate()).add(ctx.duration, ok)
        logger.debug("timing: tool %s %s%s [run %s]", _text(ctx.tool), _ms(ctx.duration),
                     "" if ok else " (failed)", _run(ctx.run_id))

    @observer("run_finished", name="presets.timing.run_finished")
    def run_finished(ctx: Any) -> None:
        ok = ctx.error is None
        timings.add(Measurement("run", ctx.script, ctx.duration, ok, ctx.run_id,
                                None if ok else getattr(ctx.error, "code", None)))
        with lock:
            per_run = dict(runs.pop(ctx.run_id) or {})
        tools = ", ".join(
            f"{_text(name)} {a.calls}x {_ms(a.total)}"
            + (f" ({a.failures} failed)" if a.failures else "")
            for name, a in list(per_run.items())[:20])
        more = f" and {len(per_run) - 20} more tools" if len(per_run) > 20 else ""
        logger.info("timing: run %s (%s) %s%s; tools: %s%s [run %s]", _text(ctx.script),
                    _text(ctx.language), _ms(ctx.duration), "" if ok else " (failed)",
                    tools or "none", more, _run(ctx.run_id))

    @observer("task_finished", name="presets.timing.task_finished")
    def task_finished(ctx: Any) -> None:
        ok = ctx.status == "succeeded"
        duration = ctx.duration or 0.0
        timings.add(Measurement("task", ctx.task_id, duration, ok, None,
                                None if ctx.error is None else getattr(ctx.error, "code", None)))
        logger.info("timing: task %s try %d %s (%s)", _text(ctx.task_id), ctx.attempt,
                    _ms(duration), _text(ctx.status))

    return Preset("timing", [call_finished, run_finished, task_finished],
                  options={"on_measure": on_measure}, timings=timings)


# -- error logging -------------------------------------------------------------------


def _block(title: str, lines: list[tuple[str, str]]) -> str:
    return "\n".join([f"❌ {title}", *(f"   {key}: {value}" for key, value in lines)])


_FALLBACKS = {"value": "a default value", "cached": "the cached result"}  # bridge.render's


def error_logging() -> Preset:
    """One block per failed tool call or failed run, in the spirit of the seed's
    ``❌ Gadget Error``::

        ❌ Tool error: weather
           Error: tool/execution_failed: Tool execution failed: weather - LookupError: ...
           Parameters: {"city": "Atlantis"}
           Type: execution, attempt 1, 11.6 ms, from scripts/agent.lua:7
           Recovered: no (the script received the error)

    ERROR for an error that stands, WARNING for one recovered: by a controller's
    ``Recover`` (``tool_call_finished``'s ``recovered_from``), by the tool's degraded
    answer, by an ``after_script_error`` controller (a run); a fallback being tried is a
    WARNING block too (if every option fails, the call's own block follows)."""
    failed_runs = _Runs()

    @observer("tool_call_finished", name="presets.error_logging.tool_call_finished")
    def call_finished(ctx: Any) -> None:
        error = ctx.error if ctx.error is not None else ctx.recovered_from
        if error is None:
            return
        recovered = ctx.error is None
        lines = [("Error", _error(error)), ("Parameters", _data(ctx.params)),
                 ("Type", f"{_text(ctx.error_type or _kind_of(error))}, attempt "
                          f"{ctx.attempt}, {_ms(ctx.duration)},{_where(ctx)}"),
                 ("Recovered", "yes (a hook recovered it: the script received a result)"
                  if recovered else "no (the script received the error)"),
                 ("Run", _run(ctx.run_id))]
        logger.log(_logging.WARNING if recovered else _logging.ERROR,
                   "%s", _block(f"Tool error: {_text(ctx.tool)}", lines))

    @observer("fallback", name="presets.error_logging.fallback")
    def fell_back(ctx: Any) -> None:
        if ctx.error is None:  # a degradation level's cached answer: no error to report
            return
        option = _FALLBACKS.get(ctx.option) or _text(ctx.option or "the next option")
        lines = [("Error", _text(ctx.error)),
                 ("Recovered", f"falling back to {option} (if it fails too, the call's own "
                               f"block follows)"),
                 ("Run", _run(ctx.run_id))]
        logger.warning("%s", _block(f"Tool error: {_text(ctx.tool)}", lines))

    @observer("degraded", name="presets.error_logging.degraded")
    def degraded(ctx: Any) -> None:
        if ctx.error is None:  # degraded by the host's level, not after an error
            return
        lines = [("Error", _text(ctx.error)),
                 ("Recovered", "yes (the tool answered its degraded value)"),
                 ("Run", _run(ctx.run_id))]
        logger.warning("%s", _block(f"Tool error: {_text(ctx.tool)}", lines))

    @observer("script_error", name="presets.error_logging.script_error")
    def script_error(ctx: Any) -> None:
        failed_runs.get(ctx.run_id, lambda: ctx.error)

    @observer("run_finished", name="presets.error_logging.run_finished")
    def run_finished(ctx: Any) -> None:
        escaped = failed_runs.pop(ctx.run_id)
        error = ctx.error if ctx.error is not None else escaped
        if error is None:
            return
        recovered = ctx.error is None
        lines = [("Error", _error(error)),
                 ("Duration", _ms(ctx.duration)),
                 ("Recovered", "yes (an after_script_error controller answered a result)"
                  if recovered else "no"),
                 ("Run", _run(ctx.run_id))]
        logger.log(_logging.WARNING if recovered else _logging.ERROR, "%s",
                   _block(f"Run failed: {_text(ctx.script)} ({_text(ctx.language)})", lines))

    return Preset("error_logging", [call_finished, fell_back, degraded, script_error,
                                    run_finished])


def _kind_of(err: Any) -> str:
    from host.hooks.layer import error_type

    try:
        return error_type(err)
    except AttributeError:  # not a unified error: nothing to classify
        return "execution"


# -- monitoring, silent, merge ------------------------------------------------------------


def monitoring(verbose: bool = False) -> Preset:
    """``logging(verbose) + timing() + error_logging()``: everything, in one preset.
    Its :meth:`Preset.summary` is its timing's; the monitoring issue's metrics will be
    fed from the same measurements."""
    merged = merge(logging(verbose), timing(), error_logging())
    merged.name = "monitoring"
    return merged


def silent() -> Preset:
    """No hooks: what to name when a preset is expected and nothing should be logged."""
    return Preset("silent", [], parts=[])


def merge(*items: Any) -> Preset:
    """Presets and hooks as one :class:`Preset`, in order (the rules: the module
    docstring). Anything else is ``configuration/invalid_value`` naming its position."""
    hooks: list[Hook] = []
    seen: set[int] = set()
    parts: list[Preset] = []
    kept: dict[str, Preset] = {}
    timings: Timings | None = None

    def add(hook: Hook) -> None:
        if id(hook) not in seen:
            seen.add(id(hook))
            hooks.append(hook)

    for index, item in enumerate(items):
        if isinstance(item, Hook):
            add(item)
            continue
        if isinstance(item, Preset):
            own = [hook for hook in item if not any(hook in part for part in item.parts)]
            for part in item.parts:
                earlier = kept.get(part.name)
                if earlier is not None:
                    if earlier.options != part.options:
                        raise ConfigurationError.InvalidValue(
                            key=f"merge[{index}]", value=repr(part)[:200],
                            reason=f"the preset {part.name!r} is given twice with different "
                                   f"options ({_options(earlier)} and {_options(part)}): "
                                   f"give it once")
                    continue
                kept[part.name] = part
                parts.append(part)
                if timings is None:
                    timings = part.timings
                for hook in part:
                    add(hook)
            for hook in own:
                add(hook)
            continue
        if isinstance(item, (list, tuple)):
            for inner, hook in enumerate(item):
                if isinstance(hook, Preset):
                    for sub in merge(hook):
                        add(sub)
                    continue
                if not isinstance(hook, Hook):
                    raise _not_a_hook(f"[{index}][{inner}]", hook)
                add(hook)
            continue
        raise _not_a_hook(f"[{index}]", item)
    name = "+".join(part.name for part in parts) or ("hooks" if hooks else "silent")
    return Preset(name, hooks, parts=parts, timings=timings)


def _options(preset: Preset) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in preset.options.items()) or "none"


def _not_a_hook(where: str, item: Any) -> ConfigurationError:
    return ConfigurationError.InvalidValue(
        key=f"hooks{where}", value=repr(item)[:200],
        reason="not a hook or a preset: decorate the function with @hooks.observer(point) "
               "or @hooks.controller(point), or give a hooks.presets preset")


PRESETS: dict[str, Callable[[], Preset]] = {
    "logging": logging,
    "verbose_logging": lambda: logging(verbose=True),
    "timing": timing,
    "error_logging": error_logging,
    "monitoring": monitoring,
    "silent": silent,
}
"""The presets by the names ``--hooks`` and ``[hooks] presets`` take."""


def named(names: Iterable[str], key: str = "--hooks") -> Preset:
    """The presets ``names`` (``["logging", "timing"]``), merged; an unknown name is
    ``configuration/invalid_value`` naming it (``key``: where it was given) and the
    presets."""
    chosen = []
    for name in names:
        factory = PRESETS.get(name)
        if factory is None:
            hint = did_you_mean(closest(name, PRESETS))
            raise ConfigurationError.InvalidValue(
                key=key, value=_text(name),
                reason=f"unknown hook preset {_text(name)!r} ({hint}the presets: "
                       f"{', '.join(PRESETS)})")
        chosen.append(factory())
    return merge(*chosen)
