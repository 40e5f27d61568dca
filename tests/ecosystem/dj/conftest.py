"""Django configured in-process for these tests; workers get the same project through the environment.

The project's database is a fresh one (pytest-django creates it as the test
database and migrates Django's own apps); broker and result backend live in
it too, under a non-default schema, so the admin's models must follow it.
"""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest
from psycopg import sql

pytest.importorskip("django")
pytest.importorskip("pytest_django")

from django.conf import settings  # noqa: E402

from celery_durable.testing import embedded  # noqa: E402

from .proj.settings import build  # noqa: E402

SERVER = os.environ.get("CELERY_DURABLE_TEST_DSN") or embedded.start()
DBNAME = f"cd_dj_{uuid.uuid4().hex[:8]}"
URL = f"{SERVER.rpartition('/')[0]}/{DBNAME}"
SCHEMA = f"dj_{uuid.uuid4().hex[:8]}"

if not settings.configured:
    values = build(URL, SCHEMA)
    values["DATABASES"]["default"]["NAME"] = SERVER.rpartition("/")[2].split("?")[0] or "postgres"
    values["DATABASES"]["default"]["TEST"] = {"NAME": DBNAME}
    settings.configure(**values)
    # When this conftest loads during collection (not at start-up), pytest-django has not set
    # Django up yet, and the test modules import models.
    import django

    django.setup()


@pytest.fixture(scope="session")
def django_project(django_db_setup, django_db_blocker):
    """The migrated test database with celery_durable's schema; closes every session to it afterwards."""
    from celery_durable.db import migrate, pool

    from .proj.celery_app import app

    with psycopg.connect(URL, autocommit=True) as conn:
        migrate.ensure_schema(conn, SCHEMA)
    yield app
    app.close()
    pool.close_all()
    from django.db import connections

    connections.close_all()
    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                     (DBNAME,))


@pytest.fixture(scope="module")
def worker(django_project):
    """One real `celery worker` of the project (Django set up by Celery's fixup) for the module."""
    from celery_durable.testing.workers import start_worker

    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.ecosystem.dj.proj.settings",
           "CELERY_DURABLE_URL": URL, "CELERY_DURABLE_SCHEMA": SCHEMA}
    proc = start_worker("tests.ecosystem.dj.proj.celery_app", env=env, concurrency=1)
    yield proc
    proc.kill()


class Broker:
    """Looks at the broker's tables from a connection of its own (outside Django's transaction)."""

    def q(self, query: str, *params):
        with psycopg.connect(URL, autocommit=True) as conn:
            cur = conn.execute(sql.SQL(query).format(s=sql.Identifier(SCHEMA)), params)
            return cur.fetchall() if cur.description else None

    def messages(self, task: str | None = None) -> int:
        if task is None:
            return self.q("SELECT count(*) FROM {s}.message")[0][0]
        return self.q("SELECT count(*) FROM {s}.message WHERE task = %s", task)[0][0]


@pytest.fixture
def broker() -> Broker:
    return Broker()
