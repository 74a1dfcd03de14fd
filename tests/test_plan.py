"""Plans: the models, TOML files, and every way a plan is refused before anything runs."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from bridge import ConfigurationError, SpellError
from host import Coordinator, Plan, Retry, Task, load_plan, tool

RUNS: list[str] = []


@tool
def mark(name: str) -> str:
    """Record that a task ran."""
    RUNS.append(name)
    return name


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "a.lua").write_text('return tools.mark{name = "a"}')
    (tmp_path / "b.js").write_text('function main(args) { return args.inputs.a + "b"; }')
    RUNS.clear()
    return tmp_path


def write_plan(folder: Path, text: str, name: str = "plan.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


GOOD = """
[plan]
name = "research"
strategy = "collect"
tolerance = 0.5
max_concurrency = 3
timeout = 10
engine_timeouts = { lua = 5, javascript = 6.5 }

[[task]]
id = "a"
script = "a.lua"
args = { source = "x", n = [1, 2] }
timeout = 2
retry = { attempts = 4, backoff = "linear", initial = 0.5, on = "any" }

[[task]]
id = "b"
script = "b.js"
after = ["a"]
"""


def refused(call, *args, **kwargs) -> SpellError:
    with pytest.raises(SpellError) as info:
        call(*args, **kwargs)
    assert info.value.code == "configuration/invalid_plan", info.value
    return info.value


# -- loading ----------------------------------------------------------------------------


def test_a_toml_plan_is_read_with_every_field(folder):
    plan = load_plan(write_plan(folder, GOOD))
    assert (plan.name, plan.strategy, plan.tolerance) == ("research", "collect", 0.5)
    assert (plan.max_concurrency, plan.timeout) == (3, 10.0)
    assert plan.engine_timeouts == {"lua": 5.0, "javascript": 6.5}
    a, b = plan.tasks
    assert (a.id, a.script, a.args, a.after, a.timeout) == ("a", "a.lua", {"source": "x",
                                                            "n": [1, 2]}, [], 2.0)
    assert a.retry == Retry(attempts=4, backoff="linear", initial=0.5, on="any")
    assert (b.after, b.retry, b.language, a.language) == (["a"], None, "javascript", "lua")
    assert plan.path("a.lua") == folder / "a.lua"  # relative to the plan file


def test_paths_are_relative_to_the_plan_file_not_the_working_directory(folder, monkeypatch):
    sub = folder / "plans"
    sub.mkdir()
    (sub / "a.lua").write_text('return tools.mark{name = "from plans/"}')
    path = write_plan(sub, '[[task]]\nid = "a"\nscript = "a.lua"\n')
    monkeypatch.chdir(folder)  # where another a.lua is
    report = Coordinator([mark]).run(path)
    assert report.results == {"a": "from plans/"}


def test_plan_name_defaults_to_the_file_name(folder):
    plan = load_plan(write_plan(folder, '[[task]]\nid = "a"\nscript = "a.lua"\n', "daily.toml"))
    assert (plan.name, plan.strategy) == ("daily", "cancel_dependents")


def test_a_missing_plan_file_is_a_configuration_error(folder):
    with pytest.raises(SpellError) as info:
        load_plan(folder / "nope.toml")
    assert info.value.code == "configuration/file_not_found"


# -- refused plans: one invalid_plan error, naming the problem and where -------------------


@pytest.mark.parametrize("text,reason,where", [
    ('[[task]]\nid = "a"\nscript = "a.lua"\nafter = ["b"]\n[[task]]\nid = "b"\n'
     'script = "b.js"\nafter = ["c"]\n[[task]]\nid = "c"\nscript = "a.lua"\nafter = ["a"]\n',
     "dependency cycle: a -> b -> c -> a", "task 'a', field 'after'"),
    ('[[task]]\nid = "a"\nscript = "a.lua"\nafter = ["a"]\n',
     "task 'a' runs after itself", "task 'a', field 'after'"),
    ('[[task]]\nid = "a"\nscript = "a.lua"\n[[task]]\nid = "b"\nscript = "b.js"\n'
     'after = ["aa"]\n',
     "task 'b' runs after unknown task 'aa' (did you mean 'a'?)", "task 'b', field 'after'"),
    ('[[task]]\nid = "a"\nscript = "a.lua"\n[[task]]\nid = "a"\nscript = "b.js"\n',
     "duplicate task id 'a'", "task 'a', field 'id'"),
    ('[[task]]\nid = "a"\nscript = "missing.lua"\n',
     "script 'missing.lua' not found", "task 'a', field 'script'"),
    ('[[task]]\nid = "a"\nscript = "a.py"\n',
     "cannot tell the language of 'a.py'", "task 'a', field 'script'"),
    ('[plan]\nstrategy = "yolo"\n[[task]]\nid = "a"\nscript = "a.lua"\n',
     "field 'strategy': Input should be 'propagate', 'collect', 'cancel_dependents' or "
     "'isolate' (got str 'yolo')", "[plan], field 'strategy'"),
    ('[[task]]\nid = "a"\nscript = "a.lua"\ntimeout = "fast"\n',
     "field 'timeout': Input should be a valid number (got str 'fast')",
     "task 'a', field 'timeout'"),
    ('[[task]]\nid = "a"\nscript = "a.lua"\nafter = "b"\n',
     "field 'after': Input should be a valid list", "task 'a', field 'after'"),
    ('[[task]]\nid = "a"\nscript = "a.lua"\ntimeout = -1\n',
     "field 'timeout': Input should be greater than 0", "task 'a', field 'timeout'"),
    ('[[task]]\nid = "a"\nscript = "a.lua"\nretry = { attempts = 0 }\n',
     "field 'retry.attempts': Input should be greater than or equal to 1",
     "task 'a', field 'retry.attempts'"),
    ('[[task]]\nid = "a"\nscript = "a.lua"\nretry = { backof = "fixed" }\n',
     "unknown field 'retry.backof' (did you mean 'backoff'?)", "task 'a', field 'retry.backof'"),
    ('[[task]]\nid = "a"\nscript = "a.lua"\nafer = ["x"]\n',
     "unknown field 'afer' (did you mean 'after'?)", "task 'a', field 'afer'"),
    ('[[task]]\nscript = "a.lua"\n', "missing field 'id'", "task #1, field 'id'"),
    ('[[task]]\nid = "a"\nscript = "a.lua"\nargs = { inputs = 1 }\n',
     "args.inputs is reserved", "task 'a', field 'args'"),
    ('[plan]\ntolerance = 2\n[[task]]\nid = "a"\nscript = "a.lua"\n',
     "field 'tolerance': Input should be less than or equal to 1", "[plan], field 'tolerance'"),
    ('[plan]\nengine_timeouts = { python = 1 }\n[[task]]\nid = "a"\nscript = "a.lua"\n',
     "field 'engine_timeouts.python.[key]'", "[plan], field 'engine_timeouts.python.[key]'"),
    ('[plan]\nstrategy = "collect"\n', "the plan has no tasks", "[[task]]"),
    ('[plan]\ntools = ["nope.py"]\n[[task]]\nid = "a"\nscript = "a.lua"\n',
     "tools file 'nope.py' not found", "[plan] tools[0]"),
    ('[plan]\nnmae = "x"\n[[task]]\nid = "a"\nscript = "a.lua"\n',
     "unknown field 'nmae' (did you mean 'name'?)", "[plan] nmae"),
    ('[tasks]\nid = "a"\n', "unknown table 'tasks' (did you mean 'task'?)", "tasks"),
    ('[[task]]\nid = "a"\nscript = "a.lua\n', "not valid TOML: ", ""),
])
def test_a_bad_plan_is_refused_before_anything_runs(folder, text, reason, where):
    path = write_plan(folder, text)
    err = refused(Coordinator([mark]).run, path)
    assert reason in err.fields["reason"]
    assert err.fields["location"] == f"{path}: {where}".rstrip(": ")
    assert RUNS == []  # nothing ran
    assert str(path) in err.to_text()


def test_toml_syntax_errors_name_the_line(folder):
    err = refused(load_plan, write_plan(folder, '[[task]]\nid = "a"\nscript = = 1\n'))
    assert "line 3" in err.fields["reason"]


# -- plans built in Python ------------------------------------------------------------------


def test_python_plans_are_checked_the_same_way(folder):
    err = refused(Plan, tasks=[Task(id="a", script="a.lua", after=["b"]),
                               Task(id="b", script="a.lua", after=["a"])])
    assert err.fields["reason"] == "dependency cycle: a -> b -> a"
    err = refused(Task, id="a", script="a.lua", timeout="soon")
    assert err.fields["location"] == "task 'a', field 'timeout'"
    err = refused(Task, id="a", script="a.lua", retry={"attempts": True})
    assert err.fields["location"] == "task 'a', field 'retry.attempts'"
    err = refused(Plan, tasks=[{"id": "a", "script": "a.lua", "extra": 1}])
    assert err.fields["location"] == "task 'a', field 'extra'"
    err = refused(Plan, tasks=[Task(id="a", script="a.lua")], strategy="sometimes")
    assert err.fields["location"] == "[plan], field 'strategy'"
    assert RUNS == []


def test_a_list_of_tasks_is_a_plan_and_paths_may_be_path_objects(folder):
    report = Coordinator([mark]).run([Task(id="a", script=folder / "a.lua"),
                                      Task(id="b", script=str(folder / "b.js"), after=["a"])])
    assert report.results == {"a": "a", "b": "ab"}


def test_overrides_are_checked_too(folder):
    tasks = [Task(id="a", script=folder / "a.lua")]
    err = refused(Coordinator([mark]).run, tasks, strategy="sometimes")
    assert "unknown strategy 'sometimes'" in err.fields["reason"]
    err = refused(Coordinator([mark]).run, tasks, max_concurrency=0)
    assert err.fields["location"] == "[plan], field 'max_concurrency'"
    with pytest.raises(SpellError) as info:
        Coordinator([mark]).run("not a plan.txt")
    assert info.value.code == "configuration/file_not_found"
    err = refused(Coordinator([mark]).run, [{"id": "a"}])
    assert "a plan is a Plan, a list of Task objects" in err.fields["reason"]
    assert RUNS == []


def test_a_long_chain_of_tasks_is_checked_without_recursion(folder):
    tasks = [Task(id="t0", script="a.lua")]
    tasks += [Task(id=f"t{n}", script="a.lua", after=[f"t{n - 1}"]) for n in range(1, 3000)]
    assert len(Plan(tasks=tasks).tasks) == 3000
    tasks[0] = Task(id="t0", script="a.lua", after=["t2999"])
    err = refused(Plan, tasks=tasks)
    assert err.fields["reason"].startswith("dependency cycle: t0 -> t2999 -> t2998")


def test_plans_are_immutable_and_invalid_plan_is_a_configuration_error(folder):
    task = Task(id="a", script="a.lua")
    with pytest.raises(pydantic.ValidationError) as frozen:
        task.id = "b"  # type: ignore[misc]
    assert [(e["type"], e["loc"]) for e in frozen.value.errors()] == [("frozen_instance", ("id",))]
    err = refused(Plan, tasks=[])
    assert isinstance(err, ConfigurationError)


@pytest.mark.parametrize("backoff,delays", [
    ("fixed", [0.2, 0.2, 0.2, 0.2]),
    ("linear", [0.2, 0.4, 0.6, 0.8]),
    ("exponential", [0.2, 0.4, 0.8, 1.0]),
])
def test_retry_backoff(backoff, delays):
    retry = Retry(attempts=5, backoff=backoff, initial=0.2, max_delay=1.0)
    assert [round(retry.delay(n), 6) for n in range(1, 5)] == delays


def test_plan_tools_files_in_python_and_lua_relative_to_the_plan(folder):
    sub = folder / "plans"
    sub.mkdir()
    (sub / "py_tools.py").write_text("from host import tool\n\n@tool\ndef twice(n: int) -> int:\n"
                                     "    return 2 * n\n")
    (sub / "helpers.lua").write_text("local h = {}\nfunction h.plus_one(p) "
                                     "return tools.twice{n = p.n} + 1 end\nreturn h\n")
    (sub / "use.js").write_text("async function main(args) { return await tools.plus_one("
                                "{n: args.n}) + await tools.mark({name: 'js'}); }")
    path = write_plan(sub, '[plan]\ntools = ["py_tools.py", "helpers.lua"]\n'
                           '[[task]]\nid = "a"\nscript = "use.js"\nargs = { n = 20 }\n')
    assert Coordinator([mark]).run(path).results == {"a": "41js"}


@pytest.mark.parametrize("options,key", [
    ({"max_concurrency": 0}, "max_concurrency"),
    ({"engine_timeouts": {"lua": -1}}, "engine_timeouts['lua']"),
    ({"engine_timeouts": {"python": 1}}, "engine_timeouts"),
    ({"sandbox": "open"}, "sandbox"),
])
def test_bad_coordinator_options_are_configuration_errors(options, key):
    with pytest.raises(SpellError) as info:
        Coordinator(**options)
    assert (info.value.code, info.value.fields["key"]) == ("configuration/invalid_value", key)
