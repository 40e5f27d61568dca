"""durable_chain with real `celery worker` processes, killed with SIGKILL mid-chain.

Executions are counted in `<schema>.executions` (written at the start of each
step through its own connection, outside the broker and the step's
transaction), so "ran once" and "ran twice" are facts, not inferences.
"""

from __future__ import annotations

import time

import pytest
from celery import Celery, group

import celery_durable
from celery_durable import durable_chain, workflows
from tests.apps import basic

from .conftest import APP, T, sig


def test_chain_runs_like_a_chain(client, db, workers, env):
    workers(APP, env=env)
    wf = durable_chain(sig(client, "start", "a"), sig(client, "step", "b"),
                       group(sig(client, "member", "m1"), sig(client, "member", "m2")),
                       sig(client, "collect", "end"), sig(client, "where")).apply_async()
    workflow_id, index, key = wf.get(timeout=60)
    assert workflow_id == wf.workflow_id and index == 4 and key == f"{wf.workflow_id}:4"
    shown = workflows.get_workflow(client, workflow_id=wf.workflow_id)
    assert shown["status"] == "succeeded"
    assert [c["task"] for c in shown["checkpoints"]][:2] == [T + "start", T + "step"]
    assert db.q("SELECT count(*) FROM {s}.message")[0][0] == 0


def test_killed_mid_step_reruns_that_step_only(client, db, workers, env):
    db.set("block:b", "block")
    first = workers(APP, env=env)
    wf = durable_chain(sig(client, "start", "a"), sig(client, "step", "b"), sig(client, "step", "c")).apply_async()
    db.wait_runs("b")
    first.kill()
    db.set("block:b", None)
    workers(APP, env=env)
    assert wf.get(timeout=60) == ["a", "b", "c"]
    assert (db.runs("a"), db.runs("b"), db.runs("c")) == (1, 2, 1)


def test_killed_after_checkpoint_commit_nothing_reruns(client, db, workers, env):
    # Step c waits on a queue the first worker does not read: once b's checkpoint has
    # committed the worker is killed before anything else happens.
    first = workers(APP, "-Q", "celery", env=env)
    wf = durable_chain(sig(client, "start", "a"), sig(client, "step", "b"),
                       sig(client, "step", "c", queue="later")).apply_async()
    deadline = time.monotonic() + 60
    while not db.q("SELECT 1 FROM {s}.checkpoint WHERE workflow_id = %s AND path = '1'", wf.workflow_id):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first.kill()
    workers(APP, "-Q", "celery,later", env=env)
    assert wf.get(timeout=60) == ["a", "b", "c"]
    assert (db.runs("a"), db.runs("b"), db.runs("c")) == (1, 1, 1)


def test_group_step_reruns_only_unfinished_members(client, db, workers, env):
    db.set("block:m2", "block")
    first = workers(APP, env=env)
    wf = durable_chain(sig(client, "start", "a"),
                       group(sig(client, "member", "m1"), sig(client, "member", "m2")),
                       sig(client, "collect", "end")).apply_async()
    db.wait_runs("m1")
    db.wait_runs("m2")
    deadline = time.monotonic() + 30
    while not db.q("SELECT 1 FROM {s}.checkpoint WHERE workflow_id = %s AND path = '1.0'", wf.workflow_id):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first.kill()
    db.set("block:m2", None)
    workers(APP, env=env)
    assert wf.get(timeout=60) == ["m1", "m2"]
    assert (db.runs("m1"), db.runs("m2"), db.runs("end")) == (1, 2, 1)


def test_step_connection_rows_exist_exactly_once_after_a_kill(client, db, workers, env):
    db.set("block:ledger:k1", "block")
    first = workers(APP, env=env)
    wf = durable_chain(sig(client, "start", "a"), sig(client, "write_ledger", "k1", 42)).apply_async()
    db.wait_runs("ledger:k1")
    first.kill()
    db.set("block:ledger:k1", None)
    workers(APP, env=env)
    out = wf.get(timeout=60)
    assert out["idempotency_key"] == f"{wf.workflow_id}:1"
    assert db.runs("ledger:k1") == 2
    assert db.q("SELECT key, amount FROM {s}.ledger") == [("k1", 42)]


def test_early_ack_task_survives_a_kill(client, db, workers, env):
    """`step` does not set acks_late: the step's message must survive anyway."""
    db.set("block:b", "block")
    first = workers(APP, env=env)
    wf = durable_chain(sig(client, "start", "a"), sig(client, "step", "b")).apply_async()
    db.wait_runs("b")
    first.kill()
    db.set("block:b", None)
    workers(APP, env=env)
    assert wf.get(timeout=60) == ["a", "b"]


def test_failed_step_is_resumed_after_a_fix(client, db, workers, env):
    db.set("fail:b", "fail")
    workers(APP, env=env)
    wf = durable_chain(sig(client, "start", "a"), sig(client, "step", "b"), sig(client, "step", "c")).apply_async()
    with pytest.raises(RuntimeError, match="told to fail"):
        wf.get(timeout=60)
    shown = workflows.get_workflow(client, workflow_id=wf.workflow_id)
    assert shown["status"] == "failed" and shown["current_step"] == 1 and "told to fail" in shown["error"]
    db.set("fail:b", None)
    workflows.resume_workflow(client, wf.workflow_id)
    assert client.AsyncResult(wf.workflow_id).get(timeout=60) == ["a", "b", "c"]
    assert (db.runs("a"), db.runs("b"), db.runs("c")) == (1, 2, 1)


def test_restart_from_a_step_with_new_arguments(client, db, workers, env):
    workers(APP, env=env)
    wf = durable_chain(sig(client, "start", "a"), sig(client, "step", "b"), sig(client, "step", "c")).apply_async()
    assert wf.get(timeout=60) == ["a", "b", "c"]
    workflows.restart_workflow(client, wf.workflow_id, from_step=1, args=["b2"])
    assert client.AsyncResult(wf.workflow_id).get(timeout=60) == ["a", "b2", "c"]
    assert (db.runs("a"), db.runs("b"), db.runs("b2"), db.runs("c")) == (1, 1, 1, 2)


def test_workflow_id_given_twice_runs_once(client, db, workers, env):
    workers(APP, env=env)
    chain = durable_chain(sig(client, "start", "once"), sig(client, "step", "twice?"))
    first = chain.apply_async(workflow_id="order-42")
    second = chain.apply_async(workflow_id="order-42")
    assert first.get(timeout=60) == second.get(timeout=60) == ["once", "twice?"]
    assert db.runs("once") == 1 and db.runs("twice?") == 1


def test_cancel_stops_before_the_next_step(client, db, workers, env):
    db.set("block:b", "block")
    workers(APP, env=env)
    wf = durable_chain(sig(client, "start", "a"), sig(client, "step", "b"), sig(client, "step", "c")).apply_async()
    db.wait_runs("b")
    assert workflows.cancel_workflow(client, wf.workflow_id)
    db.set("block:b", None)
    with pytest.raises(Exception, match="cancelled"):
        wf.get(timeout=60)
    # Not a pause but quiescence: a wrongly sent step c is a message row (sent in b's transaction);
    # once no message is left, c has either run already or can never run.
    deadline = time.monotonic() + 60
    while db.q("SELECT count(*) FROM {s}.message")[0][0]:
        assert time.monotonic() < deadline, "messages left after the cancelled workflow ended"
        time.sleep(0.05)
    assert db.runs("c") == 0
    assert workflows.get_workflow(client, workflow_id=wf.workflow_id)["status"] == "cancelled"


def test_unknown_task_is_a_clear_error(client):
    app = Celery("with_tasks")
    app.conf.update(client.conf)

    @app.task(name="known")
    def known():
        return 1

    with pytest.raises(celery_durable.exceptions.WorkflowError, match="unknown task 'nope'"):
        durable_chain(known.s(), app.signature("nope")).apply_async()


def test_step_the_worker_does_not_know_fails_the_workflow(client, db, workers, env):
    """Celery rejects an unregistered task; its workflow fails at that step instead of stalling."""
    workers(APP, env=env)
    # A module this process never imports: the client cannot tell it from a task deployed elsewhere.
    missing = client.signature("tests.apps.not_deployed.no_such_task", args=("b",))
    wf = durable_chain(sig(client, "start", "a"), missing).apply_async()
    with pytest.raises(Exception, match="no_such_task"):
        wf.get(timeout=60)
    shown = workflows.get_workflow(client, workflow_id=wf.workflow_id)
    assert shown["status"] == "failed" and shown["current_step"] == 1
    assert "NotRegistered" in shown["error"]
    assert db.runs("a") == 1


def test_redis_broker_with_postgres_backend_recovers_a_lost_step(client, db, workers, env, schema):
    import redis

    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping()
    except Exception:
        pytest.skip("no Redis on 127.0.0.1:6379")
    queue = f"durable-{schema}"
    renv = {**env, "CELERY_DURABLE_BROKER": "redis://127.0.0.1:6379/5", "CELERY_DURABLE_RECOVERY_AFTER": "2"}
    rclient = Celery("rclient")
    rclient.conf.update(basic.config(renv))
    db.set("block:b", "block")
    first = workers(APP, "-Q", queue, env=renv)
    wf = durable_chain(sig(rclient, "start", "a"), sig(rclient, "step", "b"),
                       sig(rclient, "step", "c")).apply_async(queue=queue)
    db.wait_runs("b")
    first.kill()  # b's message was acked early by Celery on Redis: it is gone with the worker
    db.set("block:b", None)
    workers(APP, "-Q", queue, env=renv)
    assert wf.get(timeout=90) == ["a", "b", "c"]
    assert db.runs("a") == 1 and db.runs("c") == 1
    assert workflows.get_workflow(rclient, workflow_id=wf.workflow_id)["atomic"] is False
