"""Remote control and events over the postgresql:// transport, across processes (fanout in SQL)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import pytest

from tests.apps.transport_app import Harness, wait_for

pytestmark = pytest.mark.slow


def _celery(h: Harness, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the ``celery`` command line on transport_app, as an operator would."""
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.apps.transport_app", *args],
        env={**h.env, "C_FORCE_ROOT": "1"}, capture_output=True, text=True, timeout=timeout,
    )


def test_inspect_ping_and_control_shutdown(h):
    worker = h.start("-n", "pinged@%h", concurrency=1)
    # With a destination, the command returns as soon as that worker replied.
    ping = _celery(h, "inspect", "ping", "--timeout", "30", "-d", f"pinged@{socket.gethostname()}")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert "pinged@" in ping.stdout and "pong" in ping.stdout, ping.stdout
    # Workers never reply to shutdown (Celery's CLI then says "No nodes replied", as on Redis).
    _celery(h, "control", "shutdown", "--timeout", "1")
    assert worker.proc.wait(timeout=60) == 0, worker.log()[-3000:]
    assert "Got shutdown from remote" in worker.log()


def test_revoked_countdown_task_does_not_run(h):
    h.start(concurrency=1)
    # A broadcast reaches the workers listening when it is sent: wait until this one answers them.
    wait_for(lambda: h.app.control.ping(timeout=1), 60, "the worker to answer broadcasts")
    revoked = h.task("record").apply_async(("revoked",), countdown=3)
    assert h.app.control.revoke(revoked.id, reply=True, limit=1, timeout=10), "no worker confirmed the revoke"
    # Published after the revoke and due later: once it ran, the revoked one's time has passed.
    h.task("record").apply_async(("later",), countdown=4)
    wait_for(lambda: h.executions_of("later") == 1, 60, "the later countdown task to run")
    wait_for(lambda: h.messages() == 0, 30, "the revoked task's message to be acked")
    assert h.executions_of("revoked") == 0


def test_events_reach_a_receiver_in_another_process(h):
    """A worker started with -E; `celery events`' receiver (a real connection, in a thread) sees task-succeeded."""
    seen: list[dict] = []
    errors: list[BaseException] = []

    def on_succeeded(event):
        seen.append(event)

    receiver_holder = {}

    def capture():
        try:
            with h.app.connection_for_read() as conn:
                receiver = h.app.events.Receiver(conn, handlers={"task-succeeded": on_succeeded})
                receiver_holder["r"] = receiver
                receiver.capture(limit=None, timeout=None, wakeup=False)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=capture, daemon=True)
    thread.start()
    # The receiver's queue is bound to the celeryev exchange once it consumes.
    wait_for(lambda: h.one("SELECT count(*) FROM {s}.binding WHERE exchange = 'celeryev'") > 0 or errors,
             30, "the event receiver to bind its queue")
    assert not errors, errors
    h.start("-E", concurrency=1)
    results = [h.task("record").delay(f"ev{i}") for i in range(3)]
    ids = {r.id for r in results}
    try:
        wait_for(lambda: ids <= {e.get("uuid") for e in seen} or errors, 60, "task-succeeded events")
        assert not errors, errors
        assert all(e["hostname"].startswith("celery@") for e in seen if e.get("uuid") in ids)
    finally:
        if "r" in receiver_holder:
            receiver_holder["r"].should_stop = True
        thread.join(timeout=10)
