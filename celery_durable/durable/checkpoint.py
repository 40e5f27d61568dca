"""The transactions that move a durable chain: a step finished, a step failed.

A finished step commits, in ONE transaction: whatever it wrote through
``current_step().connection``, its checkpoint, the next step's message (atomic
mode) and the deletion of its own message, fenced by its lease token. A crash
before the commit re-runs the step with its writes rolled back; after the
commit nothing of it runs again. The workflow row is locked first, so group
members finishing together agree on which of them sends the next step.

A step costs two round trips: one read before it runs (is it finished, or
stopped?), and its whole commit pipelined in one, built on that read; guards
in the pipeline abort it when the read went stale while the step ran, and the
same transaction then takes the checking path (lock, look, decide).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from celery import states
from celery.exceptions import TaskRevokedError
from kombu.serialization import dumps, loads

from ..exceptions import LeaseLost, WorkflowError
from .context import StepContext
from .dispatch import plan, send, stage
from .steps import decode_steps, split_path
from .store import Store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepRef:
    """A step message's identity, from its headers: workflow, step index, group member, generation, lease."""

    workflow_id: str
    index: int
    member: int
    generation: int
    lease: tuple[int, str] | None

    @property
    def path(self) -> str:
        """The step's place in its workflow: ``"2"`` for a task step, ``"2.1"`` for member 1 of a group step."""
        return f"{self.index}" if self.member < 0 else f"{self.index}.{self.member}"

    @classmethod
    def from_headers(cls, header: dict, lease: str | None) -> "StepRef":
        """Read a step header (``workflow_id``/``path``/``generation``, or an older version's ``w/s/m/g``)."""
        parsed = None
        if lease:
            row_id, _, token = str(lease).partition(":")
            parsed = (int(row_id), token)
        if "workflow_id" in header:
            index, member = split_path(str(header["path"]))
            return cls(str(header["workflow_id"]), index, member, int(header.get("generation", 0)), parsed)
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


@dataclass
class Before:
    """What a step found before it ran: whether to run it, and what its commit can build on."""

    verdict: str | None
    value: Any = None
    status: str | None = None
    current_step: int | None = None
    steps: Any = None
    result_id: str | None = None


def before_run(store: Store, ref: StepRef) -> Before:
    """Read the step's workflow once: FINISHED (with its result) or STOPPED steps must not run.

    A step that runs (verdict None) keeps what was read, so that its commit
    can go out in one round trip (``commit_success``).
    """
    with store.connection() as conn:
        row = conn.execute(store.queries["step_state"],
                           {"id": ref.workflow_id, "step": ref.index, "member": ref.member}).fetchone()
        if row is None or row[1] != ref.generation or row[0] in ("cancelled", "succeeded"):
            with conn.transaction():
                release(store, conn, ref)
            return Before(STOPPED)
        if row[2] is not None:
            with conn.transaction():
                release(store, conn, ref)
            return Before(FINISHED, decode(store.app, row[2], row[3]))
    return Before(None, None, row[0], row[4], row[5], row[6])


def commit_success(store: Store, step: StepContext, ref: StepRef, task: Any, result: Any,
                   before: Before | None = None) -> None:
    """Checkpoint the step and move the workflow on, in the step's transaction.

    A task step whose workflow was running at it when it started (``before``)
    commits in one pipelined round trip; if a guard finds that something
    changed meanwhile, the same transaction takes the checking path.
    Raises LeaseLost (everything rolled back) when another worker now holds
    the message. A checkpoint wins over a failure another attempt of the same
    step recorded (a duplicate behind Redis/RabbitMQ): the workflow runs on.
    """
    own = step._conn is None
    conn = store.borrow() if own else step._conn
    try:
        next_send = _commit(store, conn, ref, task, result, before)
    except BaseException:
        if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
        raise
    finally:
        if own:
            store.give_back(conn)
    send(store.app, next_send)


def _commit(store: Store, conn: psycopg.Connection, ref: StepRef, task: Any, result: Any,
            before: Before | None) -> list:
    """The step's transaction from its checkpoint to COMMIT (or rollback); return the messages to send after it."""
    app = store.app
    q = store.queries
    content_type, data = encode(app, result)
    checkpoint_params = {
        "id": ref.workflow_id, "step": ref.index, "member": ref.member, "task_id": task.request.id,
        "task_name": task.name, "content_type": content_type, "result": data,
        "attempts": (task.request.retries or 0) + 1,
    }
    if before is not None and before.status == "running" and before.current_step == ref.index and ref.member < 0:
        staged = _commit_pipelined(store, conn, ref, before, checkpoint_params, result)
        if staged is not None:
            return staged
    # One round trip: lock, checkpoint and fenced delete go out together; if the answers
    # say this attempt must not count, the whole transaction is rolled back below.
    try:
        with conn.pipeline():
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                conn.execute("BEGIN")
            locked = conn.execute(q["workflow_lock"], {"id": ref.workflow_id})
            inserting = conn.execute(q["checkpoint_insert"], checkpoint_params)
            releasing = _release_cursor(store, conn, ref)
            if not store.atomic:
                conn.execute(q["sent_step_done"], {"id": ref.workflow_id, "path": ref.path})
    except psycopg.errors.ForeignKeyViolation:
        _abandon(store, conn, ref, "has no workflow row any more (deleted?): not checkpointed")
        return []
    wf, inserted = locked.fetchone(), inserting.fetchone()
    released = releasing is None or releasing.fetchone() is not None
    if wf is None or wf[2] != ref.generation:
        _abandon(store, conn, ref, "belongs to a superseded run: not checkpointed")
        return []
    status, current, _gen, steps_json, result_id, _atomic = wf
    if inserted is None:
        # Another attempt finished this step first: keep its outcome, drop ours.
        _abandon(store, conn, ref, "already finished: this attempt's writes rolled back")
        return []
    if not released:
        conn.execute("ROLLBACK")
        raise LeaseLost(f"lost the lease of step {ref.index} of workflow {ref.workflow_id}: rolled back")
    steps = decode_steps(steps_json)
    value = result
    if steps[ref.index].kind == "group":
        rows = conn.execute(q["checkpoint_members"], {"id": ref.workflow_id, "step": ref.index}).fetchall()
        if len(rows) < len(steps[ref.index].signatures):
            conn.execute("COMMIT")
            return []
        value = [decode(app, ct, blob) for _member, ct, blob in rows]
    revive = status == "failed" and current == ref.index
    next_send: list = []
    # The rest goes out in a second round trip, COMMIT included; a failing statement
    # aborts the transaction and surfaces when the pipeline syncs (rolled back by the caller).
    with conn.pipeline():
        if revive:
            logger.warning("durable step %s of workflow %s succeeded after another attempt of it failed: "
                           "its checkpoint wins, the workflow runs on", ref.path, ref.workflow_id)
            conn.execute(q["workflow_revive"], {"id": ref.workflow_id})
            conn.execute(store.backend.queries["result_delete"], (result_id,))
        if status == "running" or revive:
            following = ref.index + 1
            if following < len(steps):
                conn.execute(q["workflow_advance"], {"id": ref.workflow_id, "step": following})
                next_send = stage(store, conn, ref.workflow_id, ref.generation,
                                  plan(ref.workflow_id, steps, following, value, ref.generation))
            else:
                conn.execute(q["workflow_finish"], {
                    "id": ref.workflow_id, "status": "succeeded", "error": None, "step": ref.index,
                })
                store.backend.store_result_in(conn, result_id, value, states.SUCCESS)
        conn.execute("COMMIT")
    return next_send


_SAVEPOINT = "celery_durable_step"


def _commit_pipelined(store: Store, conn: psycopg.Connection, ref: StepRef, before: Before,
                      checkpoint_params: dict, result: Any) -> list | None:
    """Commit a task step in one round trip, built on what it read before it ran; return what to send after.

    Guards (``step_guard_v1``) and the checkpoint's primary key abort the
    pipeline when the workflow moved on, the step was finished by another
    attempt, or the lease was lost; then the transaction goes back to a
    savepoint (the step's own writes kept) and None says: take the checking path.
    """
    q = store.queries
    steps = decode_steps(before.steps)
    following = ref.index + 1
    messages = plan(ref.workflow_id, steps, following, result, ref.generation) if following < len(steps) else []
    staged: list = []
    try:
        with conn.pipeline():
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                conn.execute("BEGIN")
            conn.execute(f"SAVEPOINT {_SAVEPOINT}")
            conn.execute(q["step_guard_lock"], {"id": ref.workflow_id, "generation": ref.generation,
                                                "step": ref.index})
            conn.execute(q["checkpoint_insert_new"], checkpoint_params)
            if store.atomic and ref.lease is not None:
                conn.execute(q["message_release_guarded"], {"id": ref.lease[0], "token": ref.lease[1]})
            if not store.atomic:
                conn.execute(q["sent_step_done"], {"id": ref.workflow_id, "path": ref.path})
            if messages:
                conn.execute(q["workflow_advance"], {"id": ref.workflow_id, "step": following})
                staged = stage(store, conn, ref.workflow_id, ref.generation, messages)
            else:
                conn.execute(q["workflow_finish"], {
                    "id": ref.workflow_id, "status": "succeeded", "error": None, "step": ref.index,
                })
                store.backend.store_result_in(conn, before.result_id, result, states.SUCCESS)
            conn.execute("COMMIT")
    except (psycopg.errors.RaiseException, psycopg.errors.UniqueViolation,
            psycopg.errors.ForeignKeyViolation) as exc:
        conn.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
        logger.info("durable step %s of workflow %s: %s; checking", ref.path, ref.workflow_id,
                    str(exc).splitlines()[0])
        return None
    return staged


def _abandon(store: Store, conn: psycopg.Connection, ref: StepRef, why: str) -> None:
    """Roll the step's transaction back, drop its message, say why."""
    conn.execute("ROLLBACK")
    with conn.transaction():
        release(store, conn, ref)
    logger.warning("durable step %s of workflow %s %s", ref.index, ref.workflow_id, why)


def record_failure(store: Store, ref: StepRef, exc: BaseException, traceback: str | None = None) -> bool:
    """The step failed for good: mark the workflow failed at it; earlier checkpoints stay.

    Only the attempt that holds the step decides, as for a success: with a
    lease (atomic mode) the fenced delete of its own message must find it, and
    an existing checkpoint of the step wins in every mode. Returns False, with
    nothing changed, for an attempt fenced out that way (or a workflow that is
    no longer running this generation).
    """
    q = store.queries
    with store.connection() as conn, conn.transaction():
        with conn.pipeline():
            locked = conn.execute(q["workflow_lock"], {"id": ref.workflow_id})
            finished = conn.execute(q["checkpoint_exists"],
                                    {"id": ref.workflow_id, "step": ref.index, "member": ref.member})
            releasing = _release_cursor(store, conn, ref)
        wf = locked.fetchone()
        if releasing is not None and releasing.fetchone() is None:
            logger.warning("durable step %s of workflow %s failed after losing its lease: another attempt "
                           "decides the step, this failure changes nothing", ref.path, ref.workflow_id)
            return False
        if finished.fetchone() is not None:
            logger.warning("durable step %s of workflow %s failed in an attempt after another one finished it: "
                           "the checkpoint stands", ref.path, ref.workflow_id)
            return False
        if wf is None or wf[2] != ref.generation or wf[0] != "running":
            return False
        error = f"{type(exc).__name__}: {exc}"[:2000]
        conn.execute(q["workflow_finish"], {
            "id": ref.workflow_id, "status": "failed", "error": error, "step": ref.index,
        })
        store.backend.store_result_in(conn, wf[4], exc, states.FAILURE, traceback=traceback)
    return True


def release_only(store: Store, ref: StepRef, retry_when: Any = None) -> None:
    """Delete the step's message without a checkpoint (the task is being retried, or ignored).

    Behind Redis/RabbitMQ there is no row to delete; a retry's countdown
    (``retry_when``: seconds or a datetime) moves the step's due time instead,
    so the sweep does not take the waiting retry for a lost message.
    """
    with store.connection() as conn, conn.transaction():
        release(store, conn, ref)
        if not store.atomic and retry_when is not None:
            eta, countdown = (retry_when, None) if isinstance(retry_when, datetime) else (None, float(retry_when))
            conn.execute(store.queries["sent_step_retry"], {
                "id": ref.workflow_id, "path": ref.path, "eta": eta, "countdown": countdown,
            })


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
