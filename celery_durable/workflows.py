"""Operate durable workflows: list, show, cancel, resume, restart from a task.

Reading needs only a URL (or an app); changing a workflow that must send a
task needs the Celery app, whose broker carries the message. Every change
runs in one transaction under the workflow's row lock, and in atomic mode
the re-sent tasks' messages commit with it. A task is named by its path in
the workflow's tree (``"2.1.0"``; a durable_chain's steps are ``"0"``, ``"1"``…).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from celery import states
from psycopg.rows import dict_row

from . import content
from .config import Settings
from .db import dsn, fetch, pool, queries
from .exceptions import WorkflowError
from .headers import STEP_HEADER
from .workflow import rows
from .workflow.canvas import call_args, encode_args, with_args
from .workflow.checkpoint import cancelled_error, ready_tasks, values_of
from .workflow.dispatch import plan, send, stage
from .workflow.records import CheckpointRow, FanInRow, LockedWorkflow, WorkflowRow
from .workflow.store import Store
from .workflow.tree import Node, Tree, path_key

__all__ = ["cancel_workflow", "get_workflow", "list_workflows", "restart_workflow", "resume_workflow"]

logger = logging.getLogger(__name__)


def _reader(app_or_url: Any, schema: str | None) -> tuple[str, Settings]:
    if isinstance(app_or_url, str):
        return dsn.from_url(app_or_url), Settings(schema=schema or Settings().schema)
    store = Store.for_app(app_or_url)
    return store.conninfo, store.settings


def _queries(settings: Settings) -> dict[str, str]:
    return queries.load("celery_durable.workflow", "queries.sql", settings.schema)


def list_workflows(app_or_url: Any, schema: str | None = None, status: str | None = None,
                   limit: int = 50) -> list[dict]:
    """Newest workflows first; ``status`` is running, succeeded, failed, cancelled or stalled."""
    conninfo, settings = _reader(app_or_url, schema)
    with pool.connection(conninfo, settings) as conn:
        cur = conn.cursor(row_factory=dict_row)
        return cur.execute(_queries(settings)["workflow_list"], {"status": status, "limit": limit}).fetchall()


def get_workflow(app_or_url: Any, schema: str | None = None, workflow_id: str | None = None,
                 app: Any = None, accept: Iterable[str] | None = None) -> dict | None:
    """One workflow: its tree with each task's state, its checkpoints with their results, or None.

    Results are decoded with the content types in ``accept`` (default: the
    app's ``result_accept_content``; JSON only without an app); any other
    shows as an :class:`~celery_durable.content.Opaque` (content type and
    size), never decoded. A task's state is ``succeeded`` (checkpointed), ``failed``, ``sent`` (its
    input is ready and the workflow runs: queued or running), ``stopped`` (the
    same in a failed or cancelled workflow) or ``waiting`` (its input is not ready).
    """
    if workflow_id is None:
        raise TypeError("get_workflow needs a workflow_id")
    conninfo, settings = _reader(app_or_url, schema)
    if app is None and not isinstance(app_or_url, str):
        app = app_or_url
    q = _queries(settings)
    with pool.connection(conninfo, settings) as conn:
        wf = fetch.execute_as(conn, WorkflowRow, q["workflow_get"], {"id": workflow_id}).fetchone()
        if wf is None:
            return None
        marks = fetch.execute_as(conn, CheckpointRow, q["checkpoint_list"], {"id": workflow_id}).fetchall()
        tree = rows.load_tree(conn, q, workflow_id)
    if accept is not None:
        shown = content.accept_types(accept)
    else:
        shown = content.JSON_ONLY if app is None else content.result_types(app)
    checkpoints = {}
    for mark in marks:
        parts = path_key(mark.path)
        entry = {"path": mark.path, "step": parts[0][0], "member": parts[1][0] if len(parts) > 1 else -1,
                 "task_id": mark.task_id, "task": mark.task_name, "attempts": mark.attempts,
                 "finished_at": mark.finished_at}
        entry["result"] = content.show(bytes(mark.result), mark.content_type, "binary", shown)
        checkpoints[mark.path] = entry
    sent = {t.path for t in tree.frontier(set(checkpoints))}
    states_by_path = {}
    for task in tree.tasks():
        if task.path in checkpoints:
            states_by_path[task.path] = "succeeded"
        elif wf.status == "failed" and task.path == wf.failed_path:
            states_by_path[task.path] = "failed"
        elif task.path in sent:
            states_by_path[task.path] = "sent" if wf.status == "running" else "stopped"
        else:
            states_by_path[task.path] = "waiting"
    return {
        "id": wf.id, "name": wf.name, "status": wf.status, "current_step": wf.current_step,
        "generation": wf.generation, "atomic": wf.atomic, "error": wf.error, "failed_path": wf.failed_path,
        "created_at": wf.created_at, "updated_at": wf.updated_at, "finished_at": wf.finished_at,
        "result_task_id": wf.result_task_id,
        "steps": [{"index": c.index, "task": c.name, "kind": c.kind} for c in tree.root.children],
        "tree": [_describe(child, states_by_path, checkpoints) for child in tree.root.children],
        "checkpoints": [checkpoints[p] for p in sorted(checkpoints, key=path_key)],
    }


def _describe(node: Node, task_states: dict[str, str], checkpoints: dict[str, dict]) -> dict:
    """One node of ``get_workflow``'s tree: path, kind, name, state (and its task's checkpoint)."""
    entry: dict[str, Any] = {"path": node.path, "kind": "chord" if node.chord else node.kind, "task": node.name}
    if node.owner is not None:
        entry["link_of"] = node.owner.path
    if node.kind == "task":
        entry["state"] = task_states[node.path]
        mark = checkpoints.get(node.path)
        if mark is not None:
            entry.update({k: mark[k] for k in ("task_id", "attempts", "result") if k in mark})
        if node.links:
            entry["links"] = [_describe(link, task_states, checkpoints) for link in node.links]
        return entry
    entry["children"] = [_describe(child, task_states, checkpoints) for child in node.children]
    below = {task_states[t.path] for t in node.tasks()}
    for state in ("failed", "sent", "stopped"):
        if state in below:
            entry["state"] = state
            break
    else:
        entry["state"] = "succeeded" if below == {"succeeded"} else "waiting"
    return entry


def cancel_workflow(app_or_url: Any, workflow_id: str, schema: str | None = None) -> bool:
    """Stop sending tasks; a task already running finishes but nothing follows it.

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
        conn.execute(q["workflow_fence"], {"id": workflow_id})
        wf = fetch.execute_as(conn, LockedWorkflow, q["workflow_lock"], {"id": workflow_id}).fetchone()
        if wf is None:
            raise WorkflowError(f"no workflow {workflow_id!r}")
        if wf.status in ("succeeded", "cancelled"):
            return False
        conn.execute(q["workflow_finish"], {"id": workflow_id, "status": "cancelled", "error": None,
                                            "step": wf.current_step, "failed_path": None})
        if backend is not None:
            backend.store_result_in(conn, wf.result_task_id, cancelled_error(workflow_id), states.REVOKED)
    return True


def resume_workflow(app: Any, workflow_id: str) -> list[str]:
    """Send again every task that should be running, has no checkpoint and no live attempt (a failed one, a lost one).

    For a failed, cancelled or stalled workflow of any shape: after fixing what
    made a task fail. A task with a live attempt is left alone (logged): its
    message still exists for this generation (queued, waiting for its
    countdown, or held by a worker), or, behind another broker, its last sign
    of life is younger than ``recovery_after``; it decides the task itself, and
    the workflow runs again around it. Resumes of one workflow take turns on
    its row, so two at once send each task once. Returns the sent task ids.
    Raises WorkflowError for a workflow that succeeded.
    """

    def change(conn: Any, wf: LockedWorkflow, tree: Tree) -> int:
        if wf.status == "succeeded":
            raise WorkflowError(f"workflow {workflow_id} already succeeded: use restart_workflow to run it again")
        return 0

    return _resend(Store.for_app(app), workflow_id, change, leave_live=True)


def restart_workflow(app: Any, workflow_id: str, from_step: int | str, args: list | None = None) -> list[str]:
    """Run a workflow again from the task or node at ``from_step`` (a path such as ``"2.1.0"``, or a root index).

    Checkpoints of that node and of everything its result flows into are
    dropped; the others (earlier tasks, parallel branches) are kept. ``args``
    replaces a task's own arguments. Messages still in flight from the
    previous run are ignored (a new generation). Returns the sent task ids.
    """
    store = Store.for_app(app)
    path = str(from_step)

    def change(conn: Any, wf: LockedWorkflow, tree: Tree) -> int:
        if path not in tree.nodes:
            raise WorkflowError(f"workflow {workflow_id} has no task or node at path {path!r}; its root has "
                                f"elements 0..{len(tree.root.children) - 1}")
        node = tree[path]
        if args is not None:
            if node.kind != "task":
                raise WorkflowError(f"new args can only replace a task's arguments; {path} is a {node.kind}")
            sig = node.sig
            assert sig is not None  # a task's node carries its signature
            node.sig = with_args(sig, args, call_args(sig, app, path)[1])
            encode_args([node], app)
            conn.execute(store.queries["node_sig"], {"id": workflow_id, "path": path, "sig": rows.sig_json(node.sig)})
        again = [t.path for t in tree.downstream(path)]
        conn.execute(store.queries["checkpoint_delete_paths"], {"id": workflow_id, "paths": again})
        return 1

    return _resend(store, workflow_id, change)


def _resend(store: Store, workflow_id: str, change: Callable[[Any, LockedWorkflow, Tree], int],
            leave_live: bool = False) -> list[str]:
    q = store.queries
    with store.connection() as conn:
        with conn.transaction():
            conn.execute(q["workflow_fence"], {"id": workflow_id})
            wf = fetch.execute_as(conn, LockedWorkflow, q["workflow_lock"], {"id": workflow_id}).fetchone()
            if wf is None:
                raise WorkflowError(f"no workflow {workflow_id!r}")
            tree = rows.load_tree(conn, q, workflow_id)
            bump = change(conn, wf, tree)
            entries, done = ready_tasks(store, conn, workflow_id, tree)
            if leave_live and entries:
                live = _live(store, conn, workflow_id, wf.generation, [task for task, _ in entries])
                entries = [(task, given) for task, given in entries if task.path not in live]
            # Counts follow the checkpoints (a restart dropped some; a task finished while failed counted).
            stored = fetch.execute_as(conn, FanInRow, q["fan_in_list"], {"id": workflow_id}).fetchall()
            conn.execute(q["fan_in_set"], {"id": workflow_id, **rows.counts(tree, done, stored)})
            generation = fetch.value(conn.execute(q["workflow_restart"], {
                "id": workflow_id, "step": tree.current_step(done), "bump": bump,
            }))
            # The old outcome (failure, revocation or result) must not answer wf.get() any more.
            conn.execute(store.backend.queries["result_delete"], (wf.result_task_id,))
            if not entries and tree.root.complete(done):
                _finish(store, conn, workflow_id, tree, wf.result_task_id)
                return []
            messages = plan(store.app, workflow_id, generation, entries)
            staged = stage(store, conn, workflow_id, generation, messages)
    send(store.app, staged)
    return [m.task_id for m in messages]


def _live(store: Store, conn: Any, workflow_id: str, generation: int, tasks: list[Node]) -> set[str]:
    """The paths among ``tasks`` with a live attempt in ``generation``; each is logged."""
    q = store.queries
    paths = [t.path for t in tasks]
    queued = conn.execute(q["message_step_live"], {
        "header": STEP_HEADER, "tasks": sorted({t.name for t in tasks}), "id": workflow_id,
        "generation": generation, "paths": paths,
    }).fetchall()
    seen = conn.execute(q["sent_step_live"], {
        "id": workflow_id, "generation": generation, "paths": paths, "after": store.settings.recovery_after,
    }).fetchall()
    live = {r[0] for r in queued} | {r[0] for r in seen}
    for path in sorted(live, key=path_key):
        logger.info("resume of workflow %s leaves task %s alone: it has a live attempt (its message is queued or "
                    "held by a worker, or showed a sign of life within recovery_after)", workflow_id, path)
    return live


def _finish(store: Store, conn: Any, workflow_id: str, tree: Tree, result_id: str) -> None:
    """Every task has its checkpoint (the last one committed while the workflow was not running): it succeeded."""
    terminals = [t.path for t in tree.root.terminals()]
    value = tree.root.value(values_of(store, conn, workflow_id, terminals))
    conn.execute(store.queries["workflow_finish"], {"id": workflow_id, "status": "succeeded", "error": None,
                                                   "step": len(tree.root.children) - 1, "failed_path": None})
    store.backend.store_result_in(conn, result_id, value, states.SUCCESS)
