"""Resume re-sends only the steps with no live attempt: never a second copy of a running step.

Operators resume workflows from the CLI, the Python API or the Django admin
(whose "stalled" filter also lists workflows whose step simply runs long). A
step has a live attempt while its message exists for the workflow's current
generation: queued, waiting for its countdown, or held by a worker (atomic
mode), or, behind another broker, while its ``sent_step`` row shows a sign of
life within ``recovery_after``. Such a step is left alone; a step whose
message is gone (its worker killed with it, purged) is sent again, once, even
when two operators resume at the same moment.
"""

from __future__ import annotations

import threading

import psycopg
import pytest
from celery import Celery
from psycopg import sql

from celery_durable import durable_chain, workflows
from celery_durable.headers import STEP_HEADER
from tests.apps import basic

from .conftest import APP, sig, wait_for

REDIS = "redis://127.0.0.1:6379/5"


def step_messages(db, workflow_id: str, path: str) -> int:
    """Messages of a workflow's task in the message table (queued, delayed or held by a worker)."""
    return db.q("SELECT count(*) FROM {s}.message WHERE payload::jsonb -> 'headers' -> %s ->> 'workflow_id' = %s"
                " AND payload::jsonb -> 'headers' -> %s ->> 'path' = %s", STEP_HEADER, workflow_id, STEP_HEADER,
                path)[0][0]


def test_resume_leaves_a_running_step_alone(client, db, workers, env):
    db.set("block:b", "block")
    workers(APP, env=env)  # two pool processes: a second copy of b would start beside the first at once
    wf = durable_chain(sig(client, "start", "a"), sig(client, "step", "b"), sig(client, "step", "c")).apply_async()
    db.wait_runs("b")
    assert workflows.resume_workflow(client, wf.workflow_id) == [], "resume sent a step that is running"
    assert step_messages(db, wf.workflow_id, "1") == 1  # the running attempt's own
    db.set("block:b", None)
    assert wf.get(timeout=60) == ["a", "b", "c"]
    assert (db.runs("a"), db.runs("b"), db.runs("c")) == (1, 1, 1)


def test_two_resumes_at_once_send_a_lost_step_once(client, db, workers, env, pg_url, schema):
    """The step's worker was SIGKILLed and its message is gone (purged): it is sent again, by one resume."""
    db.set("block:b", "block")
    first = workers(APP, env=env)
    wf = durable_chain(sig(client, "start", "a"), sig(client, "step", "b"), sig(client, "step", "c")).apply_async()
    db.wait_runs("b")
    first.kill()
    db.q("DELETE FROM {s}.message")  # nothing would ever run b again by itself
    db.set("block:b", None)
    sent: list[list[str]] = []
    with psycopg.connect(pg_url) as holder:  # both resumes wait on the workflow's row, then go together
        holder.execute(sql.SQL("SELECT 1 FROM {}.workflow WHERE id = %s FOR UPDATE").format(sql.Identifier(schema)),
                       (wf.workflow_id,))
        operators = [threading.Thread(target=lambda: sent.append(workflows.resume_workflow(client, wf.workflow_id)))
                     for _ in range(2)]
        for operator in operators:
            operator.start()
        # One waits on the row, the other on the workflow's fence, which the first holds (workflow_fence).
        wait_for(lambda: db.q("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                              " AND (query LIKE %s OR query LIKE %s)", "%workflow%FOR UPDATE%",
                              "%pg_advisory_xact_lock(hashtextextended(%")[0][0] == 2,
                 what="both resumes to wait on the workflow's row")
        holder.commit()
    for operator in operators:
        operator.join(60)
    assert sorted(len(ids) for ids in sent) == [0, 1], f"resumes sent {sent}"
    assert step_messages(db, wf.workflow_id, "1") == 1
    workers(APP, env=env)
    assert wf.get(timeout=60) == ["a", "b", "c"]
    assert (db.runs("a"), db.runs("b"), db.runs("c")) == (1, 2, 1)  # the killed attempt and the resumed one


@pytest.fixture
def redis_env(env):
    import redis

    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping()
    except Exception:
        pytest.fail("the Redis on 127.0.0.1:6379 these tests need does not answer")
    return {**env, "CELERY_DURABLE_BROKER": REDIS, "CELERY_DURABLE_RECOVERY_AFTER": "6"}


def test_resume_behind_redis_leaves_a_running_step_alone_and_resends_it_once_its_worker_died(
        client, db, workers, redis_env, schema):
    """The pulse keeps a running step alive; killed (its early-acked message dies with it), it is sent again."""
    queue = f"durable-{schema}"
    rclient = Celery("redis-client")
    rclient.conf.update(basic.config(redis_env))
    db.set("block:b", "block")
    first = workers(APP, "-Q", queue, env=redis_env)
    wf = durable_chain(sig(rclient, "start", "a"), sig(rclient, "step", "b"),
                       sig(rclient, "step", "c")).apply_async(queue=queue)
    db.wait_runs("b")
    assert workflows.resume_workflow(rclient, wf.workflow_id) == [], "resume sent a step that is running"
    first.kill()
    # No sign of life from b for recovery_after: its message is lost.
    wait_for(lambda: db.q("SELECT 1 FROM {s}.sent_step WHERE workflow_id = %s AND path = '1'"
                          " AND seen_at < now() - interval '6 seconds'", wf.workflow_id),
             what="b's last sign of life to age past recovery_after")
    db.set("block:b", None)
    assert len(workflows.resume_workflow(rclient, wf.workflow_id)) == 1
    workers(APP, "-Q", queue, env=redis_env)
    assert wf.get(timeout=60) == ["a", "b", "c"]
    assert (db.runs("a"), db.runs("b"), db.runs("c")) == (1, 2, 1)


def test_resume_behind_redis_resends_a_failed_step_at_once(client, db, workers, redis_env, schema):
    """Guard: a step that failed for good has no live attempt, however recent its last sign of life."""
    queue = f"durable-{schema}"
    rclient = Celery("redis-client")
    rclient.conf.update(basic.config(redis_env))
    db.set("fail:b", "fail")
    workers(APP, "-Q", queue, env=redis_env)
    wf = durable_chain(sig(rclient, "start", "a"), sig(rclient, "step", "b"),
                       sig(rclient, "step", "c")).apply_async(queue=queue)
    with pytest.raises(RuntimeError, match="told to fail"):
        wf.get(timeout=60)
    db.set("fail:b", None)
    assert len(workflows.resume_workflow(rclient, wf.workflow_id)) == 1
    assert rclient.AsyncResult(wf.workflow_id).get(timeout=60) == ["a", "b", "c"]
    assert (db.runs("a"), db.runs("b"), db.runs("c")) == (1, 2, 1)
