"""Psycopg pools per database, component and connection options: shared by transport, backend and durable chains.

A worker's fetcher and keeper threads each have a pool of one connection of
their own, so ``pg_stat_activity`` tells them apart (:mod:`.appname`). Behind
a pooler such as PgBouncer in transaction mode, consecutive statements may run
on different server sessions, so nothing here relies on session state: no
startup ``options`` (commits that need not wait for the WAL flush set it per
transaction, see :func:`execute_relaxed`), no session advisory locks, and no
server-side prepared statements when a pooler is detected (``prepared_statements``).

The pools belong to the process's :mod:`~celery_durable.runtime`: a forked
child (Celery prefork) makes its own, and its parent's stay referenced, never
closed. They are keyed by the options a connection depends on
(``pool_max_size``, ``prepared_statements``, ``connect_timeout``): the broker
and the result backend on one URL share a pool when these agree, and each
gets the pool its own options ask for when they differ.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from .. import runtime
from ..config import Settings
from ..exceptions import DatabaseUnavailable
from . import appname, waiting
from .dsn import describe
from .migrate import ensure_schema

logger = logging.getLogger(__name__)

#: The runtime's kind of pools, keyed by (conninfo, component, runtime.connection_options(settings)).
POOLS = "pool"
#: (conninfo, schema) checked or created in this process (a forked child inherits its parent's).
_ready_schemas: set[tuple[str, str]] = set()


#: Sent in the same pipeline as a statement: the implicit transaction they share (up to the
#: pipeline's Sync) commits without waiting for the WAL flush, and nothing outlives it.
NO_FLUSH_WAIT = "SELECT set_config('synchronous_commit', 'off', true)"
#: Components that are one thread each: their pool holds a single connection.
THREAD_COMPONENTS = frozenset({"fetcher", "keeper"})


def connect(conninfo: str, *, autocommit: bool = True, timeout: float | None = None,
            component: str | None = None, settings: Settings | None = None) -> psycopg.Connection:
    """A new connection outside any pool, named for ``component``; raises DatabaseUnavailable naming the target."""
    settings = settings or Settings()
    try:
        conn = psycopg.connect(
            conninfo,
            autocommit=autocommit,
            connect_timeout=max(1, int(timeout or settings.connect_timeout)),
            application_name=appname.application_name(conninfo, component),
        )
    except psycopg.OperationalError as exc:
        raise unavailable(conninfo, exc) from None
    try:
        _configure(conn, settings)
    except psycopg.Error as exc:
        conn.close()
        raise unavailable(conninfo, exc) from None
    return conn


def behind_pooler(conn: psycopg.Connection) -> bool:
    """True when a pooler sits between us and PostgreSQL.

    PgBouncer (and other poolers that share server sessions) hands each client
    a made-up process id at startup; the server session's own differs.
    """
    row = conn.execute("SELECT pg_backend_pid()", prepare=False).fetchone()
    if not conn.autocommit:
        conn.rollback()
    return row is not None and row[0] != conn.info.backend_pid


def _configure(conn: psycopg.Connection, settings: Settings) -> None:
    """No server-side prepared statements when they could land on another session (or when told so)."""
    prepare = settings.prepared_statements
    if prepare is None:
        prepare = not behind_pooler(conn)
    if not prepare:
        conn.prepare_threshold = None


def _alive(conn: psycopg.Connection) -> None:
    """Checkout check without a round trip: closes and raises (the pool then takes another) when stale.

    An idle pooled connection has nothing to read (it LISTENs to nothing). A
    readable socket means the server hung up (restart, failover, terminated
    session) or sent its last words (``FATAL: terminating connection``).
    """
    pgconn = conn.pgconn
    readable = pgconn.status == psycopg.pq.ConnStatus.OK and waiting.readable(pgconn.socket, 0)
    if pgconn.status != psycopg.pq.ConnStatus.OK or readable:
        conn.close()
        raise psycopg.OperationalError("the server closed the connection")


def execute_relaxed(conn: psycopg.Connection, query, params=None) -> psycopg.Cursor:
    """Run one statement whose commit need not wait for the WAL flush (a database crash may undo it).

    Outside a transaction, the setting rides in the statement's own pipeline,
    so it holds for that commit alone, on whatever server session runs it
    (PgBouncer included). Inside a transaction the statement runs as it is.
    """
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        return conn.execute(query, params)
    with conn.pipeline():
        conn.execute(NO_FLUSH_WAIT)
        cursor = conn.execute(query, params)
    return cursor


def unavailable(conninfo: str, exc: BaseException) -> DatabaseUnavailable:
    """Wrap a driver error: the target is named, the password never appears."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DatabaseUnavailable(f"cannot use PostgreSQL at {describe(conninfo)}: {detail}")


def get_pool(conninfo: str, settings: Settings) -> ConnectionPool:
    """The pool for this database, component and connection options, created (and the schema checked) on first use."""
    if (conninfo, settings.schema) not in _ready_schemas:
        prepare_schema(conninfo, settings)
    component = appname.component()
    key = (conninfo, component, runtime.connection_options(settings))
    return runtime.current().get(POOLS, key, lambda: _new_pool(conninfo, component, settings))


def _new_pool(conninfo: str, component: str, settings: Settings) -> ConnectionPool:
    return ConnectionPool(
        conninfo,
        min_size=1,
        max_size=1 if component in THREAD_COMPONENTS else max(1, settings.pool_max_size),
        kwargs={"autocommit": True, "application_name": appname.application_name(conninfo, component)},
        configure=lambda conn: _configure(conn, settings),
        check=_alive,
        timeout=settings.connect_timeout,
        name=f"celery_durable-{os.getpid()}-{component}",
        open=True,
    )


def prepare_schema(conninfo: str, settings: Settings) -> None:
    """Create or check the schema once per process, through a direct connection so errors are immediate."""
    key = (conninfo, settings.schema)
    if key in _ready_schemas:
        return
    with connect(conninfo, settings=settings) as conn:
        ensure_schema(conn, settings.schema, migrate=settings.auto_migrate)
    _ready_schemas.add(key)


def probe(conninfo: str, settings: Settings) -> None:
    """Connect once, directly, so a down server or wrong URL fails now with its cause.

    The first probe in a process also creates or checks the schema; later ones
    (reconnections) also drop dead idle connections from this URL's pools.
    """
    if (conninfo, settings.schema) not in _ready_schemas:
        prepare_schema(conninfo, settings)
    else:
        connect(conninfo, settings=settings).close()
    # A reconnection follows an outage (restart, failover): drop the pools' dead idle
    # connections now, instead of failing on each of them in turn.
    for key, known in runtime.current().find(POOLS):
        target, _component, _options = cast("tuple[str, str, Any]", key)
        if target == conninfo:
            known.check()


@contextmanager
def connection(conninfo: str, settings: Settings) -> Iterator[psycopg.Connection]:
    """A pooled autocommit connection; driver and pool errors become DatabaseUnavailable."""
    pool = get_pool(conninfo, settings)
    try:
        with pool.connection() as conn:
            yield conn
    except PoolTimeout as exc:
        raise unavailable(conninfo, exc) from None
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        if isinstance(exc, psycopg.errors.QueryCanceled):
            raise
        raise unavailable(conninfo, exc) from exc


def close_all() -> None:
    """Close this process's pools (tests, interpreter exit)."""
    for _key, known in runtime.current().take(POOLS):
        known.close()
