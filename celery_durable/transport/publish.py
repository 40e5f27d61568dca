"""Publishing: one statement routes a message and inserts a row per target queue.

A publish inside :func:`celery_durable.in_transaction` is an insert in the
caller's transaction. Otherwise it commits on a pooled connection (waiting for
the WAL flush unless ``synchronous_commit`` is off) before ``publish`` returns,
together with other threads' publishes of the same moment (:mod:`.committer`);
with ``confirm_publish`` off it goes down the transport's
:class:`~.pipeline.Pipeline` instead and ``publish`` does not wait for the
commit.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timedelta, timezone
from typing import Any

from .. import enqueue
from ..exceptions import MessageTooLarge
from .channel import broadcast_exchange
from .committer import committer
from .database import Database
from .notifier import NOTIFY_MESSAGE_MAX
from .pipeline import Pipeline


class Publisher:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._pipeline: Pipeline | None = None
        self._pipeline_lock = threading.Lock()

    def publish(self, message: dict, exchange: str, routing_key: str) -> None:
        """Insert the message for every queue the exchange routes it to; raises MessageTooLarge."""
        settings = self.db.settings
        payload = json.dumps(message, separators=(",", ":"))
        if len(payload) > settings.max_message_bytes:
            raise MessageTooLarge(
                f"message of {len(payload)} bytes exceeds max_message_bytes ({settings.max_message_bytes})"
            )
        props = message.get("properties") or {}
        headers = message.get("headers") or {}
        params = {
            "priority": clamp_priority(props.get("priority")),
            "visible_at": self._native_eta(headers),
            "expires_at": None if _celery_expires(headers) else _expires_at(props.get("expiration")),
            "task": headers.get("task"),
            "payload": payload,
        }
        if exchange:
            query, params["exchange"], params["routing_key"] = "message_route", exchange, routing_key
            params["channel"], params["notify_max"] = self.db.notify_channel, NOTIFY_MESSAGE_MAX
            params["broadcast"] = broadcast_exchange(exchange)
        else:
            query, params["queue"] = "message_put", routing_key
        outer = enqueue.current_connection(self.db.conninfo)
        if outer is not None:
            enqueue.execute(outer, self.db.queries[query], params)
            return
        task_id = str(headers.get("id") or props.get("correlation_id") or "?")
        if not settings.confirm_publish:
            self._pipelined().send(self.db.queries[query], params, task_id)
            return
        q = self.db.queries
        wake = (q["message_wake_after_commit"], q["message_wake"]) if settings.wake_after_commit else (None, None)
        committer(self.db.conninfo, settings).publish(q[query], params, *wake, task_id=task_id)

    def settle(self) -> None:
        """Wait until every pipelined publish is answered (so counts include them); raises no refusal."""
        pipeline = self._pipeline
        if pipeline is not None and pipeline.pid == os.getpid():
            pipeline.settle()

    def close(self) -> None:
        """Flush and close the pipeline (the transport's connection closes)."""
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            pipeline.close()

    def _pipelined(self) -> Pipeline:
        """This transport's pipeline; a new one after a loss has been raised, or after a fork."""
        pipeline = self._pipeline
        if pipeline is None or (pipeline.closed and pipeline.error is None) or pipeline.pid != os.getpid():
            with self._pipeline_lock:
                pipeline = self._pipeline
                if pipeline is None or (pipeline.closed and pipeline.error is None) or pipeline.pid != os.getpid():
                    pipeline = self._pipeline = Pipeline(self.db.conninfo, self.db.settings)
        return pipeline

    def _native_eta(self, headers: dict) -> datetime | None:
        """The ETA when it lies further ahead than ``native_delay_threshold``: the row waits in the table."""
        threshold = self.db.settings.native_delay_threshold
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


def clamp_priority(value: Any) -> int:
    """A message priority as the queue stores it: 0 to 255, 0 when it is not a number."""
    try:
        return max(0, min(int(value), 255))
    except (TypeError, ValueError):
        return 0


def _celery_expires(headers: dict) -> bool:
    """A Celery task with ``expires``: its worker must see it to store REVOKED, so the row is not dropped.

    Celery copies ``expires`` into the AMQP ``expiration``; dropping the row would leave
    ``get()`` waiting for ever (as on RabbitMQ). Redis ignores the expiration: so do we.
    """
    return bool(headers.get("task") and headers.get("expires"))


def _expires_at(expiration) -> datetime | None:
    if expiration in (None, ""):
        return None
    try:
        return datetime.now(timezone.utc) + timedelta(milliseconds=float(expiration))
    except (TypeError, ValueError):
        return None
