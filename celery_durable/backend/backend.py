"""The result backend: task results, groups, expiry and the in-transaction store.

Each task's meta (status, result, traceback, children, extended fields) is
encoded with the backend's serializer into ``result.meta`` (bytea) together
with its content type, so a reader configured with another serializer still
decodes it; the plain columns (status, name, worker, queue, retries,
date_done) exist for people who monitor with SQL. Waiting is done by the
NOTIFY-driven :class:`~celery_durable.backend.consumer.ResultConsumer`, each
task's NOTIFY on its own channel (:func:`.notify.channel`); native chords live
in :mod:`celery_durable.backend.chords`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from celery import states
from celery.backends.asynchronous import AsyncBackendMixin
from celery.backends.base import Backend
from celery.exceptions import ImproperlyConfigured
from celery.result import result_from_tuple
from kombu.serialization import loads
from kombu.utils.encoding import bytes_to_str

from .. import maintenance, runtime
from ..compat import decompress_payload
from ..config import BACKEND_OPTIONS, Settings
from ..db import dsn, fetch, pool
from ..db.queries import load
from ..exceptions import DatabaseUnavailable, ResultTooLarge, SchemaError
from ..maintenance import Expiry
from . import notify
from .chain_failure import ChainFailureMixin
from .chords import ChordMixin
from .consumer import ResultConsumer

logger = logging.getLogger(__name__)

class PostgresBackend(ChainFailureMixin, ChordMixin, Backend, AsyncBackendMixin):
    """Celery result backend storing results in PostgreSQL; ``get()`` wakes on NOTIFY."""

    ResultConsumer = ResultConsumer

    supports_native_join = True
    # Expired rows go by beat's celery.backend_cleanup *and* opportunistically; False keeps beat's task.
    supports_autoexpire = False
    supports_result_compression = True  # bytea keeps any bytes unchanged
    supports_failure_expires = True

    def __init__(self, app: Any, url: str | None = None, **kwargs: Any) -> None:
        super().__init__(app, url=url, **kwargs)
        if not url:
            raise ImproperlyConfigured("PostgresBackend needs a URL: result_backend = 'postgresql://user@host/db'")
        try:
            self.conninfo = dsn.from_url(url)
        except ValueError as exc:
            raise ImproperlyConfigured(f"invalid result_backend URL: {exc}") from None
        options = dict(app.conf.get("result_backend_transport_options") or {})
        self.settings = Settings.from_options(options, BACKEND_OPTIONS)
        self.max_result_bytes = self.settings.max_result_bytes
        failure_expires = app.conf.get("result_failure_expires")
        self.failure_expires = self.expires if failure_expires is None else self.prepare_expires(failure_expires)
        self.queries = load("celery_durable.backend", "queries.sql", self.settings.schema)
        self.connection_errors = (DatabaseUnavailable,)
        self._local = threading.local()
        self.result_consumer = self.ResultConsumer(
            self, self.app, self.accept, self._pending_results, self._pending_messages
        )

    def as_uri(self, include_password: bool = False) -> str:
        """The URL for banners and logs: password masked (Kombu's own masking cannot parse multi-host URLs)."""
        return self.url if include_password else dsn.mask_url(self.url)

    def __reduce__(self, args: tuple = (), kwargs: dict | None = None) -> Any:
        return super().__reduce__(args, dict(kwargs or {}, url=self.url, expires=self.expires))

    # -- connections ---------------------------------------------------------------------------

    @contextmanager
    def _db(self) -> Iterator[psycopg.Connection]:
        """A pooled autocommit connection; a dropped schema becomes SchemaError, an outage DatabaseUnavailable."""
        try:
            with pool.connection(self.conninfo, self.settings) as conn:
                yield conn
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as exc:
            raise self.schema_error(exc) from None

    def schema_error(self, exc: BaseException) -> SchemaError:
        """The error for a query that found no result tables."""
        return SchemaError(
            f"schema {self.settings.schema!r} lacks the result tables in {dsn.describe(self.conninfo)} "
            f"({str(exc).splitlines()[0]}); was it dropped while this process ran?"
        )

    def _execute_store(self, conn: psycopg.Connection, query: Any, params: dict) -> psycopg.Cursor:
        """Run a statement that stores a result.

        Its commit skips the WAL flush wait when ``synchronous_commit`` is off.
        """
        if self.settings.synchronous_commit:
            return conn.execute(query, params)
        return pool.execute_relaxed(conn, query, params)

    def exception_safe_to_retry(self, exc: BaseException) -> bool:
        return isinstance(exc, DatabaseUnavailable)

    # -- encoding --------------------------------------------------------------------------------

    def _encode_payload(self, data: Any, task_id: str) -> bytes:
        """Encode with the backend's serializer (and compression); raises ResultTooLarge past max_result_bytes."""
        payload = self.encode(data)
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        if len(payload) > self.max_result_bytes:
            raise ResultTooLarge(
                f"result of task {task_id} is {len(payload)} bytes encoded, more than "
                f"max_result_bytes={self.max_result_bytes} (result_backend_transport_options)"
            )
        return payload

    def _decode_row(self, content_type: str, content_encoding: str, payload: bytes) -> Any:
        """Decode with the content type it was written with, whatever this backend's serializer is."""
        return loads(
            decompress_payload(bytes(payload)),
            content_type=content_type,
            content_encoding=content_encoding,
            accept=self.accept,
        )

    def _decode_meta(self, content_type: str, content_encoding: str, payload: bytes) -> dict:
        return self.meta_from_decoded(self._decode_row(content_type, content_encoding, payload))

    # -- task results ------------------------------------------------------------------------------

    def _result_params(self, task_id: str, result: Any, state: str, traceback: Any, request: Any) -> dict:
        meta = self._get_result_meta(result=result, state=state, traceback=traceback, request=request)
        meta["task_id"] = bytes_to_str(task_id)
        delivery = getattr(request, "delivery_info", None) if request is not None else None
        retries = getattr(request, "retries", None) if request is not None else None
        name = getattr(request, "task", None) if request is not None else None
        worker = getattr(request, "hostname", None) if request is not None else None
        expires = self.failure_expires if state == states.FAILURE else self.expires
        encoded = self._encode_payload(meta, meta["task_id"])
        return {
            "task_id": meta["task_id"],
            "inline": notify.inline(meta["task_id"], self.content_type, self.content_encoding, encoded),
            "status": state,
            "name": name if isinstance(name, str) else None,
            "worker": worker if isinstance(worker, str) else None,
            "queue": delivery.get("routing_key") if isinstance(delivery, dict) else None,
            "retries": retries if isinstance(retries, int) else None,
            "content_type": self.content_type,
            "content_encoding": self.content_encoding,
            "meta": encoded,
            "ready": state in states.READY_STATES,
            "expires": float(expires) if expires else None,
            "channel": notify.channel(self.settings.schema, meta["task_id"]),
            # A chord header part's place (result_store): ChordMixin._chord_part_params sets it.
            "chord_id": None,
            "chord_index": None,
        }

    def _store_result(self, task_id: str, result: Any, state: str, traceback: Any = None,
                      request: Any = None, **kwargs: Any) -> Any:
        """Upsert the meta and NOTIFY on commit; a chord part is counted in the same statement."""
        params = self._result_params(task_id, result, state, traceback, request)
        part = self._chord_part_params(request, state)
        with self._db() as conn:
            if part is None:
                self._execute_store(conn, self.queries["result_upsert"], params)
            else:
                outcome = self._chord_count(conn, {**params, **part})
                # on_chord_part_return acts on it next, in this thread.
                self._local.chord_outcome = (params["task_id"], part["chord_id"], outcome)
        self._maybe_expire()
        return result

    def store_result_in(self, conn: psycopg.Connection, task_id: str, result: Any, state: str,
                        traceback: Any = None, request: Any = None) -> Any:
        """Store a result on the caller's connection, inside the caller's transaction.

        Nothing is committed here: the row and its NOTIFY become visible when the
        caller commits, and vanish if it rolls back. Raises ResultTooLarge or the
        serializer's EncodeError before touching the database; chord counting is
        left to ``on_chord_part_return``.
        """
        result = self.encode_result(result, state)
        conn.execute(self.queries["result_upsert"], self._result_params(task_id, result, state, traceback, request))
        return result

    def _get_task_meta_for(self, task_id: str) -> dict:
        with self._db() as conn:
            row = conn.execute(self.queries["result_get"], (str(task_id),)).fetchone()
        if row is None:
            return {"status": states.PENDING, "result": None}
        return self._decode_meta(*row)

    def _get_metas(self, task_ids: Any) -> dict[str, dict]:
        """``{task_id: meta}`` for the ids that have a stored state, in one query."""
        ids = [str(t) for t in task_ids]
        if not ids:
            return {}
        with self._db() as conn:
            rows = conn.execute(self.queries["result_get_many"], (ids,)).fetchall()
        return {task_id: self._decode_meta(ct, ce, meta) for task_id, ct, ce, meta in rows}

    def task_result_exists(self, task_id: str) -> bool:
        with self._db() as conn:
            return bool(fetch.value(conn.execute(self.queries["result_exists"], (str(task_id),))))

    def get_many(self, task_ids: Any, timeout: float | None = None, interval: float = 0.5, no_ack: bool = True,
                 on_message: Any = None, on_interval: Any = None, max_iterations: int | None = None,
                 READY_STATES: frozenset = states.READY_STATES) -> Iterator[tuple[str, dict]]:
        """Yield ``(task_id, meta)`` as tasks become ready, woken by NOTIFY (``interval``: longest wait between checks).

        Raises celery's TimeoutError after ``timeout`` s; with ``max_iterations``,
        returns after that many waits even if some tasks are not ready.
        """
        ids = {bytes_to_str(t) for t in task_ids}
        for task_id in list(ids):
            cached = self._cache.get(task_id)
            if cached is not None and cached["status"] in READY_STATES:
                ids.discard(task_id)
                yield task_id, cached
        if ids:
            yield from self.result_consumer.wait_for_ids(
                ids, timeout=timeout, interval=1.0 if interval is None else interval, on_message=on_message,
                on_interval=on_interval, max_iterations=max_iterations)

    def _forget(self, task_id: str) -> None:
        with self._db() as conn:
            conn.execute(self.queries["result_delete"], (str(task_id),))

    def forget(self, task_id: str) -> None:
        super().forget(task_id)
        self.result_consumer.cancel_for(task_id)

    # -- groups -------------------------------------------------------------------------------------

    def _save_group(self, group_id: str, result: Any) -> Any:
        params = {
            "group_id": str(group_id),
            "content_type": self.content_type,
            "content_encoding": self.content_encoding,
            "meta": self._encode_payload({"result": result.as_tuple()}, group_id),
            "expires": float(self.expires) if self.expires else None,
        }
        with self._db() as conn:
            conn.execute(self.queries["group_result_upsert"], params)
        return result

    def _restore_group(self, group_id: str) -> dict | None:
        with self._db() as conn:
            row = conn.execute(self.queries["group_result_get"], (str(group_id),)).fetchone()
        if row is None:
            return None
        meta = self._decode_row(*row)
        meta["result"] = result_from_tuple(meta["result"], self.app)
        return meta

    def _delete_group(self, group_id: str) -> None:
        with self._db() as conn:
            conn.execute(self.queries["group_result_delete"], (str(group_id),))

    # -- expiry ---------------------------------------------------------------------------------------

    def expiries(self) -> list[Expiry]:
        """The backend's share of maintenance: expired results, group results and chords, in batches."""
        q = self.queries
        return [
            Expiry("expired results", q["result_expire_batch"]),
            Expiry("expired group results", q["group_result_expire_batch"]),
            Expiry("expired chords", q["chord_expire_batch"]),
        ]

    def cleanup(self) -> None:
        """Delete every expired result, group and chord (beat's ``celery.backend_cleanup``); blocks until done.

        Batches under the maintenance lock, waiting for its turn when a worker's maintenance holds it.
        """
        service = maintenance.for_database(self.conninfo, self.settings)
        total = sum(service.expire(self.expiries(), deadline=None, wait=True).values())
        logger.info("celery_durable backend cleanup: %d expired rows deleted", total)

    def _maybe_expire(self) -> None:
        """Outside workers, at most once per ``maintenance_interval`` per process, delete one batch of expired rows.

        Needs no beat. A worker's maintenance service does this in its own thread;
        other processes that store results do one batch per table here, under
        the same policy (try-lock, row limit). Errors are logged, never raised
        into the caller.
        """
        if runtime.in_worker():
            return
        try:
            service = maintenance.for_database(self.conninfo, self.settings)
            if service.turn(self.settings.maintenance_interval):
                service.expire(self.expiries(), deadline=time.monotonic() + maintenance.RUN_SECONDS, batches=1)
        except Exception:  # noqa: BLE001 - expiry must never fail a task
            logger.warning("celery_durable: expiring old results failed", exc_info=True)
