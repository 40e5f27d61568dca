"""Issue 12 §1 with Celery's own test pattern: the in-process worker of ``celery.contrib.testing`` (prefork).

The worker runs in a thread of this process, as in Celery's integration suite,
so what the client sees (process-wide flags, log records of the pool children
forwarded by Celery's test worker) is what Celery's own tests see.
"""

from __future__ import annotations

import logging

import pytest
from celery import _state, chain, chord, group
from celery.canvas import StampingVisitor
from celery.contrib.testing.worker import start_worker
from celery.exceptions import TaskRevokedError
from celery.worker import state as worker_state

from tests.support.parity import Parity, wait_for

pytestmark = pytest.mark.slow

TIMEOUT = 30


@pytest.fixture(scope="module")
def p(pg_url):
    parity = Parity(pg_url, CELERY_DURABLE_PREFETCH="4")
    yield parity
    parity.close()


@pytest.fixture(scope="module")
def worker(p):
    # INFO: Celery's strategy and tracer decide once, when the worker starts, whether INFO records are
    # emitted at all; Celery's default for this worker ("error") never logs "received" (on any broker).
    # start_worker makes the app current and default for the whole process: give the old ones back after.
    previous = (_state.default_app, getattr(_state._tls, "current_app", None))
    try:
        with start_worker(p.app, pool="prefork", concurrency=1, loglevel="INFO", perform_ping_check=False,
                          shutdown_timeout=30) as w:
            yield w
    finally:
        _state.set_default_app(previous[0])
        _state._set_current_app(previous[1])


def task(p, name):
    return p.app.tasks[f"parity.{name}"]


def test_a_task_that_expires_behind_busy_ones_ends_revoked(p, worker):
    """Celery's test_expired: sleeping tasks hold the only process while add(1, 1) expires in the queue.

    Six, not Celery's four: one runs and four are prefetched, so add waits in the table, not in the worker.
    """
    for _ in range(6):
        task(p, "sleeping").delay(1)
    result = task(p, "add").apply_async((1, 1), expires=1)
    with pytest.raises(TaskRevokedError):
        result.get(timeout=TIMEOUT)
    assert result.state == "REVOKED"
    assert result.ready() and not result.failed() and not result.successful()


def test_trace_logs_carry_custom_argsrepr_and_kwargsrepr(p, worker, caplog):
    caplog.set_level(logging.INFO)
    result = task(p, "add").s(2, 2).set(argsrepr="CUSTOM ARGS", kwargsrepr="CUSTOM KWARGS").delay()
    assert result.get(timeout=TIMEOUT) == 4

    def records():
        return [(r.name, r.data["args"], r.data["kwargs"]) for r in caplog.records
                if r.name in {"celery.worker.strategy", "celery.app.trace"}
                and getattr(r, "data", {}).get("id") == result.id]

    # The "succeeded" record comes from the pool child after the result is stored: wait for it.
    wait_for(lambda: len(records()) >= 2, 30, "the received and succeeded records")
    assert records() == [("celery.worker.strategy", "CUSTOM ARGS", "CUSTOM KWARGS"),
                         ("celery.app.trace", "CUSTOM ARGS", "CUSTOM KWARGS")]


def test_repeated_control_command_errors_leave_the_client_working(p, worker):
    """Five control commands that raise make Kombu's pidbox reset the worker's mailbox; all still works."""

    def pong():
        # With a destination the call returns as soon as that worker replied.
        return p.app.control.inspect(destination=[worker.hostname], timeout=10).ping() == {worker.hostname: {"ok": "pong"}}

    assert pong()
    for _ in range(5):
        p.app.control.broadcast("parity_control_error", reply=False)
    assert pong()
    assert task(p, "add").delay(4, 4).get(timeout=TIMEOUT) == 8
    assert pong()


def test_revoke_by_stamped_headers_on_a_complex_canvas(p, worker):
    """Celery's test_revoked_by_headers_complex_canvas, shortened; the worker is idle right after."""

    class MonitoringId(StampingVisitor):
        def on_signature(self, sig, **headers) -> dict:
            return {"monitoring_id": "4242", "stamped_headers": ["monitoring_id"]}

    sleeping = task(p, "sleeping")
    stamped = sleeping.si(30)
    stamped.stamp(visitor=MonitoringId())
    stamped_result = stamped.freeze()
    canvases = [
        group([stamped]),
        chord(group([stamped]), sleeping.si(0)),
        chord(group([sleeping.si(0)]), stamped),
        chain(stamped),
        group([sleeping.si(0), stamped, sleeping.si(0)]),
        chain(sleeping.si(0), group([sleeping.si(0), stamped])),
        chain(sleeping.si(0), group([sleeping.si(0), sleeping.si(0)]), stamped),
    ]
    stamped_result.revoke_by_stamped_headers(headers={"monitoring_id": "4242"})
    try:
        for canvas in canvases:
            with pytest.raises(TaskRevokedError):
                canvas.apply_async().get(timeout=TIMEOUT)
            assert stamped_result.state == "REVOKED"
        # Nothing revoked is left running (a 30 s sleep would show): the worker is idle.
        wait_for(lambda: _idle(p, worker), 10, "the worker to report no active task")
    finally:
        worker_state.revoked_stamps.clear()


def _idle(p, worker) -> bool:
    active = p.app.control.inspect(destination=[worker.hostname], timeout=5).active()
    return bool(active) and all(not tasks for tasks in active.values())
