"""Issue 12 §2: the Celery settings users rely on, against real workers on our broker and backend.

One worker with the settings under test serves most of the module; the
start-up and publish settings need a broker that is down, which a closed port
on this machine gives without touching any shared server.
"""

from __future__ import annotations

import json
import os
import signal
import socket

import pytest
from celery import chord, group
from celery.exceptions import WorkerLostError
from kombu.exceptions import OperationalError

from tests.apps.parity_app import make_app
from tests.support.parity import Parity, node, wait_for

pytestmark = pytest.mark.slow

NAME = "settings"
TIMEOUT = 30
PASSWORD = "parity-secret"
WORKER_CONF = {
    "task_track_started": True,
    "task_reject_on_worker_lost": True,
    "result_chord_join_timeout": 0.01,
}


@pytest.fixture(scope="module")
def p(pg_url):
    parity = Parity(pg_url)
    parity.start(NAME, "--without-gossip", "--without-heartbeat", env={"PARITY_CONF": json.dumps(WORKER_CONF)})
    yield parity
    parity.close()


def task(p, name):
    return p.app.tasks[f"parity.{name}"]


def test_task_track_started(p):
    result = task(p, "sleeping").delay(2)
    wait_for(lambda: result.state == "STARTED", 30, "the STARTED state")
    assert result.info["pid"] and result.info["hostname"] == node(NAME)
    assert result.get(timeout=TIMEOUT) == 2


def test_result_extended(p):
    result = task(p, "add").delay(1, 2)
    assert result.get(timeout=TIMEOUT) == 3
    fresh = p.app.AsyncResult(result.id)
    assert (fresh.name, fresh.args, fresh.kwargs, fresh.worker, fresh.queue) == ("parity.add", [1, 2], {}, node(NAME),
                                                                              "celery")
    assert fresh.date_done is not None


def test_result_chord_join_timeout_never_cuts_a_chord_short(p):
    """Celery joins a chord's header within result_chord_join_timeout; our counter fires only when every part
    is stored, so even a nested header (the one case that joins) completes with a tiny timeout."""
    add, identity = task(p, "add"), task(p, "identity")
    result = chord([group(add.s(1, 1), add.s(2, 2)), add.s(3, 3)], identity.s()).delay()
    # Celery flattens the nested group; the order it gives ([4, 2, 6]) is Celery's own, the same on Redis.
    assert sorted(result.get(timeout=TIMEOUT)) == [2, 4, 6]


def _kill_pool_process_running(p, result) -> None:
    def pid():
        for request in (p.app.control.inspect(destination=[node(NAME)], timeout=5).active() or {}).get(node(NAME), []):
            if request["id"] == result.id:
                return request["worker_pid"]
        return None

    os.kill(wait_for(pid, 30, "the task to run"), signal.SIGKILL)


def test_task_reject_on_worker_lost_requeues_the_task(p):
    result = task(p, "late_sleeping").delay(60)
    _kill_pool_process_running(p, result)
    assert result.get(timeout=TIMEOUT) == "redelivered"


def test_without_reject_on_worker_lost_the_task_fails(p):
    result = task(p, "late_sleeping_no_reject").delay(60)
    _kill_pool_process_running(p, result)
    with pytest.raises(WorkerLostError):
        result.get(timeout=TIMEOUT)
    wait_for(lambda: p.q("SELECT count(*) FROM {s}.message WHERE task = 'parity.late_sleeping_no_reject'") == [(0,)],
             30, "the failed task's message to be acked, not redelivered")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _down_env(p) -> dict:
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{_closed_port()}/nowhere"
    conf = {"broker_transport_options": {"schema": p.schema, "connect_timeout": 1}}
    return {**p.env, "CELERY_DURABLE_BROKER": url, "PARITY_CONF": json.dumps(conf)}


def test_task_publish_retry_follows_the_retry_policy(p):
    app = make_app(_down_env(p))
    retries = []
    try:
        with pytest.raises(OperationalError):
            app.tasks["parity.add"].apply_async((1, 1), retry_policy={
                "max_retries": 2, "interval_start": 0, "interval_step": 0.1,
                "errback": lambda exc, interval: retries.append(exc)})
        assert len(retries) >= 2  # Kombu also counts its reconnection attempts
        app.conf.task_publish_retry = False
        with pytest.raises(OperationalError):
            app.tasks["parity.add"].delay(1, 1)
    finally:
        app.close()


def test_broker_connection_retry_on_startup(p):
    env = _down_env(p)
    retrying = p.start("startup_retry", wait=False, env=env)
    wait_for(lambda: "Trying again in" in retrying.log(), 60, "the worker to retry connecting")
    assert PASSWORD not in retrying.log()
    retrying.kill()
    conf = json.loads(env["PARITY_CONF"])
    conf["broker_connection_retry_on_startup"] = False
    giving_up = p.start("startup_no_retry", wait=False, env={**env, "PARITY_CONF": json.dumps(conf)})
    assert giving_up.proc.wait(timeout=60) != 0
    assert "broker_connection_retry_on_startup=False" in giving_up.log(), giving_up.log()[-2000:]


def test_worker_cancel_long_running_tasks_on_connection_loss(pg_cluster):
    """The database goes away under a running acks_late task: Celery terminates it (it could not be acked) and,
    once the database is back, the message comes back after its lease (Redis: after the visibility timeout)."""
    cluster = pg_cluster()
    parity = Parity(cluster.url())
    try:
        conf = {"worker_cancel_long_running_tasks_on_connection_loss": True}
        worker = parity.start("lossy", "--without-gossip", "--without-heartbeat",
                              env={"PARITY_CONF": json.dumps(conf)})
        result = task(parity, "late_sleeping").delay(60)
        wait_for(lambda: result.state == "PENDING" and any(
            r["id"] == result.id for r in (parity.app.control.inspect(timeout=5).active() or {}).get(node("lossy"), [])),
            30, "the task to run")
        cluster.stop("fast")
        wait_for(lambda: "Terminating it instead" in worker.log(), 60, "Celery to terminate the task")
        cluster.start()
        assert result.get(timeout=60) == "redelivered"
    finally:
        parity.close()
