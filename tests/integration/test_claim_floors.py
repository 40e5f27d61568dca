"""Claims start where the wake-up says: dead, leased and delayed rows before it are never walked.

A shared database holds snapshots open (reports, idle admin sessions): VACUUM cannot remove the rows
acked meanwhile, and a claim reading the queue's index from its head visits every one of them, every
time. Scheduled and long-running tasks sit on the same index. Here a snapshot is held while
thousands of messages pass, others wait leased or delayed, and the claim that takes the next message
must read no more of the table than it would in an empty queue.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from kombu import Connection, Consumer, Queue

import celery_durable  # noqa: F401  (registers postgresql://)

#: The claim's pages when it reads only what it takes (index descent, the row, its heap page).
FEW_PAGES = 40


def _explain_pages(pg_url: str, query: str, params: dict) -> int:
    """Pages the claim statement reads (shared hits + reads), run and rolled back."""
    with psycopg.connect(pg_url) as db:
        plan = db.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query, params).fetchone()[0]
        db.rollback()
    top = plan[0]["Plan"]
    return top["Shared Hit Blocks"] + top["Shared Read Blocks"]


class Claims:
    """Records the claim statements this process sends (the transport's pool connections)."""

    def __init__(self, monkeypatch) -> None:
        self.sent: list[tuple[str, dict]] = []
        execute = psycopg.Cursor.execute

        def recording(cursor, query, params=None, *args, **kwargs):
            if isinstance(query, str) and "SET visible_at = now() + %(lease)s" in query:
                self.sent.append((query, dict(params)))
            return execute(cursor, query, params, *args, **kwargs)

        monkeypatch.setattr(psycopg.Cursor, "execute", recording)


def _consume(conn: Connection, queue: Queue, count: int, timeout: float = 30) -> list:
    got = []

    def take(body, message):
        got.append(body)
        message.ack()

    with Consumer(conn, queues=[queue], callbacks=[take], prefetch_count=100):
        while len(got) < count:
            conn.drain_events(timeout=timeout)
    return got


def test_a_claim_after_a_wake_up_reads_no_row_a_held_snapshot_keeps(pg_url, schema, monkeypatch):
    options = {"schema": schema, "polling_interval": 3600}  # only wake-ups lead to claims here
    queue = Queue("floors", routing_key="floors")
    later = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    holder = psycopg.connect(pg_url)
    try:
        with Connection(pg_url, transport_options=options) as conn, \
                Connection(pg_url, transport_options=options) as other:
            producer = conn.Producer()
            producer.publish({"warm": 0}, routing_key="floors", declare=[queue])
            _consume(conn, queue, 1)
            # A report opens its snapshot: from now on no acked row can be vacuumed away.
            holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            holder.execute("SELECT count(*) FROM pg_class")
            for i in range(2000):
                producer.publish({"n": i}, routing_key="floors")
            assert len(_consume(conn, queue, 2000)) == 2000
            # Long-running tasks another worker holds, and tasks scheduled an hour ahead.
            for i in range(1000):
                producer.publish({"held": i}, routing_key="floors")
            held = []
            with Consumer(other, queues=[queue], callbacks=[lambda body, message: held.append(message)],
                          prefetch_count=2000):  # claims refill while half the prefetch is free
                while len(held) < 1000:
                    other.drain_events(timeout=30)
                for i in range(1000):
                    producer.publish({"later": i}, routing_key="floors", headers={"eta": later})
                # This worker's first claim since walks the rows the other took meanwhile, once.
                producer.publish({"next": 1}, routing_key="floors")
                assert _consume(conn, queue, 1) == [{"next": 1}]
                claims = Claims(monkeypatch)
                producer.publish({"next": 2}, routing_key="floors")
                assert _consume(conn, queue, 1) == [{"next": 2}]
                assert claims.sent, "no claim was sent"
                query, params = claims.sent[-1]
                pages = _explain_pages(pg_url, query, params)  # while the snapshot and the leases are held
                for message in held:
                    message.ack()
    finally:
        holder.close()
    assert pages <= FEW_PAGES, f"the claim read {pages} pages: it walked the rows before the new message"


def test_a_message_requeued_behind_the_floor_comes_back_at_once(pg_url, schema):
    # No safety poll for an hour: only the requeue's wake-up can bring the message back.
    options = {"schema": schema, "polling_interval": 3600}
    queue = Queue("behind", routing_key="behind")
    with Connection(pg_url, transport_options=options) as conn:
        producer = conn.Producer()
        producer.publish({"first": 1}, routing_key="behind", declare=[queue])
        seen: list = []
        requeued = threading.Event()

        def take(body, message):
            seen.append(body)
            if body == {"first": 1} and not requeued.is_set():
                requeued.set()
                producer.publish({"second": 2}, routing_key="behind")  # the floor moves past the first
                message.requeue()
            else:
                message.ack()

        with Consumer(conn, queues=[queue], callbacks=[take], prefetch_count=10):
            while len(seen) < 3:
                conn.drain_events(timeout=30)
    assert sorted(json.dumps(b, sort_keys=True) for b in seen) == sorted(
        json.dumps(b, sort_keys=True) for b in [{"first": 1}, {"first": 1}, {"second": 2}])


@pytest.mark.parametrize("priorities", [(0, 9), (9, 0)])
def test_priorities_announced_in_any_order_are_claimed_highest_first(pg_url, schema, priorities):
    options = {"schema": schema, "polling_interval": 3600}
    queue = Queue("ranked", routing_key="ranked", max_priority=10)
    with Connection(pg_url, transport_options=options) as conn:
        producer = conn.Producer()
        producer.publish({"warm": 0}, routing_key="ranked", declare=[queue])
        assert _consume(conn, queue, 1) == [{"warm": 0}]
        got = []

        def take(body, message):
            got.append(body["p"])
            message.ack()

        with Consumer(conn, queues=[queue], callbacks=[take], prefetch_count=1):
            for p in priorities:
                for _ in range(3):
                    producer.publish({"p": p}, routing_key="ranked", priority=p)
            while len(got) < 6:
                started = time.monotonic()
                conn.drain_events(timeout=30)
                # with no safety poll for an hour, a floor that held nothing must not stall the next
                assert time.monotonic() - started < 30, f"priority {got[-1]} waited out the drain's timeout"
    assert sorted(got) == [0, 0, 0, 9, 9, 9]
    if priorities == (0, 9):  # all six were waiting when the first claim after the warm-up ran
        assert got[-1] == 0
