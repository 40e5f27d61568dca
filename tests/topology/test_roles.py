"""Least privilege and a DBA's view (issue 10 §5), on a private cluster (roles are cluster-wide).

The schema owner migrates; ``celery-durable sql --grants app`` prints what the
application role needs, the owner runs it, and a DML-only role then runs a
worker, a client and the CLI's read commands. Every connection names its
component in ``application_name``, and the connection budget docs/production/connections.md states
is what ``pg_stat_activity`` shows.
"""

from __future__ import annotations

import base64
import os
import pickle
import signal
import subprocess
import sys
from collections import Counter

import psycopg
import pytest
from celery import chord
from psycopg.types.json import Jsonb
from click.testing import CliRunner

from celery_durable import durable_chain
from celery_durable.cli import durable
from tests.apps.topology_app import create_tables, make_app
from tests.apps.transport_app import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.own_servers]

SCHEMA = "topo"
DB = "shop"


@pytest.fixture
def cluster(pg_cluster):
    cluster = pg_cluster(conf=["log_connections = on"])
    cluster.execute("CREATE ROLE owner LOGIN")
    cluster.execute("CREATE ROLE app LOGIN")
    cluster.create_database(DB, owner="owner")
    return cluster


def _cli(url: str, *args: str):
    return CliRunner().invoke(durable, ["--url", url, "--schema", SCHEMA, *args])


def test_owner_migrates_and_a_dml_only_role_runs_everything_else(cluster, workers):
    owner_url, app_url = cluster.url(DB, "owner"), cluster.url(DB, "app")
    assert _cli(owner_url, "migrate").exit_code == 0
    grants = _cli(owner_url, "sql", "--grants", "app")
    assert grants.exit_code == 0 and 'TO "app"' in grants.output
    with psycopg.connect(owner_url, autocommit=True) as conn:
        create_tables(conn, SCHEMA)  # the test app's own tables, covered by the grants below
        conn.execute(grants.output)

    env = {"CELERY_DURABLE_URL": app_url, "CELERY_DURABLE_SCHEMA": SCHEMA, "CELERY_DURABLE_LISTEN_URL": "",
           "CELERY_DURABLE_AUTO_MIGRATE": "false"}
    worker = workers("tests.apps.topology_app", env=env)
    app = make_app(env)
    assert app.signature("topo.add", (1, 2)).delay().get(timeout=30) == 3
    assert chord([app.signature("topo.add", (i, i)) for i in range(3)])(app.signature("topo.tsum")).get(timeout=30) == 6
    wf = durable_chain(app.signature("topo.charge", (3,)), app.signature("topo.reserve"),
                       app.signature("topo.notify"), app=app).apply_async()
    assert wf.get(timeout=60) == "order 3: 30"
    for read in (["queues"], ["workflows", "list"], ["dead-letters"], ["workflows", "show", wf.workflow_id]):
        result = _cli(app_url, *read)
        assert result.exit_code == 0, (read, result.output)
    assert "permission denied" not in worker.log()

    refused = _cli(app_url, "sql")  # printing the DDL needs no rights; running it does
    assert refused.exit_code == 0
    with psycopg.connect(app_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"DROP TABLE {SCHEMA}.message")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"INSERT INTO {SCHEMA}.schema_version (version) VALUES (99)")


def test_application_names_and_the_connection_budget(cluster, workers, tmp_path):
    """pg_stat_activity shows who is who, and no more connections than the docs' budget."""
    url = cluster.url(DB, "owner", application_name="shop")
    env = {"CELERY_DURABLE_URL": url, "CELERY_DURABLE_SCHEMA": SCHEMA, "CELERY_DURABLE_LISTEN_URL": "",
           "CELERY_DURABLE_BEAT": "1", "CELERY_DURABLE_POOL_MAX": "2",
           "CELERY_DURABLE_RECORD_URL": cluster.url(DB, "owner")}  # (the test app's counting: not ours)
    with psycopg.connect(cluster.url(DB, "owner"), autocommit=True) as conn:
        create_tables(conn, SCHEMA)
    workers("tests.apps.topology_app", env=env, concurrency=2)
    app = make_app(env)
    assert [r.get(timeout=30) for r in [app.signature("topo.add", (i, i)).delay() for i in range(20)]] == \
        [2 * i for i in range(20)]
    assert durable_chain(app.signature("topo.charge", (1,)), app.signature("topo.reserve"),
                         app.signature("topo.notify"), app=app).apply_async().get(timeout=60) == "order 1: 10"
    beat = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tests.apps.topology_app", "beat",
                             "-s", str(tmp_path / "schedule")], env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: _count(cluster, "tag = 'beat'") >= 2, 60, "beat's task to run twice")
        budget = Counter(dict(cluster.execute(
            "SELECT application_name, count(*) FROM pg_stat_activity WHERE datname = %s GROUP BY 1", (DB,))))
    finally:
        os.killpg(beat.pid, signal.SIGKILL)
        beat.wait()

    # With pool_max_size = 2: a pool per process and component holds 1-2 connections; the fetcher,
    # the keeper (once it has run) and each LISTEN hold one each.
    ours = {name: n for name, n in budget.items() if name.startswith("shop:")}
    assert set(ours) <= {f"shop:{c}" for c in ("worker", "fetcher", "keeper", "listener", "task", "client",
                                                "result-listener", "beat")}, ours
    assert ours["shop:fetcher"] == 1 and ours["shop:listener"] == 1 and ours.get("shop:keeper", 0) <= 1
    assert 1 <= ours["shop:worker"] <= 2
    assert 2 <= ours["shop:task"] <= 2 * 2  # two pool children
    assert 1 <= ours["shop:client"] <= 2 and ours.get("shop:result-listener", 0) <= 1
    assert 1 <= ours["shop:beat"] <= 2
    assert _cli(url, "queues").exit_code == 0
    assert "application_name=shop:cli" in cluster.log()  # the CLI's connection, closed by now


def _count(cluster, where: str) -> int:
    try:
        return cluster.execute(f"SELECT count(*) FROM {SCHEMA}.executions WHERE {where}", dbname=DB)[0][0]
    except psycopg.errors.UndefinedTable:
        return 0


class _Touch:
    """Unpickling this runs ``open(path, "x")``: the file is the proof that code ran."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "x"))


def test_a_step_rewritten_by_the_application_role_runs_no_code(cluster, workers, tmp_path):
    """The DML-only role docs/production/roles.md recommends can rewrite a stored step's arguments to pickle;
    a worker with ``accept_content = ["json"]`` must fail that step, never unpickle it."""
    owner_url, app_url = cluster.url(DB, "owner"), cluster.url(DB, "app")
    assert _cli(owner_url, "migrate").exit_code == 0
    with psycopg.connect(owner_url, autocommit=True) as conn:
        create_tables(conn, SCHEMA)
        conn.execute(_cli(owner_url, "sql", "--grants", "app").output)
    env = {"CELERY_DURABLE_URL": app_url, "CELERY_DURABLE_SCHEMA": SCHEMA, "CELERY_DURABLE_LISTEN_URL": "",
           "CELERY_DURABLE_AUTO_MIGRATE": "false"}
    app = make_app(env)
    marker = tmp_path / "unpickled"
    wf = durable_chain(app.signature("topo.charge", (4,)), app.signature("topo.reserve"),
                       app.signature("topo.notify"), app=app).apply_async()
    with psycopg.connect(app_url, autocommit=True) as attacker:  # before any worker runs it
        sig = attacker.execute(f"SELECT sig FROM {SCHEMA}.workflow_node WHERE workflow_id = %s AND path = '2'",
                               (wf.id,)).fetchone()[0]
        sig.pop("args"), sig.pop("kwargs")
        sig["encoded"] = {"content_type": "application/x-python-serialize", "content_encoding": "binary",
                          "data": base64.b64encode(pickle.dumps(([_Touch(marker)], {}))).decode()}
        attacker.execute(f"UPDATE {SCHEMA}.workflow_node SET sig = %s WHERE workflow_id = %s AND path = '2'",
                         (Jsonb(sig), wf.id))
    workers("tests.apps.topology_app", env=env)
    wait_for(lambda: marker.exists() or _status(cluster, wf.id) != "running", 60,
             "the workflow to fail (or the payload to run)")
    assert not marker.exists(), "the worker unpickled arguments the application role wrote"
    assert _status(cluster, wf.id) == "failed"
    with pytest.raises(Exception, match="application/x-python-serialize"):
        wf.get(timeout=30)
    app.close()


def _status(cluster, workflow_id: str) -> str:
    return cluster.execute(f"SELECT status FROM {SCHEMA}.workflow WHERE id = %s", (workflow_id,), dbname=DB)[0][0]
