"""Prometheus figures from the ``metrics`` view: one query per scrape.

``DurableCollector(connect, schema)`` is a prometheus-client collector; the
``durable metrics`` command prints its exposition and ``durable exporter``
serves it over HTTP. Every figure is a gauge read from the database at scrape
time, so any number of exporters (or none) may run: nothing is counted in
process memory. Needs the ``[metrics]`` extra (prometheus-client).
"""

from __future__ import annotations

import threading
from typing import Callable, Iterator

import psycopg

from ..db import queries

PREFIX = "celery_durable"

#: metric (as the view names it) -> (label name, help text). Order is the exposition's.
FIGURES: dict[str, tuple[str | None, str]] = {
    "queue_depth": ("queue", "Messages in the queue (ready, delayed and leased)."),
    "queue_ready": ("queue", "Messages a worker may claim now."),
    "queue_delayed": ("queue", "Messages waiting for their ETA or countdown in the table."),
    "queue_leased": ("queue", "Messages held by a live lease (prefetched, running, or waiting for an ETA in a worker)."),
    "queue_lease_expired": ("queue", "Messages whose lease expired (their worker died or stalled); the next claim redelivers them."),
    "queue_redeliveries": ("queue", "Deliveries beyond the first of the messages now in the queue (expired leases, requeues)."),
    "queue_oldest_age_seconds": ("queue", "Age of the oldest message in the queue (0 when empty)."),
    "dead_letters": ("queue", "Dead letters kept, by the queue they came from."),
    "workflows": ("status", "Durable workflows by status (finished ones until workflow_retention)."),
    "workflows_stalled": (None, "Running workflows with no progress for five minutes."),
}


def scrape(conn: psycopg.Connection, schema: str) -> list[tuple[str, str, float]]:
    """``[(metric, label, value)]`` of the schema's metrics view, in one query."""
    return conn.execute(queries.load(__name__, "queries.sql", schema)["metrics_scrape"]).fetchall()


class DurableCollector:
    """A prometheus-client collector that reads the metrics view on each ``collect()``.

    ``connect`` returns a new psycopg connection; it is kept between scrapes
    and replaced after an error, which propagates (the HTTP scrape fails,
    which Prometheus shows as ``up == 0``).
    """

    def __init__(self, connect: Callable[[], psycopg.Connection], schema: str) -> None:
        self._connect = connect
        self._schema = schema
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()

    def rows(self) -> list[tuple[str, str, float]]:
        with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            try:
                return scrape(self._conn, self._schema)
            except psycopg.Error:
                self._conn.close()
                self._conn = None
                raise

    def collect(self) -> Iterator:
        from prometheus_client.core import GaugeMetricFamily

        rows = self.rows()
        for metric, (label, text) in FIGURES.items():
            family = GaugeMetricFamily(f"{PREFIX}_{metric}", text, labels=[label] if label else None)
            for name, value, number in ((r[0], r[1], r[2]) for r in rows):
                if name == metric:
                    family.add_metric([value] if label else [], number)
            yield family

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
