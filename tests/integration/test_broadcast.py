"""Which messages travel by NOTIFY alone: only those for Celery's own broadcast queues.

A transient (auto-delete or non-durable) queue bound to a topic or fanout
exchange used to receive by NOTIFY only, like Redis pub/sub: whatever was
published while its consumer reconnected was lost. Now only Celery's remote
control (``*.pidbox``) and events and gossip (``celeryev``) work that way; a
user's queue gets rows and its consumer finds them when it comes back.
"""

from __future__ import annotations

import psycopg
import pytest
from kombu import Connection, Exchange, Queue

import celery_durable  # noqa: F401  (registers postgresql://)


def _rows(pg_url, schema, queue) -> int:
    with psycopg.connect(pg_url) as db:
        return db.execute(f'SELECT count(*) FROM "{schema}".message WHERE queue = %s', (queue,)).fetchone()[0]


@pytest.mark.parametrize("kind, transient", [("topic", {"durable": False}), ("fanout", {"auto_delete": True})])
def test_a_users_transient_queue_keeps_what_was_published_while_its_consumer_was_away(pg_url, schema, kind,
                                                                                      transient):
    options = {"schema": schema}
    exchange = Exchange(f"user-{kind}", kind)
    queue = Queue(f"user-{kind}-q", exchange, routing_key="orders.created", **transient)
    with Connection(pg_url, transport_options=options) as consumer_conn:
        consumer_conn.SimpleQueue(queue).close()  # declared and bound, then the consumer goes away
    with Connection(pg_url, transport_options=options) as publisher:
        with publisher.Producer() as producer:
            for i in range(3):
                producer.publish({"n": i}, exchange=exchange, routing_key="orders.created")
    assert _rows(pg_url, schema, queue.name) == 3
    with Connection(pg_url, transport_options=options) as back:
        simple = back.SimpleQueue(queue)
        got = []
        for _ in range(3):
            message = simple.get(timeout=10)
            got.append(message.payload["n"])
            message.ack()
        simple.close()
    assert sorted(got) == [0, 1, 2]


def test_celerys_broadcasts_stay_notify_only(pg_url, schema):
    """A remote-control broadcast reaches a live listener inline and leaves no row for an absent one."""
    options = {"schema": schema}
    exchange = Exchange("celery.pidbox", "fanout", durable=False, auto_delete=True)
    queue = Queue("w1@host.celery.pidbox", exchange, auto_delete=True, durable=False)
    with Connection(pg_url, transport_options=options) as conn, Connection(pg_url, transport_options=options) as pub:
        listening = conn.SimpleQueue(queue)
        listening.consumer.consume()
        with pub.Producer() as producer:
            producer.publish({"method": "ping"}, exchange=exchange, routing_key="")
        message = listening.get(timeout=10)
        assert message.payload == {"method": "ping"}
        listening.close()
        with pub.Producer() as producer:  # nobody listens now
            producer.publish({"method": "ping"}, exchange=exchange, routing_key="")
    assert _rows(pg_url, schema, queue.name) == 0
