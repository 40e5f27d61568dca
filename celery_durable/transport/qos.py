"""Kombu's prefetch accounting, with ack, reject and restore sent to the transport's leases."""

from __future__ import annotations

from kombu.transport import virtual


class QoS(virtual.QoS):
    """Prefetch accounting from Kombu; ack, reject and restore go to the database."""

    def ack(self, delivery_tag: str) -> None:
        self.channel.connection.leases.ack(delivery_tag)
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self.channel.connection.leases.reject(delivery_tag, requeue=requeue)
        self._quick_ack(delivery_tag)

    def restore_unacked(self) -> list:
        """Put every unacked message back at once (warm shutdown, channel close)."""
        self._flush()
        tags = list(self._delivered)
        self._delivered.clear()
        try:
            self.channel.connection.leases.restore(tags)
        except Exception as exc:  # reported by restore_unacked_once; the leases expire anyway
            return [(exc, tag) for tag in tags]
        return []
