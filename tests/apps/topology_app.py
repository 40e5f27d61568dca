"""The app of the topology tests: one URL for broker and backend, as a deployment would configure it.

``make_app()`` builds the same app in the worker and in the test process.
Environment: CELERY_DURABLE_URL (broker and backend; PgBouncer, TLS or a
multi-host list), CELERY_DURABLE_SCHEMA, CELERY_DURABLE_LISTEN_URL
(``listen_url``), CELERY_DURABLE_AUTO_MIGRATE (default true),
CELERY_DURABLE_RECORD_URL (where executions are counted; default the URL),
CELERY_DURABLE_POOL_MAX (``pool_max_size``, default 10),
CELERY_DURABLE_LEASE (default 30), CELERY_DURABLE_BEAT (1: beat sends
``topo.record("beat")`` every second), CELERY_DURABLE_STEP_SLEEP (seconds the
``reserve`` step takes after its write; default 0).

Executions are counted in ``<schema>.executions`` through a connection of the
task's own, retried while the database is away (the failover test kills it
mid-run): at least once, so a test counts distinct tags. The ``reserve`` step
writes ``<schema>.ledger`` through ``current_step().connection``: its row
commits with the step's checkpoint, so it must exist exactly once.
"""

from __future__ import annotations

import os
import threading
import time

import psycopg
from celery import Celery
from psycopg import sql

import celery_durable  # noqa: F401  (registers the postgresql:// broker scheme)
from celery_durable import current_step

TABLES = (
    "CREATE TABLE IF NOT EXISTS {}.executions (tag text NOT NULL, pid int, at timestamptz DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS {}.ledger (workflow text NOT NULL, amount int NOT NULL)",
)


def create_tables(conn: psycopg.Connection, schema: str) -> None:
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    for ddl in TABLES:
        conn.execute(sql.SQL(ddl).format(sql.Identifier(schema)))


def make_app(env: dict | None = None) -> Celery:
    env = os.environ if env is None else env
    url = env.get("CELERY_DURABLE_URL", "")
    options = {
        "schema": env.get("CELERY_DURABLE_SCHEMA", "celery_durable"),
        "listen_url": env.get("CELERY_DURABLE_LISTEN_URL") or None,
        "auto_migrate": env.get("CELERY_DURABLE_AUTO_MIGRATE", "true"),
        "lease_seconds": float(env.get("CELERY_DURABLE_LEASE", "30")),
        "polling_interval": 1.0,
        "connect_timeout": 3,
        "pool_max_size": int(env.get("CELERY_DURABLE_POOL_MAX", "10")),
    }
    app = Celery("topology_app", set_as_current=False)
    app.conf.update(
        broker_url=url,
        result_backend=url,
        broker_transport_options=options,
        result_backend_transport_options=options,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_serializer="json",
        accept_content=["json"],
    )
    if env.get("CELERY_DURABLE_BEAT") == "1":
        app.conf.beat_schedule = {"tick": {"task": "topo.record", "schedule": 1.0, "args": ("beat",)}}
    app.task(name="topo.add")(add)
    app.task(name="topo.tsum")(tsum)
    app.task(name="topo.record", acks_late=True)(record)
    app.task(name="topo.charge")(charge)
    app.task(name="topo.reserve")(reserve)
    app.task(name="topo.notify")(notify)
    return app


def add(x, y):
    return x + y


def tsum(values):
    return sum(values)


def record(tag, sleep=0.0):
    """Count one execution of ``tag`` (outside the broker)."""
    if sleep:
        time.sleep(sleep)
    _recorder().record(tag)
    return tag


def charge(order):
    _recorder().record(f"charge:{order}")
    return {"order": order, "amount": order * 10}


def reserve(payment):
    """The middle step: a row in the step's own transaction, then an outside record."""
    step = current_step()
    step.connection.execute(sql.SQL("INSERT INTO {}.ledger (workflow, amount) VALUES (%s, %s)").format(
        sql.Identifier(_schema())), (step.workflow_id, payment["amount"]))
    time.sleep(float(os.environ.get("CELERY_DURABLE_STEP_SLEEP", "0")))
    _recorder().record(f"reserve:{payment['order']}")
    return payment


def notify(payment):
    _recorder().record(f"notify:{payment['order']}")
    return f"order {payment['order']}: {payment['amount']}"


def _schema() -> str:
    return os.environ.get("CELERY_DURABLE_SCHEMA", "celery_durable")


_the_recorder: "_Recorder | None" = None


def _recorder() -> "_Recorder":
    global _the_recorder
    if _the_recorder is None or _the_recorder.pid != os.getpid():
        url = os.environ.get("CELERY_DURABLE_RECORD_URL") or os.environ.get("CELERY_DURABLE_URL", "")
        _the_recorder = _Recorder(url, _schema())
    return _the_recorder


class _Recorder:
    """One connection per process, re-made after a loss; a failed count is retried, never a failed task."""

    def __init__(self, url: str, schema: str) -> None:
        self.url = url
        self.pid = os.getpid()
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()
        self._insert = sql.SQL("INSERT INTO {}.executions (tag, pid) VALUES (%s, %s)").format(sql.Identifier(schema))

    def record(self, tag: str, give_up_after: float = 120.0) -> None:
        deadline = time.monotonic() + give_up_after
        with self._lock:
            while True:
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=3,
                                                     prepare_threshold=None)  # (PgBouncer)
                    self._conn.execute(self._insert, (tag, os.getpid()))
                    return
                except psycopg.OperationalError:
                    self._conn = None
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)


app = make_app()
