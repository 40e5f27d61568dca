"""The postgresql:// transport under real `celery worker` processes: delivery guarantees a user relies on.

Executions are counted in ``<schema>.executions`` by the tasks themselves
(never through the broker); every wait has a deadline.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from tests.apps.transport_app import Harness, wait_for

REDIS_BACKEND = "redis://127.0.0.1:6379/5"

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("backend", ["redis", "postgresql", "postgresql-nosync", "postgresql-pipelined",
                                     "postgresql-wake-after-commit"])
def test_tasks_round_trip(pg_url, schema, worker_env, workers, backend):
    """Tasks and results round-trip; also with ``synchronous_commit`` off, pipelined, and woken after the commit."""
    env = dict(worker_env)
    if backend == "redis":
        url = REDIS_BACKEND
        redis = pytest.importorskip("redis")
        try:
            redis.Redis.from_url(url).ping()
        except Exception as exc:
            pytest.skip(f"no Redis at {url}: {exc}")
    else:
        import celery_durable.backend  # noqa: F401  (a backend that cannot be imported fails the test)

        url = pg_url
        if backend.endswith("nosync"):
            env["CELERY_DURABLE_SYNCHRONOUS_COMMIT"] = "false"
        if backend.endswith("pipelined"):
            env["CELERY_DURABLE_CONFIRM_PUBLISH"] = "false"
        if backend.endswith("wake-after-commit"):
            env["CELERY_DURABLE_WAKE_AFTER_COMMIT"] = "true"
    h = Harness(pg_url, schema, {**env, "CELERY_DURABLE_BACKEND": url}, workers)
    try:
        h.start()
        assert h.task("add").delay(2, 3).get(timeout=30) == 5
        value = {"text": "ü名 a'b \"; DROP TABLE x; --", "n": [1, 2.5, None, True]}
        assert h.task("echo").delay(value).get(timeout=30) == value
        results = [h.task("add").delay(i, i) for i in range(20)]
        assert [r.get(timeout=30) for r in results] == [2 * i for i in range(20)]
        wait_for(lambda: h.messages() == 0, 30, "the acked messages to leave the table")
    finally:
        h.close()


def test_killed_worker_loses_no_acks_late_task(h):
    """1000 acks_late tasks, the worker SIGKILLed mid-run and restarted: each runs at least once."""
    total = 1000
    worker = h.start()
    tags = [f"k{i}" for i in range(total)]
    for tag in tags:
        # 10 ms each (~5 s in all on two processes): the kill must land mid-run, however fast
        # the worker drains no-op tasks.
        h.task("record_late").delay(tag, sleep=0.01)
    wait_for(lambda: h.distinct_executed() >= 200, 120, "200 executions before the kill")
    worker.kill()
    done_before_restart = h.distinct_executed()
    assert done_before_restart < total, "the kill came too late to test anything"
    h.start()
    wait_for(lambda: h.distinct_executed() == total, 180,
             f"all {total} tasks to run (at {h.distinct_executed()})", interval=0.5)
    wait_for(lambda: h.messages() == 0, 60, "the message table to empty")
    assert set(h.executed()) == set(tags)
    assert h.redelivered() > 0, "the kill caught no claimed message: the test tested nothing"


def test_task_longer_than_lease_runs_once(h):
    """Lease 2 s, task 8 s, two idle workers: the lease is renewed, nobody else gets the message."""
    h.start("-n", "w1@%h", concurrency=1)
    h.start("-n", "w2@%h", concurrency=1)
    h.task("record_late").delay("long", sleep=8)
    wait_for(lambda: h.executions_of("long") >= 1, 60, "the long task to run")
    # A second delivery would keep the row alive until its own ack (the first ack is fenced off),
    # and it records before it acks: once the row is gone, every execution is counted.
    wait_for(lambda: h.messages() == 0, 60, "the long task's message to be acked")
    assert h.executions_of("long") == 1
    assert h.redelivered() == 0


def test_countdown_beyond_lease_runs_once_at_its_time(h):
    """A countdown of 2.5 lease periods is held by a worker (leases renewed) and runs once, not early."""
    h.start("-n", "w1@%h", concurrency=1)
    h.start("-n", "w2@%h", concurrency=1)
    eta = datetime.now(timezone.utc) + timedelta(seconds=5)
    h.task("record").apply_async(("eta",), eta=eta)
    wait_for(lambda: h.executions_of("eta") >= 1, 60, "the countdown task to run")
    wait_for(lambda: h.messages() == 0, 30, "the countdown message to be acked")
    assert h.executions_of("eta") == 1
    ran_at = h.one("SELECT at FROM {s}.executions WHERE tag = 'eta'")
    assert ran_at >= eta - timedelta(seconds=0.5), f"ran at {ran_at}, ETA was {eta}"


def test_far_eta_waits_in_the_table_and_runs_once(h):
    """Beyond native_delay_threshold the message waits as an unleased row with a future visible_at."""
    h.configure(CELERY_DURABLE_NATIVE_DELAY="1")
    h.start("-n", "w1@%h", concurrency=1)
    h.start("-n", "w2@%h", concurrency=1)
    eta = datetime.now(timezone.utc) + timedelta(seconds=6)
    h.task("record").apply_async(("far",), eta=eta)
    h.task("record").delay("now")
    wait_for(lambda: h.executions_of("now") == 1, 30, "the immediate task to run")
    # Both workers are consuming; the far task is still a row nobody holds.
    rows = h.q("SELECT visible_at > now(), lease_token IS NULL, visible_at FROM {s}.message WHERE task = 't.record'")
    assert len(rows) == 1, rows
    in_future, unleased, visible_at = rows[0]
    assert in_future and unleased, rows
    assert abs((visible_at - eta).total_seconds()) < 0.01
    assert h.executions_of("far") == 0
    wait_for(lambda: h.executions_of("far") >= 1, 60, "the far ETA task to run")
    wait_for(lambda: h.messages() == 0, 30, "the far ETA message to be acked")
    assert h.executions_of("far") == 1
    ran_at = h.one("SELECT at FROM {s}.executions WHERE tag = 'far'")
    assert ran_at >= eta - timedelta(seconds=0.5), f"ran at {ran_at}, ETA was {eta}"


def test_priorities_order_delivery(h):
    """Published before the worker starts; -c 1, prefetch 1: priority 9 first, FIFO within a priority."""
    published = [(i, i % 10) for i in range(40)]
    random.Random(7).shuffle(published)
    for index, (i, priority) in enumerate(published):
        h.task("record").apply_async((f"p{priority}-{index}",), priority=priority)
    expected = [f"p{p}-{index}" for index, (_, p) in sorted(enumerate(published), key=lambda e: (-e[1][1], e[0]))]
    h.start(concurrency=1, env={"CELERY_DURABLE_PREFETCH": "1"})
    wait_for(lambda: len(h.executed()) == len(published), 60, "every prioritised task to run")
    assert h.executed() == expected


def test_a_stream_of_tasks_never_waits_for_the_safety_poll(h):
    """NOTIFY alone keeps a busy worker fed, also when a publish lands while a claim is in flight.

    The safety poll is set to 10 minutes: a wake-up lost anywhere would stall the stream here.
    """
    h.start(env={"CELERY_DURABLE_POLL": "600"})
    sent = 0
    for burst in (1, 300, 1, 1, 500, 1):
        for i in range(burst):
            h.task("record").delay(f"s{sent + i}")
        sent += burst
        wait_for(lambda: h.distinct_executed() == sent, 60, f"{sent} tasks to run (at {h.distinct_executed()})")
