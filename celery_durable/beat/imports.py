"""Bring entries and last run times over from Celery's default scheduler (its shelve file).

The shelve holds pickled ``ScheduleEntry`` objects: it is read only when an
operator names the file (``celery durable schedule import-shelve PATH``), never
by a beat. An entry whose name is in the table gets its last run time (if later
than ours); one that is not is added as a runtime entry with it.
"""

from __future__ import annotations

import shelve
from typing import Any

from celery.utils.time import maybe_make_aware

from ..exceptions import ScheduleError
from . import entries


def import_shelve(app: Any, path: str) -> list[dict]:
    """Import the entries of a ``celery beat`` schedule file; one dict per entry: name, action, error."""
    done = []
    with shelve.open(path, flag="r") as store:
        found = dict(store.get("entries") or {})
    existing = {row["name"] for row in entries.list_entries(app)}
    for name, entry in sorted(found.items()):
        last = maybe_make_aware(entry.last_run_at, app.timezone) if entry.last_run_at else None
        try:
            if name not in existing:
                entries.add_entry(app, name, entry.task, entry.schedule, entry.args, entry.kwargs, entry.options)
                action = "added"
            else:
                action = "kept"
            if last is not None and entries.set_last_run(app, name, last, entry.total_run_count):
                action += ", last run carried over"
            done.append({"name": name, "action": action, "last_run_at": last, "error": None})
        except ScheduleError as exc:
            done.append({"name": name, "action": "not imported", "last_run_at": last, "error": str(exc)})
    return done
