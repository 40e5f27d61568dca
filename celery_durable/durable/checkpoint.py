"""The transactions that move a durable chain: a step finished, a step failed.

A finished step commits, in ONE transaction: whatever it wrote through
``current_step().connection``, its checkpoint, the next step's message (atomic
mode) and the deletion of its own message, fenced by its lease token. A crash
before the commit re-runs the step with its writes rolled back; after the
commit nothing of it runs again. The workflow row is locked first, so group
members finishing together agree on which of them sends the next step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from celery import states
from celery.exceptions import TaskRevokedError
from kombu.serialization import dumps, loads

from ..exceptions import LeaseLost, WorkflowError
from .context import StepContext
from .dispatch import dispatch
from .steps import decode_steps
from .store import Store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepRef:
    """A step message's identity, from its headers: workflow, index, member, generation, lease."""

    workflow_id: str
    index: int
    member: int
    generation: int
    lease: tuple[int, str] | None

    @classmethod
    def from_headers(cls, header: dict, lease: str | None) -> "StepRef":
        parsed = None
        if lease:
            row_id, _, token = str(lease).partition(":")
            parsed = (int(row_id), token)
        return cls(str(header["w"]), int(header["s"]), int(header["m"]), int(header.get("g", 0)), parsed)


def encode(app: Any, value: Any) -> tuple[str, bytes]:
    content_type, _encoding, data = dumps(value, serializer=app.conf.result_serializer)
    return content_type, data.encode() if isinstance(data, str) else bytes(data)


def decode(app: Any, content_type: str, data: bytes) -> Any:
    accept = set(app.conf.result_accept_content or app.conf.accept_content or []) | {content_type}
    return loads(bytes(data), content_type, "binary", accept=accept)


def _release_cursor(store: Store, conn: psycopg.Connection, ref: StepRef) -> psycopg.Cursor | None:
    """Send the fenced delete of the step's own message (None: nothing to delete in this mode)."""
    if ref.lease is None or not store.atomic:
        return None
    return conn.execute(store.queries["message_release"], {"id": ref.lease[0], "token": ref.lease[1]})


def release(store: Store, conn: psycopg.Connection, ref: StepRef) -> bool:
    """Delete the step's own message if this worker still holds it; True when there is nothing to delete."""
    cursor = _release_cursor(store, conn, ref)
    return cursor is None or cursor.fetchone() is not None


FINISHED = "already finished"
STOPPED = "belongs to a stopped or superseded run"


def finished_result(store: Store, ref: StepRef) -> tuple[str | None, Any]:
    """(FINISHED, result) for a step with a checkpoint, (STOPPED, None) for one that must not run, else (None, None)."""
    with store.connection() as conn:
        row = conn.execute(store.queries["step_state"],
                           {"id": ref.workflow_id, "step": ref.index, "member": ref.member}).fetchone()
        if row is None or row[1] != ref.generation or row[0] in ("cancelled", "succeeded"):
            with conn.transaction():
                release(store, conn, ref)
            return STOPPED, None
        if row[2] is not None:
            with conn.transaction():
                release(store, conn, ref)
            return FINISHED, decode(store.app, row[2], row[3])
    return None, None


def commit_success(store: Store, step: StepContext, ref: StepRef, task: Any, result: Any) -> None:
    """Checkpoint the step and move the workflow on, in the step's transaction.

    Raises LeaseLost (everything rolled back) when another worker now holds
    the message.
    """
    app = store.app
    own = step._conn is None
    conn = store.borrow() if own else step._conn
    next_send = None
    try:
        content_type, data = encode(app, result)
        # One round trip: lock, checkpoint and fenced delete go out together; if the answers
        # say this attempt must not count, the whole transaction is rolled back below.
        try:
            with conn.pipeline():
                if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                    conn.execute("BEGIN")
                locked = conn.execute(store.queries["workflow_lock"], {"id": ref.workflow_id})
                inserting = conn.execute(store.queries["checkpoint_insert"], {
                    "id": ref.workflow_id, "step": ref.index, "member": ref.member, "task_id": task.request.id,
                    "task_name": task.name, "content_type": content_type, "result": data,
                    "attempts": (task.request.retries or 0) + 1,
                })
                releasing = _release_cursor(store, conn, ref)
        except psycopg.errors.ForeignKeyViolation:
            _abandon(store, conn, ref, "has no workflow row any more (deleted?): not checkpointed")
            return
        wf, inserted = locked.fetchone(), inserting.fetchone()
        released = releasing is None or releasing.fetchone() is not None
        if wf is None or wf[2] != ref.generation:
            _abandon(store, conn, ref, "belongs to a superseded run: not checkpointed")
            return
        status, _current, _gen, steps_json, result_id, _atomic = wf
        if inserted is None:
            # Another attempt finished this step first: keep its outcome, drop ours.
            _abandon(store, conn, ref, "already finished: this attempt's writes rolled back")
            return
        if not released:
            conn.execute("ROLLBACK")
            raise LeaseLost(f"lost the lease of step {ref.index} of workflow {ref.workflow_id}: rolled back")
        steps = decode_steps(steps_json)
        value = result
        if steps[ref.index].kind == "group":
            rows = conn.execute(store.queries["checkpoint_members"], {"id": ref.workflow_id, "step": ref.index}).fetchall()
            if len(rows) < len(steps[ref.index].signatures):
                conn.execute("COMMIT")
                return
            value = [decode(app, ct, blob) for _member, ct, blob in rows]
        # The rest goes out in a second round trip, COMMIT included; a failing statement
        # aborts the transaction and surfaces when the pipeline syncs (rolled back below).
        with conn.pipeline():
            if status == "running":
                following = ref.index + 1
                if following < len(steps):
                    conn.execute(store.queries["workflow_advance"], {"id": ref.workflow_id, "step": following})
                    if store.atomic:
                        dispatch(app, ref.workflow_id, steps, following, value, ref.generation, conn=conn)
                    else:
                        next_send = (steps, following, value)
                else:
                    conn.execute(store.queries["workflow_finish"], {
                        "id": ref.workflow_id, "status": "succeeded", "error": None, "step": ref.index,
                    })
                    store.backend.store_result_in(conn, result_id, value, states.SUCCESS)
            conn.execute("COMMIT")
    except BaseException:
        if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
        raise
    finally:
        if own:
            store.give_back(conn)
    if next_send is not None:
        steps, following, value = next_send
        dispatch(app, ref.workflow_id, steps, following, value, ref.generation)


def _abandon(store: Store, conn: psycopg.Connection, ref: StepRef, why: str) -> None:
    """Roll the step's transaction back, drop its message, say why."""
    conn.execute("ROLLBACK")
    with conn.transaction():
        release(store, conn, ref)
    logger.warning("durable step %s of workflow %s %s", ref.index, ref.workflow_id, why)


def record_failure(store: Store, ref: StepRef, exc: BaseException, traceback: str | None = None) -> None:
    """The step failed for good: mark the workflow failed at it; earlier checkpoints stay."""
    with store.connection() as conn, conn.transaction():
        wf = conn.execute(store.queries["workflow_lock"], {"id": ref.workflow_id}).fetchone()
        release(store, conn, ref)
        if wf is None or wf[2] != ref.generation or wf[0] != "running":
            return
        error = f"{type(exc).__name__}: {exc}"[:2000]
        conn.execute(store.queries["workflow_finish"], {
            "id": ref.workflow_id, "status": "failed", "error": error, "step": ref.index,
        })
        store.backend.store_result_in(conn, wf[4], exc, states.FAILURE, traceback=traceback)


def release_only(store: Store, ref: StepRef) -> None:
    """Delete the step's message without a checkpoint (the task is being retried)."""
    with store.connection() as conn, conn.transaction():
        release(store, conn, ref)


def previous_result(store: Store, conn: Any, workflow_id: str, steps: list, index: int) -> Any:
    """The result the step before ``index`` handed on (a list for a group step)."""
    if index == 0:
        return None
    rows = conn.execute(store.queries["checkpoint_step"], {"id": workflow_id, "step": index - 1}).fetchall()
    if not rows:
        raise WorkflowError(f"step {index - 1} of workflow {workflow_id} has no checkpoint: restart from it instead")
    values = [decode(store.app, ct, blob) for _m, ct, blob in rows]
    return values if steps[index - 1].kind == "group" else values[0]


def unfinished_members(conn: Any, store: Store, workflow_id: str, steps: list, index: int) -> set[int] | None:
    """Members of group step ``index`` without a checkpoint; None for a task step (send it whole)."""
    if steps[index].kind != "group":
        return None
    finished = {m for m, _c, _b in conn.execute(store.queries["checkpoint_step"], {"id": workflow_id, "step": index})}
    return set(range(len(steps[index].signatures))) - finished


def cancelled_error(workflow_id: str) -> TaskRevokedError:
    return TaskRevokedError(f"workflow {workflow_id} was cancelled")
