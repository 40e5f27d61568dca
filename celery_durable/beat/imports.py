"""Bring entries and last run times over from another scheduler: Celery's default (shelve), RedBeat, django-celery-beat.

Each import adds what the table lacks as a runtime entry (paused if it was
disabled there) and carries the last run time over (:func:`.entries.set_last_run`:
the next run counts from it, as after a restart of the old scheduler), for
entries of the app's ``beat_schedule`` too. What cannot be stored here (a
schedule class of that scheduler's own, a one-off clocked task) is reported
with why, and nothing else of it is changed. Each returns one dict per entry:
``name``, ``action``, ``last_run_at``, ``error``.

The shelve file holds pickles: it is read only when an operator names it.
"""

from __future__ import annotations

import json
import shelve
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from celery.utils.time import maybe_make_aware

from ..exceptions import DurableError, ScheduleError
from . import entries

__all__ = ["import_django_celery_beat", "import_redbeat", "import_shelve"]


def _carry(app: Any, existing: set[str], name: str, make: Any, enabled: bool, last_run_at: datetime | None,
           total: int | None) -> dict:
    """Add ``name`` when missing (``make()`` gives task, schedule, args, kwargs, options) and carry its last run."""
    last = maybe_make_aware(last_run_at, app.timezone) if last_run_at else None
    try:
        if name in existing:
            action = "kept"
        else:
            task, schedule, args, kwargs, options = make()
            entries.add_entry(app, name, task, schedule, args, kwargs, options, enabled=enabled)
            existing.add(name)
            action = "added" if enabled else "added, paused"
        if last is not None and entries.set_last_run(app, name, last, total):
            action += ", last run carried over"
        return {"name": name, "action": action, "last_run_at": last, "error": None}
    except DurableError as exc:
        return {"name": name, "action": "not imported", "last_run_at": last, "error": str(exc)}


def _existing(app: Any) -> set[str]:
    return {row["name"] for row in entries.list_entries(app)}


def import_shelve(app: Any, path: str) -> list[dict]:
    """Import the entries of a ``celery beat`` schedule file (``celerybeat-schedule``) and their last runs."""
    with shelve.open(path, flag="r") as store:
        found = dict(store.get("entries") or {})
    existing = _existing(app)
    return [_carry(app, existing, name, lambda e=entry: (e.task, e.schedule, e.args, e.kwargs, e.options), True,
                   entry.last_run_at, entry.total_run_count)
            for name, entry in sorted(found.items())]


def import_redbeat(app: Any, redis_url: str, key_prefix: str = "redbeat:") -> list[dict]:
    """Import RedBeat's entries (read with RedBeat's own decoder: ``pip install celery-redbeat``) and last runs."""
    try:
        from celery import Celery
        from redbeat.schedulers import RedBeatSchedulerEntry, get_redis
    except ImportError:
        raise ScheduleError("importing from RedBeat needs celery-redbeat: pip install celery-redbeat") from None
    reader = Celery("celery_durable_import", set_as_current=False)
    reader.conf.update(redbeat_redis_url=redis_url, redbeat_key_prefix=key_prefix, timezone=app.conf.timezone,
                       enable_utc=app.conf.enable_utc)
    keys = [k.decode() if isinstance(k, bytes) else k
            for k in get_redis(reader).zrange(reader.redbeat_conf.schedule_key, 0, -1)]
    existing = _existing(app)
    done = []
    for key in sorted(keys):
        try:
            entry = RedBeatSchedulerEntry.from_key(key, app=reader)
        except KeyError:
            continue  # removed meanwhile
        done.append(_carry(app, existing, entry.name,
                           lambda e=entry: (e.task, e.schedule, e.args, e.kwargs, e.options),
                           bool(entry.enabled), entry.last_run_at, entry.total_run_count))
    return done


def import_django_celery_beat(app: Any, tasks: Iterable[Any] | None = None) -> list[dict]:
    """Import django-celery-beat's periodic tasks (in a Django process) and their last runs.

    ``tasks``: the ``PeriodicTask`` rows to import (default: all). Interval,
    crontab (with its time zone) and solar schedules carry over; clocked
    (one-off) tasks are reported, not imported.
    """
    if tasks is None:
        from django_celery_beat.models import PeriodicTask

        tasks = PeriodicTask.objects.select_related("interval", "crontab", "solar", "clocked").order_by("name")
    existing = _existing(app)
    return [_carry(app, existing, task.name, lambda t=task: _django_entry(t), bool(task.enabled), task.last_run_at,
                   task.total_run_count)
            for task in tasks]


def _django_entry(task: Any) -> tuple:
    if task.one_off or task.clocked_id:
        raise ScheduleError("one-off (clocked) tasks are not supported: add it again as you need it")
    if task.interval_id:
        schedule: Any = timedelta(**{task.interval.period: task.interval.every}).total_seconds()
    elif task.crontab_id:
        c = task.crontab
        zone = str(c.timezone) if c.timezone else None
        schedule = {"type": "crontab", "minute": c.minute, "hour": c.hour, "day_of_week": c.day_of_week,
                    "day_of_month": c.day_of_month, "month_of_year": c.month_of_year,
                    "timezone": None if zone in (None, "UTC") else zone}
    elif task.solar_id:
        schedule = {"type": "solar", "event": task.solar.event, "lat": float(task.solar.latitude),
                    "lon": float(task.solar.longitude)}
    else:
        raise ScheduleError("it has no schedule")
    options = {key: getattr(task, key) for key in ("queue", "exchange", "routing_key", "priority")
               if getattr(task, key, None) not in (None, "")}
    if task.expires:
        options["expires"] = task.expires.isoformat()
    elif getattr(task, "expire_seconds", None):
        options["expires"] = task.expire_seconds
    headers = json.loads(task.headers or "{}")
    if headers:
        options["headers"] = headers
    return task.task, schedule, json.loads(task.args or "[]"), json.loads(task.kwargs or "{}"), options
