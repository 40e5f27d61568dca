"""Pytest plugin: a PostgreSQL URL for the test session.

``pg_url`` is ``CELERY_DURABLE_TEST_DSN`` when set, otherwise a fresh
database on the embedded server started once per session. Users get it in
their own test suites by installing celery-durable (the plugin is
registered through the ``pytest11`` entry point).
"""

from __future__ import annotations

import os
import uuid

import pytest


@pytest.fixture(scope="session")
def pg_url() -> str:
    """URL of a database for this test session (real PostgreSQL, never a mock)."""
    dsn = os.environ.get("CELERY_DURABLE_TEST_DSN")
    if dsn:
        return dsn
    from . import embedded

    server = embedded.start()
    return embedded.create_database(server, f"cd_test_{uuid.uuid4().hex[:8]}")


@pytest.fixture
def celery_durable_worker():
    """Start real ``celery worker`` subprocesses: ``celery_durable_worker("proj", "-Q", "q", env={...})``.

    Each returns a WorkerProcess (``kill()`` is SIGKILL, ``stop()`` a warm
    shutdown); all are killed at the end of the test.
    """
    from .workers import start_worker

    started = []

    def start(app: str, *args: str, **kwargs):
        proc = start_worker(app, *args, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
