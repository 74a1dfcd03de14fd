"""Both engines fail a breach of the step protocol with the same error.

The host breaks the protocol when it calls a tools file's function on an engine that has
loaded none, or resumes an engine with replies to requests it is not waiting for: a bug
on the host's side, which every engine reports as ``bridge/protocol_violation``
(engines.base.protocol_violation).
"""

from __future__ import annotations

import time

import pytest

from engines import make_engine
from engines.base import Failed, Suspended, ToolReply

LANGUAGES = ["lua", "javascript"]
CALLS_A_TOOL = {"lua": "local r = tools.wait{}\nreturn r",
                "javascript": "async function main() { return await tools.wait({}) }"}


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_call_with_no_tools_file_loaded_is_a_protocol_violation(language: str) -> None:
    engine = make_engine(language)
    try:
        step = engine.call("f", {}, time.monotonic() + 5)
    finally:
        engine.close()
    assert isinstance(step, Failed) and step.error.code == "bridge/protocol_violation"
    assert "no tools file" in step.error.fields["reason"]


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_reply_to_a_request_not_waited_for_is_a_protocol_violation(language: str) -> None:
    engine = make_engine(language)
    try:
        step = engine.start(CALLS_A_TOOL[language], "agent.src", None, [],
                            time.monotonic() + 5)
        assert isinstance(step, Suspended)
        step = engine.resume([ToolReply(step.requests[0].id + 1)], time.monotonic() + 5)
    finally:
        engine.close()
    assert isinstance(step, Failed) and step.error.code == "bridge/protocol_violation"
