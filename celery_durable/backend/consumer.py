"""Wake ``AsyncResult.get()`` with LISTEN/NOTIFY instead of polling.

A :class:`Listener` owns one dedicated LISTEN connection per process,
database and channel (``<schema>.result``; payload: a task id, or the id with
the meta itself, see :mod:`.notify`). One thread at a time reads it and hands
the ids to every :class:`ResultConsumer` of the process (Celery makes one
backend per thread); each consumer keeps the ids it waits for, fetches the
metas that did not come inline in one query and resolves its results.
Waiters listen before they read the current state, so no result is missed;
after a reconnect every consumer re-reads all the ids it waits for, since
NOTIFYs sent while disconnected are lost.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Any

import psycopg
from celery import states
from celery.backends.asynchronous import BaseResultConsumer
from psycopg import sql

from ..config import Settings
from ..db import dsn, pool
from ..exceptions import DatabaseUnavailable
from . import notify

logger = logging.getLogger(__name__)

#: Attempts (with doubling sleeps from 0.2 s) to re-establish a lost LISTEN connection before get() raises.
RECONNECT_ATTEMPTS_DEFAULT = 6

_lock = threading.Lock()
_listeners: dict[tuple[str, str, int], "Listener"] = {}


def get_listener(conninfo: str, channel: str, settings: Settings) -> "Listener":
    """This process's listener for a database and channel (a forked child gets its own)."""
    key = (conninfo, channel, os.getpid())
    listener = _listeners.get(key)
    if listener is None:
        with _lock:
            listener = _listeners.get(key)
            if listener is None:
                # A parent's listeners stay referenced (never closed) so their sockets are left alone.
                listener = _listeners[key] = Listener(conninfo, channel, settings)
    return listener


def close_all() -> None:
    """Close this process's listeners (tests, interpreter exit)."""
    pid = os.getpid()
    with _lock:
        for key in [k for k in _listeners if k[2] == pid]:
            _listeners.pop(key).close()


class Listener:
    """One LISTEN connection; fans the notified task ids out to the consumers of this process."""

    def __init__(self, conninfo: str, channel: str, settings: Settings) -> None:
        self.conninfo = dsn.from_url(settings.listen_url) if settings.listen_url else conninfo
        self.channel = channel
        self.settings = settings
        self.pid = os.getpid()
        #: Bumped on every (re)connect: consumers then re-read everything they wait for.
        self.epoch = 0
        self._conn: psycopg.Connection | None = None
        self._connect_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._read_done = threading.Condition()
        self._reads = 0
        self._consumers: "weakref.WeakSet[ResultConsumer]" = weakref.WeakSet()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def register(self, consumer: "ResultConsumer") -> None:
        self._consumers.add(consumer)

    def ensure(self) -> None:
        """Connect and LISTEN unless already done; raises DatabaseUnavailable (no password in it)."""
        conn = self._conn
        if conn is not None and not conn.closed:
            return
        with self._connect_lock:
            conn = self._conn
            if conn is None or conn.closed:
                self._connect()

    def _connect(self) -> None:
        conn = pool.connect(self.conninfo, timeout=self.settings.connect_timeout)
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except psycopg.Error as exc:
            conn.close()
            raise pool.unavailable(self.conninfo, exc) from None
        self._conn = conn
        self.epoch += 1

    def _reconnect(self) -> None:
        delay = 0.2
        for attempt in range(1, RECONNECT_ATTEMPTS_DEFAULT + 1):
            try:
                with self._connect_lock:
                    self._connect()
                logger.info("celery_durable: result listener reconnected")
                return
            except DatabaseUnavailable:
                if attempt == RECONNECT_ATTEMPTS_DEFAULT:
                    raise
                logger.warning("celery_durable: result listener reconnect %d failed; retrying", attempt)
                time.sleep(delay)
                delay *= 2

    def wait(self, timeout: float) -> None:
        """Block up to ``timeout`` s for NOTIFYs and deliver them; while another thread reads, wait for its read."""
        with self._read_done:
            reads = self._reads
        if not self._read_lock.acquire(blocking=False):
            with self._read_done:
                if self._reads == reads:
                    self._read_done.wait(timeout)
            return
        try:
            ids = self._read(timeout)  # task id -> inline meta or None
            if ids:
                for consumer in list(self._consumers):
                    consumer.deliver(ids)
        finally:
            self._read_lock.release()
            with self._read_done:
                self._reads += 1
                self._read_done.notify_all()

    def _read(self, timeout: float) -> dict[str, tuple | None]:
        conn = self._conn
        try:
            if conn is None or conn.closed:
                raise psycopg.OperationalError("listen connection closed")
            # In commit order: a later state of the same task replaces an earlier one.
            ids = dict(notify.parse(n.payload) for n in conn.notifies(timeout=timeout, stop_after=1))
            if ids:  # whatever else already arrived, without waiting
                ids.update(notify.parse(n.payload) for n in conn.notifies(timeout=0))
            return ids
        except psycopg.Error as exc:
            logger.warning("celery_durable: result listener lost its connection (%s); reconnecting",
                           str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001
                    pass
            self._conn = None
            self._reconnect()
            return {}


class ResultConsumer(BaseResultConsumer):
    """Celery's result consumer for PostgresBackend: resolves pending results on NOTIFY."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._consuming: set[str] = set()
        self._inbox: dict[str, tuple | None] = {}
        self._inbox_lock = threading.Lock()
        self._listener: Listener | None = None
        self._epoch = 0
        self._connection_errors = (DatabaseUnavailable,)

    def _get_listener(self) -> Listener:
        listener = self._listener
        if listener is None or listener.pid != os.getpid():
            backend = self.backend
            listener = get_listener(backend.conninfo, backend.channel, backend.settings)
            listener.register(self)
            self._listener = listener
        return listener

    def deliver(self, ids: dict[str, tuple | None]) -> None:
        """Called by the reading thread: keep the ids (and inline metas) this consumer waits for."""
        wanted = ids.keys() & self._consuming
        if wanted:
            with self._inbox_lock:
                self._inbox.update((task_id, ids[task_id]) for task_id in wanted)

    def _take_inbox(self) -> dict[str, tuple | None]:
        with self._inbox_lock:
            ids, self._inbox = self._inbox, {}
        return ids

    def start(self, initial_task_id: str, **kwargs: Any) -> None:
        self.consume_from(initial_task_id)

    def consume_from(self, task_id: str) -> None:
        listener = self._get_listener()
        listener.ensure()
        if not self._consuming:
            self._epoch = listener.epoch  # nothing awaited yet, so nothing was missed
        self._consuming.add(str(task_id))

    def cancel_for(self, task_id: str) -> None:
        # Runs from AsyncResult.__del__: never blocks, never touches the connection.
        self._consuming.discard(str(task_id))

    def on_after_fork(self) -> None:
        self._listener = None
        self._consuming = set()
        self._inbox = {}
        self._inbox_lock = threading.Lock()

    def on_state_change(self, meta: dict, message: Any) -> None:
        super().on_state_change(meta, message)
        if meta["status"] in states.READY_STATES:
            self.cancel_for(meta["task_id"])

    def on_wait_for_pending(self, result: Any, **kwargs: Any) -> None:
        # Already listening (consume_from ran when the result became pending): read the current state once.
        for meta in result._iter_meta(**kwargs):
            if meta is not None:
                self.on_state_change(meta, None)
                if meta["status"] in (states.SUCCESS, states.FAILURE):
                    # as Redis: a ready meta buffered for nobody would leak
                    try:
                        buf = self._pending_messages.pop(meta["task_id"])
                    except KeyError:
                        pass
                    else:
                        self._pending_messages.total -= len(buf)

    def drain_events(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` s for NOTIFYs about awaited tasks and resolve them; raises DatabaseUnavailable."""
        listener = self._get_listener()
        listener.ensure()
        ids = self._take_inbox()
        if not ids and self._epoch == listener.epoch:
            listener.wait(1.0 if timeout is None else timeout)
            ids = self._take_inbox()
        if self._epoch != listener.epoch:
            # (Re)connected since we last looked: NOTIFYs may have been lost.
            self._epoch = listener.epoch
            for task_id in self._consuming:
                ids.setdefault(task_id, None)
        if ids:
            self._dispatch(ids)

    def _dispatch(self, ids: dict[str, tuple | None]) -> None:
        metas, missing = {}, []
        for task_id, inline in ids.items():
            if inline is not None:
                try:
                    metas[task_id] = self.backend._decode_meta(*inline)
                    continue
                except Exception:  # noqa: BLE001 - not decodable here: read the row as without it
                    pass
            missing.append(task_id)
        metas.update(self.backend._get_metas(missing))
        for task_id in ids:
            meta = metas.get(task_id)
            if meta is not None:
                meta.setdefault("task_id", task_id)
                self.on_state_change(meta, None)
