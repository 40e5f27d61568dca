"""Kombu's prefetch accounting, with ack, reject and restore sent to the transport's leases."""

from __future__ import annotations

import logging

from kombu.transport import virtual

logger = logging.getLogger(__name__)


class QoS(virtual.QoS):
    """Prefetch accounting from Kombu; ack, reject and restore go to the database.

    The leases are kept from the start: Celery may ack a message after its channel closed
    (an ``acks_late`` task that ends after a reconnect), when ``channel.connection`` is None.
    Such an ack finds no lease (the close gave the message back) and does nothing.
    """

    def __init__(self, channel, prefetch_count: int = 0) -> None:
        super().__init__(channel, prefetch_count)
        self.leases = channel.connection.leases

    def ack(self, delivery_tag: str) -> None:
        self.leases.ack(delivery_tag)
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self.leases.reject(delivery_tag, requeue=requeue)
        self._quick_ack(delivery_tag)

    def restore_unacked(self) -> list:
        """Put every unacked message back at once (warm shutdown, channel close)."""
        self._flush()
        tags = list(self._delivered)
        self._delivered.clear()
        try:
            self.leases.restore(tags)
        except Exception as exc:
            # Nothing is lost: the rows stay in the table and come back when their leases
            # run out. (Kombu would log "UNABLE TO RESTORE" and try to dump them to disk.)
            logger.warning(
                "could not give back %d unacked messages now (%s); they return within lease_seconds (%s s)",
                len(tags), type(exc).__name__, self.leases.db.settings.lease_seconds,
            )
        return []
