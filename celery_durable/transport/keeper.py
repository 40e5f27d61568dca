"""The thread that keeps a consuming worker's leases alive, and does nothing else.

It runs beside the event loop, not on it, so leases are renewed even while
the loop is busy or blocked (``--pool solo`` runs tasks on the loop's thread).
Every ``lease_seconds / 3`` it renews what the worker holds (prefetched, ETA
and running messages alike), then marks the queues it consumes as used.
Maintenance runs in a thread of its own (:mod:`celery_durable.maintenance`):
however long a cleanup takes, renewal keeps its schedule.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from ..db import appname

if TYPE_CHECKING:
    from .transport import Transport

logger = logging.getLogger(__name__)


class Keeper:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.interval = max(0.2, transport.settings.lease_seconds / 3)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="celery-durable-leases", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        appname.set_thread_component("keeper")  # its own pooled connection, named in pg_stat_activity
        leases = self.transport.leases
        while not self._stop.wait(self.interval):
            try:
                leases.renew()
                if leases.acked_steps():
                    live = _live_delivery_tags()
                    if live is not None:
                        leases.release_finished_steps(live)
                self._touch_queues()
            except Exception as exc:  # the next round retries; lost leases are reported by Leases.renew
                logger.warning("lease renewal failed: %s", exc)

    def _touch_queues(self) -> None:
        """A consumer is alive: the expiring and auto-delete queues it reads stay."""
        queues = sorted({q for channel in list(self.transport.channels) for q in channel._active_queues})
        if queues:
            self.transport.db.execute("queue_touch", relaxed=True, names=queues)


def _live_delivery_tags() -> set[str] | None:
    """Delivery tags of the requests this worker process still tracks; None outside a worker."""
    try:
        from celery.worker import state
    except ImportError:  # pragma: no cover
        return None
    try:
        return {r._message.delivery_tag for r in list(state.requests.values()) if getattr(r, "_message", None)}
    except RuntimeError:  # changed while we read it: try next round
        return None
