"""Cause chains that loop or run very deep: every consumer walks them once, bounded and
cycle-safe (``bridge.errors.cause_chain``), and says where it cut them. A tool failing with
such an exception is a tool failure the script can catch, one level deep and through a
tools file, in both languages.
"""

from __future__ import annotations

import json
import pickle

import pytest

from bridge import SpellError, ToolError
from bridge.envelope import error_envelope
from bridge.errors import MAX_CAUSE_DEPTH, cause_chain
from host import Host, tool
from tests.conftest import EXTENSION, LANGUAGES, pick


def _self_cause() -> BaseException:
    e = ValueError("upstream said no")
    e.__cause__ = e
    return e


def _pair() -> BaseException:
    a, b = ValueError("a"), KeyError("b")
    a.__cause__ = b
    b.__context__ = a
    b.__cause__ = a
    return a


def _deep(n: int = 3000) -> BaseException:
    e = ValueError("0")
    for i in range(1, n + 1):
        n_ = ValueError(str(i))
        n_.__cause__ = e
        e = n_
    return e


def _context_loop() -> BaseException:
    a, b = ValueError("a"), KeyError("b")
    a.__cause__ = b
    b.__context__ = a
    return a


MAKERS = {"self": _self_cause, "pair": _pair, "deep": _deep, "context": _context_loop}


@tool
def failing(how: str) -> str:
    """Fails with an exception whose cause chain loops or runs 3,000 deep."""
    raise MAKERS[how]()


def _quiet(*tools) -> Host:
    return Host(list(tools), timeout=10, on_output=lambda line: None)


@pytest.mark.parametrize("how", list(MAKERS))
def test_every_consumer_of_a_looping_or_deep_chain_is_bounded(how):
    err = ToolError.wrap(MAKERS[how](), tool_name="t", reason="r", parameters="",
                         execution_time=0.0)
    chain = list(err.chain())
    assert 2 <= len(chain) <= MAX_CAUSE_DEPTH + 1
    data = err.to_dict()
    depth, last = 0, data
    while last["cause"] is not None:
        depth, last = depth + 1, last["cause"]
    assert depth == len(chain) - 1
    back = SpellError.from_json(err.to_json())
    assert back.code == "tool/execution_failed"
    assert pickle.loads(pickle.dumps(err)).code == "tool/execution_failed"
    envelope = error_envelope(err, ref=id)
    assert envelope["category"] == "tool"
    text = err.to_text()
    assert "tool/execution_failed" in text
    if how in ("self", "pair"):  # the cut is said, not silent
        assert "loops back" in last["message"]
        assert "loops back" in text
    elif how == "deep":
        assert "more causes not shown" in last["message"]
        assert f"{3001 - MAX_CAUSE_DEPTH} more causes not shown" in last["message"]
        assert cause_chain(err).omitted == 3001 - MAX_CAUSE_DEPTH
    else:
        assert "loops back" not in last["message"]


@pytest.mark.parametrize("how", list(MAKERS))
def test_a_tool_failing_with_a_looping_or_deep_chain_is_catchable(language, how):
    host = _quiet(failing)
    caught = host.run_source(pick(language,
                                  "local ok, err = pcall(tools.failing, {how = args.how})\n"
                                  "return {ok, err.category, err.kind}\n",
                                  "async function main(args) {\n"
                                  "  try { await tools.failing(args); return [true]; }\n"
                                  "  catch (err) { return [false, err.category, err.kind]; }\n}\n"),
                             language, "agent", {"how": how})
    assert caught == [False, "tool", "execution_failed"]
    with pytest.raises(ToolError) as info:
        host.run_source(pick(language, "return tools.failing{how = args.how}",
                             "async function main(args) { return await tools.failing(args); }"),
                        language, "agent", {"how": how})
    assert info.value.code == "tool/execution_failed"
    json.loads(info.value.to_json())


RELAY = {
    "lua": "local M = {}\nfunction M.relay(p) return tools.failing(p) end\n"
           "function M.guard(p)\n  local ok, err = pcall(tools.failing, p)\n"
           "  return {err.kind, err.fields.tool_name}\nend\nreturn M\n",
    "javascript": "exports.relay = function relay(p) { return tools.failing(p); };\n"
                  "exports.guard = async function guard(p) {\n"
                  "  try { await tools.failing(p); } catch (err) {"
                  " return [err.kind, err.fields.tool_name]; }\n};\n",
}


@pytest.mark.parametrize("helper", LANGUAGES)
@pytest.mark.parametrize("how", ["self", "deep"])
def test_through_a_tools_file_a_looping_or_deep_chain_is_the_tools_failure(
        language, helper, how, tmp_path):
    path = tmp_path / f"relay{EXTENSION[helper]}"
    path.write_text(RELAY[helper])
    host = _quiet(failing, path)
    assert host.run_source(pick(language, "return tools.guard{how = args.how}",
                                "async function main(args) { return await tools.guard(args); }"),
                           language, "agent", {"how": how}) == ["execution_failed", "failing"]
    with pytest.raises(ToolError.ExecutionFailed) as info:
        host.run_source(pick(language, "return tools.relay{how = args.how}",
                             "async function main(args) { return await tools.relay(args); }"),
                        language, "agent", {"how": how})
    assert info.value.fields["tool_name"] == "failing"
    json.loads(info.value.to_json())
    info.value.to_text()
