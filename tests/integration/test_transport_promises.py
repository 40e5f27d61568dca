"""Promises of the transport (docs/how-to/broker.md) that need no worker: max_deliveries, connect_options."""

from __future__ import annotations

import uuid
from queue import Empty

import psycopg
import pytest
from kombu import Connection

import celery_durable  # noqa: F401  (registers postgresql://)


def _dead_letters(pg_url, schema) -> list[tuple]:
    with psycopg.connect(pg_url) as db:
        return db.execute(f'SELECT queue, reason, delivery_count FROM "{schema}".dead_letter').fetchall()


def test_a_message_delivered_more_than_max_deliveries_times_becomes_a_dead_letter(pg_url, schema):
    with Connection(pg_url, transport_options={"schema": schema, "max_deliveries": 2}) as conn:
        queue = conn.SimpleQueue("poison")
        queue.put("boom")
        for _ in range(2):
            queue.get(timeout=10).requeue()  # each requeue is a delivery that failed
        with pytest.raises(Empty):
            queue.get_nowait()  # the third claim finds it over the limit: nothing is delivered
        queue.close()
    assert _dead_letters(pg_url, schema) == [("poison", "delivered 3 times (max_deliveries=2)", 3)]


def test_a_warm_shutdowns_restore_does_not_count_as_a_delivery(pg_url, schema):
    options = {"schema": schema, "max_deliveries": 2}
    with Connection(pg_url, transport_options=options) as conn:
        conn.SimpleQueue("restored").put("keep me")
    for _ in range(4):  # a consumer that takes it and closes without acking, four times
        with Connection(pg_url, transport_options=options) as conn:
            queue = conn.SimpleQueue("restored")
            assert queue.get(timeout=10).payload == "keep me"
            queue.close()  # the channel closes: unacked messages are restored
    with Connection(pg_url, transport_options=options) as conn:
        queue = conn.SimpleQueue("restored")
        message = queue.get(timeout=10)
        assert message.payload == "keep me"
        message.ack()
        queue.close()
    assert _dead_letters(pg_url, schema) == []


def test_connect_options_reach_every_session(pg_url, schema):
    """Any libpq keyword in connect_options applies to the transport's sessions (pooled and LISTEN)."""
    name = f"cdopts{uuid.uuid4().hex[:8]}"
    options = {"schema": schema, "connect_options": {"application_name": name, "options": "-c statement_timeout=4321"}}
    with Connection(pg_url, transport_options=options) as conn:
        queue = conn.SimpleQueue("opts")
        queue.put("x")
        queue.get(timeout=10).ack()  # consuming opens the LISTEN session too
        with conn.transport.db.connection() as session:
            assert session.execute("SHOW statement_timeout").fetchone()[0] == "4321ms"
        with psycopg.connect(pg_url) as db:
            named = db.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s "
                               "AND pid <> pg_backend_pid()", (f"{name}%",)).fetchone()[0]
        queue.close()
    assert named >= 2, "the pooled and LISTEN sessions carry the application_name given"
