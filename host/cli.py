"""The ``polyspell`` command line.

Exit codes: 0 success; 1 the script (or plan) failed; 2 usage or configuration error;
3 security violation; 4 resource limit (time, memory, stack).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from host.lines import write_lines
from host.terminal import is_terminal

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SECURITY, EXIT_RESOURCE = 0, 1, 2, 3, 4


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    import engines  # light: the specs, not the engines (their modules load when used)

    names = [spec.display_name for spec in engines.specs()]
    suffixes = ", ".join(suffix for spec in engines.specs() for suffix in spec.extensions)
    parser = _Parser(
        prog="polyspell",
        description=f"Run {engines.spoken(names, 'and')} agent scripts that call Python "
        f"tools, with one error language across all of them.",
    )
    parser.add_argument("-V", "--version", action=_Version, help="print polyspell's "
                        "version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parser.set_defaults(commands=commands.choices)  # a subcommand's own usage, for errors

    catalog = commands.add_parser(
        "catalog", help="list every error category and kind scripts can raise and catch",
        description="List every error category and kind, with its fields, default severity "
        "and whether it is retryable.",
    )
    catalog.add_argument("category", nargs="?", help="show only this category")
    catalog.add_argument("--json", action="store_true", help="print the catalog as JSON")
    catalog.set_defaults(handler=_catalog)

    run = commands.add_parser(
        "run", help=f"run a {engines.spoken(names)} agent script",
        description=f"Run an agent script (engine chosen by extension: {suffixes}). "
        "The result is printed as JSON on stdout; on failure the translated traceback "
        "goes to stderr. Exit codes: 0 success, 1 the script failed, 2 usage or "
        "configuration error, 3 security violation, 4 resource limit.",
    )
    run.add_argument("script", help="the script file")
    run.add_argument("params", nargs="*", metavar="key=value",
                     help="arguments for the script's args, anywhere after the script, "
                     "before or after options (values are JSON, else strings; a later "
                     "key wins)")
    run.add_argument("--args-json", metavar="JSON", help="the script's args as a JSON object")
    _add_tools_option(run)
    _add_library_options(run)
    _add_config_option(run)
    _add_hooks_options(run)
    run.add_argument("--timeout", type=float, default=30.0, metavar="S",
                     help="wall-clock limit for the run in seconds (default 30)")
    run.add_argument("--memory-mb", type=int, default=256, metavar="N",
                     help="memory limit of the engine in MB (default 256)")
    run.add_argument("--sandbox", choices=["constrained", "trusted"], default="constrained",
                     help="constrained (default): pure built-ins only; trusted: the "
                     "language's standard libraries too")
    _add_isolation_option(run)
    _add_lua_option(run)
    run.add_argument("--json", action="store_true",
                     help='print one JSON object: {"ok": true, "result": ...} or '
                     '{"ok": false, "error": ...}')
    run.add_argument("--verbose", action="store_true",
                     help="show polyspell's own frames in tracebacks")
    _add_record_options(run)
    run.set_defaults(handler=_run)

    tools = commands.add_parser(
        "tools", help="list the tools of tools files with their parameter schemas",
        description="List the @tool functions of the given files with their JSON schemas.")
    tools.add_argument("files", nargs="*", metavar="FILE",
                       help="tools files (as with --tools)")
    _add_tools_option(tools)
    _add_library_options(tools)
    tools.add_argument("--json", action="store_true", help="print the list as JSON")
    tools.set_defaults(handler=_tools)

    plan = commands.add_parser(
        "plan", help=f"run a plan of {engines.spoken(names, 'and')} tasks (TOML)",
        description="Run the tasks of a TOML plan, concurrently where they do not depend "
        "on each other, and print a table of tasks, the outcome and the root causes of "
        "failures with their tracebacks. Progress is shown on a terminal. Exit codes: 0 "
        "every task succeeded, 1 any other outcome, 2 a bad plan or usage.")
    plan.add_argument("plan", help="the plan file (TOML)")
    _add_tools_option(plan)
    _add_library_options(plan)
    _add_config_option(plan)
    _add_hooks_options(plan)
    plan.add_argument("--strategy", choices=["propagate", "collect", "cancel_dependents",
                                             "isolate"],
                      help="what a failure does to the other tasks (overrides the plan's)")
    plan.add_argument("--max-concurrency", type=int, metavar="N",
                      help="tasks running at once at most (overrides the plan's)")
    _add_isolation_option(plan)
    plan.add_argument("--executor", choices=["local", "ray"], default=None,
                      help="where the tasks' tries run: local (default: here) or ray (on "
                      "a Ray cluster; needs pip install 'polyspell[ray]')")
    plan.add_argument("--ray-address", metavar="ADDR",
                      help="the Ray cluster to join with --executor ray: auto, or "
                      "HOST:PORT (default: start a local Ray on 127.0.0.1)")
    _add_lua_option(plan)
    plan.add_argument("--json", action="store_true",
                      help="print the report as one JSON object on stdout")
    plan.add_argument("--verbose", action="store_true",
                      help="show polyspell's own frames in tracebacks")
    _add_record_options(plan)
    plan.set_defaults(handler=_plan)

    explain = commands.add_parser(
        "explain", help="render a saved error JSON as a polyglot traceback",
        description="Render an error saved as JSON (the output of run --json, or "
        "SpellError.to_json()) as the traceback polyspell run prints.")
    explain.add_argument("file", help="the JSON file, or - for standard input")
    explain.add_argument("--json", action="store_true",
                         help="print the error back as JSON, validated")
    explain.add_argument("--verbose", action="store_true",
                         help="show polyspell's own frames too")
    explain.set_defaults(handler=_explain)

    metrics = commands.add_parser(
        "metrics", help="serve the error store's metrics for Prometheus at /metrics",
        description="Serve the Prometheus metrics of an error store (what every polyspell "
        "run and plan that recorded into it counted) at http://ADDR:PORT/metrics, read "
        "from the store at each scrape, until interrupted. Needs prometheus-client "
        "(pip install 'polyspell[monitoring]').")
    metrics.add_argument("--port", default="9464", metavar="N",
                         help="the TCP port (default 9464; 0: any free port)")
    metrics.add_argument("--addr", default="127.0.0.1", metavar="ADDR",
                         help="the address to listen on (default 127.0.0.1, this machine "
                         "only; 0.0.0.0 for every interface)")
    metrics.add_argument("--errors-db", metavar="PATH",
                         help="the error store (default $POLYSPELL_ERRORS_DB, else "
                         "errors.db in polyspell's user state directory)")
    metrics.set_defaults(handler=_metrics)

    _add_errors_parser(commands)
    _add_output_options(commands.choices.values())
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse's parser, with a "did you mean" for an unknown choice (and a command's
    own parsers are of this class too)."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            from bridge.names import closest, did_you_mean

            choices = [str(choice) for choice in action.choices]
            hint = did_you_mean(closest(str(value), choices))
            raise argparse.ArgumentError(
                action, f"invalid choice: {value!r} ({hint}choose from "
                        f"{', '.join(map(repr, choices))})")
        super()._check_value(action, value)


def _add_output_options(parsers: Iterable[argparse.ArgumentParser]) -> None:
    """``--color`` and ``-q``/``-v`` on every command (and on each action of those with
    actions, such as ``errors``): argparse reads an option after the subcommand's name."""
    for parser in parsers:
        nested = [action for action in parser._actions
                  if isinstance(action, argparse._SubParsersAction)]
        if nested:
            _add_output_options(nested[0].choices.values())
            continue
        parser.add_argument("--color", choices=COLOR_CHOICES, default="auto",
                            help="colour the output: auto (default: on a terminal, unless "
                            "NO_COLOR or TERM=dumb; FORCE_COLOR forces it), always, never")
        verbose = [a for a in parser._actions if "--verbose" in a.option_strings]
        if verbose:  # the command's own --verbose gets its short form
            verbose[0].option_strings.insert(0, "-v")
            parser._option_string_actions["-v"] = verbose[0]
        else:
            parser.add_argument("-v", "--verbose", action="store_true",
                                help="say more: polyspell's diagnostics (its logger's "
                                "debug records) on stderr")
        parser.add_argument("-q", "--quiet", action="store_true",
                            help="say less: no progress display (results, errors and what "
                            "scripts print still show)")


def _add_isolation_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--isolation", choices=["thread", "process"], default=None,
        help="where engines run: thread (default: in this process, each on a thread of "
        "its own) or process (each run's engines in a worker process, killed at the "
        "deadline whatever the script does; slower to start)")


def _add_lua_option(command: argparse.ArgumentParser) -> None:
    from engines.specs import LUA_VERSIONS

    command.add_argument(
        "--lua", choices=LUA_VERSIONS, default=None, dest="lua_version",
        help="the Lua of Lua scripts: 5.5 (default), 5.4 or luajit (LuaJIT 2.1, Lua 5.1 "
        "with its extensions; only with --isolation process); a config file's "
        "lua_version, a plan's or a task's own otherwise")


def _add_errors_parser(commands: Any) -> None:
    """``polyspell errors ACTION`` (its handlers: :mod:`host.monitor.commands`, loaded
    when it runs)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--errors-db", metavar="PATH",
                        help="the error store (default: $POLYSPELL_ERRORS_DB, else "
                        "errors.db in polyspell's folder of the user's state directory)")
    common.add_argument("--json", action="store_true",
                        help="print one JSON document on stdout")
    errors = commands.add_parser(
        "errors", help="the recorded errors: list, show, groups, stats, trends, predict, "
        "prune", description="Read the errors polyspell run and plan recorded (see "
        "--no-record): list them, show one as a traceback, their groups, statistics and "
        "trends over a window, how likely a tool is to fail next, or prune the store.")
    actions = errors.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", parents=[common], help="the newest records first")
    _errors_filters(listing)
    listing.add_argument("--code", metavar="CODE",
                         help="only this code (category/kind) or category")
    listing.add_argument("--component", metavar="NAME",
                         help="only this component (tool:search, script:agent.lua...)")
    listing.add_argument("--group", metavar="FINGERPRINT", help="only this group")
    show = actions.add_parser("show", parents=[common],
                              help="one record: its polyglot traceback and where it was")
    show.add_argument("id", help="the record's id, or a unique prefix of it")
    show.add_argument("--verbose", action="store_true",
                      help="show polyspell's own frames too")
    groups = actions.add_parser("groups", parents=[common],
                                help="the groups (fingerprints), the most recent first")
    _errors_filters(groups)
    summary = actions.add_parser("stats", parents=[common],
                                 help="statistics and recommendations over a window")
    summary.add_argument("--window", default="24h", metavar="DURATION",
                         help="30m, 24h, 7d... (default 24h; whole hours)")
    trend = actions.add_parser("trends", parents=[common],
                               help="errors per bucket over a window, as a bar chart")
    trend.add_argument("--window", default="7d", metavar="DURATION",
                       help="default 7d")
    trend.add_argument("--bucket", default="1d", metavar="DURATION",
                       help="whole hours: 1h, 6h, 1d (default 1d)")
    guess = actions.add_parser("predict", parents=[common],
                               help="how likely the next call of a tool fails")
    guess.add_argument("tool", nargs="?", help="the tool")
    guess.add_argument("--script", metavar="NAME",
                       help="a script instead: how likely its next run fails")
    prune = actions.add_parser("prune", parents=[common],
                               help="delete old records (default: older than 30 days, "
                               "past 1000000 records)")
    prune.add_argument("--max-age", metavar="DURATION",
                       help="delete what is older (default 30d)")
    prune.add_argument("--max-rows", type=int, metavar="N",
                       help="keep at most N records, the newest (default 1000000)")
    for action in actions.choices.values():
        action.set_defaults(handler=_errors)


def _errors(args: argparse.Namespace) -> int:
    from host.monitor.commands import run_errors

    return run_errors(args)


def _errors_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", metavar="WHEN",
                        help="a duration back from now (30m, 24h, 7d) or an ISO date/time")
    parser.add_argument("--limit", type=int, default=50, metavar="N",
                        help="at most N (default 50)")


def _add_record_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--errors-db", metavar="PATH",
                        help="record errors into this SQLite file (default: "
                        "$POLYSPELL_ERRORS_DB, else errors.db in polyspell's folder of the "
                        "user's state directory; see polyspell errors)")
    parser.add_argument("--no-record", action="store_true",
                        help="do not record this run's errors")


def _cli_monitor(args: argparse.Namespace) -> Any:
    """The monitor of ``run`` and ``plan``: records into ``--errors-db`` or the default
    file, unless ``--no-record`` (a file that cannot be used: one line on stderr, and the
    run goes on unrecorded)."""
    if args.no_record:
        return None
    from host.monitor import Monitor

    return Monitor(args.errors_db)


@contextlib.contextmanager
def _recording(args: argparse.Namespace) -> Iterator[Any]:
    """The monitor of a command, closed (what it recorded written) when it ends."""
    monitor = _cli_monitor(args)
    try:
        yield monitor
    finally:
        if monitor is not None:
            monitor.close()


def _add_tools_option(parser: argparse.ArgumentParser) -> None:
    import engines

    kinds = ["Python (its @tool functions)",
             *(f"{spec.display_name} (the functions of {spec.exports})"
               for spec in engines.specs())]
    parser.add_argument("--tools", action="append", default=[], metavar="FILE",
                        help=f"a tools file scripts may call (repeatable): "
                        f"{engines.spoken(kinds)}")


def _add_library_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lib", action="append", default=[], metavar="DIR",
                        help="a folder that require searches for modules (repeatable; "
                        "searched in the order given, after the script's own folder)")
    parser.add_argument("--no-script-dir-lib", action="store_true",
                        help="do not search the script's own folder for modules")


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="a polyspell config file (TOML): recovery policies in "
                        "[recovery] (defaults for every tool), [tools.<name>] and "
                        "[errors.\"<code>\"] tables, hooks in [hooks]; without it, the "
                        "[tool.polyspell] table of ./pyproject.toml when there is one")


# host.hooks.presets.PRESETS, named here so that the parser imports no hooks (a test
# keeps the two the same)
HOOK_PRESETS = ("logging", "verbose_logging", "timing", "error_logging", "monitoring",
                "silent")


def _add_hooks_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hooks", action="append", default=[], metavar="NAMES",
                        help=f"hook presets, comma-separated (repeatable): "
                        f"{', '.join(HOOK_PRESETS)}; their log lines go to stderr")
    parser.add_argument("--hooks-file", action="append", default=[], metavar="FILE",
                        help="a Python file whose hooks (@hooks.observer, "
                        "@hooks.controller at its top level) are registered (repeatable)")


def _cli_hooks(args: argparse.Namespace) -> Any:
    """The hooks of ``--hooks`` and ``--hooks-file`` (a config's ``[hooks]`` are the
    host's to add, before them); an unknown preset or a bad file is a configuration
    error, before anything runs."""
    names = [name.strip() for item in args.hooks for name in item.split(",") if name.strip()]
    if not names and not args.hooks_file:
        return ()
    from host.hooks.files import load_hooks

    return load_hooks(names, args.hooks_file)


@contextlib.contextmanager
def _hook_logs(hooks: Any, config: Any, write: Any = None) -> Iterator[None]:
    """While a command runs with hooks from the command line or the config file, show the
    ``polyspell`` logger's records (INFO and up: the presets' lines) on stderr, one whole
    block per record, ``polyspell: `` before it, unless logging was configured (a handler
    on ``polyspell`` or on the root logger, which a hooks or tools file may add).
    ``write(text)`` writes a record (default :func:`host.lines.write_lines`)."""
    ours, root = logging.getLogger("polyspell"), logging.getLogger()
    wanted = bool(hooks) or (config is not None and getattr(config, "hooks", None)
                             is not None)
    if not wanted or ours.handlers or root.handlers:
        yield
        return
    handler = _LinesHandler(write or write_lines)
    handler.setFormatter(logging.Formatter("polyspell: %(message)s"))
    with _handled(ours, handler, logging.INFO if ours.level == logging.NOTSET else None):
        yield


@contextlib.contextmanager
def _handled(logger: logging.Logger, handler: logging.Handler, level: int | None,
             propagate: bool | None = None) -> Iterator[None]:
    """``logger`` with ``handler`` (and ``level``, ``propagate`` when given) while a
    command runs; as it was after."""
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    if level is not None:
        logger.setLevel(level)
    if propagate is not None:
        logger.propagate = propagate
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


@contextlib.contextmanager
def _script_lines(write: Callable[[str, str], None] | None = None) -> Iterator[None]:
    """While a command runs scripts, print what they print (the ``polyspell.script``
    logger's records) as today: each line whole on stderr, ``[task] `` before it in a
    plan; ``write(task_id, line)`` instead (the plan's live display). The records stop
    here (a diagnostics or root handler would print them twice)."""
    from host.lines import SCRIPT_LOGGER

    with _handled(SCRIPT_LOGGER, _ScriptLinesHandler(write), logging.INFO, propagate=False):
        yield


class _LinesHandler(logging.Handler):
    """A logging handler writing each record whole on the current stderr, through the
    one writer of lines (so it never lands inside a script's output line), or through the
    plan's live progress display."""

    def __init__(self, write: Any) -> None:
        super().__init__()
        self.write = write

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.deliver(record)
        except Exception:  # as logging's own handlers do: never raise into the caller
            self.handleError(record)

    def deliver(self, record: logging.LogRecord) -> None:
        """Write ``record``, formatted."""
        self.write(self.format(record))


class _ScriptLinesHandler(_LinesHandler):
    """Writes a script's line as its record says (see :func:`_script_lines`): through
    ``write(task_id, line)`` when given, else whole on stderr, ``[task] `` before it."""

    def __init__(self, write: Callable[[str, str], None] | None) -> None:
        super().__init__(write)

    def deliver(self, record: logging.LogRecord) -> None:
        task_id = getattr(record, "task_id", None)
        line = record.getMessage()
        if self.write is not None:
            self.write(task_id or "?", line)
        else:
            write_lines(line, prefix=f"[{task_id}] " if task_id else "")


def _config(args: argparse.Namespace) -> Any:
    """The config of ``--config FILE``, else ``[tool.polyspell]`` of ./pyproject.toml,
    else None."""
    if args.config is not None:
        from host.config import load_config

        return load_config(args.config)
    if not _may_have_polyspell_table("pyproject.toml"):
        return None  # the usual case: no policy models to import (they cost ~0.2 s)
    from host.config import load_pyproject

    return load_pyproject()


def _may_have_polyspell_table(path: str) -> bool:
    """Whether ``path`` is a file that may hold ``[tool.polyspell]``: false only when it
    surely does not (no file, or valid TOML without the table); a file that cannot be
    read or parsed is left to :func:`host.config.load_pyproject` to report."""
    import os
    import tomllib

    if not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except (OSError, ValueError):
        return True
    tool = data.get("tool")
    if tool is None:
        return False
    return not isinstance(tool, dict) or "polyspell" in tool


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``polyspell`` console script; returns the exit code."""
    _escape_unencodable(sys.stdout)
    if argv is None:  # the process's own command line: the process ends with the command
        _skip_last_collection()
    args = parse_arguments(build_parser(), argv)
    _color_mode.append(getattr(args, "color", "auto"))
    results = sys.stdout
    redirect = args.command in ("run", "plan") and sys.stderr is not None
    if redirect:  # what Python code prints during a run goes to stderr: stdout is the result's
        _result_streams.append(results)
        sys.stdout = sys.stderr
    try:
        with _diagnostics(getattr(args, "verbose", False)):
            return int(args.handler(args))
    except KeyboardInterrupt:
        write_lines("polyspell: interrupted")
        return 130
    finally:
        _color_mode.pop()
        if redirect:
            _result_streams.pop()
            if sys.stdout is sys.stderr:
                sys.stdout = results


def _skip_last_collection() -> None:
    """Spare the process the full garbage collection Python makes as it exits (about 5% of
    a `polyspell run`'s instructions: every object the imports made is looked at once
    more, to free memory the exit frees anyway). Everything still alive is frozen by the
    last exit handler, after the command's own (the monitor's writer, logging) ran; a
    cycle still unfreed then keeps its finalizers unrun, which Python never promises to
    run at exit either."""
    import atexit

    atexit.unregister(gc.freeze)  # once, registered first: the last to run
    atexit.register(gc.freeze)


def _diagnostics(verbose: bool) -> contextlib.AbstractContextManager[None]:
    """``--verbose``: the ``polyspell`` logger's records, debug and up, on stderr while the
    command runs, unless logging was configured (a handler there or on the root logger)."""
    ours = logging.getLogger("polyspell")
    if not verbose or ours.handlers or logging.getLogger().handlers:
        return contextlib.nullcontext()
    handler = _LinesHandler(write_lines)
    handler.setFormatter(logging.Formatter("polyspell: %(levelname)s %(name)s: %(message)s"))
    return _handled(ours, handler, logging.DEBUG)


# The real stdout while ``run`` or ``plan`` point sys.stdout at stderr (innermost last).
_result_streams: list[Any] = []


def _results() -> Any:
    """Where results go: stdout as it was when ``main`` began (``run`` and ``plan`` point
    ``sys.stdout`` at stderr meanwhile, so that what tools print stays off the result)."""
    return _result_streams[-1] if _result_streams else sys.stdout


def _escape_unencodable(stream: Any) -> None:
    """Print text the stream cannot encode (a lone surrogate in an error's message) as a
    backslash escape, as Python prints it on stderr, rather than fail with a traceback."""
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        try:
            reconfigure(errors="backslashreplace")
        except (OSError, ValueError):  # not a text stream that can change its errors
            pass


def print_json(value: Any, *, indent: int | None = None) -> None:
    """Print ``value`` on stdout as RFC 8259 JSON, the one way the CLI prints JSON.

    A number that is not finite is written as ``null`` and a lone surrogate as its
    ``\\uXXXX`` escape (:func:`bridge.jsontext.json_text`); when stdout cannot encode the
    text (a non-UTF-8 locale), every non-ASCII character is escaped instead.
    """
    import codecs

    from bridge.jsontext import json_text

    text = json_text(value, indent=indent)
    out = _results()
    encoding = getattr(out, "encoding", None) or "utf-8"
    try:
        if codecs.lookup(encoding).name != "utf-8":  # json_text is always valid UTF-8
            text.encode(encoding)
    except (LookupError, UnicodeEncodeError):
        text = json_text(value, indent=indent, ensure_ascii=True)
    print(text, file=out)


def parse_arguments(parser: argparse.ArgumentParser,
                    argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args``, except that ``run`` takes key=value pairs after options too.

    argparse fills a positional list once, from the first run of positionals, so
    ``run agent.lua --tools t.py city=Lisbon`` would leave ``city=Lisbon`` over. What is
    left over and does not start with ``-`` is one more pair; anything else (an unknown
    option) is the usage error (exit 2) it always was.
    """
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "run":
        unknown = [item for item in extra if item.startswith("-")]
        if not unknown:
            args.params = [*args.params, *extra]
            return args
        extra = unknown
    if extra:  # with the usage of the subcommand it is about, not the top level's
        args.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return args


class _Version(argparse.Action):
    """``--version``: the installed distribution's version, looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(f"polyspell {polyspell_version()} (Python {sys.version.split()[0]})")
        parser.exit()


def polyspell_version() -> str:
    """polyspell's version as installed (pyproject's), or "unknown" when run from a tree
    that was never installed."""
    from importlib import metadata

    try:
        return metadata.version("polyspell")
    except metadata.PackageNotFoundError:
        return "unknown"


def exit_code(err: Any) -> int:
    """The exit code for a unified error: 2 configuration, 3 security, 4 resource, else 1.

    3 and 4 say the host or the engine observed a violation or a limit: a security or
    resource error a script raised itself (``raised_by_script``) exits 1.
    """
    if err.category == "configuration":
        return EXIT_USAGE
    if getattr(err, "raised_by_script", False):
        return EXIT_FAILED
    if err.category == "security" or err.code == "script/security_violation":
        return EXIT_SECURITY
    if err.category == "resource" or err.code == "script/resource_exhaustion":
        return EXIT_RESOURCE
    return EXIT_FAILED


# -- run --------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    with _recording(args) as monitor:
        return _run_recorded(args, monitor)


def _run_recorded(args: argparse.Namespace, monitor: Any) -> int:
    from bridge import SpellError

    run = None
    pool = None
    try:
        script_args = _script_args(args)
        if args.isolation == "process":  # its worker starts while the host is imported
            from engines.process import WorkerPool

            pool = WorkerPool(1, memory_mb=args.memory_mb)
        import anyio

        from host.host import Host

        config = _config(args)
        hooks = _cli_hooks(args)
        host = Host(args.tools, timeout=args.timeout, memory_mb=args.memory_mb,
                    sandbox=args.sandbox, config=config, hooks=hooks,
                    on_human_input=_terminal_input(), monitor=monitor,
                    isolation=pool or args.isolation, libraries=args.lib,
                    script_dir_library=False if args.no_script_dir_lib else None,
                    lua_version=args.lua_version)
        with host, _script_lines(), _hook_logs(hooks, config):
            run = host.new_run(args.script, script_args)  # its recovery history is reported
            result = anyio.run(run.execute)
    except SpellError as err:
        code = _report_failure(err, args, run)
        _report_degraded(run)
        return code
    except Exception as exc:  # a bug of ours: still one unified error, never a raw traceback
        return _report_failure(_internal_error(exc), args, run)
    finally:
        if pool is not None:
            pool.close()
    if args.json:
        stopped = {"stopped_by": run.stopped.tool} if run.stopped is not None else {}
        print_json({"ok": True, "result": result, **stopped, **_recovery_json(run)})
    else:
        print_json(result, indent=2)
    _report_degraded(run)
    return EXIT_OK


def _terminal_input() -> Any:
    """Who answers a tool's AskHuman in ``polyspell run``: the person at the terminal
    (question on stderr, answer a line of stdin) when stdin is one, else no one."""
    try:
        if not sys.stdin.isatty():
            return None
    except (AttributeError, ValueError):  # stdin closed or replaced
        return None
    from host.steer import TerminalInput

    return TerminalInput(sys.stdin, sys.stderr)


def _recovery_json(run: Any) -> dict[str, Any]:
    """``"recovery"`` (and ``"recovery_dropped"``) of run --json, when recovery acted."""
    history = getattr(run, "recovery", None)
    return history.as_json() if history else {}


def _report_degraded(run: Any) -> None:
    """One line on stderr per tool that answered degraded in ``run`` (see
    :mod:`host.recovery.degrade`): what it answered and why."""
    if run is None:
        return
    import json

    for tool, why in run.degraded_reasons.items():
        policy = run.recovery_policies.get(tool)
        value = json.dumps(policy.degraded if policy is not None else None,
                           ensure_ascii=False, default=str)
        if len(value) > 60:
            value = value[:57] + "..."
        distinct = ", ".join(why)
        times = sum(why.values())
        calls = f"{times} calls: " if times > 1 else ""
        print(f"polyspell: ran degraded: {tool} answered {value} ({calls}{distinct})",
              file=sys.stderr)


def _internal_error(exc: Exception) -> Any:
    """A bug of ours as one unified error (``runtime/internal_error``)."""
    from bridge import SpellError
    from bridge.errors import describe_exception

    return SpellError.wrap(exc, "runtime", "internal_error",
                           reason=describe_exception(exc, qualified=False))


def _script_args(args: argparse.Namespace) -> Any:
    from bridge import ConfigurationError
    from bridge.data import TooDeep, read_json

    script_args: Any = None
    if args.args_json is not None:
        try:
            script_args = read_json(args.args_json)
        except TooDeep as exc:
            raise ConfigurationError.InvalidValue(
                key="--args-json", value=args.args_json[:200], reason=f"JSON {exc}") from None
        except ValueError as exc:
            raise ConfigurationError.InvalidValue(
                key="--args-json", value=args.args_json[:200],
                reason=f"not valid JSON ({exc})") from None
    if args.params:
        if script_args is None:
            script_args = {}
        if not isinstance(script_args, dict):
            raise ConfigurationError.InvalidValue(
                key="--args-json", value=args.args_json[:200],
                reason="key=value arguments need --args-json to be an object")
        for item in args.params:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise ConfigurationError.Usage(
                    reason=f"argument {item!r} is not key=value", command="run")
            try:
                script_args[key] = read_json(raw)
            except TooDeep as exc:
                raise ConfigurationError.InvalidValue(
                    key=key, value=raw[:200], reason=f"JSON {exc}") from None
            except ValueError:
                script_args[key] = raw
    return script_args


def _report_failure(err: Any, args: argparse.Namespace, run: Any = None) -> int:
    if getattr(args, "json", False):
        print_json({"ok": False, "error": err.to_dict(), **_recovery_json(run)})
    else:
        print(err.to_text(verbose=getattr(args, "verbose", False), color=_color(sys.stderr)),
              file=sys.stderr)
    return exit_code(err)


COLOR_CHOICES = ("auto", "always", "never")
_color_mode = ["auto"]  # --color of the command running (main sets it)


def _color(stream: Any) -> bool:
    """Whether to colour what goes to ``stream``: ``--color always|never`` says so;
    ``auto`` (the default) colours a terminal, unless ``NO_COLOR`` is set
    (https://no-color.org) or ``TERM=dumb``, and colours anything if ``FORCE_COLOR`` is
    set (https://force-color.org)."""
    import os

    mode = _color_mode[-1]
    if mode != "auto":
        return mode == "always"
    if os.environ.get("NO_COLOR"):
        return False
    return bool(os.environ.get("FORCE_COLOR")) or is_terminal(stream)


# -- plan -----------------------------------------------------------------------------

# A task status's colour, by name (rich's style) and as its ANSI code (the plain text's)
STATUS_COLORS = {"succeeded": "green", "failed": "red", "timed_out": "red",
                 "cancelled": "yellow", "skipped": "yellow"}
ANSI_COLORS = {"green": "32", "red": "31", "yellow": "33"}
MAX_ROOT_CAUSES_SHOWN = 5
MAX_RECOVERY_TASKS_SHOWN = 20


def _plan(args: argparse.Namespace) -> int:
    with _recording(args) as monitor:
        return _plan_recorded(args, monitor)


def _plan_recorded(args: argparse.Namespace, monitor: Any) -> int:
    from bridge import SpellError

    progress = _PlanProgress() if sys.stderr.isatty() and not args.quiet else None
    try:
        from host.coordinator import Coordinator

        config = _config(args)
        hooks = _cli_hooks(args)
        from host.plan import load_plan

        if args.ray_address is not None and args.executor == "local":
            from bridge import ConfigurationError

            raise ConfigurationError.Usage(reason="--ray-address goes with --executor ray")
        given = args.executor or ("ray" if args.ray_address is not None else None)
        plan_file = load_plan(args.plan)
        coordinator = Coordinator(args.tools, config=config, hooks=hooks, monitor=monitor,
                                  isolation=args.isolation, libraries=args.lib,
                                  script_dir_library=False if args.no_script_dir_lib
                                  else None, executor=given, ray_address=args.ray_address,
                                  lua_version=args.lua_version)
        with coordinator:  # its worker processes end with it (process isolation)
            plan = coordinator.prepare(plan_file, strategy=args.strategy,
                                       max_concurrency=args.max_concurrency)
            if progress is None:
                with _script_lines(), _hook_logs(hooks, config):
                    report = coordinator.run(plan)
            else:
                coordinator.on_task_started(progress.started)
                coordinator.on_task_completed(progress.completed)
                with progress.live(plan), _script_lines(progress.output), \
                        _hook_logs(hooks, config, progress.log):
                    report = coordinator.run(plan)
    except SpellError as err:
        return _report_failure(err, args)
    except Exception as exc:  # a bug of ours: still one unified error, never a raw traceback
        return _report_failure(_internal_error(exc), args)
    if args.json:
        print_json(report.model_dump(mode="json"))  # pydantic's JSON refuses lone surrogates
        return EXIT_OK if report.outcome == "succeeded" else EXIT_FAILED
    out = _results()
    drawn = is_terminal(out)
    if drawn:  # the task table drawn by rich; the rest as text
        from host.terminal import print_table

        rows = _task_rows(report)
        print_table(out, rows[1:], header=rows[0], color=_color(out), right=(3, 4),
                    styles=[STATUS_COLORS[task.status] for task in report.tasks])
    out.write(format_plan_report(report, verbose=args.verbose, color=_color(out),
                                 table=not drawn))
    return EXIT_OK if report.outcome == "succeeded" else EXIT_FAILED


def _task_rows(report: Any) -> list[tuple[str, ...]]:
    """The report's task table: a header, then a row per task."""
    return [("task", "engine", "status", "attempts", "duration"),
            *((t.id, t.engine, t.status, str(t.attempts), f"{t.duration:.2f}s")
              for t in report.tasks)]


def format_plan_report(report: Any, *, verbose: bool = False, color: bool = False,
                       table: bool = True) -> str:
    """A plan's report as people read it: the tasks (unless ``table`` is false: a
    terminal draws them), the outcome, the root causes."""
    from bridge.render import recovery_summary

    def paint(text: str, name: str | None) -> str:  # name: a colour of ANSI_COLORS
        return f"\x1b[{ANSI_COLORS[name]}m{text}\x1b[0m" if color and name else text

    rows = _task_rows(report)
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for n, row in enumerate(rows if table else ()):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1]),
                 paint(row[2].ljust(widths[2]), None if n == 0 else STATUS_COLORS[row[2]]),
                 row[3].rjust(widths[3]), row[4].rjust(widths[4])]
        lines.append("  ".join(cells).rstrip())
    failed = sum(t.status != "succeeded" for t in report.tasks)
    outcome = paint(report.outcome, "green" if report.outcome == "succeeded" else "red")
    counts = (f"{failed} of {len(report.tasks)} tasks did not succeed" if failed
              else f"{len(report.tasks)} tasks")
    lines += ["", f"outcome: {outcome} (plan {report.plan}, strategy {report.strategy}, "
                  f"{counts}, {report.duration:.2f}s)"]
    if report.decision:
        lines.append(f"decision: {report.decision} (failed fraction "
                     f"{report.failed_fraction:.2f}, tolerance {report.tolerance:.2f})")
    if report.root_causes:
        lines.append(f"root causes: {', '.join(report.root_causes)}")
    if report.propagation:
        lines.append(f"propagation: {', '.join(report.propagation)}")
    degraded = [f"{t.id} ({', '.join(t.degraded)})" for t in report.tasks if t.degraded]
    if degraded:
        lines.append(f"ran degraded: {', '.join(degraded)}")
    if report.representative_task:
        lines.append(f"representative error: {report.representative_task}")
    lines += _not_succeeded(report, paint)
    recovered = [t for t in report.tasks if t.recovery]
    for task in recovered[:MAX_RECOVERY_TASKS_SHOWN]:
        lines += recovery_summary(task.recovery, task.recovery_dropped,
                                  lead=f"recovery in {task.id}: ")
    if len(recovered) > MAX_RECOVERY_TASKS_SHOWN:
        lines.append(f"... and {len(recovered) - MAX_RECOVERY_TASKS_SHOWN} more tasks "
                     f"recovered (--json shows them all)")
    for task_id in report.root_causes[:MAX_ROOT_CAUSES_SHOWN]:
        err = report.error(task_id)
        if err is not None:
            lines += ["", f"root cause {task_id}:", err.to_text(verbose=verbose, color=color)]
    hidden = len(report.root_causes) - MAX_ROOT_CAUSES_SHOWN
    if hidden > 0:
        lines += ["", f"... and {hidden} more root causes (--json shows them all)"]
    return "\n".join(lines) + "\n"


MAX_FAILED_TASKS_SHOWN = 50
MAX_MESSAGE_SHOWN = 300


def _not_succeeded(report: Any, paint: Callable[[str, str | None], str]) -> list[str]:
    """One line per task that did not succeed: its status, its error's code and message
    (a script's text, shown safely), and why when another task's failure is the reason."""
    from host.lines import shown_text

    tasks = [t for t in report.tasks if t.status != "succeeded"]
    if not tasks:
        return []
    width = max(len(t.id) for t in tasks[:MAX_FAILED_TASKS_SHOWN])
    lines = ["", "did not succeed:"]
    for task in tasks[:MAX_FAILED_TASKS_SHOWN]:
        err = report.error(task.id)
        text = (f"{err.code}: {shown_text(err.message, limit=MAX_MESSAGE_SHOWN)}"
                if err is not None else "(no error)")
        if task.id in report.root_causes:
            text += " (a root cause: its traceback is below)"
        elif task.caused_by and report.strategy == "isolate" and task.attempts:
            text += f" (it ran with the failed input of {', '.join(task.caused_by)})"
        status = paint(task.status.ljust(9), STATUS_COLORS[task.status])
        lines.append(f"  {task.id.ljust(width)}  {status}  {text}")
    if len(tasks) > MAX_FAILED_TASKS_SHOWN:
        lines.append(f"  ... and {len(tasks) - MAX_FAILED_TASKS_SHOWN} more (--json shows "
                     "them all)")
    return lines


class _PlanProgress:
    """Live progress on a terminal's stderr (rich's progress bar), with a line per task
    that ends and what scripts print above it."""

    def __init__(self) -> None:
        self.running: list[str] = []
        self.bar: Any = None  # rich's Progress, while it is live
        self.row: Any = None
        self.name = ""

    def live(self, plan: Any) -> Any:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        from host.terminal import rich_console

        self.name = plan.name
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                            MofNCompleteColumn(), transient=True,
                            console=rich_console(sys.stderr, _color(sys.stderr)))
        self.row = self.bar.add_task(f"plan {plan.name}", total=len(plan.tasks))
        return self.bar

    def started(self, task_id: str, attempt: int) -> None:
        if task_id not in self.running:
            self.running.append(task_id)
        self._describe()

    def completed(self, task: Any) -> None:
        if task.id in self.running:
            self.running.remove(task.id)
        self.print(f"{task.id} ({task.engine or '?'}) {task.status} after "
                   f"{task.duration:.2f}s", STATUS_COLORS.get(task.status))
        self.bar.advance(self.row)
        self._describe()

    def log(self, text: str) -> None:
        """A hook preset's log record, above the live display."""
        self.print(text)

    def output(self, task_id: str, line: str) -> None:
        """A line a task's script printed, above the live display."""
        self.print(f"[{task_id}] {line}")

    def print(self, text: str, style: str | None = None) -> None:
        """``text`` above the live display, as text (never read as markup)."""
        from rich.text import Text

        self.bar.console.print(Text(text, style=style or ""))

    def _describe(self) -> None:
        if self.bar is not None:
            shown = ", ".join(self.running[:4]) + (" ..." if len(self.running) > 4 else "")
            self.bar.update(self.row, description=f"plan {self.name}: {shown or 'waiting'}")


# -- explain --------------------------------------------------------------------------


def _explain(args: argparse.Namespace) -> int:
    from bridge import BridgeError, ConfigurationError, SpellError
    from bridge.data import TooDeep, read_json
    from bridge.errors import MAX_JSON_DEPTH

    try:
        if args.file == "-":
            text = sys.stdin.read()
        else:
            try:
                with open(args.file, encoding="utf-8") as handle:
                    text = handle.read()
            except FileNotFoundError:
                raise ConfigurationError.FileNotFound(path=args.file) from None
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigurationError.LoadFailed(path=args.file, reason=str(exc)) from None
        try:
            data = read_json(text, MAX_JSON_DEPTH + 1)  # + 1: run --json's {"error": ...}
        except TooDeep as exc:
            raise BridgeError.DeserializationFailed(reason=f"error JSON {exc}", path="$") \
                from None
        except ValueError as exc:
            raise ConfigurationError.ParseFailed(source=args.file, reason=f"not JSON ({exc})") \
                from None
        if isinstance(data, dict) and data.get("ok") is False and "error" in data:
            data = data["error"]  # the output of polyspell run --json
        elif isinstance(data, dict) and data.get("ok") is True:  # that of a run that worked
            if args.json:
                print_json({"ok": True, "error": None})
            else:
                print("not an error: this is the output of a run that succeeded "
                      '({"ok": true, ...}); there is nothing to explain')
            return EXIT_OK
        err = SpellError.from_dict(data)
    except SpellError as problem:
        print(problem.to_text(), file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print_json(err.to_dict(), indent=2)  # err.to_json(indent=2), safe for any stdout
    else:
        print(err.to_text(verbose=args.verbose, color=_color(sys.stdout)))
    return EXIT_OK


# -- tools ------------------------------------------------------------------------------


def _tools(args: argparse.Namespace) -> int:
    from bridge import SpellError
    from host.libraries import Libraries, answer
    from host.tools import load_tools_file

    def listed(path: str, libraries: Libraries) -> list[Any]:
        roots = libraries.roots_for(path)  # a Lua tools file's require: as in a run
        return load_tools_file(path, modules=lambda request: answer(libraries, request, roots))

    try:
        libraries = Libraries(args.lib, script_dir=not args.no_script_dir_lib)
        tools = [t for path in [*args.files, *args.tools] for t in listed(path, libraries)]
    except SpellError as err:
        return _report_failure(err, args)
    listing = [{"name": t.name, "description": t.description, "timeout": t.timeout,
                "async": t.is_async, "parameters": t.schema()} for t in tools]
    if args.json:
        print_json(listing, indent=2)
        return EXIT_OK
    if not listing:
        print("no tools (name tools files: polyspell tools FILE...)", file=sys.stderr)
    for entry in listing:
        summary = entry["description"].splitlines()[0] if entry["description"] else ""
        print(f"{entry['name']}  {summary}")
        for line in parameter_lines(entry["parameters"]):
            print(f"  {line}")
    return EXIT_OK


# -- metrics --------------------------------------------------------------------------


def _metrics(args: argparse.Namespace) -> int:
    import threading

    from bridge import SpellError
    from host.monitor import default_path
    from host.monitor.metrics import MetricsServer, StoreCollector, registry_of
    from host.monitor.store import Store

    try:
        path = args.errors_db if args.errors_db is not None else default_path()
        store = Store(path)
        try:
            server = MetricsServer(registry_of(StoreCollector(store)), args.port, args.addr)
        except SpellError:
            store.close()
            raise
    except SpellError as err:
        return _report_failure(err, args)
    print(f"polyspell: serving the metrics of {store.path} at {server.url} "
          "(Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        threading.Event().wait()  # until KeyboardInterrupt (main reports it)
    finally:
        server.close()
        store.close()
    return EXIT_OK


def parameter_lines(schema: dict[str, Any]) -> list[str]:
    """A tool's parameters as people read them, one line each (``query: string
    (required)``, ``limit: integer = 3``, and its description); a type JSON Schema says
    in more words than a name, as compact JSON."""
    from bridge.jsontext import json_text

    properties = schema.get("properties") or {}
    if not properties:
        return ["(no parameters)"]
    required = set(schema.get("required") or ())
    lines = []
    for name, prop in properties.items():
        line = f"{name}: {_schema_type(prop)}"
        line += " (required)" if name in required else (
            f" = {json_text(prop['default'])}" if "default" in prop else "")
        if prop.get("description"):
            line += f"  {prop['description']}"
        lines.append(line)
    return lines


def _schema_type(prop: dict[str, Any]) -> str:
    from bridge.jsontext import json_text

    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in prop:
        return " | ".join(_schema_type(p) for p in prop["anyOf"])
    if "enum" in prop:
        return " | ".join(json_text(value) for value in prop["enum"])
    kind = prop.get("type")
    if kind == "array":
        items = prop.get("items")
        return f"list of {_schema_type(items)}" if items else "list"
    if kind == "object" and "additionalProperties" in prop and isinstance(
            prop["additionalProperties"], dict):
        return f"dict of {_schema_type(prop['additionalProperties'])}"
    if isinstance(kind, str):
        return kind
    return json_text({k: v for k, v in prop.items() if k not in ("title", "default")}) \
        if prop else "any"


# -- catalog --------------------------------------------------------------------------


def _catalog(args: argparse.Namespace) -> int:
    from bridge.catalog import describe_catalog

    catalog = describe_catalog()
    if args.category:
        catalog = [c for c in catalog if c["category"] == args.category]
        if not catalog:
            from bridge.names import closest, did_you_mean

            known = [c["category"] for c in describe_catalog()]
            hint = did_you_mean(closest(args.category, known))
            print(f"polyspell catalog: unknown category {args.category!r} ({hint}one of "
                  f"{', '.join(known)})",
                  file=sys.stderr)
            return EXIT_USAGE
    if args.json:
        print_json(catalog, indent=2)
    elif is_terminal(sys.stdout):
        from host.terminal import print_table

        for category in catalog:
            print_table(sys.stdout, _catalog_rows(category), color=_color(sys.stdout),
                        header=("kind", "severity", "retry", "fields"),
                        title=f"{category['category']} ({category['script_name']} in "
                              f"scripts): {category['description']}")
            print()
    else:
        sys.stdout.write(format_catalog(catalog))
    return EXIT_OK


def format_catalog(catalog: list[dict[str, Any]]) -> str:
    """The catalog as a readable table: one block per category, one row per kind."""
    lines = []
    for category in catalog:
        lines.append(f"{category['category']}  ({category['script_name']} in scripts)  "
                     f"{category['description']}")
        width = max(len(v["kind"]) for v in category["variants"])
        for kind, severity, retry, fields in _catalog_rows(category):
            lines.append(f"  {kind:<{width}}  {severity:<8}  {retry:<11}  {fields}")
        lines.append("")
    return "\n".join(lines)


def _catalog_rows(category: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """A category's kinds: kind, severity, whether and when to retry, fields."""
    rows = []
    for variant in category["variants"]:
        retry = "-"
        if variant["retryable"]:
            retry = f"retry {variant['retry_after']}s" if variant["retry_after"] else "retry"
        fields = ", ".join(
            f"{f['name']}: {f['type']}" + ("" if f["required"] else f" = {f['default']!r}")
            for f in variant["fields"])
        rows.append((variant["kind"], variant["severity"], retry, fields))
    return rows


if __name__ == "__main__":
    sys.exit(main())
