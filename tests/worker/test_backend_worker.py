"""The result backend end to end: real `celery worker` processes, our backend, a Redis (or other) broker.

CELERY_DURABLE_TEST_BROKER picks the broker (default redis://127.0.0.1:6379/0);
every test uses its own queue, so leftovers of other tests never reach it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import psycopg
import pytest
from celery import chain, chord, group
from celery.beat import PersistentScheduler
from celery.exceptions import ChordError

from celery_durable.backend import listener
from celery_durable.db.migrate import ensure_schema
from tests.apps.results import make_app

BROKER = os.environ.get("CELERY_DURABLE_TEST_BROKER", "redis://127.0.0.1:6379/0")
TIMEOUT = 30


@pytest.fixture
def queue() -> str:
    return f"q_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def ready_schema(pg_url, schema) -> str:
    # Created here first: processes creating one schema at once race in migrate.py (see the backend report).
    with psycopg.connect(pg_url, autocommit=True) as conn:
        ensure_schema(conn, schema)
    return schema


@pytest.fixture
def start(workers, queue, ready_schema):
    """Start a results-app worker on this test's queue; returns the worker."""

    def _start(*, env: dict | None = None, concurrency: int = 2, pool: str = "prefork"):
        return workers(
            "tests.apps.results", "-Q", queue, "-n", f"{queue}@%h", "--without-gossip", "--without-heartbeat",
            env={"CELERY_DURABLE_BROKER": BROKER, "CELERY_DURABLE_QUEUE": queue, **(env or {})},
            concurrency=concurrency, pool=pool,
        )

    return _start


@pytest.fixture
def client(pg_url, ready_schema, queue):
    schema = ready_schema
    apps = []

    def _client(**kwargs):
        app = make_app(pg_url, schema, BROKER, queue, **kwargs)
        apps.append(app)
        return app

    yield _client
    for app in apps:
        app.close()
    listener.close_all()


@pytest.mark.parametrize("serializer", ["json", "pickle", "msgpack", "yaml"])
def test_every_serializer_round_trips(start, client, serializer):
    start(env={"CELERY_DURABLE_SERIALIZER": serializer})
    app = client(serializer=serializer)
    value = {"n": 1, "list": [1, 2, 3], "text": "héllo"}
    assert app.tasks["results.echo"].delay(value).get(timeout=TIMEOUT) == value
    failed = app.tasks["results.fail"].delay("nope")
    with pytest.raises(ValueError, match="nope"):
        failed.get(timeout=TIMEOUT)
    assert failed.state == "FAILURE"


def test_extended_fields_and_sql_columns(start, client, pg_url, schema, queue):
    start()
    app = client()
    res = app.tasks["results.add"].delay(2, 3)
    assert res.get(timeout=TIMEOUT) == 5
    fresh = app.AsyncResult(res.id)
    assert (fresh.name, fresh.args, fresh.kwargs, fresh.queue) == ("results.add", [2, 3], {}, queue)
    assert fresh.worker.startswith(queue) and fresh.retries == 0
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            psycopg.sql.SQL("SELECT status, name, queue, date_done IS NOT NULL FROM {}.result WHERE task_id = %s")
            .format(psycopg.sql.Identifier(schema)), (res.id,)).fetchone()
    assert row == ("SUCCESS", "results.add", queue, True)


def test_result_of_several_megabytes(start, client):
    start()
    app = client()
    assert len(app.tasks["results.big"].delay(5 * 1024 * 1024).get(timeout=TIMEOUT)) == 5 * 1024 * 1024


def test_too_large_or_unserializable_result_fails_the_task_not_the_worker(start, client):
    worker = start(env={"CELERY_DURABLE_MAX_RESULT": str(100_000)})
    app = client()
    too_large = app.tasks["results.big"].delay(200_000)
    with pytest.raises(Exception, match="max_result_bytes"):
        too_large.get(timeout=TIMEOUT)
    unserializable = app.tasks["results.unserializable"].delay()
    with pytest.raises(Exception, match="serializ|Unserializable"):
        unserializable.get(timeout=TIMEOUT)
    assert app.tasks["results.add"].delay(1, 1).get(timeout=TIMEOUT) == 2
    assert worker.proc.poll() is None


def test_group_of_100(start, client):
    start(concurrency=4)
    app = client()
    res = group(app.tasks["results.add"].s(i, i) for i in range(100)).apply_async()
    assert res.get(timeout=TIMEOUT) == [2 * i for i in range(100)]
    assert [v for _, v in res.iter_native(timeout=TIMEOUT)] and res.join_native(timeout=TIMEOUT)[-1] == 198
    res.save()
    restored = app.GroupResult.restore(res.id)
    assert [r.id for r in restored.results] == [r.id for r in res.results]
    restored.delete()
    assert app.GroupResult.restore(res.id) is None


def test_chords_without_chord_unlock(start, client):
    worker = start(concurrency=4)
    app = client()
    add, tsum = app.tasks["results.add"], app.tasks["results.tsum"]
    assert chord(add.s(i, i) for i in range(50))(tsum.s()).get(timeout=TIMEOUT) == sum(2 * i for i in range(50))
    # a chord inside a chain, and a chain after it
    workflow = chain(add.s(1, 1), chord([add.s(1), add.s(2)], tsum.s()), add.s(100))
    assert workflow.apply_async().get(timeout=TIMEOUT) == (2 + 1) + (2 + 2) + 100
    # a group inside the header is flattened into it (as on Redis)
    nested = chord([group(add.s(1, 1), add.s(2, 2)), add.s(3, 3)], app.tasks["results.identity_list"].s())
    assert sorted(nested.apply_async().get(timeout=TIMEOUT)) == [2, 4, 6]
    # a header part that ignores its result still hands it to the body
    assert chord([add.s(1, 1).set(ignore_result=True), add.s(2, 2)], tsum.s()).apply_async().get(timeout=TIMEOUT) == 6
    assert "chord_unlock" not in worker.log()


def test_chord_with_a_failing_header_member(start, client):
    start()
    app = client()
    res = chord([app.tasks["results.add"].s(1, 1), app.tasks["results.fail"].s("header")],
                app.tasks["results.tsum"].s()).apply_async()
    with pytest.raises(ValueError, match="header"):
        res.get(timeout=TIMEOUT)  # get() raises the failed parent's error first, as on Redis
    with pytest.raises(ChordError, match="header"):
        app.AsyncResult(res.id).get(timeout=TIMEOUT)  # the body itself failed with a ChordError
    # the worker goes on
    assert app.tasks["results.add"].delay(2, 2).get(timeout=TIMEOUT) == 4


def test_get_wakes_on_notify(start, client):
    start()
    app = client()
    add = app.tasks["results.add"]
    for i in range(20):
        assert add.delay(i, 1).get(timeout=TIMEOUT) == i + 1


def test_expired_results_are_deleted_without_beat(start, client, pg_url, schema):
    start(env={"CELERY_DURABLE_RESULT_EXPIRES": "1", "CELERY_DURABLE_MAINTENANCE": "0.2"})
    app = client(result_expires=1)
    first = app.tasks["results.add"].delay(1, 1)
    assert first.get(timeout=TIMEOUT) == 2
    query = psycopg.sql.SQL("SELECT count(*) FROM {}.result WHERE task_id = %s").format(psycopg.sql.Identifier(schema))
    deadline = time.monotonic() + TIMEOUT
    with psycopg.connect(pg_url, autocommit=True) as conn:
        while conn.execute(query, (first.id,)).fetchone()[0]:
            assert time.monotonic() < deadline, "expired result never deleted"
            # each stored result gives the worker a chance to expire old rows
            app.tasks["results.add"].delay(0, 0).get(timeout=TIMEOUT)
    assert app.AsyncResult(first.id).state == "PENDING"


def test_beat_schedules_the_cleanup_and_a_worker_deletes_only_expired_rows(start, client, pg_url, schema):
    # No opportunistic expiry here (an hour between runs): only celery.backend_cleanup deletes.
    start(env={"CELERY_DURABLE_RESULT_EXPIRES": "3600", "CELERY_DURABLE_MAINTENANCE": "3600"})
    app = client(result_expires=3600, maintenance_interval=3600)
    with tempfile.TemporaryDirectory() as tmp:  # the scheduler `celery beat` runs, with its schedule file
        scheduler = PersistentScheduler(app, schedule_filename=os.path.join(tmp, "schedule"))
        assert "celery.backend_cleanup" in scheduler.schedule  # beat sends it daily, as for Redis
        scheduler.close()
    add = app.tasks["results.add"]
    old = [add.delay(i, i) for i in range(5)]
    assert [r.get(timeout=TIMEOUT) for r in old] == [0, 2, 4, 6, 8]
    app.GroupResult("old-group", old).save()
    ident = psycopg.sql.Identifier(schema)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for table in ("result", "group_result"):
            conn.execute(psycopg.sql.SQL("UPDATE {}.{} SET expires_at = now() - interval '1 second'")
                         .format(ident, psycopg.sql.Identifier(table)))
    fresh = add.delay(1, 1)
    assert fresh.get(timeout=TIMEOUT) == 2
    app.send_task("celery.backend_cleanup").get(timeout=TIMEOUT)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        left = {r[0] for r in conn.execute(psycopg.sql.SQL("SELECT task_id FROM {}.result").format(ident))}
        groups = conn.execute(psycopg.sql.SQL("SELECT count(*) FROM {}.group_result").format(ident)).fetchone()[0]
    assert not left & {r.id for r in old} and fresh.id in left and groups == 0
    assert app.AsyncResult(old[0].id).state == "PENDING" and app.AsyncResult(fresh.id).state == "SUCCESS"


def test_two_processes_read_each_others_results(client, pg_url, schema, queue):
    app = client()
    task_id = str(uuid.uuid4())
    script = (
        "import sys; from tests.apps.results import make_app; "
        f"app = make_app({pg_url!r}, {schema!r}, {BROKER!r}, {queue!r}); "
        f"r = app.AsyncResult({task_id!r}); r.backend.add_pending_result(r); print('waiting', flush=True); "
        "print(r.get(timeout=30)); "
        f"app.backend.store_result('reply-' + {task_id!r}, 'pong', 'SUCCESS')"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        assert proc.stdout.readline().strip() == "waiting"
        app.backend.store_result(task_id, {"from": "parent"}, "SUCCESS")
        assert app.AsyncResult(f"reply-{task_id}").get(timeout=TIMEOUT) == "pong"
        out, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert out.strip() == "{'from': 'parent'}"


def test_group_join_waits_on_notify_not_on_a_poll_interval(start, client):
    start()
    app = client()
    add = app.tasks["results.add"]
    outcome = {}

    def joins():
        # Members still pending when each join starts (countdown). No timeout and an hour-long poll
        # interval: a join that polls sleeps for the hour; only NOTIFY finishes these.
        res = group(add.s(i, i).set(countdown=1) for i in range(10)).apply_async()
        outcome["get"] = res.get(interval=3600)
        res = group(add.s(i, 1).set(countdown=1) for i in range(10)).apply_async()
        outcome["join_native"] = res.join_native(interval=3600)
        ids = [add.apply_async((i, 2), countdown=1).id for i in range(10)]
        outcome["get_many"] = [meta["result"] for _, meta in sorted(
            app.backend.get_many(ids, interval=3600), key=lambda item: ids.index(item[0]))]

    thread = threading.Thread(target=joins, daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    assert not thread.is_alive(), f"a join is still sleeping in a poll (finished: {sorted(outcome)})"
    assert outcome == {"get": [2 * i for i in range(10)], "join_native": [i + 1 for i in range(10)],
                       "get_many": [i + 2 for i in range(10)]}


def test_a_chain_get_reads_its_parents_in_one_query_once_its_result_arrives(start, client, monkeypatch):
    # AsyncResult.get() checks every parent for an error before returning; one statement each was
    # nine round trips on the critical path of a chain of ten, after its result had arrived.
    # One process: Celery publishes a chain's next task before it stores the task's own result, so
    # with two a step can finish before its parent is stored, and that parent is (rightly) read again.
    start(concurrency=1)
    app = client()
    add = app.tasks["results.add"]
    res = chain(add.s(0, 0), *[add.s(1) for _ in range(9)]).apply_async()
    after_ready = []
    execute = psycopg.Cursor.execute

    def counting(cursor, query, *args, **kwargs):
        if res.on_ready.ready:
            after_ready.append(query)
        return execute(cursor, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", counting)
    assert res.get(timeout=TIMEOUT) == 9
    assert len(after_ready) <= 1, f"{len(after_ready)} statements after the result arrived"
    parent = res.parent
    while parent is not None:  # every ancestor's state came with that one statement
        assert parent._cache is not None and parent._cache["status"] == "SUCCESS"
        parent = parent.parent


def test_a_failed_parent_still_raises_from_a_chain_get(start, client):
    start()
    app = client()
    add, fail = app.tasks["results.add"], app.tasks["results.fail"]
    res = chain(add.s(1, 1), fail.si("parent failed"), add.si(2, 2)).apply_async()
    with pytest.raises(Exception, match="parent failed"):
        res.get(timeout=TIMEOUT)


def test_a_threads_get_never_sleeps_between_wakes(start, client, monkeypatch):
    # Celery's wait loop sleep(0)s after each wake, a yield only greenlets need: on Linux each one
    # waits out the timer slack on the critical path of every get().
    from celery.backends import asynchronous

    start()
    app = client()
    add = app.tasks["results.add"]
    assert add.delay(1, 1).get(timeout=TIMEOUT) == 2
    sleeps = []
    real_sleep = asynchronous.sleep
    monkeypatch.setattr(asynchronous, "sleep", lambda s: (sleeps.append(s), real_sleep(s)))
    for i in range(5):
        res = add.apply_async((i, 1), countdown=0.3)  # not ready when the wait starts
        assert res.get(timeout=TIMEOUT) == i + 1
    # What is left is Celery's on_state_change, once per result (it is not ours to change).
    assert len(sleeps) == 5, sleeps
