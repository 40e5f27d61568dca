"""Prometheus figures from the ``metrics`` view (extra ``[metrics]``: prometheus-client).

``DurableCollector(connect, schema)`` is a prometheus-client collector; the
``durable metrics`` command prints its exposition once and ``durable exporter``
serves it over HTTP. The figures are gauges read from the database (one bounded
transaction per read, see :mod:`.collector`), so any number of exporters (or
none) may run; an exporter keeps only its last reading and its error count.
"""

from __future__ import annotations

from .collector import MIN_INTERVAL_DEFAULT, TIMEOUT_DEFAULT, DurableCollector
from .figures import FIGURES, PREFIX
from .reading import Reading, read

__all__ = ["FIGURES", "MIN_INTERVAL_DEFAULT", "PREFIX", "TIMEOUT_DEFAULT", "DurableCollector", "Reading", "read"]
