"""Where a durable chain's rows live, and whether its steps can move atomically.

Checkpoints always live in the result backend's database and schema. When the
broker is our transport on that same database and schema, a step's checkpoint,
the next step's message and the removal of its own message commit in one
transaction ("atomic" mode). Otherwise (Redis, RabbitMQ) the next message is
sent right after the commit, and a sweep re-sends what a crash lost.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg

from ..config import Settings
from ..db import pool, queries
from ..exceptions import WorkflowError


@dataclass
class Store:
    app: Any
    backend: Any
    conninfo: str
    settings: Settings
    atomic: bool

    @property
    def queries(self) -> dict[str, str]:
        return queries.load("celery_durable.workflow", "queries.sql", self.settings.schema)

    @classmethod
    def for_app(cls, app: Any) -> Store:
        """The store of ``app`` (cached); raises WorkflowError without a postgresql:// result backend."""
        store = getattr(app, "_celery_durable_store", None)
        if store is not None and store.backend is app.backend:
            return store
        from ..backend import PostgresBackend
        from ..transport import Transport

        backend = app.backend
        if not isinstance(backend, PostgresBackend):
            raise WorkflowError(
                "durable_chain keeps its checkpoints in PostgreSQL: set result_backend = 'postgresql://…'"
            )
        with app.connection_for_write() as conn:
            transport = conn.transport
        atomic = (
            isinstance(transport, Transport)
            and transport.conninfo == backend.conninfo
            and transport.settings.schema == backend.settings.schema
        )
        store = cls(app, backend, backend.conninfo, backend.settings, atomic)
        app._celery_durable_store = store
        return store

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        with pool.connection(self.conninfo, self.settings) as conn:
            yield conn

    def borrow(self) -> psycopg.Connection:
        """A pooled connection kept across a step's body; give it back with ``release``."""
        return pool.get_pool(self.conninfo, self.settings).getconn()

    def release(self, conn: psycopg.Connection) -> None:
        pool.get_pool(self.conninfo, self.settings).putconn(conn)
