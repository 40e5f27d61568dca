"""Commits that need not wait for the WAL flush set it inside their own transaction, nowhere else.

No second pool with ``options=-c synchronous_commit=off`` (PgBouncer refuses startup options): the
setting rides in the statement's pipeline and ends with its transaction.
"""

from __future__ import annotations

import psycopg

from celery_durable.db import pool

SETTING = "SELECT current_setting('synchronous_commit')"


def test_relaxed_statement_commits_without_the_flush_and_leaves_the_session_as_it_was(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert pool.execute_relaxed(conn, SETTING).fetchone()[0] == "off"
        assert conn.execute(SETTING).fetchone()[0] == "on"
        with conn.transaction():  # inside the caller's transaction it changes nothing
            assert pool.execute_relaxed(conn, SETTING).fetchone()[0] == "on"
        assert "synchronous_commit" not in (conn.info.get_parameters().get("options") or "")
