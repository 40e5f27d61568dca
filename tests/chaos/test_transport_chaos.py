"""Chaos: two workers, acks_late tasks, a worker SIGKILLed and restarted again and again; nothing is lost.

Bounded for CI (2000 tasks, about a minute); CELERY_DURABLE_CHAOS_LONG=1 runs
20,000 tasks over several minutes (see ``modes``: the time limit per mode). A kill comes whenever the workers have made
a fixed amount of progress since the previous one, so every kill lands in the
middle of real work; the publisher keeps publishing meanwhile.
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.apps.transport_app import Harness, wait_for

from .modes import FIGURES, limit, per_mode

TOTAL = per_mode(2_000, 20_000)
KILLS = per_mode(10, 40)
#: Seconds each task sleeps: with 2 workers x 2 processes the run lasts about a minute (CI)
#: or several minutes (long), so kills keep landing mid-run while the publisher still publishes.
TASK_SLEEP = per_mode(0.06, 0.02)

pytestmark = [pytest.mark.chaos, pytest.mark.slow, limit(bounded=300, long=1200)]


@pytest.fixture
def h(pg_url, schema, worker_env, workers):
    harness = Harness(pg_url, schema, worker_env, workers)
    yield harness
    harness.close()


def test_repeated_sigkills_lose_no_acks_late_task(h, budget):
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
                           or h.distinct_executed() >= TOTAL, budget.timeout(120),
                           f"{step} more executions between kills (kill {kills + 1})", interval=0.2)
        if h.distinct_executed() >= TOTAL or not reached:
            break
        name = names[kills % 2]
        running[name].kill()
        kills += 1
        running[name] = h.start("-n", name, concurrency=2)

    publisher.join(timeout=budget.timeout(600))
    assert not publish_errors, publish_errors
    assert len(published) == TOTAL
    wait_for(lambda: h.distinct_executed() == TOTAL, budget.timeout(per_mode(120, 300)),
             f"all {TOTAL} tasks to run (at {h.distinct_executed()})", interval=0.5)
    wait_for(lambda: h.messages("celery") == 0, budget.timeout(60), "the task queue to empty")
    executed = h.executed()
    assert set(executed) == set(tags)
    assert h.one("SELECT count(*) FROM {s}.dead_letter") == 0
    assert kills >= KILLS // 2, f"only {kills} kills happened before the work ran out"
    assert h.redelivered() > 0, "no kill caught a claimed message: the test tested nothing"
    FIGURES["transport"] = {"tasks": TOTAL, "kills": kills, "redelivered": h.redelivered(),
                            "executed_twice": len(executed) - TOTAL, "wall_s": round(time.monotonic() - started)}
