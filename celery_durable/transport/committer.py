"""Group commit for confirmed publishes: threads publishing at the same time share one commit.

A thread that finds no commit in progress commits its message at once, alone.
Threads that arrive while a commit is in flight queue up; when it returns, the
first of them commits the whole queue in one transaction (one round trip, one
WAL flush) and wakes the others. Every ``publish`` still returns only once its
own message is committed. When a statement fails, its group is rolled back and
each member is committed alone, so only the faulty publish raises.

The consumers' wake-ups are the message trigger's NOTIFYs, inside the commit.
With ``wake_after_commit`` they go in a second, quick transaction in the same
round trip instead: a transaction that NOTIFYs holds a cluster-wide lock until
its commit is flushed, so the commits of publishers in several processes that
NOTIFY inside them cannot share a flush. The second transaction costs each
publish time of its own, which only many producer processes win back.

One committer per database URL, commit mode and process, shared by every
transport (Kombu gives each pooled producer its own connection and transport).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

import psycopg

from ..config import Settings
from ..db import pool

logger = logging.getLogger(__name__)

_IDLE = psycopg.pq.TransactionStatus.IDLE


@dataclass(eq=False)
class _Publish:
    query: str
    params: dict[str, Any]
    #: The schema's queries that defer the wake-up to after the commit, and send it (``wake_after_commit``).
    after_commit: str | None = None
    wake: str | None = None
    #: Made only for a publish that has to wait (a thread that commits at once needs none).
    done: threading.Event | None = None
    error: BaseException | None = None
    #: Set when this publish's thread is to commit a queued group (it heads it).
    group: list["_Publish"] | None = None


class Committer:
    def __init__(self, conninfo: str, settings: Settings, relaxed: bool) -> None:
        self.conninfo = conninfo
        self.settings = settings
        self.relaxed = relaxed
        self._lock = threading.Lock()
        self._busy = False
        self._queue: list[_Publish] = []

    def publish(self, query: str, params: dict[str, Any], after_commit: str | None = None,
                wake: str | None = None) -> None:
        """Commit one statement, alone or with those of other threads; raises its own error only.

        ``after_commit`` and ``wake`` are the schema's ``message_wake_after_commit`` and ``message_wake``
        (setting ``wake_after_commit``); without them the trigger NOTIFYs inside the commit.
        """
        mine = _Publish(query, params, after_commit, wake)
        with self._lock:
            if self._busy:
                mine.done = threading.Event()
                self._queue.append(mine)
            else:
                self._busy = True
                mine.group = [mine]
        if mine.group is None:
            mine.done.wait()  # a leader commits it, or hands this thread a group to commit
            if mine.group is None:
                if mine.error is not None:
                    raise mine.error
                return
        self._lead(mine.group)
        if mine.error is not None:
            raise mine.error

    def _lead(self, group: list[_Publish]) -> None:
        """Commit ``group``, wake its members, then hand the queue that formed meanwhile to its head."""
        try:
            self._commit(group)
        finally:
            for member in group[1:]:
                member.done.set()
            with self._lock:
                queued, self._queue = self._queue, []
                if queued:
                    queued[0].group = queued
                    queued[0].done.set()
                else:
                    self._busy = False

    def _commit(self, group: list[_Publish]) -> None:
        try:
            with pool.connection(self.conninfo, self.settings) as conn:
                if len(group) > 1:
                    try:
                        self._transaction(conn, group)
                        return
                    except psycopg.Error:
                        if conn.closed or conn.broken:
                            raise
                for member in group:  # alone, or each alone after a refused statement
                    try:
                        self._transaction(conn, [member])
                    except psycopg.Error as exc:
                        if conn.closed or conn.broken:
                            raise
                        member.error = exc
        except BaseException as exc:  # the connection is lost (or worse): nobody's message is known stored
            for member in group:
                if member.error is None:
                    member.error = exc

    def _transaction(self, conn: psycopg.Connection, members: list[_Publish]) -> None:
        """Commit ``members`` in one transaction, their wake-ups (``wake_after_commit``) in a second: one round trip.

        The wake-ups (the trigger's NOTIFYs) leave the durable commit, whose flush would otherwise
        hold PostgreSQL's NOTIFY lock. Behind a pooler the second transaction may run on another
        server session, which has not the stash: there the trigger notifies inside the commit.
        """
        asking = next((m for m in members if m.wake), None) if conn.prepare_threshold is not None else None
        if asking is None and len(members) == 1:  # one autocommit statement: the least client work
            if self.relaxed:
                pool.execute_relaxed(conn, members[0].query, members[0].params)
            else:
                conn.execute(members[0].query, members[0].params)
            return
        committed = None
        try:
            with conn.pipeline():
                conn.execute("BEGIN")
                if asking is not None:
                    conn.execute(asking.after_commit)
                if self.relaxed:
                    conn.execute(pool.NO_FLUSH_WAIT)
                for member in members:
                    conn.execute(member.query, member.params)
                committed = conn.execute("COMMIT")
                if asking is not None:
                    conn.execute(asking.wake)
        except psycopg.Error as exc:
            result = committed.pgresult if committed is not None else None
            if result is not None and result.status == psycopg.pq.ExecStatus.COMMAND_OK:
                logger.warning("published, but the wake-up failed (consumers find the messages at their next "
                               "poll): %s", exc)
                return
            if not (conn.closed or conn.broken) and conn.info.transaction_status != _IDLE:
                conn.execute("ROLLBACK")
            raise


_committers: dict[tuple[str, bool, int], Committer] = {}
_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread of the parent may have held it at the fork


os.register_at_fork(after_in_child=_after_fork_in_child)


def committer(conninfo: str, settings: Settings) -> Committer:
    """The committer for this URL and commit mode in this process (a forked child gets its own)."""
    relaxed = not settings.synchronous_commit
    key = (conninfo, relaxed, os.getpid())
    found = _committers.get(key)
    if found is None:
        with _lock:
            found = _committers.setdefault(key, Committer(conninfo, settings, relaxed))
    return found
