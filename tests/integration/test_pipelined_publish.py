"""``confirm_publish: False``: ``delay()`` returns before the commit; errors, exit and crashes.

Each test first shows that the publish did not wait: the message table is
locked (``LOCK TABLE … IN SHARE MODE`` blocks every insert) while ``delay()``
returns, and nothing is stored yet. Then it checks what docs/how-to/broker.md promises:
a refused publish is logged with its task id and raised by ``flush_publishes()``
(never by another caller's ``delay()``, whose message is sent), a server silent
for longer than ``connect_timeout`` is waited for and loses nothing, an exiting
client flushes, a SIGKILLed one loses at most the unanswered publishes
(``pipeline.DEPTH``) and nothing it published before a flush, and a lost
connection logs the task ids it may have lost while publishing goes on.
"""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

import celery_durable
from celery_durable.exceptions import PublishFailed
from celery_durable.transport import pipeline
from tests.apps.transport_app import Harness, wait_for

ROOT = Path(__file__).resolve().parents[2]
WAIT = 60


@pytest.fixture
def h(pg_url, schema, worker_env):
    harness = Harness(pg_url, schema, {**worker_env, "CELERY_DURABLE_CONFIRM_PUBLISH": "false"}, None)
    yield harness
    harness.close()


def stored_args(h: Harness) -> list[int]:
    """The arguments of the stored ``t.echo.delay(i)`` messages, sorted."""
    rows = h.q("SELECT payload FROM {s}.message WHERE task = 't.echo'")
    return sorted(json.loads(base64.b64decode(json.loads(p)["body"]))[0][0] for (p,) in rows)


@contextmanager
def table_locked(h: Harness):
    """Block every insert into the message table until the block ends."""
    with psycopg.connect(h.url) as conn:
        conn.execute(sql.SQL("LOCK TABLE {}.message IN SHARE MODE").format(sql.Identifier(h.schema)))
        yield
        conn.commit()


class Client:
    """``python -m tests.apps.pipelined_client``: a real client process driven by its stdin."""

    def __init__(self, env: dict, *steps: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.apps.pipelined_client", *steps], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def expect(self, prefix: str) -> str:
        """The next line of output, which must start with ``prefix`` (waits, never sleeps)."""
        line = self.proc.stdout.readline()
        if not line.startswith(prefix):
            self.proc.kill()
            raise AssertionError(f"expected {prefix!r}, got {line!r}; stderr: {self.proc.stderr.read()[-2000:]}")
        return line

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(WAIT)


def refuse_trigger(h: Harness) -> None:
    """The server refuses a message whose payload says ``refuse me``."""
    h.q("CREATE FUNCTION {s}.refuse() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN IF NEW.payload LIKE '%%refuse me%%' THEN RAISE EXCEPTION 'refused by a test trigger'; END IF;"
        " RETURN NEW; END $$")
    h.q("CREATE TRIGGER refuse BEFORE INSERT ON {s}.message FOR EACH ROW EXECUTE FUNCTION {s}.refuse()")


def stored_ids(h: Harness) -> list[str]:
    return [r[0] for r in h.q("SELECT payload::jsonb -> 'headers' ->> 'id' FROM {s}.message")]


def test_delay_returns_before_the_commit(h):
    echo = h.task("echo")
    with table_locked(h):
        first = echo.delay(1)  # returns although no insert can run yet
        assert h.messages() == 0
    celery_durable.flush_publishes()  # waits for every answer
    assert stored_ids(h) == [first.id]


def test_a_refused_publish_is_logged_and_raised_by_flush_never_by_another_callers_publish(h, caplog):
    """Other threads' publishes after a refusal return and are stored; flush_publishes() names the refused one."""
    refuse_trigger(h)
    caplog.set_level(logging.ERROR, logger="celery_durable.transport.pipeline")
    echo = h.task("echo")
    refused = echo.delay("refuse me")  # returns: the server has not answered yet
    wait_for(lambda: refused.id in caplog.text, WAIT, "the refusal to be logged as soon as it is answered")
    assert "refused by a test trigger" in caplog.text
    returned, errors = [], []

    def publish(i):
        try:
            returned.append(echo.delay(i))
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            errors.append(exc)

    others = [threading.Thread(target=publish, args=(i,)) for i in range(8)]
    for thread in others:
        thread.start()
    for thread in others:
        thread.join(WAIT)
    assert errors == [], "another caller's delay() raised for a publish it did not make"
    with pytest.raises(PublishFailed, match=refused.id) as failed:
        celery_durable.flush_publishes()
    assert failed.value.task_ids == [refused.id]
    celery_durable.flush_publishes()  # raised once
    ids = stored_ids(h)
    assert sorted(ids) == sorted(r.id for r in returned) and len(returned) == 8


def test_a_refused_publish_in_a_busy_group_fails_alone(h, caplog):
    """The publishes committed in the same group as a refused one are sent again and stored."""
    refuse_trigger(h)
    caplog.set_level(logging.ERROR, logger="celery_durable.transport.pipeline")
    echo = h.task("echo")
    with table_locked(h):  # everything written meanwhile waits: one group behind the first publish
        sent = [echo.delay(i) for i in range(5)]
        refused = echo.delay("refuse me")
        sent += [echo.delay(i) for i in range(5, 10)]
    with pytest.raises(PublishFailed, match=refused.id):
        celery_durable.flush_publishes()
    assert sorted(stored_ids(h)) == sorted(r.id for r in sent)


def test_a_server_silent_for_longer_than_connect_timeout_loses_nothing(h, caplog):
    """A stall (a lock, a synchronous standby, an I/O spike) is waited for, not taken for a dead server.

    A trigger sleeps in the server for longer than ``connect_timeout`` on one message; the publishes
    behind it pile up past ``pipeline.DEPTH``, so ``delay()`` itself waits for answers.
    """
    timeout = h.app.connection_for_write().transport.settings.connect_timeout
    h.q("CREATE FUNCTION {s}.stall() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN IF NEW.payload LIKE '%%stall me%%' THEN PERFORM pg_sleep(" + str(int(timeout) + 2) + "); END IF;"
        " RETURN NEW; END $$")
    h.q("CREATE TRIGGER stall BEFORE INSERT ON {s}.message FOR EACH ROW EXECUTE FUNCTION {s}.stall()")
    caplog.set_level(logging.WARNING, logger="celery_durable.transport.pipeline")
    echo = h.task("echo")
    sent = [echo.delay("stall me")] + [echo.delay(i) for i in range(2 * pipeline.DEPTH)]
    celery_durable.flush_publishes()
    assert sorted(stored_ids(h)) == sorted(r.id for r in sent), "publishes reported sent were lost"
    assert "may be lost" not in caplog.text


def test_an_exiting_client_flushes_its_publishes(h):
    with table_locked(h):
        client = Client(h.env, "publish:50")
        client.expect("published 50")  # every delay() returned, nothing could be stored yet
        assert h.messages() == 0
    # The client's interpreter exits now; atexit waits for the answers before the socket closes.
    assert client.proc.wait(WAIT) == 0, client.proc.stderr.read()
    assert stored_args(h) == list(range(50))


def test_a_multiprocessing_child_flushes_before_it_ends(h):
    """A forked child ends in os._exit(), past atexit: multiprocessing's finalizers flush its pipeline."""
    with table_locked(h):
        client = Client(h.env, "wait", "child:50")
        client.go()
        # The child published 50 without a commit (the table is locked) and is now flushing: it can only
        # end once the lock goes, so release the lock first and then read its report.
        wait_for(lambda: h.q("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                             " AND query LIKE %s", f"%{h.schema}%.message%"), WAIT, "the child's blocked publish")
        assert h.messages() == 0
    client.expect("child published 50 (exit code 0)")
    assert client.proc.wait(WAIT) == 0, client.proc.stderr.read()
    assert stored_args(h) == list(range(50))


def test_a_killed_client_loses_at_most_the_unanswered_publishes_and_nothing_flushed(h):
    client = Client(h.env, "wait", "publish:20", "wait", "flush", "wait", "publish:2000", "wait")
    with table_locked(h):
        client.go()
        client.expect("published 20")
        assert h.messages() == 0  # delay() returned 20 times without a commit
    client.go()
    client.expect("flushed")  # flush_publishes() waited for every answer
    client.go()
    client.expect("published 2020")
    client.kill()  # SIGKILL right after the last delay() returned
    args = stored_args(h)
    assert args[:20] == list(range(20)), "a publish answered before the kill was lost"
    assert len(args) == len(set(args)), "a message was stored twice"
    assert len(args) >= 2020 - pipeline.DEPTH, f"{2020 - len(args)} lost, more than pipeline.DEPTH"
    # what is stored is a prefix: the server runs the statements in order and stops at the crash
    assert args == list(range(len(args)))


def test_a_lost_connection_logs_what_it_may_have_lost_and_publishing_goes_on(h, caplog):
    caplog.set_level(logging.ERROR, logger="celery_durable.transport.pipeline")
    echo = h.task("echo")
    with table_locked(h):
        pending = [echo.delay(i) for i in range(5)]  # written, blocked on the lock: unanswered
        blocked = wait_for(lambda: h.q("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                       " AND query LIKE %s", f"%{h.schema}%.message%"), WAIT, "the blocked publish")
        h.q("SELECT pg_terminate_backend(%s)", blocked[0][0])
    wait_for(lambda: all(p.id in caplog.text for p in pending), WAIT, "the unanswered publishes to be logged")
    assert "may be lost" in caplog.text
    after = echo.delay(99)  # Celery reconnects and retries; a new pipeline carries it
    celery_durable.flush_publishes()
    ids = {r[0] for r in h.q("SELECT payload::jsonb -> 'headers' ->> 'id' FROM {s}.message")}
    assert ids == {after.id}


def _pipelined_through(cluster, bouncer, **env: str) -> Harness:
    """A client publishing pipelined through ``bouncer`` (schema ``pipe``); the harness reads the cluster directly."""
    return Harness(cluster.url(), "pipe", {"CELERY_DURABLE_URL": bouncer.url(), "CELERY_DURABLE_SCHEMA": "pipe",
                                           "CELERY_DURABLE_CONFIRM_PUBLISH": "false", **env}, None)


def _publish_and_flush(h: Harness, n: int) -> None:
    """``echo.delay(i)`` for i < n, then flush_publishes(): every one stored, in order."""
    echo = h.task("echo")
    for i in range(n):
        echo.delay(i)
    celery_durable.flush_publishes()
    assert stored_args(h) == list(range(n))


@pytest.mark.own_servers
@pytest.mark.parametrize("synchronous_commit", ["true", "false"])
def test_pipelined_publishes_through_pgbouncer(pg_cluster, pgbouncer, synchronous_commit):
    """PgBouncer 1.18 in transaction mode carries many Syncs in flight and a relaxed group's set_config."""
    cluster = pg_cluster()
    h = _pipelined_through(cluster, pgbouncer(cluster), CELERY_DURABLE_SYNCHRONOUS_COMMIT=synchronous_commit)
    try:
        _publish_and_flush(h, 2000)
    finally:
        h.close()


@pytest.mark.own_servers
def test_pipelined_publishes_through_pgbouncer_beside_busy_clients(pg_cluster, pgbouncer):
    """PgBouncer hands a server back to its pool at every idle ReadyForQuery, whoever sent more since.

    Other clients of the same PgBouncer take and release servers all along: a
    statement written ahead of its Sync would run in whichever client's
    transaction got that server next, and its answer would never come back.
    """
    cluster = pg_cluster()
    bouncer = pgbouncer(cluster, extra=["default_pool_size = 4"])
    h = _pipelined_through(cluster, bouncer)
    done = threading.Event()

    def busy() -> None:
        with psycopg.connect(bouncer.url(), autocommit=True, prepare_threshold=None) as conn:
            while not done.is_set():
                conn.execute("SELECT pg_sleep(0.0005)")

    others = [threading.Thread(target=busy, daemon=True) for _ in range(3)]
    try:
        for thread in others:
            thread.start()
        _publish_and_flush(h, 3000)
    finally:
        done.set()
        for thread in others:
            thread.join(10)
        h.close()
