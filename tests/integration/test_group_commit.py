"""Confirmed publishes from several threads share commits (group commit), and each still waits for its own.

The message table is locked (``LOCK TABLE … IN SHARE MODE`` blocks inserts)
while eight threads call ``delay()``: the first commit waits on the lock and
the other seven queue behind it. Once the lock goes, the first commits alone
and the seven together: the rows carry two transaction ids (``xmin``) instead
of eight, and no ``delay()`` returned before its row was committed.
"""

from __future__ import annotations

import logging
import os
import re
import signal
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
        assert len(got) == 1 and re.fullmatch(r"r\d+/0:\d+;celery", got[0])  # the queue of t.echo
    finally:
        stuck.close()
        listener.close()
        h.close()


def _ignore(call) -> None:
    try:
        call()
    except psycopg.Error:
        pass


class Interrupted(Exception):
    """What the test's signal handler raises in the main thread (a request deadline, say)."""


@contextmanager
def interruptible():
    """SIGUSR1 raises Interrupted in the main thread (where the test publishes) for the block's length."""
    def raise_interrupted(signum, frame):
        raise Interrupted()

    previous = signal.signal(signal.SIGUSR1, raise_interrupted)
    try:
        yield lambda: os.kill(os.getpid(), signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, previous)


class Publishing(threading.Thread):
    """``echo.apply_async`` in a thread of its own; ``returned()`` waits (with a deadline) for its outcome."""

    def __init__(self, echo, arg) -> None:
        super().__init__(daemon=True)
        self.echo, self.arg, self.result, self.error = echo, arg, None, None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.echo.delay(self.arg)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            self.error = exc

    def returned(self) -> bool:
        self.join(WAIT)
        return not self.is_alive()


def blocked_on(h: Harness, what: str) -> bool:
    """Whether a publish waits on a lock (``what``: 'relation' for the table lock, 'advisory')."""
    return bool(h.q("SELECT 1 FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
                    " WHERE NOT l.granted AND l.locktype = %s AND a.query LIKE %s", what, f"%{h.schema}%"))


def stored(h: Harness) -> list[str]:
    """The task ids of the stored messages, one per row."""
    return [r[0] for r in h.q("SELECT payload::jsonb -> 'headers' ->> 'id' FROM {s}.message")]


def test_a_publisher_interrupted_while_queued_is_withdrawn_and_later_publishes_complete(h):
    """Interrupted before a commit took its message: not stored, and the publishes queued behind it go on."""
    echo = h.task("echo")
    echo.delay("warm-up")
    queue = committer(h.app.connection_for_write().transport.db.conninfo,
                      h.app.connection_for_write().transport.settings)._queue
    interrupted_id = "interrupted-while-queued"
    with interruptible() as interrupt, table_locked(h):
        first = Publishing(echo, "first")  # commits alone: waits on the table lock
        wait_for(lambda: blocked_on(h, "relation"), WAIT, "the first publish to wait on the lock")
        behind: list[Publishing] = []

        def then_interrupt():
            wait_for(lambda: len(queue) == 1, WAIT, "the main thread's publish to queue")
            behind.append(Publishing(echo, "second"))  # queues behind the main thread's
            wait_for(lambda: len(queue) == 2, WAIT, "a second publish to queue")
            interrupt()

        threading.Thread(target=then_interrupt, daemon=True).start()
        with pytest.raises(Interrupted):
            echo.apply_async(("interrupted",), task_id=interrupted_id)
    assert first.returned() and first.error is None
    assert behind[0].returned(), "a publish queued behind the interrupted one never returned"
    assert behind[0].error is None
    later = Publishing(echo, "later")
    assert later.returned() and later.error is None, "a later publish of the process never returned"
    ids = stored(h)
    assert interrupted_id not in ids, "the interrupted publish was withdrawn: its message must not be stored"
    for done in (first, behind[0], later):
        assert ids.count(done.result.id) == 1


def test_a_publisher_interrupted_while_its_commit_is_in_flight_is_stored_once_and_logged(h, caplog):
    """Interrupted once a commit of several publishers took its message: the interruption is raised at once,
    the commit goes on for all of them, and its outcome for the interrupted one is logged."""
    h.q("CREATE FUNCTION {s}.hold() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN IF NEW.payload LIKE '%%hold-%%' THEN"
        " PERFORM pg_advisory_xact_lock_shared(substring(NEW.payload FROM 'hold-([0-9]+)')::bigint); END IF;"
        " RETURN NEW; END $$")
    h.q("CREATE TRIGGER hold BEFORE INSERT ON {s}.message FOR EACH ROW EXECUTE FUNCTION {s}.hold()")
    caplog.set_level(logging.WARNING, logger="celery_durable.transport.committer")
    echo = h.task("echo")
    echo.delay("warm-up")
    queue = committer(h.app.connection_for_write().transport.db.conninfo,
                      h.app.connection_for_write().transport.settings)._queue
    interrupted_id = "interrupted-in-flight"
    released = threading.Event()
    raised_while_held: list[bool] = []
    with psycopg.connect(h.url, autocommit=True) as locks, interruptible() as interrupt:
        locks.execute("SELECT pg_advisory_lock(918101), pg_advisory_lock(918102)")
        first = Publishing(echo, "hold-918101")  # commits alone, held by the first lock
        wait_for(lambda: blocked_on(h, "advisory"), WAIT, "the first publish to wait on its lock")
        behind: list[Publishing] = []

        def then_interrupt():
            wait_for(lambda: len(queue) == 1, WAIT, "the main thread's publish to queue")
            behind.append(Publishing(echo, "hold-918102"))  # same group; held by the second lock
            wait_for(lambda: len(queue) == 2, WAIT, "a second publish to queue")
            locks.execute("SELECT pg_advisory_unlock(918101)")  # the first commits; the group's commit starts
            wait_for(lambda: first.returned() and blocked_on(h, "advisory"), WAIT, "the group to wait on its lock")
            interrupt()
            interrupted.wait(WAIT)
            locks.execute("SELECT pg_advisory_unlock(918102)")
            released.set()

        interrupted = threading.Event()
        threading.Thread(target=then_interrupt, daemon=True).start()
        try:
            echo.apply_async(("interrupted",), task_id=interrupted_id)
        except Interrupted:
            raised_while_held.append(not released.is_set())
            interrupted.set()
        assert released.wait(WAIT)
    assert raised_while_held == [True], "the interruption was not raised while the commit it joined was held"
    assert behind[0].returned(), "the other member of the group never returned"
    assert behind[0].error is None, f"another publisher got {behind[0].error!r}"
    later = Publishing(echo, "later")
    assert later.returned() and later.error is None, "a later publish of the process never returned"
    wait_for(lambda: interrupted_id in caplog.text, WAIT, "the interrupted publish's outcome to be logged")
    ids = stored(h)
    assert ids.count(interrupted_id) == 1, "the commit it had joined stores the interrupted message once"
    assert "committed" in caplog.text
    for done in (first, behind[0], later):
        assert ids.count(done.result.id) == 1
