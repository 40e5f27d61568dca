"""Fixtures of the durable workflow tests: a client app, the test schema's tables, signatures by name.

Executions are counted in `<schema>.executions` (written at the start of each
step through its own connection, outside the broker and the step's
transaction), so "ran once" and "ran twice" are facts, not inferences.
"""

from __future__ import annotations

import time

import psycopg
import pytest
from celery import Celery
from psycopg import sql

import celery_durable
from tests.apps import basic

APP = "tests.apps.durable_app"
T = "tests.apps.durable_app."


@pytest.fixture
def env(worker_env):
    return {**worker_env, "CELERY_DURABLE_LEASE": "2", "CELERY_DURABLE_PREFETCH": "1"}


@pytest.fixture
def client(env, schema, pg_url):
    app = Celery("client")
    app.conf.update(basic.config(env))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        celery_durable.db.pool.prepare_schema(celery_durable.db.dsn.from_url(pg_url),
                                              celery_durable.config.Settings(schema=schema))
        s = sql.Identifier(schema)
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {}.executions (tag text, pid int, at timestamptz DEFAULT now())").format(s))
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {}.control (key text PRIMARY KEY, value text)").format(s))
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {}.ledger (key text PRIMARY KEY, amount int)").format(s))
    yield app
    app.close()


class Db:
    def __init__(self, url: str, schema: str) -> None:
        self.url, self.s = url, sql.Identifier(schema)

    def q(self, query: str, *params):
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(sql.SQL(query).format(s=self.s), params)
            return cur.fetchall() if cur.description else None

    def runs(self, tag: str) -> int:
        return self.q("SELECT count(*) FROM {s}.executions WHERE tag = %s", tag)[0][0]

    def set(self, key: str, value: str | None) -> None:
        if value is None:
            self.q("DELETE FROM {s}.control WHERE key = %s", key)
        else:
            self.q("INSERT INTO {s}.control VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                   key, value)

    def wait_runs(self, tag: str, n: int = 1, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.runs(tag) < n:
            assert time.monotonic() < deadline, f"{tag} did not run {n} time(s)"
            time.sleep(0.05)


def wait_for(condition, timeout: float = 60.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def db(pg_url, schema, client):
    return Db(pg_url, schema)


def sig(client, name, *args, **options):
    return client.signature(T + name, args=args, **options)
