"""``polyspell catalog``, run as users run it (this checkout's, as ``python -m host.cli``)."""

from __future__ import annotations

import json

from bridge import variants
from tests.cli import polyspell


def test_catalog_json_lists_all_sixteen_categories_with_every_kind():
    out = polyspell("catalog", "--json")
    assert out.returncode == 0, out.stderr
    catalog = json.loads(out.stdout)
    assert len(catalog) == 16
    listed = {(c["category"], v["kind"]) for c in catalog for v in c["variants"]}
    assert listed == {(v.category, v.kind) for v in variants()}
    tool = next(c for c in catalog if c["category"] == "tool")
    timeout = next(v for v in tool["variants"] if v["kind"] == "timeout")
    assert timeout["retryable"] is True and timeout["severity"] == "error"
    assert [f["name"] for f in timeout["fields"]] == ["tool_name", "duration", "partial_result"]
    assert timeout["fields"][1] == {"name": "duration", "type": "float", "required": True,
                                    "default": None}


def test_catalog_table_is_readable():
    out = polyspell("catalog")
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert any(line.startswith("tool  (ToolError in scripts)") for line in lines)
    row = next(line for line in lines if line.strip().startswith("timeout") and "tool_name" in line)
    assert "retry 0.5s" in row and "duration: float" in row
    assert any(line.startswith("runtime  (RuntimeError in scripts)") for line in lines)


def test_catalog_of_one_category_and_an_unknown_one():
    out = polyspell("catalog", "provider", "--json")
    assert [c["category"] for c in json.loads(out.stdout)] == ["provider"]
    bad = polyspell("catalog", "nope")
    assert bad.returncode == 2 and "unknown category 'nope'" in bad.stderr
    assert "Traceback" not in bad.stderr
