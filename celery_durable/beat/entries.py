"""Change the schedule at run time: add, change, pause, resume, remove, run now, list.

Each call is one transaction on the schedule's table (see :func:`.store.place`);
the active beat sees it at its next tick, without a restart. Entries added
here are ``runtime`` entries: a beat's start never touches them. A ``config``
entry (from ``beat_schedule``) may be changed here too, until the next beat
start writes the code's definition over it again (pause and run history stay).
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ..db import pool
from ..exceptions import EntryNotFound, ScheduleError
from . import schedules, store
from .lease import LEASE_NAME

__all__ = ["add_entry", "beat_lease", "change_entry", "list_entries", "pause_entry", "remove_entry",
           "resume_entry", "run_entry_now", "set_last_run"]

_UNSET: Any = object()


def _connection(app: Any) -> tuple[store.Place, AbstractContextManager[psycopg.Connection]]:
    where = store.place(app)
    return where, pool.connection(where.conninfo, where.settings)


def _catch_up(value: str | None, where: store.Place) -> str:
    value = value or where.settings.beat_catch_up
    if value not in schedules.CATCH_UP:
        raise ScheduleError(f"catch_up must be one of {', '.join(schedules.CATCH_UP)}, got {value!r}")
    return value


def add_entry(app: Any, name: str, task: str, schedule: Any, args: Any = (), kwargs: Any = None,
              options: Any = None, *, catch_up: str | None = None, enabled: bool = True,
              replace: bool = False) -> None:
    """Add a periodic task; ``schedule``: seconds, a timedelta, Celery's schedule/crontab/solar, or its JSON.

    Raises ScheduleError when an entry of that name exists (unless ``replace``) or
    when the schedule or the arguments cannot be stored.
    """
    if not name or not task:
        raise ScheduleError("a periodic task needs a name and a task")
    where, connection = _connection(app)
    params = {"name": name, "task": task, "schedule": store.schedule_json(schedule),
              "catch_up": _catch_up(catch_up, where), "enabled": bool(enabled), "replace": bool(replace),
              **store.encode(app, name, args, kwargs, options)}
    with connection as conn:
        if conn.execute(where.queries["beat_entry_add"], params).fetchone() is None:
            raise ScheduleError(f"periodic task {name!r} exists: change it, or add it with replace=True")


def change_entry(app: Any, name: str, *, task: str | None = None, schedule: Any = _UNSET, args: Any = _UNSET,
                 kwargs: Any = _UNSET, options: Any = _UNSET, catch_up: str | None = None) -> None:
    """Change what is given of an entry (a new schedule counts from now); raises EntryNotFound or ScheduleError."""
    where, connection = _connection(app)
    with connection as conn, conn.transaction():
        row = conn.cursor(row_factory=dict_row).execute(where.queries["beat_entry_get"], {"name": name}).fetchone()
        if row is None:
            raise EntryNotFound(f"no periodic task {name!r}")
        old_args, old_kwargs, old_options = store.decode(app, name, row) if _UNSET in (args, kwargs, options) \
            else (None, None, None)
        encoded = store.encode(app, name, old_args if args is _UNSET else args,
                               old_kwargs if kwargs is _UNSET else kwargs,
                               old_options if options is _UNSET else options)
        conn.execute(where.queries["beat_entry_set"], {
            "name": name, "task": task or row["task"],
            "schedule": json.dumps(row["schedule"]) if schedule is _UNSET else store.schedule_json(schedule),
            "catch_up": _catch_up(catch_up or row["catch_up"], where), "enabled": row["enabled"], **encoded,
        })


def _one(app: Any, query: str, **params: Any) -> tuple:
    where, connection = _connection(app)
    with connection as conn:
        row = conn.execute(where.queries[query], params).fetchone()
    if row is None:
        raise EntryNotFound(f"no periodic task {params['name']!r}")
    return row


def pause_entry(app: Any, name: str) -> None:
    """The active beat sends no run of it from its next tick on (a run-now asked for is still sent)."""
    _one(app, "beat_entry_enable", name=name, enabled=False)


def resume_entry(app: Any, name: str) -> None:
    """Send its runs again, counted from now (runs due while it was paused are not caught up)."""
    _one(app, "beat_entry_enable", name=name, enabled=True)


def remove_entry(app: Any, name: str) -> str:
    """Remove it; returns its origin (a ``config`` entry comes back at the next beat start if the code still has it)."""
    return _one(app, "beat_entry_remove", name=name)[1]


def run_entry_now(app: Any, name: str) -> datetime:
    """Ask the active beat to send one run at its next tick (its schedule is unchanged); returns when asked."""
    return _one(app, "beat_entry_run_now", name=name)[1]


def set_last_run(app: Any, name: str, last_run_at: datetime, total_run_count: int | None = None) -> bool:
    """Carry over another scheduler's last run of ``name`` (the next run counts from it); False when kept as it was.

    It is kept when a beat of ours has already sent a later run.

    Raises EntryNotFound when there is no such entry.
    """
    if last_run_at.tzinfo is None:
        raise ScheduleError(f"periodic task {name!r}: last_run_at needs a time zone, got {last_run_at!r}")
    where, connection = _connection(app)
    with connection as conn:
        moved = conn.execute(where.queries["beat_entry_last_run"], {
            "name": name, "last_run_at": last_run_at, "total_run_count": total_run_count}).fetchone()
        if moved is None and conn.execute(where.queries["beat_entry_get"], {"name": name}).fetchone() is None:
            raise EntryNotFound(f"no periodic task {name!r}")
    return moved is not None


def list_entries(app: Any, name: str | None = None) -> list[dict]:
    """Every entry (or ``name``) with its next and last run, last task id and state, and the lease's holder.

    ``next_run_at`` is computed here with Celery's schedule classes when the
    active beat has not stored it yet; arguments the app does not accept (and
    pickle) show as their type and size, never decoded.
    """
    where, connection = _connection(app)
    with connection as conn:
        cur = conn.cursor(row_factory=dict_row)
        rows = cur.execute(where.queries["beat_entry_list"], {"name": name}).fetchall()
    now = app.now()
    found = []
    for row in rows:
        args, kwargs, options = store.shown(row, app)
        for column in ("content_type", "content_encoding", "args", "kwargs", "options"):
            row.pop(column)
        row.update(args=args, kwargs=kwargs, options=options, schedule_text=schedules.describe(row["schedule"]))
        if row["next_run_at"] is None and row["enabled"] and row["error"] is None:
            try:
                row["next_run_at"] = schedules.next_due(schedules.parse(row["schedule"], app), row["last_run_at"], now)
            except ScheduleError as exc:
                row["error"] = str(exc)
        found.append(row)
    return found


def beat_lease(app: Any) -> dict | None:
    """Who holds the beat lease (holder ``host:pid``, held_since, renewed_at, expires_at, left, takeovers), or None."""
    where, connection = _connection(app)
    with connection as conn:
        cur = conn.cursor(row_factory=dict_row)
        row = cur.execute(where.queries["beat_lease_get"], {"name": LEASE_NAME}).fetchone()
    if row is not None:
        row["left"] = row.pop("left_")
        row["live"] = row["left"].total_seconds() > 0
    return row
