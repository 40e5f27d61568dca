"""The worker's watch on the xmin horizon: one WARNING per interval naming who slows its claims.

Claims walk past every dead row at the head of the claim index, and VACUUM may
not remove a row any snapshot still sees. So while something holds the horizon
(a report's long transaction, a forgotten prepared transaction, a slot, a
standby's feedback) and acks leave dead rows behind, each claim gets slower.
The worker does not time its claims for this: a chore of its maintenance
thread asks PostgreSQL every ``horizon_check_interval`` (one catalog query and
one statistics read, never a query per claim), and logs a WARNING naming the
holder (pid, application_name, user, age) when it has held the horizon for
``horizon_warning_age`` while ``message`` holds dead rows; once it lets go, one
INFO line says so.
"""

from __future__ import annotations

import logging
from time import monotonic

from ..config import Settings
from ..db import pool
from . import horizon
from .findings import human_age

logger = logging.getLogger(__name__)

#: Dead rows in ``message`` from which claims are slowed enough to say so (VACUUM's own trigger in
#: transport/queries.sql, message_vacuum_needed, uses the same).
DEAD_ROWS = 1000


class HorizonWatch:
    """A maintenance chore: call it every ``horizon_check_interval``; it returns the holder it warned about."""

    def __init__(self, conninfo: str, settings: Settings) -> None:
        self.conninfo = conninfo
        self.settings = settings
        self.clock = horizon.Clock()
        self._warned: horizon.Holder | None = None
        self._checked: float | None = None

    def __call__(self) -> horizon.Holder | None:
        now = monotonic()
        # The maintenance thread also runs every chore when another owner attaches: not a check due here.
        if self._checked is not None and now - self._checked < self.settings.horizon_check_interval / 2:
            return self._warned
        self._checked = now
        with pool.connection(self.conninfo, self.settings) as conn:
            found = horizon.holders(conn)
            dead = horizon.message_dead_rows(conn, self.settings.schema)
        ages = self.clock.ages(found)
        holder = horizon.oldest(found)
        age = ages[found.index(holder)] if holder is not None else 0.0
        if holder is not None and age >= self.settings.horizon_warning_age and dead >= DEAD_ROWS:
            logger.warning(
                "celery_durable: claims slow down: %s has held the xmin horizon for %s (%s transactions), and "
                "the message table holds %s dead rows VACUUM may not remove meanwhile. End it, or see "
                "`celery durable doctor`", holder.describe(), human_age(age), f"{holder.age_xids:,}", f"{dead:,}")
            self._warned = holder
            return holder
        if self._warned is not None:
            logger.info("celery_durable: %s no longer slows claims", self._warned.describe())
            self._warned = None
        return None

