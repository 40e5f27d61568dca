"""Operate dead letters: list, requeue and purge the messages the transport set aside.

A message becomes a dead letter when it was delivered more often than
``max_deliveries`` or could not be decoded. Each function takes a psycopg 3
connection to the broker's database and the transport's schema. On a
connection that is not in autocommit mode (psycopg's default, Django's
``atomic()``) it joins the caller's transaction, open or begun, and the caller
commits or rolls back; on an autocommit connection each call commits, a
requeue as one transaction. ``ids=None`` selects every dead letter
(of ``queue``, when given). Payloads are never decoded here: a dead letter may
hold what no worker would accept.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from .db import fetch, queries
from .transport.publish import clamp_priority

__all__ = ["DeadLetter", "Requeued", "list_dead_letters", "purge_dead_letters", "requeue_dead_letters"]


@dataclass(frozen=True)
class DeadLetter:
    id: int
    queue: str
    task: str | None
    reason: str
    delivery_count: int
    dead_at: datetime


@dataclass(frozen=True)
class Requeued:
    """A dead letter back in its queue, under the id of its new message."""

    dead_letter_id: int
    message_id: int
    queue: str


def list_dead_letters(conn: psycopg.Connection, schema: str, *, ids: Sequence[int] | None = None,
                      queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
    """Dead letters in id order, at most ``limit``."""
    return fetch.execute_as(conn, DeadLetter, _queries(schema)["dead_letter_list"],
                            {**_selection(ids, queue), "limit": limit}).fetchall()


@dataclass(frozen=True)
class _Taken:
    """A dead letter a requeue removed (``dead_letter_take``): what goes back to its queue."""

    id: int
    queue: str
    task: str | None
    payload: str
    created_at: datetime


def requeue_dead_letters(conn: psycopg.Connection, schema: str, *, ids: Sequence[int] | None = None,
                         queue: str | None = None) -> list[Requeued]:
    """Move dead letters back to their queues in one transaction, in id order; their delivery count starts again.

    The priority is read again from the payload (the dead letter does not keep
    it; an unreadable one gets 0); the message TTL is not restored, so a
    requeued message does not expire at once. A queue that expired meanwhile
    is created again, so the message shows in ``queues``.
    """
    q = _queries(schema)
    moved = []
    with _atomic(conn):
        taken = fetch.execute_as(conn, _Taken, q["dead_letter_take"], _selection(ids, queue)).fetchall()
        for dead in sorted(taken, key=lambda row: row.id):
            message_id = fetch.value(conn.execute(q["message_restore"], {
                "queue": dead.queue, "priority": _payload_priority(dead.payload), "task": dead.task,
                "payload": dead.payload, "created_at": dead.created_at}))
            moved.append(Requeued(dead.id, message_id, dead.queue))
    return moved


def purge_dead_letters(conn: psycopg.Connection, schema: str, *, ids: Sequence[int] | None = None,
                       queue: str | None = None) -> list[int]:
    """Delete dead letters; return the ids deleted, in order."""
    return sorted(row[0] for row in conn.execute(_queries(schema)["dead_letter_purge"], _selection(ids, queue)))


def _atomic(conn: psycopg.Connection) -> AbstractContextManager[Any]:
    """A savepoint in the caller's open transaction, or a transaction of its own in autocommit mode.

    An idle connection not in autocommit mode begins the caller's transaction and leaves it open
    (psycopg's ``transaction()`` would commit it).
    """
    if not conn.autocommit and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        return nullcontext()
    return conn.transaction()


def _queries(schema: str) -> dict[str, str]:
    return queries.load("celery_durable.transport", "queries.sql", schema)


def _selection(ids: Sequence[int] | None, queue: str | None) -> dict[str, Any]:
    return {"ids": None if ids is None else [int(i) for i in ids], "queue": queue}


def _payload_priority(payload: str) -> int:
    """The priority the message was published with, as the publish clamped it (0 when unreadable)."""
    try:
        properties = json.loads(payload).get("properties", {})
        return clamp_priority(properties.get("priority"))
    except (ValueError, TypeError, AttributeError):
        return 0
