"""Where a worker's next claim starts in each queue: claims that never walk dead, leased or delayed rows.

A claim that reads a queue's index from its head steps over every row acked,
leased or delayed before the first ready one. VACUUM removes the acked ones
only once no snapshot can see them, so a long transaction anywhere in the
database (a report, an idle admin session, a standby's feedback) makes every
claim slower for as long as it lives, and a backlog of scheduled tasks does
so for good. Instead, every wake-up says where its new ready rows start (the
lowest id of each priority, see ``message_notify_v4`` and ``message_requeue``),
and a worker remembers, per queue and priority, the first id it has not yet
seen claimed: its *floor*. A claim starts at one floor (the highest priority's,
the oldest among equals), and the index descends straight to it.

What no wake-up announces (a dead worker's lease running out, a delayed message
coming due, a wake-up missed while the listener reconnected) is found by a
claim over the whole queue, as before: the worker's first claim of a queue,
every safety poll, and every announced due time make the queue *unknown* again.
A queue is unknown in part when a whole-queue claim stopped at its limit
(priorities below ``below``, which it did not reach); either way the next
claim reads it whole. A queue nobody has heard of is unknown.

A wake-up can arrive after the claim that took its rows (a busy loop reads
its notifications late): each says which transaction sent it, each claim
returns its snapshot, and a hint whose transaction a recent claim saw, in the
range that claim read, is old news and moves nothing back.

The floors are learnt from claims that run in the fetcher thread while
wake-ups arrive on the event loop's: a hint that arrives while a claim is in
flight is applied again once the claim's result is learnt, so a result can
never erase a wake-up the claim did not see.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

#: ``below`` when every priority is unknown (message.priority is a smallint).
EVERY = 32767
#: ``below`` when no priority is unknown: publishes store priorities from 0 (transport/publish.py).
NONE = 0
#: Ranges of recent claims kept per queue and priority, to recognise old wake-ups.
COVERAGES_KEPT = 16


@dataclass(frozen=True)
class Snapshot:
    """A claim's snapshot (``pg_current_snapshot()``): which transactions' rows it saw."""

    xmin: int
    xmax: int
    running: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        xmin, xmax, running = text.split(":")
        return cls(int(xmin), int(xmax), frozenset(int(x) for x in running.split(",") if x))

    def sees(self, xid: int) -> bool:
        return xid < self.xmin or (xid < self.xmax and xid not in self.running)


@dataclass
class QueueFloors:
    """One queue: the first id a claim may find ready, per known priority; priorities < below unknown."""

    floors: dict[int, int] = field(default_factory=dict)
    below: int = EVERY

    def copy(self) -> QueueFloors:
        return QueueFloors(dict(self.floors), self.below)

    def hint(self, priority: int, first_id: int) -> None:
        if priority >= self.below:
            self.floors[priority] = min(self.floors.get(priority, first_id), first_id)


INFINITE = float("inf")


@dataclass
class Read:
    """Ids ``start``..``end`` of one priority that claims read, every row a transaction ``snapshot`` saw."""

    start: float
    end: float
    snapshot: Snapshot

    def covers(self, xid: int, first_id: int) -> bool:
        return self.start <= first_id <= self.end and self.snapshot.sees(xid)


class Coverage:
    """What recent claims of one queue read: a wake-up they saw, in a range they read, is old news.

    The oldest reads of a priority merge into one range under the older snapshot, so a long burst's
    wake-ups are recognised however late the loop reads them, and recent reads keep their own.
    """

    def __init__(self) -> None:
        self._reads: dict[int, list[Read]] = {}
        #: Whole-queue reads: every id of priorities lo..hi that the snapshot saw.
        self._wholes: deque[tuple[int, int, Snapshot]] = deque(maxlen=COVERAGES_KEPT)

    def add(self, priority: int, start: float, end: float, snapshot: Snapshot) -> None:
        reads = self._reads.setdefault(priority, [])
        reads.append(Read(start, end, snapshot))
        if len(reads) > COVERAGES_KEPT:
            # The oldest two become one under the older snapshot when they touch (sound: the later
            # snapshot saw all the earlier saw); else the oldest is forgotten.
            first, second = reads[0], reads[1]
            if first.start <= second.start <= first.end + 1:
                reads[1] = Read(first.start, max(first.end, second.end), first.snapshot)
            del reads[0]

    def add_whole(self, lowest: int, highest: int, snapshot: Snapshot) -> None:
        self._wholes.append((lowest, highest, snapshot))

    def covers(self, xid: int, priority: int, first_id: int) -> bool:
        return (any(r.covers(xid, first_id) for r in self._reads.get(priority, ()))
                or any(lo <= priority <= hi and snap.sees(xid) for lo, hi, snap in self._wholes))


@dataclass(frozen=True)
class Plan:
    """What one claim reads, and the hints' count when it was sent.

    ``whole``: every priority of ``queues`` from the head of the index; else the one queue and priority
    of ``queues`` from its floor.
    """

    queues: dict[str, QueueFloors]
    seen: int
    whole: bool


class Floors:
    def __init__(self) -> None:
        self._queues: dict[str, QueueFloors] = {}
        self._covered: dict[str, Coverage] = {}
        self._lock = threading.Lock()
        #: Received while claims were in flight: hints (number, queue, priority, first id, xid) and
        #: forgets (number, queue; None: every queue).
        self._hints: list[tuple[int, str, int, int, int | None]] = []
        self._forgets: list[tuple[int, str | None]] = []
        self._count = 0
        self._in_flight: dict[int, int] = {}

    def hint(self, queue: str, first_ids: dict[int, int], xid: int | None = None) -> None:
        """A wake-up from transaction ``xid``: ready rows of ``queue`` from these ids on (priority -> first id)."""
        with self._lock:
            self._count += 1
            known = self._queues.get(queue)
            for priority, first_id in first_ids.items():
                if self._is_old(queue, xid, priority, first_id):
                    continue
                if self._in_flight:
                    self._hints.append((self._count, queue, priority, first_id, xid))
                if known is not None:
                    known.hint(priority, first_id)

    def forget(self, queue: str | None = None) -> None:
        """Make ``queue`` (None: every queue) unknown: its next claim reads all of it."""
        with self._lock:
            self._count += 1
            if self._in_flight:
                self._forgets.append((self._count, queue))
            if queue is None:
                self._queues.clear()
            else:
                self._queues.pop(queue, None)

    def plan(self, queues: list[str]) -> Plan | None:
        """What a claim of ``queues`` reads now (None: nothing can be ready); pass it to :meth:`learn`
        or :meth:`abandon`.

        Queues with priorities nobody told about are read whole; else the floor of the highest
        priority (of the oldest row among equals), alone: a statement the index serves straight,
        where one for several floors is planned over the primary key. The others follow in the
        claims after (:meth:`pending`).
        """
        with self._lock:
            unknown = [q for q in queues if (self._queues.get(q) or QueueFloors()).below > NONE]
            if unknown:
                plan = Plan({q: QueueFloors() for q in unknown}, self._count, whole=True)
            else:
                floors = [(priority, first, queue) for queue in queues
                          for priority, first in self._queues[queue].floors.items()]
                if not floors:
                    return None
                priority, first, queue = min(floors, key=lambda f: (-f[0], f[1]))
                plan = Plan({queue: QueueFloors({priority: first}, NONE)}, self._count, whole=False)
            self._in_flight[self._count] = self._in_flight.get(self._count, 0) + 1
            return plan

    def known(self, queue: str) -> dict[int, int] | None:
        """``queue``'s floors when every priority of it is known (None: its next claim reads it whole)."""
        with self._lock:
            read = self._queues.get(queue)
            return dict(read.floors) if read is not None and read.below <= NONE and read.floors else None

    def pending(self, queues: list[str]) -> bool:
        """Whether a claim of ``queues`` has somewhere to read (an unknown queue or a floor)."""
        with self._lock:
            return any(q not in self._queues or self._queues[q].below > NONE or self._queues[q].floors
                       for q in queues)

    def learn(self, plan: Plan, n: int, rows: list, snapshot: str | None) -> None:
        """What a claim of up to ``n`` found (rows: id, queue, priority, ...) in ``snapshot`` moves its floors."""
        with self._lock:
            self._done(plan)
            exhausted = len(rows) < n
            lowest = NONE if exhausted else min(row[2] for row in rows)
            for queue, read in plan.queues.items():
                mine = [row[0] for row in rows if row[1] == queue and row[2] == lowest]
                if snapshot is not None:
                    self._cover(queue, read, exhausted, lowest, mine, Snapshot.parse(snapshot))
                if plan.whole:
                    self._learn_whole(plan, queue, exhausted, lowest, mine)
                else:
                    self._learn_floor(plan, queue, read, exhausted, mine)
            self._trim()

    def _learn_whole(self, plan: Plan, queue: str, exhausted: bool, lowest: int, mine: list[int]) -> None:
        after = QueueFloors(below=NONE)
        if not exhausted:
            # Claimed in priority order: the priorities above the lowest claimed are exhausted.
            if mine:
                after.below = lowest
                after.floors[lowest] = max(mine) + 1
            else:
                after.below = lowest + 1  # this queue's rows of that priority may come next
            if after.below <= NONE:
                after.below = NONE
        for number, hinted, priority, first_id, xid in self._hints:
            if number > plan.seen and hinted == queue and not self._is_old(queue, xid, priority, first_id):
                after.hint(priority, first_id)
        if not self._forgotten_since(plan, queue):
            self._queues[queue] = after

    def _learn_floor(self, plan: Plan, queue: str, read: QueueFloors, exhausted: bool, mine: list[int]) -> None:
        current = self._queues.get(queue)
        if current is None or self._forgotten_since(plan, queue):
            return  # unknown again: the next claim reads it whole
        (priority, _first), = read.floors.items()
        current.floors.pop(priority, None)
        if not exhausted:
            current.floors[priority] = max(mine) + 1
        for number, hinted, hinted_priority, first_id, xid in self._hints:
            if (number > plan.seen and hinted == queue and hinted_priority == priority
                    and not self._is_old(queue, xid, priority, first_id)):
                current.hint(priority, first_id)

    def _forgotten_since(self, plan: Plan, queue: str) -> bool:
        return any(number > plan.seen and forgotten in (None, queue) for number, forgotten in self._forgets)

    def abandon(self, plan: Plan) -> None:
        """A claim that failed: its queues are unknown again."""
        with self._lock:
            self._done(plan)
            for queue in plan.queues:
                self._queues.pop(queue, None)
            self._trim()

    def _cover(self, queue: str, read: QueueFloors, exhausted: bool, lowest: int, mine: list[int],
               snapshot: Snapshot) -> None:
        """Remember what a claim read of ``queue``: from each floor (and the whole of the priorities
        under ``below``) up to where it stopped: everything when it took fewer than asked, up to its
        last row in its lowest priority, nothing below that."""
        coverage = self._covered.setdefault(queue, Coverage())
        for priority, start in read.floors.items():
            if exhausted or priority > lowest:
                coverage.add(priority, start, INFINITE, snapshot)
            elif priority == lowest and mine:
                coverage.add(priority, start, max(mine), snapshot)
        top = read.below - 1
        if read.below <= NONE:
            return
        if exhausted:
            coverage.add_whole(NONE, top, snapshot)
        else:
            if lowest < top:
                coverage.add_whole(lowest + 1, top, snapshot)
            if lowest <= top and mine:
                coverage.add(lowest, -INFINITE, max(mine), snapshot)

    def _is_old(self, queue: str, xid: int | None, priority: int, first_id: int) -> bool:
        if xid is None:
            return False
        coverage = self._covered.get(queue)
        return coverage is not None and coverage.covers(xid, priority, first_id)

    def _done(self, plan: Plan) -> None:
        left = self._in_flight[plan.seen] - 1
        if left:
            self._in_flight[plan.seen] = left
        else:
            del self._in_flight[plan.seen]

    def _trim(self) -> None:
        oldest = min(self._in_flight, default=None)
        self._hints = [] if oldest is None else [h for h in self._hints if h[0] > oldest]
        self._forgets = [] if oldest is None else [f for f in self._forgets if f[0] > oldest]
