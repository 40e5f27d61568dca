"""The app most worker tests run: broker and backend on the test database.

CELERY_DURABLE_URL and CELERY_DURABLE_SCHEMA point it at the test's database
and schema; CELERY_DURABLE_BROKER / CELERY_DURABLE_BACKEND override either side
(e.g. redis://) for mixed setups; CELERY_DURABLE_ACCEPT (comma-separated, default every
serializer) is both ``accept_content`` and ``result_accept_content``. Executions are counted in a table of the
test's schema through a separate connection, outside the broker under test.
"""

from __future__ import annotations

import os
import time

import psycopg
from celery import Celery

import celery_durable  # noqa: F401  (registers the postgresql:// broker scheme)

URL = os.environ.get("CELERY_DURABLE_URL", "")
SCHEMA = os.environ.get("CELERY_DURABLE_SCHEMA", "celery_durable")


def config(env=os.environ) -> dict:
    """The app configuration for an environment; test processes build client apps from it."""
    url = env.get("CELERY_DURABLE_URL", "")
    schema = env.get("CELERY_DURABLE_SCHEMA", "celery_durable")
    accept = env.get("CELERY_DURABLE_ACCEPT", "json,pickle,msgpack,yaml").split(",")
    return dict(
        broker_url=env.get("CELERY_DURABLE_BROKER", url),
        result_backend=env.get("CELERY_DURABLE_BACKEND", url),
        broker_transport_options={
            "schema": schema,
            "lease_seconds": float(env.get("CELERY_DURABLE_LEASE", "30")),
            "polling_interval": float(env.get("CELERY_DURABLE_POLL", "1.0")),
            "horizon_warning_age": float(env.get("CELERY_DURABLE_HORIZON_AGE", "60")),
            "horizon_check_interval": float(env.get("CELERY_DURABLE_HORIZON_INTERVAL", "60")),
        },
        result_backend_transport_options={
            "schema": schema,
            "recovery_after": float(env.get("CELERY_DURABLE_RECOVERY_AFTER", "300")),
            "workflow_retention": float(env.get("CELERY_DURABLE_WORKFLOW_RETENTION", str(7 * 86400))),
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_prefetch_multiplier=int(env.get("CELERY_DURABLE_PREFETCH", "4")),
        task_serializer=env.get("CELERY_DURABLE_SERIALIZER", "json"),
        result_serializer=env.get("CELERY_DURABLE_SERIALIZER", "json"),
        accept_content=accept,
        result_accept_content=accept,
    )


app = Celery("basic")
app.conf.update(config())


_created = False


def _record(tag: str) -> None:
    global _created
    with psycopg.connect(URL, autocommit=True) as conn:
        if not _created:
            try:
                conn.execute(
                    psycopg.sql.SQL("CREATE TABLE IF NOT EXISTS {}.executions (tag text, pid int, at timestamptz DEFAULT now())")
                    .format(psycopg.sql.Identifier(SCHEMA))
                )
            except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
                pass  # another pool process created it at the same moment
            _created = True
        conn.execute(
            psycopg.sql.SQL("INSERT INTO {}.executions (tag, pid) VALUES (%s, %s)").format(psycopg.sql.Identifier(SCHEMA)),
            (tag, os.getpid()),
        )


@app.task
def add(x, y):
    return x + y


@app.task
def echo(value):
    return value


@app.task
def record(tag, sleep=0.0):
    """Count one execution of ``tag`` (outside the broker), optionally after sleeping."""
    if sleep:
        time.sleep(sleep)
    _record(tag)
    return tag


@app.task(acks_late=True)
def record_late(tag, sleep=0.0):
    if sleep:
        time.sleep(sleep)
    _record(tag)
    return tag


@app.task
def fail(message="boom"):
    raise ValueError(message)


@app.task
def noop():
    return None


@app.task(bind=True, max_retries=1)
def retry_in_transaction(self, tag):
    """Retries from inside ``in_transaction()`` on a connection that then rolls back (the exception's way out)."""
    _record(f"{tag}:{self.request.retries}")
    if self.request.retries == 0:
        with psycopg.connect(URL) as conn, celery_durable.in_transaction(conn):
            raise self.retry(countdown=0)
    return self.request.retries
