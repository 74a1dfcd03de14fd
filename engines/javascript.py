"""The JavaScript engine: quickjs-ng, driven through suspensions, with no Python inside.

Every ``start`` makes a fresh ``quickjs.Context``, evaluates the prelude
(``javascript_prelude.js``, which gives scripts ``args``, ``tools``, ``console`` and the
error constructors; read as byte code made once per process where the binding allows,
see ``javascript_bytecode.py``, else compiled) and then the script. Python only ever
calls the few prelude functions the prelude hands out, passing JSON strings and plain
scalars and receiving JSON strings: no Python callable is entered from JS (so quickjs's
time limit can stay on) and no Python object enters the context.

A tool call in JS records a request and returns a Promise. After each evaluation or
settlement the engine runs quickjs's pending jobs until there are none, then asks the
prelude where the script stands: requests queued (:class:`Suspended`), ``main`` settled
(:class:`Finished` / :class:`Failed`), or stuck on a promise nothing will settle
(:class:`Failed`).

Scripts (``.js``) are evaluated as global code; if they define a function ``main``
(``function main`` or ``const main = ...``), ``main(args)`` is called and awaited. Modules
(``.mjs``) are evaluated as ES modules, so top-level ``await`` works; ``main`` may be
declared or exported. Either way one line is appended after the source (it reads
``main``), which changes no line or column of the script.

Libraries: a module that imports (``import``, ``import()``), or a script that calls
``require("...")``, first suspends with requests of the reserved kind ``module`` (params
``{"style": "import" | "require", "importer": where the host said the importing file
is}``); the host answers with the file's name and text (host/libraries.py). The engine
compiles what it is given as javascript_modules.py describes (quickjs's binding has no
module loader and names every source ``<input>``), hands the modules to the prelude, which
links and runs them, and maps each module's ``<input>`` lines back to its own file.

Data a script hands to Python (results, tool parameters) is JSON text made by the
prelude's ``json()``, whose replacer stops it past ``bridge.data.MAX_DEPTH`` levels or once
Python would build more than the memory limit from it (``resource/memory_exhaustion``, as
when making the text ran the context out of memory).

Limits: memory and stack are quickjs's own. Time is quickjs's interrupt, which scripts
cannot catch. Where the binding is the one known, the interrupt is an alarm
(javascript_alarm.py): it goes off at the deadline itself, wall-clock time, set by the
process's alarm thread, or at once when the engine is told to stop (from any thread), and
reading it costs no clock. Elsewhere (another binding, and in a worker process, whose one
thread is the engine's) it is the binding's time limit, which counts the CPU time of the
whole process (``clock()``, a system call) from the start of each call into JS; each call
gets ``remaining wall seconds x cpu_factor``, so it cannot fire before the deadline even
when other threads burn CPU, but a lone busy loop runs up to ``cpu_factor`` times past it.
The deadline itself is checked before every call into JS. The limit is computed when a step
begins and again once ``_REARM`` seconds have passed (a tool round trip takes a few
microseconds: recomputing it for every call cost more than the call), so a call may get up
to ``_REARM x cpu_factor`` CPU seconds more than the time left, never less. quickjs drops
an interrupt raised while JS runs inside error construction: so the prelude sets no
``Error.prepareStackTrace`` (and scripts cannot set one), or a loop that swallows errors
would never stop.

A tool round trip is four calls into JS: ``settle`` (a number, string, boolean or None
result goes as itself, which quickjs converts, anything else as JSON text), then
``execute_pending_job`` until it finds nothing to run (usually twice), then ``poll``, whose
answer is one compact JSON array (see the prelude) read by ``json``'s C scanner directly.
With the binding's time limit, ``settle`` with a plain value and ``poll`` while requests
are queued run without it (each call with a limit reads the process CPU clock first,
about 0.6 us): they run none of the script's code (the prelude's "unguarded code", which
must stay so), so the limit is lifted after the jobs and set again before the next job.
A failure's envelope goes, when it is the usual kind, as ``settleError``'s arguments
(:func:`_flat_error`: no JSON text to make here and parse there), with the time limit:
making the error may run the script's code (its setters).

An engine, like its quickjs context, is used from one thread; ``close()`` it there too.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import json
import math
import operator
import os
import posixpath
import re
import threading
import time
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any, ClassVar, Literal

try:  # the C module alone: the `quickjs` package starts an executor thread on import
    import _quickjs as quickjs
except ImportError:  # pragma: no cover - a layout where only the package is importable
    import quickjs  # type: ignore[no-redef]
import pydantic_core

from bridge import javascript as translate
from bridge.data import ITEM_BYTES, MAX_DEPTH, fits_as_json, json_room
from bridge.envelope import error_envelope, script_constructors
from bridge.errors import SpellError, field_defaults, variant_class, variants
from bridge.frames import Frame
from bridge.randomness import random_bits
from engines import javascript_alarm
from engines import javascript_bytecode as bytecode
from engines import javascript_modules as modules
from engines.base import (
    SANDBOX_HINT_START,
    Engine,
    Failed,
    Finished,
    Problem,
    Step,
    Suspended,
    ToolInfo,
    ToolReply,
    ToolRequest,
    crossing_error,
    did_not_fit,
    misdirected,
    protocol_violation,
)
from engines.specs import JAVASCRIPT

_HERE = resources.files("engines")
PRELUDE = _HERE.joinpath("javascript_prelude.js").read_text("utf-8")
ERRORS = _HERE.joinpath("javascript_errors.js").read_text("utf-8")  # compiled on first use
# Appended after the source on a line of its own: hands `main` to the prelude.
SCRIPT_TAIL = '\n;typeof main === "function" ? main : undefined\n'
MODULE_TAIL = ('\n;globalThis[Symbol.for("polyspell.main")] = '
               'typeof main === "function" ? main : undefined;\n')
NO_TIME_LIMIT = -1.0
# Time for the engine's own JS outside the run's time (the prelude, output, an error after a
# limit): CPU seconds (x cpu_factor) with the binding's limit, wall seconds with an alarm
_GRACE = 0.25
_GRACE_WALL = 1.0
_REARM = 0.001  # wall seconds after which the time limit is computed again (module doc)
_SAFE_INT = 2**53  # larger ints cross as JSON, which rounds them as JavaScript does
_INT32 = 2**31  # quickjs's binding passes smaller ints as int32 (and truncates larger ones)


class _OutOfTime(Exception):
    """The deadline passed between two calls into JS."""


class _TooLarge(Exception):
    """Data a script hands to Python would need more than the run's memory limit."""


_POSITION = re.compile(r"^\s*at [^\n]*?:(\d+):(\d+)\)?\s*$", re.MULTILINE)
_MODULE_IDS = 1 << 40  # ids of the engine's own module requests: past any the prelude makes


@dataclass
class _Record:
    """A module of a run: its id (the prelude's), file, where the host says it is, its
    kind ("es", "cjs" or "script": the script's own CommonJS text), what it imports (by
    specifier: a record's id, or [message, envelope JSON or None, site]) and the chain of
    imports that first reached it (stack lines, innermost first)."""

    id: int
    file: str
    place: list[Any] | None
    kind: str
    specifiers: dict[str, modules.Import]
    deps: dict[str, Any] = field(default_factory=dict)
    chain: str = ""
    es: modules.EsModule | None = None
    segment: list[Any] | None = None  # its <input> lines, once compiled
    source: str = ""
    frames: list[Frame] = field(default_factory=list)  # the imports that led to it

    @functools.cached_property
    def lines(self) -> list[str]:
        return self.source.split("\n")


def _resolution_key(place: list[Any] | None, specifier: str, style: str) -> Any:
    """What a specifier's resolution depends on (None: too much to say: not memoised):
    a relative one's importer's root and folder, a bare one nothing else."""
    if not specifier.startswith("."):
        return (style, specifier)
    if place is None or not isinstance(place[1], str):
        return None
    return (style, place[0], posixpath.dirname(place[1]), specifier)


def _chain(frames: list[Frame]) -> str:
    """Frames as stack lines (innermost first), for errors made in the prelude."""
    return "".join(f"    at {frame.function} ({frame.file}:{frame.line}:{frame.column})\n"
                   for frame in reversed(frames))


class JavaScriptEngine(Engine):
    """Runs one JavaScript script (or ES module) in a fresh quickjs-ng context."""

    spec = JAVASCRIPT
    # CPU seconds allowed per wall-clock second left (see the module docstring). A host
    # that runs each engine alone in a worker process may lower it towards 1.
    cpu_factor: ClassVar[float] = float(os.cpu_count() or 1)
    # Whether its contexts' interrupt is an alarm (engines.javascript_alarm: one more
    # thread in the process) where the binding allows. A worker process keeps one thread,
    # and the binding's CPU-time limit: the host kills the worker at the deadline anyway.
    alarms: ClassVar[bool] = True

    _ctx: Any = None
    _broken = False
    _cpu_mark = 0.0  # process CPU seconds when the current time limit was set ...
    _cpu_budget = math.inf  # ... and the CPU seconds it allows
    _limit = NO_TIME_LIMIT  # what was given to set_time_limit() for it
    _lifted = False  # whether the limit is lifted (for unguarded code) since
    _stopped = False  # stop() was called: every deadline has passed
    _alarm: javascript_alarm.Alarm | None = None  # the context's interrupt, where it has one
    _tools_file = False
    _map: modules.LineMap | None = None  # once the script links modules (_load_main)

    @classmethod
    def before_confinement(cls) -> None:
        """Open what an engine needs later (the binding's library, through which the
        prelude's byte code is read: engines.javascript_bytecode), for a process that can
        open no file once started (a confined worker, :mod:`engines.worker`)."""
        bytecode.prepare()

    def start(
        self, source: str, filename: str, args: Any, tools: list[ToolInfo], deadline: float
    ) -> Step:
        """Evaluate ``source`` as ``filename`` and run it (and ``main``) until it stops."""
        return self._begin(source, filename, args, tools, deadline, library=False)

    def load(self, source: str, filename: str, tools: list[ToolInfo], deadline: float) -> Step:
        """Evaluate a tools file; its result is the names of the functions in ``exports``."""
        return self._begin(source, filename, None, tools, deadline, library=True)

    def call(self, function: str, params: Any, deadline: float) -> Step:
        """Call ``exports[function](params)`` as an activation of its own, until it stops."""
        if self._ctx is None or self._broken:
            return Failed(protocol_violation(
                "call() on a JavaScript engine that has no tools file loaded"))
        if deadline != self._deadline:
            self._set_deadline(deadline)
        self._last_activation = activation = self._last_activation + 1
        try:
            params_json = _json_text(params)
        except (TypeError, ValueError, RecursionError) as exc:
            return Failed(crossing_error(Problem("params", type(params).__name__,
                                                 f"params: {exc}"), "python", "javascript"))
        try:
            self._allow()  # (_enter, inlined)
            # The prelude's answer: "", or the plain value the call finished with at once,
            # which is the step when no job runs after it (a job can print, call a tool,
            # change the value...): no poll then (see callExport). Else _advance polls.
            answer = self._call_export(activation, function, params_json)
            if answer.__class__ is not str:
                now = _monotonic()  # (_advance's first turn, inlined)
                if now >= self._deadline:
                    raise _OutOfTime
                if now >= self._rearm_at:
                    self._allow()
                if not self._ctx.execute_pending_job():
                    if answer.__class__ is float and answer.is_integer() \
                            and -_MAX_SAFE_INTEGER <= answer <= _MAX_SAFE_INTEGER:
                        answer = int(answer)  # as its JSON text reads (JS writes 3.0 as 3)
                    return Finished(answer, ())
            return self._advance(activation)
        except Exception as exc:  # every way out of a step is a Failed step
            return self._fail(self._from_python(exc))

    def _begin(self, source: str, filename: str, args: Any, tools: list[ToolInfo],
               deadline: float, *, library: bool) -> Step:
        self.close()
        self._filename = filename
        self._source = source
        self._lines: list[str] | None = None
        self._set_deadline(deadline)
        self._started = time.monotonic()
        self._broken = False  # a limit was hit: the context runs no more code
        self._sites: dict[int, list[Frame]] = {}  # call site number -> its frames
        self._owners: dict[int, int] = {}  # request id -> the activation that made it
        self._last_activation = 0  # 0: the script itself, or the tools file's load
        self._max_text = self._memory_limit()  # the longest answer of poll Python reads
        mark = self._nonce = f"{random_bits(64):016x}"  # see LONG_TEXT in the prelude
        self._mark = "\0" + mark + ":"  # (the text has the NUL as \u0000)
        if args is not None and not fits_as_json(args, self._memory_limit()):
            return self._fail(self._unfit("the run's arguments"))  # (see fits_as_json)
        try:
            config = _encode({"file": filename, "args": {} if args is None else args,
                              "mark": mark,
                              "library": library,
                              "tools": [[t.name, t.description] for t in tools],
                              "constructors": _constructors(),
                              "bounds": [MAX_DEPTH, ITEM_BYTES, self._memory_limit()]})
        except (TypeError, ValueError, RecursionError) as exc:
            return self._fail(crossing_error(Problem("args", type(args).__name__,
                                                     f"args: {exc}"), "python", "javascript"))
        problem = _unpassable(source)
        if problem:
            return self._fail(translate.compilation_error(problem, filename, None, None))
        ctx = self._ctx = self._context()
        module = filename.endswith(".mjs")
        self._map = None
        self._records: dict[tuple[str, str], _Record] = {}  # (file, kind) -> its module
        self._by_id: list[_Record] = []
        # request id -> (its resolution key, the modules and specifiers waiting for it)
        self._loading: dict[int, tuple[Any, list[tuple[_Record, str]]]] = {}
        self._asked: dict[Any, int] = {}  # resolution key -> the request asking
        self._resolved: dict[Any, int] = {}  # resolution key -> the module it found
        # an import()'s request id -> the module that calls it, and the specifier
        self._dynamic: dict[int, tuple[_Record, str]] = {}
        self._held: list[ToolReply] = []  # replies that wait for modules being loaded
        self._then: Any = None  # what to do once every module asked for is there
        self._tools_file = library  # no modules (and no hints about them) in a tools file
        self._imports: list[tuple[int, _Record, str]] = []  # import() calls answered
        try:
            api = bytecode.evaluate(ctx, PRELUDE)  # read as byte code, where it can be
            if api is None:  # else compiled, as it always was, in a context nothing ran in
                if bytecode.prepare():  # byte code was tried there (out of memory...)
                    ctx = self._ctx = self._context()
                self._grace()
                api = ctx.eval(PRELUDE)  # (what fails here fails as it did)
            self._api = api
            # the functions the prelude left as globals (TAKEN there), read with no call
            # into JS; setup deletes them before any script code runs
            get = ctx.get
            self._settle, self._poll = get("polyspell$settle"), get("polyspell$poll")
            self._settle_error = get("polyspell$settleError")
            self._drain, self._stashed = get("polyspell$drain"), get("polyspell$stashed")
            self._call_export = get("polyspell$callExport")
            setup = get("polyspell$setup")
            begin = get("polyspell$module" if module else "polyspell$library" if library
                        else "polyspell$run")
            self._grace()
            setup(config, ERRORS, _catalog_json())
            if not library:
                linked = self._load_main(source, filename, module)
                if linked is not None:
                    return linked
            if module:
                try:
                    evaluation = self._enter(ctx.module, source + MODULE_TAIL)
                except quickjs.JSException as exc:
                    text = str(exc)
                    if "could not load module" in text:  # there is no module loader
                        text = text.replace("\n", " (scripts cannot import modules)\n", 1)
                    return self._fail(self._from_exception(text, compiling=True))
                self._enter(begin, evaluation)
            else:
                self._enter(begin, source + SCRIPT_TAIL)
            return self._advance(0)
        except Exception as exc:  # every way out of a step is a Failed step
            return self._fail(self._from_python(exc))

    def _context(self) -> Any:
        """A fresh context (:meth:`_new_context`) whose interrupt is an alarm where the
        binding allows (engines.javascript_alarm: the deadline with no clock read per call
        into JS), else the binding's CPU-time limit (see the module doc)."""
        if self._alarm is not None:
            self._alarm.remove()
        ctx = self._new_context()
        self._alarm = javascript_alarm.install(ctx) if self.alarms else None
        return ctx

    def _new_context(self) -> Any:
        """A fresh quickjs context with the engine's memory and stack limits."""
        ctx = quickjs.Context()
        ctx.set_memory_limit(self.limits.memory_mb * 1024 * 1024)
        ctx.set_max_stack_size(self.limits.stack_kb * 1024)
        return ctx

    # -- modules (see javascript_modules.py: the host finds and reads them) ------------

    def _load_main(self, source: str, filename: str, module: bool) -> Step | None:
        """Start a script that imports (``.mjs``) or requires (``.js``): ask the host for
        its modules first. None: it does neither, and runs as it is."""
        if module:
            if "import" not in source:  # the scan costs more than this look
                return None
            try:
                es = modules.es_module(source)
            except modules.ModuleSyntaxError as exc:
                return self._fail(translate.compilation_error(
                    exc.message, filename, exc.line, exc.column, self._source_lines()))
            if not es.linked:
                return None
            self._map = modules.LineMap(1)
            record = self._new_record(filename, source, None, "es", [], es=es)
        else:
            if not modules.requires(source):  # require("...") calls: else no require at all
                return None
            self._map = modules.LineMap(len(self._source_lines()) + 2)
            record = self._new_record(filename, source, None, "script", [])
        self._then = record
        requests = self._want(record, 0)
        if requests:
            return Suspended(requests, ())
        return self._loaded_all()

    def _new_record(self, file: str, source: str, place: list[Any] | None, kind: str,
                    frames: list[Frame], es: modules.EsModule | None = None) -> _Record:
        if kind == "es" and es is None and file.endswith(".json"):
            es = modules.json_module(source)
        if kind == "es" and es is None:
            try:
                es = modules.es_module(source)
            except modules.ModuleSyntaxError as exc:
                err = translate.compilation_error(exc.message, file, exc.line, exc.column,
                                                  source.split("\n"))
                err.frames = [*frames, *err.frames]
                raise err from None
        if es is not None:
            specifiers = {}
            for item in es.imports:
                specifiers.setdefault(item.specifier, item)
        elif file.endswith(".json"):
            specifiers = {}
        else:
            specifiers = {item.specifier: item for item in reversed(modules.requires(source))}
        record = _Record(len(self._by_id), file, place, kind, specifiers, es=es,
                         source=source, frames=frames)
        self._by_id.append(record)
        self._records[(file, kind)] = record
        return record

    def _site(self, record: _Record, item: modules.Import) -> list[Frame]:
        """The frames of an import or require in ``record``: the chain that led to it."""
        lines = record.lines
        own = translate.make_frame(record.file, item.line, item.column,
                                   "<module>" if record.id else "<script>", lines)
        return [*record.frames, own]

    def _want(self, record: _Record, activation: int) -> list[ToolRequest]:
        """Requests for the modules ``record`` imports that it does not have yet."""
        requests = []
        style = "import" if record.kind == "es" else "require"
        for specifier, item in record.specifiers.items():
            if specifier in record.deps:
                continue
            # the same specifier from the same folder is the same file: asked for once
            key = _resolution_key(record.place, specifier, style)
            known = self._resolved.get(key) if key is not None else None
            if known is not None:
                record.deps[specifier] = known
                continue
            record.deps[specifier] = None
            asked = self._asked.get(key) if key is not None else None
            if asked is not None:
                self._loading[asked][1].append((record, specifier))
                continue
            self._last_module = request_id = getattr(self, "_last_module", _MODULE_IDS) + 1
            self._loading[request_id] = (key, [(record, specifier)])
            if key is not None:
                self._asked[key] = request_id
            self._owners[request_id] = activation
            requests.append(ToolRequest(request_id, specifier,
                                        {"style": style, "importer": record.place}, None,
                                        self._site(record, item), "module"))
        return requests

    def _dynamic_import(self, request_id: int, module_id: Any, specifier: Any,
                        frames: list[Frame]) -> ToolRequest:
        """The host request for an ``import()`` the prelude queued."""
        record = self._by_id[module_id]
        item = modules.Import(str(specifier), frames[-1].line or 1, frames[-1].column or 1) \
            if frames else modules.Import(str(specifier), 1, 1)
        record.specifiers.setdefault(item.specifier, item)
        self._dynamic[request_id] = (record, item.specifier)
        return ToolRequest(request_id, item.specifier,
                           {"style": "import", "importer": record.place}, None, frames,
                           "module")

    def _modules_arrived(self, replies: list[ToolReply], activation: int) -> Step | None:
        """Take the host's answers to module requests in; a step while more are needed
        (or the script's start, once all are there), None to go on with the rest."""
        wanted: list[ToolRequest] = []
        for reply in replies:
            if reply.id in self._loading:
                key, waiting = self._loading.pop(reply.id)
                self._owners.pop(reply.id, None)
                if key is not None:
                    del self._asked[key]
                for record, specifier in waiting:
                    wanted += self._arrived(record, specifier, reply, activation)
                    found = record.deps[specifier]
                    if key is not None and isinstance(found, int):
                        self._resolved[key] = found
                continue
            if reply.id in self._dynamic:
                record, specifier = self._dynamic.pop(reply.id)
                self._imports.append((reply.id, record, specifier))
                if specifier in record.deps and record.deps[specifier] is not None:
                    self._owners.pop(reply.id, None)
                    continue
            else:
                self._held.append(reply)
                continue
            self._owners.pop(reply.id, None)
            wanted += self._arrived(record, specifier, reply, activation)
        if self._loading:
            return Suspended(wanted, ())
        return self._loaded_all()

    def _arrived(self, record: _Record, specifier: str, reply: ToolReply,
                 activation: int) -> list[ToolRequest]:
        item = record.specifiers[specifier]
        frames = self._site(record, item)
        chain = _chain(frames)
        result = reply.result
        if reply.error is not None:
            record.deps[specifier] = [str(reply.error.get("message", "")), _encode(reply.error),
                                      chain]
            return []
        if not isinstance(result, dict) or not isinstance(result.get("file", result.get(
                "missing")), str):
            raise protocol_violation(f"a module request's answer is {{file, source}} or "
                                     f"{{missing}}: {str(result)[:200]}")
        if "missing" in result:
            record.deps[specifier] = [result["missing"], None, chain]
            return []
        kind = "es" if record.kind == "es" else "cjs"
        known = self._records.get((result["file"], kind))
        if known is None:
            if not isinstance(result.get("source"), str):
                raise protocol_violation("a module request's answer has no source text")
            problem = _unpassable(result["source"])
            if problem:
                raise translate.compilation_error(problem, result["file"], None, None)
            known = self._new_record(result["file"], result["source"], result.get("importer"),
                                     kind, frames)
            known.chain = chain
            record.deps[specifier] = known.id
            return self._want(known, activation)
        record.deps[specifier] = known.id
        return []

    def _loaded_all(self) -> Step | None:
        """Every module asked for is there: compile and hand over the new ones, then start
        the script, or answer the import() calls that waited."""
        api = self._api
        new = [record for record in self._by_id if record.segment is None]
        self._define(new)
        names: dict[int, set[str]] = {}
        for record in new:
            if record.es is not None:
                self._check_names(record, names)
        imports, self._imports = self._imports, []
        for request_id, record, specifier in imports:
            dep = record.deps.get(specifier)
            self._enter(api("settleImport"), request_id,
                        dep if isinstance(dep, int) else _encode(dep[:2]))
        start, self._then = self._then, None
        if start is None:
            return None
        if start.kind == "es":
            self._enter(api("startModules"), start.id)
        else:
            self._enter(api("defineRequire"), start.id)
            self._enter(api("run"), self._source + SCRIPT_TAIL)
        return self._advance(0)

    def _define(self, records: list[_Record]) -> None:
        """Compile the new modules ``records`` in one evaluation, each under lines of its
        own (one array of their functions), and hand them to the prelude."""
        assert self._map is not None
        texts, metas, fns = [], [], None
        first = self._map.next_line
        for record in records:
            es = record.es
            if record.kind == "script":  # the script itself, evaluated on its own
                record.segment = []
            else:
                if es is not None:
                    text, shift = es.text(record.id == 0), len(es.wrapper())
                else:
                    text = modules.commonjs(record.source, record.file.endswith(".json"))
                    shift = len(modules.commonjs("")) - 3
                span = text.count("\n") + 1
                at = self._map.add(record.file, record.lines, shift, span)
                record.segment = [at, record.file, len(record.lines), shift]
                texts.append(text)
            meta = {"file": record.file, "kind": record.kind, "deps": record.deps,
                    "imports": list(record.specifiers), "chain": record.chain,
                    "dir": posixpath.dirname(record.file), "bindings": {}, "reexports": {},
                    "stars": [], "segment": record.segment or None, "id": record.id}
            if es is not None:
                names = [item.specifier for item in es.imports]
                meta["bindings"] = {local: [names[i], name] for local, (i, name)
                                    in es.bindings.items()}
                meta["reexports"] = {name: [names[i], imported] for name, (i, imported)
                                     in es.reexports.items()}
                meta["stars"] = [names[i] for i in es.stars]
            metas.append(meta)
        if texts:
            # "[" on the line before the first module's: each text starts a line of its own
            try:
                fns = self._enter(self._ctx.eval, "\n" * (first - 2) + "[\n"
                                  + ",\n".join(texts) + "]")
            except quickjs.JSException as exc:
                raise self._module_syntax_error(str(exc)) from None
        self._enter(self._api("defineModules"), fns, _encode(metas))

    def _module_syntax_error(self, text: str) -> Exception:
        """A module's syntax error at its own file and line (the text went through the
        prelude's clean(), which does not know these modules yet: its position is
        <input>'s, named as the script, mapped here)."""
        assert self._map is not None
        name, message, stack = translate.split_exception(text)
        at = _POSITION.search(stack)
        place = self._map.place(int(at[1]), int(at[2])) if at else None
        if name != "SyntaxError" or place is None:
            return quickjs.JSException(text)
        record = next(r for r in reversed(self._by_id) if r.file == place[0])
        err = translate.compilation_error(message, record.file, place[1], place[2],
                                          record.lines)
        err.frames = [*record.frames, *err.frames]
        return err

    def _export_names(self, record: _Record, known: dict[int, set[str]],
                      seen: set[int] | None = None) -> set[str]:
        """The names ES module ``record`` exports (``known``: those already found)."""
        es = record.es
        if es is None:
            return set()
        if record.id in known:
            return known[record.id]
        top = seen is None
        seen = set() if seen is None else seen
        seen.add(record.id)
        names = set(es.exports) | set(es.reexports)
        specifiers = [item.specifier for item in es.imports]
        for index in es.stars:
            dep = record.deps.get(specifiers[index])
            if isinstance(dep, int) and dep not in seen:
                names |= self._export_names(self._by_id[dep], known, seen) - {"default"}
        if top:  # (inside, a cycle of stars cut short may still be missing names)
            known[record.id] = names
        return names

    def _check_names(self, record: _Record, known: dict[int, set[str]]) -> None:
        """An import of a name its module does not export is a SyntaxError, as in ES."""
        es = record.es
        assert es is not None
        for local, (index, name) in es.bindings.items():
            item = es.imports[index]
            dep = record.deps.get(item.specifier)
            if name == "*" or not isinstance(dep, int):
                continue
            if name not in self._export_names(self._by_id[dep], known):
                err = translate.compilation_error(
                    f"the module '{item.specifier}' has no export named '{name}' (imported "
                    f"as '{local}')", record.file, item.line, item.column, record.lines)
                err.frames = self._site(record, item)
                raise err

    def _relocate(self, text: str) -> str:
        """A stack text with each module's lines its own (see LineMap)."""
        return text if self._map is None else self._map.relocate(text)

    def _relocated_report(self, report: Any) -> Any:
        """A report (see bridge/javascript.py) with its stacks' module lines their own."""
        if self._map is None or not isinstance(report, dict):
            return report
        if isinstance(report.get("stack"), str):
            report["stack"] = self._relocate(report["stack"])
        if "cause" in report:
            report["cause"] = self._relocated_report(report["cause"])
        return report

    def _own_frames(self, frames: list[Frame]) -> list[Frame]:
        """Frames with each module file's source line, and ``<module>`` for its top level."""
        if self._map is None:
            return frames
        fixed = []
        for frame in frames:
            if frame.function == modules.BODY:
                frame = frame._replace(function="<module>")
            if frame.source is None and frame.file != self._filename and frame.line:
                frame = frame._replace(source=self._map.source_line(frame.file, frame.line))
            fixed.append(frame)
        return fixed

    def _own_error(self, err: SpellError) -> SpellError:
        """A translated error with its modules' frames their own, and the sandbox's hint
        where the script ran into something the sandbox leaves out (see _hint)."""
        fields = None
        if self._map is not None:
            err.frames = frames = self._own_frames(list(err.frames))
            # script_line is the innermost frame's: script names that frame's file too
            if (err.category, err.kind) == ("script", "javascript") and frames and \
                    frames[-1].file != err.fields.get("script") and \
                    frames[-1].line == err.fields.get("script_line"):
                fields = {**err.fields, "script": frames[-1].file}
        hint = None if self._tools_file else _hint(err, self._filename.endswith(".mjs"))
        if hint is not None:
            fields = {**(fields or err.fields), "error": f"{err.fields['error']}\n{hint}"}
        if fields is None:
            return err
        hinted = type(err)(severity=err.severity, frames=err.frames, **fields)
        if err.__cause__ is not None:
            hinted.__cause__ = err.__cause__
        return hinted

    def resume(self, replies: list[ToolReply], deadline: float) -> Step:
        """Settle the promises of ``replies`` (all of one activation) and run it on."""
        owners = self._owners if self._ctx is not None and not self._broken else {}
        activation = owners.get(replies[0].id) if replies else None
        if activation is None or (len(replies) > 1 and any(owners.get(r.id) != activation
                                                          for r in replies)):
            return Failed(protocol_violation(
                "resume() on a JavaScript engine with replies to requests it is not "
                f"waiting for: {[reply.id for reply in replies]}"))
        if deadline != self._deadline:
            self._set_deadline(deadline)
        if self._loading or self._dynamic:
            try:
                loading = self._modules_arrived(replies, activation)
            except Exception as exc:  # every way out of a step is a Failed step
                return self._fail(self._from_python(exc))
            if loading is not None:
                return loading
            replies, self._held = self._held, []
            if not replies:  # (the modules' code runs as jobs now: a limit may end it)
                try:
                    return self._advance(activation)
                except Exception as exc:  # every way out of a step is a Failed step
                    return self._fail(self._from_python(exc))
        try:
            for reply in replies:
                del owners[reply.id]
                failed = self._deliver(reply)
                if failed is not None:
                    return failed
            return self._advance(activation)
        except Exception as exc:  # every way out of a step is a Failed step
            return self._fail(self._from_python(exc))

    def _deliver(self, reply: ToolReply) -> Failed | None:
        """Settle the promise ``reply`` answers (no job runs yet); a Failed step when the
        reply cannot reach the script."""
        value = reply.result
        if reply.error is None and value.__class__ is int and -_INT32 <= value < _INT32:
            self._settle(reply.id, 0, value)  # the usual result (_settlement's first case)
            return None
        if reply.error is not None:
            flat = _flat_error(reply.error)
            if flat is not None:  # the usual envelope (else JSON text, below)
                self._allow()  # the error's making may run script code (setters)
                self._settle_error(reply.id, *flat)
                return None
            if not fits_as_json(reply.error, self._memory_limit()):  # (see fits_as_json)
                return self._fail(self._unfit("the tool's error"))
        how, value = _settlement(reply)
        if how:  # JSON, or an error: the prelude's code that reads it needs the limit
            self._allow()
        try:
            self._settle(reply.id, how, value)  # else unguarded: no time limit needed
        except quickjs.JSException as exc:
            if how != 1:  # (an error's making may run script code: see _allow)
                raise
            return self._fail(self._unparsed(exc))
        return None

    def _unfit(self, what: str) -> SpellError:
        """The memory error for ``what`` (the run's args, a tool's result or error) that
        does not fit in the engine: as JSON text (data held in many places is a copy each
        place), or as the values the engine parsed of it."""
        return did_not_fit(self.language, what, self.limits.memory_mb,
                           [translate.make_frame(self._filename, None, None, "<script>")])

    def _unparsed(self, exc: quickjs.JSException) -> SpellError:
        """The error for a tool's result, as JSON text, that the prelude's ``settle`` could
        not hand to the script.

        Only the engine's own code runs there (a resolve function catches what a script's
        ``then`` throws): its JSON parser fails on the host's text only for want of time or
        of memory (quickjs throws null when it cannot even make that error: the memory is
        free again by now, so _observed_limit could not tell).
        """
        text = str(exc)
        if text.strip() != "null" and self._observed_limit(text, False) != "memory":
            return self._from_python(exc)
        return self._unfit("the tool's result")

    def _set_deadline(self, deadline: float) -> None:
        """The deadline of the step beginning; the time limit is computed again for it."""
        self._deadline = deadline
        if self._stopped:  # looked at after the write: a stop() meanwhile is not undone
            self._deadline = -math.inf
        self._rearm_at = -math.inf

    @property
    def usable(self) -> bool:
        """Whether the engine can still run code (see :attr:`Engine.usable`)."""
        return self._ctx is not None and not self._broken

    def stop(self) -> bool:
        """End the call into JS in progress within moments, and fail the next (callable
        from any thread).

        With an alarm (see :meth:`_context`) it is rung: a busy loop ends at quickjs' next
        look at its interrupt. Without one, quickjs cannot be interrupted from outside: a
        call in progress runs on until its own time limit, up to ``cpu_factor`` times the
        time that was left.
        """
        self._stopped = True
        self._set_deadline(-math.inf)
        alarm = self._alarm
        if alarm is None:
            return False
        alarm.ring()
        return True

    def close(self) -> None:
        """Free the context (call it on the engine's thread, like everything else).

        Every object of the context goes with it (each holds the context): else the
        context would be freed wherever the engine object is dropped, on another thread.
        """
        self._settle = self._poll = self._drain = self._call_export = self._stashed = None
        self._settle_error = None
        if self._alarm is not None:
            if self._ctx is not None:  # (before the runtime can be freed)
                self._alarm.remove()
            self._alarm = None
        self._api = self._ctx = None

    # -- running ---------------------------------------------------------------------

    def _allow(self) -> None:
        """Check the deadline before a call into JS, and keep quickjs's CPU-time limit fit.

        quickjs measures the limit from the start of each call; it is recomputed from the
        time left once ``_REARM`` seconds have passed since it was last (module doc).
        """
        now = _monotonic()
        if now >= self._deadline:
            raise _OutOfTime
        if now >= self._rearm_at:
            if self._alarm is not None:  # it goes off at the deadline itself: set once
                self._alarm.arm(self._deadline)
                self._rearm_at = math.inf
                return
            budget = (self._deadline - now) * self.cpu_factor
            self._limit = budget if budget < 1e9 else NO_TIME_LIMIT
            self._ctx.set_time_limit(self._limit)
            self._cpu_mark, self._cpu_budget = time.process_time(), budget
            self._rearm_at = now + _REARM
            self._lifted = False
        elif self._lifted:  # lifted for unguarded code since: the same limit, set again
            self._ctx.set_time_limit(self._limit)
            self._lifted = False

    def _grace(self) -> None:
        """The time limit for the engine's own JS outside the run's time (``_GRACE``).

        With an alarm: the run's deadline, or ``_GRACE_WALL`` seconds from now if that is
        later (the engine's own work before the script, and after a limit, such as its
        output and its error; a stopped script's too). Its own work before the deadline
        arms no entry on the clock of its own, which would wake the clock's thread (and
        take the GIL) once per run for nothing."""
        if self._alarm is not None:
            self._alarm.arm(max(self._deadline, _monotonic() + _GRACE_WALL), own=True)
            self._rearm_at = -math.inf  # the next _allow() arms it for the run again
            return
        self._cpu_mark, self._cpu_budget = time.process_time(), _GRACE * self.cpu_factor
        self._ctx.set_time_limit(self._cpu_budget)
        self._rearm_at = -math.inf  # the next _allow() computes the run's limit again

    def _unguarded(self) -> None:
        """Lift the time limit for calls that run none of the script's code.

        The prelude's unguarded code (see its top) is a few string operations, and quickjs
        reads the clock at the start of every call with a limit: a tool round trip is
        cheaper with two set_time_limit() calls than with two clock readings. The next
        ``_allow()`` sets the limit again: the same one, until ``_REARM`` has passed (its
        CPU mark stays, older than any call it limits: see :meth:`_budget_spent`). An
        alarm reads no clock: with one, there is nothing to lift.
        """
        if self._alarm is None:
            self._ctx.set_time_limit(NO_TIME_LIMIT)
            self._lifted = True

    def _enter(self, function: Any, *args: Any) -> Any:
        """Call into JS with the time left as its limit."""
        self._allow()
        return function(*args)

    def _advance(self, activation: int) -> Step:
        """Run pending jobs until none is left, then say where ``activation`` stands; a
        tool call the host answers at once (:attr:`Engine.direct`) is settled and the jobs
        run on, in the same step."""
        deadline = self._deadline
        while True:
            request = self._run_jobs(activation)
            if not isinstance(request, ToolRequest):
                return request
            reply = self.direct(request) if self.direct is not None else None
            if reply is None:
                self._owners[request.id] = activation
                return Suspended([request])
            if reply.id != request.id:
                return self._fail(misdirected(request, reply))
            if self._deadline != deadline:  # a call into this engine made for the reply
                self._set_deadline(deadline)  # (a tools file's own function) set its own
            failed = self._deliver(reply)
            if failed is not None:
                return failed

    def _run_jobs(self, activation: int) -> Step | ToolRequest:
        """:meth:`_advance`'s step; or, when the host may answer at once, the request of
        the usual step (one tool call, nothing printed) to offer it."""
        ctx = self._ctx
        run_job, deadline = ctx.execute_pending_job, self._deadline
        while True:  # _allow(), inlined: this loop is most of a tool round trip
            now = _monotonic()
            if now >= deadline:
                raise _OutOfTime
            if now >= self._rearm_at:
                self._allow()
            elif self._lifted:  # lifted for unguarded code: the same limit, set again
                ctx.set_time_limit(self._limit)
                self._lifted = False
            if not run_job():
                break
        if self._alarm is None:  # _unguarded(), inlined
            ctx.set_time_limit(NO_TIME_LIMIT)
            self._lifted = True
        text = self._poll(False, activation)
        if text == 0:  # not suspended: the prelude may run script code to say what happened
            self._allow()
            text = self._poll(True, activation)
        size = len(text)
        if size > self._max_text:  # the prelude keeps it smaller (its budget)
            return self._fail(self._too_large("data"))
        if size < _SMALL_TEXT and text[1] == "0":  # requests with no text handed over apart
            state = _native_scan(text, 0)[0]  # (see `careful` in the prelude)
            if _unsafe_params(state):  # (the prelude cannot see every number JSON writes)
                state = _scan(text, 0)[0]
        else:  # (a small result's text: the look for 16 digits costs less than a walk)
            state = _read_state(text)
            if self._nonce in text:  # long strings handed over as themselves
                try:
                    state = self._unstash(state, [self._max_text - len(text)])
                except (quickjs.JSException, _TooLarge):  # no memory left to flatten one
                    return self._fail(self._too_large("data"))
        lines = tuple(state[1]) if state[1] else ()  # 0 when the script printed nothing
        kind = state[0]
        if kind == 0 or kind == 5:  # requests (5: read with care, as they just were)
            if len(state) == 6:  # one request: the usual step, _requests inlined
                request_id, site, tool, params = state[2:]
                if site.__class__ is list:  # the first call from there
                    site = state[3] = self._new_site(site)
                if request_id > 0 and tool.__class__ is str and site.__class__ is int:
                    request = ToolRequest(request_id, tool, params, None,
                                          self._sites[site][:])
                    if self.direct is not None and not lines:
                        return request  # (_advance offers it)
                    self._owners[request_id] = activation
                    return Suspended([request], lines)
            try:
                requests = self._requests(state)
            except _TooLarge as exc:
                return self._fail(self._too_large(str(exc)), lines)
            for request in requests:
                self._owners[request.id] = activation
            return Suspended(requests, lines)
        match kind:
            case 1:
                return Finished(state[2], lines)
            case 2:
                # The limit is what the prelude observed of the engine's own error object
                # (observedLimit), never what the report, which the script wrote, says.
                observed = state[3] if len(state) > 3 else 0
                # -1: null thrown, which may be out of memory (see _out_of_memory)
                limit = "memory" if self._out_of_memory(observed) else \
                    _OBSERVED_LIMITS.get(observed)
                return Failed(self._own_error(translate.error_from_report(
                    self._relocated_report(state[2]), self._filename, self._source_lines(),
                    patterns=self.patterns, limits=self._limit_values(), limit=limit)), lines)
            case 3:
                found = state[2]  # {message, type, path, memory}: see failure in the prelude
                if self._out_of_memory(found["memory"]):
                    return self._fail(self._too_large("result"), lines)
                problem = Problem(found["path"], found["type"], found["message"])
                return Failed(crossing_error(problem, "javascript", "python"), lines, problem)
            case _:  # loading or running, with nothing queued that could settle it
                if self._memory_full():  # out of memory in a job: its rejection was lost
                    return Failed(translate.resource_error(
                        "memory", "the script ran out of memory in an async function (its "
                                  "promise could not even be rejected)",
                        [translate.make_frame(self._filename, None, None, "<script>")],
                        self._limit_values()), lines)
                return Failed(variant_class("script", "runtime_error")(
                    language="javascript",
                    error="the script is waiting on a promise that nothing will resolve",
                    reason="no tool call is pending and no job is left to run",
                    frames=[translate.make_frame(self._filename, None, None, "<script>")]),
                    lines)

    def _unstash(self, value: Any, left: list[int]) -> Any:
        """``value`` (a poll's data) with each long string the prelude handed over by
        itself in place of its mark (see LONG_TEXT there); raises :class:`_TooLarge` once
        they would take Python past the poll's text bound (``left``)."""
        kind = value.__class__
        if kind is str:
            if not value.startswith(self._mark):
                return value
            text = self._stashed(int(value[len(self._mark):]))
            left[0] -= len(text)
            if left[0] < 0:
                raise _TooLarge("data")
            return text
        if kind is list:
            return [self._unstash(item, left) for item in value]
        if kind is dict:
            return {key: self._unstash(item, left) for key, item in value.items()}
        return value

    def _new_site(self, site: list[Any]) -> int:
        """The number of a call site the prelude sends for the first time, as ``[number,
        stack text]``, its frames kept under it."""
        number, stack = site
        self._sites[number] = self._own_frames(translate.parse_stack(
            self._relocate(stack), self._filename, self._source_lines()))
        return number  # type: ignore[no-any-return]

    def _requests(self, state: list[Any]) -> list[ToolRequest]:
        """The requests of a poll: ``id, site, tool, params`` from index 2 (see poll())."""
        # A loop calls a tool from the same few places: the prelude numbers call sites and
        # sends each one's stack text once; frames are immutable, so they are shared.
        sites = self._sites
        requests = []
        for i in range(2, len(state), 4):
            request_id, site, tool, params = state[i:i + 4]
            if site.__class__ is list:  # the first call from there
                site = self._new_site(site)
            kind: Literal["tool", "recovery"] = "tool"
            if tool.__class__ is list:  # ["retry"]: a step of the script's own recovery
                if (tool[0] == "import" and len(tool) == 3 and tool[1].__class__ is int
                        and 0 <= tool[1] < len(self._by_id)
                        and tool[2].__class__ is str):  # [.., module id, specifier]: import()
                    requests.append(self._dynamic_import(request_id, tool[1], tool[2],
                                                         sites[site][:]))
                    continue
                tool, kind = tool[0], "recovery"
            if request_id > 0:
                requests.append(ToolRequest(request_id, tool, params, None, sites[site][:],
                                            kind))
            else:  # the params have no JSON form: [message, type, path, memory] says why
                message, data_type, path, memory = params
                if memory and self._out_of_memory(memory):  # memory may be why
                    raise _TooLarge("parameters")
                requests.append(ToolRequest(-request_id, tool, None,
                                            Problem(path, data_type, message), sites[site][:],
                                            kind))
        return requests

    # -- failing ---------------------------------------------------------------------

    def _fail(self, err: SpellError, lines: tuple[str, ...] = ()) -> Failed:
        """Stop the engine with ``err`` (a limit, a broken context), handing on its output:
        ``lines`` already read, then those the prelude still holds."""
        self._broken = True
        if self._ctx is not None and self._drain is not None:
            try:
                self._grace()
                lines += tuple(json.loads(self._drain()))
            except (quickjs.JSException, quickjs.StackOverflow, ValueError, TypeError):
                pass  # the context is broken (out of memory...): the lines are lost
        return Failed(err, lines)

    def _from_python(self, exc: Exception) -> SpellError:
        """The unified error for whatever stopped a call into JS."""
        if isinstance(exc, _OutOfTime):
            return translate.resource_error(
                "time", "the deadline passed",
                [translate.make_frame(self._filename, None, None, "<script>")],
                self._limit_values())
        if isinstance(exc, quickjs.JSException | quickjs.StackOverflow):
            return self._from_exception(str(exc),
                                        overflow=isinstance(exc, quickjs.StackOverflow))
        if isinstance(exc, _TooLarge):
            return self._too_large(str(exc))
        if isinstance(exc, SpellError):
            return exc
        err = variant_class("runtime", "internal_error")(
            reason=f"JavaScript engine: {type(exc).__name__}: {exc}", cause=exc)
        # the exception as data (its frames, type and message): a step holds no live object
        return SpellError.from_dict(err.to_dict())

    def _from_exception(
        self, text: str, *, compiling: bool = False, overflow: bool = False
    ) -> SpellError:
        return self._own_error(translate.error_from_exception(
            self._relocate(text), self._filename, self._source_lines(), compiling=compiling,
            limits=self._limit_values(), limit=self._observed_limit(text, overflow)))

    def _observed_limit(self, text: str, overflow: bool) -> str | None:
        """The limit an exception that reached Python stands for, from what was observed.

        Only the engine's own code and the interrupt reach Python this way (the prelude
        catches every error of the script's code), but the text may still be a script's
        (an error thrown from a toJSON the engine ran): so the interrupt counts only once
        its budget is spent (the deadline passed, or the CPU seconds the call was given),
        and a stack overflow only as the binding's own ``StackOverflow``. A thrown ``null``
        is what quickjs throws when it cannot even make its out-of-memory error (the
        prelude's own catch could not run either): memory, if the context is still full.
        """
        if text.strip() == "null":
            return "memory" if self._memory_full() else None
        name, message, _ = translate.split_exception(text)
        resource = translate.exhausted_resource(name, message)
        if resource == "time":
            return "time" if self._budget_spent() else None
        if resource == "stack":
            return "stack" if overflow else None
        return resource

    def _budget_spent(self) -> bool:
        """Whether the time limit could have fired: the deadline or the CPU budget is used
        up, or the alarm went off."""
        if self._alarm is not None:
            return self._alarm.rang or _monotonic() >= self._deadline
        return (_monotonic() >= self._deadline
                or time.process_time() - self._cpu_mark >= self._cpu_budget)

    def _memory_limit(self) -> int:
        return self.limits.memory_mb * 1024 * 1024

    def _out_of_memory(self, memory: int) -> bool:
        """Whether JSON text the prelude could not make failed for want of memory.

        ``memory`` is what its ``failure`` observed: 1 yes (over the budget, or the
        engine's own out-of-memory error), -1 the engine threw null, which it does when it
        cannot even make that error, 0 no.
        """
        return memory == 1 or (memory == -1 and self._memory_full())

    def _too_large(self, what: str) -> SpellError:
        return translate.resource_error(
            "memory", f"its {what} would need more memory than the run may use, as JSON "
                      f"text in the engine or copied to Python",
            [translate.make_frame(self._filename, None, None, "<script>")],
            self._limit_values())

    def _memory_full(self) -> bool:
        """Whether the context still holds nearly all the memory it may use."""
        usage = self._ctx.memory()  # walks the heap: only on this rare path
        return usage["malloc_size"] >= 0.9 * usage["malloc_limit"]

    def _limit_values(self) -> dict[str, float]:
        return {"time": self.limits.timeout, "stack": self.limits.stack_kb,
                "memory": self.limits.memory_mb * 1024 * 1024,
                "elapsed": round(time.monotonic() - self._started, 3)}

    def _source_lines(self) -> list[str]:
        if self._lines is None:
            self._lines = self._source.split("\n")  # quickjs counts lines by "\n" only
        return self._lines


# What the sandbox leaves out of JavaScript, by the engine's own message: one line added
# to it (as host.libraries does for Lua's require) saying so, and what to do instead.
_SANDBOX = SANDBOX_HINT_START
_HINTS = {
    "ReferenceError: process is not defined": _SANDBOX + (
        "there is no process; a script gets its input as args (main(args)) and reaches "
        "the outside only through tools.NAME(...))"),
    "ReferenceError: require is not defined": _SANDBOX + (
        'require("x") works in .js scripts, with a string literal; it loads from the '
        "script's folder and the roots given with --lib DIR)"),
    "ReferenceError: module is not defined": _SANDBOX + (
        "a .js script is not a CommonJS module: module and exports exist in the files "
        "it requires; a script hands its result back from main(args))"),
}
_HINTS["ReferenceError: exports is not defined"] = _HINTS["ReferenceError: module is not defined"]
_MODULE_HINTS = {
    "ReferenceError: require is not defined": _SANDBOX + (
        'an ES module (.mjs) has no require: import x from "x" loads from the script\'s '
        "folder and the roots given with --lib DIR)"),
}
_IMPORT_HINT = _SANDBOX + (
    "import and export are for ES modules: name the script .mjs, or load libraries in a "
    '.js script with require("x"), from its folder and the roots given with --lib DIR)')


_AWAIT_HINT = ("(await works only inside an async function, or at the top level of an ES "
               "module: put the code in async function main(args), or name the script .mjs)")


def _hint(err: SpellError, module: bool) -> str | None:
    """The sandbox's hint for ``err`` (see _HINTS), if it needs one."""
    if err.category != "script" or err.kind not in ("javascript", "compilation_failed"):
        return None
    text = err.fields.get("error")
    if not isinstance(text, str) or _SANDBOX in text:
        return None
    if err.kind == "compilation_failed":
        line = err.fields.get("source_code") or ""
        if not module and re.match(r"(import|export)\b(?!\s*[.(])", line.lstrip()):
            return _IMPORT_HINT
        if re.search(r"\bawait\b", line) and _AWAIT_HINT not in text:
            return _AWAIT_HINT
        return None
    first = text.split("\n", 1)[0]
    if "could not load module" in first and not module:
        return _IMPORT_HINT
    return (_MODULE_HINTS if module else {}).get(first) or _HINTS.get(first)


_OBSERVED_LIMITS = {1: "memory", 2: "stack"}  # the prelude's observedLimit
# one encoder (json.dumps makes one a call); no spaces: only the prelude reads the text,
# and a failure's envelope encodes 20% faster, and parses faster, without them
_encode_slowly = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode


def _not_json(value: Any) -> Any:
    """What JSONEncoder.default does: refuse."""
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


class _Encoder(threading.local):
    """The C encoder that ``_encode_slowly`` makes for every call, made once per thread
    (its table of the containers open, for cycles, is its thread's own)."""

    def __init__(self) -> None:
        self.open: dict[int, Any] = {}
        self.encode = c_make_encoder(self.open, _not_json, encode_basestring_ascii, None,
                                     ":", ",", False, False, False)


_ENCODER = _Encoder() if c_make_encoder is not None else None


def _encode(value: Any) -> str:
    """JSON text of ``value``, as ``_encode_slowly`` writes it (a few times faster)."""
    encoder = _ENCODER
    if encoder is None:  # pragma: no cover - a Python without json's C accelerator
        return _encode_slowly(value)
    try:
        return "".join(encoder.encode(value, 0))
    except BaseException:
        encoder.open.clear()  # what a failure left open
        raise


def _json_text(value: Any) -> str:
    """:func:`_encode`, written by pydantic-core (2-3x quicker) for the usual data it
    writes to the same JSON values: a list of finite numbers, or a dict of at most 16 text
    keys whose values are texts, finite numbers, booleans or None. Raises as it does."""
    kind = value.__class__
    if kind is list:
        # finite numbers only: their sum, made in C, is then a finite int or float (that of
        # Decimals, complexes or Fractions is theirs: json refuses them, pydantic-core not)
        try:
            total = sum(value)
        except (TypeError, ArithmeticError):  # not numbers; a huge int and a float
            pass
        else:
            of = total.__class__
            if (of is int or of is float) and total - total == 0:
                try:
                    return _to_json(value).decode()
                except ValueError:  # what pydantic-core cannot write: json's error
                    pass
    elif kind is dict and len(value) <= 16:
        for key, item in value.items():
            of = item.__class__
            if key.__class__ is not str or not (
                    of is str or of is int or of is bool or item is None
                    or (of is float and item - item == 0.0)):
                break
        else:
            try:
                return _to_json(value).decode()
            except ValueError:  # a lone surrogate, which only json's text escapes
                pass
    return _encode(value)


_MAX_SAFE_INTEGER = 2**53


def _js_number(text: str) -> int | float:
    """A JSON integer written by JS: JS has only doubles, so beyond 2**53 it is a float.

    ``25261409972196210`` is how JS prints the double 25261409972196208.0; read as a
    Python int it would be a different number.
    """
    value = int(text)
    return value if -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER else float(text)


# (value, end); json.loads adds 1 us of Python around it
_scan = json.JSONDecoder(parse_int=_js_number).scan_once
# The same with ints parsed in C, right for every int within 2**53 (see _read_state).
_native_scan = json.JSONDecoder().scan_once
_SMALL_TEXT = 1024
_from_json = pydantic_core.from_json
_to_json = pydantic_core.to_json
_LONG_DIGITS = re.compile(r"\d{16}").search
# A text's digits as d (UTF-8 writes no other character with the bytes of ASCII digits):
# a run of 16 found by bytes.find, about 1 ns a character, where re takes 20.
_DIGITS_AS_D = bytes.maketrans(b"0123456789", b"d" * 10)
_SIXTEEN_D = b"d" * 16


def _read_state(text: str) -> Any:
    """The JSON text of a poll, its integers read as :func:`_js_number` reads them.

    Parsing ints in C and then looking for one past 2**53 (rare: the text is read again
    with :func:`_js_number` then) costs a fraction of a Python call per int. An int past
    2**53 has at least 16 digits, so a text without a run of 16 digits has none.
    """
    if len(text) < _SMALL_TEXT:
        return (_native_scan if _LONG_DIGITS(text) is None else _scan)(text, 0)[0]
    try:  # pydantic-core's parser: 40% quicker on numbers; it refuses lone surrogates
        state = _from_json(text, cache_strings=False)
    except ValueError:
        state = _native_scan(text, 0)[0]
    if _SIXTEEN_D not in text.encode("utf-8", "surrogatepass").translate(_DIGITS_AS_D):
        return state
    return _scan(text, 0)[0] if _beyond_safe(state) else state


def _unsafe_params(state: list[Any]) -> bool:
    """Whether the requests of a poll (``[0, lines, id, site, tool, params, ...]``, read
    with ints parsed in C) hold an int beyond 2**53 (then read again with
    :func:`_js_number`): only their params can (ids, site numbers and the problems of
    params without a JSON form are the prelude's own small ints). Cheaper than
    :data:`_LONG_DIGITS`'s look through the text for the usual flat params.

    The prelude cannot tell: JSON.stringify writes a Number object's ``valueOf()`` (or
    ``toString()``, ``Symbol.toPrimitive``) after its replacer saw the object, and a script
    can give a Number object ``Object.prototype`` (then nothing cheap tells it from a plain
    object), so an int past 2**53 may be in the text of any poll of requests."""
    if len(state) == 6:
        params = state[5]
        if params.__class__ is dict:
            for value in params.values():
                kind = value.__class__
                if kind is int:
                    if value > _MAX_SAFE_INTEGER or value < -_MAX_SAFE_INTEGER:
                        return True
                elif kind is dict or kind is list:
                    return _beyond_safe(params)
            return False
    return _beyond_safe(state[5::4])  # (a list: a toJSON may make params a bare number)


def _beyond_safe(value: Any) -> bool:
    """Whether JSON-like ``value`` holds an int beyond 2**53, looked for level by level
    (each level's values gathered and looked at by C code, not one Python call apiece)."""
    level = [value] if value.__class__ in (list, dict) else []
    while level:
        if len(level) == 1:
            values = level[0]
            if values.__class__ is dict:
                values = list(values.values())
            elif values and values[0].__class__ in (int, float):
                try:  # numbers only (a float past 2**53 only costs a re-read)
                    return max(values) > _MAX_SAFE_INTEGER or min(values) < -_MAX_SAFE_INTEGER
                except TypeError:  # strings, None, lists or dicts among them
                    pass
        else:
            containers = set(map(type, level))
            values = list(itertools.chain.from_iterable(
                map(dict.values, level) if containers == {dict} else level
                if containers == {list} else
                (item.values() if item.__class__ is dict else item for item in level)))
        kinds = set(map(type, values))
        if int in kinds:
            ints = values if len(kinds) == 1 else [x for x in values if x.__class__ is int]
            if max(ints) > _MAX_SAFE_INTEGER or min(ints) < -_MAX_SAFE_INTEGER:
                return True
        if list in kinds or dict in kinds:
            level = values if kinds <= {list, dict} else \
                [x for x in values if x.__class__ is list or x.__class__ is dict]
        else:
            level = []
    return False


_monotonic = time.monotonic


def _settlement(reply: ToolReply) -> tuple[int, Any]:
    """How ``settle`` in the prelude takes ``reply``: ``(how, value)`` (see settle there).

    quickjs's binding converts a few scalars itself, faster than JSON: ints that fit in 32
    bits (it truncates larger ones: those up to 2**53 go as floats, which is exact, and
    larger ones as JSON), finite floats, bools, None, and strings it can encode to UTF-8
    (a lone surrogate cannot be: such strings go as JSON, which escapes it).
    A result that cannot cross at all is sent as an error.
    """
    if reply.error is not None:
        return 2, _encode(reply.error)
    value = reply.result
    kind = value.__class__
    if kind is int:
        if -_INT32 <= value < _INT32:
            return 0, value
        if -_SAFE_INT <= value <= _SAFE_INT:
            return 0, float(value)
    elif kind is str:
        if value.isascii():
            return 0, value
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            pass
        else:
            return 0, value
    elif kind is float:
        if value - value == 0.0:  # not inf or nan, which JSON refuses below
            return 0, value
    elif value is None or kind is bool:
        return 0, value
    try:
        return 1, _json_text(value)
    except (TypeError, ValueError, RecursionError) as exc:  # the host checks depth first
        err = crossing_error(Problem("result", kind.__name__, f"tool result: {exc}"),
                             "python", "javascript")
        return 2, _encode(error_envelope(err))


# the most an envelope's fields' lists and dicts may count (bridge.data.json_room) to go
# flat: past it, the envelope goes the long way, checked there against the run's memory
# limit (data held in many places would be JSON text of a copy each place, without end)
_FLAT_ROOM = 2**20


def _flat_error(envelope: Any, room: int = _FLAT_ROOM) -> list[Any] | None:
    """An error envelope as the prelude's ``settleError`` takes it, or None where it is not
    the usual kind (it then crosses as JSON text, which fails as it always did on what has
    no JSON form).

    Usual: levels that are dicts with every key of :func:`bridge.envelope.error_envelope`;
    texts (names, message, fields' keys) the binding can pass (UTF-8: no lone surrogate);
    retryable a bool; retry_after and ref None or finite numbers within 2**53; fields a dict
    (or None) of at most 31 keys, else its JSON text. A field's value goes as itself when it
    is a text the binding can pass, a bool, None or such a number (ints past 32 bits as
    floats: the binding truncates them; within 2**53 a float is exact), else as its JSON
    text, marked in the level's mask (bit i: the i-th value). Fields whose lists and dicts
    count past ``room`` in all (:func:`bridge.data.json_room`) are not usual either.
    """
    flat: list[Any] = []
    level = envelope
    while level is not None:
        if level.__class__ is not dict:
            return None
        try:
            name, category, kind, message, retryable, retry_after, ref, fields, level = \
                _LEVEL(level)
        except KeyError:
            return None
        if fields is None:
            fields = {}
        elif fields.__class__ is not dict:
            return None
        try:  # the texts, and that every key is one (else TypeError)
            texts = "".join((name, category, kind, message, *fields))
        except TypeError:
            return None
        if retryable.__class__ is not bool or not (texts.isascii() or _utf8(texts)):
            return None
        if ref is not None:
            ref = _flat_number(ref)
            if ref is None:
                return None
        if retry_after is not None:
            retry_after = _flat_number(retry_after)
            if retry_after is None:
                return None
        if len(fields) > _MASK_BITS:
            room = json_room(fields, room)
            if room < 0:
                return None
            try:
                flat += (name, category, kind, message, retryable, retry_after, ref, -1,
                         _encode(fields))
            except (TypeError, ValueError, RecursionError):
                return None
            continue
        flat += (name, category, kind, message, retryable, retry_after, ref, len(fields))
        at = len(flat)
        flat.append(0)
        mask = 0
        bit = 1
        for key, value in fields.items():
            of = value.__class__
            if of is str:
                if not value.isascii() and not _utf8(value):
                    value = _encode(value)  # (escapes the lone surrogate)
                    mask |= bit
            elif of is int or of is float:
                number = _flat_number(value)
                if number is None:
                    if of is float:  # inf or nan: JSON text refuses them
                        return None
                    number = str(value)  # an int past 2**53: its digits, read as JSON
                    mask |= bit
                value = number
            elif of is not bool and value is not None:  # a list, a dict...
                room = json_room(value, room)
                if room < 0:
                    return None  # (the long way checks it against the memory limit)
                try:
                    value = _encode(value)
                except (TypeError, ValueError, RecursionError):
                    return None
                mask |= bit
            flat += (key, value)
            bit <<= 1
        flat[at] = mask
    return flat


_LEVEL = operator.itemgetter("name", "category", "kind", "message", "retryable", "retry_after",
                             "ref", "fields", "cause")
_MASK_BITS = 31  # a level's fields sent one by one: at most as many as an int32 has bits


def _flat_number(value: Any) -> int | float | None:
    """An int or float as the binding passes it exactly (see _flat_error), or None (not
    one: a bool, an int past 2**53, inf or nan)."""
    of = value.__class__
    if of is float:
        return value if value - value == 0.0 else None
    if of is not int:
        return None
    if -_INT32 <= value < _INT32:
        return value
    return float(value) if -_SAFE_INT <= value <= _SAFE_INT else None


def _utf8(text: str) -> bool:
    """Whether the binding can pass ``text`` (as UTF-8: no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@functools.cache
def _constructors() -> dict[str, str]:
    return script_constructors()


def _unpassable(source: str) -> str | None:
    """Why the binding could not hand ``source`` to quickjs (it passes C strings)."""
    if "\0" in source:
        return "the source contains a NUL character"
    if not source.isascii():
        try:
            source.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"the source is not valid UTF-8 text ({exc.reason} at index {exc.start})"
    return None


@functools.cache
def _catalog_json() -> str:
    """Every variant's message template for the prelude, with what formatting needs.

    ``{category: {kind: [template, defaults of its fields, its float fields]}}``, so that
    ``new ToolError({kind: "timeout", tool_name: "x", duration: 2})`` says
    ``Tool timeout: x after 2.0s`` in JS exactly as Python does.
    """
    catalog: dict[str, dict[str, list[Any]]] = {}
    for cls in variants():
        names = set(re.findall(r"\{(\w+)\}", cls.template))
        declared = field_defaults(cls)  # name -> default (... if required)
        annotations = inspect.get_annotations(cls)
        defaults = {name: declared[name] for name in names
                    if declared.get(name, ...) is not ... and _jsonable(declared[name])}
        floats = sorted(name for name in names if _is_float(annotations.get(name)))
        catalog.setdefault(cls.category, {})[cls.kind] = [cls.template, defaults, floats]
    return json.dumps(catalog)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _is_float(annotation: Any) -> bool:
    if annotation is float:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        return float in options and int not in options
    return False
