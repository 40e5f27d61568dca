"""Every lease a transport holds, and what happens to it: ack, reject, restore, renew.

A claimed row carries a lease: ``visible_at`` in the future and a token. Acks
delete the row only while the token still matches (fencing), so a worker that
lost its lease cannot remove a message another worker now runs. Acks made on
the event loop's thread wait for the fetcher thread's next round trip; acks
from other threads go at once. The Keeper thread renews what is held.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from time import monotonic

from .database import Database

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lease:
    """One claimed row: the token fences acks; a durable step's row is deleted by its checkpoint."""

    id: int
    token: uuid.UUID
    queue: str
    durable_step: bool = False
    #: Set when the consumer could not decode the message: its ack dead-letters it instead.
    undecodable: str | None = None


class Leases:
    """The leases of one transport by delivery tag, shared with the Keeper thread, and their fate.

    ``batching`` tells whether an ack made now may wait for the fetcher's next round trip.
    """

    def __init__(self, db: Database, batching: Callable[[], bool]) -> None:
        self.db = db
        self._batching = batching
        self._by_tag: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._pending_acks: list[Lease] = []
        #: monotonic() of the oldest pending ack
        self._pending_since = 0.0
        self._acks_lock = threading.Lock()
        #: Durable-step tags Celery acked while their row must stay: tag -> absent from the worker last round.
        self._acked_steps: dict[str, bool] = {}

    def add(self, tag: str, lease: Lease) -> None:
        with self._lock:
            self._by_tag[tag] = lease

    def get(self, tag: str) -> Lease | None:
        return self._by_tag.get(tag)

    def mark_undecodable(self, tag: str, reason: str) -> None:
        with self._lock:
            lease = self._by_tag.get(tag)
            if lease is not None:
                self._by_tag[tag] = replace(lease, undecodable=reason)

    def pop(self, tag: str) -> Lease | None:
        with self._lock:
            return self._by_tag.pop(tag, None)

    def pop_many(self, tags) -> list[Lease]:
        with self._lock:
            return [lease for lease in (self._by_tag.pop(t, None) for t in tags) if lease is not None]

    def snapshot(self) -> dict[str, Lease]:
        with self._lock:
            return dict(self._by_tag)

    def _drop_missing(self, renewed_ids: set[int], renewed: dict[str, Lease]) -> list[Lease]:
        """Forget leases whose rows were not renewed; return them."""
        lost = []
        with self._lock:
            for tag, lease in renewed.items():
                if lease.id not in renewed_ids and self._by_tag.get(tag) is lease:
                    del self._by_tag[tag]
                    lost.append(lease)
        return lost

    def ack(self, tag: str) -> None:
        """Delete the message behind ``tag``; batched per event-loop turn when called on the loop's thread."""
        lease = self.get(tag)
        if lease is None:
            return
        if lease.durable_step:
            # The step's checkpoint transaction deletes this row; keep renewing until it does
            # (or until the task is gone without doing so: see release_finished_steps).
            self._acked_steps.setdefault(tag, False)
            return
        self.pop(tag)
        if lease.undecodable:
            # Acked because it could not be decoded (Celery's on_decode_error acks): keep it for a human.
            logger.error("message %s of queue %r moved to dead_letter: %s", lease.id, lease.queue, lease.undecodable)
            self.dead_letter([lease], lease.undecodable)
            return
        with self._acks_lock:
            if not self._pending_acks:
                self._pending_since = monotonic()
            self._pending_acks.append(lease)
        if not self._batching():
            self.flush_acks()

    def flush_acks(self) -> None:
        pending = self.take_pending()
        if pending:
            self.ack_now(pending)

    def pending_age(self) -> float | None:
        """Seconds the oldest pending ack has waited; None when none waits."""
        return monotonic() - self._pending_since if self._pending_acks else None

    def take_pending(self) -> list[Lease]:
        """The acks waiting for a round trip (the fetcher sends them with its claims)."""
        with self._acks_lock:
            pending, self._pending_acks = self._pending_acks, []
        return pending

    def ack_params(self, leases: list[Lease]) -> dict:
        """The ``ids`` and ``tokens`` parameters that name ``leases`` to the held-rows statements."""
        return {"ids": [lease.id for lease in leases], "tokens": [lease.token for lease in leases]}

    def ack_now(self, leases: list[Lease]) -> None:
        # Acks commit without fsync, like leases: a database crash that undoes one redelivers
        # the message (at least once), it never loses one.
        self.check_acked(leases, self.db.fetchall("message_ack", relaxed=True, **self.ack_params(leases)))

    def check_acked(self, leases: list[Lease], deleted: list) -> None:
        if len(deleted) < len(leases):
            gone = {r[0] for r in deleted}
            lost = [lease.id for lease in leases if lease.id not in gone]
            logger.warning("ack of messages %s ignored: their lease was lost (another worker may hold them)", lost)

    def reject(self, tag: str, requeue: bool = False) -> None:
        lease = self.pop(tag)
        if lease is None:
            return
        if requeue:
            self._requeue([lease], restored=0)
        else:
            self.dead_letter([lease], "rejected by the consumer")

    def restore(self, tags: list[str]) -> None:
        """Give unacked messages back without counting a delivery (warm shutdown, channel close)."""
        leases = self.pop_many(tags)
        if leases:
            self._requeue(leases, restored=1)

    def requeue(self, leases: list[Lease]) -> None:
        """Give back rows claimed but never delivered (no delivery counted)."""
        self._requeue(leases, restored=1)

    def _requeue(self, leases: list[Lease], restored: int) -> None:
        self.db.fetchall("message_requeue", relaxed=True, **self.ack_params(leases), restored=restored,
                         channel=self.db.notify_channel)

    def dead_letter(self, leases: list[Lease], reason: str) -> None:
        self.db.execute("message_dead_letter", **self.ack_params(leases), reason=reason)

    def renew(self) -> None:
        """Extend every lease still held (called by the Keeper thread)."""
        held = self.snapshot()
        if not held:
            return
        leases = list(held.values())
        renewed = self.db.fetchall("lease_renew", relaxed=True, **self.ack_params(leases),
                                   lease=self.db.settings.lease_seconds)
        lost = self._drop_missing({r[0] for r in renewed}, held)
        for tag, lease in held.items():
            if lease in lost:
                self._acked_steps.pop(tag, None)
        unexpected = [lease.id for lease in lost if not lease.durable_step]
        if unexpected:
            logger.warning("lost the lease of messages %s (paused longer than lease_seconds?)", unexpected)

    def acked_steps(self) -> bool:
        """Whether Celery acked durable-step messages whose rows this transport still keeps."""
        return bool(self._acked_steps)

    def release_finished_steps(self, live: set[str]) -> None:
        """Requeue durable-step messages whose task ended without its checkpoint (a pool process died).

        Celery acks such a message (early, or after WorkerLostError) while the
        row must stay until the step's own transaction deletes it. Once the
        worker no longer knows the request (``live``: the delivery tags it still
        tracks) for two rounds, the row (if it still exists) becomes visible
        again and the step runs again.
        """
        gone = []
        for tag, absent_before in list(self._acked_steps.items()):
            if tag in live:
                self._acked_steps[tag] = False
            elif absent_before:
                gone.append(tag)
            else:
                self._acked_steps[tag] = True
        if gone:
            for tag in gone:
                self._acked_steps.pop(tag, None)
            leases = self.pop_many(gone)
            if leases:
                self._requeue(leases, restored=0)

