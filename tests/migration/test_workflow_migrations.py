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
