"""``Timeout``: how long one attempt of a call, and the call with all its retries, may take.

Both are the tool-call pipeline's one timeout mechanism (:class:`host.calls.Timeouts`) at
two places of a tool's pipeline: ``total`` outside the retries (no retry starts that
cannot end in time), ``attempt`` inside the breaker, around each try, on top of the tool's
own ``timeout`` (the tighter one wins). Either running out is ``tool/timeout``. They bound
Python tools and functions of Lua/JS tools files alike: the file's engine stops the function
at the deadline, and since a stopped engine cannot go on, the file is loaded again at its
next call (see :mod:`host.recovery.restart`).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from host.recovery.model import Policy


class Timeout(Policy):
    """Seconds per attempt and in total (``timeout = { attempt = 2, total = 10 }``)."""

    policy_name: ClassVar[str] = "timeout"

    attempt: float | None = Field(None, gt=0, le=1e9, allow_inf_nan=False)
    total: float | None = Field(None, gt=0, le=1e9, allow_inf_nan=False)
