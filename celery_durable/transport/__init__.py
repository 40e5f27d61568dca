"""Kombu transport that keeps every message in PostgreSQL.

URL: ``postgresql://user:password@host:port/database`` (also ``postgres://``).
Importing :mod:`celery_durable` registers both schemes; or set
``broker_transport = "celery_durable.transport:Transport"``. TLS options go in
the URL as ``?ssl_mode=verify-full&ssl_rootcert=…`` (Kombu passes ``ssl_*``
parameters through) or in ``broker_use_ssl``; any libpq keyword can be given
in the transport option ``connect_options``.

Features: messages are rows claimed with ``FOR UPDATE SKIP LOCKED`` in batches
up to the prefetch count; leases instead of a visibility timeout (renewed while
the worker lives, so a long or ETA task is never handed to a second worker, and
a killed worker's messages return after ``lease_seconds``); acks are fenced by
the lease token and batched per event-loop turn; LISTEN/NOTIFY wakes workers
(idle workers send almost no queries); direct, topic and fanout exchanges with
bindings in the database; priorities 0–9 (higher first, as AMQP); message TTL
and expiring queues; ETAs far ahead wait in the table; dead letters for
undecodable, rejected or too-often-delivered messages; transactional enqueue
through :func:`celery_durable.in_transaction`.

Transport options (``broker_transport_options``): every field of
:class:`celery_durable.config.Settings` (``schema``, ``lease_seconds``,
``polling_interval``, ``claim_batch``, ``max_deliveries``,
``native_delay_threshold``, ``max_message_bytes``, ``pool_max_size``,
``connect_timeout``, ``auto_migrate``, ``maintenance_interval``,
``dead_letter_retention``, ``listen_url``, ``synchronous_commit``) plus ``connect_options`` (a dict of
libpq keywords).
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import socket
import threading
import uuid
from datetime import datetime, timedelta, timezone
from time import monotonic, time

import psycopg
from kombu.transport import virtual
from psycopg_pool import PoolTimeout

from .. import enqueue
from ..config import Settings
from ..db import dsn, pool, queries
from ..exceptions import DatabaseUnavailable, MessageTooLarge, SchemaError
from ..headers import LEASE_HEADER, STEP_HEADER
from .channel import Channel, UndecodableBody
from .fetcher import Fetcher
from .keeper import Keeper
from .notifier import NOTIFY_MESSAGE_MAX, Notifier, Wakeup, channel_name
from .leases import Lease, Leases

logger = logging.getLogger(__name__)

WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"
#: Longest an ack made on the event loop waits for a claim to ride along with (seconds). A busy
#: worker's acks share the claims' round trips instead of costing their own (measured: 1.7 rows
#: per round trip when every loop turn sent its acks).
ACK_DELAY_MAX = 0.2


class Transport(virtual.Transport):
    Channel = Channel

    can_parse_url = False
    default_port = 5432
    driver_type = "postgresql"
    driver_name = "psycopg"

    implements = virtual.Transport.implements.extend(
        asynchronous=True,
        exchange_type=frozenset(["direct", "topic", "fanout"]),
        heartbeats=False,
    )

    connection_errors = virtual.Transport.connection_errors + (
        DatabaseUnavailable, psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout,
    )
    channel_errors = virtual.Transport.channel_errors + (SchemaError,)

    def __init__(self, client, **kwargs):
        super().__init__(client, **kwargs)
        options = client.transport_options or {}
        self.settings = Settings.from_options(options)
        self.polling_interval = self.settings.polling_interval
        self.conninfo = dsn.from_kombu(client, options.get("connect_options"))
        #: Claims, renewals, requeues and acks need no fsync: a crash that undoes one only redelivers.
        self.lease_conninfo = dsn.relaxed(self.conninfo)
        self.listen_conninfo = dsn.from_url(self.settings.listen_url) if self.settings.listen_url else self.conninfo
        self.queries = queries.load("celery_durable.transport", "queries.sql", self.settings.schema)
        self.notify_channel = channel_name(self.settings.schema)
        self.leases = Leases(self)
        self._notifier: Notifier | None = None
        self._keeper: Keeper | None = None
        self._loop = None
        self._loop_thread: int | None = None
        self._timers: list = []
        #: One-shot hub timers for delayed messages, by due time (forgotten once fired).
        self._due_timers: dict[float, object] = {}
        self._kick_pipe: tuple[int, int] | None = None
        self._fetcher: Fetcher | None = None
        self._ack_timer = None
        self._delayed: list[tuple[float, str]] = []
        self._next_poll = monotonic() + self.settings.polling_interval
        self._pid = os.getpid()
        self._autovacuum: bool | None = None

    # -- database access --------------------------------------------------------

    def _conn(self, relaxed: bool = False):
        return pool.connection(self.lease_conninfo if relaxed else self.conninfo, self.settings)

    def execute(self, query: str, /, relaxed: bool = False, **params) -> None:
        with self._conn(relaxed) as conn:
            conn.execute(self.queries[query], params)

    def fetchone(self, query: str, /, relaxed: bool = False, **params):
        with self._conn(relaxed) as conn:
            return conn.execute(self.queries[query], params).fetchone()

    def fetchall(self, query: str, /, relaxed: bool = False, **params):
        with self._conn(relaxed) as conn:
            return conn.execute(self.queries[query], params).fetchall()

    def exchange_type(self, name: str) -> str | None:
        row = self.fetchone("exchange_type", name=name)
        return row[0] if row else None

    # -- connection lifecycle ---------------------------------------------------

    def establish_connection(self):
        # A direct connection on every connect, not only the pool's first: otherwise a
        # reconnection to a restarted-but-down server reports "Connected" and Celery's retry
        # policy and backoff never apply. The first probe also prepares the schema.
        pool.probe(self.conninfo, self.settings)
        pool.get_pool(self.conninfo, self.settings)
        return super().establish_connection()

    def close_connection(self, connection):
        if os.getpid() != self._pid:
            return  # a forked child must not touch its parent's sessions
        self._stop_fetcher()
        try:
            self.leases.flush_acks()
        except self.connection_errors:
            logger.warning("could not send pending acks; their messages return after the lease")
        try:
            super().close_connection(connection)
        finally:
            self._stop_background()

    def _stop_fetcher(self) -> None:
        """Stop the fetcher thread; rows it claimed that were never delivered go back at once."""
        fetcher, self._fetcher = self._fetcher, None
        if fetcher is None:
            return
        fetcher.stop()
        for token, rows in fetcher.undelivered():
            self._give_back(token, rows)

    def _give_back(self, token: uuid.UUID, rows: list) -> None:
        """Requeue claimed rows nobody will receive (no delivery counted)."""
        try:
            self.leases.requeue([Lease(row[0], token, row[1]) for row in rows])
        except self.connection_errors:
            logger.warning("could not give back %d claimed messages; they return after the lease", len(rows))

    def _stop_background(self) -> None:
        self._stop_fetcher()
        if self._loop is not None:
            self._loop.on_tick.discard(self._on_tick)
        if self._keeper is not None:
            self._keeper.stop()
            self._keeper = None
        if self._loop is not None and self._notifier is not None:
            try:
                self._loop.remove_reader(self._notifier.fileno())
            except Exception:
                pass
        for timer in [*self._timers, *self._due_timers.values(), self._ack_timer]:
            try:
                timer.cancel()
            except Exception:
                pass
        self._timers.clear()
        self._due_timers.clear()
        self._ack_timer = None
        if self._kick_pipe is not None:
            if self._loop is not None:
                try:
                    self._loop.remove_reader(self._kick_pipe[0])
                except Exception:
                    pass
            for fd in self._kick_pipe:
                os.close(fd)
            self._kick_pipe = None
        if self._notifier is not None:
            self._notifier.close()
            self._notifier = None

    def verify_connection(self, connection) -> bool:
        # Kombu asks on every default_channel access: answer without a round trip.
        # A lost database surfaces as a connection error on the next statement.
        return self._notifier is None or not self._notifier.conn.closed

    # -- publishing -----------------------------------------------------------

    def publish(self, message: dict, exchange: str, routing_key: str) -> None:
        """Insert the message for every queue the exchange routes it to, in the caller's transaction if any."""
        payload = json.dumps(message, separators=(",", ":"))
        if len(payload) > self.settings.max_message_bytes:
            raise MessageTooLarge(
                f"message of {len(payload)} bytes exceeds max_message_bytes ({self.settings.max_message_bytes})"
            )
        props = message.get("properties") or {}
        headers = message.get("headers") or {}
        params = {
            "priority": _priority(props.get("priority")),
            "visible_at": self._native_eta(headers),
            "expires_at": _expires_at(props.get("expiration")),
            "task": headers.get("task"),
            "payload": payload,
        }
        if exchange:
            query, params["exchange"], params["routing_key"] = "message_route", exchange, routing_key
            params["channel"], params["notify_max"] = self.notify_channel, NOTIFY_MESSAGE_MAX
        else:
            query, params["queue"] = "message_put", routing_key
        outer = enqueue.current_connection()
        if outer is not None:
            enqueue.execute(outer, self.queries[query], params)
            return
        with self._conn(relaxed=not self.settings.synchronous_commit) as conn:
            conn.execute(self.queries[query], params)

    def _native_eta(self, headers: dict) -> datetime | None:
        threshold = self.settings.native_delay_threshold
        eta = headers.get("eta")
        if not threshold or not eta:
            return None
        try:
            when = datetime.fromisoformat(eta)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        if (when - datetime.now(timezone.utc)).total_seconds() > threshold:
            return when
        return None

    # -- claiming and delivery ----------------------------------------------------

    def claim(self, channel: Channel, queues: list[str], n: int) -> list[dict]:
        """Lease up to ``n`` messages of ``queues`` now; return decoded payloads in order."""
        token, (rows,) = self.claim_rows([(list(queues), n)], self.leases.take_pending())
        return self.accept(token, rows)

    def claim_rows(self, requests: list[tuple[list[str], int]], acks: list[Lease]) -> tuple[uuid.UUID, list[list]]:
        """Send ``acks`` and one claim per ``(queues, n)`` request in one round trip.

        Returns the lease token and the claimed rows of each request. Pipeline mode: a busy
        worker pays one round trip per batch of acks and claims, not one per statement.
        """
        token = uuid.uuid4()
        claim = {"lease": self.settings.lease_seconds, "token": token, "worker": WORKER_ID}
        with self._conn(relaxed=True) as conn:
            if not acks and len(requests) == 1:
                queues, n = requests[0]
                return token, [conn.execute(self.queries["message_claim"], dict(claim, queues=queues, n=n)).fetchall()]
            with conn.pipeline():
                acked = conn.execute(self.queries["message_ack"], self.leases.ack_params(acks)) if acks else None
                cursors = [conn.cursor().execute(self.queries["message_claim"], dict(claim, queues=queues, n=n))
                           for queues, n in requests]
            if acked is not None:
                self.leases.check_acked(acks, acked.fetchall())
            return token, [cur.fetchall() for cur in cursors]

    def accept(self, token: uuid.UUID, rows: list) -> list[dict]:
        """Register the leases of claimed rows; return their decoded payloads in delivery order.

        Rows past their TTL are deleted, rows delivered too often or undecodable go to dead_letter.
        """
        rows.sort(key=lambda r: (-r[2], r[0]))
        payloads, discard, dead = [], [], []
        for row_id, queue, _priority, deliveries, expired, raw in rows:
            lease = Lease(row_id, token, queue)
            if expired:
                discard.append(lease)
                continue
            if self.settings.max_deliveries and deliveries > self.settings.max_deliveries:
                dead.append((lease, f"delivered {deliveries} times (max_deliveries={self.settings.max_deliveries})"))
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
                headers[LEASE_HEADER] = f"{row_id}:{token}"
                lease = Lease(row_id, token, queue, durable_step=True)
            self.leases.add(tag, lease)
            payloads.append(payload)
        if discard:
            self.leases.ack_now(discard)
        for lease, reason in dead:
            logger.error("message %s of queue %r moved to dead_letter: %s", lease.id, lease.queue, reason)
            self.leases.dead_letter([lease], reason)
        return payloads

    def _claim_size(self, channel: Channel) -> int:
        """How many messages to claim for ``channel`` now (0: not now).

        A channel that still holds messages refills only once half its prefetch
        is free: one claim then serves several tasks (measured: +36% tasks/s at
        prefetch 8), and its pool never starves since half stays queued locally.
        """
        if (not channel.ready or channel.claiming or not channel._consumers or not channel._active_queues
                or channel.closed):
            return 0
        capacity = channel.qos.can_consume_max_estimate()
        if capacity is None:
            return self.settings.claim_batch
        prefetch = channel.qos.prefetch_count
        if capacity < prefetch and capacity < max(1, prefetch // 2):
            return 0
        return min(capacity, self.settings.claim_batch)

    def _fetch(self, channel: Channel) -> int:
        """Claim for one channel now and deliver; return how many were delivered."""
        n = self._claim_size(channel)
        if n <= 0:
            return 0
        payloads = self.claim(channel, list(dict.fromkeys(channel._active_queues)), n)
        channel.ready = len(payloads) >= n
        return self._deliver_claimed(channel, payloads)

    def _deliver_claimed(self, channel: Channel, payloads: list[dict]) -> int:
        for payload in payloads:
            tag = payload["properties"]["delivery_tag"]
            lease = self.leases.get(tag)
            queue = lease.queue if lease else payload["properties"].get("delivery_info", {}).get("routing_key")
            try:
                self._deliver(payload, queue)
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

    def _fetch_ready(self) -> int:
        delivered = 0
        for channel in list(self.channels):
            delivered += self._fetch(channel)
        return delivered

    def consumer_added(self, channel: Channel) -> None:
        """Start listening (and renewing leases) once this connection consumes."""
        if self._notifier is None:
            self._notifier = Notifier(self.listen_conninfo, self.settings.schema, self.settings.connect_timeout)
            if self._loop is not None:
                self._loop.add_reader(self._notifier.fileno(), self._on_readable)
        if self._keeper is None:
            self._keeper = Keeper(self)
            self._keeper.start()

    def _wake(self, wakeups: list[Wakeup]) -> int:
        """Act on notifications; return how many inline messages were delivered."""
        now = time()
        delivered = 0
        for wakeup in wakeups:
            if wakeup.message is not None:
                delivered += self._deliver_inline(wakeup.queue, wakeup.message)
                continue
            if wakeup.at is not None and wakeup.at > now:
                heapq.heappush(self._delayed, (wakeup.at, wakeup.queue))
                if self._loop is not None and wakeup.at not in self._due_timers:
                    self._due_timers[wakeup.at] = self._loop.call_at(wakeup.at, self._on_delayed_due, wakeup.at)
                continue
            self._mark_ready(wakeup.queue)
        return delivered

    def _deliver_inline(self, queue: str, raw: str) -> int:
        """A broadcast that travelled in the NOTIFY payload: no row, no lease, nothing to ack."""
        if queue not in self._callbacks:
            return 0
        try:
            payload = json.loads(raw)
            payload["properties"]["delivery_tag"] = f"n:{uuid.uuid4()}"
        except (ValueError, TypeError, KeyError):
            logger.error("dropped an undecodable broadcast for queue %r", queue)
            return 0
        self._deliver(payload, queue)
        return 1

    def _mark_ready(self, queue: str | None = None) -> None:
        """Claim soon from ``queue``'s consumers, or (None: the safety poll) from every durable queue's."""
        for channel in self.channels:
            if queue is None:
                if any(q not in channel.transient_queues for q in channel._active_queues):
                    channel.ready = True
            elif queue in channel._active_queues:
                channel.ready = True

    def _release_due(self) -> None:
        now = time()
        while self._delayed and self._delayed[0][0] <= now:
            self._mark_ready(heapq.heappop(self._delayed)[1])

    def batching_acks(self) -> bool:
        """True on the open event loop's thread: acks wait for the fetcher's next round trip.

        Once closed, acks (late ones of an old channel) go at once.
        """
        return self._fetcher is not None and threading.get_ident() == self._loop_thread

    def consumed_queues(self) -> list[str]:
        return sorted({q for channel in list(self.channels) for q in channel._active_queues})

    def touch_queues(self) -> None:
        queues = self.consumed_queues()
        if queues:
            self.execute("queue_touch", relaxed=True, names=queues)

    def maintain(self) -> None:
        """Expire unused queues, messages past their TTL and old dead letters; vacuum if the server does not."""
        self.execute("queue_expire")
        self.execute("message_expire")
        self.execute("dead_letter_expire", retention=self.settings.dead_letter_retention)
        if self._autovacuum is None:
            self._autovacuum = bool(self.fetchone("autovacuum_enabled")[0])
        if not self._autovacuum:
            self._vacuum()

    def _vacuum(self) -> None:
        # Every ack leaves a dead row; without autovacuum the table (and each claim's index
        # scan) would grow for ever.
        schema = self.settings.schema
        with self._conn() as conn:
            locked = conn.execute(self.queries["message_vacuum_lock"],
                                  {"schema": schema, "table": f"{schema}.message"}).fetchone()
            if locked and locked[0]:
                try:
                    conn.execute(self.queries["message_vacuum"])
                finally:
                    conn.execute(self.queries["message_vacuum_unlock"], {"schema": schema})

    # -- event loop (Celery's hub) --------------------------------------------------

    def register_with_event_loop(self, connection, loop):
        self._loop = loop
        self._loop_thread = threading.get_ident()
        if self._notifier is not None:
            loop.add_reader(self._notifier.fileno(), self._on_readable)
        if self._kick_pipe is None:
            self._kick_pipe = os.pipe()
            for fd in self._kick_pipe:
                os.set_blocking(fd, False)
        if self._fetcher is None:
            self._fetcher = Fetcher(self, self._kick_pipe[1])
        loop.add_reader(self._kick_pipe[0], self._on_fetched)
        loop.on_tick.add(self._on_tick)
        self._timers.append(loop.call_repeatedly(self.settings.polling_interval, self._on_safety_poll))

    def _on_readable(self) -> None:
        if self._notifier is not None:
            self._wake(self._notifier.drain())
            self._request_claims()

    def _on_tick(self) -> None:
        # Never waits for the database: claims and acks go to the fetcher thread, and
        # deliveries happen in _on_fetched, a reader callback. (Delivering here would stall:
        # on_tick runs after the loop chose its poll timeout, so work Celery schedules for a
        # delivered task with call_soon would wait for that timeout.)
        self._loop_thread = threading.get_ident()
        if self._fetcher is None:
            return  # closed: Celery's next connection has its own transport
        if self._request_claims():
            return  # pending acks go with the claims
        age = self.leases.pending_age()
        if age is None:
            return
        if age >= ACK_DELAY_MAX or not any(c.ready or c.claiming for c in self.channels):
            # Nothing to claim soon: send the acks alone. (Acked leases are no longer renewed,
            # so an ack must not wait long; ACK_DELAY_MAX is far below any lease.)
            self._fetcher.flush_acks()
        elif self._ack_timer is None:
            # An idle loop may not turn again for seconds: make sure it does.
            self._ack_timer = self._loop.call_later(ACK_DELAY_MAX, self._on_ack_timer)

    def _on_ack_timer(self) -> None:
        self._ack_timer = None  # the loop turns now, and _on_tick sends the acks

    def _request_claims(self) -> bool:
        """Ask the fetcher for what each channel can take now (pending acks go along)."""
        if self._fetcher is None:
            return False
        asked = False
        for channel in self.channels:
            n = self._claim_size(channel)
            if n > 0:
                # Readiness is spent on this claim; a NOTIFY during its round trip sets it again.
                channel.ready = False
                channel.claiming = n
                self._fetcher.claim(channel, list(dict.fromkeys(channel._active_queues)), n)
                asked = True
        return asked

    def _on_fetched(self) -> None:
        try:
            os.read(self._kick_pipe[0], 4096)
        except BlockingIOError:
            pass
        if self._fetcher is None:
            return
        done = self._fetcher.done
        while done:
            requests, token, rows = done.popleft()
            for channel in requests:
                channel.claiming = 0
            if token is None:
                raise rows
            for (channel, (_queues, n)), claimed in zip(requests.items(), rows):
                if channel.closed or channel not in self.channels:
                    self._give_back(token, claimed)
                    continue
                if len(claimed) >= n:
                    channel.ready = True  # there may be more
                self._deliver_claimed(channel, self.accept(token, claimed))
        self._request_claims()

    def _on_safety_poll(self) -> None:
        self._mark_ready()

    def _on_delayed_due(self, at: float) -> None:
        self._due_timers.pop(at, None)
        self._release_due()

    # -- synchronous draining (kombu consumers without a hub) -----------------------

    def drain_events(self, connection, timeout=None):
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            self.leases.flush_acks()
            now = monotonic()
            if now >= self._next_poll:
                self._mark_ready()
                self._next_poll = now + self.settings.polling_interval
            self._release_due()
            if self._fetch_ready():
                return
            now = monotonic()
            if deadline is not None and now >= deadline:
                raise socket.timeout()
            wait = self._next_poll - now
            if deadline is not None:
                wait = min(wait, deadline - now)
            if self._delayed:
                wait = min(wait, max(0.0, self._delayed[0][0] - time()))
            if self._notifier is None:
                # Nothing consumes on this connection: just let the time pass.
                threading.Event().wait(max(0.0, wait))
            elif self._wake(self._notifier.wait(max(0.0, wait))):
                return

    @property
    def default_connection_params(self):
        return {"port": self.default_port, "hostname": "localhost"}


def _priority(value) -> int:
    try:
        return max(0, min(int(value), 255))
    except (TypeError, ValueError):
        return 0


def _expires_at(expiration) -> datetime | None:
    if expiration in (None, ""):
        return None
    try:
        return datetime.now(timezone.utc) + timedelta(milliseconds=float(expiration))
    except (TypeError, ValueError):
        return None
