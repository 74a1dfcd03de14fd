"""A driver that stands in for the host, through the engine interface only.

It answers each tool request from a dict of Python functions, with the function's result
or, when it raises a SpellError, an error envelope whose ref maps back to the raised error;
it reads output lines from the steps and resolves refs as the host does. Used by the
engine-contract suite and the engine-specific tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import engines
from bridge import SpellError, ToolError
from bridge.envelope import error_envelope, resolve_refs
from engines import Failed, Finished, Limits, Step, Suspended, ToolInfo, ToolReply, ToolRequest

FILE = {"lua": "agent.lua", "javascript": "agent.js"}

# What the driver makes engines with: engines.make_engine (thread isolation), or a worker
# pool's factory (process isolation), which the engine-contract suite sets per test.
factory: Callable[..., engines.Engine] = engines.make_engine


def make_engine(name: str, *, limits: Limits = engines.DEFAULT_LIMITS,
                sandbox: str = "constrained") -> engines.Engine:
    """A new engine of ``name`` from the driver's :data:`factory`."""
    return factory(name, limits=limits, sandbox=sandbox)


@dataclass
class Run:
    """What one driven activation produced."""

    step: Step
    requests: list[ToolRequest] = field(default_factory=list)
    output: list[str] = field(default_factory=list)
    refs: dict[int, SpellError] = field(default_factory=dict)

    @property
    def result(self) -> Any:
        assert isinstance(self.step, Finished), self.step
        return self.step.result

    @property
    def error(self) -> SpellError:
        assert isinstance(self.step, Failed), self.step
        return self.step.error


Tools = dict[str, Callable[[Any], Any]]


def converse(engine: engines.Engine, step: Step, tools: Tools, deadline: float,
             run: Run, *, one_at_a_time: bool = False) -> Run:
    """Answer ``step``'s requests from ``tools`` until the activation ends
    (``one_at_a_time``: check that each step suspends with a single request)."""
    run.output.extend(step.output)
    while isinstance(step, Suspended):
        assert not one_at_a_time or len(step.requests) == 1, step.requests
        replies = []
        for request in step.requests:
            # the call site, taken while the call waits, as the host takes it (an engine may
            # read it from the script's stack only then: see engines.base.ToolRequest)
            request.frames = request.frames
            run.requests.append(request)
            if request.kind == "module" and request.tool not in tools:  # as a host with no
                # library roots answers
                replies.append(ToolReply(request.id, result={
                    "missing": f"Cannot find module {request.tool!r} (no library roots)"}))
                continue
            try:
                if request.problem is not None:
                    raise ToolError.InvalidParameters(
                        tool_name=request.tool, validation_error=str(request.problem),
                        error_type="parse")
                if request.tool not in tools:
                    raise ToolError.NotFound(tool_name=request.tool)
                replies.append(ToolReply(request.id, result=tools[request.tool](request.params)))
            except SpellError as err:
                replies.append(ToolReply(request.id, error=error_envelope(err, ref=run_ref(run))))
        step = engine.resume(replies, deadline)
        run.output.extend(step.output)
    if isinstance(step, Failed):  # the host's part: an envelope rethrown is the original
        step.error = resolve_refs(step.error, run.refs.get)
    run.step = step
    return run


def run_ref(run: Run) -> Callable[[SpellError], int]:
    def ref(err: SpellError) -> int:
        run.refs[id(err)] = err
        return id(err)
    return ref


def drive(name: str, source: str, args: Any = None, tools: Tools | None = None, *,
          timeout: float = 5.0, memory_mb: int = 64, sandbox: str = "constrained",
          filename: str | None = None, one_at_a_time: bool = False) -> Run:
    """Run ``source`` in a new engine of ``name`` to its end."""
    tools = tools or {}
    engine = make_engine(name, limits=Limits(timeout=timeout, memory_mb=memory_mb),
                         sandbox=sandbox)
    deadline = time.monotonic() + timeout
    try:
        infos = [ToolInfo(tool, f"the {tool} tool") for tool in tools]
        step = engine.start(source, filename or FILE[name], args, infos, deadline)
        return converse(engine, step, tools, deadline, Run(step), one_at_a_time=one_at_a_time)
    finally:
        engine.close()
