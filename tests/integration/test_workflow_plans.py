"""What a task reads before it runs stays a few index probes, whatever its workflow's size.

Statistics taken while the table held only small workflows made the planner
match a task's next node against every row of its workflow (``path = ANY``
filtered after an index scan on ``workflow_id``): every member of a big group
read all of its rows before it ran, so per-task cost grew with the group. The
cost of a read is measured as the buffers it touches (EXPLAIN ANALYZE BUFFERS),
a count, not a time, under both a custom and a generic plan (a worker's
prepared statements).
"""

from __future__ import annotations

import psycopg
import pytest

from celery_durable.db import migrate
from celery_durable.db.queries import load

BIG = 5_000


@pytest.fixture
def db(pg_url, schema):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        migrate.ensure_schema(conn, schema)
        yield conn


def _store_group(db, queries: dict[str, str], workflow_id: str, size: int) -> None:
    """A workflow whose root chain is one group of ``size`` tasks, then one task."""
    paths = ["", "0"] + [f"0.{i}" for i in range(size)] + ["1"]
    kinds = ["chain", "group"] + ["task"] * size + ["task"]
    then = [("end", None, None), ("enter", "1", None)] + [("count", "0", -1)] * size + [("end", None, None)]
    db.execute(queries["workflow_insert"], {"id": workflow_id, "name": "g", "result_task_id": workflow_id,
                                            "atomic": True})
    db.execute(queries["node_insert"], {
        "id": workflow_id, "paths": paths, "kinds": kinds, "sizes": [2, size] + [0] * (size + 1),
        "links": [0] * len(paths), "sigs": [None, None] + ['{"task": "t", "args": [], "kwargs": {}}'] * (size + 1),
        "names": [None] * len(paths), "chords": [False] * len(paths), "replaced": [False] * len(paths),
        "then_kinds": [t[0] for t in then], "then_paths": [t[1] for t in then], "then_parts": [t[2] for t in then],
    })


def _buffers(plan: dict) -> int:
    return plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]


@pytest.mark.parametrize("name", ["step_state", "node_next"])
@pytest.mark.parametrize("plan_mode", ["force_custom_plan", "force_generic_plan"])
def test_a_task_reads_a_bounded_part_of_a_big_workflow(db, schema, name, plan_mode):
    queries = load("celery_durable.workflow", "queries.sql", schema)
    _store_group(db, queries, "small", 30)
    db.execute(f'ANALYZE "{schema}".workflow_node')
    _store_group(db, queries, "big", BIG)
    pages = db.execute("SELECT pg_relation_size(%s) / current_setting('block_size')::int",
                       (f'"{schema}".workflow_node',)).fetchone()[0]
    statement = queries[name].replace("%(id)s", "$1").replace("%(path)s", "$2")
    db.execute(f"PREPARE next_read (text, text) AS {statement}")
    db.execute(f"SET plan_cache_mode = {plan_mode}")
    for path in ("0.17", "0"):  # a member (counts in its group), the group (enters the next element)
        explain = f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE next_read ('big', '{path}')"
        plan = db.execute(explain).fetchone()[0][0]
        cost = _buffers(plan["Plan"])
        assert cost < 20, f"{name} for {path} touched {cost} buffers; the tree's table has {pages} pages"
