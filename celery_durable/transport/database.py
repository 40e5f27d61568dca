"""The transport's way to PostgreSQL: pooled connections and its named queries.

The transport shares the process's pool for its URL with the result backend.
Writes a database crash may undo harmlessly (claims, lease renewals, requeues,
acks: an undone one only makes a message deliverable again) run ``relaxed``:
their commits do not wait for the WAL flush (set per statement, so it works
through PgBouncer, see :func:`celery_durable.db.pool.execute_relaxed`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from ..config import Settings
from ..db import dsn, pool, queries
from .notifier import channel_name


class Database:
    def __init__(self, conninfo: str, settings: Settings) -> None:
        self.conninfo = conninfo
        self.listen_conninfo = dsn.from_url(settings.listen_url) if settings.listen_url else conninfo
        self.settings = settings
        self.queries = queries.load("celery_durable.transport", "queries.sql", settings.schema)
        #: The NOTIFY channel of message wake-ups (a string, not an identifier).
        self.notify_channel = channel_name(settings.schema)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled autocommit connection."""
        with pool.connection(self.conninfo, self.settings) as conn:
            yield conn

    def run(self, conn: psycopg.Connection, query: str, params: Any, relaxed: bool = False) -> psycopg.Cursor:
        """Execute a named query on ``conn``; ``relaxed``: its commit does not wait for the WAL flush."""
        if relaxed:
            return pool.execute_relaxed(conn, self.queries[query], params)
        return conn.execute(self.queries[query], params)

    def execute(self, query: str, /, relaxed: bool = False, **params: Any) -> None:
        with self.connection() as conn:
            self.run(conn, query, params, relaxed)

    def fetchone(self, query: str, /, relaxed: bool = False, **params: Any) -> Any:
        with self.connection() as conn:
            return self.run(conn, query, params, relaxed).fetchone()

    def fetchall(self, query: str, /, relaxed: bool = False, **params: Any) -> list:
        with self.connection() as conn:
            return self.run(conn, query, params, relaxed).fetchall()

    def exchange_type(self, name: str) -> str | None:
        row = self.fetchone("exchange_type", name=name)
        return row[0] if row else None
