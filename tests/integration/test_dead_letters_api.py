"""celery_durable.dead_letters: the API the CLI and the Django admin share, against a real database."""

from __future__ import annotations

import json

import psycopg
import pytest
from kombu import Connection
from psycopg import sql

from celery_durable.db import migrate
from celery_durable.dead_letters import list_dead_letters, purge_dead_letters, requeue_dead_letters

#: A queue name a careless implementation would splice into SQL.
ODD_QUEUE = "it's; DROP TABLE message --"


@pytest.fixture
def db(pg_url, schema):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        migrate.ensure_schema(conn, schema)
        yield conn


def _dead(db, schema: str, dead_id: int, queue: str, payload: str) -> None:
    db.execute(sql.SQL("INSERT INTO {}.dead_letter (id, queue, task, reason, delivery_count, payload, created_at) "
                       "VALUES (%s, %s, 't.x', 'too many deliveries', 16, %s, now())").format(sql.Identifier(schema)),
               (dead_id, queue, payload))


def _payload(priority) -> str:
    return json.dumps({"body": "b", "properties": {"priority": priority}, "headers": {}})


def test_requeue_keeps_priority_and_queue_and_is_consumed_again(db, pg_url, schema):
    _dead(db, schema, 1, ODD_QUEUE, _payload(7))
    _dead(db, schema, 2, ODD_QUEUE, "not json")  # undecodable: requeued with priority 0, never decoded here
    _dead(db, schema, 3, "other", _payload("high"))
    assert [d.id for d in list_dead_letters(db, schema, queue=ODD_QUEUE)] == [1, 2]

    moved = requeue_dead_letters(db, schema, queue=ODD_QUEUE)
    assert [(m.dead_letter_id, m.queue) for m in moved] == [(1, ODD_QUEUE), (2, ODD_QUEUE)]
    stored = db.execute(sql.SQL("SELECT id, priority, delivery_count FROM {}.message ORDER BY id").format(
        sql.Identifier(schema))).fetchall()
    assert stored == [(moved[0].message_id, 7, 0), (moved[1].message_id, 0, 0)]
    assert [d.id for d in list_dead_letters(db, schema)] == [3]
    with Connection(pg_url, transport_options={"schema": schema, "polling_interval": 0.1}) as conn:
        queue = conn.SimpleQueue(ODD_QUEUE)
        got = queue.get(timeout=10)  # the highest priority first
        assert got.payload == "b"
        got.ack()
        queue.close()


def test_a_rolled_back_transaction_loses_nothing(db, pg_url, schema):
    _dead(db, schema, 1, "q", _payload(1))
    with psycopg.connect(pg_url) as conn:  # the caller's transaction, as Django's atomic() holds one
        assert [m.dead_letter_id for m in requeue_dead_letters(conn, schema, ids=[1])] == [1]
        assert purge_dead_letters(conn, schema) == []
        conn.rollback()
    assert [d.id for d in list_dead_letters(db, schema)] == [1]
    assert db.execute(sql.SQL("SELECT count(*) FROM {}.message").format(sql.Identifier(schema))).fetchone() == (0,)
    assert purge_dead_letters(db, schema, ids=[1, 99]) == [1]
