"""Synchronous draining, for Kombu consumers without an event loop (``drain_events``).

The same wake-ups as on the event loop, in the caller's thread: pending acks
go first, the safety poll and announced delayed messages make queues ready,
and the call claims again at once while a claim that found nothing leaves another
priority or queue to read, then blocks on the LISTEN socket until a claim
delivers something or the timeout passes.
"""

from __future__ import annotations

import threading
from time import monotonic, time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .transport import Transport


class Drainer:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._next_poll = monotonic() + transport.settings.polling_interval

    def drain_events(self, timeout: float | None = None) -> None:
        """Deliver at least one message, or raise ``socket.timeout`` after ``timeout`` seconds."""
        transport, delivery = self.transport, self.transport.delivery
        interval = transport.settings.polling_interval
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            transport.leases.flush_acks()
            now = monotonic()
            if now >= self._next_poll:
                delivery.mark_ready()
                self._next_poll = now + interval
            delivery.release_due()
            if delivery.fetch_ready():
                return
            channels: list = list(transport.channels or ())
            if any(delivery.claim_size(channel) > 0 for channel in channels):
                continue  # a floor held nothing: the next claim reads the next priority or queue now
            now = monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError()
            wait = self._next_poll - now
            if deadline is not None:
                wait = min(wait, deadline - now)
            due = delivery.next_due()
            if due is not None:
                wait = min(wait, max(0.0, due - time()))
            notifier = transport.notifier
            if notifier is None:
                # Nothing consumes on this connection: just let the time pass.
                threading.Event().wait(max(0.0, wait))
            elif delivery.wake(notifier.wait(max(0.0, wait))):
                return
