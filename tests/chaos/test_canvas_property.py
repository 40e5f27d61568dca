"""Property tests: random canvases give the same result durable on ours as plain on Redis, even while
workers are SIGKILLed, with no committed task run again and no row written twice.

Canvases come from tests/chaos/canvases.py (chains, groups, chords, up to 3
deep and 30 tasks). Both runs are held to what the canvas means (``meant``:
Celery's documented value flow, computed in the test), so a difference names
the side that is wrong; plain Celery is not run on the shapes it is known to
get wrong (``plain_celery_errs``). Bounded in CI (about a minute);
CELERY_DURABLE_CHAOS_LONG=1 runs many more (see ``modes``: each test's time
limit per mode) and prints the figures (canvases, kills, violations).
"""

from __future__ import annotations

import os
import random
import time
import uuid

import psycopg
import pytest
from celery import Celery
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from psycopg import sql

from celery_durable import durable
from celery_durable.config import Settings
from celery_durable.db import dsn, pool
from celery_durable.testing.workers import start_worker
from tests.apps import basic

from .canvases import Chain, Chord, Group, Leaf, canvases, meant, plain_celery_errs, to_celery
from .modes import FIGURES as ALL_FIGURES
from .modes import Budget, limit, per_mode

pytestmark = pytest.mark.chaos

COMPARED = per_mode(12, 150)                    # canvases compared one by one
BATCHES, PER_BATCH = per_mode((1, 8), (20, 15))  # canvases run together while workers are killed
APP = "tests.apps.durable_app"
REDIS = "redis://127.0.0.1:6379"
FIGURES = ALL_FIGURES.setdefault("canvas property", {
    "compared": 0, "batches": 0, "killed_canvases": 0, "tasks": 0, "kills": 0, "violations": 0,
    "plain_not_run": 0, "compare_s": 0, "kill_s": 0})

_slow = settings(deadline=None, database=None, derandomize=False,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                        HealthCheck.filter_too_much, HealthCheck.data_too_large])


class Stack:
    """A plain Celery worker on Redis, durable workers on ours, and their clients."""

    def __init__(self, pg_url: str) -> None:
        self.url, self.schema = pg_url, f"t_{uuid.uuid4().hex[:12]}"
        self.s = sql.Identifier(self.schema)
        pool.prepare_schema(dsn.from_url(pg_url), Settings(schema=self.schema))
        self.q("CREATE TABLE {s}.executions (tag text, pid int, at timestamptz DEFAULT clock_timestamp())")
        self.q("CREATE TABLE {s}.canvas_rows (key text)")
        base = {**os.environ, "CELERY_DURABLE_URL": pg_url, "CELERY_DURABLE_SCHEMA": self.schema}
        self.env = {**base, "CELERY_DURABLE_LEASE": "2", "CELERY_DURABLE_PREFETCH": "1"}
        self.plain_queue = f"plain-{self.schema}"
        plain_env = {**base, "CELERY_DURABLE_BROKER": f"{REDIS}/5", "CELERY_DURABLE_BACKEND": f"{REDIS}/6"}
        self.plain = Celery("plain-client")
        self.plain.conf.update(basic.config(plain_env))
        self.ours = Celery("durable-client")
        self.ours.conf.update(basic.config(self.env))
        self.procs = [start_worker(APP, "-Q", self.plain_queue, env=plain_env, concurrency=4)]
        self.durable_workers = [start_worker(APP, env=self.env) for _ in range(2)]
        self.procs += self.durable_workers

    def q(self, query: str, *params: object) -> list:
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(sql.SQL(query).format(s=self.s), params)
            return cur.fetchall() if cur.description else []

    def expected(self, canvas, budget: Budget) -> object:
        """What the canvas means; plain Celery on Redis must give it too, unless it is known to get the shape wrong."""
        want = meant(canvas)
        if plain_celery_errs(canvas):
            FIGURES["plain_not_run"] += 1
            return want
        plain = to_celery(canvas, self.plain, queue=self.plain_queue).apply_async().get(timeout=budget.timeout(120))
        assert plain == want, (f"plain Celery gives {plain!r}, the canvas means {want!r}: a shape plain Celery "
                               "gets wrong (name it in canvases.plain_celery_errs and docs/how-to/durable-workflows.md) or a wrong meant()")
        return want

    def close(self) -> None:
        for proc in self.procs + self.durable_workers:
            proc.kill()
        self.plain.close()
        self.ours.close()
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(self.s))


@pytest.fixture(scope="module")
def stack(pg_url):
    import redis

    try:
        redis.Redis.from_url(REDIS, socket_connect_timeout=1).ping()
    except Exception:
        pytest.fail("the Redis on 127.0.0.1:6379 these tests compare with does not answer")
    built = Stack(pg_url)
    yield built
    built.close()


def _wait_rows(stack: Stack, budget: Budget, workflow_ids: list[str], expected: int) -> None:
    """Every task, link callbacks included, wrote its row (once: more is a violation, seen by _violations)."""
    deadline = budget.deadline(120)
    while True:
        rows = stack.q("SELECT count(DISTINCT key) FROM {s}.canvas_rows WHERE split_part(key, ':', 1) = ANY(%s)",
                       workflow_ids)[0][0]
        if rows >= expected:
            assert rows == expected
            return
        assert time.monotonic() < deadline, f"{rows} of {expected} tasks wrote their row"
        time.sleep(0.05)


def _violations(stack: Stack, workflow_ids: list[str]) -> dict[str, list]:
    """Committed tasks that ran again, and rows written through current_step().connection twice."""
    reran = stack.q(
        "SELECT e.tag FROM {s}.executions e JOIN {s}.checkpoint c"
        " ON e.tag = c.workflow_id || ':' || c.path"
        " WHERE c.workflow_id = ANY(%s) AND e.at > c.finished_at", workflow_ids)
    doubled = stack.q("SELECT key, count(*) FROM {s}.canvas_rows WHERE split_part(key, ':', 1) = ANY(%s)"
                      " GROUP BY key HAVING count(*) > 1", workflow_ids)
    return {"reran": reran, "doubled": doubled}


#: Issue 20: plain Celery runs ``bfc`` once per member of the chord's body group (``plain_celery_errs``).
ISSUE_20 = Chain([
    Group([Chord([Leaf("d", False), Leaf("a", False)], Leaf("ffg", False)),
           Chord([Leaf("geh", False), Leaf("gag", False)], Leaf("g", False)),
           Chord([Leaf("ebb", False), Leaf("aeb", False)], Leaf("bbb", False))]),
    Chain([Leaf("eae", False, linked=True), Leaf("d", False), Leaf("fg", False), Leaf("e", False)]),
    Chord([Chain([Leaf("cch", False), Leaf("aeh", True)]), Chain([Leaf("hg", True), Leaf("dgg", True)])],
          Group([Leaf("g", False), Leaf("d", False)])),
    Chain([Leaf("bfc", False), Group([Leaf("d", False), Leaf("edb", False)])]),
])


@limit(bounded=300, long=600)
@settings(_slow, max_examples=COMPARED)
@given(canvas=canvases())
@example(canvas=ISSUE_20)
def test_durable_canvas_gives_what_plain_celery_gives(stack, budget, canvas):
    expected = stack.expected(canvas, budget)
    wf = durable(to_celery(canvas, stack.ours)).apply_async()
    assert wf.get(timeout=budget.timeout(120)) == expected
    _wait_rows(stack, budget, [wf.workflow_id], canvas.rows())  # link callbacks may finish after the result
    found = _violations(stack, [wf.workflow_id])
    assert found == {"reran": [], "doubled": []}
    FIGURES["compared"] += 1
    FIGURES["compare_s"] = round(budget.elapsed())


@limit(bounded=300, long=1800)
@settings(_slow, max_examples=BATCHES, phases=[Phase.explicit, Phase.reuse, Phase.generate])  # no shrinking: kills
@given(batch=st.lists(canvases(), min_size=PER_BATCH, max_size=PER_BATCH).filter(
           lambda b: sum(c.count() for c in b) >= 8 * PER_BATCH),  # not the tiny first example
       pauses=st.lists(st.sampled_from([0.02, 0.05, 0.1, 0.2]), min_size=PER_BATCH, max_size=PER_BATCH))
def test_durable_canvases_survive_killed_workers(stack, budget, batch, pauses):
    """Several canvases at once while a durable worker is SIGKILLed (and replaced) every one to three seconds."""
    expected = [stack.expected(canvas, budget) for canvas in batch]
    results = [durable(to_celery(canvas, stack.ours, pause=pause)).apply_async()
               for canvas, pause in zip(batch, pauses)]
    ids = [wf.workflow_id for wf in results]
    deadline = budget.deadline(per_mode(180, 600))
    next_kill = time.monotonic() + random.uniform(0.5, 1.5)
    while True:
        done = stack.q("SELECT count(*) FROM {s}.workflow WHERE id = ANY(%s) AND status = 'succeeded'", ids)[0][0]
        if done == len(ids):
            break
        assert time.monotonic() < deadline, f"only {done}/{len(ids)} canvases finished"
        if time.monotonic() >= next_kill:
            victim = random.randrange(len(stack.durable_workers))
            stack.durable_workers[victim].kill()
            stack.durable_workers[victim] = start_worker(APP, env=stack.env)
            FIGURES["kills"] += 1
            next_kill = time.monotonic() + random.uniform(1, 3)
        time.sleep(0.1)
    assert [wf.get(timeout=60) for wf in results] == expected
    _wait_rows(stack, budget, ids, sum(c.rows() for c in batch))
    found = _violations(stack, ids)
    FIGURES["violations"] += len(found["reran"]) + len(found["doubled"])
    FIGURES["batches"] += 1
    FIGURES["killed_canvases"] += len(batch)
    FIGURES["tasks"] += sum(c.rows() for c in batch)
    FIGURES["kill_s"] = round(budget.elapsed())
    assert found == {"reran": [], "doubled": []}
