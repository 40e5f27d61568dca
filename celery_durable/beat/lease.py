"""The beat lease: one active beat per schema, the others wait to take over.

Every beat competes for one row (holder, token, expiry). The holder renews it
every third of ``beat_lease_seconds``; the others read its expiry and check
again when it runs out (or after a third of the lease, to see a release), so a
dead holder's lease is taken within the lease. A renewal after the lease ran
out is a new holding (``held_since`` starts anew: runs due in the gap count as
missed). Runs are fenced by the token in their own transaction
(``beat_lease_fence``), so a beat that lost the lease while paused sends nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime
from time import monotonic
from typing import Any

import psycopg

from .store import LEASE_NAME, Place

logger = logging.getLogger(__name__)

#: A standby checks again this long after the lease it saw runs out (the database's clock may lead ours).
MARGIN = 0.05


@dataclass(frozen=True)
class Holding:
    """What the last take or renewal said: whether the lease is ours, who holds it, since when, until when."""

    ours: bool
    holder: str | None
    held_since: datetime | None
    #: Seconds until the lease runs out, by the database's clock (negative: it has).
    left: float


def holder_name() -> str:
    """``host:pid``, what ``schedule list`` and the metrics show for the active beat."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Lease:
    def __init__(self, place: Place, holder: str | None = None) -> None:
        self.place = place
        self.seconds = place.settings.beat_lease_seconds
        self.holder = holder or holder_name()
        self.token = uuid.uuid4()
        self.held: Holding | None = None
        self._renewed = 0.0  # monotonic() of the last take or renewal that was ours

    @property
    def ours(self) -> bool:
        return self.held is not None and self.held.ours and monotonic() - self._renewed < self.seconds

    def due_in(self) -> float:
        """Seconds until this beat should take or renew again."""
        if self.held is None:
            return 0.0
        if self.held.ours:
            return max(0.0, self._renewed + self.seconds / 3 - monotonic())
        return max(0.0, min(self.held.left + MARGIN, self.seconds / 3))

    def hold(self, conn: psycopg.Connection[Any]) -> Holding:
        """Take or renew the lease now (autocommit ``conn``); logs each change of hands seen from here."""
        started = monotonic()
        row = conn.execute(self.place.queries["beat_lease_take"],
                           {"name": LEASE_NAME, "holder": self.holder, "token": self.token,
                            "seconds": self.seconds}).fetchone()
        before = self.held
        if row is None:  # (the row was deleted meanwhile: the next take creates it)
            self.held = Holding(False, None, None, 0.0)
            return self.held
        ours, holder, held_since, expires_at, now = (
            row[k] for k in ("ours", "holder", "held_since", "expires_at", "now"))
        self.held = Holding(ours, holder, held_since, (expires_at - now).total_seconds())
        if ours:
            self._renewed = started
            if before is None or not before.ours or before.held_since != held_since:
                logger.info("beat: this beat (%s) now holds the lease (held since %s); it sends due runs",
                            self.holder, held_since.isoformat())
        elif before is None or before.ours or before.holder != holder:
            if before is not None and before.ours:
                logger.warning("beat: lost the lease to %s (paused or cut off for longer than %ss?): "
                               "this beat sends nothing until it holds it again", holder, self.seconds)
            else:
                logger.info("beat: %s holds the lease; this beat (%s) waits to take over", holder, self.holder)
        return self.held

    def lost(self) -> None:
        """A run's fence found the lease gone: stop sending until a take says otherwise."""
        if self.held is not None and self.held.ours:
            logger.warning("beat: the lease was taken over (this beat's token no longer holds it): "
                           "this beat sends nothing until it holds it again")
            self.held = Holding(False, None, None, 0.0)

    def release(self, conn: psycopg.Connection[Any]) -> None:
        """Let the lease run out now so a waiting beat takes over at its next check."""
        if self.held is not None and self.held.ours:
            conn.execute(self.place.queries["beat_lease_release"], {"name": LEASE_NAME, "token": self.token})
            self.held = None

    def fence(self, conn: psycopg.Connection[Any]) -> bool:
        """In a run's transaction: the lease is still ours (its row locked until the transaction ends)."""
        return conn.execute(self.place.queries["beat_lease_fence"],
                            {"name": LEASE_NAME, "token": self.token,
                             "ms": str(max(1, int(self.seconds * 1000)))}).fetchone() is not None
