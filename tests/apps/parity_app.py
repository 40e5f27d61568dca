"""The app of the Celery-parity tests: Celery's own integration-test tasks, on our broker and backend.

``make_app(env)`` builds the same app (same task names) in workers and in the
test process. Environment: CELERY_DURABLE_URL / CELERY_DURABLE_SCHEMA (database
and schema), CELERY_DURABLE_BROKER / CELERY_DURABLE_BACKEND (override either
side, e.g. redis:// to compare), CELERY_DURABLE_PREFETCH
(worker_prefetch_multiplier), PARITY_STALL (see ``record``), and ``PARITY_CONF``: a JSON object of extra
Celery settings (``{"task_track_started": true}``) for the settings tests.
"""

from __future__ import annotations

import json
import os
import time

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from celery.worker.control import control_command

import celery_durable  # noqa: F401  (registers the postgresql:// broker scheme)
from tests.apps.transport_app import _recorder


def make_app(env: dict | None = None) -> Celery:
    env = os.environ if env is None else env
    url = env.get("CELERY_DURABLE_URL", "")
    schema = env.get("CELERY_DURABLE_SCHEMA", "celery_durable")
    app = Celery("parity")
    app.conf.update(
        broker_url=env.get("CELERY_DURABLE_BROKER", url),
        result_backend=env.get("CELERY_DURABLE_BACKEND", url),
        broker_transport_options={"schema": schema, "polling_interval": 0.5, "lease_seconds": 5},
        result_backend_transport_options={"schema": schema},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_prefetch_multiplier=int(env.get("CELERY_DURABLE_PREFETCH", "4")),
        result_extended=True,
        task_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
    )
    app.conf.update(json.loads(env.get("PARITY_CONF") or "{}"))
    for fn in (add, fail, sleeping, identity, tsum, soft_limited):
        app.task(name=f"parity.{fn.__name__}")(fn)
    app.task(name="parity.record", bind=True, acks_late=True)(record)
    # acks_late; reject_on_worker_lost from the task_reject_on_worker_lost setting, or always off:
    app.task(name="parity.late_sleeping", bind=True, acks_late=True)(late_sleeping)
    app.task(name="parity.late_sleeping_no_reject", bind=True, acks_late=True,
             reject_on_worker_lost=False)(late_sleeping)
    return app


@control_command(visible=False)
def parity_control_error(state, **kwargs):
    """A control command that raises in the worker (Kombu's pidbox then resets the mailbox)."""
    raise RuntimeError("parity control command error")


# Module-level task functions: every app made here registers the same callables.


def add(x, y):
    return x + y


def fail(*args):
    raise ValueError("parity failure")


def sleeping(seconds):
    time.sleep(seconds)
    return seconds


def identity(value):
    return value


def tsum(values):
    return sum(values)


def soft_limited(seconds):
    """Sleeps; answers "soft" when the soft time limit interrupts it."""
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        return "soft"
    return "slept"


def late_sleeping(task, seconds):
    """Sleeps on its first delivery only (a test kills the pool process meanwhile); says which it was."""
    if (task.request.delivery_info or {}).get("redelivered"):
        return "redelivered"
    time.sleep(seconds)
    return "first"


def record(task, tag):
    """Count one execution of ``tag`` in ``<schema>.executions`` (acks late: a killed worker's run comes back).

    A worker started with PARITY_STALL set never finishes one: it holds its prefetched tasks until killed.
    """
    if os.environ.get("PARITY_STALL"):
        time.sleep(3600)
    redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
    _recorder().record(tag, redelivered)
    return tag


app = make_app()
