"""The ``celery durable`` / ``celery-durable`` command line: schema, queues, dead letters, workflows, schedule.

Two ways in, one set of commands:

- ``celery -A proj durable queues``: Celery loads this group through the
  ``celery.commands`` entry point; the database, schema and options come from
  the app's broker (or, when the broker is not PostgreSQL, its result backend).
- ``celery-durable queues --url postgresql://user@host/db``: standalone; the URL
  may come from ``CELERY_DURABLE_URL`` and the schema from ``CELERY_DURABLE_SCHEMA``.

A ``--url``/``--schema`` typed on the command line beats the app; the app
beats the environment. Every command prints an aligned table, or JSON with
``--json``. Errors are one line naming ``user@host:port/database`` (never the
password) and exit with status 1 (``doctor`` exits with status 2 when a finding
is critical); nothing but ``migrate`` changes the schema.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import dead_letters, doctor, metrics, migrate_from, schedule, schema, workflows  # noqa: F401  (they register their commands)
from .group import durable
from .target import conninfo_to_url

__all__ = ["conninfo_to_url", "durable", "main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Console script ``celery-durable``."""
    durable.main(args=list(argv) if argv is not None else None, prog_name="celery-durable")
