"""Many workers on one queue: a wake-up makes one idle worker claim, not all of them (designated_wakes).

Claims are counted as the scans of ``message_claim_idx`` (every claim is one; acks, renewals and
publishes are none), read after the workers exited (a backend's counters are flushed when it ends).
"""

from __future__ import annotations

import json
import time
import uuid

import psycopg
import pytest
from psycopg import sql

from tests.apps.transport_app import Harness, wait_for

pytestmark = pytest.mark.slow

WORKERS = 4


def claims(h: Harness, name: str) -> int:
    """Scans of the claim index so far, once no session of the workers named ``name`` is left."""
    wait_for(lambda: not h.one("SELECT count(*) FROM pg_stat_activity WHERE starts_with(application_name, %s)",
                               f"{name}:"), 30, "the workers' sessions to end")
    return h.one("SELECT coalesce(sum(idx_scan), 0) FROM pg_stat_user_indexes"
                 " WHERE schemaname = %s AND indexrelname = 'message_claim_idx'", h.schema)


class Channel:
    """The wake-up channel, listened to from the test: the workers' notes to each other."""

    def __init__(self, h: Harness) -> None:
        self.conn = psycopg.connect(h.url, autocommit=True)
        self.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(f"{h.schema}.message")))
        self.idle: set[str] = set()

    def wait_idle(self, n: int, timeout: float = 60) -> None:
        """Until ``n`` workers have said they wait idle (each has settled and claimed)."""
        deadline = time.monotonic() + timeout
        while len(self.idle) < n:
            left = deadline - time.monotonic()
            assert left > 0, f"only {len(self.idle)} of {n} workers said they are idle"
            for notify in self.conn.notifies(timeout=min(left, 1.0), stop_after=1):
                if notify.payload.startswith("w"):
                    note = json.loads(notify.payload[1:])
                    if note["k"] == "i":
                        self.idle.add(note["w"])

    def close(self) -> None:
        self.conn.close()


def run_hops(h: Harness, designated: bool, hops: int) -> float:
    """Claims per task of ``hops`` sequential tasks through WORKERS idle workers (``-c 1`` each)."""
    name = f"wakes{uuid.uuid4().hex[:8]}"  # the workers' sessions, told apart from every other test's
    url = f"{h.url}{'&' if '?' in h.url else '?'}application_name={name}"
    before = claims(h, name)
    channel = Channel(h)
    started = [h.start("-n", f"w{i}-{designated}@%h", concurrency=1,
                       env={"CELERY_DURABLE_POLL": "600", "CELERY_DURABLE_DESIGNATED_WAKES": str(designated),
                            "CELERY_DURABLE_URL": url})
               for i in range(WORKERS)]
    if designated:
        channel.wait_idle(WORKERS)
    channel.close()
    done = h.distinct_executed()
    for i in range(hops):
        h.task("record").delay(f"{designated}-{i}")
        wait_for(lambda: h.distinct_executed() == done + i + 1, 30, f"task {i} to run (no safety poll for 600 s)")
    for worker in started:
        worker.stop()
    return (claims(h, name) - before) / hops


def test_a_wake_up_makes_one_idle_worker_claim_not_every_worker(h):
    """Sequential tasks through four idle workers: about one claim each, against one per worker per task.

    Every task runs without the safety poll (600 s), so no wake-up was lost on the way.
    """
    designated = run_hops(h, True, 40)
    everyone = run_hops(h, False, 40)
    print(f"claims per task: designated {designated:.2f}, every worker {everyone:.2f}")
    assert designated <= 1.6, f"{designated:.2f} claims per task with designated wake-ups"
    assert designated < everyone, f"{everyone:.2f} claims per task when every worker claims"


def test_a_killed_idle_worker_loses_no_task(h):
    """A worker killed while the others still count it idle: the wake-up designated to it is claimed by
    the others after a second of silence (the safety poll is 600 s away)."""
    channel = Channel(h)
    started = [h.start("-n", f"k{i}@%h", concurrency=1, env={"CELERY_DURABLE_POLL": "600"}) for i in range(3)]
    channel.wait_idle(3)
    channel.close()
    started[0].kill()
    for i in range(12):
        h.task("record").delay(f"after-{i}")
        wait_for(lambda: h.executions_of(f"after-{i}") == 1, 15, f"task {i} after the kill")
    assert h.redelivered() == 0


def test_a_burst_reaches_every_idle_worker(h):
    """Tasks published faster than one worker runs them spread over all the idle workers.

    No safety poll for 600 s: a wake-up designated to a worker that does not take it would stall here.
    """
    channel = Channel(h)
    started = [h.start("-n", f"b{i}@%h", concurrency=1, env={"CELERY_DURABLE_POLL": "600"}) for i in range(3)]
    channel.wait_idle(3)
    channel.close()
    for i in range(45):
        h.task("record").delay(f"burst-{i}", sleep=0.1)
    wait_for(lambda: h.distinct_executed() == 45, 60, "the burst to run (no safety poll for 600 s)")
    per_process = dict(h.q("SELECT pid, count(*) FROM {s}.executions WHERE tag LIKE 'burst-%%' GROUP BY pid"))
    assert len(per_process) == len(started), f"tasks per worker process: {per_process}"
