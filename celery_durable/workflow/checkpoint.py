"""The transactions that move a durable workflow: a task finished, a task failed.

A finished task commits, in ONE transaction: whatever it wrote through
``current_step().connection``, its checkpoint, the messages of the tasks its
result starts (atomic mode) and the deletion of its own message, fenced by its
lease token. A crash before the commit re-runs the task with its writes rolled
back; after the commit nothing of it runs again. The workflow row is locked
first, so the members of a group finishing together agree on which of them
completes it: the last one to commit sends what follows the group (a chord's
body), exactly once.

A task costs two round trips when what its result starts is known before it
runs (the next element of its chain, or the workflow's end): one read before
it runs, and its whole commit pipelined in one, built on that read; guards in
the pipeline abort it when the read went stale while the task ran, and the
same transaction then takes the checking path (lock, look, decide). A group
member takes that path: only the commit can tell whether it is the last.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from celery import states
from celery.exceptions import TaskRevokedError
from kombu.serialization import dumps

from .. import content
from ..exceptions import LeaseLost, Undecodable, WorkflowError
from .canvas import add_errbacks, decode_tree, encode_tree, listed, node_of
from .context import StepContext
from .dispatch import Message, plan, send, stage
from .store import Store
from .tree import NOTHING, Node, Tree, feeder, top_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepRef:
    """A task message's identity, from its headers: workflow, path in the tree, generation, lease."""

    workflow_id: str
    path: str
    generation: int
    lease: tuple[int, str] | None

    @property
    def top(self) -> int:
        """The root element the task belongs to."""
        return top_of(self.path)

    @property
    def side(self) -> bool:
        """A link callback's task (or inside one): it may still run after the workflow succeeded."""
        return "~" in self.path

    @classmethod
    def from_headers(cls, header: dict, lease: str | None) -> "StepRef":
        """Read a step header (``workflow_id``/``path``/``generation``, or an older version's ``w/s/m/g``)."""
        parsed = None
        if lease:
            row_id, _, token = str(lease).partition(":")
            parsed = (int(row_id), token)
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
    rows = conn.execute(store.queries["checkpoint_values"], {"id": workflow_id, "paths": paths}).fetchall()
    return {path: decode(store.app, ct, blob, path) for path, ct, blob in rows}


def _release_cursor(store: Store, conn: psycopg.Connection, ref: StepRef) -> psycopg.Cursor | None:
    """Send the fenced delete of the task's own message (None: nothing to delete in this mode)."""
    if ref.lease is None or not store.atomic:
        return None
    return conn.execute(store.queries["message_release"], {"id": ref.lease[0], "token": ref.lease[1]})


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
    status: str | None = None
    current_step: int | None = None
    tree: Tree | None = None
    result_id: str | None = None


def before_run(store: Store, ref: StepRef) -> Before:
    """Read the task's workflow once: FINISHED (with its result) or STOPPED tasks must not run.

    A task that runs (verdict None) keeps what was read, so that its commit
    can go out in one round trip (``commit_success``).
    """
    with store.connection() as conn:
        row = conn.execute(store.queries["step_state"], {"id": ref.workflow_id, "path": ref.path}).fetchone()
        if (row is None or row[1] != ref.generation or row[0] == "cancelled"
                or (row[0] == "succeeded" and not ref.side)):
            with conn.transaction():
                release(store, conn, ref)
            return Before(STOPPED)
        if row[2] is not None:
            with conn.transaction():
                release(store, conn, ref)
            return Before(FINISHED, decode(store.app, row[2], row[3], ref.path))
        tree = decode_tree(row[5])
        node = tree.nodes.get(ref.path)
        if node is None or node.kind != "task":  # replaced (Task.replace) since this message was sent
            with conn.transaction():
                release(store, conn, ref)
            return Before(STOPPED)
    return Before(None, None, row[0], row[4], tree, row[6])


def commit_success(store: Store, step: StepContext, ref: StepRef, task: Any, result: Any,
                   before: Before | None = None) -> None:
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
            store.give_back(conn)
    send(store.app, next_send)


@dataclass
class Moves:
    """What a finished task's result sets off: tasks to start, the root element now current, the end."""

    entries: list[tuple[Node, Any]]
    current_step: int | None = None
    finished: bool = False
    value: Any = None


def _commit(store: Store, conn: psycopg.Connection, ref: StepRef, task: Any, result: Any,
            before: Before | None) -> list[Message]:
    """The task's transaction from its checkpoint to COMMIT (or rollback); return the messages to send after it."""
    app = store.app
    q = store.queries
    content_type, data = encode(app, result)
    checkpoint_params = {
        "id": ref.workflow_id, "path": ref.path, "task_id": task.request.id, "task_name": task.name,
        "content_type": content_type, "result": data, "attempts": (task.request.retries or 0) + 1,
    }
    known = before.tree.nodes.get(ref.path) if before is not None and before.tree else None
    group = _first_group(known)
    if (group is None and known is not None and known.kind == "task"
            and before.status == "running" and before.current_step == ref.top):
        # No group to count: what the task starts is known from the read before it ran.
        moves = _moves(store, conn, before.tree, known, result, ref.workflow_id, {})
        moves.entries += _links(before.tree, known, result)
        staged = _commit_pipelined(store, conn, ref, before, checkpoint_params, moves)
        if staged is not None:
            return staged
    # One round trip: lock, checkpoint and fenced delete go out together, with the count of the
    # finished members of the group this task may complete (known from the read before it ran);
    # if the answers say this attempt must not count, the whole transaction is rolled back below.
    group_terminals = [t.path for t in group.terminals()] if group is not None else []
    try:
        with conn.pipeline():
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                conn.execute("BEGIN")
            locked = conn.execute(q["workflow_lock"], {"id": ref.workflow_id})
            inserting = conn.execute(q["checkpoint_insert"], checkpoint_params)
            releasing = _release_cursor(store, conn, ref)
            if not store.atomic:
                conn.execute(q["sent_step_done"], {"id": ref.workflow_id, "path": ref.path})
            counting = (conn.execute(q["checkpoint_count"], {"id": ref.workflow_id, "paths": group_terminals})
                        if group_terminals else None)
    except psycopg.errors.ForeignKeyViolation:
        _abandon(store, conn, ref, "has no workflow row any more (deleted?): not checkpointed")
        return []
    wf, inserted = locked.fetchone(), inserting.fetchone()
    released = releasing is None or releasing.fetchone() is not None
    if wf is None or wf[2] != ref.generation:
        _abandon(store, conn, ref, "belongs to a superseded run: not checkpointed")
        return []
    status, _current, _gen, steps_json, result_id, _atomic, failed_path = wf
    if inserted is None:
        # Another attempt finished this task first: keep its outcome, drop ours.
        _abandon(store, conn, ref, "already finished: this attempt's writes rolled back")
        return []
    if not released:
        conn.execute("ROLLBACK")
        raise LeaseLost(f"lost the lease of step {ref.path} of workflow {ref.workflow_id}: rolled back")
    revive = status == "failed" and failed_path == ref.path
    if status != "running" and not revive and not (status == "succeeded" and ref.side):
        conn.execute("COMMIT")  # the checkpoint stands; a resume goes on from it
        return []
    tree = decode_tree(steps_json)
    node = tree[ref.path]
    counted = {group.path: (group_terminals, counting.fetchone()[0])} if counting is not None else {}
    moves = _moves(store, conn, tree, node, result, ref.workflow_id, counted)
    moves.entries += _links(tree, node, result)
    next_send: list[Message] = []
    # The rest goes out in one more round trip, COMMIT included; a failing statement
    # aborts the transaction and surfaces when the pipeline syncs (rolled back by the caller).
    with conn.pipeline():
        if revive:
            logger.warning("durable step %s of workflow %s succeeded after another attempt of it failed: "
                           "its checkpoint wins, the workflow runs on", ref.path, ref.workflow_id)
            conn.execute(q["workflow_revive"], {"id": ref.workflow_id})
            conn.execute(store.backend.queries["result_delete"], (result_id,))
        next_send = _apply(store, conn, ref, moves, result_id)
        conn.execute("COMMIT")
    return next_send


def _first_group(node: Node | None) -> Node | None:
    """The group ``node`` finishing may complete (None when what follows it is known without counting)."""
    while node is not None and node.parent is not None:
        parent = node.parent
        if parent.kind == "group":
            return parent
        if node.index + 1 < len(parent.children):
            return None
        node = parent
    return None


def _moves(store: Store, conn: psycopg.Connection, tree: Tree, node: Node, result: Any, workflow_id: str,
           counted: dict[str, tuple[list[str], int]]) -> Moves:
    """What the task at ``node`` finishing sets off, counting finished members of the groups on the way.

    ``counted``: group path -> (its terminal tasks, how many finished), already read in this transaction.
    With no group on the way (``_first_group`` is None) it reads nothing.
    """
    values = {node.path: result}
    while True:
        parent = node.parent
        if parent is None:
            return Moves([])  # the end of a link's branch: nothing waits for it
        if parent.kind == "group":
            terminals = [t.path for t in parent.terminals()]
            known = counted.get(parent.path)
            if known is not None and known[0] == terminals:
                done = known[1]
            else:
                done = conn.execute(store.queries["checkpoint_count"],
                                    {"id": workflow_id, "paths": terminals}).fetchone()[0]
            if done < len(terminals):
                return Moves([], None)
            values.update(values_of(store, conn, workflow_id, [p for p in terminals if p not in values]))
        elif node.index + 1 < len(parent.children):
            following = parent.children[node.index + 1]
            current = following.index if parent is tree.root else None
            return Moves(tree.enter(following, node.value(values)), current)
        elif parent is tree.root:
            return Moves([], None, True, node.value(values))
        node = parent


def _links(tree: Tree, node: Node, result: Any) -> list[tuple[Node, Any]]:
    """The link callbacks of a finished task: they start with its commit, with its result."""
    return [entry for link in node.links for entry in tree.enter(link, result)]


def _apply(store: Store, conn: psycopg.Connection, ref: StepRef, moves: Moves, result_id: str) -> list[Message]:
    """Send (or stage) what ``moves`` starts, and record the workflow's progress or end, in ``conn``'s transaction."""
    q = store.queries
    try:
        messages = plan(store.app, ref.workflow_id, ref.generation, moves.entries)
    except Undecodable as exc:
        fail_undecodable(store, conn, ref.workflow_id, exc.path or ref.path, result_id, exc)
        return []
    if moves.finished:
        conn.execute(q["workflow_finish"], {"id": ref.workflow_id, "status": "succeeded", "error": None,
                                            "step": ref.top, "failed_path": None})
        store.backend.store_result_in(conn, result_id, moves.value, states.SUCCESS)
    elif moves.current_step is not None:
        conn.execute(q["workflow_advance"], {"id": ref.workflow_id, "step": moves.current_step})
    else:
        conn.execute(q["workflow_touch"], {"id": ref.workflow_id})
    return stage(store, conn, ref.workflow_id, ref.generation, messages)


def fail_undecodable(store: Store, conn: psycopg.Connection, workflow_id: str, path: str, result_id: str,
                     exc: Undecodable) -> None:
    """Fail the workflow at ``path``, whose stored arguments this process will not decode, in ``conn``'s transaction."""
    logger.error("durable workflow %s failed at task %s: %s", workflow_id, path, exc)
    conn.execute(store.queries["workflow_finish"], {"id": workflow_id, "status": "failed",
                                                   "error": f"{type(exc).__name__}: {exc}"[:2000],
                                                   "step": top_of(path), "failed_path": path})
    store.backend.store_result_in(conn, result_id, exc, states.FAILURE)


_SAVEPOINT = "celery_durable_step"


def _commit_pipelined(store: Store, conn: psycopg.Connection, ref: StepRef, before: Before,
                      checkpoint_params: dict, moves: Moves) -> list[Message] | None:
    """Commit a task in one round trip, built on what it read before it ran; return what to send after.

    Guards (``step_guard_v1``) and the checkpoint's primary key abort the
    pipeline when the workflow moved on, the task was finished by another
    attempt, or the lease was lost; then the transaction goes back to a
    savepoint (the task's own writes kept) and None says: take the checking path.
    """
    q = store.queries
    try:
        with conn.pipeline():
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                conn.execute("BEGIN")
            conn.execute(f"SAVEPOINT {_SAVEPOINT}")
            conn.execute(q["step_guard_lock"], {"id": ref.workflow_id, "generation": ref.generation,
                                                "step": ref.top})
            conn.execute(q["checkpoint_insert_new"], checkpoint_params)
            if store.atomic and ref.lease is not None:
                conn.execute(q["message_release_guarded"], {"id": ref.lease[0], "token": ref.lease[1]})
            if not store.atomic:
                conn.execute(q["sent_step_done"], {"id": ref.workflow_id, "path": ref.path})
            staged = _apply(store, conn, ref, moves, before.result_id)
            conn.execute("COMMIT")
    except (psycopg.errors.RaiseException, psycopg.errors.UniqueViolation,
            psycopg.errors.ForeignKeyViolation) as exc:
        conn.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
        logger.info("durable step %s of workflow %s: %s; checking", ref.path, ref.workflow_id,
                    str(exc).splitlines()[0])
        return None
    return staged


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
    no longer running this generation).
    """
    q = store.queries
    with store.connection() as conn, conn.transaction():
        with conn.pipeline():
            locked = conn.execute(q["workflow_lock"], {"id": ref.workflow_id})
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
        if wf is None or wf[2] != ref.generation or wf[0] != "running":
            return False
        error = f"{type(exc).__name__}: {exc}"[:2000]
        conn.execute(q["workflow_finish"], {"id": ref.workflow_id, "status": "failed", "error": error,
                                            "step": ref.top, "failed_path": ref.path})
        if not store.atomic:  # its attempt is over: a resume must not take it for a live one
            conn.execute(q["sent_step_done"], {"id": ref.workflow_id, "path": ref.path})
        store.backend.store_result_in(conn, wf[4], exc, states.FAILURE, traceback=traceback)
    return True


def commit_replacement(store: Store, ref: StepRef, sig: Any) -> None:
    """``Task.replace(sig)``: the task's place in the tree becomes ``sig`` (a chain around it), started now.

    One transaction, fenced like a checkpoint: the tree is rewritten, the
    replacement's first tasks are sent (atomic mode) and the task's own
    message goes. What ``sig`` returns is the replaced task's result; the
    task's link callbacks and errbacks pass to it, as Celery passes them.
    Raises WorkflowError for links that have no single task to move to.
    """
    q = store.queries
    app = store.app
    staged: list[Message] = []
    with store.connection() as conn, conn.transaction():
        with conn.pipeline():
            locked = conn.execute(q["workflow_lock"], {"id": ref.workflow_id})
            finished = conn.execute(q["checkpoint_exists"], {"id": ref.workflow_id, "path": ref.path})
            releasing = _release_cursor(store, conn, ref)
        wf = locked.fetchone()
        if releasing is not None and releasing.fetchone() is None:
            logger.warning("durable step %s of workflow %s replaced itself after losing its lease: ignored",
                           ref.path, ref.workflow_id)
            return
        if finished.fetchone() is not None or wf is None or wf[2] != ref.generation or wf[0] == "cancelled":
            return
        tree = decode_tree(wf[3])
        old = tree[ref.path]
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
        if old.owner is not None:
            old.owner.links[old.index] = grafted
        else:
            old.parent.children[old.index] = grafted
        tree = Tree(tree.root)
        grafted = tree[ref.path]
        conn.execute(q["workflow_steps"], {"id": ref.workflow_id, "steps": encode_tree(tree, app)})
        if not store.atomic:
            conn.execute(q["sent_step_done"], {"id": ref.workflow_id, "path": ref.path})
        staged = stage(store, conn, ref.workflow_id, ref.generation,
                       plan(app, ref.workflow_id, ref.generation, tree.enter(grafted, NOTHING)))
    send(app, staged)
    logger.info("durable step %s of workflow %s replaced by %s", ref.path, ref.workflow_id, grafted.name)


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


def ready_tasks(store: Store, conn: psycopg.Connection, workflow_id: str, tree: Tree,
                only: set[str] | None = None) -> tuple[list[tuple[Node, Any]], set[str]]:
    """Tasks that should be running now (input ready, no checkpoint), each with its input; and the finished paths.

    ``only`` limits them to these paths (the sweep re-sends lost tasks only).
    """
    done = {row[0] for row in conn.execute(store.queries["checkpoint_paths"], {"id": workflow_id})}
    ready = [t for t in tree.frontier(done) if only is None or t.path in only]
    needed = set()
    for task in ready:
        needed.update(_input_paths(tree, task))
    values = values_of(store, conn, workflow_id, sorted(needed)) if needed else {}
    return [(task, tree.input_of(task, values)) for task in ready], done


def _input_paths(tree: Tree, task: Node) -> list[str]:
    """The tasks whose results make up ``task``'s input."""
    source = feeder(task)
    return [] if source is None else [t.path for t in source.terminals()]


def cancelled_error(workflow_id: str) -> TaskRevokedError:
    return TaskRevokedError(f"workflow {workflow_id} was cancelled")
