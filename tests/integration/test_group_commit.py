"""Confirmed publishes from several threads share commits (group commit), and each still waits for its own.

The message table is locked (``LOCK TABLE … IN SHARE MODE`` blocks inserts)
while eight threads call ``delay()``: the first commit waits on the lock and
the other seven queue behind it. Once the lock goes, the first commits alone
and the seven together: the rows carry two transaction ids (``xmin``) instead
of eight, and no ``delay()`` returned before its row was committed.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql

from celery_durable.transport.committer import committer
from tests.apps.transport_app import Harness, wait_for

THREADS = 8
WAIT = 60


@pytest.fixture
def h(pg_url, schema, worker_env):
    harness = Harness(pg_url, schema, worker_env, None)
    yield harness
    harness.close()


@contextmanager
def table_locked(h: Harness):
    with psycopg.connect(h.url) as conn:
        conn.execute(sql.SQL("LOCK TABLE {}.message IN SHARE MODE").format(sql.Identifier(h.schema)))
        yield
        conn.commit()


def publish_together(h: Harness, args: list) -> tuple[list, dict]:
    """``echo.delay(arg)`` from one thread per arg while the table is locked; (returned results, errors by arg)."""
    echo = h.task("echo")
    echo.delay("warm-up")  # declares the queue, opens the pool: no thread pays for it under the lock
    transport = h.app.connection_for_write().transport
    queue = committer(transport.db.conninfo, transport.settings)._queue
    returned, errors = [], {}

    def publish(arg):
        try:
            returned.append(echo.delay(arg))
        except Exception as exc:
            errors[arg] = exc

    threads = [threading.Thread(target=publish, args=(arg,)) for arg in args]
    with table_locked(h):
        for thread in threads:
            thread.start()
        wait_for(lambda: len(queue) == len(args) - 1, WAIT, "every publish but the first to queue behind it")
        assert not returned and not errors, "a delay() returned before its message could be committed"
    for thread in threads:
        thread.join(WAIT)
    return returned, errors


def test_threads_publishing_together_share_commits_and_each_returns_committed(h):
    returned, errors = publish_together(h, list(range(THREADS)))
    assert not errors and len(returned) == THREADS
    rows = h.q("SELECT count(*), count(DISTINCT xmin::text) FROM {s}.message WHERE payload NOT LIKE '%%warm-up%%'")
    assert rows == [(THREADS, 2)]  # the first alone, the seven queued behind it in one transaction


def test_a_refused_publish_in_a_shared_commit_fails_alone(h):
    h.q("CREATE FUNCTION {s}.refuse() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN IF NEW.payload LIKE '%%refuse me%%' THEN RAISE EXCEPTION 'refused by a test trigger'; END IF;"
        " RETURN NEW; END $$")
    h.q("CREATE TRIGGER refuse BEFORE INSERT ON {s}.message FOR EACH ROW EXECUTE FUNCTION {s}.refuse()")
    args = list(range(THREADS - 1)) + ["refuse me"]
    returned, errors = publish_together(h, args)
    assert list(errors) == ["refuse me"] and "refused by a test trigger" in str(errors["refuse me"])
    stored = {r[0] for r in h.q("SELECT payload::jsonb -> 'headers' ->> 'id' FROM {s}.message")}
    assert {r.id for r in returned} <= stored and len(returned) == THREADS - 1


@pytest.mark.own_servers
def test_a_publish_commits_while_another_transaction_holds_the_notify_lock(pg_cluster):
    """With ``wake_after_commit`` the wake-up NOTIFY leaves the durable commit, which then does not wait for the NOTIFY lock.

    A transaction that NOTIFYs holds a cluster-wide lock until its commit is done. Here one is
    stuck in its commit (it waits for a synchronous standby that does not exist). Our publish
    still commits its message (we commit with ``synchronous_commit=local``); its wake-up, a
    transaction of its own, goes out once the stuck one is cancelled, and a listener gets it.
    """
    cluster = pg_cluster(conf=["synchronous_standby_names = 'nobody'"])
    local = cluster.url() + "?options=-c%20synchronous_commit%3Dlocal"
    env = {"CELERY_DURABLE_URL": local, "CELERY_DURABLE_SCHEMA": "wake", "CELERY_DURABLE_WAKE_AFTER_COMMIT": "true"}
    h = Harness(local, "wake", env, None)
    listener = psycopg.connect(local, autocommit=True)
    stuck = psycopg.connect(cluster.url())
    try:
        listener.execute('LISTEN "wake.message"')
        stuck.execute("CREATE TEMP TABLE probe (i int)")  # it writes WAL, so its commit waits for the standby
        stuck.execute("NOTIFY somebody")
        stuck_pid = stuck.info.backend_pid
        committing = threading.Thread(target=lambda: _ignore(stuck.commit), daemon=True)
        committing.start()
        wait_for(lambda: h.q("SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event = 'SyncRep'", stuck_pid),
                 WAIT, "the NOTIFYing commit to wait for the missing standby")
        publishing = threading.Thread(target=lambda: h.task("echo").delay(1), daemon=True)
        publishing.start()
        wait_for(lambda: h.messages() == 1, WAIT, "the message to be committed while the NOTIFY lock is held")
        h.q("SELECT pg_cancel_backend(%s)", stuck_pid)  # its commit stays done locally; the lock goes
        publishing.join(WAIT)
        assert not publishing.is_alive(), "delay() did not return once the NOTIFY lock was free"
        got = [n.payload for n in listener.notifies(timeout=WAIT, stop_after=1)]
        assert got == ["rcelery"]  # the queue of t.echo
    finally:
        stuck.close()
        listener.close()
        h.close()


def _ignore(call) -> None:
    try:
        call()
    except psycopg.Error:
        pass
