"""The unified error hierarchy: categories, variants, fields, severity, retryability, wrap."""

from __future__ import annotations

import builtins
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import (
    AgentError,
    BridgeError,
    ErrorContext,
    ScriptError,
    Severity,
    SpellError,
    SpellRuntimeError,
    ToolComponent,
    ToolError,
    categories,
    variants,
)
from bridge.hierarchy import ToolTimeout
from tests.strategies import example_value, fields_for

SEED_CATEGORIES = [
    "agent", "tool", "workflow", "hook", "event", "script", "bridge", "async_execution",
    "cross_engine_coordination", "configuration", "runtime", "security", "resource",
    "provider", "storage", "network",
]
SEED_KINDS = {
    "tool": ["not_found", "execution_failed", "invalid_parameters", "timeout",
             "permission_denied", "resource_limit_exceeded", "chain_execution_failed",
             "dependency_error"],
    "agent": ["not_found", "initialization_failed", "execution_failed",
              "invalid_configuration", "timeout", "memory_limit_exceeded",
              "tool_execution_error", "context_overflow", "state_corruption"],
    "script": ["lua", "javascript", "compilation_failed", "runtime_error",
               "cross_engine_communication", "security_violation", "resource_exhaustion"],
    "async_execution": ["task_not_found", "task_failed", "task_timeout", "task_cancelled",
                        "coordination_failure", "resource_allocation_failed",
                        "context_corruption"],
    "runtime": ["all_fallbacks_failed", "circuit_breaker_open"],
    "resource": ["memory_exhaustion"],
    "security": ["script_safety_violation"],
    "provider": ["rate_limited", "authentication", "unavailable", "invalid_response"],
    "network": ["timeout", "connection"],
}
ALL_VARIANTS = variants()


def test_sixteen_categories_in_seed_order():
    assert list(categories()) == SEED_CATEGORIES


@pytest.mark.parametrize("category", sorted(SEED_KINDS))
def test_seed_variants_exist(category):
    kinds = {v.kind for v in variants(category)}
    assert set(SEED_KINDS[category]) <= kinds


def test_every_category_has_variants_and_a_catch_all_kind():
    for name, cls in categories().items():
        assert variants(name), name
        assert (name, cls.wrap_kind) in {(v.category, v.kind) for v in variants(name)}


def test_no_class_shadows_a_python_builtin():
    exported = {cls.__name__ for cls in categories().values()} | {
        v.__name__ for v in ALL_VARIANTS}
    assert not exported & set(dir(builtins))
    assert categories()["runtime"] is SpellRuntimeError
    assert SpellRuntimeError.script_name == "RuntimeError"


def test_variants_hang_off_their_category():
    assert ToolError.Timeout is ToolTimeout
    assert issubclass(ToolTimeout, ToolError) and issubclass(ToolTimeout, SpellError)
    assert ScriptError.Javascript.kind == "javascript"


@pytest.mark.parametrize("variant", ALL_VARIANTS, ids=lambda v: f"{v.category}/{v.kind}")
def test_every_variant_constructs_and_fills_its_template(variant):
    @settings(max_examples=10, deadline=None)
    @given(fields_for(variant))
    def check(fields):
        err = variant(**fields)
        assert (err.category, err.kind) == (variant.category, variant.kind)
        assert err.code == f"{variant.category}/{variant.kind}"
        for name, value in fields.items():
            assert err.fields[name] == value
        assert set(err.fields) == set(variant.fields_model.model_fields)
        assert str(err) == err.message == variant.template.format_map(err.fields)
        assert "{" not in variant.template.format_map({k: "" for k in err.fields})

    check()


@pytest.mark.parametrize("variant", ALL_VARIANTS, ids=lambda v: f"{v.category}/{v.kind}")
def test_every_variant_refuses_missing_unknown_and_mistyped_fields(variant):
    model = variant.fields_model.model_fields
    required = [name for name, info in model.items() if info.is_required()]
    valid = {name: example_value(info.annotation) for name, info in model.items()
             if info.is_required()}
    variant(**valid)  # sanity: the valid set constructs

    with pytest.raises(BridgeError.InvalidError) as unknown:
        variant(**valid, no_such_field=1)
    assert "no_such_field" in str(unknown.value)

    for name in required:
        missing = {k: v for k, v in valid.items() if k != name}
        with pytest.raises(BridgeError.InvalidError) as exc:
            variant(**missing)
        assert exc.value.fields["field"] == name
        assert f"missing field '{name}'" in str(exc.value)

    for name in model:
        wrong = object()  # no field of any variant accepts an arbitrary Python object
        with pytest.raises(BridgeError.InvalidError) as exc:
            variant(**{**valid, name: wrong})
        assert exc.value.fields["field"] == name
        assert exc.value.fields["error_type"] == f"{variant.category}/{variant.kind}"


def test_wrong_scalar_types_are_refused_strictly():
    with pytest.raises(BridgeError.InvalidError, match="duration"):
        ToolError.Timeout(tool_name="search", duration="2")
    with pytest.raises(BridgeError.InvalidError, match="tool_name"):
        ToolError.Timeout(tool_name=3, duration=2.0)
    with pytest.raises(BridgeError.InvalidError, match="current_tokens"):
        AgentError.ContextOverflow(agent_id="a", current_tokens=True, max_tokens=3)


def test_seed_message_templates():
    assert str(ToolError.Timeout(tool_name="search", duration=2.0)) == (
        "Tool timeout: search after 2.0s")
    assert str(AgentError.ExecutionFailed(reason="planner gave up", agent_id="planner")) == (
        "Agent execution failed: planner gave up")
    assert str(ToolError.NotFound(tool_name="serch")) == "Tool not found: serch"
    assert str(ScriptError.CrossEngineCommunication(
        from_engine="javascript", to_engine="lua", error="cycle")) == (
        "Cross-engine communication error: javascript -> lua - cycle")


def test_a_given_message_overrides_the_template():
    err = ToolError.NotFound("no such tool, did you mean 'search'?", tool_name="serch")
    assert str(err) == err.message == "no such tool, did you mean 'search'?"


def test_category_call_dispatches_on_kind():
    err = ToolError(kind="timeout", tool_name="search", duration=1)
    assert type(err) is ToolTimeout and err.fields["duration"] == 1.0
    err = SpellError(category="agent", kind="not_found", agent_id="x")
    assert type(err) is AgentError.NotFound
    with pytest.raises(BridgeError.InvalidError, match="unknown kind 'nope'"):
        ToolError(kind="nope")
    with pytest.raises(BridgeError.InvalidError, match="name the kind"):
        ToolError(tool_name="x")
    with pytest.raises(BridgeError.InvalidError, match="unknown category"):
        SpellError(category="nope", kind="x")
    with pytest.raises(BridgeError.InvalidError, match="does not match"):
        ToolError.Timeout(kind="not_found", tool_name="x", duration=1.0)


def test_severity_is_ordered_and_parsed():
    order = ["trace", "info", "warning", "error", "critical", "fatal"]
    levels = [Severity.parse(name) for name in order]
    assert levels == sorted(levels)
    assert Severity.TRACE < Severity.INFO < Severity.WARNING < Severity.ERROR
    assert Severity.ERROR < Severity.CRITICAL < Severity.FATAL
    assert [str(level) for level in levels] == order
    assert Severity.parse("WARNING") is Severity.WARNING and Severity.parse(4) is Severity.CRITICAL
    with pytest.raises(ValueError, match="unknown severity"):
        Severity.parse("loud")


def test_severity_defaults_and_overrides():
    assert ToolError.Timeout(tool_name="t", duration=1.0).severity is Severity.ERROR
    assert AgentError.StateCorruption(agent_id="a", description="d").severity is Severity.CRITICAL
    err = ToolError.Timeout(tool_name="t", duration=1.0, severity="fatal")
    assert err.severity is Severity.FATAL
    with pytest.raises(ValueError, match="unknown severity 'loud'"):
        ToolError.Timeout(tool_name="t", duration=1.0, severity="loud")


def test_retryable_is_a_property_of_the_variant_overridable_per_instance():
    timeout = ToolError.Timeout(tool_name="t", duration=1.0)
    assert timeout.retryable and timeout.retry_after == 0.5
    assert not ToolError.NotFound(tool_name="t").retryable
    rate = SpellError(category="provider", kind="rate_limited", provider="openai")
    assert rate.retryable and rate.retry_after == 1.0
    assert SpellError(category="network", kind="connection", reason="reset").retryable
    forced = ToolError.NotFound(tool_name="t", retryable=True, retry_after=3.0)
    assert forced.retryable and forced.retry_after == 3.0
    assert not ToolError.Timeout(tool_name="t", duration=1.0, retryable=False).retryable


def test_context_is_made_once_with_a_unique_id_and_utc_time():
    a, b = ToolError.NotFound(tool_name="a"), ToolError.NotFound(tool_name="b")
    assert a.context is a.context
    assert a.context.error_id != b.context.error_id
    assert a.context.timestamp.utcoffset().total_seconds() == 0
    ctx = ErrorContext(component=ToolComponent(tool_name="search"), operation="call",
                       correlation_id="run-1", metadata={"attempt": 2})
    err = ToolError.NotFound(tool_name="search", context=ctx)
    assert err.context.component.tool_name == "search" and err.context.metadata["attempt"] == 2


def test_cause_chain_keeps_spell_errors_and_plain_exceptions():
    def failing_tool():
        return {}["missing"]

    try:
        try:
            failing_tool()
        except KeyError as exc:
            raise ToolError.ExecutionFailed(tool_name="lookup", reason="no key") from exc
    except ToolError as err:
        cause = err.cause
        assert cause.code == "runtime/python_exception"
        assert cause.fields == {"exception_type": "KeyError", "exception_message": "'missing'"}
        assert cause.frames[-1].function == "failing_tool"
        assert cause.frames[-1].language == "python"
        assert cause is err.cause  # the view is made once
        assert [e.code for e in err.chain()] == ["tool/execution_failed",
                                                 "runtime/python_exception"]


def test_frames_of_a_raised_error_are_its_python_frames_outermost_first():
    def inner():
        raise ToolError.NotFound(tool_name="x")

    def outer():
        inner()

    with pytest.raises(ToolError) as info:
        outer()
    functions = [frame.function for frame in info.value.frames]
    assert functions[-2:] == ["outer", "inner"]
    assert info.value.frames[-1].source == 'raise ToolError.NotFound(tool_name="x")'


class CustomProblem(Exception):
    pass


def test_wrap_plain_exception_keeps_type_message_and_frames():
    def explode():
        raise CustomProblem("it broke")

    try:
        explode()
    except CustomProblem as exc:
        wrapped = SpellError.wrap(exc)
    assert wrapped.code == "runtime/python_exception"
    assert wrapped.fields["exception_type"] == "tests.test_hierarchy.CustomProblem"
    assert wrapped.fields["exception_message"] == "it broke"
    assert str(wrapped) == "tests.test_hierarchy.CustomProblem: it broke"
    assert wrapped.frames[-1].function == "explode"


def test_wrap_into_a_chosen_category_keeps_the_exception_as_cause():
    try:
        int("x")
    except ValueError as exc:
        wrapped = ToolError.wrap(exc, tool_name="parse")
        by_name = SpellError.wrap(exc, "agent")
    assert wrapped.code == "tool/execution_failed"
    assert wrapped.fields["reason"].startswith("ValueError: invalid literal")
    assert wrapped.__cause__.__class__ is ValueError
    assert wrapped.cause.fields["exception_type"] == "ValueError"
    assert by_name.code == "agent/execution_failed"
    with pytest.raises(BridgeError.InvalidError, match="missing field 'tool_name'"):
        SpellError.wrap(ValueError("x"), "tool")


def test_wrap_keeps_an_inner_cause_chain():
    try:
        try:
            raise OSError("disk")
        except OSError as inner:
            raise ValueError("parse") from inner
    except ValueError as exc:
        wrapped = SpellError.wrap(exc)
    assert [e.fields["exception_type"] for e in wrapped.chain()] == ["ValueError", "OSError"]


def test_wrap_returns_a_spell_error_unchanged():
    err = ToolError.NotFound(tool_name="x")
    assert SpellError.wrap(err) is err
    assert SpellError.wrap(err, "agent") is err


def test_reserved_names_cannot_be_fields():
    with pytest.raises(TypeError, match="reserved"):
        class Bad(ToolError, kind="bad_reserved"):
            message: str


def test_duplicate_kinds_are_refused():
    with pytest.raises(TypeError, match="already declared"):
        class Twice(ToolError, kind="timeout"):
            pass


def test_user_subclass_of_a_variant_keeps_its_fields():
    class SlowSearch(ToolTimeout):
        pass

    err = SlowSearch(tool_name="search", duration=1.0)
    assert err.code == "tool/timeout" and isinstance(err, ToolTimeout)


def test_errors_pickle_with_fields_frames_and_cause():
    try:
        raise ToolError.ExecutionFailed(tool_name="t", reason="r") from OSError("disk")
    except ToolError as exc:
        err = exc
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and back.fields == err.fields
    assert back.frames == err.frames and back.cause.fields["exception_type"] == "OSError"


def test_an_errors_context_is_made_once_whichever_threads_ask_at_once():
    import threading

    from bridge import ToolError

    for _ in range(200):
        err = ToolError.NotFound(tool_name="t")
        seen: list[str] = []
        barrier = threading.Barrier(4)

        def look(err=err, seen=seen, barrier=barrier) -> None:
            barrier.wait()
            seen.append(err.context.error_id)

        threads = [threading.Thread(target=look) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(set(seen)) == 1, seen


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_fields_are_what_model_dump_gives(data):
    # plain fields are taken from the validated model's dict (issue 17): the same values,
    # order and types as model_dump(), and never the caller's own lists or JSON values
    variant = data.draw(st.sampled_from(variants()))
    fields = data.draw(fields_for(variant))
    err = variant(**fields)
    dumped = variant.fields_model.model_validate(fields).model_dump()
    assert err.fields == dumped
    assert list(err.fields) == list(dumped)
    assert [type(v) for v in err.fields.values()] == [type(v) for v in dumped.values()]
    for name, value in fields.items():
        if isinstance(value, list | dict):
            assert err.fields[name] is not value
