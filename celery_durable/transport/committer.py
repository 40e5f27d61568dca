"""Group commit for confirmed publishes: threads publishing at the same time share one commit.

A thread that finds no commit in progress commits its message at once, alone.
Threads that arrive while a commit is in flight queue up; when it returns, the
committer's own thread commits the whole queue in one transaction (one round
trip, one WAL flush) and wakes them. Every ``publish`` still returns only once
its own message is committed. When a statement fails, its group is rolled back
and each member is committed alone, so only the faulty publish raises.

A queued publisher may be interrupted while it waits (``KeyboardInterrupt``, an
exception from a signal handler, a gevent ``Timeout``, a request deadline). The
interruption is raised at once, and the message's fate is settled by where it
stood: still queued, it is withdrawn (never stored), so the caller's view, "not
sent", is true; already taken into a commit in flight, it cannot be taken back,
so that commit goes on and stores it once, and its outcome is logged with the
task id (a note on the exception says so). A group's commit never runs in a
publisher's thread, so one publisher's interruption never cuts the commit of
others, and nothing is left for a publisher that is gone. A publisher
interrupted during its own lone commit is like any interrupted database call:
psycopg cancels the statement on ``KeyboardInterrupt``, and a statement the
server had already committed stays committed.

The consumers' wake-ups are the message trigger's NOTIFYs, inside the commit.
With ``wake_after_commit`` they go in a second, quick transaction in the same
round trip instead: a transaction that NOTIFYs holds a cluster-wide lock until
its commit is flushed, so the commits of publishers in several processes that
NOTIFY inside them cannot share a flush. The second transaction costs each
publish time of its own, which only many producer processes win back.

One committer per database URL, commit mode and connection options in each
process (:mod:`celery_durable.runtime`), shared by every transport (Kombu
gives each pooled producer its own connection and transport).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import psycopg

from .. import runtime
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
    task_id: str = "?"
    #: Made only for a publish that has to wait (a thread that commits at once needs none).
    done: threading.Event | None = None
    error: BaseException | None = None
    #: Its thread was interrupted after a commit took it: the committer logs the outcome.
    abandoned: bool = False


class Committer:
    def __init__(self, conninfo: str, settings: Settings, relaxed: bool) -> None:
        self.conninfo = conninfo
        self.settings = settings
        self.relaxed = relaxed
        self._lock = threading.Lock()
        #: A commit is in flight (a publisher's own, or the committer thread's of a queue).
        self._busy = False
        self._queue: list[_Publish] = []
        #: The queue has been handed to the committer thread.
        self._handed = False
        self._handed_cond = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    def publish(self, query: str, params: dict[str, Any], after_commit: str | None = None,
                wake: str | None = None, task_id: str = "?") -> None:
        """Commit one statement, alone or with those of other threads; raises its own error only.

        ``after_commit`` and ``wake`` are the schema's ``message_wake_after_commit`` and ``message_wake``
        (setting ``wake_after_commit``); without them the trigger NOTIFYs inside the commit. Blocks
        until the commit; an interruption of the wait is raised at once (see the module's docstring).
        """
        mine = _Publish(query, params, after_commit, wake, task_id)
        with self._lock:
            if self._busy:
                mine.done = threading.Event()
                self._queue.append(mine)
            else:
                self._busy = True
        if mine.done is None:
            try:
                self._commit([mine])
            finally:
                self._release()
        else:
            self._wait(mine)
        if mine.error is not None:
            raise mine.error

    def _wait(self, mine: _Publish) -> None:
        """Wait for the commit that takes ``mine``; on an interruption withdraw it, or leave it to that commit."""
        try:
            mine.done.wait()
        except BaseException as exc:
            with self._lock:
                if mine in self._queue:
                    self._queue.remove(mine)
                    note = "its message was withdrawn before any commit took it: it is not stored"
                elif mine.done.is_set():
                    note = ("its message was committed" if mine.error is None
                            else f"its message was not stored: {mine.error}")
                else:
                    mine.abandoned = True
                    note = "its message was already in a commit in flight: that commit's outcome is logged"
            if hasattr(exc, "add_note"):
                exc.add_note(f"celery_durable: publish of task {mine.task_id} interrupted; {note}")
            raise

    def _release(self) -> None:
        """After a lone commit: hand the queue that formed meanwhile to the committer thread, or go idle."""
        with self._lock:
            if not self._queue:
                self._busy = False
                return
            self._handed = True
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="celery-durable-committer", daemon=True)
                self._thread.start()
            self._handed_cond.notify()

    def _run(self) -> None:
        """The committer thread: commit each queue handed to it in one transaction, until none forms."""
        while True:
            with self._lock:
                while not self._handed:
                    self._handed_cond.wait()
                group, self._queue = self._queue, []
                if not group:
                    self._handed = self._busy = False
                    continue
            try:
                self._commit(group)
            finally:
                self._finish(group)

    def _finish(self, group: list[_Publish]) -> None:
        """Wake the group's members; report the outcome of those whose threads were interrupted."""
        with self._lock:
            for member in group:
                if member.abandoned:
                    if member.error is None:
                        logger.warning("publish of task %s was interrupted while its commit was in flight; "
                                       "it is committed", member.task_id)
                    else:
                        logger.warning("publish of task %s was interrupted while its commit was in flight; "
                                       "it is not stored: %s", member.task_id, member.error)
                member.done.set()

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


def committer(conninfo: str, settings: Settings) -> Committer:
    """The committer for this URL, commit mode and connection options in this process (a forked child gets its own)."""
    relaxed = not settings.synchronous_commit
    key = (conninfo, relaxed, runtime.connection_options(settings))
    return runtime.current().get("committer", key, lambda: Committer(conninfo, settings, relaxed))
