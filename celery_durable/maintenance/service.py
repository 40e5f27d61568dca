"""The maintenance service: batched expiry under one policy, and periodic chores, in a thread of its own.

Policy, the same for every component:

- one process at a time per database and schema: each round (one batch of
  every expiry, pipelined) is a short transaction that first takes a
  transaction-scoped try-lock (works through PgBouncer's transaction mode); a
  process that finds it taken ends its run instead of queueing behind another;
- batches of at most :data:`BATCH_ROWS` rows, which skip rows other sessions
  have locked, so a delete never waits for a claim, an ack or a renewal;
- at most :data:`RUN_SECONDS` per run (the time left also bounds each
  statement); what is left waits for the next run. An idle worker pays one
  transaction per ``maintenance_interval`` (and a statistics query when it
  vacuums for a server without autovacuum).

Components hand in their work with :meth:`Maintenance.attach`: :class:`Expiry`
objects (batched deletes, written by the component, in its own ``.sql`` file)
and :class:`Chore` objects (VACUUM, the durable sweep) with their own interval.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from time import monotonic
from typing import Any

import psycopg

from .. import runtime
from ..config import Settings
from ..db import fetch, pool, queries

logger = logging.getLogger(__name__)

#: Most rows one batch deletes (one short transaction).
BATCH_ROWS = 1000
#: Longest a run of the service spends on expiry; the rest waits for the next run.
RUN_SECONDS = 5.0
#: The due-time key of the expiries (chores use their names).
EXPIRY = "expiry"


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
        self._last_turn: float | None = None

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

    def turn(self, interval: float) -> bool:
        """True at most once per ``interval`` seconds in this process: a process without the
        service's thread (a client storing results) may then run a batch itself."""
        now = monotonic()
        with self._owners_lock:
            if self._last_turn is not None and now - self._last_turn < interval:
                return False
            self._last_turn = now
            return True

    def run(self) -> dict[str, int]:
        """Run everything now: the expiries (bounded by RUN_SECONDS), then every chore; returns rows deleted."""
        return self._run_due(monotonic(), everything=True)

    def _run_due(self, now: float, everything: bool = False) -> dict[str, int]:
        deleted: dict[str, int] = {}
        if everything or self._due.get(EXPIRY, 0.0) <= now:
            self._due[EXPIRY] = now + self.interval()
            deleted = self.expire(self.expiries(), deadline=now + RUN_SECONDS)
        for chore in self.chores():
            if not everything and self._due.get(chore.name, 0.0) > monotonic():
                continue
            self._due[chore.name] = monotonic() + chore.interval
            try:
                chore.run()
            except Exception as exc:  # the next round retries
                logger.warning("celery_durable maintenance: %s failed: %s", chore.name, exc)
        return deleted

    def expire(self, expiries: Iterable[Expiry], *, deadline: float | None, wait: bool = False,
               batches: int | None = None) -> dict[str, int]:
        """Delete expired rows in rounds, each one batch of every expiry left; returns rows deleted per name.

        A round is one transaction under the maintenance lock. Stops when nothing
        is left, at ``deadline`` (monotonic; None: never), after ``batches``
        rounds, or (unless ``wait``) when another process holds the lock. Blocks
        the calling thread meanwhile.
        """
        pending = list(expiries)
        deleted = {e.name: 0 for e in pending}
        rounds = 0
        with pool.connection(self.conninfo, self.settings) as conn:
            while pending and (batches is None or rounds < batches):
                rounds += 1
                remaining = None if deadline is None else deadline - monotonic()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    counts = self._round(conn, pending, remaining, wait)
                except psycopg.errors.QueryCanceled:
                    break  # the run's time ran out inside a statement (its round is undone)
                if counts is None:
                    break  # another process is at it
                for expiry, count in zip(list(pending), counts, strict=True):
                    deleted[expiry.name] += count
                    if count < BATCH_ROWS:
                        pending.remove(expiry)
        return deleted

    def _round(self, conn: psycopg.Connection, expiries: list[Expiry], remaining: float | None,
               wait: bool) -> list[int] | None:
        """One batch of each expiry in one transaction (the deletes pipelined); None: the lock is taken."""
        q = self.queries
        share = None if remaining is None else str(max(1, int(remaining * 1000 / len(expiries))))
        with conn.transaction():
            locked = fetch.value(conn.execute(q["maintenance_lock" if wait else "maintenance_try_lock"],
                                              {"key": self.lock_key, "ms": share}))
            if not locked:
                return None
            with conn.pipeline():
                cursors = [conn.execute(e.query, {**e.params, "limit": BATCH_ROWS}) for e in expiries]
            return [cur.rowcount for cur in cursors]

    def _run(self) -> None:
        while True:
            with self._owners_lock:
                if not self._owners:
                    self._thread = None  # the next attach() starts another
                    return
            woken = self._wake.is_set()
            self._wake.clear()
            try:
                self._run_due(monotonic(), everything=woken)
            except Exception as exc:  # a lost database: the next run retries
                logger.warning("celery_durable maintenance run failed: %s", exc)
            self.ran.set()
            self._wake.wait(self._next_wait())

    def _next_wait(self) -> float:
        now = monotonic()
        due = [self._due.get(name, now) - now for name in (EXPIRY, *(c.name for c in self.chores()))]
        return max(0.05, min(due))


def for_database(conninfo: str, settings: Settings) -> Maintenance:
    """The maintenance service of this database and schema in this process (a forked child gets its own).

    One per database and schema, whatever the settings of the components that attach their work:
    each attaches with its own interval, and the first one's settings give the service its
    connection options.
    """
    key = (conninfo, settings.schema)
    return runtime.current().get("maintenance", key, lambda: Maintenance(conninfo, settings))
