"""Operate durable chains: list, show, cancel, resume, restart from a step.

Reading needs only a URL (or an app); changing a workflow that must send a
step needs the Celery app, whose broker carries the message. Every change
runs in one transaction under the workflow's row lock, and in atomic mode
the re-sent step's message commits with it.
"""

from __future__ import annotations

from typing import Any

from celery import states

from .config import Settings
from .db import dsn, pool, queries
from .durable.checkpoint import cancelled_error, decode, previous_result, unfinished_members
from .durable.dispatch import plan, send, stage
from .durable.steps import Step, decode_steps, encode_steps
from .durable.store import Store
from .exceptions import WorkflowError

__all__ = ["cancel_workflow", "get_workflow", "list_workflows", "restart_workflow", "resume_workflow"]


def _reader(app_or_url: Any, schema: str | None) -> tuple[str, Settings]:
    if isinstance(app_or_url, str):
        return dsn.from_url(app_or_url), Settings(schema=schema or Settings().schema)
    store = Store.for_app(app_or_url)
    return store.conninfo, store.settings


def _queries(settings: Settings) -> dict[str, str]:
    return queries.load("celery_durable.durable", "queries.sql", settings.schema)


def list_workflows(app_or_url: Any, schema: str | None = None, status: str | None = None,
                   limit: int = 50) -> list[dict]:
    """Newest workflows first; ``status`` is running, succeeded, failed, cancelled or stalled."""
    conninfo, settings = _reader(app_or_url, schema)
    with pool.connection(conninfo, settings) as conn:
        cur = conn.execute(_queries(settings)["workflow_list"], {"status": status, "limit": limit})
        names = [c.name for c in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def get_workflow(app_or_url: Any, schema: str | None = None, workflow_id: str | None = None,
                 app: Any = None) -> dict | None:
    """One workflow with its steps and checkpoints (results decoded when ``app`` is given), or None."""
    if workflow_id is None:
        raise TypeError("get_workflow needs a workflow_id")
    conninfo, settings = _reader(app_or_url, schema)
    if app is None and not isinstance(app_or_url, str):
        app = app_or_url
    q = _queries(settings)
    with pool.connection(conninfo, settings) as conn:
        row = conn.execute(q["workflow_get"], {"id": workflow_id}).fetchone()
        if row is None:
            return None
        marks = conn.execute(q["checkpoint_list"], {"id": workflow_id}).fetchall()
    (wid, name, status, current, generation, steps_json, result_id, error, created, updated, finished, atomic) = row
    steps = decode_steps(steps_json)
    checkpoints = []
    for step, member, task_id, task_name, content_type, blob, attempts, finished_at in marks:
        entry = {"step": step, "member": member, "task_id": task_id, "task": task_name,
                 "attempts": attempts, "finished_at": finished_at}
        if app is not None:
            entry["result"] = decode(app, content_type, blob)
        checkpoints.append(entry)
    return {
        "id": wid, "name": name, "status": status, "current_step": current, "generation": generation,
        "atomic": atomic, "error": error, "created_at": created, "updated_at": updated,
        "finished_at": finished, "result_task_id": result_id,
        "steps": [{"index": i, "task": s.display, "kind": s.kind} for i, s in enumerate(steps)],
        "checkpoints": checkpoints,
    }


def cancel_workflow(app_or_url: Any, workflow_id: str, schema: str | None = None) -> bool:
    """Stop sending steps; a step already running finishes but nothing follows it.

    ``wf.get()`` raises TaskRevokedError. Returns False when the workflow had
    already ended (succeeded or cancelled).
    """
    if isinstance(app_or_url, str):
        conninfo, settings = _reader(app_or_url, schema)
        backend = None
    else:
        store = Store.for_app(app_or_url)
        conninfo, settings, backend = store.conninfo, store.settings, store.backend
    q = _queries(settings)
    with pool.connection(conninfo, settings) as conn, conn.transaction():
        row = conn.execute(q["workflow_lock"], {"id": workflow_id}).fetchone()
        if row is None:
            raise WorkflowError(f"no workflow {workflow_id!r}")
        if row[0] in ("succeeded", "cancelled"):
            return False
        conn.execute(q["workflow_finish"], {"id": workflow_id, "status": "cancelled", "error": None, "step": row[1]})
        if backend is not None:
            backend.store_result_in(conn, row[4], cancelled_error(workflow_id), states.REVOKED)
    return True


def resume_workflow(app: Any, workflow_id: str) -> list[str]:
    """Send the current step again (its unfinished members, for a group) of a failed, cancelled or stalled workflow.

    Use it after fixing what made a step fail. Returns the sent task ids.
    Raises WorkflowError for a workflow that succeeded.
    """
    store = Store.for_app(app)
    q = store.queries

    def change(conn: Any, row: tuple, steps: list[Step]) -> tuple[int, set[int] | None]:
        status, current = row[0], row[1]
        if status == "succeeded":
            raise WorkflowError(f"workflow {workflow_id} already succeeded: use restart_workflow to run it again")
        conn.execute(q["workflow_restart"], {"id": workflow_id, "step": current, "bump": 0, "steps": encode_steps(steps)})
        return current, unfinished_members(conn, store, workflow_id, steps, current)

    return _resend(store, workflow_id, change)


def restart_workflow(app: Any, workflow_id: str, from_step: int, args: list | None = None) -> list[str]:
    """Run a workflow again from step ``from_step`` (0-based), optionally with new args for that step.

    Checkpoints of that step and later ones are dropped, earlier ones kept;
    messages still in flight from the previous run are ignored (a new
    generation). Returns the sent task ids.
    """
    store = Store.for_app(app)
    q = store.queries

    def change(conn: Any, row: tuple, steps: list[Step]) -> tuple[int, set[int] | None]:
        if not 0 <= from_step < len(steps):
            raise WorkflowError(f"workflow {workflow_id} has steps 0..{len(steps) - 1}, not {from_step}")
        if args is not None:
            if steps[from_step].kind != "task":
                raise WorkflowError("new args can only replace a single-task step's arguments")
            steps[from_step].signatures[0]["args"] = list(args)
        conn.execute(q["checkpoint_delete_from"], {"id": workflow_id, "step": from_step})
        conn.execute(q["workflow_restart"], {"id": workflow_id, "step": from_step, "bump": 1,
                                              "steps": encode_steps(steps)})
        return from_step, None

    return _resend(store, workflow_id, change)


def _resend(store: Store, workflow_id: str, change) -> list[str]:
    q = store.queries
    with store.connection() as conn:
        with conn.transaction():
            row = conn.execute(q["workflow_lock"], {"id": workflow_id}).fetchone()
            if row is None:
                raise WorkflowError(f"no workflow {workflow_id!r}")
            steps = decode_steps(row[3])
            index, members = change(conn, row, steps)
            generation = conn.execute(q["workflow_get"], {"id": workflow_id}).fetchone()[4]
            previous = previous_result(store, conn, workflow_id, steps, index)
            # The old outcome (failure, revocation or result) must not answer wf.get() any more.
            conn.execute(store.backend.queries["result_delete"], (row[4],))
            messages = plan(workflow_id, steps, index, previous, generation, members)
            staged = stage(store, conn, workflow_id, generation, messages)
    send(store.app, staged)
    return [m.task_id for m in messages]
