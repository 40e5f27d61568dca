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
        """VACUUM the message table when acks left enough dead rows, one worker at a time."""
        # Every ack leaves a dead row; without autovacuum the table (and each claim's index
        # scan) would grow for ever.
        schema = self.db.settings.schema
        q = self.db.queries
        with self.db.connection() as conn:
            locked = conn.execute(q["message_vacuum_lock"], {"schema": schema, "table": f"{schema}.message"}).fetchone()
            if locked and locked[0]:
                try:
                    conn.execute(q["message_vacuum"])
                finally:
                    conn.execute(q["message_vacuum_unlock"], {"schema": schema})
