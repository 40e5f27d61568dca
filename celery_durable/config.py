"""Typed settings shared by the transport, the result backend and durable chains.

Settings come from ``broker_transport_options`` (transport), from
``result_backend_transport_options``/``app.conf`` (backend) or from keyword
arguments. The docs' settings reference is generated from the fields below
(their ``#:`` comments and defaults), so docs and code cannot disagree.
"""

from __future__ import annotations

import difflib
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

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
    # Each field's ``#:`` comment is its entry in the docs' settings reference (docs/hooks/reference.py
    # builds the table from these fields, their defaults and _ONLY_IN): write it for users.

    #: PostgreSQL schema holding every table, view and function; the broker's NOTIFY channel is
    #: `<schema>.message` (results are notified on a channel per task). Give both dicts the same
    #: schema for atomic durable workflows.
    schema: str = SCHEMA_DEFAULT
    #: Seconds a claimed message stays invisible to other workers; the worker renews it every third of
    #: it while it holds the message (prefetched, waiting for its ETA, running). A SIGKILLed worker's
    #: messages come back after it.
    lease_seconds: float = LEASE_SECONDS_DEFAULT
    #: Seconds between a worker's safety polls (NOTIFY wakes it sooner); a poll also finds the expired
    #: leases of dead workers.
    polling_interval: float = POLLING_INTERVAL_DEFAULT
    #: Most messages one claim statement takes when no prefetch limit applies.
    claim_batch: int = CLAIM_BATCH_DEFAULT
    #: Deliveries after which a message moves to the `dead_letter` table (0: no limit); a warm
    #: shutdown's restore does not count.
    max_deliveries: int = MAX_DELIVERIES_DEFAULT
    #: Seconds: an ETA/countdown further ahead than this waits in the table, not in a worker's memory
    #: (0: never).
    native_delay_threshold: float = NATIVE_DELAY_THRESHOLD_DEFAULT
    #: Largest message a publish accepts, in bytes (a larger one raises `MessageTooLarge`).
    max_message_bytes: int = MAX_MESSAGE_BYTES_DEFAULT
    #: Largest encoded result the backend stores, in bytes (a larger one fails its task with
    #: `ResultTooLarge`; PostgreSQL's own limit is 1 GB).
    max_result_bytes: int = MAX_RESULT_BYTES_DEFAULT
    #: Connections per pool: one pool per process, database, component and connection options (this,
    #: ``prepared_statements``, ``connect_timeout``: the broker and the backend share one when these agree).
    pool_max_size: int = POOL_MAX_SIZE_DEFAULT
    #: Seconds to wait for a new connection; also how long a silent server is waited for before a
    #: WARNING says so (pipelined publishes go on waiting).
    connect_timeout: float = CONNECT_TIMEOUT_DEFAULT
    #: Create or upgrade the schema on first use (under an advisory lock). False: a missing or older
    #: schema is an error (`SchemaError`): for a role that may not change the schema.
    auto_migrate: bool = True
    #: Seconds between runs of a worker's maintenance thread: unused expiring queues with their
    #: messages, messages past their TTL, dead letters past `dead_letter_retention`, expired results,
    #: groups and chords, finished workflows past `workflow_retention`, and a VACUUM of `message` when
    #: the server's autovacuum is off and acks left many dead rows. One process at a time per schema
    #: (a transaction-scoped try-lock, so PgBouncer's transaction mode works; the others skip), in
    #: batches that skip rows in use, bounded in time (the rest waits for the next run). With a broker
    #: outside the database the durable sweep runs in the same thread. A worker whose maintenance
    #: cannot start says so in its log (ERROR).
    maintenance_interval: float = MAINTENANCE_INTERVAL_DEFAULT
    #: Seconds dead letters are kept.
    dead_letter_retention: float = DEAD_LETTER_RETENTION_DEFAULT
    #: Seconds finished workflows and their checkpoints are kept.
    workflow_retention: float = WORKFLOW_RETENTION_DEFAULT
    #: With a Redis or RabbitMQ broker: seconds a sent task of a durable workflow may show no sign of
    #: life (past its countdown) before the sweep re-sends it; workers holding one refresh it every
    #: third of this.
    recovery_after: float = RECOVERY_AFTER_DEFAULT
    #: A direct URL (not through PgBouncer) for LISTEN; none: the main URL. Required when the main URL
    #: goes through PgBouncer in transaction mode (without it a worker stops at start-up and `get()`
    #: raises `ListenUnavailable`).
    listen_url: str | None = None
    #: Publishes (broker) and stored results (backend) wait for the WAL flush. False: their commits
    #: return before it; a crash of the database server (never of a client or worker) may then lose
    #: the last three `wal_writer_delay` of them. Claims, acks and lease renewals never wait for the
    #: flush (an undone one only redelivers); checkpoints always do.
    synchronous_commit: bool = True
    #: Server-side prepared statements for repeated queries. None (or "auto"): on, unless the
    #: connection finds a pooler (PgBouncer) in between, which may run a statement on a session that
    #: never saw its PREPARE; true or false force it.
    prepared_statements: bool | None = None
    #: `delay()` returns once its message is committed. False: once the insert is written to the server
    #: (pipelined, committed in groups; see The broker, "Publishing without waiting", for what a crash
    #: may lose). Kombu's name for it.
    confirm_publish: bool = True
    #: Confirmed publishes send the workers' wake-up NOTIFY in a second, quick transaction after their
    #: commit instead of inside it. PostgreSQL holds a cluster-wide lock from a NOTIFYing commit until
    #: its WAL flush is done, so with many producer processes this lets their commits share flushes;
    #: for one producer it costs time per publish (see Performance).
    wake_after_commit: bool = False
    #: A wake-up makes one idle worker claim (the one idle the shortest), not every worker of the queue: the
    #: workers tell each other on the wake-up channel when they are idle (a note riding on their acks),
    #: and a full claim wakes the other idle ones. False: every worker claims on every wake-up.
    designated_wakes: bool = True
    #: Seconds whatever holds the xmin horizon may hold it before a worker logs a WARNING naming it
    #: (while `message` holds dead rows its claims must walk past), and before `durable doctor` calls
    #: it a warning (`--warning-age` overrides).
    horizon_warning_age: float = HORIZON_WARNING_AGE_DEFAULT
    #: Seconds between a worker's checks of the horizon (one catalog query in its maintenance thread,
    #: never one per claim): at most one such WARNING per interval; 0: no checks.
    horizon_check_interval: float = HORIZON_CHECK_INTERVAL_DEFAULT
    #: `celery_durable.beat:Scheduler`: seconds the active beat's lease lasts (renewed every third of it);
    #: a waiting beat takes over within it when the holder dies. Read from the dict of the database that
    #: holds the schedule (the broker's when it is PostgreSQL, else the backend's).
    beat_lease_seconds: float = BEAT_LEASE_SECONDS_DEFAULT
    #: `celery_durable.beat:Scheduler`: what an entry without its own `catch_up` does with runs that fell due
    #: while no beat held the lease: `once` (Celery's rule: the latest is sent), `skip` (none), `all` (each one).
    beat_catch_up: str = BEAT_CATCH_UP_DEFAULT
    #: `celery_durable.beat:Scheduler`: most runs of one entry sent in one tick (catch-up `all`, a stalled
    #: beat); older ones are skipped, logged and counted (`skipped_run_count`).
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
    def from_options(cls, options: Mapping[str, Any] | None, component: str | None = None) -> Settings:
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
        coerced: dict[str, Any] = {}
        for key, value in values.items():
            default = getattr(settings, key)
            try:
                if key == "prepared_statements" and isinstance(value, str):
                    coerced[key] = None if value.lower() == "auto" else _flag(value)
                elif isinstance(default, bool):
                    coerced[key] = _flag(value)
                elif isinstance(default, int) and not isinstance(default, bool):
                    coerced[key] = int(value)
                elif isinstance(default, float):
                    coerced[key] = float(value)
                else:
                    coerced[key] = value
            except (TypeError, ValueError):
                raise ValueError(f"{key} must be {_KINDS.get(key) or _KINDS[type(default)]}, got {value!r}") from None
        return replace(settings, **coerced)


#: What a setting's value must be, for the error that names it.
_KINDS: dict[Any, str] = {bool: "true or false (also on/off, yes/no, 1/0)", int: "an integer", float: "a number",
                          "prepared_statements": "true, false or auto"}


def _flag(value: Any) -> bool:
    """A boolean option, also spelt as text (PostgreSQL's on/off too); raises ValueError for anything else."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


# -- which option belongs where --------------------------------------------------------------------

BROKER_OPTIONS = "broker_transport_options"
BACKEND_OPTIONS = "result_backend_transport_options"

#: Settings read only from one of the two dicts (the others are read from both).
_ONLY_IN = {
    "lease_seconds": BROKER_OPTIONS, "polling_interval": BROKER_OPTIONS, "claim_batch": BROKER_OPTIONS,
    "max_deliveries": BROKER_OPTIONS, "native_delay_threshold": BROKER_OPTIONS,
    "max_message_bytes": BROKER_OPTIONS, "dead_letter_retention": BROKER_OPTIONS,
    "confirm_publish": BROKER_OPTIONS, "wake_after_commit": BROKER_OPTIONS,
    "designated_wakes": BROKER_OPTIONS,
    "horizon_warning_age": BROKER_OPTIONS, "horizon_check_interval": BROKER_OPTIONS,
    "max_result_bytes": BACKEND_OPTIONS, "recovery_after": BACKEND_OPTIONS, "workflow_retention": BACKEND_OPTIONS,
}
#: Keys of ours read outside Settings: key -> (the dict that reads it, its entry in the docs' reference).
OTHER_KEYS = {
    "connect_options": (BROKER_OPTIONS, "extra libpq keywords as a dict (`sslmode`, `application_name`, ...); "
                                        "the URL takes them as query parameters too"),
}
#: Keys read by someone else than Settings: ours (OTHER_KEYS) or Kombu's own (connection retries,
#: virtual transports' body_encoding and deadletter_queue).
_OTHER_READERS = {
    BROKER_OPTIONS: frozenset({
        *OTHER_KEYS, "max_retries", "interval_start", "interval_step", "interval_max",
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
