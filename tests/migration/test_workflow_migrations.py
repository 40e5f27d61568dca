"""Workflows stored by an older version stay resumable after the migrations.

Durable chains behind Redis/RabbitMQ running during the upgrade to `sent_step`
(0004) get a row for each unfinished member of their current step, so the
sweep still re-sends what a crash lost.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from celery_durable.db import migrate
from celery_durable.db.queries import schema_sql

BASELINE = Path(__file__).with_name("schema_v1.sql")


@pytest.fixture
def conn(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as connection:
        yield connection


def _task(name: str) -> dict:
    return {"task": name, "args": [], "kwargs": {}, "options": {}, "immutable": False}


def test_running_workflows_behind_another_broker_get_their_sent_steps(conn, schema):
    conn.execute(schema_sql(BASELINE.read_text(encoding="utf-8"), schema))
    conn.execute(sql.SQL("INSERT INTO {}.schema_version (version) VALUES (1)").format(sql.Identifier(schema)))
    chain = [{"kind": "task", "task": "a", "signatures": [_task("a")]},
             {"kind": "group", "task": "group(b, b, b)", "signatures": [_task("b")] * 3},
             {"kind": "task", "task": "c", "signatures": [_task("c")]}]
    rows = [("in-group", "running", 1, False), ("first", "running", 0, False),
            ("atomic", "running", 1, True), ("failed", "failed", 1, False)]
    for workflow_id, status, current, atomic in rows:
        conn.execute(sql.SQL("INSERT INTO {}.workflow (id, status, steps, current_step, generation, atomic)"
                             " VALUES (%s, %s, %s, %s, 3, %s)").format(sql.Identifier(schema)),
                     (workflow_id, status, Jsonb(chain), current, atomic))
    conn.execute(sql.SQL("INSERT INTO {}.checkpoint (workflow_id, step, member, task_id, content_type, result)"
                         " VALUES ('in-group', 1, 0, 't', 'application/json', '1')").format(sql.Identifier(schema)))
    assert migrate.ensure_schema(conn, schema) == migrate.latest_version()
    sent = conn.execute(sql.SQL("SELECT workflow_id, path, generation FROM {}.sent_step ORDER BY 1, 2")
                        .format(sql.Identifier(schema))).fetchall()
    assert sent == [("first", "0", 3), ("in-group", "1.1", 3), ("in-group", "1.2", 3)]


def _stored_task(name: str, links: tuple = ()) -> dict:
    """A task as version 7 stored it in workflow.steps (workflow/tree.py's to_json then)."""
    data = {"kind": "task", "task": name, "signatures": [_task(name)]}
    if links:
        data["links"] = list(links)
    return data


def _stored(kind: str, *children: dict, **flags: bool) -> dict:
    return {"kind": kind, "task": f"{kind}(…)", "children": list(children), **flags}


def test_stored_trees_become_rows_with_what_finished_counted(conn, schema):
    """Version 7's workflow.steps (its tree format, and the older flat one) become workflow_node rows and
    fan_in counts: each node says what its completion does, each group counts its members that finished."""
    from tests.support.old_schema import schema_at

    schema_at(conn, schema, 7)
    s = sql.Identifier(schema)
    tree = [_stored_task("a", links=(_stored_task("cb"),)),
            _stored("group", _stored("chain", _stored_task("b1"), _stored("group", _stored_task("c1"), _stored_task("c2"))),
                    _stored_task("b2")),
            _stored("chain", _stored_task("x"), _stored_task("y"), replaced=True),
            _stored_task("d")]
    flat = [{"kind": "task", "task": "a", "signatures": [_task("a")]},
            {"kind": "group", "task": "group", "signatures": [_task("m")] * 3},
            {"kind": "task", "task": "c", "signatures": [_task("c")]}]
    for workflow_id, steps, status, done in (("tree", tree, "running", ["0", "0~0", "1.0.0", "1.0.1.0", "1.1"]),
                                             ("flat", flat, "failed", ["0", "1.0", "1.2"])):
        conn.execute(sql.SQL("INSERT INTO {}.workflow (id, status, steps, current_step, atomic, failed_path)"
                             " VALUES (%s, %s, %s, 1, true, %s)").format(s),
                     (workflow_id, status, Jsonb(steps), "1.1" if status == "failed" else None))
        for path in done:
            conn.execute(sql.SQL("INSERT INTO {}.checkpoint (workflow_id, path, task_id, content_type, result)"
                                 " VALUES (%s, %s, 't', 'application/json', '1')").format(s), (workflow_id, path))
    assert migrate.ensure_schema(conn, schema) == migrate.latest_version()

    nodes = conn.execute(sql.SQL("SELECT workflow_id, path, kind, size, links, sig ->> 'task', chord, replaced,"
                                 " then_kind, then_path, then_part FROM {}.workflow_node").format(s)).fetchall()
    assert {(w, p): rest for w, p, *rest in nodes} == {
        ("tree", ""): ["chain", 4, 0, None, False, False, "end", None, None],
        ("tree", "0"): ["task", 0, 1, "a", False, False, "enter", "1", None],
        ("tree", "0~0"): ["task", 0, 0, "cb", False, False, "none", None, None],
        ("tree", "1"): ["group", 2, 0, None, False, False, "enter", "2", None],
        ("tree", "1.0"): ["chain", 2, 0, None, False, False, "count", "1", -1],
        ("tree", "1.0.0"): ["task", 0, 0, "b1", False, False, "enter", "1.0.1", None],
        ("tree", "1.0.1"): ["group", 2, 0, None, False, False, "count", "1", -1],
        ("tree", "1.0.1.0"): ["task", 0, 0, "c1", False, False, "count", "1.0.1", -1],
        ("tree", "1.0.1.1"): ["task", 0, 0, "c2", False, False, "count", "1.0.1", -1],
        ("tree", "1.1"): ["task", 0, 0, "b2", False, False, "count", "1", -1],
        ("tree", "2"): ["chain", 2, 0, None, False, True, "enter", "3", None],
        ("tree", "2.0"): ["task", 0, 0, "x", False, False, "enter", "2.1", None],
        ("tree", "2.1"): ["task", 0, 0, "y", False, False, "enter", "3", None],
        ("tree", "3"): ["task", 0, 0, "d", False, False, "end", None, None],
        ("flat", ""): ["chain", 3, 0, None, False, False, "end", None, None],
        ("flat", "0"): ["task", 0, 0, "a", False, False, "enter", "1", None],
        ("flat", "1"): ["group", 3, 0, None, False, False, "enter", "2", None],
        **{("flat", f"1.{i}"): ["task", 0, 0, "m", False, False, "count", "1", -1] for i in range(3)},
        ("flat", "2"): ["task", 0, 0, "c", False, False, "end", None, None],
    }
    counts = conn.execute(sql.SQL("SELECT workflow_id, path, part, size, done FROM {}.fan_in ORDER BY 1, 2")
                          .format(s)).fetchall()
    # "1.0" is unfinished (c2 is missing), so group "1" counts only b2.
    assert counts == [("flat", "1", -1, 3, 2), ("tree", "1", -1, 2, 1), ("tree", "1.0.1", -1, 2, 1)]
    shown = conn.execute(sql.SQL("SELECT id, step_count, current_task FROM {}.workflows ORDER BY id").format(s)).fetchall()
    assert shown == [("flat", 3, "group"), ("tree", 4, "group(…)")]
