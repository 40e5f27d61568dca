"""The worker's housekeeping for durable workflows: re-send lost steps, forget old workflows.

Only workflows whose broker is outside the database need re-sending: their
next step is sent after the checkpoint commits, and an early-acked message
dies with its worker. Every such message has a ``sent_step`` row, written in
the transaction that decided to send it; workers that hold the step refresh
it (``held.Pulse``). A row with no sign of life for ``recovery_after`` seconds
past its countdown is a lost message: ``resend_lost`` sends it again. A
duplicate is harmless: the first checkpoint wins and a later attempt's
transaction rolls back. One worker at a time re-sends (a transaction-level
advisory lock). The worker's maintenance service calls :func:`resend_lost`
every :func:`interval` seconds in its own thread, and forgets finished
workflows past ``workflow_retention`` in batches (see
:mod:`celery_durable.lifecycle`); the pulse has a thread of its own.
"""

from __future__ import annotations

import logging
from typing import Any

from ..db import fetch
from ..exceptions import Undecodable, WorkflowError
from . import rows
from .checkpoint import decode, fail_undecodable
from .dispatch import Message, plan, send, stage
from .records import LostStep, WorkflowRow
from .store import Store
from .tree import NOTHING, Node, ancestors, feeder

logger = logging.getLogger(__name__)


def resend_lost(store: Store) -> int:
    """Send again the steps whose message is lost (no sign of life past ``recovery_after``); return how many."""
    q = store.queries
    staged: list[Message] = []
    with store.connection() as conn:
        with conn.transaction():
            key = f"celery_durable:{store.settings.schema}:sweeper"
            if not conn.execute(q["sweep_try_lock"], {"key": key}).fetchone()[0]:
                return 0
            lost: dict[str, list[str]] = {}
            for step in fetch.execute_as(conn, LostStep, q["sent_step_lost"], {"after": store.settings.recovery_after}):
                lost.setdefault(step.workflow_id, []).append(step.path)
            for workflow_id, paths in lost.items():
                staged += _resend(store, conn, workflow_id, paths)
    send(store.app, staged)
    return len(staged)


def _resend(store: Store, conn: Any, workflow_id: str, paths: list[str]) -> list[Message]:
    """The messages of these lost tasks that are still due, each with its input; finished ones are forgotten."""
    q = store.queries
    conn.execute(q["step_fence"], {"id": workflow_id})
    wf = fetch.execute_as(conn, WorkflowRow, q["workflow_get"], {"id": workflow_id}).fetchone()
    if wf is None or wf.status not in ("running", "succeeded"):
        return []
    if wf.status == "succeeded":  # only link callbacks may still be due
        paths = [p for p in paths if "~" in p]
    generation = wf.generation
    done = {found[0] for found in conn.execute(q["checkpoint_done"], {"id": workflow_id, "paths": paths})}
    for path in done:
        conn.execute(q["sent_step_done"], {"id": workflow_id, "path": path})
    try:
        entries = [entry for entry in (_due(store, conn, workflow_id, p) for p in paths if p not in done) if entry]
        messages = plan(store.app, workflow_id, generation, entries)
    except Undecodable as exc:  # one workflow's stored values must not stop the others' recovery
        fail_undecodable(store, conn, workflow_id, exc.path if exc.path in paths else paths[0], wf.result_task_id, exc)
        return []
    for task, _given in entries:
        logger.warning("re-sending step %s of workflow %s: its message is lost (no sign of life for %ss)",
                       task.path, workflow_id, int(store.settings.recovery_after))
    return stage(store, conn, workflow_id, generation, messages)


def _due(store: Store, conn: Any, workflow_id: str, path: str) -> tuple[Node, Any] | None:
    """A lost task with its input, read from the rows above it; None when it is not a task whose input is ready."""
    q = store.queries
    nodes = rows.build(rows.read(conn, q, workflow_id, ancestors(path)))
    task = nodes.get(path)
    if task is None or task.kind != "task" or any(p not in nodes for p in ancestors(path)):
        return None
    source = feeder(path, nodes.__getitem__)
    if source is None:
        return task, NOTHING
    try:
        return task, rows.value(conn, q, workflow_id, source, lambda p, ct, blob: decode(store.app, ct, blob, p))[0]
    except WorkflowError:
        return None  # what feeds it has not finished: it is not due


def interval(store: Store) -> float:
    """Seconds between two runs of :func:`resend_lost`."""
    return max(1.0, min(store.settings.recovery_after / 2, 60.0))

