"""Transactional enqueue: ``with in_transaction(conn): task.delay()`` commits or rolls back with the caller.

A running worker is the observer: a sentinel task published outside the
transaction, after the transactional one, shows the worker was claiming while
the transactional message stayed invisible.
"""

from __future__ import annotations

from contextlib import contextmanager

import psycopg
import pytest

import celery_durable
from tests.apps.transport_app import Harness, wait_for

pytestmark = pytest.mark.slow


def _sqlalchemy_engine(pg_url: str):
    """A ``postgresql+psycopg://`` engine on the test database (a Unix socket goes in ?host=, as SQLAlchemy wants)."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    params = psycopg.conninfo.conninfo_to_dict(pg_url)
    host = params.get("host")
    socket_dir = host if host and host.startswith("/") else None
    url = sqlalchemy.URL.create(
        "postgresql+psycopg",
        username=params.get("user"),
        password=params.get("password"),
        host=None if socket_dir else host,
        port=int(params["port"]) if params.get("port") else None,
        database=params.get("dbname"),
        query={"host": socket_dir} if socket_dir else {},
    )
    return sqlalchemy.create_engine(url)


@contextmanager
def _psycopg(pg_url):
    conn = psycopg.connect(pg_url)  # not autocommit: the first statement opens a transaction
    try:
        yield conn, conn.commit, conn.rollback
    finally:
        conn.close()


@contextmanager
def _sa_connection(pg_url):
    engine = _sqlalchemy_engine(pg_url)
    try:
        with engine.connect() as conn:
            yield conn, conn.commit, conn.rollback
    finally:
        engine.dispose()


@contextmanager
def _sa_session(pg_url):
    from sqlalchemy.orm import Session

    engine = _sqlalchemy_engine(pg_url)
    try:
        with Session(engine) as session:
            yield session, session.commit, session.rollback
    finally:
        engine.dispose()


KINDS = {"psycopg": _psycopg, "sqlalchemy_connection": _sa_connection, "sqlalchemy_session": _sa_session}


def _sentinel(h: Harness, tag: str) -> None:
    h.task("record").delay(tag)
    wait_for(lambda: h.executions_of(tag) == 1, 60, f"the sentinel {tag} to run")


@pytest.mark.parametrize("kind", [
    "psycopg",
    "sqlalchemy_connection",
    "sqlalchemy_session",
])
def test_transactional_enqueue(h, pg_url, kind):
    h.start(concurrency=1)
    record = h.task("record")

    # Rolled back: the task never runs and leaves no row.
    with KINDS[kind](pg_url) as (conn, commit, rollback):
        with celery_durable.in_transaction(conn):
            record.delay("rolled-back")
        assert h.messages() == 0, "an uncommitted message is visible outside its transaction"
        rollback()
    _sentinel(h, "after-rollback")
    assert h.executions_of("rolled-back") == 0
    assert h.messages() == 0

    # Committed: invisible (and not run) until the commit, then runs once.
    with KINDS[kind](pg_url) as (conn, commit, rollback):
        with celery_durable.in_transaction(conn):
            h.task("record_late").delay("committed")  # records before its ack: never in neither table
        assert h.messages() == 0, "an uncommitted message is visible outside its transaction"
        _sentinel(h, "before-commit")
        assert h.executions_of("committed") == 0
        commit()
        # One statement, one snapshot: once committed, the message is queued or has run (or both: the
        # acks_late task ran and its ack is not committed yet).
        assert h.one("SELECT (SELECT count(*) FROM {s}.message)"
                     " + (SELECT count(*) FROM {s}.executions WHERE tag = 'committed')") >= 1, \
            "the committed message is neither queued nor executed"
    wait_for(lambda: h.executions_of("committed") == 1, 60, "the committed task to run")
    wait_for(lambda: h.messages() == 0, 30, "the committed message to be acked")
    assert h.executions_of("committed") == 1


def test_a_retry_inside_in_transaction_commits_on_its_own(workers, worker_env, pg_url, schema):
    """Celery's retry message is not the task's own publish: it must survive the rollback its
    Retry exception causes (issue 18 §1)."""
    from celery import Celery

    from tests.apps import basic

    workers("tests.apps.basic", env=worker_env, concurrency=1)
    client = Celery("retry-client", set_as_current=False)
    client.conf.update(basic.config(worker_env))
    try:
        assert client.signature("tests.apps.basic.retry_in_transaction", ("tx",)).delay().get(timeout=30) == 1
    finally:
        client.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        tags = conn.execute(psycopg.sql.SQL("SELECT tag FROM {}.executions ORDER BY tag").format(
            psycopg.sql.Identifier(schema))).fetchall()
    assert [t for (t,) in tags] == ["tx:0", "tx:1"]
