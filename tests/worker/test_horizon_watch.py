"""A worker whose claims slow because something holds the xmin horizon names the holder in its log.

On a private cluster: the held snapshot would slow every other test's queue on
a shared server. The worker checks every ``horizon_check_interval`` in its
maintenance thread (never per claim) and logs one WARNING per check while the
holder has held the horizon for ``horizon_warning_age`` and ``message`` holds
dead rows; one INFO line once it let go.
"""

from __future__ import annotations

import os
import re
import time

import psycopg
import pytest
from celery import Celery

from celery_durable.db import migrate
from tests.apps import basic

pytestmark = pytest.mark.own_servers

SCHEMA = "celery_durable"
T = "tests.apps.basic."
WARNING = re.compile(r"WARNING.*claims slow down: .* has held the xmin horizon for .*")


def wait_for(check, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@pytest.fixture
def cluster(pg_cluster):
    cluster = pg_cluster()
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        migrate.ensure_schema(conn, SCHEMA)
    return cluster


@pytest.fixture
def held(cluster):
    """A report's snapshot held open, and dead rows in ``message`` that VACUUM may not remove meanwhile."""
    report = psycopg.connect(cluster.url(application_name="nightly-report"), autocommit=True)
    report.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    report.execute("SELECT 1")
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute(f"INSERT INTO {SCHEMA}.message (queue, payload) SELECT 'acked', '{{}}' FROM generate_series(1, 2000)")
        conn.execute(f"DELETE FROM {SCHEMA}.message WHERE queue = 'acked'")
    yield report
    report.close()


def _env(cluster, **settings: str) -> dict[str, str]:
    return {**os.environ, "CELERY_DURABLE_URL": cluster.url(), "CELERY_DURABLE_SCHEMA": SCHEMA, **settings}


def test_one_warning_per_check_naming_the_holder_however_many_claims(cluster, held, celery_durable_worker):
    env = _env(cluster, CELERY_DURABLE_HORIZON_AGE="0", CELERY_DURABLE_HORIZON_INTERVAL="3600")
    worker = celery_durable_worker("tests.apps.basic", env=env)
    line = wait_for(lambda: WARNING.search(worker.log()), "the worker to name the holder").group(0)
    assert f"session pid {held.info.backend_pid} (nightly-report, user postgres" in line
    assert "2,000 dead rows" in line and "celery durable doctor" in line

    client = Celery("client", set_as_current=False)
    client.conf.update(basic.config(env))
    try:
        assert [r.get(timeout=60) for r in [client.send_task(T + "add", args=(i, i)) for i in range(30)]] == \
            [2 * i for i in range(30)]
    finally:
        client.close()
    # Thirty tasks claimed and acked behind the held horizon, one check: one WARNING.
    assert len(WARNING.findall(worker.log())) == 1, worker.log()


def test_the_warning_stops_once_the_holder_lets_go(cluster, held, celery_durable_worker):
    env = _env(cluster, CELERY_DURABLE_HORIZON_AGE="0", CELERY_DURABLE_HORIZON_INTERVAL="0.5")
    worker = celery_durable_worker("tests.apps.basic", env=env)
    wait_for(lambda: WARNING.search(worker.log()), "the worker to name the holder")
    held.execute("ROLLBACK")
    wait_for(lambda: "nightly-report" in worker.log() and "no longer slows claims" in worker.log(),
             "the worker to say the holder let go")


def test_no_warning_without_dead_rows_behind_the_holder(cluster, celery_durable_worker):
    """A guard: a snapshot held over an empty message table slows no claim; the worker says nothing."""
    report = psycopg.connect(cluster.url(application_name="nightly-report"), autocommit=True)
    try:
        report.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        report.execute("SELECT 1")
        env = _env(cluster, CELERY_DURABLE_HORIZON_AGE="0", CELERY_DURABLE_HORIZON_INTERVAL="0.2")
        worker = celery_durable_worker("tests.apps.basic", env=env)
        client = Celery("client", set_as_current=False)
        client.conf.update(basic.config(env))
        try:
            assert client.send_task(T + "add", args=(1, 2)).get(timeout=60) == 3
        finally:
            client.close()
        assert not WARNING.search(worker.log())
    finally:
        report.close()
