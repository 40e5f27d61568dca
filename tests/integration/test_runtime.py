"""One process-wide runtime: what each component's options give it, and what a forked child gets."""

from __future__ import annotations

import os

import psycopg
import pytest
from celery import Celery, states

import celery_durable  # noqa: F401  (registers postgresql:// with Kombu)
from celery_durable.backend import listener
from celery_durable.db import migrate, pool


@pytest.fixture
def app(pg_url, schema):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        migrate.ensure_schema(conn, schema)
    made = Celery("t", broker=pg_url, backend=pg_url, set_as_current=False)
    made.conf.update(
        broker_transport_options={"schema": schema, "pool_max_size": 2, "prepared_statements": False,
                                  "connect_timeout": 3},
        result_backend_transport_options={"schema": schema, "pool_max_size": 5, "prepared_statements": True,
                                          "connect_timeout": 7},
    )
    yield made
    made.close()
    listener.close_all()
    pool.close_all()


def test_broker_and_backend_options_on_one_url_are_each_honoured(app):
    """The broker builds its pool first; the backend's pool_max_size, prepared_statements, connect_timeout still hold."""
    with app.connection_for_write() as client:
        client.ensure_connection(max_retries=1)
        transport = client.transport
        broker_pool = pool.get_pool(transport.conninfo, transport.settings)
    backend = app.backend
    backend.store_result("t1", 1, states.SUCCESS)
    backend_pool = pool.get_pool(backend.conninfo, backend.settings)
    assert (broker_pool.max_size, broker_pool.timeout) == (2, 3)
    assert (backend_pool.max_size, backend_pool.timeout) == (5, 7)
    with pool.connection(transport.conninfo, transport.settings) as conn:
        assert conn.prepare_threshold is None  # the broker said no prepared statements
    with pool.connection(backend.conninfo, backend.settings) as conn:
        assert conn.prepare_threshold is not None  # the backend said yes
    assert backend.get_task_meta("t1", cache=False)["result"] == 1


def test_same_options_share_one_pool(app, pg_url, schema):
    """Components whose connection options agree share the process's pool (no more connections than needed)."""
    from celery_durable.config import Settings

    one = pool.get_pool(pg_url, Settings(schema=schema, pool_max_size=4))
    other = pool.get_pool(pg_url, Settings(schema=schema, pool_max_size=4, max_result_bytes=10))
    assert one is other


def test_a_forked_child_gets_its_own_pools_and_leaves_its_parents_alone(pg_url, schema):
    """Guard (held before the runtime too): Celery's prefork children fork from a process that has pools."""
    from celery_durable.config import Settings

    settings = Settings(schema=schema)
    pool.get_pool(pg_url, settings).wait()  # its one connection is open: the parent uses that one
    with pool.connection(pg_url, settings) as conn:
        parent_pid = conn.info.backend_pid
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report, then leave without running the parent's exit handlers
        try:
            with pool.connection(pg_url, settings) as conn:
                mine = conn.info.backend_pid
            os.write(write, f"{mine}".encode())
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(child, 0)
    reported = os.read(read, 100).decode()
    os.close(read)
    assert status == 0 and reported and int(reported) != parent_pid  # a session of its own
    with pool.connection(pg_url, settings) as conn:  # the parent's session survived the child's exit
        assert conn.info.backend_pid == parent_pid
        assert conn.execute("SELECT 1").fetchone() == (1,)
    pool.close_all()
