"""Tools that steer their run (see host.steer): ``--tools scripts/steer/tools.py``."""

from __future__ import annotations

import time

from host import AskHuman, StopRun, ToolContext, tool


@tool
def final_answer(text: str) -> dict:
    """Ends the run with the answer: nothing after this call runs."""
    raise StopRun({"answer": text})


@tool
def ask_user(question: str) -> str:
    """Asks the person running the agent; their answer is the result."""
    raise AskHuman(question)


@tool
def crunch(steps: int, ctx: ToolContext) -> int:
    """A long computation that stops when its run is cancelled or out of time."""
    done = 0
    while done < steps and not ctx.signal.aborted:
        time.sleep(0.01)  # one step of real work
        done += 1
    return done
