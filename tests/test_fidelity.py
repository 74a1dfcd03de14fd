"""Fidelity: an error of any variant, with any field values, crosses into a script and back.

A Python tool raises a generated error (every variant, random unicode/empty/long field
values, cause chains); the script inspects it, rethrows it, or leaves it uncaught. What
the script sees and what comes back to Python must equal what was sent.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings

from bridge import SpellError, variants
from host import Host, tool
from tests.conftest import pick
from tests.strategies import error_chains

CALL_LINE = 3  # the line of the tool call in every script below

SCRIPTS = {
    "uncaught": (
        "local x = 1\nlocal y = 2\nlocal r = tools.fail{}\nreturn r\n",
        "async function main() {\n  let x = 1;\n  const r = await tools.fail({});\n"
        "  return r;\n}\n",
    ),
    "rethrow": (
        "local x = 1\nlocal ok, err = true, nil\nok, err = pcall(tools.fail, {})\n"
        "error(err)\n",
        "async function main() {\n  try {\n    await tools.fail({});\n"
        "  } catch (e) { throw e; }\n}\n",
    ),
    "inspect": (
        "local x = 1\nlocal ok, err = true, nil\nok, err = pcall(tools.fail, {})\n"
        "local chain, e = {}, err\nwhile e do\n"
        "  chain[#chain + 1] = {category = e.category, kind = e.kind, message = e.message,\n"
        "                       fields = e.fields}\n  e = e.cause\nend\nreturn chain\n",
        "async function main() {\n  let err;\n  try { await tools.fail({}); } catch (e) "
        "{ err = e; }\n  const chain = [];\n  for (let e = err; e; e = e.cause) chain.push("
        "{category: e.category, kind: e.kind, message: e.message, fields: e.fields, "
        "name: e.name, isError: e instanceof Error});\n  return chain;\n}\n",
    ),
}


def _run(language: str, mode: str, sent: SpellError):
    @tool
    def fail() -> None:
        raise sent

    host = Host([fail], timeout=10, on_output=lambda line: None)
    return host.run_source(pick(language, *SCRIPTS[mode]), language, f"fidelity.{language}")


@pytest.mark.parametrize("language", ["lua", "javascript"])
@pytest.mark.parametrize("mode", ["uncaught", "rethrow"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(sent=error_chains(depth=3, min_depth=1))
def test_what_comes_back_is_what_was_sent(language, mode, sent):
    original = list(sent.frames)  # frames it brings (hypothesis gives some), or none
    with pytest.raises(SpellError) as info:
        _run(language, mode, sent)
    back = info.value
    assert back is sent  # the very error the tool raised, not a copy
    assert [(e.code, e.fields, e.message) for e in back.chain()] == [
        (e.code, e.fields, e.message) for e in sent.chain()]
    # the path: the script's call site, the boundary, then the error's own frames
    boundary = next(i for i, f in enumerate(back.frames)
                    if (f.language, f.file, f.function) == ("host", "<tool call>", "fail"))
    site = back.frames[boundary - 1]
    assert (site.language, site.file, site.line) == (language, f"fidelity.{language}",
                                                     CALL_LINE)
    own = back.frames[boundary + 1:]
    assert own == original or (not original and own[-1].function == "fail")
    assert SpellError.from_json(back.to_json()).fields == sent.fields


def _lua_view(value):
    """What Lua tables can hold of a value: no nil, so None fields and entries vanish."""
    if isinstance(value, dict):
        return {k: _lua_view(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_lua_view(v) for v in value]
    return value


def _lua_holds(value) -> bool:
    """Whether Lua tables can carry a value unchanged (no nil in arrays, no empty ones)."""
    if isinstance(value, list):
        return bool(value) and all(v is not None and _lua_holds(v) for v in value)
    if isinstance(value, dict):
        return bool(value) and all(_lua_holds(v) for v in value.values())
    return True


@pytest.mark.parametrize("language", ["lua", "javascript"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(sent=error_chains(depth=3, min_depth=1))
def test_the_script_sees_every_field_of_every_error_in_the_chain(language, sent):
    if language == "lua":
        for err in sent.chain():
            values = [v for v in err.fields.values() if isinstance(v, (list, dict))]
            if not all(_lua_holds(v) for v in values):
                return  # an empty or holed array has no Lua form: see the README
    seen = _run(language, "inspect", sent)
    expected = [{"category": e.category, "kind": e.kind, "message": e.message,
                 "fields": e.fields} for e in sent.chain()]
    if language == "lua":
        expected = [_lua_view(entry) for entry in expected]
        assert [_lua_view(entry) for entry in seen] == expected
    else:
        for entry, err in zip(seen, sent.chain(), strict=True):
            assert entry.pop("isError") is True
            assert entry.pop("name") == type(err).script_name
        # JSON has one number type: 2.0 arrives as 2, equal as Python numbers
        assert json.loads(json.dumps(seen)) == json.loads(json.dumps(expected))


@pytest.mark.parametrize("variant", variants(), ids=lambda v: f"{v.category}/{v.kind}")
def test_every_variant_can_be_raised_by_a_script_by_name(language, variant):
    from tests.strategies import example_value

    fields = {name: example_value(info.annotation)
              for name, info in variant.fields_model.model_fields.items()
              if info.is_required()}
    args = {"category": variant.category, "kind": variant.kind, "fields": fields}
    source = pick(language,
                  "local cls = errors[args.name]\nlocal spec = {kind = args.kind}\n"
                  "for k, v in pairs(args.fields) do spec[k] = v end\nerror(cls(spec))\n",
                  "const spec = {kind: args.kind, ...args.fields};\n"
                  "throw new errors[args.name](spec);\n")
    args["name"] = _script_name(variant)
    with pytest.raises(SpellError) as info:
        Host(on_output=lambda line: None).run_source(source, language, "raise.src", args)
    err = info.value
    assert type(err) is variant
    assert err.fields == variant(**fields).fields
    assert err.message == variant(**fields).message


def _script_name(variant: type[SpellError]) -> str:
    from bridge import categories

    return categories()[variant.category].script_name


# Two hops: the agent calls a function of a tools file (in either language), which calls
# the failing Python tool; the error crosses both engines and comes back unchanged.
RELAY = {
    "uncaught": ("return {relay = function(p)\n  local x = 1\n  local r = tools.fail{}\n"
                 "  return r\nend}\n",
                 "exports.relay = async function relay(p) {\n  let x = 1;\n"
                 "  const r = await tools.fail({});\n  return r;\n};\n"),
    "rethrow": ("return {relay = function(p)\n  local ok, err = true, nil\n"
                "  ok, err = pcall(tools.fail, {})\n  error(err)\nend}\n",
                "exports.relay = async function relay(p) {\n  try {\n"
                "    await tools.fail({});\n  } catch (e) { throw e; }\n};\n"),
}
RELAY_LINE = 3  # the line of the tool call in every tools file above


@pytest.mark.parametrize("language", ["lua", "javascript"])
@pytest.mark.parametrize("hop", ["lua", "javascript"])
@pytest.mark.parametrize("mode", ["uncaught", "rethrow"])
@settings(max_examples=15, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(sent=error_chains(depth=3, min_depth=1))
def test_through_two_engines_what_comes_back_is_what_was_sent(
        tmp_path, language, hop, mode, sent):
    relay = tmp_path / f"relay{'.lua' if hop == 'lua' else '.js'}"
    relay.write_text(pick(hop, *RELAY[mode]))

    @tool
    def fail() -> None:
        raise sent

    agent = SCRIPTS[mode][0 if language == "lua" else 1].replace("tools.fail", "tools.relay")
    host = Host([fail, relay], timeout=10, on_output=lambda line: None)
    with pytest.raises(SpellError) as info:
        host.run_source(agent, language, f"fidelity.{language}")
    back = info.value
    assert back is sent
    assert [(e.code, e.fields, e.message) for e in back.chain()] == [
        (e.code, e.fields, e.message) for e in sent.chain()]
    path = [(f.language, f.file, f.line, f.function) for f in back.frames]
    assert path[0][:3] == (language, f"fidelity.{language}", CALL_LINE)
    assert path[1] == ("host", "<tool call>", None, "relay")
    assert path[2][:3] == (hop, str(relay), RELAY_LINE)
    assert path[3] == ("host", "<tool call>", None, "fail")
