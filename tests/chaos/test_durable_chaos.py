"""Durable chains while workers are SIGKILLed and restarted every few seconds.

Bounded in CI (a few dozen chains); CELERY_DURABLE_CHAOS_LONG=1 runs a few
hundred for several minutes (see ``modes``: the time limit per mode). Every
chain must end with the right result, no step may run again after its
checkpoint committed, and no row written through ``current_step().connection``
may exist twice.
"""

from __future__ import annotations

import random
import time

import psycopg
import pytest
from celery import Celery
from psycopg import sql

from celery_durable import durable_chain
from tests.apps import basic

from .modes import FIGURES, limit, per_mode

pytestmark = pytest.mark.chaos

CHAINS = per_mode(60, 300)
STEPS = 5
KILL_EVERY = 3.0


@limit(bounded=300, long=900)
def test_chains_survive_workers_killed_every_few_seconds(workers, worker_env, pg_url, schema, budget):
    env = {**worker_env, "CELERY_DURABLE_LEASE": "2", "CELERY_DURABLE_PREFETCH": "1"}
    client = Celery("chaos-client")
    client.conf.update(basic.config(env))
    from celery_durable.config import Settings
    from celery_durable.db import dsn, pool

    pool.prepare_schema(dsn.from_url(pg_url), Settings(schema=schema))
    s = sql.Identifier(schema)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {}.executions (tag text, pid int, at timestamptz DEFAULT clock_timestamp())").format(s))
        conn.execute(sql.SQL("CREATE TABLE {}.control (key text PRIMARY KEY, value text)").format(s))
        conn.execute(sql.SQL("CREATE TABLE {}.chaos_rows (chain text, step int, key text)").format(s))

    procs = [workers("tests.apps.durable_app", env=env) for _ in range(2)]
    results = []
    for n in range(CHAINS):
        name = "tests.apps.durable_app.chaos_step"
        steps = [client.signature(name, args=(None, f"c{n}", 0, 0.1))]
        steps += [client.signature(name, args=(f"c{n}", i, random.choice((0, 0.1, 0.3)))) for i in range(1, STEPS)]
        results.append(durable_chain(*steps).apply_async(workflow_id=f"chaos-{n}"))

    deadline = budget.deadline(float("inf"))
    next_kill = time.monotonic() + KILL_EVERY
    kills = 0
    with psycopg.connect(pg_url, autocommit=True) as conn:
        while True:
            done = conn.execute(sql.SQL("SELECT count(*) FROM {}.workflow WHERE status = 'succeeded'").format(s)).fetchone()[0]
            if done == CHAINS:
                break
            assert time.monotonic() < deadline, f"only {done}/{CHAINS} chains finished"
            if time.monotonic() >= next_kill:
                victim = random.randrange(len(procs))
                procs[victim].kill()
                procs[victim] = workers("tests.apps.durable_app", env=env)
                kills += 1
                next_kill = time.monotonic() + KILL_EVERY
            time.sleep(0.2)

        FIGURES["durable chains"] = {"chains": CHAINS, "steps": CHAINS * STEPS, "kills": kills,
                                     "wall_s": round(budget.elapsed())}
        assert kills >= 2
        for n, wf in enumerate(results):
            assert wf.get(timeout=30) == list(range(STEPS)), f"chain {n}"
        doubled = conn.execute(sql.SQL(
            "SELECT key, count(*) FROM {}.chaos_rows GROUP BY key HAVING count(*) > 1").format(s)).fetchall()
        assert doubled == [], f"rows written through step.connection twice: {doubled[:5]}"
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}.chaos_rows").format(s)).fetchone()[0] == CHAINS * STEPS
        reran = conn.execute(sql.SQL(
            "SELECT e.tag FROM {s}.executions e JOIN {s}.checkpoint c"
            " ON c.workflow_id = 'chaos-' || substr(split_part(e.tag, ':', 1), 2)"
            " AND c.path = split_part(e.tag, ':', 2)"
            " WHERE e.at > c.finished_at").format(s=s)).fetchall()
        assert reran == [], f"steps that ran again after their checkpoint committed: {reran[:5]}"
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}.message WHERE queue = 'celery'").format(s)).fetchone()[0] == 0
