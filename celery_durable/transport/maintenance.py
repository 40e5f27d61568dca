"""The transport's cleanup: expired queues and messages, old dead letters, and VACUUM when the server does not.

Run by the keeper thread every ``maintenance_interval`` seconds.
"""

from __future__ import annotations

from .database import Database


class Maintenance:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._autovacuum: bool | None = None

    def run(self) -> None:
        """Expire unused queues, messages past their TTL and old dead letters; vacuum if the server does not."""
        self.db.execute("queue_expire")
        self.db.execute("message_expire")
        self.db.execute("dead_letter_expire", retention=self.db.settings.dead_letter_retention)
        if self._autovacuum is None:
            self._autovacuum = bool(self.db.fetchone("autovacuum_enabled")[0])
        if not self._autovacuum:
            self.vacuum()

    def vacuum(self) -> None:
        """VACUUM the message table when acks left enough dead rows; a worker that finds another at it moves on."""
        # Every ack leaves a dead row; without autovacuum the table (and each claim's index
        # scan) would grow for ever.
        schema = self.db.settings.schema
        needed = self.db.fetchone("message_vacuum_needed", table=f"{schema}.message")
        if needed and needed[0]:
            self.db.execute("message_vacuum")
