"""Periodic tasks in PostgreSQL: ``beat_scheduler = "celery_durable.beat:Scheduler"``.

Any number of beats (``celery beat``, ``celery worker --beat``) share one
schedule table; one holds the lease and sends, each due run exactly once when
the broker is the same database. :mod:`.entries` changes the schedule at run
time (the CLI's ``durable schedule`` and the Django admin use it).
"""

from __future__ import annotations

from .scheduler import Scheduler

__all__ = ["Scheduler"]
