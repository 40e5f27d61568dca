"""Due times of delayed messages on the queues this transport consumes, bounded.

A publish of a message that waits in the table (an ETA past
``native_delay_threshold``) notifies every listener with its due time, so a
worker can claim it on time rather than at the next safety poll. Only due
times of queues this transport consumes are kept, each once, at most
:data:`PER_QUEUE_MAX` per queue (the earliest): memory follows the worker's
own queues, not the cluster's delayed traffic. A due time beyond the bound is
found by the safety poll, within ``polling_interval`` of its time.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

#: Due times kept per consumed queue.
PER_QUEUE_MAX = 1000


class DelayedWakeups:
    def __init__(self) -> None:
        self._by_queue: dict[str, list[float]] = {}

    def add(self, queue: str, at: float) -> bool:
        """Remember that ``queue`` has a message due at epoch ``at``; True when it is the earliest kept."""
        times = self._by_queue.setdefault(queue, [])
        i = bisect.bisect_left(times, at)
        if i < len(times) and times[i] == at:
            return False
        if len(times) >= PER_QUEUE_MAX:
            if i >= len(times):
                return False  # later than every kept one: the safety poll finds it
            times.pop()  # keep the earliest
        times.insert(i, at)
        return self.next_due() == at

    def pop_due(self, now: float) -> list[str]:
        """The queues with a due time at or before ``now`` (those times are forgotten)."""
        due = []
        for queue, times in list(self._by_queue.items()):
            passed = bisect.bisect_right(times, now)
            if passed:
                del times[:passed]
                due.append(queue)
            if not times:
                del self._by_queue[queue]
        return due

    def keep_only(self, queues: Iterable[str]) -> None:
        """Forget the due times of queues no longer consumed."""
        wanted = set(queues)
        for queue in [q for q in self._by_queue if q not in wanted]:
            del self._by_queue[queue]

    def next_due(self) -> float | None:
        """The earliest due time kept, or None."""
        return min((times[0] for times in self._by_queue.values()), default=None)

    def __len__(self) -> int:
        """Due times kept, over every queue."""
        return sum(len(times) for times in self._by_queue.values())
