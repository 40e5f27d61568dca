"""Issue 12 §1: behaviours that differed from Celery on Redis, against real ``celery worker`` processes.

One worker serves the whole module (see tests/support/parity.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from celery import group
from celery.exceptions import TaskRevokedError

from tests.support.parity import Parity, node, wait_for

pytestmark = pytest.mark.slow

TIMEOUT = 30


@pytest.fixture(scope="module")
def p(pg_url):
    parity = Parity(pg_url)
    parity.start("behaviours", "--without-gossip", "--without-heartbeat")
    yield parity
    parity.close()


def task(p, name):
    return p.app.tasks[f"parity.{name}"]


def test_an_expired_task_ends_revoked_in_the_backend(p):
    """Celery also stamps `expires` as the message's AMQP expiration; the row must still reach a worker,
    which stores REVOKED (Redis ignores the expiration; RabbitMQ drops the message, the result stays PENDING)."""
    expires = datetime.now(timezone.utc) + timedelta(seconds=1)
    result = task(p, "add").apply_async((1, 1), expires=expires, queue="parity_expiring")
    # Nobody consumes the queue until the message's expiration has passed (by the database's clock).
    wait_for(lambda: p.q("SELECT now() > %s", expires + timedelta(seconds=0.5))[0][0], 30, "the task to expire")
    p.app.control.add_consumer("parity_expiring", destination=[node("behaviours")], reply=True, timeout=30)
    try:
        with pytest.raises(TaskRevokedError):
            result.get(timeout=TIMEOUT)
        assert result.state == "REVOKED"
        wait_for(lambda: p.q("SELECT count(*) FROM {s}.message WHERE queue = 'parity_expiring'") == [(0,)],
                 30, "the expired message to be acked")
    finally:
        p.app.control.cancel_consumer("parity_expiring", destination=[node("behaviours")], reply=True, timeout=30)


def test_an_error_before_a_group_in_a_chain_raises(p):
    add, fail = task(p, "add"), task(p, "fail")
    result = (add.s(1, 1) | fail.s() | group(add.s(1), add.s(1))).delay()
    with pytest.raises(ValueError, match="parity failure"):
        result.get(timeout=TIMEOUT)
    # The worker marks the members one after the other; get() wakes on the first.
    wait_for(lambda: [r.state for r in result.results] == ["FAILURE", "FAILURE"], TIMEOUT,
             "both group members to be marked failed")


def test_repeated_control_command_errors_leave_the_worker_answering(p):
    """Five control commands that raise: Kombu's pidbox resets the worker's mailbox each time."""

    def pong():
        return p.app.control.ping(destination=[node("behaviours")], timeout=10) == [{node("behaviours"): {"ok": "pong"}}]

    assert pong()
    for _ in range(5):
        p.app.control.broadcast("parity_control_error", reply=False)
    wait_for(lambda: p.workers[0].log().count("parity control command error") >= 5, 30, "five control errors")
    assert pong()
    assert task(p, "add").delay(4, 4).get(timeout=TIMEOUT) == 8
    assert pong()
