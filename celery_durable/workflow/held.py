"""The durable step requests a worker's main process holds, and what happens to them there.

Celery's consumer receives every request in the worker's main process; a step
request is remembered weakly (Celery drops it once it is done, or revoked).
The pulse reads them to show the steps are alive; a hard time limit, which
kills the pool process running a step, is turned into the step's failure here,
since the step cannot record it itself.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

from billiard.exceptions import TimeLimitExceeded

from ..headers import LEASE_HEADER, STEP_HEADER
from . import checkpoint
from .store import Store

logger = logging.getLogger(__name__)

_held: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


def _ref(request: Any) -> checkpoint.StepRef | None:
    headers = request.request_dict
    header = headers.get(STEP_HEADER)
    if not isinstance(header, dict):
        return None
    try:
        return checkpoint.StepRef.from_headers(header, headers.get(LEASE_HEADER))
    except (KeyError, TypeError, ValueError):
        return None


def held_steps() -> list[checkpoint.StepRef]:
    """The steps this process holds now: prefetched, waiting for a countdown, or running."""
    refs = []
    for request in list(_held.values()):
        ref = _ref(request)
        if ref is not None:
            refs.append(ref)
    return refs


def remember(request: Any) -> None:
    """A request the worker received (``task_received``): held while it is a durable step's."""
    if request is not None and STEP_HEADER in request.request_dict:
        _held[request.id] = request


def failed(sender: Any, task_id: str | None, exception: BaseException | None, einfo: Any) -> None:
    """A hard time limit killed a step's pool process: the step failed (Celery does not retry it either)."""
    if not isinstance(exception, TimeLimitExceeded) or task_id is None:
        return
    request = _held.get(task_id)
    ref = None if request is None else _ref(request)
    if ref is None or sender is None:
        return
    try:
        if checkpoint.record_failure(Store.for_app(sender.app), ref, exception, str(einfo or "")):
            logger.error("durable step %s of workflow %s exceeded its hard time limit: the workflow failed at it",
                         ref.path, ref.workflow_id)
    except Exception:  # noqa: BLE001 - the worker must survive; the workflow shows as stalled instead
        logger.exception("could not record the hard time limit of durable step %s of workflow %s",
                         ref.path, ref.workflow_id)


class Pulse:
    """A thread that refreshes ``sent_step.seen_at`` of the held steps, every third of ``recovery_after``.

    Only with a broker outside the database. It runs on its own schedule,
    never behind the sweep, so a slow sweep cannot make a held step look lost.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.interval = min(max(store.settings.recovery_after / 3, 0.2), 60.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="celery-durable-pulse", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop beating; returns once the thread has ended (a beat in flight finishes first)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception as exc:  # next beat retries; a beat missed for recovery_after re-sends
                logger.warning("durable step pulse failed: %s", exc)

    def beat(self) -> int:
        """Mark every held step alive now; return how many rows were refreshed."""
        refs = held_steps()
        if not refs:
            return 0
        with self.store.connection() as conn:
            return conn.execute(self.store.queries["sent_step_seen"], {
                "ids": [r.workflow_id for r in refs], "paths": [r.path for r in refs],
            }).rowcount
