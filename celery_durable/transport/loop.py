"""The transport inside Celery's event loop (Kombu's hub): readers, ticks and timers.

The loop never waits for the database. Claims and acks go to the
:class:`~.fetcher.Fetcher` thread, which writes a byte to our pipe when rows
arrive; deliveries happen only in that pipe's reader callback. (Delivering in
``on_tick`` stalls: on_tick runs after the loop chose its poll timeout, so work
Celery schedules for a delivered task with ``call_soon`` would wait for it.)
Acks made on the loop's thread wait for the next claim's round trip, or at
most ``ACK_DELAY_MAX``. With ``designated_wakes`` the loop keeps the roster of
workers (:mod:`.roster`) and sends this worker's notes.
"""

from __future__ import annotations

import logging
import os
import threading
from time import monotonic, time
from typing import TYPE_CHECKING, Any

from .designation import Designation
from .fetcher import Fetcher
from .roster import BYE, Note, Roster, new_worker_id

if TYPE_CHECKING:
    from .transport import Transport

logger = logging.getLogger(__name__)

#: Longest an ack made on the event loop waits for a claim to ride along with (seconds). A busy
#: worker's acks share the claims' round trips instead of costing their own.
ACK_DELAY_MAX = 0.2


class HubLoop:
    def __init__(self, transport: Transport, hub: Any) -> None:
        self.transport = transport
        self.delivery = transport.delivery
        self.hub = hub
        self.thread = threading.get_ident()
        self._kick_r, self._kick_w = os.pipe()
        for fd in (self._kick_r, self._kick_w):
            os.set_blocking(fd, False)
        self.fetcher: Fetcher | None = Fetcher(transport, self._kick_w)
        self._timers: list = []
        #: The one timer for the earliest announced delayed message, and its due time.
        self._due_timer = None
        self._due_at: float | None = None
        self._ack_timer = None
        self._notifier_fd: int | None = None
        #: Send a hello with the next claim (the first one, then each safety poll's).
        self._hello = True
        self._settling = False
        self._fallback_timer = None
        self._fallback_at: float | None = None
        self.designation: Designation | None = None
        if transport.settings.designated_wakes:
            self.designation = self.delivery.designation = Designation(self.delivery, Roster(new_worker_id()), self)
        hub.add_reader(self._kick_r, self._on_fetched)
        hub.on_tick.add(self._on_tick)
        self._timers.append(hub.call_repeatedly(transport.settings.polling_interval, self._on_safety_poll))
        self.delivery.on_delayed = self._on_delayed_announced

    def watch_notifier(self) -> None:
        """Read the transport's LISTEN connection from the loop (once it exists)."""
        notifier = self.transport.notifier
        if notifier is not None and self._notifier_fd is None:
            self._notifier_fd = notifier.fileno()
            self.hub.add_reader(self._notifier_fd, self._on_readable)

    def batching_acks(self) -> bool:
        """True on the open loop's thread: acks wait for the fetcher's next round trip."""
        return self.fetcher is not None and threading.get_ident() == self.thread

    def stop_fetcher(self) -> None:
        """Stop the fetcher thread; rows it claimed that were never delivered go back at once."""
        fetcher, self.fetcher = self.fetcher, None
        if fetcher is None:
            return
        fetcher.stop()
        for token, rows in fetcher.undelivered():
            self.delivery.requeue_unreceived(token, rows)
        self._say_bye()

    def _say_bye(self) -> None:
        """Leave the others' rosters now rather than when this entry expires (best effort)."""
        if self.designation is None or not self.designation.roster.has_peers():
            return
        payload = Note(BYE, self.designation.roster.me).payload()
        if payload is None:
            return
        try:
            with self.transport.db.connection() as conn:
                conn.execute(self.transport.db.queries["worker_note"], self.delivery.note_params(payload))
        except Exception as exc:  # a worker that cannot say goodbye expires from the rosters
            logger.debug("could not leave the roster: %s", exc)

    # -- notes to the other workers (designation.NoteSender) -------------------------------------

    def send(self, note: Note, alone: bool) -> None:
        payload = note.payload()
        if payload is not None and self.fetcher is not None:
            self.fetcher.note(note.kind, payload, alone)

    def drop(self, kind: str) -> None:
        if self.fetcher is not None:
            self.fetcher.drop_notes(kind)

    def close(self) -> None:
        self.stop_fetcher()
        if self.delivery.on_delayed == self._on_delayed_announced:
            self.delivery.on_delayed = None
        if self.designation is not None and self.delivery.designation is self.designation:
            self.delivery.designation = None
        self.hub.on_tick.discard(self._on_tick)
        for fd in (self._notifier_fd, self._kick_r):
            if fd is not None:
                try:
                    self.hub.remove_reader(fd)
                except Exception:  # the hub may already be closed
                    pass
        self._notifier_fd = None
        for timer in [*self._timers, self._due_timer, self._ack_timer, self._fallback_timer]:
            if timer is not None:
                try:
                    timer.cancel()
                except Exception:
                    pass
        self._timers.clear()
        self._due_timer = self._due_at = None
        self._fallback_timer = self._fallback_at = None
        self._ack_timer = None
        for fd in (self._kick_r, self._kick_w):
            os.close(fd)

    # -- callbacks ------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        notifier = self.transport.notifier
        if notifier is not None:
            self.delivery.wake(notifier.drain())
            self._request_claims()
            self._arm_designation_timers()

    def _arm_designation_timers(self) -> None:
        designation = self.designation
        if designation is None:
            return
        if designation.settle_at is not None and not self._settling and designation.roster.has_peers():
            self._settling = True
            self._timers.append(self.hub.call_later(max(0.0, designation.settle_at - monotonic()), self._on_settled))
        at = designation.next_fallback()
        if at is not None and (self._fallback_at is None or at < self._fallback_at):
            if self._fallback_timer is not None:
                self._fallback_timer.cancel()
            self._fallback_at = at
            self._fallback_timer = self.hub.call_later(max(0.0, at - monotonic()), self._on_fallback)

    def _on_settled(self) -> None:
        """The roster has heard the others: say idle where this worker waits (claims said nothing so far)."""
        if self.designation is not None:
            for channel in self.transport.channels:
                self.designation.say_idle(channel)

    def _on_fallback(self) -> None:
        """Wake-ups whose designated worker said nothing in time: claim them here."""
        self._fallback_timer = self._fallback_at = None
        if self.designation is None:
            return
        for awaited in self.designation.fallbacks_due():
            self.delivery.claim_from(awaited.queue, awaited.floors, awaited.xid)
        self._arm_designation_timers()
        self._request_claims()

    def _on_tick(self) -> None:
        self.thread = threading.get_ident()
        if self.fetcher is None:
            return  # closed: Celery's next connection has its own transport
        if self._request_claims():
            return  # pending acks go with the claims
        leases = self.transport.leases
        age = leases.pending_age()
        if age is None:
            return
        if age >= ACK_DELAY_MAX or not any(c.ready or c.claiming for c in self.transport.channels):
            # Nothing to claim soon: send the acks alone. (Acked leases are no longer renewed,
            # so an ack must not wait long; ACK_DELAY_MAX is far below any lease.)
            self.fetcher.flush_acks()
        elif self._ack_timer is None:
            # An idle loop may not turn again for seconds: make sure it does.
            self._ack_timer = self.hub.call_later(ACK_DELAY_MAX, self._on_ack_timer)

    def _on_ack_timer(self) -> None:
        self._ack_timer = None  # the loop turns now, and _on_tick sends the acks

    def _request_claims(self) -> bool:
        """Ask the fetcher for what each channel can take now (pending acks go along)."""
        if self.fetcher is None:
            return False
        asked = False
        for channel in self.transport.channels:
            n = self.delivery.claim_size(channel)
            if n > 0:
                # Readiness is spent on this claim; a NOTIFY during its round trip sets it again.
                channel.ready = False
                channel.claiming = n
                queues = list(dict.fromkeys(channel._active_queues))
                if self.designation is not None:
                    if self._hello:
                        self._hello = False
                        self.designation.hello(channel)
                    self.designation.claiming(channel)
                self.fetcher.claim(channel, queues, n)
                asked = True
        return asked

    def _on_fetched(self) -> None:
        try:
            os.read(self._kick_r, 4096)
        except BlockingIOError:
            pass
        if self.fetcher is None:
            return
        channels = self.transport.channels
        done = self.fetcher.done
        while done:
            requests, token, rows = done.popleft()
            for channel in requests:
                channel.claiming = 0
            if token is None:
                raise rows
            for (channel, (queues, n)), claimed in zip(requests.items(), rows, strict=True):
                if channel.closed or channel not in channels:
                    self.delivery.requeue_unreceived(token, claimed)
                    continue
                if len(claimed) >= n or self.delivery.floors.pending(queues):
                    channel.ready = True  # there may be more, or another queue or priority to read
                self.delivery.deliver_claimed(channel, self.delivery.accept(token, claimed))
                self._tell(channel, full=len(claimed) >= n)
        self._request_claims()

    def _tell(self, channel: Any, full: bool) -> None:
        """After a claim: a full one wakes the idle workers too (a burst); one that left room says idle."""
        if self.designation is None:
            return
        if not full:
            self.designation.say_idle(channel)
            return
        note = self.designation.overflowing(channel)
        if note is not None:
            self.send(note, True)

    def _on_safety_poll(self) -> None:
        self._hello = True
        self.delivery.mark_ready()

    def _on_delayed_announced(self, at: float) -> None:
        """A delayed message is now the earliest: one timer, for it (however many are announced).

        ``at`` is an epoch; the hub's timer runs on the monotonic clock, hence call_later.
        """
        if self._due_at is not None and self._due_at <= at:
            return
        if self._due_timer is not None:
            self._due_timer.cancel()
        self._due_at = at
        self._due_timer = self.hub.call_later(max(0.0, at - time()), self._on_delayed_due)

    def _on_delayed_due(self) -> None:
        self._due_timer = self._due_at = None
        self.delivery.release_due()
        following = self.delivery.next_due()
        if following is not None:
            self._on_delayed_announced(following)
