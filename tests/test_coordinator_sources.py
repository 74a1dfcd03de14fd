"""A plan reads each distinct script once, when it starts (issue 17): its tasks and their
retries run the text the plan started with, and a script many tasks share is read once,
on a worker thread rather than on the event loop."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from host import Coordinator, Host, Plan, Task, tool
from host.host import read_script, read_sources

pytestmark = pytest.mark.usefixtures("isolation")

SCRIPTS: dict[str, Path] = {}


@tool
def rewrite(script: str, text: str) -> bool:
    """Overwrite one of the test's scripts while the plan runs."""
    SCRIPTS[script].write_text(text)
    return True


@pytest.mark.parametrize("language", ["lua", "javascript"])
def test_tasks_run_the_script_as_the_plan_started_with_it(tmp_path: Path,
                                                          language: str) -> None:
    if language == "lua":
        first, later = "return 'first'", "return 'later'"
        writer = "return tools.rewrite{script = 'shared', text = args.text}"
    else:
        first, later = "function main() { return 'first'; }", \
            "function main() { return 'later'; }"
        writer = "async function main(args) { return await tools.rewrite(" \
            "{script: 'shared', text: args.text}); }"
    ext = ".lua" if language == "lua" else ".js"
    shared = SCRIPTS["shared"] = tmp_path / f"shared{ext}"
    shared.write_text(first)
    (tmp_path / f"writer{ext}").write_text(writer)
    plan = Plan(tasks=[
        Task(id="before", script=str(shared)),
        Task(id="write", script=str(tmp_path / f"writer{ext}"), args={"text": later},
             after=["before"]),
        Task(id="after", script=str(shared), after=["write"]),
    ])
    report = Coordinator([rewrite], on_output=lambda task, line: None).run(plan)
    assert report.outcome == "succeeded", report
    assert shared.read_text() == later  # the file did change under the plan
    assert report.results == {"before": "first", "write": True, "after": "first"}
    # the next plan reads it again
    again = Coordinator(on_output=lambda task, line: None).run(
        Plan(tasks=[Task(id="next", script=str(shared))]))
    assert again.results == {"next": "later"}


def test_read_sources_reads_each_path_once_and_leaves_out_what_does_not_read(
        tmp_path: Path) -> None:
    good = tmp_path / "good.lua"
    good.write_text("return 1")
    folder = tmp_path / "folder.lua"
    folder.mkdir()
    unknown = tmp_path / "notes.txt"
    unknown.write_text("x")
    sources = read_sources([good, folder, unknown, tmp_path / "missing.lua"])
    assert sources == {good: (*read_script(good), None)} == {good: ("return 1", "lua", None)}
    libraries = Host().libraries
    found = read_sources([good], libraries)[good]
    assert found.roots == libraries.roots_for(good) and found.roots


def test_a_task_imports_modules_from_its_own_folder(tmp_path: Path) -> None:
    # the library roots read once per plan are the script's own folder, as for a run
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    for name, word in (("one", "first"), ("two", "second")):
        (tmp_path / name / "words.lua").write_text(f"return {{word = '{word}'}}")
        (tmp_path / name / "main.lua").write_text("return require('words').word")
    report = Coordinator(on_output=lambda task, line: None).run(Plan(tasks=[
        Task(id=name, script=str(tmp_path / name / "main.lua")) for name in ("one", "two")]))
    assert report.results == {"one": "first", "two": "second"}, report


def test_a_plan_reads_its_scripts_off_the_event_loop_thread(tmp_path: Path) -> None:
    import host.coordinator

    script = tmp_path / "t.lua"
    script.write_text("return args.n")
    threads: list[str] = []
    real = host.coordinator.read_sources

    def recording(*args):  # a spy on the real function, which still does the reading
        threads.append(threading.current_thread().name)
        return real(*args)

    host.coordinator.read_sources = recording
    try:
        report = Coordinator(on_output=lambda task, line: None).run(
            Plan(tasks=[Task(id=f"t{i}", script=str(script), args={"n": i})
                        for i in range(20)]))
    finally:
        host.coordinator.read_sources = real
    assert report.results == {f"t{i}": i for i in range(20)}
    assert len(threads) == 1 and threads[0] != threading.main_thread().name
