"""The worker's housekeeping for durable chains: re-send lost steps, forget old workflows.

Only workflows whose broker is outside the database need re-sending: their
next step is sent after the checkpoint commits, so a crash in between loses
it. After ``recovery_after`` seconds without progress the current step's
unfinished messages are sent again; a duplicate is harmless because the first
checkpoint wins and a later attempt's transaction rolls back. One worker at a
time sweeps (a transaction-level advisory lock).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import signals

from .checkpoint import previous_result, unfinished_members
from .dispatch import dispatch
from .steps import decode_steps
from .store import Store

logger = logging.getLogger(__name__)

_sweepers: dict[int, "Sweeper"] = {}


class Sweeper:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.interval = max(1.0, min(store.settings.recovery_after / 2, 60.0))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="celery-durable-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sweep()
            except Exception as exc:  # next round retries
                logger.warning("durable workflow sweep failed: %s", exc)

    def sweep(self) -> int:
        """Re-send the lost steps of stalled non-atomic workflows; return how many workflows moved."""
        store, q = self.store, self.store.queries
        moved = 0
        with store.connection() as conn:
            with conn.transaction():
                got = conn.execute("SELECT pg_try_advisory_xact_lock(hashtext(%s))",
                                   (f"celery_durable:{store.settings.schema}:sweeper",)).fetchone()[0]
                if not got:
                    return 0
                conn.execute(q["workflow_expire"], {"retention": store.settings.workflow_retention})
                for (workflow_id,) in conn.execute(q["workflow_orphans"], {"after": store.settings.recovery_after}).fetchall():
                    moved += self._resend(conn, workflow_id)
        return moved

    def _resend(self, conn: Any, workflow_id: str) -> int:
        q = self.store.queries
        row = conn.execute(q["workflow_lock"], {"id": workflow_id}).fetchone()
        if row is None or row[0] != "running":
            return 0
        current, generation, steps_json = row[1], row[2], row[3]
        steps = decode_steps(steps_json)
        members = unfinished_members(conn, self.store, workflow_id, steps, current)
        if members is None and conn.execute(q["checkpoint_step"], {"id": workflow_id, "step": current}).fetchone():
            return 0
        previous = previous_result(self.store, conn, workflow_id, steps, current)
        logger.warning("re-sending step %s of workflow %s: no progress for %ss", current, workflow_id,
                       int(self.store.settings.recovery_after))
        conn.execute(q["workflow_touch"], {"id": workflow_id})
        dispatch(self.store.app, workflow_id, steps, current, previous, generation, members=members)
        return 1


@signals.worker_ready.connect
def _start(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    if app is None:
        return
    try:
        store = Store.for_app(app)
    except Exception:
        return  # not a durable-chain setup (no postgresql:// backend)
    sweeper = Sweeper(store)
    _sweepers[id(app)] = sweeper
    sweeper.start()


@signals.worker_shutdown.connect
def _stop(sender: Any = None, **_: Any) -> None:
    for sweeper in list(_sweepers.values()):
        sweeper.stop()
    _sweepers.clear()
