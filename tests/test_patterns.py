"""Plain-string errors of older scripts, recognised as unified errors."""

from __future__ import annotations

import re

import pytest

from bridge import BridgeError, SpellError, variants
from bridge.patterns import MessagePattern, PatternRegistry, patterns, template_pattern

RECOGNISED = {
    "Agent not found: planner": ("agent/not_found", {"agent_id": "planner"}),
    "Tool 'search' not found": ("tool/not_found", {"tool_name": "search"}),
    'tool "search" not found': ("tool/not_found", {"tool_name": "search"}),
    "Tool not found: search": ("tool/not_found", {"tool_name": "search"}),
    "Tool timeout: search after 2.5s": ("tool/timeout", {"tool_name": "search",
                                                          "duration": 2.5}),
    "Rate limited by openai": ("provider/rate_limited", {"provider": "openai"}),
    "rate limit exceeded": ("provider/rate_limited", {"provider": "unknown"}),
    "Invalid agent configuration: temperature - above 2": (
        "agent/invalid_configuration", {"field": "temperature", "reason": "above 2"}),
    "Tool resource limit exceeded: fetch - memory: 300 > 256": (
        "tool/resource_limit_exceeded", {"tool_name": "fetch", "resource_type": "memory",
                                         "used": 300, "limit": 256}),
}


@pytest.mark.parametrize("message", list(RECOGNISED))
def test_known_messages_become_their_error(message):
    code, fields = RECOGNISED[message]
    err = patterns.match(message)
    assert err is not None and err.code == code
    assert {k: err.fields[k] for k in fields} == fields
    assert err.message == message  # the script's own words are kept


@pytest.mark.parametrize("message", ["just a message", "Tool timeout: search after soon",
                                     "", "attempt to index a nil value"])
def test_other_messages_are_left_alone(message):
    assert patterns.match(message) is None


def test_every_readable_template_reads_back_its_own_message():
    checked = 0
    for variant in variants():
        pattern = template_pattern(variant)
        if pattern is None:
            continue
        sample = {name: f"v{i}" for i, name in enumerate(variant.fields_model.model_fields)}
        for name, info in variant.fields_model.model_fields.items():
            if info.annotation in (int, float, int | float, float | None, int | None):
                sample[name] = 7
            elif not info.is_required():
                sample.pop(name)
        try:
            err = variant(**sample)
        except SpellError:
            continue  # a Literal field: sample values do not fit, nothing to read back
        back = pattern.match(err.message)
        assert back is not None and type(back) is type(err), variant
        checked += 1
    assert checked > 40


def test_user_patterns_come_first_and_are_checked_when_added():
    registry = PatternRegistry()
    registry.add(r"quota hit for (?P<provider>\w+)", "provider", "quota_exceeded")
    registry.add(r"Agent not found: (?P<agent_id>\w+)", "agent", "state_corruption",
                 description="shadowed")
    err = registry.match("quota hit for acme")
    assert err.code == "provider/quota_exceeded" and err.fields["provider"] == "acme"
    assert registry.match("Agent not found: x").code == "agent/state_corruption"
    with pytest.raises(BridgeError.InvalidError, match="unknown kind"):
        registry.add(r"x", "provider", "nope")


@pytest.mark.parametrize("language", ["lua", "javascript"])
@pytest.mark.parametrize("throw", ["string", "error"])
def test_old_scripts_plain_errors_come_out_as_unified_errors(language, throw):
    from host import Host

    message = "Agent not found: planner"
    source = {
        ("lua", "string"): f'\nerror("{message}")',
        ("lua", "error"): f'\nerror("{message}", 0)',
        ("javascript", "string"): f'\nthrow "{message}";',
        ("javascript", "error"): f'\nthrow new Error("{message}");',
    }[language, throw]
    with pytest.raises(SpellError) as info:
        Host(on_output=lambda line: None).run_source(source, language, "old.src")
    err = info.value
    assert err.code == "agent/not_found" and err.fields["agent_id"] == "planner"
    assert err.message == message
    assert err.frames and err.frames[-1].file == "old.src"
    if not (language == "javascript" and throw == "string"):  # JS keeps no line for a string
        assert err.frames[-1].line == 2


def test_other_plain_errors_stay_script_errors():
    from host import Host

    with pytest.raises(SpellError) as info:
        Host(on_output=lambda line: None).run_source('error("disk on fire")', "lua", "a.lua")
    assert info.value.code == "script/lua"


@pytest.mark.parametrize("language", ["lua", "javascript"])
@pytest.mark.parametrize("throw", ["string", "error"])
def test_an_engine_reads_plain_errors_with_the_patterns_it_is_given(language, throw):
    import time

    from engines import make_engine

    registry = PatternRegistry()
    registry.add(r"quota hit for (?P<provider>\w+)", "provider", "quota_exceeded")
    source = {
        ("lua", "string"): 'error("quota hit for acme")',
        ("lua", "error"): 'error("quota hit for acme", 0)',
        ("javascript", "string"): 'throw "quota hit for acme";',
        ("javascript", "error"): 'throw new Error("quota hit for acme");',
    }[language, throw]
    codes = []
    for given in (registry, None):
        engine = make_engine(language)
        if given is not None:
            engine.patterns = given
        step = engine.start(source, "old.src", None, [], time.monotonic() + 5)
        engine.close()
        codes.append(step.error.code)
    # its own registry only: the process's (bridge.patterns.patterns) knows no such message
    assert codes == ["provider/quota_exceeded", f"script/{language}"]
    assert patterns.match("quota hit for acme") is None


def one_by_one(registry: PatternRegistry, message: str) -> SpellError | None:
    """What ``registry.match`` gives, found by trying every pattern in order (the
    registry looks at its always-tried built-in patterns with one joined regex first)."""
    words = message.split(None, 1)
    for pattern in registry:
        if pattern.first_word is None or pattern.first_word == (words[0] if words else ""):
            err = pattern.match(message)
            if err is not None:
                return err
    return None


JOINED_PROBES = [*RECOGNISED, "just a message", "", "  Tool 'x' not found  ",
                 "Tool 'x' not found\n",
                 "Unknown tool: a.b", "unknown tool 'q'", "Rate limit exceeded for x and more",
                 "Timed out after 2.5 seconds calling fetch", "Request timeout after 3s",
                 "timeout after 3.5.5s", "Agent 'a' not found!", "tool \"x\" not found",
                 "Tool 'x' not found\nTool 'y' not found", "Tool '' not found"]


@pytest.mark.parametrize("message", JOINED_PROBES)
def test_the_joined_look_finds_what_each_pattern_finds(message):
    expected = one_by_one(patterns, message)
    err = patterns.match(message)
    assert (err and (err.code, err.fields, err.message)) == \
        (expected and (expected.code, expected.fields, expected.message))


def test_built_in_patterns_added_later_are_tried_joined_or_alone():
    registry = PatternRegistry()
    assert registry.match("quota gone for openai") is None  # the joined regex is made now
    registry.add_builtin(MessagePattern(re.compile(r"quota gone for (?P<provider>\w+)"),
                                        "provider", "quota_exceeded"))
    assert registry.match("quota gone for openai").fields["provider"] == "openai"
    # a back reference cannot be joined: each pattern is then tried alone
    registry.add_builtin(MessagePattern(re.compile(r"(?P<provider>\w+) is out of (?P=provider)"),
                                        "provider", "quota_exceeded"))
    assert registry.match("abc is out of abc").fields["provider"] == "abc"
    assert registry.match("abc is out of abd") is None
    assert registry.match("Tool 'x' not found").code == "tool/not_found"


def test_a_group_name_in_a_character_class_keeps_patterns_apart():
    registry = PatternRegistry()
    registry.add_builtin(MessagePattern(re.compile(r"odd [(?P<x>]+ (?P<provider>\w+)"),
                                        "provider", "quota_exceeded"))
    assert registry.match("odd ?P< openai").fields["provider"] == "openai"
