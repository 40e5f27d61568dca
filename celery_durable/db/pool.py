"""One psycopg pool per (database, process): shared by transport, backend and durable chains.

Pools are keyed by pid because a forked child (Celery prefork) cannot use
its parent's pool: the pool's threads did not survive the fork and its
sockets belong to the parent's sessions. The parent's pool object is kept
referenced in the child, never closed or collected, so libpq never sends a
Terminate on the parent's sockets.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager
from typing import Iterator

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from ..config import Settings
from ..exceptions import DatabaseUnavailable
from .dsn import describe
from .migrate import ensure_schema

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_pools: dict[tuple[str, int], ConnectionPool] = {}
_inherited: list[ConnectionPool] = []
_ready_schemas: set[tuple[str, str]] = set()


def connect(conninfo: str, *, autocommit: bool = True, timeout: float | None = None) -> psycopg.Connection:
    """A new connection outside any pool; raises DatabaseUnavailable naming the target."""
    try:
        return psycopg.connect(
            conninfo,
            autocommit=autocommit,
            connect_timeout=max(1, int(timeout or Settings().connect_timeout)),
        )
    except psycopg.OperationalError as exc:
        raise unavailable(conninfo, exc) from None


def unavailable(conninfo: str, exc: BaseException) -> DatabaseUnavailable:
    """Wrap a driver error: the target is named, the password never appears."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DatabaseUnavailable(f"cannot use PostgreSQL at {describe(conninfo)}: {detail}")


def get_pool(conninfo: str, settings: Settings) -> ConnectionPool:
    """The pool for this database in this process, created (and the schema checked) on first use."""
    if (conninfo, settings.schema) not in _ready_schemas:
        prepare_schema(conninfo, settings)
    key = (conninfo, os.getpid())
    pool = _pools.get(key)
    if pool is not None:
        return pool
    with _lock:
        pool = _pools.get(key)
        if pool is None:
            _forget_inherited()
            pool = ConnectionPool(
                conninfo,
                min_size=1,
                max_size=max(1, settings.pool_max_size),
                kwargs={"autocommit": True},
                timeout=settings.connect_timeout,
                name=f"celery_durable-{os.getpid()}",
                open=True,
            )
            _pools[key] = pool
    return pool


def prepare_schema(conninfo: str, settings: Settings) -> None:
    """Create or check the schema once per process, through a direct connection so errors are immediate."""
    key = (conninfo, settings.schema)
    if key in _ready_schemas:
        return
    with connect(conninfo, timeout=settings.connect_timeout) as conn:
        ensure_schema(conn, settings.schema, migrate=settings.auto_migrate)
    _ready_schemas.add(key)


def probe(conninfo: str, settings: Settings) -> None:
    """Connect once, directly, so a down server or wrong URL fails now with its cause.

    The first probe in a process also creates or checks the schema.
    """
    if (conninfo, settings.schema) not in _ready_schemas:
        prepare_schema(conninfo, settings)
    else:
        connect(conninfo, timeout=settings.connect_timeout).close()


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


def _forget_inherited() -> None:
    """After a fork, move the parent's pools aside without touching their sockets."""
    pid = os.getpid()
    for key in [k for k in _pools if k[1] != pid]:
        _inherited.append(_pools.pop(key))


def close_all() -> None:
    """Close this process's pools (tests, interpreter exit)."""
    pid = os.getpid()
    with _lock:
        for key in [k for k in _pools if k[1] == pid]:
            _pools.pop(key).close()
