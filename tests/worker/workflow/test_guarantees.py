"""Only the attempt that holds a durable step decides it; nothing strands or duplicates a step.

Lost leases, sweeps behind Redis/RabbitMQ, `celery purge`, retries, time
limits, retention: each with real workers and real brokers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from celery import Celery, group

from celery_durable import durable, durable_chain, workflows
from celery_durable.headers import STEP_HEADER
from tests.apps import basic

from .conftest import APP, T, sig, wait_for

REDIS = "redis://127.0.0.1:6379/5"
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"


def _client(env: dict) -> Celery:
    app = Celery("other-broker-client")
    app.conf.update(basic.config(env))
    return app


def test_only_the_attempt_holding_a_step_decides_it(client, db, workers, env):
    """Four steps lose their lease mid-run and a second attempt of each runs elsewhere.

    The first attempts then raise after the second committed, raise before it,
    or return before it (LeaseLost; as a group member and as a task step, whose
    commit is pipelined): none of them decides its step, both workflows complete
    with the second attempts' results, and the rows the lease-lost attempts
    wrote through `current_step().connection` are gone.
    """
    first = workers(APP, concurrency=4, env=env)
    fan = durable_chain(sig(client, "start", "a"),
                        group(sig(client, "contested", "b1", "raise_late"),
                              sig(client, "contested", "b2", "raise_early"),
                              sig(client, "contested", "b3", "return")),
                        sig(client, "collect", "end")).apply_async()
    line = durable_chain(sig(client, "start", "x"), sig(client, "contested", "b4", "return")).apply_async()
    for tag in ("b1", "b2", "b3", "b4"):
        db.wait_runs(tag)
    # The worker's main process renews leases; stopped, it lets them expire while its pool runs on.
    os.kill(first.pid, signal.SIGSTOP)
    workers(APP, concurrency=4, env=env)
    assert fan.get(timeout=90) == ["b1:2", "b2:2", "b3:2"]
    assert line.get(timeout=90) == "b4:2"
    assert db.q("SELECT key, amount FROM {s}.ledger ORDER BY key") == [("b3", 2), ("b4", 2)]
    assert db.runs("end") == 1


@pytest.fixture
def redis_env(env, schema):
    import redis

    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping()
    except Exception:
        pytest.fail("the Redis on 127.0.0.1:6379 these tests need does not answer")
    return {**env, "CELERY_DURABLE_BROKER": REDIS, "CELERY_DURABLE_RECOVERY_AFTER": "1"}


def test_sweep_leaves_long_running_and_delayed_steps_alone(client, db, workers, redis_env, schema):
    """Behind Redis with recovery_after = 1 s: a step running 4 s and one waiting on a 3 s countdown run once."""
    queue = f"durable-{schema}"
    rclient = _client(redis_env)
    workers(APP, "-Q", queue, env=redis_env)
    running = durable_chain(sig(rclient, "start", "a"), sig(rclient, "slow", "b", 4)).apply_async(queue=queue)
    delayed = durable_chain(sig(rclient, "start", "c"),
                            sig(rclient, "slow", "d", 2, countdown=3)).apply_async(queue=queue)
    assert running.get(timeout=60) == ["a", "b"]
    assert delayed.get(timeout=60) == ["c", "d"]
    assert (db.runs("b"), db.runs("d")) == (1, 1)


def test_redis_purge_does_not_strand_a_workflow(client, db, workers, redis_env, schema):
    """`celery purge` empties Redis, durable step included: the sweep sends the step again."""
    queue, later = f"durable-{schema}", f"later-{schema}"
    rclient = _client(redis_env)
    workers(APP, "-Q", queue, env=redis_env)
    wf = durable_chain(sig(rclient, "start", "a"), sig(rclient, "step", "b", queue=later)).apply_async(queue=queue)
    with rclient.connection_for_write() as conn:
        wait_for(lambda: conn.default_channel.client.llen(later) > 0, what="step b in Redis")
    _purge(redis_env, later)
    # No worker reads `later` yet: the sweep may send b more than once meanwhile (a copy that
    # finds b checkpointed does not run it), so only completion is asserted here.
    workers(APP, "-Q", later, env=redis_env)
    assert wf.get(timeout=60) == ["a", "b"]


def _purge(env: dict, queue: str) -> str:
    done = subprocess.run([sys.executable, "-m", "celery", "-A", APP, "purge", "-f", "-Q", queue],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_purge_leaves_durable_steps_alone(client, db, workers, env, worker_env):
    """Our broker: `celery purge` removes ordinary messages; a waiting durable step stays and runs."""
    workers(APP, "-Q", "celery", env=env)
    wf = durable_chain(sig(client, "start", "a"), sig(client, "step", "b", queue="later")).apply_async()
    wait_for(lambda: db.q("SELECT 1 FROM {s}.message WHERE queue = 'later'"), what="step b queued")
    client.send_task(T + "step", args=(None, "junk"), queue="later")
    out = _purge(worker_env, "later")
    assert "Purged 1 message" in out, out
    workers(APP, "-Q", "later", env=env)
    assert wf.get(timeout=60) == ["a", "b"]
    assert (db.runs("b"), db.runs("junk")) == (1, 0)


def test_retried_step_checkpoints_once(client, db, workers, env):
    """A step that fails twice and succeeds on its third try: the chain goes on; the checkpoint counts 3 attempts."""
    workers(APP, env=env)
    wf = durable_chain(sig(client, "start", "a"), sig(client, "flaky", "b", 2), sig(client, "step", "c")).apply_async()
    assert wf.get(timeout=60) == ["a", "b", "c"]
    assert (db.runs("b"), db.runs("c")) == (3, 1)
    marks = workflows.get_workflow(client, workflow_id=wf.workflow_id)["checkpoints"]
    assert [m["attempts"] for m in marks] == [1, 3, 1]


def test_step_over_its_time_limit_fails_the_workflow(client, db, workers, env):
    """Soft limit: the task sees SoftTimeLimitExceeded. Hard limit: its pool process is killed. Either fails the workflow, once."""
    workers(APP, env=env)
    soft = durable_chain(sig(client, "start", "a"), sig(client, "limited", "soft", 30, soft_time_limit=1),
                         sig(client, "step", "after-soft")).apply_async()
    hard = durable_chain(sig(client, "start", "b"), sig(client, "limited", "hard", 30, time_limit=1),
                         sig(client, "step", "after-hard")).apply_async()
    with pytest.raises(Exception, match="SoftTimeLimitExceeded|TimeLimitExceeded"):
        soft.get(timeout=60)
    with pytest.raises(Exception, match="TimeLimitExceeded"):
        hard.get(timeout=60)
    for wf, tag in ((soft, "soft"), (hard, "hard")):
        shown = workflows.get_workflow(client, workflow_id=wf.workflow_id)
        assert shown["status"] == "failed" and shown["current_step"] == 1, shown
        assert "TimeLimitExceeded" in shown["error"]
        assert db.runs(tag) == 1
    assert (db.runs("after-soft"), db.runs("after-hard")) == (0, 0)


def test_ignore_result_false_stores_the_step_result_too(client, db, workers, env):
    workers(APP, env=env)
    wf = durable_chain(sig(client, "start", "a"), sig(client, "step", "b", ignore_result=False)).apply_async()
    assert wf.get(timeout=60) == ["a", "b"]
    first, second = workflows.get_workflow(client, workflow_id=wf.workflow_id)["checkpoints"]
    assert client.AsyncResult(second["task_id"]).get(timeout=30) == ["a", "b"]
    assert client.AsyncResult(first["task_id"]).state == "PENDING"  # the default: only the checkpoint


def test_rabbitmq_broker_recovers_a_step_lost_with_its_worker(client, db, workers, env, schema):
    queue = f"durable-{schema}"
    renv = {**env, "CELERY_DURABLE_BROKER": RABBITMQ, "CELERY_DURABLE_RECOVERY_AFTER": "2"}
    rclient = _client(renv)
    db.set("block:b", "block")
    first = workers(APP, "-Q", queue, env=renv)
    try:
        wf = durable_chain(sig(rclient, "start", "a"), sig(rclient, "step", "b"),
                           sig(rclient, "step", "c")).apply_async(queue=queue)
        db.wait_runs("b")
        first.kill()  # b was acked early: RabbitMQ forgot it with the worker
        db.set("block:b", None)
        workers(APP, "-Q", queue, env=renv)
        assert wf.get(timeout=90) == ["a", "b", "c"]
        assert (db.runs("a"), db.runs("b"), db.runs("c")) == (1, 2, 1)
        assert workflows.get_workflow(rclient, workflow_id=wf.workflow_id)["atomic"] is False
    finally:
        with rclient.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)


def test_finished_workflows_expire_after_the_retention(client, db, workers, env):
    db.set("block:b", "block")
    workers(APP, env={**env, "CELERY_DURABLE_WORKFLOW_RETENTION": "1", "CELERY_DURABLE_RECOVERY_AFTER": "2"})
    done = durable_chain(sig(client, "start", "a")).apply_async()
    assert done.get(timeout=60) == ["a"]
    running = durable_chain(sig(client, "start", "x"), sig(client, "step", "b")).apply_async()
    db.wait_runs("b")
    wait_for(lambda: not db.q("SELECT 1 FROM {s}.workflow WHERE id = %s", done.workflow_id), what="expiry")
    assert db.q("SELECT count(*) FROM {s}.checkpoint WHERE workflow_id = %s", done.workflow_id) == [(0,)]
    assert workflows.get_workflow(client, workflow_id=running.workflow_id)["status"] == "running"
    db.set("block:b", None)
    assert running.get(timeout=60) == ["x", "b"]


def test_step_message_of_an_older_version_still_runs(client, db, workers, env):
    """In-flight messages sent before the step header was spelled out (`w/s/m/g`) keep working."""
    wf = durable_chain(sig(client, "start", "a", queue="parked"), sig(client, "step", "b")).apply_async()
    db.q("DELETE FROM {s}.message WHERE queue = 'parked'")
    client.send_task(T + "start", args=("a",), headers={STEP_HEADER: {"w": wf.workflow_id, "s": 0, "m": -1, "g": 0}})
    workers(APP, env=env)
    assert wf.get(timeout=60) == ["a", "b"]


def test_redis_broker_chord_member_lost_with_its_worker(client, db, workers, redis_env, schema):
    """Behind Redis, a chord member acked early dies with its worker: the sweep re-sends that member only."""
    from celery import chord

    queue = f"durable-{schema}"
    rclient = _client(redis_env)
    db.set("block:k2", "block")
    first = workers(APP, "-Q", queue, concurrency=4, env=redis_env)
    members = [sig(rclient, "write_once", f"k{i}") for i in range(4)]
    wf = durable(chord(members, sig(rclient, "collect", "body"))).apply_async(queue=queue)
    db.wait_runs("k2")
    wait_for(lambda: db.q("SELECT count(*) FROM {s}.checkpoint WHERE workflow_id = %s", wf.workflow_id) == [(3,)],
             what="the other members' checkpoints")
    first.kill()
    db.set("block:k2", None)
    workers(APP, "-Q", queue, env=redis_env)
    assert wf.get(timeout=60) == [["k0"], ["k1"], ["k2"], ["k3"]]
    assert (db.runs("k0"), db.runs("k1"), db.runs("k2"), db.runs("k3"), db.runs("body")) == (1, 1, 2, 1, 1)
    assert db.q("SELECT key, count(*) FROM {s}.ledger GROUP BY key ORDER BY key") == [(f"k{i}", 1) for i in range(4)]


def test_redis_broker_link_lost_after_the_workflow_succeeded(client, db, workers, redis_env, schema):
    """A link callback still due when its workflow has succeeded is re-sent by the sweep if its worker dies."""
    queue = f"durable-{schema}"
    rclient = _client(redis_env)
    db.set("block:cb", "block")
    first = workers(APP, "-Q", queue, env=redis_env)
    linked = sig(rclient, "start", "a", link=rclient.signature(T + "callback", args=("cb",)))
    wf = durable_chain(linked).apply_async(queue=queue)
    assert wf.get(timeout=60) == ["a"]
    db.wait_runs("cb")
    first.kill()
    db.set("block:cb", None)
    workers(APP, "-Q", queue, env=redis_env)
    wait_for(lambda: db.q("SELECT 1 FROM {s}.checkpoint WHERE workflow_id = %s AND path = '0~0'", wf.workflow_id),
             what="the link's checkpoint")
    assert db.runs("cb") == 2 and db.q("SELECT key, count(*) FROM {s}.ledger GROUP BY key") == [("cb", 1)]
