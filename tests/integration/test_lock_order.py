"""Renewals, acks and claims lock rows in one order: they never deadlock.

The keeper renews every lease a worker holds (claim order) while the fetcher
acks finished tasks (completion order) together with its next claim. Two
statements locking the same rows in opposite orders deadlock; PostgreSQL then
aborts one, and a lost ack makes its task run again once its lease expires.
``pg_stat_database.deadlocks`` is cluster-wide, so the test runs on a private
cluster, with a short ``deadlock_timeout`` (a deadlock costs milliseconds).
"""

from __future__ import annotations

import random
import threading
import time

import psycopg
from kombu import Connection

import celery_durable  # noqa: F401  (registers postgresql://)
from celery_durable.exceptions import DatabaseUnavailable

#: Messages the worker holds at once (prefetched and running), renewed together.
HELD = 500
#: Acks per round trip, and rounds.
BATCH, ROUNDS = 25, 300
#: Rows queued in another queue: with a backlog, statements walk the primary key in the order of
#: their id arrays (a nested loop), as on a busy server.
BACKLOG = 50_000
PAYLOAD = '{"body": "", "properties": {}, "headers": {}}'


def _deadlocks(cluster) -> int:
    """The database's deadlock count once every other session has ended (sessions flush their statistics on exit)."""
    cluster.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")
    deadline = time.monotonic() + 30
    while cluster.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                          "AND pid <> pg_backend_pid()")[0][0]:
        assert time.monotonic() < deadline, "sessions did not end"
        time.sleep(0.05)
    return cluster.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = 'postgres'")[0][0]


def test_renew_ack_and_claim_under_load_never_deadlock(pg_cluster):
    cluster = pg_cluster(conf=["deadlock_timeout = 10ms"])
    url = cluster.url()
    # Before the transport's pool exists: counting ends every other session (the pool's too).
    before = _deadlocks(cluster)
    with Connection(url, transport_options={"schema": "lockorder", "lease_seconds": 60}) as conn:
        conn.default_channel  # creates the schema
        transport = conn.transport
        delivery, leases = transport.delivery, transport.leases
        publish = "INSERT INTO lockorder.message (queue, payload) SELECT 'work', %s FROM generate_series(1, %s)"
        with psycopg.connect(url, autocommit=True) as db:
            db.execute("INSERT INTO lockorder.message (queue, payload) SELECT 'backlog', '{}' "
                       "FROM generate_series(1, %s)", (BACKLOG,))
            db.execute(publish, (PAYLOAD, HELD))
            db.execute("ANALYZE lockorder.message")
        assert len(delivery.claim(["work"], HELD)) == HELD

        stop = threading.Event()
        errors: list[BaseException] = []

        def keeper() -> None:
            while not stop.is_set():
                try:
                    leases.renew()
                except DatabaseUnavailable as exc:  # a deadlock abort surfaces as a lost database
                    errors.append(exc)

        renewer = threading.Thread(target=keeper, daemon=True)
        renewer.start()
        rng = random.Random(7)
        acked = 0
        try:
            with psycopg.connect(url, autocommit=True) as db:
                for _ in range(ROUNDS):
                    # Tasks finish in any order; the fetcher sends their acks with the next claim.
                    finished = rng.sample(list(leases.snapshot()), BATCH)
                    done = leases.pop_many(finished)
                    db.execute(publish, (PAYLOAD, BATCH))
                    try:
                        token, (rows,) = delivery.claim_rows([(["work"], BATCH)], done)
                    except DatabaseUnavailable as exc:
                        errors.append(exc)
                        continue
                    delivery.accept(token, rows)
                    acked += len(done)
        finally:
            stop.set()
            renewer.join(timeout=30)

    deadlocks = _deadlocks(cluster) - before
    assert deadlocks == 0, f"{deadlocks} deadlocks; {len(errors)} statements aborted, first: {errors[0]}"
    assert not errors, errors[0]
    assert acked == ROUNDS * BATCH
