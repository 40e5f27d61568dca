"""The transactions that move a durable workflow: a task finished, failed, or replaced itself.

A finished task commits, in ONE transaction: whatever it wrote through
``current_step().connection``, its checkpoint, the messages of the tasks its
result starts (atomic mode) and the deletion of its own message, fenced by its
lease token. A crash before the commit re-runs the task with its writes rolled
back; after the commit nothing of it runs again.

What a task's result starts is in its own row of the tree (``rows.Then``):
the next element of its chain, the workflow's end, or a count in its group's
``fan_in``. A task costs two round trips: one read before it runs (its row,
and the first tasks of what it enters), and its whole commit pipelined in one.
Guards in the pipeline abort it, back to a savepoint, when what was read went
stale while the task ran or when the task fills its group's count; the same
transaction then takes the checking path: the member that fills a group's last
count reads the members' results and sends what follows the group, once.

No task locks the workflow row (it is written when the root chain advances or
the workflow ends): a commit holds the workflow's fence, an advisory lock,
shared; cancel, resume, restart and a failure take it alone, so they wait for
the commits in flight and the commits after them see what they changed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import psycopg
from celery import states
from celery.exceptions import TaskRevokedError
from kombu.serialization import dumps

from .. import content
from ..db import fetch
from ..exceptions import LeaseLost, Undecodable, WorkflowError
from . import rows
from .canvas import add_errbacks, encode_args, listed, node_of
from .context import StepContext
from .dispatch import Message, plan, send, stage
from .fence import Act, Verdict, standing, verdict
from .records import Counted, Follows, LockedWorkflow, NodeRow, StepCheck, StepState, StoredResult
from .rows import Then
from .store import Store
from .tree import NOTHING, Node, Tree, enter, number, top_of

logger = logging.getLogger(__name__)


class MessageLease(NamedTuple):
    """The lease a worker holds on the task's message (atomic mode): its row and the token that fences it."""

    id: int
    token: str


@dataclass(frozen=True)
class StepRef:
    """A task message's identity, from its headers: workflow, path in the tree, generation, lease."""

    workflow_id: str
    path: str
    generation: int
    lease: MessageLease | None

    @property
    def top(self) -> int:
        """The root element the task belongs to."""
        return top_of(self.path)

    @property
    def side(self) -> bool:
        """A link callback's task (or inside one): it may still run after the workflow succeeded."""
        return "~" in self.path

    @classmethod
    def from_headers(cls, header: dict, lease: str | None) -> StepRef:
        """Read a step header (``workflow_id``/``path``/``generation``, or an older version's ``w/s/m/g``)."""
        parsed = None
        if lease:
            row_id, _, token = str(lease).partition(":")
            parsed = MessageLease(int(row_id), token)
        if "workflow_id" in header:
            return cls(str(header["workflow_id"]), str(header["path"]), int(header.get("generation", 0)), parsed)
        member = int(header["m"])
        path = f"{int(header['s'])}" if member < 0 else f"{int(header['s'])}.{member}"
        return cls(str(header["w"]), path, int(header.get("g", 0)), parsed)


def encode(app: Any, value: Any) -> tuple[str, bytes]:
    content_type, _encoding, data = dumps(value, serializer=app.conf.result_serializer)
    return content_type, data.encode() if isinstance(data, str) else bytes(data)


def decode(app: Any, content_type: str, data: bytes, path: str | None = None) -> Any:
    """A checkpoint's result; raises Undecodable when its content type is not in the app's result_accept_content."""
    what = "the result of task " + path if path else "a checkpoint"
    return content.load(bytes(data), content_type, "binary", content.result_types(app), what, path)


def values_of(store: Store, conn: psycopg.Connection, workflow_id: str, paths: list[str]) -> dict[str, Any]:
    """The decoded results of these tasks, by path (the ones that finished)."""
    found = fetch.execute_as(conn, StoredResult, store.queries["checkpoint_values"],
                             {"id": workflow_id, "paths": paths})
    return {r.path: decode(store.app, r.content_type, r.result, r.path) for r in found}


def _release_cursor(store: Store, conn: psycopg.Connection, ref: StepRef) -> psycopg.Cursor | None:
    """Send the fenced delete of the task's own message (None: nothing to delete in this mode)."""
    if ref.lease is None or not store.atomic:
        return None
    return conn.execute(store.queries["message_release"], {"id": ref.lease.id, "token": ref.lease.token})


def release(store: Store, conn: psycopg.Connection, ref: StepRef) -> bool:
    """Delete the task's own message if this worker still holds it; True when there is nothing to delete."""
    cursor = _release_cursor(store, conn, ref)
    return cursor is None or cursor.fetchone() is not None


FINISHED = "already finished"
STOPPED = "belongs to a stopped or superseded run"


@dataclass
class Before:
    """What a task found before it ran: whether to run it, and what its commit can build on."""

    verdict: str | None
    value: Any = None
    result_id: str | None = None
    then: Then | None = None
    #: The first tasks of what the task's completion enters (``then``), and its link callbacks.
    starts: list[Node] = field(default_factory=list)
    links: list[Node] = field(default_factory=list)


def before_run(store: Store, ref: StepRef) -> Before:
    """Read the task's row once: FINISHED (with its result) or STOPPED tasks must not run.

    A task that runs (verdict None) keeps what was read, so that its commit
    can go out in one round trip (``commit_success``).
    """
    q = store.queries
    with store.connection() as conn:
        with conn.pipeline():
            state = fetch.execute_as(conn, StepState, q["step_state"], {"id": ref.workflow_id, "path": ref.path})
            following = fetch.execute_as(conn, NodeRow, q["node_next"], {"id": ref.workflow_id, "path": ref.path})
        row, found = state.fetchone(), following.fetchall()
        says = verdict(row, ref, Act.RUN)
        if row is None or says is not Verdict.GO or row.content_type is not None:
            with conn.transaction():
                release(store, conn, ref)
            # A finished task of a run that goes on hands back its result, even where its node was
            # replaced since; a stopped run's task stops (the workflow is asked first, see Act.RUN).
            if (says in (Verdict.GO, Verdict.REPLACED) and row is not None
                    and row.content_type is not None and row.result is not None):
                return Before(FINISHED, decode(store.app, row.content_type, row.result, ref.path))
            return Before(STOPPED)
        starts = rows.starts(conn, q, ref.workflow_id, found)
    own_links = ref.path + "~"
    return Before(None, None, row.result_task_id, Then.of(row),
                  [n for n in starts if not n.path.startswith(own_links)],
                  [n for n in starts if n.path.startswith(own_links)])


def commit_success(store: Store, step: StepContext, ref: StepRef, task: Any, result: Any, before: Before) -> None:
    """Checkpoint the task and move the workflow on, in the task's transaction.

    Raises LeaseLost (everything rolled back) when another worker now holds
    the message. A checkpoint wins over a failure another attempt of the same
    task recorded (a duplicate behind Redis/RabbitMQ): the workflow runs on.
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
            store.release(conn)
    send(store.app, next_send)


def _commit(store: Store, conn: psycopg.Connection, ref: StepRef, task: Any, result: Any,
            before: Before) -> list[Message]:
    """The task's transaction from its checkpoint to COMMIT (or rollback); return the messages to send after it."""
    content_type, data = encode(store.app, result)
    checkpoint_params = {
        "id": ref.workflow_id, "path": ref.path, "task_id": task.request.id, "task_name": task.name,
        "content_type": content_type, "result": data, "attempts": (task.request.retries or 0) + 1,
    }
    if before.then is not None:
        staged = _commit_pipelined(store, conn, ref, before, checkpoint_params, result)
        if staged is not None:
            return staged
    return _commit_checked(store, conn, ref, before, checkpoint_params, result)


_SAVEPOINT = "celery_durable_step"


def _begin(conn: psycopg.Connection) -> None:
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        conn.execute("BEGIN")


def _commit_pipelined(store: Store, conn: psycopg.Connection, ref: StepRef, before: Before,
                      checkpoint_params: dict, result: Any) -> list[Message] | None:
    """Commit a task in one round trip, built on what it read before it ran; return what to send after.

    ``step_commit``, the last statement before COMMIT, aborts the pipeline
    when the workflow stopped or moved to another generation, the task was
    finished by another attempt, the lease was lost, or the task fills its
    group's count; then the transaction goes back to a savepoint (the task's
    own writes kept) and None says: take the checking path. Nothing psycopg
    may be preparing follows it (an aborted pipeline skips what follows).
    """
    q = store.queries
    then = before.then
    entries = [(node, result) for node in before.links]
    if then.kind == "enter":
        entries += [(node, result) for node in before.starts]
    try:
        messages = plan(store.app, ref.workflow_id, ref.generation, entries)
    except Undecodable:
        return None  # the checking path fails the workflow at the task whose arguments it will not decode
    lease = ref.lease if store.atomic else None
    aborted: Exception | None = None
    try:
        with conn.pipeline() as pipeline:
            _begin(conn)
            conn.execute(f"SAVEPOINT {_SAVEPOINT}")
            conn.execute(q["step_fence"], {"id": ref.workflow_id})
            if then.kind == "end":
                store.backend.store_result_in(conn, before.result_id, result, states.SUCCESS)
            staged = stage(store, conn, ref.workflow_id, ref.generation, messages)
            try:
                conn.execute(q["step_commit"], {
                    **checkpoint_params, "generation": ref.generation, "side": ref.side,
                    "lease_id": lease.id if lease else None, "lease_token": lease.token if lease else None,
                    "watched": not store.atomic,
                    "group": then.path if then.kind == "count" else None,
                    "part": then.part if then.kind == "count" else None,
                    "step": ref.top if then.kind == "end" else then.root_element, "end": then.kind == "end",
                })
                conn.execute("COMMIT", prepare=False)
            except _ABORTS as exc:  # seen before the pipeline's end: read what is left, so that it ends cleanly
                aborted = exc
                _drain(pipeline)
    except _ABORTS as exc:
        aborted = exc
    if aborted is not None:
        conn.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
        logger.info("durable step %s of workflow %s: %s; checking", ref.path, ref.workflow_id,
                    str(aborted).splitlines()[0])
        return None
    return staged


#: What aborts a pipelined commit when what it was built on no longer holds (see ``step_commit``).
_ABORTS = (psycopg.errors.RaiseException, psycopg.errors.UniqueViolation)


def _count(conn: psycopg.Connection, q: dict[str, str], workflow_id: str, then: Then) -> psycopg.Cursor[Counted]:
    """Send the count of a finished member in its group (``then``: count in ``then.path``'s ``then.part``)."""
    return fetch.execute_as(conn, Counted, q["fan_in_count"], {"id": workflow_id, "path": then.path, "part": then.part})


def _drain(pipeline: psycopg.Pipeline) -> None:
    """Read the results an aborted pipeline still owes (each says: aborted)."""
    try:
        pipeline.sync()
    except psycopg.Error:
        pass


def _move(store: Store, conn: psycopg.Connection, ref: StepRef, then: Then, value: Any, result_id: str) -> None:
    """Record where the workflow goes when a node completed with ``value`` and its completion does ``then``."""
    q = store.queries
    if then.kind == "end":
        conn.execute(q["workflow_finish"], {"id": ref.workflow_id, "status": "succeeded", "error": None,
                                            "step": ref.top, "failed_path": None})
        store.backend.store_result_in(conn, result_id, value, states.SUCCESS)
    elif then.root_element is not None:
        conn.execute(q["workflow_advance"], {"id": ref.workflow_id, "step": then.root_element})
    else:
        conn.execute(q["workflow_progress"], {"id": ref.workflow_id})


def _commit_checked(store: Store, conn: psycopg.Connection, ref: StepRef, before: Before,
                    checkpoint_params: dict, result: Any) -> list[Message]:
    """The checking path: look at the workflow under the fence, then count, decide and send (or roll back)."""
    q = store.queries
    wid = ref.workflow_id
    known = before.then
    with conn.pipeline():
        _begin(conn)
        conn.execute(q["step_fence"], {"id": wid})
        checking = fetch.execute_as(conn, StepCheck, q["step_check"], {"id": wid, "path": ref.path})
        inserting = conn.execute(q["checkpoint_insert"], checkpoint_params)
        releasing = _release_cursor(store, conn, ref)
        if not store.atomic:
            conn.execute(q["sent_step_done"], {"id": wid, "path": ref.path})
        counting = _count(conn, q, wid, known) if known is not None and known.kind == "count" else None
    wf, inserted = checking.fetchone(), inserting.fetchone()
    released = releasing is None or releasing.fetchone() is not None
    says = verdict(wf, ref, Act.COMMIT)
    if wf is None or says is Verdict.SUPERSEDED:
        _abandon(store, conn, ref, "belongs to a superseded run (or its workflow is gone): not checkpointed")
        return []
    result_id = wf.result_task_id
    if inserted is None:
        # Another attempt finished this task first: keep its outcome, drop ours.
        _abandon(store, conn, ref, "already finished: this attempt's writes rolled back")
        return []
    if not released:
        conn.execute("ROLLBACK")
        raise LeaseLost(f"lost the lease of step {ref.path} of workflow {wid}: rolled back")
    if says is Verdict.REPLACED:
        _abandon(store, conn, ref, "was replaced (Task.replace) by another attempt: not checkpointed")
        return []
    then = Then.of(wf)
    if counting is not None and then != known:
        raise WorkflowError(f"the row of step {ref.path} of workflow {wid} changed while it ran: rolled back")
    revive = says is Verdict.FAILED and wf.failed_path == ref.path
    sending = says is Verdict.GO or revive
    if revive:
        logger.warning("durable step %s of workflow %s succeeded after another attempt of it failed: "
                       "its checkpoint wins, the workflow runs on", ref.path, wid)
        conn.execute(q["workflow_revive"], {"id": wid})
        conn.execute(store.backend.queries["result_delete"], (result_id,))
    # Counts move whatever the workflow's status, so that they always match the checkpoints.
    value = result
    while then.kind == "count":
        cursor = counting or _count(conn, q, wid, then)
        counting = None
        count = fetch.one(cursor)
        if not count.counted:
            raise WorkflowError(f"group {then.path} of workflow {wid} has no count: the tree is damaged")
        if not count.complete:
            then = Then("none")
            break
        group = then.path
        if sending:  # the group's value: its members' results, read once, by the member that completes it
            value, then = rows.value(conn, q, wid, group, lambda path, ct, blob: decode(store.app, ct, blob, path))
        else:
            then = Then.of(fetch.one(fetch.execute_as(conn, Follows, q["node_then"], {"id": wid, "path": group})))
    entries = [(node, result) for node in before.links] if sending else []
    if sending and then.kind == "enter":
        if then == known:
            starts = before.starts
        else:
            assert then.path is not None  # an "enter" names the node it enters
            starts = rows.starts(conn, q, wid, rows.read(conn, q, wid, [then.path]))
        entries += [(node, value) for node in starts]
    # The rest goes out in one more round trip, COMMIT included; a failing statement
    # aborts the transaction and surfaces when the pipeline syncs (rolled back by the caller).
    try:
        messages = plan(store.app, wid, ref.generation, entries)
    except Undecodable as exc:
        messages, sending = [], False
        fail_undecodable(store, conn, wid, exc.path or ref.path, result_id, exc)
    with conn.pipeline():
        if sending and then.kind != "none":
            _move(store, conn, ref, then, value, result_id)
        elif sending:
            conn.execute(q["workflow_progress"], {"id": wid})
        staged = stage(store, conn, wid, ref.generation, messages)
        conn.execute("COMMIT")
    return staged


def fail_undecodable(store: Store, conn: psycopg.Connection, workflow_id: str, path: str, result_id: str,
                     exc: Undecodable) -> None:
    """Fail the workflow at ``path``, whose stored arguments this process will not decode, in ``conn``'s transaction."""
    logger.error("durable workflow %s failed at task %s: %s", workflow_id, path, exc)
    conn.execute(store.queries["workflow_finish"], {"id": workflow_id, "status": "failed",
                                                   "error": f"{type(exc).__name__}: {exc}"[:2000],
                                                   "step": top_of(path), "failed_path": path})
    store.backend.store_result_in(conn, result_id, exc, states.FAILURE)


def _abandon(store: Store, conn: psycopg.Connection, ref: StepRef, why: str) -> None:
    """Roll the task's transaction back, drop its message, say why."""
    conn.execute("ROLLBACK")
    with conn.transaction():
        release(store, conn, ref)
    logger.warning("durable step %s of workflow %s %s", ref.path, ref.workflow_id, why)


def record_failure(store: Store, ref: StepRef, exc: BaseException, traceback: str | None = None) -> bool:
    """The task failed for good: mark the workflow failed at it; checkpoints stay.

    Only the attempt that holds the task decides, as for a success: with a
    lease (atomic mode) the fenced delete of its own message must find it, and
    an existing checkpoint of the task wins in every mode. Returns False, with
    nothing changed, for an attempt fenced out that way (or a workflow that is
    no longer running this generation). Takes the workflow's fence alone:
    commits after it see the failure and start nothing new.
    """
    q = store.queries
    with store.connection() as conn, conn.transaction():
        with conn.pipeline():
            conn.execute(q["workflow_fence"], {"id": ref.workflow_id})
            locked = fetch.execute_as(conn, LockedWorkflow, q["workflow_lock"], {"id": ref.workflow_id})
            finished = conn.execute(q["checkpoint_exists"], {"id": ref.workflow_id, "path": ref.path})
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
        if wf is None or standing(wf, ref, Act.FAIL) is not Verdict.GO:
            return False
        error = f"{type(exc).__name__}: {exc}"[:2000]
        conn.execute(q["workflow_finish"], {"id": ref.workflow_id, "status": "failed", "error": error,
                                            "step": ref.top, "failed_path": ref.path})
        if not store.atomic:  # its attempt is over: a resume must not take it for a live one
            conn.execute(q["sent_step_done"], {"id": ref.workflow_id, "path": ref.path})
        store.backend.store_result_in(conn, wf.result_task_id, exc, states.FAILURE, traceback=traceback)
    return True


def commit_replacement(store: Store, ref: StepRef, sig: Any) -> None:
    """``Task.replace(sig)``: the task's place in the tree becomes ``sig`` (a chain around it), started now.

    One transaction, fenced like a checkpoint: the task's row becomes the
    replacement's rows, the replacement's first tasks are sent (atomic mode)
    and the task's own message goes. What ``sig`` returns is the replaced
    task's result; the task's link callbacks (stored again under the
    replacement's last task) and errbacks pass to it, as Celery passes them.
    Raises WorkflowError for links that have no single task to move to.
    """
    q = store.queries
    app = store.app
    wid = ref.workflow_id
    staged: list[Message] = []
    with store.connection() as conn, conn.transaction():
        with conn.pipeline():
            conn.execute(q["step_fence"], {"id": wid})
            checking = fetch.execute_as(conn, StepCheck, q["step_check"], {"id": wid, "path": ref.path})
            finished = conn.execute(q["checkpoint_exists"], {"id": wid, "path": ref.path})
            releasing = _release_cursor(store, conn, ref)
        wf = checking.fetchone()
        if releasing is not None and releasing.fetchone() is None:
            logger.warning("durable step %s of workflow %s replaced itself after losing its lease: ignored",
                           ref.path, wid)
            return
        if finished.fetchone() is not None or wf is None or verdict(wf, ref, Act.REPLACE) is not Verdict.GO:
            return
        nodes = rows.build(rows.subtree(conn, q, wid, [ref.path]))
        old = nodes[ref.path]
        new = node_of(sig, app)
        if old.links:
            last = new if new.kind == "task" else (new.children[-1] if new.kind == "chain" else None)
            if last is None or last.kind != "task":
                raise WorkflowError(f"step {ref.path} has link callbacks and replaced itself with a "
                                    f"{new.kind}: they need a single task to call back from")
            last.links += old.links
        errbacks = listed(old.sig["options"].get("link_error"))
        if errbacks:
            add_errbacks(new, errbacks)
        grafted = new if new.kind == "chain" and not new.chord else Node("chain", [new])
        grafted.replaced = True
        graft: dict[str, Node] = {}
        number(grafted, ref.path, None, graft)
        encode_args(graft.values(), app)
        moved = [path for path in nodes if path != ref.path]
        before = Then.of(wf)
        conn.execute(q["node_delete"], {"id": wid, "paths": [ref.path] + moved})
        conn.execute(q["fan_in_delete"], {"id": wid, "paths": moved})
        rows.insert(conn, q, rows.params(wid, graft.values(), lambda node: rows.then_of(node, grafted, before)))
        if not store.atomic:
            conn.execute(q["sent_step_done"], {"id": wid, "path": ref.path})
        staged = stage(store, conn, wid, ref.generation, plan(app, wid, ref.generation, enter(grafted, NOTHING)))
    send(app, staged)
    logger.info("durable step %s of workflow %s replaced by %s", ref.path, wid, grafted.name)


def release_only(store: Store, ref: StepRef, retry_when: Any = None) -> None:
    """Delete the task's message without a checkpoint (the task is being retried, or ignored).

    Behind Redis/RabbitMQ there is no row to delete; a retry's countdown
    (``retry_when``: seconds or a datetime) moves the task's due time instead,
    so the sweep does not take the waiting retry for a lost message.
    """
    with store.connection() as conn, conn.transaction():
        release(store, conn, ref)
        if not store.atomic and retry_when is not None:
            eta, countdown = (retry_when, None) if isinstance(retry_when, datetime) else (None, float(retry_when))
            conn.execute(store.queries["sent_step_retry"], {
                "id": ref.workflow_id, "path": ref.path, "eta": eta, "countdown": countdown,
            })


def ready_tasks(store: Store, conn: psycopg.Connection, workflow_id: str,
                tree: Tree) -> tuple[list[tuple[Node, Any]], set[str]]:
    """Tasks of a whole tree that should be running now (input ready, no checkpoint), each with its input;
    and the finished paths."""
    done = {row[0] for row in conn.execute(store.queries["checkpoint_paths"], {"id": workflow_id})}
    ready = tree.frontier(done)
    needed: set[str] = set()
    for task in ready:
        source = tree.source(task)
        if source is not None:
            needed.update(t.path for t in source.terminals())
    values = values_of(store, conn, workflow_id, sorted(needed)) if needed else {}
    return [(task, tree.input_of(task, values)) for task in ready], done


def cancelled_error(workflow_id: str) -> TaskRevokedError:
    return TaskRevokedError(f"workflow {workflow_id} was cancelled")
