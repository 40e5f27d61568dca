"""Typed settings shared by the transport, the result backend and durable chains.

Settings come from ``broker_transport_options`` (transport), from
``result_backend_transport_options``/``app.conf`` (backend) or from keyword
arguments; every default is a module constant so the README table and the
code cannot disagree.
"""

from __future__ import annotations

import difflib
import logging
import re
import threading
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

logger = logging.getLogger(__name__)

SCHEMA_DEFAULT = "celery_durable"
LEASE_SECONDS_DEFAULT = 30.0
POLLING_INTERVAL_DEFAULT = 5.0
CLAIM_BATCH_DEFAULT = 100
MAX_DELIVERIES_DEFAULT = 16
NATIVE_DELAY_THRESHOLD_DEFAULT = 60.0
MAX_MESSAGE_BYTES_DEFAULT = 64 * 1024 * 1024
MAX_RESULT_BYTES_DEFAULT = 64 * 1024 * 1024
POOL_MAX_SIZE_DEFAULT = 10
CONNECT_TIMEOUT_DEFAULT = 10.0
MAINTENANCE_INTERVAL_DEFAULT = 30.0
DEAD_LETTER_RETENTION_DEFAULT = 14 * 24 * 3600.0
WORKFLOW_RETENTION_DEFAULT = 7 * 24 * 3600.0
RECOVERY_AFTER_DEFAULT = 300.0
HORIZON_WARNING_AGE_DEFAULT = 60.0
HORIZON_CHECK_INTERVAL_DEFAULT = 60.0
BEAT_LEASE_SECONDS_DEFAULT = 10.0
BEAT_CATCH_UP_DEFAULT = "once"
BEAT_CATCH_UP_MAX_DEFAULT = 100

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Settings:
    #: PostgreSQL schema holding every table, view, function and channel.
    schema: str = SCHEMA_DEFAULT
    #: Seconds a claimed message stays invisible to others; renewed every third of it while held.
    lease_seconds: float = LEASE_SECONDS_DEFAULT
    #: Seconds between safety polls; NOTIFY wakes workers sooner.
    polling_interval: float = POLLING_INTERVAL_DEFAULT
    #: Most messages one claim statement takes when no prefetch limit applies.
    claim_batch: int = CLAIM_BATCH_DEFAULT
    #: Deliveries after which a message moves to the dead-letter table (0: no limit).
    max_deliveries: int = MAX_DELIVERIES_DEFAULT
    #: An ETA/countdown further ahead than this waits in the table, not in worker memory (0: never).
    native_delay_threshold: float = NATIVE_DELAY_THRESHOLD_DEFAULT
    #: Largest message accepted by publish, in bytes.
    max_message_bytes: int = MAX_MESSAGE_BYTES_DEFAULT
    #: Largest encoded result the backend stores, in bytes (PostgreSQL's own limit is 1 GB).
    max_result_bytes: int = MAX_RESULT_BYTES_DEFAULT
    #: Connections per process and database URL.
    pool_max_size: int = POOL_MAX_SIZE_DEFAULT
    #: Seconds to wait for a new connection.
    connect_timeout: float = CONNECT_TIMEOUT_DEFAULT
    #: Create or migrate the schema on first use (under an advisory lock).
    auto_migrate: bool = True
    #: Seconds between runs of the maintenance thread (expiry of queues, messages, dead letters,
    #: results and finished workflows; VACUUM when the server does not).
    maintenance_interval: float = MAINTENANCE_INTERVAL_DEFAULT
    #: Seconds dead letters are kept.
    dead_letter_retention: float = DEAD_LETTER_RETENTION_DEFAULT
    #: Seconds finished workflows and their checkpoints are kept.
    workflow_retention: float = WORKFLOW_RETENTION_DEFAULT
    #: With a broker outside the database: seconds a step may sit unstarted before the sweep re-sends it.
    recovery_after: float = RECOVERY_AFTER_DEFAULT
    #: A direct (non-PgBouncer) URL for LISTEN; None: the main URL.
    listen_url: str | None = None
    #: Publishes (transport) and stored results (backend) wait for the WAL flush. False: each
    #: commit returns before its fsync (see benchmarks/README.md for what it gains); a crash of the
    #: database server, never of a client, may then lose the last three wal_writer_delay of them.
    synchronous_commit: bool = True
    #: Server-side prepared statements for repeated queries. None: on, unless a pooler (PgBouncer)
    #: is detected, which may run a statement on a session that never saw its PREPARE.
    prepared_statements: bool | None = None
    #: Broker: ``delay()`` returns once its message is committed. False: once the statement is written
    #: to the server (pipelined; see transport/pipeline.py for what a crash may lose). Kombu's name.
    confirm_publish: bool = True
    #: Broker: confirmed publishes send the consumers' wake-up in a second transaction after their
    #: commit, so the commits of several producer processes share WAL flushes (a NOTIFYing commit
    #: holds PostgreSQL's NOTIFY lock until its flush). It costs a single producer time per publish.
    wake_after_commit: bool = False
    #: Broker: a worker logs a WARNING naming what holds the xmin horizon once it has held it this many
    #: seconds while the message table holds dead rows; also the warning age of ``durable doctor``.
    horizon_warning_age: float = HORIZON_WARNING_AGE_DEFAULT
    #: Broker: seconds between a worker's checks of the horizon (one catalog query each; 0: never).
    horizon_check_interval: float = HORIZON_CHECK_INTERVAL_DEFAULT
    #: Beat: seconds the active beat's lease lasts (renewed every third of it); another beat takes over
    #: within it when the holder dies. Read from the dict of the database that holds the schedule.
    beat_lease_seconds: float = BEAT_LEASE_SECONDS_DEFAULT
    #: Beat: what an entry without its own ``catch_up`` does with runs that fell due while no beat held
    #: the lease: ``once`` (Celery's rule: the latest is sent), ``skip`` (none), ``all`` (each one).
    beat_catch_up: str = BEAT_CATCH_UP_DEFAULT
    #: Beat: most runs of one entry sent in one tick (catch-up ``all``, or a long stall); older ones are skipped.
    beat_catch_up_max: int = BEAT_CATCH_UP_MAX_DEFAULT

    def __post_init__(self) -> None:
        if not _SCHEMA_NAME.match(self.schema):
            raise ValueError(
                f"schema must be a lower-case identifier ([a-z_][a-z0-9_]*), got {self.schema!r}"
            )
        if self.lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        if self.beat_lease_seconds <= 0:
            raise ValueError("beat_lease_seconds must be positive")
        if self.beat_catch_up not in ("once", "skip", "all"):
            raise ValueError(f"beat_catch_up must be once, skip or all, got {self.beat_catch_up!r}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None, component: str | None = None) -> "Settings":
        """Build from a dict; keys that are no setting here are ignored.

        ``component`` (``BROKER_OPTIONS`` or ``BACKEND_OPTIONS``) names where the dict
        came from: keys that mean nothing there are logged once per process (see
        :func:`check_options`).
        """
        if component is not None:
            check_options(options or {}, component)
        known = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in (options or {}).items():
            if key in known and value is not None:
                values[key] = value
        settings = cls()
        coerced = {}
        for key, value in values.items():
            default = getattr(settings, key)
            if key == "prepared_statements" and isinstance(value, str):
                coerced[key] = None if value.lower() == "auto" else value.lower() in ("1", "true", "yes")
            elif isinstance(default, bool):
                coerced[key] = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
            elif isinstance(default, int) and not isinstance(default, bool):
                coerced[key] = int(value)
            elif isinstance(default, float):
                coerced[key] = float(value)
            else:
                coerced[key] = value
        return replace(settings, **coerced)


# -- which option belongs where --------------------------------------------------------------------

BROKER_OPTIONS = "broker_transport_options"
BACKEND_OPTIONS = "result_backend_transport_options"

#: Settings read only from one of the two dicts (the others are read from both).
_ONLY_IN = {
    "lease_seconds": BROKER_OPTIONS, "polling_interval": BROKER_OPTIONS, "claim_batch": BROKER_OPTIONS,
    "max_deliveries": BROKER_OPTIONS, "native_delay_threshold": BROKER_OPTIONS,
    "max_message_bytes": BROKER_OPTIONS, "dead_letter_retention": BROKER_OPTIONS,
    "confirm_publish": BROKER_OPTIONS, "wake_after_commit": BROKER_OPTIONS,
    "horizon_warning_age": BROKER_OPTIONS, "horizon_check_interval": BROKER_OPTIONS,
    "max_result_bytes": BACKEND_OPTIONS, "recovery_after": BACKEND_OPTIONS, "workflow_retention": BACKEND_OPTIONS,
}
#: Keys read by someone else than Settings: ours (connect_options) or Kombu's own (connection retries,
#: virtual transports' body_encoding and deadletter_queue).
_OTHER_READERS = {
    BROKER_OPTIONS: frozenset({
        "connect_options", "max_retries", "interval_start", "interval_step", "interval_max",
        "connect_retries_timeout", "errback", "callback", "body_encoding", "deadletter_queue",
    }),
    BACKEND_OPTIONS: frozenset(),
}
#: Options of other brokers and backends (Redis, SQS, RabbitMQ), and what plays their part here.
EQUIVALENTS = {
    "visibility_timeout": "lease_seconds (renewed while a worker holds the message)",
    "max_connections": "pool_max_size",
    "socket_connect_timeout": "connect_timeout",
    "global_keyprefix": "schema",
    "fanout_prefix": "nothing (fanout is routed in the database)",
    "fanout_patterns": "nothing (fanout is routed in the database)",
    "priority_steps": "nothing (priorities 0-9 are native)",
    "queue_order_strategy": "nothing (priorities, then age, are native)",
}

_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def check_options(options: Mapping[str, Any], component: str) -> list[str]:
    """Log, once per process and key, the keys of ``component``'s dict that mean nothing there.

    Each is named with what to use instead: the setting of ours that does its job,
    the dict where it belongs, or the closest setting name (a typo). Returns the
    lines logged now.
    """
    names = [f.name for f in fields(Settings)]
    lines = []
    for key in options:
        if not isinstance(key, str):
            continue
        elsewhere = _ONLY_IN.get(key)
        if (key in names and elsewhere in (None, component)) or key in _OTHER_READERS.get(component, ()):
            continue
        with _warned_lock:
            if (component, key) in _warned:
                continue
            _warned.add((component, key))
        if key in names:
            lines.append(f"{key!r} belongs in {elsewhere}")
        elif key in EQUIVALENTS:
            lines.append(f"{key!r} (here: {EQUIVALENTS[key]})")
        else:
            close = difflib.get_close_matches(key, [*names, *_OTHER_READERS.get(component, ())], n=1)
            lines.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    if lines:
        logger.warning("celery_durable ignores these %s: %s", component, "; ".join(lines))
    return lines
