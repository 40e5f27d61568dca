"""Delivery: which channels may claim, claiming, and handing claimed rows to Kombu's consumers.

A channel is *ready* when something may be waiting for it: it began
consuming, a NOTIFY named one of its queues, the safety poll ran, or its last
claim came back full. Claims lease rows (see :mod:`.leases`); accepted rows
become payloads with a delivery tag ``<row id>:<lease token>``; rows past their
TTL are dropped, rows delivered too often or undecodable become dead letters.
In a worker's event loop a wake-up makes only the worker it designates ready
(:mod:`.designation`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Callable
from time import time
from typing import TYPE_CHECKING

from ..headers import LEASE_HEADER, STEP_HEADER
from .channel import Channel, UndecodableBody
from .delayed import DelayedWakeups
from .floors import Floors, Plan
from .leases import Lease
from .notifier import Wakeup, channel_name
from .roster import Note

if TYPE_CHECKING:
    from .designation import Designation
    from .transport import Transport

logger = logging.getLogger(__name__)

WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"

#: Sent first in a claim's pipeline, for the implicit transaction it shares with the acks and claims.
#: Its commit does not wait for the WAL flush (a crash may undo a claim harmlessly). Claims and acks read
#: through an index or by ctid only, whatever the statistics say: a plan made while the table was small
#: (a sequential scan) would stay cached once a held snapshot has left it thousands of pages of dead
#: rows, and a bitmap would read every row past a floor (PostgreSQL estimates them from statistics
#: that end below it, ids only grow, and would fetch and sort the whole backlog ahead instead of the
#: few a claim takes). With no other way open, the cached generic plan is the right one and each
#: claim is not planned anew.
CLAIM_SETTINGS = ("SELECT set_config('synchronous_commit', 'off', true), set_config('enable_bitmapscan', 'off', true),"
                  " set_config('enable_seqscan', 'off', true)")


class Delivery:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.db = transport.db
        self.leases = transport.leases
        #: Announced due times of delayed messages on the queues this transport consumes.
        self.delayed = DelayedWakeups()
        #: Told when an announced due time becomes the earliest, so an event loop can set its timer.
        self.on_delayed: Callable[[float], None] | None = None
        #: Where each consumed queue's next claim starts.
        self.floors = Floors()
        #: Which wake-ups this worker takes (None: all of its queues'; the event loop sets it).
        self.designation: Designation | None = None

    # -- readiness ---------------------------------------------------------------------------

    def wake(self, wakeups: list[Wakeup | Note]) -> int:
        """Act on notifications; return how many inline messages were delivered."""
        now = time()
        delivered = 0
        for wakeup in wakeups:
            if isinstance(wakeup, Note):
                self._heard(wakeup)
            elif wakeup.message is not None:
                delivered += self.deliver_inline(wakeup.queue, wakeup.message)
            elif wakeup.at is not None and wakeup.at > now:
                if self.consumes(wakeup.queue) and self.delayed.add(wakeup.queue, wakeup.at):
                    if self.on_delayed is not None:
                        self.on_delayed(wakeup.at)
            elif (self.designation is None or wakeup.first_ids is None
                  or self.designation.wake(wakeup.queue, wakeup.first_ids, wakeup.xid)):
                self.claim_from(wakeup.queue, wakeup.first_ids, wakeup.xid)
        return delivered

    def _heard(self, note: Note) -> None:
        """Another worker's note (or this one's, heard back): claim what it hands on to this worker."""
        if self.designation is None:
            return
        for queue, floors in self.designation.heard(note):
            self.claim_from(queue, floors)

    def claim_from(self, queue: str, floors: dict[int, int] | None, xid: int | None = None) -> None:
        """Claim soon from ``queue``, starting where ``floors`` say (None: the whole queue)."""
        if floors is None:
            self.floors.forget(queue)
        else:
            self.floors.hint(queue, floors, xid)
        self.mark_ready(queue)

    def has_room(self, queue: str) -> bool:
        """Whether a channel consuming ``queue`` takes more now or once its claim in flight is back."""
        return any(queue in channel._active_queues and (channel.claiming or self.room(channel) > 0)
                   for channel in self.transport.channels)

    def note_params(self, payload: str) -> dict:
        return {"channel": channel_name(self.db.settings.schema), "payload": payload}

    def mark_ready(self, queue: str | None = None) -> None:
        """Claim soon from ``queue``'s consumers, or (None: the safety poll) from every durable queue's."""
        if queue is None:
            self.floors.forget()  # the safety poll reads whole queues: what no wake-up announced
        for channel in self.transport.channels:
            if queue is None:
                if any(q not in channel.notify_only_queues for q in channel._active_queues):
                    channel.ready = True
            elif queue in channel._active_queues:
                channel.ready = True

    def consumes(self, queue: str) -> bool:
        """Whether a channel of this transport consumes ``queue``."""
        return any(queue in channel._active_queues for channel in self.transport.channels)

    def release_due(self) -> None:
        """Delayed messages whose time has come make their queues ready."""
        for queue in self.delayed.pop_due(time()):
            self.claim_from(queue, None)  # a delayed row's id is behind the floors: read the whole queue
        self.delayed.keep_only(q for channel in self.transport.channels for q in channel._active_queues)

    def next_due(self) -> float | None:
        """Epoch of the earliest announced delayed message, or None."""
        return self.delayed.next_due()

    def claim_size(self, channel: Channel) -> int:
        """How many messages to claim for ``channel`` now (0: not now).

        A channel that still holds messages refills only once half its prefetch
        is free: one claim then serves several tasks, and its pool never starves
        since half stays queued locally.
        """
        if not channel.ready or channel.claiming:
            return 0
        return self.room(channel)

    def room(self, channel: Channel) -> int:
        """How many messages ``channel`` would claim if it were ready (0: none now)."""
        if not channel._consumers or not channel._active_queues or channel.closed:
            return 0
        capacity = channel.qos.can_consume_max_estimate()
        if capacity is None:
            return self.db.settings.claim_batch
        prefetch = channel.qos.prefetch_count
        if capacity < prefetch and capacity < max(1, prefetch // 2):
            return 0
        return min(capacity, self.db.settings.claim_batch)

    # -- claiming ------------------------------------------------------------------------------

    def claim(self, queues: list[str], n: int, *, whole: bool = False) -> list[dict]:
        """Lease up to ``n`` messages of ``queues`` now (pending acks go along); return decoded payloads.

        ``whole``: read the whole queues, not from their floors (a poll that no wake-up led to).
        """
        if whole:
            for queue in queues:
                self.floors.forget(queue)
        token, (rows,) = self.claim_rows([(list(queues), n)], self.leases.take_pending())
        return self.accept(token, rows)

    def claim_rows(self, requests: list[tuple[list[str], int]], acks: list[Lease],
                   notes: list[str] | None = None) -> tuple[uuid.UUID, list[list]]:
        """Send ``acks``, one claim per ``(queues, n)`` request and the worker's ``notes`` in one round trip.

        Returns the lease token and the claimed rows of each request. Pipeline mode: a busy
        worker pays one round trip per batch of acks and claims, not one per statement.
        """
        token = uuid.uuid4()
        claim = {"lease": self.db.settings.lease_seconds, "token": token, "worker": WORKER_ID}
        plans = [self.floors.plan(queues) for queues, _n in requests]
        try:
            found = self._claim_rows([None if plan is None else _claim_statement(claim, plan, n)
                                      for plan, (_q, n) in zip(plans, requests, strict=True)], acks, notes or [])
        except BaseException:
            for plan in plans:
                if plan is not None:
                    self.floors.abandon(plan)
            raise
        rows = []
        for plan, (_queues, n), claimed in zip(plans, requests, found, strict=True):
            # Each claim's last column is its snapshot; a claim that took nothing is one row of NULLs.
            taken = [row[:-1] for row in claimed if row[0] is not None]
            if plan is not None:
                self.floors.learn(plan, n, taken, claimed[0][-1] if claimed else None)
            rows.append(taken)
        return token, rows

    def _claim_rows(self, statements: list[tuple[str, dict] | None], acks: list[Lease],
                    notes: list[str]) -> list[list]:
        q = self.db.queries
        sent = [s for s in statements if s is not None]
        if not acks and not sent and not notes:
            return [[] for _ in statements]
        with self.db.connection() as conn:
            with conn.pipeline():
                conn.execute(CLAIM_SETTINGS)  # one implicit transaction up to the pipeline's end
                acked = conn.execute(q["message_ack"], self.leases.ack_params(acks)) if acks else None
                cursors = [conn.cursor().execute(q[name], params) for name, params in sent]
                for payload in notes:
                    conn.execute(q["worker_note"], self.note_params(payload))
            if acked is not None:
                self.leases.check_acked(acks, acked.fetchall())
            found = iter([cur.fetchall() for cur in cursors])
        return [[] if s is None else next(found) for s in statements]

    def accept(self, token: uuid.UUID, rows: list) -> list[dict]:
        """Register the leases of claimed rows; return their decoded payloads in delivery order.

        Rows past their TTL are deleted, rows delivered too often or undecodable go to dead_letter.
        """
        max_deliveries = self.db.settings.max_deliveries
        rows.sort(key=lambda r: (-r[2], r[0]))
        payloads, discard, dead = [], [], []
        for row_id, queue, _priority, deliveries, expired, raw in rows:
            lease = Lease(row_id, token, queue)
            if expired:
                discard.append(lease)
                continue
            if max_deliveries and deliveries > max_deliveries:
                dead.append((lease, f"delivered {deliveries} times (max_deliveries={max_deliveries})"))
                continue
            try:
                payload = json.loads(raw)
                props = payload["properties"]
                headers = payload.get("headers")
                if headers is None:
                    headers = payload["headers"] = {}
                if not isinstance(props, dict) or not isinstance(headers, dict):
                    raise TypeError("properties and headers must be objects")
            except (ValueError, TypeError, KeyError) as exc:
                dead.append((lease, f"undecodable message: {type(exc).__name__}: {exc}"[:500]))
                continue
            tag = f"{row_id}:{token}"
            props["delivery_tag"] = tag
            info = props.get("delivery_info")
            if not isinstance(info, dict):
                info = props["delivery_info"] = {}
            info["redelivered"] = deliveries > 1
            if STEP_HEADER in headers:
                headers[LEASE_HEADER] = tag
                lease = Lease(row_id, token, queue, durable_step=True)
            self.leases.add(tag, lease)
            payloads.append(payload)
        if discard:
            self.leases.ack_now(discard)
        for lease, reason in dead:
            logger.error("message %s of queue %r moved to dead_letter: %s", lease.id, lease.queue, reason)
            self.leases.dead_letter([lease], reason)
        return payloads

    def requeue_unreceived(self, token: uuid.UUID, rows: list) -> None:
        """Requeue claimed rows nobody will receive (no delivery counted)."""
        try:
            self.leases.requeue([Lease(row[0], token, row[1]) for row in rows])
        except self.transport.connection_errors:
            logger.warning("could not give back %d claimed messages; they return after the lease", len(rows))

    # -- handing over ------------------------------------------------------------------------------

    def deliver_claimed(self, channel: Channel, payloads: list[dict]) -> int:
        """Hand claimed payloads to the channel's consumers; return how many."""
        for payload in payloads:
            tag = payload["properties"]["delivery_tag"]
            lease = self.leases.get(tag)
            queue = lease.queue if lease else payload["properties"].get("delivery_info", {}).get("routing_key")
            try:
                self.transport._deliver(payload, queue)
            except UndecodableBody as exc:
                # Raised while building the Message, before any consumer saw it.
                dead = self.leases.pop(tag)
                if dead is not None:
                    logger.error("message %s of queue %r moved to dead_letter: %s", dead.id, queue, exc)
                    self.leases.dead_letter([dead], str(exc))
                continue
            if queue in channel.no_ack_queues:
                self.leases.ack(tag)
        return len(payloads)

    def deliver_inline(self, queue: str, raw: str) -> int:
        """A broadcast that travelled in the NOTIFY payload: no row, no lease, nothing to ack."""
        if queue not in self.transport._callbacks:
            return 0
        try:
            payload = json.loads(raw)
            payload["properties"]["delivery_tag"] = f"n:{uuid.uuid4()}"
        except (ValueError, TypeError, KeyError):
            logger.error("dropped an undecodable broadcast for queue %r", queue)
            return 0
        self.transport._deliver(payload, queue)
        return 1

    def fetch(self, channel: Channel) -> int:
        """Claim for one channel now, in this thread, and deliver; return how many were delivered."""
        n = self.claim_size(channel)
        if n <= 0:
            return 0
        queues = list(dict.fromkeys(channel._active_queues))
        payloads = self.claim(queues, n)
        channel.ready = len(payloads) >= n or self.floors.pending(queues)
        return self.deliver_claimed(channel, payloads)

    def fetch_ready(self) -> int:
        return sum(self.fetch(channel) for channel in list(self.transport.channels))


def _claim_statement(claim: dict, plan: Plan, n: int) -> tuple[str, dict]:
    """The statement that reads what ``plan`` says: whole queues, or one queue's priority from its floor."""
    if plan.whole:
        if len(plan.queues) == 1:
            return "message_claim_queue", dict(claim, queue=next(iter(plan.queues)), n=n)
        return "message_claim", dict(claim, queues=list(plan.queues), n=n)
    (queue, read), = plan.queues.items()
    (priority, first), = read.floors.items()
    return "message_claim_from", dict(claim, queue=queue, priority=priority, floor=first, n=n)
