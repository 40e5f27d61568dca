"""Pipelined publishes (``confirm_publish: False``): written to the server, committed in groups.

One connection per transport, in libpq's pipeline mode. :meth:`Pipeline.send`
writes the publish's statement into the socket and returns without waiting
for an answer. Statements are committed by Syncs, each Sync ending one
implicit transaction: when the server has answered everything before, the
Sync follows the statement at once; while a commit is in flight, further
statements wait in the process, in an open group that goes out with its Sync
as soon as that commit's answer arrives (on the next publish, or from a small
thread while publishing has paused; it also reads the answers). A statement is
never written ahead of its Sync, so a pooler in transaction mode never parts it
from its transaction. So an idle server commits each
publish alone, and a busy one commits many at once, sharing one WAL flush and
one NOTIFY.

At most ``DEPTH`` publishes are unanswered; the next one waits for the oldest
answer. That bounds what a crash of the client process loses: the open group
has not left the process, and PostgreSQL abandons the statements it has not
run yet once it finds its client gone, so the unanswered publishes may be lost
although they reached the server. :meth:`Pipeline.flush` waits
for every answer: the transport flushes when its connection closes, before
it counts, purges or gets messages, :func:`flush_all` (``celery_durable.flush_publishes``)
on demand, and :func:`close_all` at interpreter exit, when a multiprocessing
child ends and when a Celery pool process ends. Nothing waits in the process between publishes, so releasing a
producer to Kombu's pool needs no flush.

A slow server is not a dead one: while it does not answer (a lock the
inserts wait on, a synchronous standby that stalls, an I/O spike) the
publishes wait for it, however long, and a warning says so once it has been
silent for ``connect_timeout``. Only a lost connection gives up on them: the
server hanging up, or the connection's TCP keepalives (the URL's
``keepalives_*`` parameters) finding the peer dead.

A statement the server refuses fails alone: it is logged (ERROR, with its task
id) as soon as its answer is read, the others of its group are sent again, and
:func:`flush_all` (``flush_publishes()``) raises
:class:`~celery_durable.exceptions.PublishFailed` naming it. No other publish
raises it: the caller of a later ``delay()`` did not make it, and its own
message is sent. A lost connection raises DatabaseUnavailable (Celery
reconnects and retries the publish at hand) and logs the task ids whose fate
is unknown.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import os
import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from time import monotonic
from typing import Any

import psycopg
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer

from .. import runtime
from ..config import Settings
from ..db import pool, waiting
from ..exceptions import DatabaseUnavailable, PublishFailed

logger = logging.getLogger(__name__)

#: Most publishes left unanswered; the next publish waits for the oldest answer. A crash of the client
#: process can lose at most these.
DEPTH = 64
#: Seconds the closer thread waits for an answer before looking again (it wakes on any answer).
CLOSER_POLL = 1.0
#: Refused publishes kept (with their errors) for the next flush to name; more are only counted.
FAILED_KEPT = 100

#: Starts a relaxed group: that commit alone skips the WAL flush wait, on whatever server session runs
#: it (PgBouncer included).
NO_FLUSH_WAIT = pool.NO_FLUSH_WAIT.encode()

_PLACEHOLDER = re.compile(r"%\((\w+)\)s")
_FATAL = pq.ExecStatus.FATAL_ERROR
_SYNCED = pq.ExecStatus.PIPELINE_SYNC


def positional(query: str) -> tuple[bytes, list[str]]:
    """``%(name)s`` placeholders as ``$n`` (the protocol's own), with the names in order."""
    names: list[str] = []

    def number(match: re.Match) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return _PLACEHOLDER.sub(number, query).replace("%%", "%").encode(), names


def _error_text(result: pq.abc.PGresult) -> str:
    """``SQLSTATE: primary message`` of a failed statement."""
    fields = pq.DiagnosticField
    state = (result.error_field(fields.SQLSTATE) or b"").decode()
    message = (result.error_field(fields.MESSAGE_PRIMARY) or result.error_message or b"").decode(errors="replace")
    return f"{state}: {message.strip()}" if state else message.strip()


@dataclass(eq=False)
class _Publish:
    sql: bytes
    values: list
    types: tuple
    formats: list
    task_id: str


@dataclass(eq=False)
class _Group:
    """Statements committed by one Sync; ``failed`` is the first one the server refused."""

    publishes: list[_Publish] = field(default_factory=list)
    failed: _Publish | None = None
    error: str | None = None


class Pipeline:
    """A connection in pipeline mode that publishes without waiting; one thread at a time inside."""

    def __init__(self, conninfo: str, settings: Settings) -> None:
        self.conninfo = conninfo
        #: Commits skip the WAL flush wait (``synchronous_commit`` off).
        self.relaxed = not settings.synchronous_commit
        #: Seconds of silence from the server after which a warning says the publishes wait for it.
        self.patience = settings.connect_timeout
        self.pid = os.getpid()
        self.closed = False
        #: The connection loss the closer thread found, for the next publish to raise.
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._conn = pool.connect(conninfo, settings=settings)
        self._pg = self._conn.pgconn
        self._tx = Transformer.from_context(self._conn)
        self._queries: dict[str, tuple[bytes, list[str]]] = {}
        #: Answers the server owes, in order: (group, publish or None) per statement, (group, "sync") per Sync.
        self._expected: deque[tuple[_Group, Any]] = deque()
        self._open: _Group | None = None
        self._in_flight = 0  # groups whose Sync is written and not yet answered
        self._unanswered = 0  # publishes not yet answered (open group included)
        self._resend: list[_Publish] = []
        #: Refused publishes not yet raised by a flush: (task id, error); ``_failed_more`` counts the rest.
        self._failed: list[tuple[str, str]] = []
        self._failed_more = 0
        #: When the server last went silent while publishes waited for it (None: it answers).
        self._silent_since: float | None = None
        self._closer: threading.Thread | None = None
        self._pg.enter_pipeline_mode()
        _register(self)

    def send(self, query: str, params: dict[str, Any], task_id: str) -> None:
        """Write one publish without waiting for its commit.

        Blocks while ``DEPTH`` publishes are unanswered (a slow server: for as
        long as it is slow). Raises DatabaseUnavailable when the connection is
        lost (this message is then not sent); never for another publish's refusal.
        """
        sql, names = self._positional(query)
        with self._lock:
            if self.closed:
                error, self.error = self.error, None
                raise error or DatabaseUnavailable("the publish pipeline is closed")
            values = self._tx.dump_sequence([params[n] for n in names], [PyFormat.AUTO] * len(names))
            publish = _Publish(sql, values, self._tx.types, self._tx.formats, task_id)
            self._guard(lambda: self._wait(lambda: self._unanswered < DEPTH))
            self._guard(lambda: self._write(publish))
            if self._closer is None:
                self._closer = threading.Thread(target=self._run_closer, name="celery-durable-publish", daemon=True)
                self._closer.start()
            self._wake.notify()

    def settle(self) -> None:
        """Commit the open group and wait for every answer (refusals stay for :meth:`flush` to raise)."""
        with self._lock:
            if not self.closed and (self._unanswered or self._resend):  # nothing owed: no round trip
                self._guard(lambda: self._wait(lambda: not self._unanswered))

    def flush(self) -> None:
        """:meth:`settle`, then raise PublishFailed naming the publishes refused since the last flush."""
        self.settle()
        with self._lock:
            self._raise_failed()

    def close(self) -> None:
        """Wait for every answer, then close the connection (only in the process that opened it).

        Refusals not raised yet are kept for the process's next ``flush_publishes()``.
        """
        if os.getpid() != self.pid:
            return  # a forked child must not touch its parent's session
        try:
            self.settle()
        finally:
            with self._lock:
                if not self.closed:
                    self.closed = True
                    self._conn.close()
                self._wake.notify_all()
                failed, more, self._failed, self._failed_more = self._failed, self._failed_more, [], 0
            _unregister(self, failed, more)

    # -- inside the lock ------------------------------------------------------------------------

    def _positional(self, query: str) -> tuple[bytes, list[str]]:
        found = self._queries.get(query)
        if found is None:
            found = self._queries[query] = positional(query)
        return found

    def _guard(self, step: Callable[[], None]) -> None:
        """Run an I/O step; a driver or socket error means the connection is lost."""
        try:
            step()
        except (psycopg.Error, OSError) as exc:
            self._lose(exc)

    def _write(self, publish: _Publish) -> None:
        """Add a statement to the open group; the group goes now if no commit is in flight."""
        if self._open is None:
            self._open = _Group()
        self._open.publishes.append(publish)
        self._unanswered += 1
        self._collect()
        self._sync_open()

    def _sync_open(self) -> None:
        """Send the open group with its Sync once no commit is in flight.

        Its statements go only together with their Sync, and only one group is in
        flight: PgBouncer in transaction mode hands the server back to its pool at
        an idle ReadyForQuery unless a Sync it has already read is unanswered, and
        a statement already written to that server (a second group whose Sync it
        has not read yet) would run in the next client's transaction, its answer
        never coming back.
        """
        group = self._open
        if group is None or self._in_flight:
            return
        pg = self._pg
        if self.relaxed:
            pg.send_query_params(NO_FLUSH_WAIT, None)
            self._expected.append((group, None))
        for publish in group.publishes:
            pg.send_query_params(publish.sql, publish.values, param_types=publish.types, param_formats=publish.formats)
            self._expected.append((group, publish))
        pg.pipeline_sync()
        self._expected.append((group, "sync"))
        self._open = None  # only now: a send that fails leaves the group for _lose to name
        self._in_flight += 1
        self._push()

    def _push(self) -> None:
        """Push libpq's output buffer into the socket, reading answers meanwhile (the server may wait on us)."""
        pg = self._pg
        while pg.flush() == 1:
            if self._await_server(write=True):
                self._collect()

    def _wait(self, done: Callable[[], bool]) -> None:
        """Read answers until ``done()``, for as long as the server takes."""
        while True:
            self._collect()
            self._sync_open()
            if done():
                return
            self._await_server(write=False)

    def _await_server(self, write: bool) -> bool:
        """Wait until the socket is readable (or writable, with ``write``); whether it is readable.

        A server silent for ``patience`` seconds is logged as slow, once per silence, and waited for.
        """
        sock = self._pg.socket
        readable, writable = waiting.ready((sock,), (sock,) if write else (), self.patience)
        if readable or writable:
            if self._silent_since is not None:
                logger.warning("the server answers pipelined publishes again after %.0f s",
                               monotonic() - self._silent_since)
                self._silent_since = None
            return bool(readable)
        if self._silent_since is None:
            self._silent_since = monotonic() - self.patience
            logger.warning("the server has not answered %d pipelined publish(es) for %.0f s; waiting for it "
                           "(they are not given up: only a lost connection loses them)",
                           self._unanswered, self.patience)
        return False

    def _collect(self) -> None:
        """Read every answer that has arrived, without blocking; resend the innocent of a failed group."""
        pg = self._pg
        pg.consume_input()
        while self._expected and not pg.is_busy():
            result = pg.get_result()
            group, what = self._expected[0]
            if what == "sync":
                if result is None:
                    break  # the Sync's answer has not arrived yet
                if result.status == _SYNCED:
                    self._expected.popleft()
                    self._in_flight -= 1
                    self._unanswered -= len(group.publishes)
                    if group.error is not None:
                        self._refused(group)
            elif result is None:
                self._expected.popleft()  # the end of one statement's results
            elif result.status == _FATAL and group.error is None:
                group.failed = what
                group.error = _error_text(result)
        if self._resend:
            again, self._resend = self._resend, []
            for publish in again:
                self._write(publish)

    def _refused(self, group: _Group) -> None:
        """One statement failed, so its group rolled back: log it, send the others again."""
        failed = [group.failed] if group.failed is not None else list(group.publishes)
        for publish in failed:
            logger.error("publish of task %s failed, its message is not stored: %s", publish.task_id, group.error)
            if len(self._failed) < FAILED_KEPT:
                self._failed.append((publish.task_id, group.error or "refused"))
            else:
                self._failed_more += 1
        self._resend.extend(p for p in group.publishes if p not in failed)

    def _raise_failed(self) -> None:
        if self._failed:
            failed, more, self._failed, self._failed_more = self._failed, self._failed_more, [], 0
            raise PublishFailed.of(failed, more)

    def _lose(self, exc: BaseException):
        """The connection is gone: log what may be lost, close, raise DatabaseUnavailable."""
        groups = list(dict.fromkeys([*(group for group, _ in self._expected), *([self._open] if self._open else [])]))
        unknown = [p.task_id for group in groups for p in group.publishes] + [p.task_id for p in self._resend]
        if unknown:
            logger.error("connection lost before the server answered %d publish(es); they may be lost: tasks %s",
                         len(unknown), ", ".join(unknown))
        self._expected.clear()
        self._open, self._resend, self._in_flight, self._unanswered = None, [], 0, 0
        self.closed = True
        self._wake.notify_all()
        try:
            self._conn.close()
        except Exception:  # closing a broken connection must not mask the cause
            pass
        failed, more, self._failed, self._failed_more = self._failed, self._failed_more, [], 0
        _unregister(self, failed, more)
        raise pool.unavailable(self.conninfo, exc) from exc

    # -- the closer thread ------------------------------------------------------------------------

    def _run_closer(self) -> None:
        """While publishing pauses: send an open group's Sync once the commit in flight is answered, and
        read answers as they come (a refused publish is logged at once)."""
        while True:
            with self._lock:
                while not self.closed and not self._unanswered and not self._resend:
                    self._wake.wait()
                if self.closed:
                    return
                sock = self._pg.socket
            try:
                waiting.readable(sock, CLOSER_POLL)
            except (OSError, ValueError):
                return  # closed meanwhile
            with self._lock:
                if self.closed:
                    return
                try:
                    self._guard(lambda: (self._collect(), self._sync_open()))
                except Exception as exc:  # logged by _lose; the next publish raises it
                    self.error = exc
                    return


class Ledger:
    """The pipelines of one process (:mod:`celery_durable.runtime`), and the refusals of those that closed.

    It holds its pipelines strongly: a forked child keeps its parent's runtime, so the parent's
    pipelines are never collected and libpq never sends a Terminate on the parent's sockets.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[Pipeline] = set()
        #: Refusals of pipelines that closed before a flush raised them: (task id, error); ``_more`` counts the rest.
        self._failed: list[tuple[str, str]] = []
        self._more = 0
        self._exit_hooked = False

    def add(self, pipeline: Pipeline) -> None:
        with self._lock:
            self._live.add(pipeline)
            if not self._exit_hooked:
                # A multiprocessing child ends in os._exit(), past atexit, after running these.
                self._exit_hooked = True
                multiprocessing.util.Finalize(None, close_all, exitpriority=100)

    def remove(self, pipeline: Pipeline, failed: list[tuple[str, str]] = (), more: int = 0) -> None:
        """Forget a closed pipeline; its refusals not raised yet wait for the next :meth:`take`."""
        with self._lock:
            self._live.discard(pipeline)
            room = max(0, FAILED_KEPT - len(self._failed))
            self._failed.extend(failed[:room])
            self._more += more + max(0, len(failed) - room)

    def live(self) -> list[Pipeline]:
        with self._lock:
            return list(self._live)

    def take(self) -> tuple[list[Pipeline], list[tuple[str, str]], int]:
        """The live pipelines, and the closed ones' refusals (given out once) with the count of the others."""
        with self._lock:
            refused, more = self._failed, self._more
            self._failed, self._more = [], 0
            return list(self._live), refused, more


def ledger() -> Ledger:
    """This process's ledger (a forked child starts with an empty one: its parent's refusals are not its own)."""
    return runtime.current().get("pipelines", None, Ledger)


def _register(pipeline: Pipeline) -> None:
    ledger().add(pipeline)


def _unregister(pipeline: Pipeline, failed: list[tuple[str, str]] = (), more: int = 0) -> None:
    ledger().remove(pipeline, failed, more)


def flush_all() -> None:
    """Wait until the server answered every pipelined publish of this process.

    Raises PublishFailed naming the refused ones (each was also logged), or
    DatabaseUnavailable when a connection was lost (the unconfirmed task ids
    were logged).
    """
    mine, refused, more = ledger().take()
    failure: BaseException | None = None
    for pipeline in mine:
        try:
            pipeline.flush()
        except PublishFailed as exc:
            refused += exc.failures
            more += exc.more
        except Exception as exc:
            failure = failure or exc
    if failure is not None:
        raise failure
    if refused:
        raise PublishFailed.of(refused, more)


def close_all() -> None:
    """Wait for the answers of every pipeline of this process, then close them (exit, pool child shutdown)."""
    for pipeline in ledger().live():
        try:
            pipeline.close()
        except Exception as exc:  # at exit: report, never raise
            logger.error("pipelined publishes not confirmed at exit: %s", exc)


# A prefork pool child leaves through os._exit(), past atexit: Celery's worker_process_shutdown is its
# last word (celery_durable.lifecycle).
atexit.register(close_all)
