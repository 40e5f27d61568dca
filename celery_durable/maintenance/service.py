"""The maintenance service: batched expiry under one policy, and periodic chores, in a thread of its own.

Policy, the same for every component:

- one process at a time per database and schema: each batch runs in its own
  short transaction that first takes a transaction-scoped try-lock (works
  through PgBouncer's transaction mode); a process that finds it taken ends
  its run instead of queueing behind another;
- batches of at most :data:`BATCH_ROWS` rows, which skip rows other sessions
  have locked, so a delete never waits for a claim, an ack or a renewal;
- at most :data:`RUN_SECONDS` per run (the remaining time also bounds each
  statement); what is left waits for the next run.

Components hand in their work with :meth:`Maintenance.attach`: :class:`Expiry`
objects (batched deletes, written by the component, in its own ``.sql`` file)
and :class:`Chore` objects (VACUUM, the durable sweep) with their own interval.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from time import monotonic
from typing import Any, Callable, Hashable, Iterable, Mapping

import psycopg

from ..config import Settings
from ..db import pool, queries

logger = logging.getLogger(__name__)

#: Most rows one batch deletes (one short transaction).
BATCH_ROWS = 1000
#: Longest a run of the service spends on expiry; the rest waits for the next run.
RUN_SECONDS = 5.0


@dataclass(frozen=True)
class Expiry:
    """A batched delete: ``query`` removes at most ``%(limit)s`` rows past their time, skipping locked rows."""

    name: str
    query: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Chore:
    """Periodic work that is not a batched delete; runs in the service's thread every ``interval`` seconds."""

    name: str
    run: Callable[[], object]
    interval: float


class Maintenance:
    """The maintenance of one database and schema in this process."""

    def __init__(self, conninfo: str, settings: Settings) -> None:
        self.conninfo = conninfo
        self.settings = settings
        self.queries = queries.load("celery_durable.maintenance", "queries.sql", settings.schema)
        self.lock_key = f"celery_durable:{settings.schema}:maintenance"
        self._owners: dict[Hashable, tuple[float, list[Expiry], list[Chore]]] = {}
        self._owners_lock = threading.Lock()
        self._due: dict[str, float] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        #: Set after each run of the thread (tests wait on it instead of sleeping).
        self.ran = threading.Event()

    # -- owners -----------------------------------------------------------------------------------

    def attach(self, owner: Hashable, expiries: Iterable[Expiry] = (), chores: Iterable[Chore] = (),
               interval: float | None = None) -> None:
        """Add ``owner``'s work (expiries every ``interval`` s, default ``maintenance_interval``) and run the thread."""
        with self._owners_lock:
            every = self.settings.maintenance_interval if interval is None else interval
            self._owners[owner] = (every, list(expiries), list(chores))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="celery-durable-maintenance", daemon=True)
                self._thread.start()
            else:
                self._wake.set()  # new work: run it now

    def detach(self, owner: Hashable) -> None:
        """Remove ``owner``'s work; the thread ends with the last owner."""
        with self._owners_lock:
            self._owners.pop(owner, None)
            if not self._owners:
                self._wake.set()

    def owned(self) -> bool:
        return bool(self._owners)

    def expiries(self) -> list[Expiry]:
        """Every owner's expiries, each name once."""
        with self._owners_lock:
            found = {e.name: e for _, expiries, _ in self._owners.values() for e in expiries}
        return list(found.values())

    def chores(self) -> list[Chore]:
        with self._owners_lock:
            found = {c.name: c for _, _, chores in self._owners.values() for c in chores}
        return list(found.values())

    def interval(self) -> float:
        with self._owners_lock:
            return min((every for every, _, _ in self._owners.values()), default=self.settings.maintenance_interval)

    # -- running ----------------------------------------------------------------------------------

    def run(self) -> dict[str, int]:
        """One run: the expiries (bounded by RUN_SECONDS), then every chore that is due; returns rows deleted."""
        deleted = self.expire(self.expiries(), deadline=monotonic() + RUN_SECONDS)
        now = monotonic()
        for chore in self.chores():
            if self._due.get(chore.name, 0.0) > now:
                continue
            self._due[chore.name] = now + chore.interval
            try:
                chore.run()
            except Exception as exc:  # the next round retries
                logger.warning("celery_durable maintenance: %s failed: %s", chore.name, exc)
        return deleted

    def expire(self, expiries: Iterable[Expiry], *, deadline: float | None, wait: bool = False,
               batches: int | None = None) -> dict[str, int]:
        """Delete expired rows in batches, taking turns between expiries; returns rows deleted per name.

        Stops when nothing is left, at ``deadline`` (monotonic; None: never), after
        ``batches`` batches per expiry, or (unless ``wait``) when another process
        holds the maintenance lock. Blocks the calling thread meanwhile.
        """
        pending = list(expiries)
        deleted = {e.name: 0 for e in pending}
        rounds = 0
        with pool.connection(self.conninfo, self.settings) as conn:
            while pending and (batches is None or rounds < batches):
                rounds += 1
                for expiry in list(pending):
                    remaining = None if deadline is None else deadline - monotonic()
                    if remaining is not None and remaining <= 0:
                        return deleted
                    try:
                        count = self._batch(conn, expiry, remaining, wait)
                    except psycopg.errors.QueryCanceled:
                        return deleted  # the run's time ran out inside the statement
                    if count is None:
                        return deleted  # another process is at it
                    deleted[expiry.name] += count
                    if count < BATCH_ROWS:
                        pending.remove(expiry)
        return deleted

    def _batch(self, conn: psycopg.Connection, expiry: Expiry, remaining: float | None, wait: bool) -> int | None:
        q = self.queries
        with conn.transaction():
            if wait:
                conn.execute(q["maintenance_lock"], {"key": self.lock_key})
            elif not conn.execute(q["maintenance_try_lock"], {"key": self.lock_key}).fetchone()[0]:
                return None
            if remaining is not None:
                conn.execute(q["maintenance_time_limit"], {"ms": str(max(1, int(remaining * 1000)))})
            return conn.execute(expiry.query, {**expiry.params, "limit": BATCH_ROWS}).rowcount

    def _run(self) -> None:
        while True:
            with self._owners_lock:
                if not self._owners:
                    self._thread = None  # the next attach() starts another
                    return
            self._wake.clear()
            try:
                self.run()
            except Exception as exc:  # a lost database: the next run retries
                logger.warning("celery_durable maintenance run failed: %s", exc)
            self.ran.set()
            self._wake.wait(self._next_wait())

    def _next_wait(self) -> float:
        now = monotonic()
        due = [self._due.get(c.name, now) - now for c in self.chores()]
        return max(0.05, min([self.interval(), *due]))


_services: dict[tuple[str, str, int], Maintenance] = {}
_services_lock = threading.Lock()


def for_database(conninfo: str, settings: Settings) -> Maintenance:
    """The maintenance service of this database and schema in this process (a forked child gets its own)."""
    key = (conninfo, settings.schema, os.getpid())
    with _services_lock:
        service = _services.get(key)
        if service is None:
            service = _services[key] = Maintenance(conninfo, settings)
        return service
