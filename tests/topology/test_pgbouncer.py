"""PgBouncer 1.18 in transaction mode, with its defaults, in front of a private cluster (issue 10 §2).

What breaks there: prepared statements (psycopg prepares a query after five
executions; another client's server session then already has ``_pg3_0``), the
startup parameter ``options`` (refused), session advisory locks (taken on one
server session, released on another) and LISTEN (the session that listens goes
back to PgBouncer's pool). Tasks, results, a chord, a durable chain and the CLI
must work through it, with LISTEN over a direct ``listen_url``; without one,
the worker and ``get()`` say so at once.
"""

from __future__ import annotations

import json
import uuid

import kombu
import pytest
from celery import chord
from click.testing import CliRunner

from celery_durable import durable_chain, maintenance
from celery_durable.cli import durable
from celery_durable.exceptions import ListenUnavailable
from celery_durable.transport.cleanup import expiries as transport_expiries
from tests.apps.topology_app import create_tables, make_app
from tests.apps.transport_app import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.own_servers]

SCHEMA = "topo"


@pytest.fixture
def cluster(pg_cluster):
    cluster = pg_cluster()
    with cluster.connect() as conn:
        create_tables(conn, SCHEMA)
    return cluster


def _env(url: str, listen_url: str | None) -> dict[str, str]:
    return {"CELERY_DURABLE_URL": url, "CELERY_DURABLE_SCHEMA": SCHEMA, "CELERY_DURABLE_LISTEN_URL": listen_url or ""}


def _cli(url: str, *args: str) -> str:
    result = CliRunner().invoke(durable, ["--url", url, "--schema", SCHEMA, *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_tasks_chord_durable_chain_and_cli_through_pgbouncer(cluster, pgbouncer, workers):
    bouncer = pgbouncer(cluster)
    url = bouncer.url(application_name=f"bounce_{uuid.uuid4().hex[:6]}")
    env = _env(url, cluster.url())
    assert "version" in _cli(url, "migrate")  # DDL and its advisory lock in one transaction
    worker = workers("tests.apps.topology_app", env=env)
    app = make_app(env)

    # More than five of each statement on both sides: psycopg would have prepared them.
    results = [app.signature("topo.add", (i, i)).delay() for i in range(30)]
    assert [r.get(timeout=30) for r in results] == [2 * i for i in range(30)]
    header = [app.signature("topo.add", (i, 1)) for i in range(5)]
    assert chord(header)(app.signature("topo.tsum")).get(timeout=30) == 15
    flows = [durable_chain(app.signature("topo.charge", (n,)), app.signature("topo.reserve"),
                           app.signature("topo.notify"), app=app).apply_async() for n in range(1, 4)]
    assert [wf.get(timeout=60) for wf in flows] == [f"order {n}: {n * 10}" for n in range(1, 4)]

    assert json.loads(_cli(url, "workflows", "list", "--json"))[0]["status"] == "succeeded"
    assert "celery" in _cli(url, "queues")
    log = worker.log()
    for broken in ("prepared statement", "unsupported startup parameter", "ERROR"):
        assert broken not in log, log[-3000:]
    assert "prepared statement" not in bouncer.log() and "unsupported startup parameter" not in bouncer.log()


def test_maintenance_through_pgbouncer_leaves_no_lock_behind(cluster, pgbouncer):
    """The vacuum (autovacuum off) through a PgBouncer that rotates its server sessions, as a busy one does."""
    cluster.execute("ALTER SYSTEM SET autovacuum = off")
    cluster.reload()
    bouncer = pgbouncer(cluster, extra=["server_round_robin = 1"])
    clients = [bouncer.connect() for _ in range(4)]
    for client in clients:  # four transactions at once: PgBouncer opens four server sessions and keeps them
        client.execute("BEGIN")
        client.execute("SELECT 1")
    for client in clients:
        client.execute("COMMIT")  # (a client leaving inside a transaction would cost its server session)
        client.close()
    with kombu.Connection(bouncer.url(), transport_options={"schema": SCHEMA}) as conn:
        conn.default_channel
        vacuum = conn.transport.vacuum
        for _round in range(2):
            cluster.execute(f"INSERT INTO {SCHEMA}.message (queue, payload) "
                            "SELECT 'q', '{}' FROM generate_series(1, 1500)")
            cluster.execute(f"DELETE FROM {SCHEMA}.message")
            wait_for(lambda: _dead_rows(cluster) >= 1000, 30, "the statistics to count the dead rows")
            vacuum.vacuum()
            wait_for(lambda: _dead_rows(cluster) < 1000, 30, "the vacuum to clear the dead rows")
            assert cluster.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")[0][0] == 0
        # Expiry batches take their try-lock inside each batch's transaction: nothing stays behind.
        service = maintenance.for_database(conn.transport.db.conninfo, conn.transport.settings)
        cluster.execute(f"INSERT INTO {SCHEMA}.message (queue, expires_at, payload) "
                        "SELECT 'q', now() - interval '1 s', '{}' FROM generate_series(1, 2500)")
        deleted = service.expire(transport_expiries(conn.transport.db), deadline=None)
        assert deleted["expired messages"] == 2500
        assert cluster.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")[0][0] == 0
    assert "you don't own a lock" not in cluster.log()


def _dead_rows(cluster) -> int:
    return cluster.execute("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = %s::regclass",
                           (f"{SCHEMA}.message",))[0][0]


def test_without_listen_url_the_worker_and_get_name_it(cluster, pgbouncer, workers):
    url = pgbouncer(cluster).url()
    env = _env(url, None)
    worker = workers("tests.apps.topology_app", env=env, wait=False)
    wait_for(lambda: worker.proc.poll() is not None or "listen_url" in worker.log(), 60,
             "the worker to refuse LISTEN through PgBouncer")
    assert "listen_url" in worker.log() and "PgBouncer" in worker.log()

    app = make_app(env)
    result = app.signature("topo.add", (1, 2)).delay()
    with pytest.raises(ListenUnavailable, match="listen_url"):
        result.get(timeout=30)
