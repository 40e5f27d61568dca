"""Transactional enqueue: publish inside the caller's own database transaction.

``with in_transaction(conn): task.delay()`` makes the message an ordinary row
insert on ``conn``: invisible until the caller commits, gone if it rolls
back. ``conn`` may be a psycopg 3 connection, a SQLAlchemy ``Connection`` or
``Session`` (any driver with a DB-API cursor). The database must be the one
the broker URL points at.

Only the caller's own publishes join. What Celery publishes on a task's
behalf (``on_behalf()``: retry, replace, add_to_chord; see
:mod:`celery_durable.behalf`) commits on its own: the exception that follows
(Retry, Ignore) would roll the caller's transaction back and take the
message with it, while the task's own message is acked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_current: ContextVar[Any] = ContextVar("celery_durable_transaction", default=None)
_behalf: ContextVar[bool] = ContextVar("celery_durable_on_behalf", default=False)
#: Integrations that know of an open transaction elsewhere (Django's atomic()): called with the
#: broker's conninfo when no in_transaction() block is active; the first connection returned wins.
_finders: list[Callable[[str], Any]] = []


@contextmanager
def in_transaction(conn: Any) -> Iterator[Any]:
    """Route every publish on the postgresql:// broker in this block through ``conn``.

    Does not commit or roll back: that stays the caller's decision. Publishes
    to other brokers are unaffected.
    """
    token = _current.set(_driver_connection(conn))
    behalf = _behalf.set(False)  # the innermost block decides
    try:
        yield conn
    finally:
        _behalf.reset(behalf)
        _current.reset(token)


@contextmanager
def on_behalf() -> Iterator[None]:
    """Publishes in this block are Celery's on a task's behalf: each commits on its own, joining nothing."""
    token = _behalf.set(True)
    try:
        yield
    finally:
        _behalf.reset(token)


def current_connection(conninfo: str | None = None) -> Any:
    """The connection a publish to the broker at ``conninfo`` joins, or None (publish on its own)."""
    if _behalf.get():
        return None
    conn = _current.get()
    if conn is not None or conninfo is None:
        return conn
    for find in _finders:
        conn = find(conninfo)
        if conn is not None:
            return conn
    return None


def add_finder(find: Callable[[str], Any]) -> None:
    """Let ``find(conninfo)`` offer an open transaction's connection to publishes (once per function)."""
    if find not in _finders:
        _finders.append(find)


def execute(conn: Any, query: str, params: dict) -> None:
    """Run one statement on a psycopg 3 connection or a DB-API connection."""
    cursor = conn.cursor()
    try:
        cursor.execute(query, params)
    finally:
        cursor.close()


def _driver_connection(conn: Any) -> Any:
    """The DB-API connection under a SQLAlchemy Session or Connection (or ``conn`` itself)."""
    if hasattr(conn, "get_bind") and hasattr(conn, "connection") and callable(conn.connection):
        conn = conn.connection()  # Session: joins (or begins) the session's transaction
    if hasattr(conn, "in_transaction") and hasattr(conn, "begin") and not conn.in_transaction():
        # A SQLAlchemy Connection that has not begun: begin now, or its commit() would be a
        # no-op and our insert would roll back when the connection goes back to the pool.
        conn.begin()
    raw = getattr(conn, "connection", None)
    if raw is not None and hasattr(raw, "driver_connection"):
        return raw.driver_connection  # SQLAlchemy Connection -> pool proxy -> DB-API connection
    if hasattr(conn, "cursor"):
        return conn
    raise TypeError(
        f"in_transaction() needs a psycopg connection or a SQLAlchemy Connection/Session, got {type(conn)!r}")
