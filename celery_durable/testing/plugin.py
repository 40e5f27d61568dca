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
