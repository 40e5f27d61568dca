"""Who holds back VACUUM's horizon: sessions, prepared transactions, replication slots, standbys.

While any of them holds an old transaction id (a snapshot, a transaction, a
slot's xmin), VACUUM keeps every row deleted since: each acked message stays in
``message`` as a dead row that claims walk past.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from time import monotonic
from typing import Any

import psycopg
from psycopg.rows import class_row

from .queries import sql

#: What holds it: a session, a standby's hot_standby_feedback (through its walsender), a prepared
#: transaction, a replication slot's xmin, a slot's catalog_xmin (holds the system catalogs only).
KINDS = ("backend", "standby", "prepared", "slot", "slot_catalog")


@dataclass(frozen=True)
class Holder:
    """One holder of the horizon, as PostgreSQL shows it to the connected role."""

    kind: str
    pid: int | None
    #: application_name of a session or standby, gid of a prepared transaction, name of a slot.
    name: str | None
    username: str | None
    client: str | None
    xmin: str
    age_xids: int
    #: Seconds since it took the horizon; None when PostgreSQL does not tell this role.
    age_seconds: float | None
    state: str | None
    query: str | None
    #: Another role's session whose start and query this role may not see (no pg_read_all_stats).
    hidden: bool

    @property
    def holds_tables(self) -> bool:
        """Whether it holds back VACUUM of our tables (a catalog_xmin holds only the system catalogs)."""
        return self.kind != "slot_catalog"

    def describe(self) -> str:
        """``backend pid 4242 (report-tool, user alice, 10.0.0.5:5544)`` and the like."""
        if self.kind == "prepared":
            return f"prepared transaction {self.name!r} (owner {self.username})"
        if self.kind in ("slot", "slot_catalog"):
            return f"replication slot {self.name!r} ({self.query}, {self.state})"
        who = ", ".join(part for part in (self.name or "no application_name",
                                          f"user {self.username}" if self.username else None,
                                          self.client) if part)
        return f"{'standby' if self.kind == 'standby' else 'session'} pid {self.pid} ({who})"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def holders(conn: psycopg.Connection) -> list[Holder]:
    """Every holder, the oldest first."""
    with conn.cursor(row_factory=class_row(Holder)) as cur:
        return cur.execute(sql("horizon_holders")).fetchall()


def message_dead_rows(conn: psycopg.Connection, schema: str) -> int:
    """Dead rows in the schema's message table (0 without one): what claims walk past meanwhile."""
    row = conn.execute(sql("message_dead_rows"), {"schema": schema}).fetchone()
    return int(row[0] or 0) if row else 0


def oldest(found: list[Holder]) -> Holder | None:
    """The holder of our tables' horizon: the oldest that holds more than the catalogs."""
    return next((h for h in found if h.holds_tables), None)


class Clock:
    """How long each holder has held the horizon: PostgreSQL's own figure where it gives one, else the time
    since this process first saw the same holder at the same xmin (a lower bound: another role's session
    seen by a role without pg_read_all_stats, a standby's feedback, an active slot)."""

    def __init__(self) -> None:
        self._first: dict[tuple[Any, ...], float] = {}

    def ages(self, found: list[Holder], now: float | None = None) -> list[float]:
        """Seconds for each holder of ``found``; holders no longer there are forgotten."""
        now = monotonic() if now is None else now
        seen: dict[tuple[Any, ...], float] = {}
        ages = []
        for h in found:
            key = (h.kind, h.pid, h.name, h.xmin)
            seen[key] = self._first.get(key, now)
            ages.append(h.age_seconds if h.age_seconds is not None else now - seen[key])
        self._first = seen
        return ages
