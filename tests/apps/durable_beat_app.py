"""The basic app with its schedule in PostgreSQL (celery_durable.beat:Scheduler) and two periodic tasks.

``every-second`` (an interval) and ``every-minute`` (a crontab) send ``record`` to the queue ``beat_runs``,
which no test worker consumes, so every run's message stays in the table to be counted; both catch up every
missed run. CELERY_DURABLE_BEAT_LEASE sets beat_lease_seconds; CELERY_DURABLE_BEAT_SCHEDULER another scheduler
(the default one, to show what it does). CELERY_DURABLE_BEAT_CRASH names a file: the first beat that publishes
a run while it does not exist writes the run's task id into it and exits at once, after the publish and before
the run's transaction commits; CELERY_DURABLE_BEAT_PAUSE likewise, but the beat stops itself (SIGSTOP) there. CELERY_DURABLE_REDIS_PREFIX: the Redis broker's global_keyprefix.
"""

from __future__ import annotations

import json
import os
import signal

from celery import signals
from celery.schedules import crontab

from .basic import app

SCHEDULER = os.environ.get("CELERY_DURABLE_BEAT_SCHEDULER", "celery_durable.beat:Scheduler")
OURS = SCHEDULER.startswith("celery_durable")

app.conf.beat_scheduler = SCHEDULER
for options in (app.conf.broker_transport_options, app.conf.result_backend_transport_options):
    options["beat_lease_seconds"] = float(os.environ.get("CELERY_DURABLE_BEAT_LEASE", "10"))
if os.environ.get("CELERY_DURABLE_REDIS_PREFIX"):
    app.conf.broker_transport_options["global_keyprefix"] = os.environ["CELERY_DURABLE_REDIS_PREFIX"]
app.conf.beat_max_loop_interval = float(os.environ.get("CELERY_DURABLE_BEAT_LOOP", "0") or 0) or None
app.conf.beat_schedule = {
    "every-second": {"task": "tests.apps.basic.record", "schedule": 1.0, "args": ["beat-second"],
                     "options": {"queue": "beat_runs"}},
    "every-minute": {"task": "tests.apps.basic.record", "schedule": crontab(), "args": ["beat-minute"],
                     "options": {"queue": "beat_runs"}},
}
if OURS:
    for entry in app.conf.beat_schedule.values():
        entry["catch_up"] = "all"

CRASH = os.environ.get("CELERY_DURABLE_BEAT_CRASH")
PAUSE = os.environ.get("CELERY_DURABLE_BEAT_PAUSE")


@signals.after_task_publish.connect
def _crash_after_publish(headers=None, **_):
    """Die (or stop) between the publish and the commit of the run's transaction (once: the marker file says so)."""
    marker = CRASH or PAUSE
    if not marker or not headers or (headers.get("task") or "") != "tests.apps.basic.record":
        return
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return
    os.write(fd, json.dumps({"id": headers.get("id"), "args": headers.get("argsrepr")}).encode())
    os.close(fd)
    if CRASH:
        os._exit(1)
    os.kill(os.getpid(), signal.SIGSTOP)  # paused inside the transaction, holding the lease row's lock
