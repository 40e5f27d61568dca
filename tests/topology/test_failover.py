"""Failover to a promoted synchronous standby loses nothing (issue 10 §4).

A primary streams to a synchronous standby (``pg_basebackup -R``,
``synchronous_standby_names``); workers, the client and the recorder use one
multi-host URL with ``target_session_attrs=read-write``. Under load (acks_late
tasks and durable chains whose middle step writes a ledger row through
``current_step().connection``) the primary is killed (immediate stop: no
checkpoint, clients cut) and the standby promoted, as an orchestrator such as
Patroni would, without its detection delay. Every task must run, every chain
complete with the right result, and no ledger row exist twice.

Bounded here (200 tasks, 5 chains); ``CELERY_DURABLE_CHAOS_LONG=1`` runs the
issue's full load (1,000 tasks, 20 chains) and prints the figures.
"""

from __future__ import annotations

import os
import time

import pytest

from celery_durable import durable_chain
from celery_durable.db import migrate
from tests.apps.topology_app import create_tables, make_app
from tests.apps.transport_app import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.chaos, pytest.mark.own_servers]

LONG = os.environ.get("CELERY_DURABLE_CHAOS_LONG") == "1"
TASKS, CHAINS = (1000, 20) if LONG else (200, 5)
SCHEMA = "topo"


def test_failover_to_a_synchronous_standby_loses_nothing(pg_cluster, workers):
    primary = pg_cluster()
    standby = primary.add_standby(synchronous=True)
    with primary.connect() as conn:
        migrate.ensure_schema(conn, SCHEMA)
        create_tables(conn, SCHEMA)
    url = (f"postgresql://postgres@{primary.hostport()},{standby.hostport()}/postgres"
           "?target_session_attrs=read-write&connect_timeout=3")
    env = {"CELERY_DURABLE_URL": url, "CELERY_DURABLE_SCHEMA": SCHEMA, "CELERY_DURABLE_LISTEN_URL": "",
           "CELERY_DURABLE_LEASE": "10", "CELERY_DURABLE_STEP_SLEEP": "0.5"}
    app = make_app(env)

    for i in range(TASKS):
        app.signature("topo.record", (f"t{i}", 0.01)).delay()
    # The chains have a worker of their own, so some are mid-step (a ledger row written, not yet
    # committed) when the primary dies, whatever the tasks' queue holds.
    flows = [durable_chain(app.signature("topo.charge", (n,)), app.signature("topo.reserve"),
                           app.signature("topo.notify"), app=app).apply_async(queue="chains")
             for n in range(1, CHAINS + 1)]
    workers("tests.apps.topology_app", env=env)
    workers("tests.apps.topology_app", "-Q", "chains", env=env)

    wait_for(lambda: _distinct(primary, "t%") >= TASKS // 4 and _distinct(primary, "charge:%") >= 1, 120,
             "a quarter of the tasks and the first chain step to run")
    killed_at = time.monotonic()
    primary.stop("immediate")
    standby.promote()
    promoted_at = time.monotonic()
    baseline = _distinct(standby, "%")
    ledger_before = standby.execute(f"SELECT count(*) FROM {SCHEMA}.ledger")[0][0]
    wait_for(lambda: _distinct(standby, "%") > baseline, 120, "work to resume on the promoted standby",
             interval=0.1)
    resumed_at = time.monotonic()
    wait_for(lambda: _distinct(standby, "t%") == TASKS, 300, f"all {TASKS} tasks to run", interval=0.5)
    results = [wf.get(timeout=300) for wf in flows]
    done_at = time.monotonic()

    lost = TASKS - _distinct(standby, "t%")
    chains_right = sum(result == f"order {n}: {n * 10}" for n, result in enumerate(results, start=1))
    doubled = standby.execute(f"SELECT count(*) FROM (SELECT workflow FROM {SCHEMA}.ledger GROUP BY workflow "
                              "HAVING count(*) > 1) d")[0][0]
    ledger_rows = standby.execute(f"SELECT count(*) FROM {SCHEMA}.ledger")[0][0]
    reruns = standby.execute(f"SELECT count(*) - count(DISTINCT tag) FROM {SCHEMA}.executions "
                             "WHERE tag LIKE 't%'")[0][0]
    print(f"\nfailover: {TASKS} acks_late tasks, {CHAINS} durable chains ({ledger_before} past their write at "
          f"the kill), a worker -c 2 for the tasks and one for the chains; lost {lost}, "
          f"chains right {chains_right}/{CHAINS}, doubled ledger writes {doubled}, tasks run again (at least "
          f"once) {reruns}; promote took {promoted_at - killed_at:.1f} s, "
          f"first task done {resumed_at - killed_at:.1f} s after the kill, everything done "
          f"{done_at - killed_at:.1f} s after it")
    assert lost == 0
    assert chains_right == CHAINS
    assert doubled == 0 and ledger_rows == CHAINS


def _distinct(cluster, pattern: str) -> int:
    return cluster.execute(f"SELECT count(DISTINCT tag) FROM {SCHEMA}.executions WHERE tag LIKE %s",
                           (pattern,))[0][0]
