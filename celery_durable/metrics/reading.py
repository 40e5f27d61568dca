"""One read of the database's figures: a single bounded transaction."""

from __future__ import annotations

from dataclasses import dataclass
from time import monotonic

import psycopg

from ..db import queries


@dataclass(frozen=True)
class Reading:
    """The figures of one read; ``at`` is when it ended (``time.monotonic()``), ``took`` how long it ran."""

    rows: list[tuple[str, str, float]]
    at: float
    took: float


def read(conn: psycopg.Connection, schema: str, timeout: float) -> Reading:
    """Read the metrics view in one transaction that the server ends after ``timeout`` seconds."""
    q = queries.load("celery_durable.metrics", "queries.sql", schema)
    started = monotonic()
    with conn.transaction():
        conn.execute(q["scrape_bound"], {"ms": str(max(1, int(timeout * 1000)))})
        rows = conn.execute(q["metrics_scrape"]).fetchall()
    ended = monotonic()
    return Reading(rows=rows, at=ended, took=ended - started)
