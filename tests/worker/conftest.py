"""Fixtures of the transport worker tests."""

from __future__ import annotations

import pytest

from tests.apps.transport_app import Harness


@pytest.fixture
def h(pg_url, schema, worker_env, workers):
    """A Harness for tests/apps/transport_app.py: tasks by name, executions, waiting helpers."""
    harness = Harness(pg_url, schema, worker_env, workers)
    yield harness
    harness.close()
