"""The LISTEN connection of a process: it listens only on the channels of results someone waits for.

PostgreSQL keeps one NOTIFY queue per cluster. A session listening on a
channel that matches nothing in it advances over the queue without writing
to its client; a session sent matching notifications that its client never
reads blocks in ``ClientWrite`` and holds the queue's tail, until the queue
is full and every NOTIFY in the cluster fails. So a channel is LISTENed only
while a ``get()``, join or ``get_many`` waits on it (reference counts per
channel), and UNLISTENed when the last wait on it ends: a process that only
publishes never listens, and a waiting one hears its own results only.

A wait subscribes in one round trip: ``BEGIN; LISTEN …; COMMIT;`` and the
state read, in one simple-protocol message. The LISTEN commits before the
read takes its snapshot, so a result stored in between is seen by one or the
other. UNLISTENs are sent without waiting for the reply (read before the
connection's next use), or ride with the next subscription when the
connection is busy: ending a wait never blocks, even from a garbage
collector. After a reconnect every wanted channel is LISTENed again and the
epoch changes, so consumers re-read what they wait for.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

import psycopg
from psycopg import ClientCursor

from .. import runtime
from ..config import Settings
from ..db import dsn, listen, pool, waiting
from ..exceptions import DatabaseUnavailable
from . import notify

if TYPE_CHECKING:
    from .consumer import ResultConsumer

logger = logging.getLogger(__name__)

#: Attempts (with doubling sleeps from 0.2 s) to re-establish a lost LISTEN connection before get() raises.
RECONNECT_ATTEMPTS_DEFAULT = 6

#: The runtime's kind of listeners, keyed by (LISTEN URL, runtime.connection_options(settings)).
LISTENERS = "result-listener"


def get_listener(conninfo: str, settings: Settings) -> Listener:
    """This process's listener for a database and connection options (a forked child gets its own)."""
    target = dsn.from_url(settings.listen_url) if settings.listen_url else conninfo
    key = (target, runtime.connection_options(settings))
    return runtime.current().get(LISTENERS, key, lambda: Listener(target, settings))


def close_all() -> None:
    """Close this process's listeners (tests, interpreter exit)."""
    for _key, listener in runtime.current().take(LISTENERS):
        listener.close()


def _commands(verb: str, channels: Iterable[str]) -> list[str]:
    """``LISTEN "<channel>"`` (or another verb) per channel, in a stable order.

    Plain strings: composing them with psycopg.sql cost every get() more client
    CPU than its read. A channel is quoted as an identifier (``"`` doubled).
    """
    return [f'{verb} "{ch.replace(chr(34), chr(34) * 2)}"' for ch in sorted(channels)]


class Listener:
    """One connection that LISTENs on the channels waited for; fans notified task ids out to consumers."""

    def __init__(self, conninfo: str, settings: Settings) -> None:
        self.conninfo = conninfo
        self.settings = settings
        self.pid = os.getpid()
        #: Bumped on every (re)connect: consumers then re-read everything they wait for.
        self.epoch = 0
        self._conn: psycopg.Connection | None = None
        #: Held by whoever uses the connection (a read, a subscription, a sent UNLISTEN).
        self._use = threading.Lock()
        self._counts_lock = threading.Lock()
        self._wanted: Counter[str] = Counter()  # channel -> waits on it
        self._listening: set[str] = set()  # committed on the server
        self._unread = 0  # UNLISTENs sent whose replies were not read yet
        self._reading = False  # the connection's holder is blocked reading (not subscribing)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._read_done = threading.Condition()
        self._reads = 0
        self._consumers: weakref.WeakSet[ResultConsumer] = weakref.WeakSet()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        self._listening = set()

    def register(self, consumer: ResultConsumer) -> None:
        self._consumers.add(consumer)

    @property
    def listening(self) -> frozenset[str]:
        """The channels LISTENed on the server now (for tests and diagnostics)."""
        return frozenset(self._listening)

    # -- which channels are wanted ---------------------------------------------------------------

    def acquire(self, channels: Iterable[str]) -> None:
        """Count one more wait on each channel; the LISTEN goes out with the next :meth:`subscribe`."""
        with self._counts_lock:
            self._wanted.update(channels)

    def release(self, channels: Iterable[str]) -> None:
        """Count one wait less on each channel; never blocks (the UNLISTEN is sent later)."""
        with self._counts_lock:
            self._wanted.subtract(channels)
            for ch in [ch for ch, n in self._wanted.items() if n <= 0]:
                del self._wanted[ch]

    def _changes(self) -> tuple[set[str], set[str]]:
        with self._counts_lock:
            wanted = set(self._wanted)
        return wanted - self._listening, self._listening - wanted

    # -- using the connection ----------------------------------------------------------------------

    def _take(self) -> None:
        """Take the connection, waking a thread blocked reading it."""
        if not self._use.acquire(blocking=False):
            try:
                self._wake_w.send(b"\0")
            except OSError:
                pass  # a byte is already waiting: the reader will wake
            self._use.acquire()

    def _connection(self) -> psycopg.Connection:
        conn = self._conn
        if conn is None or conn.closed:
            self._connect()
            conn = self._conn
            assert conn is not None  # _connect() set it, or raised
        self._settle(conn)
        return conn

    def _connect(self) -> None:
        conn = listen.connect(self.conninfo, self.settings, "result-listener")
        with self._counts_lock:
            wanted = set(self._wanted)
        try:
            if wanted:
                conn.execute("; ".join(_commands("LISTEN", wanted)))
        except psycopg.Error as exc:
            conn.close()
            raise pool.unavailable(self.conninfo, exc) from None
        self._conn, self._listening, self._unread = conn, wanted, 0
        self.epoch += 1

    def _settle(self, conn: psycopg.Connection) -> None:
        """Read the replies of UNLISTENs sent without waiting; keep notifications that came with them."""
        pgconn = conn.pgconn
        while self._unread:
            while pgconn.is_busy():
                waiting.readable(pgconn.socket, self.settings.connect_timeout)
                pgconn.consume_input()
            if pgconn.get_result() is None:
                self._unread -= 1
        while (n := pgconn.notifies()) is not None:
            if pgconn.notify_handler:
                pgconn.notify_handler(n)  # psycopg's backlog: conn.notifies() returns them first

    def _lost(self, exc: BaseException) -> None:
        logger.warning("celery_durable: result listener lost its connection (%s); reconnecting",
                       str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        conn, self._conn = self._conn, None
        self._listening = set()
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection must not mask the error
                pass

    def _reconnect(self) -> None:
        delay = 0.2
        for attempt in range(1, RECONNECT_ATTEMPTS_DEFAULT + 1):
            try:
                self._connect()
                logger.info("celery_durable: result listener reconnected")
                return
            except DatabaseUnavailable:
                if attempt == RECONNECT_ATTEMPTS_DEFAULT:
                    raise
                logger.warning("celery_durable: result listener reconnect %d failed; retrying", attempt)
                time.sleep(delay)
                delay *= 2

    def subscribe(self, read: str, ids: list[str]) -> list[tuple]:
        """LISTEN on the wanted channels, UNLISTEN the rest, then run ``read`` (``%s``: ``ids``); one round trip.

        Returns the rows of ``read``. Blocks; raises DatabaseUnavailable when
        the database cannot be reached, psycopg errors of ``read`` as they are.
        """
        self._take()
        try:
            for attempt in (1, 2):
                try:
                    return self._subscribe(self._connection(), read, ids)
                except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                    if attempt == 2:
                        raise pool.unavailable(self.conninfo, exc) from None
                    self._lost(exc)
                    self._reconnect()
            raise AssertionError("unreachable")
        finally:
            self._use.release()

    def _subscribe(self, conn: psycopg.Connection, read: str, ids: list[str]) -> list[tuple]:
        listen, unlisten = self._changes()
        parts: list[str] = []
        if listen or unlisten:
            # Committed before the read's snapshot: a result stored in between reaches us one way or the other.
            parts = ["BEGIN", *_commands("UNLISTEN", unlisten), *_commands("LISTEN", listen), "COMMIT"]
        query = "; ".join([*parts, read])
        cur = ClientCursor(conn)
        try:
            cur.execute(query, (ids,))
        except psycopg.Error:
            if not conn.closed:
                # The read failed (e.g. a dropped schema): learn which channel changes committed.
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.execute("ROLLBACK")
                self._listening = {r[0] for r in conn.execute("SELECT pg_listening_channels()")}
            raise
        self._listening = (self._listening - unlisten) | listen
        while cur.nextset():
            pass
        return cur.fetchall()

    def unlisten_nowait(self) -> None:
        """Send the UNLISTENs of channels nobody waits on any more, without waiting for the reply.

        Never blocks: when another thread uses the connection, it sends them
        itself (with its next subscription, or before its next read).
        """
        if not self._use.acquire(blocking=False):
            return
        try:
            self._send_unlisten()
        finally:
            self._use.release()

    def _send_unlisten(self) -> None:
        conn = self._conn
        _, unlisten = self._changes()
        if not unlisten or conn is None or conn.closed:
            return
        query = "; ".join(_commands("UNLISTEN", unlisten)).encode()
        try:
            conn.pgconn.send_query(query)
            conn.pgconn.flush()
        except psycopg.Error as exc:
            self._lost(exc)  # the next user reconnects, listening only to what is wanted then
            return
        self._unread += 1
        self._listening -= unlisten

    # -- reading notifications -----------------------------------------------------------------------

    def wait(self, timeout: float) -> None:
        """Block up to ``timeout`` s for NOTIFYs and deliver them; while another thread reads, wait for its read."""
        with self._read_done:
            reads = self._reads
        if not self._use.acquire(blocking=False):
            if self._reading:  # its read delivers to every consumer: wait for it
                with self._read_done:
                    if self._reads == reads:
                        self._read_done.wait(timeout)
                return
            self._use.acquire()  # a subscription or an UNLISTEN: short; then read here
        ids: dict[str, tuple | None] = {}
        self._reading = True
        try:
            ids = self._read(timeout)  # task id -> inline meta or None
        finally:
            self._reading = False
            self._use.release()
            with self._read_done:
                self._reads += 1
                self._read_done.notify_all()
        if ids:
            for consumer in list(self._consumers):
                consumer.deliver(ids)

    def _read(self, timeout: float) -> dict[str, tuple | None]:
        try:
            conn = self._connection()
            self._send_unlisten()  # its reply is read before the next query; notifications still flow
            # In commit order: a later state of the same task replaces an earlier one.
            ids = dict(notify.parse(n.payload) for n in conn.notifies(timeout=0))
            if not ids and timeout > 0:
                sock, wake = conn.pgconn.socket, self._wake_r.fileno()
                ready, _ = waiting.ready((sock, wake), (), timeout)
                if wake in ready:  # another thread wants the connection
                    try:
                        while self._wake_r.recv(64):
                            pass
                    except OSError:
                        pass
                if sock in ready:
                    ids = dict(notify.parse(n.payload) for n in conn.notifies(timeout=0))
            return ids
        except (psycopg.Error, OSError, ValueError) as exc:
            self._lost(exc)
            self._reconnect()
            return {}
