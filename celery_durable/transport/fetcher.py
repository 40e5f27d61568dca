"""The thread that talks to the database for the event loop: claims and acks.

Celery's event loop runs the pool: it hands tasks to processes and reads their
results. Every millisecond it spends waiting for PostgreSQL is a millisecond
no task moves (profiles showed claim and ack round trips taking a large share
of the loop's time). So the loop only asks: it queues a claim request or a flush of its
acks and goes on. This thread sends the pending acks and every requested claim
in one pipelined round trip, then writes a byte to the loop's pipe; the loop
delivers the claimed rows in that reader callback. While a round trip is in
flight, acks and requests pile up and share the next one. The worker's notes to
the others (:mod:`.roster`) ride along too; one sent alone makes a round trip.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from typing import TYPE_CHECKING

from ..db import appname

if TYPE_CHECKING:
    from . import Transport
    from .channel import Channel

logger = logging.getLogger(__name__)


class Fetcher:
    def __init__(self, transport: Transport, kick_fd: int) -> None:
        self.transport = transport
        self.kick_fd = kick_fd
        #: Finished round trips, for the loop: (requests, token, rows per request) or an exception.
        self.done: deque = deque()
        self._requests: dict[Channel, tuple[list[str], int]] = {}
        self._acks = False
        #: Notes waiting for a round trip: (kind, payload); ``_notes_now``: one of them may not wait.
        self._notes: list[tuple[str, str]] = []
        self._notes_now = False
        self._stop = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="celery-durable-fetch", daemon=True)
        self._thread.start()

    def claim(self, channel: Channel, queues: list[str], n: int) -> None:
        """Ask for up to ``n`` messages of ``queues``; they arrive through ``done``."""
        with self._cond:
            self._requests[channel] = (queues, n)
            self._cond.notify()

    def note(self, kind: str, payload: str, alone: bool) -> None:
        """Send ``payload`` with the next round trip (``alone``: make one now)."""
        with self._cond:
            self._notes.append((kind, payload))
            if alone:
                self._notes_now = True
                self._cond.notify()

    def drop_notes(self, kind: str) -> None:
        """Forget the notes of ``kind`` not sent yet (what they said is no longer true)."""
        with self._cond:
            self._notes = [note for note in self._notes if note[0] != kind]

    def flush_acks(self) -> None:
        with self._cond:
            self._acks = True
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        appname.set_thread_component("fetcher")  # its own pooled connection, named in pg_stat_activity
        transport = self.transport
        while True:
            with self._cond:
                while not (self._stop or self._requests or self._acks or self._notes_now):
                    self._cond.wait()
                if self._stop:
                    return
                requests, self._requests = self._requests, {}
                notes = [payload for _kind, payload in self._notes]
                self._notes, self._notes_now, self._acks = [], False, False
            acks = transport.leases.take_pending()
            if not requests and not acks and not notes:
                continue
            try:
                token, rows = transport.delivery.claim_rows(list(requests.values()), acks, notes)
            except BaseException as exc:  # the loop raises it: Celery reconnects on connection errors
                self.done.append((requests, None, exc))
                self._kick()
                continue
            if requests:
                self.done.append((requests, token, rows))
                self._kick()

    def undelivered(self) -> list[tuple]:
        """Claimed rows the loop never took (it stopped): (token, rows) for each round trip."""
        taken = []
        while self.done:
            _requests, token, rows = self.done.popleft()
            if token is not None:
                taken.append((token, [r for per_request in rows for r in per_request]))
        return taken

    def _kick(self) -> None:
        try:
            os.write(self.kick_fd, b"f")
        except BlockingIOError:  # the pipe is full: the loop has plenty to read already
            pass
        except OSError:  # closed while stopping
            pass
