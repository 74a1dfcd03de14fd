"""``FailFast``: no recovery for a tool; its failure ends the run, after the run's cleanups.

A tool with ``fail_fast = true`` gets none of its recovery policies, whatever else its
table or the ``[recovery]`` defaults set (no retry, breaker, fallback, timeout policy or
degraded answer: ``fail_fast`` wins). When one of its calls fails, the run stops with that
error: the script gets it at this call (its ``pcall``/``catch`` and ``finally`` run), and
the run ends with it even if the script swallows it (as a cancellation does; a later tool
call fails with it at once). Before the error leaves the run, the run's cleanups run
(``run.on_cleanup(fn)``, see :class:`host.runner.ScriptRun`).

Not a failure of the tool (the error passes as usual): the run's own stop request (a
cancellation) and the run's time limit, which end the run anyway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from host.calls import failure_to_recover

if TYPE_CHECKING:
    from host.calls import Next, ToolCall


class FailFastLayer:
    """The one layer of a fail-fast tool: a failed call stops the run with its error."""

    def __call__(self, call: ToolCall, next: Next) -> Any:
        try:
            return next(call)
        except BaseException as exc:
            err = failure_to_recover(call, exc)
            control = call.run.control
            if control.reason is None and not _ends_anyway(err):
                call.run.failed_fast = err  # a stop of its own, not a cancellation
                control.request_stop(err)
            if err is exc:
                raise
            raise err  # noqa: B904 - as_spell_error made exc its cause


def _ends_anyway(err: Any) -> bool:
    return err.code == "script/resource_exhaustion" and \
        err.fields.get("resource_type") == "time"
