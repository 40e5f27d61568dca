"""The prometheus-client collector: bounded reads, one at a time, the last good figures when the database hangs.

A scrape never waits longer than the read's timeout (plus a second for the
connection): when the read it started (or found running) has not ended by
then, the scrape is answered with the figures of the last read that succeeded,
``celery_durable_scrape_success`` 0 and their age. Only one read runs at a time
whatever the number of scrapers; reads closer together than ``min_interval``
share one, so whoever reaches the port cannot keep the database busy.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from time import monotonic

import psycopg

from ..health import horizon
from .figures import FIGURES, HORIZON, PREFIX
from .reading import Reading, read

logger = logging.getLogger(__name__)

#: Seconds one read of the database may run (its statement_timeout).
TIMEOUT_DEFAULT = 5.0
#: Scrapes within this many seconds of a successful read are answered with its figures.
MIN_INTERVAL_DEFAULT = 5.0
#: What a scrape waits beyond the read's timeout (a new connection's set-up).
GRACE = 1.0


class DurableCollector:
    """Reads the metrics view for Prometheus; see the module's docstring for the bounds.

    ``connect`` returns a new psycopg connection (autocommit); it is kept
    between reads and replaced after an error.
    """

    def __init__(self, connect: Callable[[], psycopg.Connection], schema: str, *,
                 timeout: float = TIMEOUT_DEFAULT, min_interval: float = MIN_INTERVAL_DEFAULT) -> None:
        self._connect = connect
        self._schema = schema
        self.timeout = timeout
        self.min_interval = min_interval
        self._conn: psycopg.Connection | None = None
        self._clock = horizon.Clock()  # used by the one read in flight only
        self._io = threading.Lock()  # held by the one read in flight only
        self._state = threading.Lock()  # guards the fields below; never held while waiting
        self._last: Reading | None = None
        self._in_flight: tuple[threading.Event, float] | None = None  # the read running, since when
        self._errors = 0

    # -- reading -----------------------------------------------------------------------------------

    def read(self) -> Reading:
        """Read the database now, in this thread; raises what the read raised."""
        with self._io:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                reading = read(self._conn, self._schema, self.timeout, self._clock)
            except BaseException:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                with self._state:
                    self._errors += 1
                raise
        with self._state:
            self._last = reading
        return reading

    def _read_in_background(self, done: threading.Event) -> None:
        try:
            self.read()
        except Exception as exc:
            logger.warning("celery_durable exporter: reading the figures failed: %s",
                           str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        finally:
            with self._state:
                self._in_flight = None
            done.set()

    def current(self) -> tuple[Reading | None, bool]:
        """The figures to serve, and whether they are fresh (the last read succeeded within the bounds)."""
        asked = monotonic()
        with self._state:
            last = self._last
            if last is not None and asked - last.at < self.min_interval:
                return last, True
            if self._in_flight is None:
                self._in_flight = (threading.Event(), asked)
                threading.Thread(target=self._read_in_background, args=(self._in_flight[0],), daemon=True,
                                 name="celery-durable-metrics-read").start()
            done, since = self._in_flight
        # Bounded from the read's start: behind a read that hangs, later scrapes answer at once.
        done.wait(max(0.0, since + self.timeout + GRACE - asked))
        with self._state:
            last = self._last
        return last, last is not None and last.at >= asked

    # -- prometheus-client -------------------------------------------------------------------------

    def collect(self) -> Iterator:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        reading, fresh = self.current()
        if reading is not None:
            for metric, (labels, text) in FIGURES.items():
                family = GaugeMetricFamily(f"{PREFIX}_{metric}", text, labels=labels)
                for name, label, value in reading.rows:
                    if name == metric:
                        family.add_metric([label] if labels else [], value)
                yield family
            for which, (unit, text) in HORIZON.items():
                family = GaugeMetricFamily(f"{PREFIX}_xmin_horizon_age_{which}", text,
                                           labels=["kind", "application_name"])
                for (kind, name), held in sorted(reading.horizon.items()):
                    family.add_metric([kind, name], held[unit])
                yield family
        yield GaugeMetricFamily(f"{PREFIX}_scrape_success",
                                "1: the figures were read from the database for this scrape (or within "
                                "the exporter's min interval); 0: they are the last good ones, or none.",
                                value=1 if fresh else 0)
        if reading is not None:
            yield GaugeMetricFamily(f"{PREFIX}_scrape_age_seconds", "Age of the figures served.",
                                    value=max(0.0, monotonic() - reading.at))
            yield GaugeMetricFamily(f"{PREFIX}_scrape_duration_seconds",
                                    "How long the read of the figures served took.", value=reading.took)
        with self._state:
            errors = self._errors
        yield CounterMetricFamily(f"{PREFIX}_scrape_errors",
                                  "Reads of the database that failed or ran out of time since the exporter started.",
                                  value=errors)

    def close(self) -> None:
        """Close the connection unless a read still uses it (its thread is a daemon)."""
        if self._io.acquire(blocking=False):
            try:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
            finally:
                self._io.release()
