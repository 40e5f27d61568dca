"""The transport's share of maintenance: what expires, and VACUUM when the server does not.

Expired queues with their messages, messages past their TTL and dead letters
past ``dead_letter_retention`` go as :class:`~celery_durable.maintenance.Expiry`
batches; :class:`Vacuum` is a chore. Both run in the maintenance service's own
thread (see :mod:`celery_durable.maintenance`), never in the keeper's, so a slow
cleanup cannot delay lease renewal.
"""

from __future__ import annotations

from ..maintenance import Expiry
from .database import Database


def expiries(db: Database) -> list[Expiry]:
    """Unused expiring queues and their messages, messages past their TTL, old dead letters."""
    q = db.queries
    return [
        Expiry("expired queues' messages", q["queue_expire_messages"]),
        Expiry("expired queues", q["queue_expire"]),
        Expiry("expired messages", q["message_expire"]),
        Expiry("old dead letters", q["dead_letter_expire"], {"retention": db.settings.dead_letter_retention}),
    ]


class Vacuum:
    """VACUUM the message table when the server's autovacuum is off and acks left enough dead rows."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._autovacuum: bool | None = None

    def __call__(self) -> bool:
        if self._autovacuum is None:
            self._autovacuum = bool(self.db.fetchone("autovacuum_enabled")[0])
        return False if self._autovacuum else self.vacuum()

    def vacuum(self) -> bool:
        """VACUUM the message table if acks left enough dead rows; return whether it did.

        Every ack leaves a dead row; without autovacuum the table (and each claim's
        index scan) would grow for ever. Workers vacuuming at the same time do not
        queue up: VACUUM's SKIP_LOCKED makes the later ones skip the table.
        """
        needed = self.db.fetchone("message_vacuum_needed", table=f"{self.db.settings.schema}.message")
        if needed and needed[0]:
            self.db.execute("message_vacuum")
            return True
        return False
