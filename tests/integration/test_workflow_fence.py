"""The pipelined commit's guard in SQL says what its Python twin says, against a real PostgreSQL.

``step_commit`` cannot call :func:`celery_durable.workflow.fence.standing`; its
``state`` check restates it. Each case sets the workflow's status and generation,
runs ``step_commit`` for a task of generation 1 (no lease, no group: only that
check can abort it) and rolls back; it must go through exactly where the
fence says GO for a commit.
"""

from __future__ import annotations

import itertools

import psycopg
import pytest
from psycopg import sql

from celery_durable.db import fetch, migrate
from celery_durable.db.queries import load
from celery_durable.workflow.checkpoint import StepRef
from celery_durable.workflow.fence import Act, Verdict, standing
from celery_durable.workflow.records import LockedWorkflow

GENERATION = 1


@pytest.fixture
def db(pg_url, schema):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        migrate.ensure_schema(conn, schema)
        yield conn


def _commits(db, queries: dict[str, str], step: StepRef) -> bool:
    """Whether step_commit goes through for ``step`` (rolled back either way)."""
    try:
        with db.transaction():
            db.execute(queries["step_commit"], {
                "id": step.workflow_id, "path": step.path, "task_id": "t", "task_name": "t",
                "content_type": "application/json", "result": b"1", "attempts": 1,
                "generation": step.generation, "side": step.side, "lease_id": None, "lease_token": None,
                "watched": False, "group": None, "part": None, "step": None, "end": False,
            })
            raise psycopg.Rollback()
    except psycopg.errors.RaiseException as exc:
        assert "not running this generation" in str(exc)
        return False
    return True


@pytest.mark.parametrize(("status", "same_generation", "side"),
                         list(itertools.product(("running", "succeeded", "failed", "cancelled"),
                                                (True, False), (True, False))))
def test_the_sql_guard_agrees_with_the_fence(db, schema, status, same_generation, side):
    queries = load("celery_durable.workflow", "queries.sql", schema)
    db.execute(queries["workflow_insert"], {"id": "wf", "name": "w", "result_task_id": "wf", "atomic": True})
    db.execute(sql.SQL("UPDATE {}.workflow SET status = %s, generation = %s WHERE id = 'wf'")
               .format(sql.Identifier(schema)), (status, GENERATION if same_generation else GENERATION + 1))
    locked = fetch.execute_as(db, LockedWorkflow, queries["workflow_lock"], {"id": "wf"}).fetchone()
    step = StepRef("wf", "0~0" if side else "0", GENERATION, None)
    assert _commits(db, queries, step) == (standing(locked, step, Act.COMMIT) is Verdict.GO)
