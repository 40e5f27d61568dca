"""One cleanup service for the transport, the result backend and durable chains.

Every expiry (expired queues and messages, old dead letters, expired results,
groups and chords, finished workflows past their retention) follows one
policy, in :mod:`.service`: one process at a time per database and schema,
deletes in batches with a row limit, a bounded time per run. In a worker the
service runs in a thread of its own, so lease renewal never waits behind it;
:mod:`celery_durable.lifecycle` attaches a worker's work to it.
"""

from __future__ import annotations

from .service import BATCH_ROWS, RUN_SECONDS, Chore, Expiry, Maintenance, for_database

__all__ = ["BATCH_ROWS", "RUN_SECONDS", "Chore", "Expiry", "Maintenance", "for_database"]
