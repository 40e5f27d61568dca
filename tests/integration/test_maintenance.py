"""Worker-side maintenance on a server whose autovacuum is off (as this machine's PostgreSQL 15)."""

from __future__ import annotations

import time

import psycopg
from kombu import Connection


def _vacuum_stats(pg_url: str, schema: str) -> tuple[int, int]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        return conn.execute(
            "SELECT n_dead_tup, vacuum_count FROM pg_stat_user_tables WHERE relid = %s::regclass",
            (f"{schema}.message",),
        ).fetchone()


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_acked_rows_are_vacuumed_and_an_idle_queue_is_not(pg_url, schema):
    # maintenance_interval: the service's own runs stay out of the way of the explicit calls below.
    with Connection(pg_url, transport_options={"schema": schema, "maintenance_interval": 3600}) as conn:
        queue = conn.SimpleQueue("churn")
        for i in range(1200):
            queue.put(i)
        for _ in range(1200):
            queue.get(timeout=10).ack()
        queue.close()
        transport = conn.transport
        # Backends report their dead rows to the statistics within seconds (10 s when idle).
        _wait(lambda: _vacuum_stats(pg_url, schema)[0] >= 1000, 30, "1,000 dead rows in the statistics")
        _dead, before = _vacuum_stats(pg_url, schema)

        assert transport.vacuum.vacuum() is True
        _wait(lambda: _vacuum_stats(pg_url, schema)[1] == before + 1, 30, "the vacuum to be counted")
        assert _vacuum_stats(pg_url, schema)[0] < 1000

        # Nothing to reclaim: no VACUUM (an idle worker costs one query). The statistics already
        # show the first VACUUM (waited for above), and this one says it did not run.
        assert transport.vacuum.vacuum() is False
        assert _vacuum_stats(pg_url, schema)[1] == before + 1
