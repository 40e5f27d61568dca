"""Shared fixtures: a real PostgreSQL, a fresh schema per test, real `celery worker` processes."""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest

from celery_durable.testing.workers import WorkerProcess
from tests.support.pgbouncer import pgbouncer  # noqa: F401  (fixture)
from tests.support.pgcluster import pg_cluster  # noqa: F401  (fixture)



@pytest.fixture
def schema(pg_url: str):
    """A schema name no other test uses; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(psycopg.sql.Identifier(name)))


@pytest.fixture
def worker_env(pg_url: str, schema: str) -> dict[str, str]:
    """Environment that points the apps in tests/apps at this test's database and schema."""
    env = dict(os.environ)
    env["CELERY_DURABLE_URL"] = pg_url
    env["CELERY_DURABLE_SCHEMA"] = schema
    return env


@pytest.fixture
def workers(worker_env, celery_durable_worker):
    """Start `celery worker` subprocesses (the plugin's fixture) with this test's environment."""

    def start(app: str = "tests.apps.basic", *args: str, env: dict | None = None, **kwargs) -> WorkerProcess:
        return celery_durable_worker(app, *args, env={**worker_env, **(env or {})}, **kwargs)

    return start
