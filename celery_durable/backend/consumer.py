"""Wake ``AsyncResult.get()``, joins and ``get_many`` with LISTEN/NOTIFY instead of polling.

Celery makes one backend, so one :class:`ResultConsumer`, per thread; they
share the process's :class:`~celery_durable.backend.listener.Listener`. A
wait (``get()``, ``join_native``/``iter_native``, ``get_many``) holds the
channels of the tasks it waits for: its first step LISTENs on them and reads
their current state in one round trip, then it reads NOTIFYs (the task id,
or the id with the meta itself, see :mod:`.notify`) until they are ready,
and releases the channels when it ends, however it ends. Registering a
pending result (``delay()``, a group's members) costs nothing on the
database: a process that never waits never listens.
"""

from __future__ import annotations

import builtins
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from celery import states
from celery.backends.asynchronous import BaseResultConsumer, greenletDrainer
from celery.exceptions import TimeoutError

from ..exceptions import DatabaseUnavailable
from . import notify
from .listener import Listener, get_listener


def _awaited_ids(result: Any) -> list[str]:
    """The ids a wait on ``result`` (an AsyncResult or a ResultSet) needs: those not ready yet."""
    members = getattr(result, "results", None)
    if members is None:
        return [] if result._cache else [str(result.id)]
    return [str(r.id) for r in members if hasattr(r, "_cache") and not r._cache]


class ResultConsumer(BaseResultConsumer):
    """Celery's result consumer for PostgresBackend: resolves pending results on NOTIFY."""

    #: Set by Celery's consumer; a wait swaps in its own for its length.
    on_message: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._consuming: set[str] = set()
        self._held: Counter[str] = Counter()  # ids whose channels this consumer's waits hold
        self._to_subscribe: set[str] = set()  # greenlet drainers: ids the next drain subscribes
        self._drained: set[str] = set()  # greenlet drainers: ids subscribed until ready or cancelled
        self._inbox: dict[str, tuple | None] = {}
        self._inbox_lock = threading.Lock()
        self._listener: Listener | None = None
        self._epoch = 0
        self._connection_errors = (DatabaseUnavailable,)

    def _get_listener(self) -> Listener:
        listener = self._listener
        if listener is None or listener.pid != os.getpid():
            backend = self.backend
            listener = get_listener(backend.conninfo, backend.settings)
            listener.register(self)
            self._listener = listener
        return listener

    def _channels(self, ids: list[str]) -> list[str]:
        schema = self.backend.settings.schema
        # Version 1 workers notify the schema's one channel: heard while waiting, during an upgrade.
        return [notify.legacy_channel(schema), *(notify.channel(schema, i) for i in ids)]

    # -- Celery's interface ------------------------------------------------------------------------

    def start(self, initial_task_id: str, **kwargs: Any) -> None:
        self.consume_from(initial_task_id)

    def consume_from(self, task_id: str) -> None:
        """Remember that a result object waits for ``task_id``; no database work (a wait LISTENs).

        Under eventlet or gevent a drainer greenlet drains all the time, so that
        ``then()`` callbacks fire without a wait: there the id is subscribed by
        the next drain, until it is ready or cancelled.
        """
        task_id = str(task_id)
        self._consuming.add(task_id)
        if isinstance(self.drainer, greenletDrainer):
            with self._inbox_lock:
                if task_id not in self._drained:
                    self._to_subscribe.add(task_id)

    def cancel_for(self, task_id: str) -> None:
        # Runs from AsyncResult.__del__: never blocks (an UNLISTEN goes out only if the connection is free).
        task_id = str(task_id)
        self._consuming.discard(task_id)
        with self._inbox_lock:
            self._to_subscribe.discard(task_id)
            drained = task_id in self._drained
            self._drained.discard(task_id)
        if drained:
            self._release([task_id])

    def on_after_fork(self) -> None:
        self._listener = None
        self._consuming = set()
        self._held = Counter()
        self._to_subscribe = set()
        self._drained = set()
        self._inbox = {}
        self._inbox_lock = threading.Lock()

    def on_state_change(self, meta: dict, message: Any) -> None:
        super().on_state_change(meta, message)
        if meta["status"] in states.READY_STATES:
            self.cancel_for(meta["task_id"])

    def _wait_for_pending(self, result: Any, timeout: float | None = None, on_interval: Any = None,
                          on_message: Any = None, **kwargs: Any) -> Iterator[None]:
        """Celery's wait loop, holding the channels of ``result``'s pending ids while it runs.

        Two differences, both for speed: a thread does not ``sleep(0)`` after
        each wake (a yield only greenlets need; on Linux it waits out the timer
        slack), and once ``result`` is ready its ancestors' states (Celery reads
        each parent's before returning, see ``AsyncResult.get``) are read in one
        query instead of one each.
        """
        ids = _awaited_ids(result)
        if on_interval is not None and getattr(result, "parent", None) is not None:
            on_interval = self._reading_parents_first(result, on_interval)
        with self._holding(ids):
            if isinstance(self.drainer, greenletDrainer):
                yield from super()._wait_for_pending(result, timeout=timeout, on_interval=on_interval,
                                                     on_message=on_message, **kwargs)
                return
            self.on_wait_for_pending(result, timeout=timeout, **kwargs)
            previous = self.on_message
            self.on_message = on_message
            try:
                yield from self.drain_events_until(result.on_ready, timeout=timeout, on_interval=on_interval)
            except builtins.TimeoutError:
                raise TimeoutError("The operation timed out.") from None
            finally:
                self.on_message = previous

    def _reading_parents_first(self, result: Any, on_interval: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            if result.on_ready.ready:
                self._read_parents(result)
            on_interval()
        return run

    def _read_parents(self, result: Any) -> None:
        """Cache the stored states of ``result``'s ancestors not known to be ready, read in one query."""
        waiting: dict[str, list[Any]] = {}
        node = result.parent
        while node is not None:
            for member in getattr(node, "results", None) or [node]:
                if getattr(member, "_cache", False) is None:  # an AsyncResult not known to be ready
                    waiting.setdefault(str(member.id), []).append(member)
            node = getattr(node, "parent", None)
        if waiting:
            for task_id, meta in self.backend._get_metas(list(waiting)).items():
                for member in waiting[task_id]:
                    member._maybe_set_cache(meta)

    def on_wait_for_pending(self, result: Any, **kwargs: Any) -> None:
        """First step of a wait: LISTEN and read the current states, in one round trip."""
        ids = _awaited_ids(result)
        if not ids:
            return
        for meta in self._subscribe(ids).values():
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
        if self._to_subscribe:
            with self._inbox_lock:
                ids, self._to_subscribe = sorted(self._to_subscribe), set()
                self._drained.update(ids)
            self._acquire(ids)
            for meta in self._subscribe(ids).values():
                self.on_state_change(meta, None)
        for meta in self._fetch(self._next_ids(1.0 if timeout is None else timeout)).values():
            self.on_state_change(meta, None)

    # -- waiting -------------------------------------------------------------------------------------

    def _acquire(self, ids: list[str]) -> None:
        """Hold the channels of ``ids``: LISTENed from the next subscription on."""
        if ids:
            self._get_listener().acquire(self._channels(ids))
            self._held.update(ids)

    def _release(self, ids: list[str]) -> None:
        """Stop holding the channels of ``ids``.

        Never blocks: the UNLISTEN goes out now only if the connection is free.
        """
        if not ids:
            return
        self._held.subtract(ids)
        for task_id in [t for t, n in self._held.items() if n <= 0]:
            del self._held[task_id]
        listener = self._listener
        if listener is not None and listener.pid == os.getpid():
            listener.release(self._channels(ids))
            listener.unlisten_nowait()

    @contextmanager
    def _holding(self, ids: list[str]) -> Iterator[None]:
        """Hold the channels of ``ids`` for the block, however it ends (a collected generator included)."""
        self._acquire(ids)
        try:
            yield
        finally:
            self._release(ids)

    def _subscribe(self, ids: list[str]) -> dict[str, dict]:
        """LISTEN on the held channels and read the states of ``ids``: ``{task_id: meta}`` of those stored."""
        listener = self._get_listener()
        backend = self.backend
        try:
            rows = listener.subscribe(backend.queries["result_get_many"], ids)
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as exc:
            raise backend.schema_error(exc) from None
        if self._held.keys() <= set(ids):
            # This read saw every id awaited here after its LISTEN: nothing was missed, even across a reconnect.
            self._epoch = listener.epoch
        return {task_id: backend._decode_meta(ct, ce, meta) for task_id, ct, ce, meta in rows}

    def deliver(self, ids: dict[str, tuple | None]) -> None:
        """Called by the reading thread: keep the ids (and inline metas) this consumer waits for."""
        wanted = [task_id for task_id in ids if task_id in self._consuming or task_id in self._held]
        if wanted:
            with self._inbox_lock:
                self._inbox.update((task_id, ids[task_id]) for task_id in wanted)

    def _take_inbox(self) -> dict[str, tuple | None]:
        with self._inbox_lock:
            ids, self._inbox = self._inbox, {}
        return ids

    def _next_ids(self, timeout: float) -> dict[str, tuple | None]:
        """Ids notified for this consumer within ``timeout`` s (all held ids after a reconnect)."""
        listener = self._get_listener()
        ids = self._take_inbox()
        if not ids and self._epoch == listener.epoch:
            listener.wait(timeout)
            ids = self._take_inbox()
        if self._epoch != listener.epoch:
            # (Re)connected since we last looked: NOTIFYs may have been lost.
            self._epoch = listener.epoch
            for task_id in list(self._held):
                ids.setdefault(task_id, None)
        return ids

    def _fetch(self, ids: dict[str, tuple | None]) -> dict[str, dict]:
        """Metas of notified ids: decoded from the NOTIFY, else read in one query."""
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
        for task_id, meta in metas.items():
            meta.setdefault("task_id", task_id)
        return metas

    def wait_for_ids(self, ids: set[str], *, timeout: float | None, interval: float,
                     on_message: Callable | None, on_interval: Callable | None,
                     max_iterations: int | None) -> Iterator[tuple[str, dict]]:
        """Yield ``(task_id, meta)`` as each of ``ids`` becomes ready (``get_many``), waiting on NOTIFY.

        Raises celery's TimeoutError after ``timeout`` s; stops after
        ``max_iterations`` waits of up to ``interval`` s when that is set.
        """
        pending = set(ids)
        started = time.monotonic()
        iterations = 0
        with self._holding(sorted(pending)):
            metas = self._subscribe(sorted(pending))
            while True:
                for task_id, meta in metas.items():
                    if task_id in pending and meta["status"] in states.READY_STATES:
                        pending.discard(task_id)
                        self.backend._cache[task_id] = meta
                        if on_message is not None:
                            on_message(meta)
                        yield task_id, meta
                if not pending:
                    return
                if max_iterations and iterations >= max_iterations:
                    return
                remaining = None if timeout is None else timeout - (time.monotonic() - started)
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"Operation timed out ({timeout})")
                if on_interval:
                    on_interval()
                wait = interval if remaining is None else min(interval, remaining)
                metas = self._fetch(self._next_ids(wait))
                for task_id, meta in metas.items():
                    if task_id not in pending:  # another wait of this thread's: resolve it as drain_events does
                        self.on_state_change(meta, None)
                iterations += 1
