"""The same Lua run gives the same data every time (issue 9, item 18).

Lua seeds its string hashing per state, so the order in which ``next`` walks a table
changes from process to process. Every Lua table that crosses to Python as a dict (a
result, a tool's parameters, a thrown value) has its keys sorted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = """
import json
from tests.test_engine_lua import drive
source = '''
local t = {}
for i = 1, 12 do t["key" .. i] = i end
local r = tools.echo{b = 1, a = t, c = {z = 1, y = 2, x = 3}}
error({result = r, zeta = true, name = "x", alpha = t})
'''
run = drive(source, tools={"echo": lambda params: params})
print(json.dumps([run.requests[0].params, run.error.fields["thrown"]]))
"""


def _sorted_everywhere(data: object) -> bool:
    if isinstance(data, dict):
        return list(data) == sorted(data) and all(map(_sorted_everywhere, data.values()))
    if isinstance(data, list):
        return all(map(_sorted_everywhere, data))
    return True


def test_lua_tables_cross_with_sorted_keys_in_every_process() -> None:
    outputs = {subprocess.run([sys.executable, "-c", RUN], capture_output=True, text=True,
                              timeout=60, cwd=ROOT, check=True).stdout for _ in range(4)}
    assert len(outputs) == 1
    params, thrown = json.loads(outputs.pop())
    assert list(params) == ["a", "b", "c"] and list(thrown) == ["alpha", "name", "result", "zeta"]
    assert _sorted_everywhere([params, thrown])


def test_a_result_s_keys_are_sorted() -> None:
    from tests.test_engine_lua import drive

    result = drive("local t = {} for i = 1, 30 do t['k' .. i] = {b = i, a = i} end return t").result
    assert list(result) == sorted(result)
    assert all(list(item) == ["a", "b"] for item in result.values())
