"""What the Celery-parity tests share: one schema, one client app and a few worker processes per module.

Starting a ``celery worker`` costs seconds, so a parity module starts its
workers once (module-scoped fixture) and its tests share them; each test uses
its own task ids, queues or workers' names, never another test's leftovers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid

import psycopg
from psycopg import sql

from celery_durable.backend import listener
from celery_durable.db.migrate import ensure_schema
from celery_durable.testing.workers import WorkerProcess, start_worker
from tests.apps.parity_app import make_app
from tests.apps.transport_app import wait_for  # noqa: F401  (re-exported for the parity tests)

APP = "tests.apps.parity_app"


class Parity:
    """A schema, the environment of tests/apps/parity_app.py, a client app, and the workers started on it."""

    def __init__(self, pg_url: str, **env: str) -> None:
        self.url = pg_url
        self.schema = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(pg_url, autocommit=True) as conn:
            ensure_schema(conn, self.schema)  # before any worker: processes creating one schema race
        self.env = {**os.environ, "CELERY_DURABLE_URL": pg_url, "CELERY_DURABLE_SCHEMA": self.schema,
                    "C_FORCE_ROOT": "1", **env}
        self.app = make_app(self.env)
        self.workers: list[WorkerProcess] = []
        self._conn: psycopg.Connection | None = None

    def start(self, name: str, *args: str, env: dict | None = None, **kwargs) -> WorkerProcess:
        """Start ``celery worker -n name@host`` on the parity app; killed at close()."""
        worker = start_worker(APP, "-n", f"{name}@%h", *args, env={**self.env, **(env or {})}, **kwargs)
        self.workers.append(worker)
        return worker

    def celery(self, *args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
        """Run the ``celery`` command line on the parity app, as an operator would."""
        return subprocess.run([sys.executable, "-m", "celery", "-A", APP, *args],
                              env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=timeout)

    def q(self, query: str, *params):
        """Run ``query`` with ``{s}`` standing for the quoted schema; return all rows (one connection, kept)."""
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.url, autocommit=True)
        cur = self._conn.execute(sql.SQL(query).format(s=sql.Identifier(self.schema)), params)
        return cur.fetchall() if cur.description else []

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        self.app.close()
        listener.close_all()
        if self._conn is not None:
            self._conn.close()
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema)))


def node(name: str) -> str:
    """The node name Celery gives ``-n name@%h``."""
    return f"{name}@{socket.gethostname()}"

