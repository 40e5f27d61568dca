"""Kombu transport that keeps every message in PostgreSQL.

URL: ``postgresql://user:password@host:port/database`` (also ``postgres://``),
any libpq URL: every libpq keyword as a query parameter
(``?sslmode=verify-full&sslrootcert=/ca.pem&application_name=shop``), several
hosts (``h1:5432,h2:5432/db?target_session_attrs=read-write``). The same URL
works as ``result_backend`` and as the CLI's ``--url``. Importing
:mod:`celery_durable` registers both schemes; or set ``broker_transport =
"celery_durable.transport:Transport"``. Kombu's ``ssl_*`` spellings
(``?ssl_mode=…``), ``broker_use_ssl`` and the transport option
``connect_options`` (a dict of libpq keywords) work too.

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
``dead_letter_retention``, ``listen_url``, ``synchronous_commit``, ``confirm_publish``) plus
``connect_options`` (a dict of libpq keywords).
"""

from __future__ import annotations

import logging
import os

import psycopg
from kombu.transport import virtual
from psycopg_pool import PoolTimeout

from .. import maintenance
from ..config import BROKER_OPTIONS, Settings
from ..db import dsn, pool
from ..exceptions import DatabaseUnavailable, SchemaError
from .channel import Channel
from .cleanup import Vacuum, expiries
from .database import Database
from .delivery import Delivery
from .drain import Drainer
from .keeper import Keeper
from .leases import Leases
from .loop import HubLoop
from .notifier import Notifier
from .publish import Publisher

logger = logging.getLogger(__name__)


class Transport(virtual.Transport):
    """Kombu's face of the transport; the work is done by one service per module.

    :class:`.publish.Publisher` inserts messages, :class:`.delivery.Delivery`
    claims and hands them over, :class:`.leases.Leases` acks, rejects and
    renews, :class:`.loop.HubLoop` wires it all into Celery's event loop (or
    :class:`.drain.Drainer` without one), :class:`.keeper.Keeper` renews leases
    in its own thread, and the process's maintenance service
    (:mod:`celery_durable.maintenance`) runs :mod:`.maintenance`'s cleanup in another.
    """

    Channel = Channel

    #: Kombu keeps the URL whole and we parse it (db.dsn): its own parser turns libpq keywords into
    #: Connection arguments (TypeError) and cannot read multi-host lists (ValueError).
    can_parse_url = True
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
        self.settings = Settings.from_options(options, BROKER_OPTIONS)
        self.polling_interval = self.settings.polling_interval
        self._hide_password(client)
        self.db = Database(dsn.from_kombu(client, options.get("connect_options")), self.settings)
        self.leases = Leases(self.db, self.batching_acks)
        self.publisher = Publisher(self.db)
        self.delivery = Delivery(self)
        self.vacuum = Vacuum(self.db)
        self._maintenance: maintenance.Maintenance | None = None
        self.notifier: Notifier | None = None
        self._keeper: Keeper | None = None
        self._hub: HubLoop | None = None
        self._drainer = Drainer(self)
        self._pid = os.getpid()

    @property
    def conninfo(self) -> str:
        return self.db.conninfo

    # -- connection lifecycle ---------------------------------------------------

    def establish_connection(self):
        # A direct connection on every connect, not only the pool's first: otherwise a
        # reconnection to a restarted-but-down server reports "Connected" and Celery's retry
        # policy and backoff never apply. The first probe also prepares the schema.
        pool.probe(self.db.conninfo, self.settings)
        pool.get_pool(self.db.conninfo, self.settings)
        return super().establish_connection()

    def close_connection(self, connection):
        if os.getpid() != self._pid:
            return  # a forked child must not touch its parent's sessions
        if self._hub is not None:
            self._hub.stop_fetcher()
        try:
            self.leases.flush_acks()
        except self.connection_errors:
            logger.warning("could not send pending acks; their messages return after the lease")
        try:
            self.publisher.close()  # waits for the answers of pipelined publishes
        except self.connection_errors:
            pass  # each unconfirmed publish was logged with its task id; refusals wait for flush_publishes()
        try:
            super().close_connection(connection)
        finally:
            self._stop_background()

    def _stop_background(self) -> None:
        hub, self._hub = self._hub, None
        if hub is not None:
            hub.close()
        if self._keeper is not None:
            self._keeper.stop()
            self._keeper = None
        if self._maintenance is not None:
            self._maintenance.detach(self)
            self._maintenance = None
        if self.notifier is not None:
            self.notifier.close()
            self.notifier = None

    def verify_connection(self, connection) -> bool:
        # Kombu asks on every default_channel access: answer without a round trip.
        # A lost database surfaces as a connection error on the next statement.
        return self.notifier is None or not self.notifier.conn.closed

    def consumer_added(self, channel: Channel) -> None:
        """Start listening, renewing leases and maintenance once this connection consumes."""
        if self.notifier is None:
            self.notifier = Notifier(self.db.listen_conninfo, self.settings)
            if self._hub is not None:
                self._hub.watch_notifier()
        if self._keeper is None:
            self._keeper = Keeper(self)
            self._keeper.start()
        if self._maintenance is None:
            self._maintenance = maintenance.for_database(self.db.conninfo, self.settings)
            self._maintenance.attach(self, expiries(self.db),
                                     [maintenance.Chore("vacuum", self.vacuum, self.settings.maintenance_interval)],
                                     interval=self.settings.maintenance_interval)

    def batching_acks(self) -> bool:
        """True on the open event loop's thread: acks wait for the fetcher's next round trip.

        Once closed, acks (late ones of an old channel) go at once.
        """
        return self._hub is not None and self._hub.batching_acks()

    # -- consuming --------------------------------------------------------------

    def register_with_event_loop(self, connection, loop):
        if self._hub is not None:
            self._hub.close()
        self._hub = HubLoop(self, loop)
        self._hub.watch_notifier()

    def drain_events(self, connection, timeout=None):
        self._drainer.drain_events(timeout)

    @staticmethod
    def _hide_password(client) -> None:
        """Keep a URL's password in ``Connection.password``, not in the URL Kombu keeps whole.

        ``Connection.info()`` (``celery inspect stats``, Flower) shows the hostname, here the
        URL, and leaves the password out; ``clone()`` passes both on.
        """
        hostname = client.hostname or ""
        if "://" in hostname:
            dsn.check_url(hostname)  # before splitting: an ambiguous URL has no one password to hide
            bare, password = dsn.split_password(hostname)
            if password is not None:
                client.hostname, client.password = bare, password

    def as_uri(self, uri: str, include_password: bool = False, mask: str = dsn.MASK) -> str:
        """The broker URL for banners and logs, password masked."""
        password = self.client.password
        if password and "://" in uri and dsn.split_password(uri)[1] is None:
            uri = dsn.with_password(uri, password() if callable(password) else password)
        return uri if include_password else dsn.mask_url(uri, mask)

    @property
    def default_connection_params(self):
        return {"port": self.default_port, "hostname": "localhost"}
