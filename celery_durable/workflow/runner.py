"""Run ordinary tasks as durable steps, without a special base class.

Each registered task's ``run`` is wrapped once per process (at worker start,
and before the first durable_chain is sent). A message without the step
header goes straight through; a step message is skipped if it already has a
checkpoint, otherwise runs inside a ``StepContext`` and ends in the
checkpoint transaction. Retries, time limits, names, ids and events stay
Celery's own: the task is still the user's task.
"""

from __future__ import annotations

import functools
import logging
import traceback as tb
from typing import Any

import psycopg
from celery.exceptions import Ignore, NotRegistered, Reject, Retry

from ..exceptions import LeaseLost, Undecodable
from ..headers import LEASE_HEADER, STEP_HEADER
from . import checkpoint
from .context import StepContext, _enter, _leave, current_step
from .store import Store

logger = logging.getLogger(__name__)

_MARK = "_celery_durable_wrapped"


def instrument(app: Any) -> None:
    """Wrap every task of ``app`` so it can run as a durable step (idempotent)."""
    app.finalize(auto=True)
    for task in list(app.tasks.values()):
        _wrap(task)


def _wrap(task: Any) -> None:
    original = task.run
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def run(*args: Any, **kwargs: Any) -> Any:
        header = getattr(task.request, STEP_HEADER, None)
        if not header:
            return original(*args, **kwargs)
        return _run_step(task, header, original, args, kwargs)

    setattr(run, _MARK, True)
    task.run = run
    original_replace = task.replace

    @functools.wraps(original_replace)
    def replace(sig: Any) -> Any:
        if current_step() is None:
            return original_replace(sig)
        raise Replaced(sig)  # grafted into the workflow by _run_step, in the task's transaction

    task.replace = replace
    if getattr(task, "__trace__", None) is not None:
        task.__trace__ = None  # rebuilt on next call, with the wrapper


class Replaced(Ignore):
    """``Task.replace(sig)`` inside a durable task: the workflow runs ``sig`` in the task's place."""

    def __init__(self, sig: Any) -> None:
        super().__init__("Replaced by a durable canvas")
        self.sig = sig


def _run_step(task: Any, header: dict, original: Any, args: tuple, kwargs: dict) -> Any:
    store = Store.for_app(task.app)
    ref = checkpoint.StepRef.from_headers(header, getattr(task.request, LEASE_HEADER, None))
    before = checkpoint.before_run(store, ref)
    if before.verdict is not None:
        logger.info("durable step %s of workflow %s %s: not run again", ref.path, ref.workflow_id, before.verdict)
        if before.verdict == checkpoint.STOPPED:
            raise Ignore()
        return before.value

    def open_transaction() -> psycopg.Connection:
        conn = store.borrow()
        conn.execute("BEGIN")
        return conn

    step = StepContext(ref.workflow_id, ref.path, ref.generation, open_transaction)
    token = _enter(step)
    try:
        try:
            result = original(*args, **kwargs)
        finally:
            _leave(token)
    except Replaced as replaced:
        _rollback(store, step)
        checkpoint.commit_replacement(store, ref, replaced.sig)
        raise Ignore() from None
    except Retry as retry:
        _rollback(store, step)
        # Celery already sent the retry (with our headers); this attempt's message goes.
        checkpoint.release_only(store, ref, retry_when=retry.when)
        raise
    except (Ignore, Reject):
        _rollback(store, step)
        checkpoint.release_only(store, ref)
        raise
    except Exception as exc:
        _rollback(store, step)
        if not checkpoint.record_failure(store, ref, exc, "".join(tb.format_exception(exc))):
            raise Ignore() from None  # another attempt decides this step: this failure is not the step's
        raise
    except BaseException:
        # A shutdown, not a failure: roll back and let the message come back.
        _rollback(store, step)
        raise
    try:
        checkpoint.commit_success(store, step, ref, task, result, before)
    except LeaseLost as exc:
        logger.warning("%s", exc)
        raise Ignore() from None
    except Undecodable as exc:
        # What this task's result starts needs a stored value this worker does not decode: it cannot
        # move the workflow on, so it fails (rolled back) with that error, as if it had raised it.
        if not checkpoint.record_failure(store, ref, exc):
            raise Ignore() from None
        raise
    finally:
        if step._conn is not None:
            store.release(step._conn)
    return result


def _rollback(store: Store, step: StepContext) -> None:
    conn = step._conn
    if conn is None:
        return
    try:
        if not conn.closed:
            conn.execute("ROLLBACK")
    finally:
        store.release(conn)
        step._conn = None


def unknown_task(app: Any, message: Any, name: str | None) -> None:
    """A step this worker cannot run (``task_unknown``) fails its workflow instead of leaving it stalled.

    Celery has already rejected the message (the transport keeps it as a dead letter). Once the
    task is deployed, resuming the workflow sends the step again.
    """
    headers = getattr(message, "headers", None) or {}
    header = headers.get(STEP_HEADER)
    if not header or app is None:
        return
    try:
        # Celery rejected the message under this worker's lease before this signal (the row is a
        # dead letter now), so the lease cannot fence this failure: the checkpoint check still does.
        ref = checkpoint.StepRef.from_headers(header, None)
        checkpoint.record_failure(Store.for_app(app), ref, NotRegistered(name))
    except Exception:  # noqa: BLE001 - a worker must not die of this; the workflow shows as stalled
        logger.exception("could not mark workflow failed after the unknown task %r", name)
    else:
        logger.error("durable step %s of workflow %s: task %r is not registered in this worker; "
                     "the workflow failed at it (resume it once the task is deployed)",
                     ref.path, ref.workflow_id, name)
