"""What maintenance removes, and when: x-expires and auto-delete queues, dead letters, one process at a time.

A consuming kombu Connection attaches the transport's expiries to the
process's maintenance service; the tests run that service directly
(``run()``), the way its thread does. Time is moved by back-dating rows, not
by waiting.
"""

from __future__ import annotations

import logging

import psycopg
import pytest
from celery import Celery, signals
from kombu import Connection, Exchange, Queue

from celery_durable import maintenance
from tests.apps.transport_app import wait_for


@pytest.fixture
def db(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


def _consuming(pg_url, schema, **options):
    """A connection consuming queue ``keep`` (so its transport attaches its maintenance)."""
    conn = Connection(pg_url, transport_options={"schema": schema, "maintenance_interval": 3600, **options})
    keep = conn.SimpleQueue("keep")
    keep.consumer.consume()
    _settled(conn)
    return conn, keep


def _service(conn) -> maintenance.Maintenance:
    transport = conn.transport
    return maintenance.for_database(transport.db.conninfo, transport.settings)


def _settled(conn) -> None:
    """Wait for the service's first run (at attach): the next is an hour away, so only the test's runs follow."""
    assert _service(conn).ran.wait(30), "the maintenance thread never ran"


def _count(db, query: str, *params) -> int:
    return db.execute(query, params).fetchone()[0]


def test_unused_expiring_and_auto_delete_queues_go_with_their_messages(pg_url, schema, db):
    conn, keep = _consuming(pg_url, schema)
    try:
        with Connection(pg_url, transport_options={"schema": schema}) as other:
            channel = other.default_channel
            ex = Exchange("routes", "direct", channel=channel)
            ex.declare()
            queues = {
                "expiring": Queue("expiring", ex, "expiring", expires=1.0, channel=channel),
                "auto": Queue("auto", ex, "auto", auto_delete=True, channel=channel),
                "lasting": Queue("lasting", ex, "lasting", channel=channel),
            }
            for name, queue in queues.items():
                queue.declare()
                with other.Producer(channel) as producer:
                    producer.publish({"for": name}, exchange=ex, routing_key=name, declare=[queue])
        # Unused for two minutes: past x-expires (at least a minute) but not the ten minutes
        # an auto-delete queue without x-expires gets.
        db.execute(f'UPDATE "{schema}".queue SET last_used_at = now() - interval \'2 minutes\'')
        _service(conn).run()
        names = {r[0] for r in db.execute(f'SELECT name FROM "{schema}".queue')}
        assert "expiring" not in names and {"auto", "lasting", "keep"} <= names
        assert _count(db, f'SELECT count(*) FROM "{schema}".message WHERE queue = %s', "expiring") == 0
        assert _count(db, f'SELECT count(*) FROM "{schema}".binding WHERE queue = %s', "expiring") == 0

        db.execute(f'UPDATE "{schema}".queue SET last_used_at = now() - interval \'11 minutes\'')
        _service(conn).run()
        names = {r[0] for r in db.execute(f'SELECT name FROM "{schema}".queue')}
        assert "auto" not in names and "lasting" in names
        assert _count(db, f'SELECT count(*) FROM "{schema}".message WHERE queue = %s', "auto") == 0
        assert _count(db, f'SELECT count(*) FROM "{schema}".message WHERE queue = %s', "lasting") == 1
    finally:
        keep.close()
        conn.release()


def test_a_consumed_expiring_queue_stays(pg_url, schema, db):
    """The keeper marks the queues it consumes as used every lease/3, so x-expires never takes them."""
    conn = Connection(pg_url, transport_options={"schema": schema, "maintenance_interval": 3600,
                                                 "lease_seconds": 0.6})
    try:
        queue = Queue("alive", Exchange("alive", "direct"), "alive", expires=1.0)
        consumer = conn.Consumer([queue], callbacks=[lambda body, message: message.ack()])
        consumer.consume()
        _settled(conn)
        db.execute(f'UPDATE "{schema}".queue SET last_used_at = now() - interval \'2 minutes\' WHERE name = %s',
                   ("alive",))
        wait_for(lambda: _count(db, f'SELECT count(*) FROM "{schema}".queue WHERE name = %s '
                                    "AND last_used_at > now() - interval '1 minute'", "alive"),
                 30, "the keeper to mark the queue as used")
        _service(conn).run()
        assert _count(db, f'SELECT count(*) FROM "{schema}".queue WHERE name = %s', "alive") == 1
        consumer.cancel()
    finally:
        conn.release()


def test_dead_letters_are_kept_for_dead_letter_retention(pg_url, schema, db):
    conn, keep = _consuming(pg_url, schema, dead_letter_retention=3600)
    try:
        keep.put("old")
        keep.get(timeout=10).reject()  # rejected without requeue: a dead letter
        db.execute(f'UPDATE "{schema}".dead_letter SET dead_at = now() - interval \'2 hours\' RETURNING id')
        keep.put("young")
        keep.get(timeout=10).reject()
        assert _count(db, f'SELECT count(*) FROM "{schema}".dead_letter') == 2
        deleted = _service(conn).run()
        assert deleted["old dead letters"] == 1
        assert _count(db, f'SELECT count(*) FROM "{schema}".dead_letter WHERE dead_at > now() - interval \'1 hour\'') == 1
        assert _count(db, f'SELECT count(*) FROM "{schema}".dead_letter') == 1
    finally:
        keep.close()
        conn.release()


def test_one_process_at_a_time_and_never_waiting(pg_url, schema, db):
    """While another process holds the maintenance lock, a run deletes nothing and returns at once."""
    conn, keep = _consuming(pg_url, schema)
    try:
        db.execute(f'INSERT INTO "{schema}".message (queue, expires_at, payload) '
                   "SELECT 'gone', now() - interval '1 s', 'x' FROM generate_series(1, %s)",
                   (maintenance.BATCH_ROWS * 2 + 5,))
        service = _service(conn)
        with psycopg.connect(pg_url) as other:  # another worker's batch, in its transaction
            assert other.execute("SELECT pg_try_advisory_xact_lock(hashtext(%s))", (service.lock_key,)).fetchone()[0]
            assert service.run()["expired messages"] == 0
        deleted = service.run()
        assert deleted["expired messages"] == maintenance.BATCH_ROWS * 2 + 5
        assert _count(db, f'SELECT count(*) FROM "{schema}".message WHERE queue = %s', "gone") == 0
    finally:
        keep.close()
        conn.release()


class _Consumer:
    """What worker_ready's receivers read of Celery's consumer: its app."""

    def __init__(self, app) -> None:
        self.app = app


def test_a_worker_whose_maintenance_cannot_start_says_so(pg_url, schema, caplog):
    """The durable sweeper and result expiry start at worker_ready; a failure is logged, not swallowed."""
    app = Celery("broken", set_as_current=False)
    app.conf.update(result_backend=pg_url, result_backend_transport_options={"schema": schema},
                    broker_url="memory://", broker_write_url="nosuch://nowhere")
    try:
        with caplog.at_level(logging.ERROR):
            signals.worker_ready.send(sender=_Consumer(app))
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        said = [m for m in errors if "sweeper" in m and "did not start" in m]
        assert said, f"nothing logged about the sweeper: {errors}"
        assert "nosuch" in said[0]
    finally:
        signals.worker_shutdown.send(sender=None)
        app.close()
