"""Unacked-message state on top of leases.

Kombu's QoS keeps the delivered messages of one channel; the rows behind them
are leased in the database by the transport (``Leases``). Ack deletes the row
only while our lease token still matches (fencing): a worker that lost its
lease cannot remove a message another worker now runs.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass, replace

from kombu.transport import virtual

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
    """Every lease a transport holds, by delivery tag; shared with the renewal thread."""

    def __init__(self) -> None:
        self._by_tag: dict[str, Lease] = {}
        self._lock = threading.Lock()

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

    def drop_missing(self, renewed_ids: set[int], renewed: dict[str, Lease]) -> list[Lease]:
        """Forget leases whose rows were not renewed; return them."""
        lost = []
        with self._lock:
            for tag, lease in renewed.items():
                if lease.id not in renewed_ids and self._by_tag.get(tag) is lease:
                    del self._by_tag[tag]
                    lost.append(lease)
        return lost

    def __len__(self) -> int:
        return len(self._by_tag)


class QoS(virtual.QoS):
    """Prefetch accounting from Kombu; ack, reject and restore go to the database."""

    def ack(self, delivery_tag: str) -> None:
        self.channel.connection.ack(delivery_tag)
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self.channel.connection.reject(delivery_tag, requeue=requeue)
        self._quick_ack(delivery_tag)

    def restore_unacked(self) -> list:
        """Put every unacked message back at once (warm shutdown, channel close)."""
        self._flush()
        tags = list(self._delivered)
        self._delivered.clear()
        try:
            self.channel.connection.restore(tags)
        except Exception as exc:  # reported by restore_unacked_once; the leases expire anyway
            return [(exc, tag) for tag in tags]
        return []
