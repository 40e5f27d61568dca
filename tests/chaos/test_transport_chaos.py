"""Chaos: two workers, acks_late tasks, a worker SIGKILLed and restarted again and again; nothing is lost.

Bounded for CI (2000 tasks, about a minute); CELERY_DURABLE_CHAOS_LONG=1 runs
20,000 tasks over several minutes. A kill comes whenever the workers have made
a fixed amount of progress since the previous one, so every kill lands in the
middle of real work; the publisher keeps publishing meanwhile.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from tests.apps.transport_app import Harness, wait_for

LONG = os.environ.get("CELERY_DURABLE_CHAOS_LONG") == "1"
TOTAL = 20_000 if LONG else 2_000
KILLS = 40 if LONG else 10
#: Seconds each task sleeps: with 2 workers x 2 processes the run lasts about a minute (CI)
#: or several minutes (long), so kills keep landing mid-run while the publisher still publishes.
TASK_SLEEP = 0.02 if LONG else 0.06

pytestmark = [pytest.mark.chaos, pytest.mark.slow]
if LONG:
    pytestmark.append(pytest.mark.timeout(3600))


@pytest.fixture
def h(pg_url, schema, worker_env, workers):
    harness = Harness(pg_url, schema, worker_env, workers)
    yield harness
    harness.close()


def test_repeated_sigkills_lose_no_acks_late_task(h):
    tags = [f"c{i}" for i in range(TOTAL)]
    published = []
    publish_errors: list[BaseException] = []

    def publish():
        try:
            record_late = h.task("record_late")
            for tag in tags:
                record_late.delay(tag, sleep=TASK_SLEEP)
                published.append(tag)
        except BaseException as exc:  # reported below
            publish_errors.append(exc)

    names = ["w1@%h", "w2@%h"]
    running = {name: h.start("-n", name, concurrency=2) for name in names}
    publisher = threading.Thread(target=publish, name="publisher", daemon=True)
    publisher.start()

    step = TOTAL // (KILLS + 2)
    kills = 0
    started = time.monotonic()
    while kills < KILLS:
        target = h.one("SELECT count(*) FROM {s}.executions") + step
        reached = wait_for(lambda: h.one("SELECT count(*) FROM {s}.executions") >= target
                           or h.distinct_executed() >= TOTAL, 120,
                           f"{step} more executions between kills (kill {kills + 1})", interval=0.2)
        if h.distinct_executed() >= TOTAL or not reached:
            break
        name = names[kills % 2]
        running[name].kill()
        kills += 1
        running[name] = h.start("-n", name, concurrency=2)

    publisher.join(timeout=600)
    assert not publish_errors, publish_errors
    assert len(published) == TOTAL
    wait_for(lambda: h.distinct_executed() == TOTAL, 300 if LONG else 120,
             f"all {TOTAL} tasks to run (at {h.distinct_executed()})", interval=0.5)
    wait_for(lambda: h.messages("celery") == 0, 60, "the task queue to empty")
    executed = h.executed()
    assert set(executed) == set(tags)
    assert h.one("SELECT count(*) FROM {s}.dead_letter") == 0
    assert kills >= KILLS // 2, f"only {kills} kills happened before the work ran out"
    assert h.redelivered() > 0, "no kill caught a claimed message: the test tested nothing"
    print(f"\n{TOTAL} tasks, {kills} SIGKILLs, {h.redelivered()} redelivered, "
          f"{len(executed) - TOTAL} executed twice, "
          f"{time.monotonic() - started:.0f}s")
