"""One read of the database's figures: a single bounded transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from time import monotonic

import psycopg

from ..db import queries
from ..health import horizon


@dataclass(frozen=True)
class Reading:
    """The figures of one read; ``at`` is when it ended (``time.monotonic()``), ``took`` how long it ran.

    ``horizon``: per (kind, application_name) of the holders of the xmin horizon, the longest any of
    them has held it in seconds, and in transactions.
    """

    rows: list[tuple[str, str, float]]
    at: float
    took: float
    horizon: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict)


def read(conn: psycopg.Connection, schema: str, timeout: float, clock: horizon.Clock | None = None) -> Reading:
    """Read the metrics view and the horizon's holders in one transaction the server ends after ``timeout`` s.

    ``clock`` (kept between reads) times holders whose start PostgreSQL does not show this role.
    """
    q = queries.load("celery_durable.metrics", "queries.sql", schema)
    started = monotonic()
    with conn.transaction():
        conn.execute(q["scrape_bound"], {"ms": str(max(1, int(timeout * 1000)))})
        rows = conn.execute(q["metrics_scrape"]).fetchall()
        holders = horizon.holders(conn)
    ended = monotonic()
    ages = (clock or horizon.Clock()).ages(holders, ended)
    held: dict[tuple[str, str], tuple[float, int]] = {}
    for holder, seconds in zip(holders, ages, strict=True):
        key = (holder.kind, holder.name or "")
        before = held.get(key, (0.0, 0))
        held[key] = (max(before[0], seconds), max(before[1], holder.age_xids))
    return Reading(rows=rows, at=ended, took=ended - started, horizon=held)
