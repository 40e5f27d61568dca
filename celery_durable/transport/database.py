"""The transport's way to PostgreSQL: pooled connections and its named queries.

Two targets share the process's pools with the result backend: the URL as
given, and the same URL with ``synchronous_commit=off`` for writes a database
crash may undo harmlessly (claims, lease renewals, requeues, acks: an undone
one only makes a message deliverable again).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import psycopg

from ..config import Settings
from ..db import dsn, pool, queries
from .notifier import channel_name


class Database:
    def __init__(self, conninfo: str, settings: Settings) -> None:
        self.conninfo = conninfo
        self.lease_conninfo = dsn.relaxed(conninfo)
        self.listen_conninfo = dsn.from_url(settings.listen_url) if settings.listen_url else conninfo
        self.settings = settings
        self.queries = queries.load("celery_durable.transport", "queries.sql", settings.schema)
        #: The NOTIFY channel of message wake-ups (a string, not an identifier).
        self.notify_channel = channel_name(settings.schema)

    @contextmanager
    def connection(self, relaxed: bool = False) -> Iterator[psycopg.Connection]:
        """A pooled autocommit connection; ``relaxed``: its commits do not wait for the WAL flush."""
        with pool.connection(self.lease_conninfo if relaxed else self.conninfo, self.settings) as conn:
            yield conn

    def execute(self, query: str, /, relaxed: bool = False, **params: Any) -> None:
        with self.connection(relaxed) as conn:
            conn.execute(self.queries[query], params)

    def fetchone(self, query: str, /, relaxed: bool = False, **params: Any) -> Any:
        with self.connection(relaxed) as conn:
            return conn.execute(self.queries[query], params).fetchone()

    def fetchall(self, query: str, /, relaxed: bool = False, **params: Any) -> list:
        with self.connection(relaxed) as conn:
            return conn.execute(self.queries[query], params).fetchall()

    def exchange_type(self, name: str) -> str | None:
        row = self.fetchone("exchange_type", name=name)
        return row[0] if row else None
