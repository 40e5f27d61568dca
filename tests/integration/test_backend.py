"""PostgresBackend against a real PostgreSQL, without workers: every query and its guarantees."""

from __future__ import annotations

import gc
import threading
import time
import uuid
from types import SimpleNamespace

import psycopg
import pytest
from celery import Celery, states
from celery.backends.asynchronous import greenletDrainer
from celery.exceptions import ImproperlyConfigured, TimeoutError
from psycopg import sql

from celery_durable.backend import PostgresBackend, listener, notify
from celery_durable.exceptions import ResultTooLarge
from celery_durable.db.migrate import ensure_schema
from celery_durable.exceptions import DatabaseUnavailable, SchemaError


@pytest.fixture
def make(pg_url, schema):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        ensure_schema(conn, schema)
    apps = []

    def _make(url=None, **conf):
        options = {"schema": schema, **conf.pop("options", {})}
        app = Celery("t", broker="memory://", set_as_current=False)
        app.conf.update(
            result_backend=url or pg_url, result_backend_transport_options=options,
            accept_content=["json", "pickle", "msgpack", "yaml"], **conf,
        )
        apps.append(app)
        return app

    yield _make
    for app in apps:
        app.close()
    listener.close_all()


def rows(pg_url, schema, table):
    with psycopg.connect(pg_url) as conn:
        return conn.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))).fetchone()[0]


def test_url_selects_the_backend_without_import(make):
    assert isinstance(make().backend, PostgresBackend)
    assert isinstance(make(url=make().conf.result_backend.replace("postgresql://", "postgres://")).backend, PostgresBackend)


@pytest.mark.parametrize("serializer", ["json", "pickle", "msgpack", "yaml"])
def test_store_and_read_every_serializer(make, serializer):
    backend = make(result_serializer=serializer).backend
    backend.store_result("a", {"k": [1, 2]}, states.SUCCESS)
    backend.store_result("b", ValueError("bad"), states.FAILURE, traceback="tb")
    assert backend.get_task_meta("a")["result"] == {"k": [1, 2]}
    meta = backend.get_task_meta("b")
    assert isinstance(meta["result"], ValueError) and meta["traceback"] == "tb"
    # a reader with another serializer decodes with the stored content type
    other = make(result_serializer="json" if serializer != "json" else "msgpack").backend
    assert other.get_task_meta("a")["result"] == {"k": [1, 2]}


def test_success_is_never_overwritten_and_pending_by_default(make):
    backend = make().backend
    assert backend.get_task_meta("nope") == {"status": states.PENDING, "result": None}
    assert not backend.task_result_exists("nope")
    backend.store_result("t", 1, states.SUCCESS)
    backend.store_result("t", None, states.STARTED)
    assert backend.get_task_meta("t", cache=False)["status"] == states.SUCCESS
    assert backend.task_result_exists("t")


def test_revoked_and_forget(make):
    app = make()
    backend = app.backend
    backend.mark_as_revoked("r", reason="stop")
    assert app.AsyncResult("r").state == states.REVOKED
    backend.store_result("f", 1, states.SUCCESS)
    app.AsyncResult("f").forget()
    assert app.AsyncResult("f").state == states.PENDING


def test_get_wakes_on_notify_from_another_thread(make):
    app = make()
    result = app.AsyncResult("late")
    timer = threading.Timer(0.2, app.backend.store_result, ("late", "done", states.SUCCESS))
    timer.start()
    assert result.get(timeout=10) == "done"


def server_channels(backend):
    """The channels the process's LISTEN session listens on, as the server says."""
    probe = "SELECT pg_listening_channels() WHERE %s::text[] IS NOT NULL"
    return sorted(r[0] for r in listener.get_listener(backend.conninfo, backend.settings).subscribe(probe, []))


def test_a_wait_listens_to_its_own_channel_only_while_it_waits(make):
    app = make()
    backend = app.backend
    backend.store_result("other", 1, states.SUCCESS)  # a result nobody waits for
    assert app.AsyncResult("other").get(timeout=10) == 1  # stored already: read, no wait
    with pytest.raises(TimeoutError):
        app.AsyncResult("never").get(timeout=0.2)
    assert server_channels(backend) == []
    seen = []

    def probe_then_store():
        deadline = time.monotonic() + 10
        while "late" not in backend.result_consumer._held and time.monotonic() < deadline:
            time.sleep(0.01)  # until the get() below waits
        seen.extend(server_channels(make().backend))
        backend.store_result("late", "done", states.SUCCESS)

    threading.Thread(target=probe_then_store, daemon=True).start()
    assert app.AsyncResult("late").get(timeout=10) == "done"
    assert notify.channel(backend.settings.schema, "late") in seen
    assert server_channels(backend) == []


def test_threads_waiting_at_once_share_one_listener(make):
    app = make()
    errors, done = [], []

    def waiter(n):
        backend = app.backend  # Celery gives each thread its own backend (and consumer)
        try:
            for i in range(5):
                task_id = f"t{n}-{i}"
                threading.Timer(0.05, backend.store_result, (task_id, [n, i], states.SUCCESS)).start()
                assert app.AsyncResult(task_id).get(timeout=20) == [n, i]
            done.append(n)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=waiter, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and sorted(done) == list(range(8))
    assert server_channels(app.backend) == []


def test_an_abandoned_join_stops_listening(make):
    app = make()
    backend = app.backend
    ids = [f"m{i}" for i in range(5)]
    group = app.GroupResult("abandoned", [app.AsyncResult(i) for i in ids])
    backend.store_result("m0", 0, states.SUCCESS)
    threading.Timer(0.1, backend.store_result, ("m1", 1, states.SUCCESS)).start()
    iterator = group.iter_native(timeout=10)
    next(iterator)
    next(iterator)
    del iterator  # never finished: its channels go when the generator is collected
    gc.collect()
    assert server_channels(backend) == []


class ThreadDrainer(greenletDrainer):
    """Celery's drainer for eventlet/gevent (it drains all the time), with a thread as its green thread."""

    def spawn(self, func):
        thread = threading.Thread(target=func, daemon=True)
        thread.start()
        return thread


def test_then_callbacks_fire_under_a_draining_greenlet_without_a_wait(make):
    app = make()
    backend = app.backend
    backend.result_consumer.drainer = ThreadDrainer(backend.result_consumer)
    fired = threading.Event()
    try:
        app.AsyncResult("cb").then(lambda result: fired.set())
        threading.Timer(0.3, backend.store_result, ("cb", 1, states.SUCCESS)).start()
        assert fired.wait(10), "the then() callback never fired"
        deadline = time.monotonic() + 10
        while server_channels(backend):  # ready: its channel goes right after the callback
            assert time.monotonic() < deadline, "still listening after the result was ready"
            time.sleep(0.05)
    finally:
        backend.result_consumer.drainer.stop()


def test_group_save_restore_delete_and_join_native(make):
    app = make()
    backend = app.backend
    ids = [f"g{i}" for i in range(10)]
    group = app.GroupResult("grp", [app.AsyncResult(i) for i in ids])
    group.save()
    restored = app.GroupResult.restore("grp")  # kept: before Celery 5.7 its collection stops the wait below
    assert [r.id for r in restored.results] == ids
    for i, task_id in enumerate(ids):
        threading.Timer(0.01 * i, backend.store_result, (task_id, i, states.SUCCESS)).start()
    assert group.join_native(timeout=10) == list(range(10))
    group.delete()
    assert app.GroupResult.restore("grp") is None


def test_store_result_in_commits_with_the_caller(make, pg_url):
    app = make()
    backend = app.backend
    with psycopg.connect(pg_url) as conn:  # not autocommit: a transaction
        backend.store_result_in(conn, "rolled", 1, states.SUCCESS)
        conn.rollback()
        backend.store_result_in(conn, "kept", 2, states.SUCCESS)
        waiter = app.AsyncResult("kept")
        backend.add_pending_result(waiter)
        assert backend.get_task_meta("kept")["status"] == states.PENDING  # not committed yet
        threading.Timer(0.2, conn.commit).start()
        assert waiter.get(timeout=10) == 2  # the NOTIFY fired on commit
    assert backend.get_task_meta("rolled")["status"] == states.PENDING


def _part(gid, tid, index, chord_body="body"):
    return SimpleNamespace(id=tid, group=gid, group_index=index, chord=chord_body, task="t", hostname=None,
                           retries=0, delivery_info={}, children=[], parent_id=None, stamps=None)


def test_chord_counter_claims_exactly_once_under_concurrency(make, pg_url, schema):
    app = make()
    backend = app.backend
    gid = "chord1"
    backend.set_chord_size(gid, 40)
    claims = []

    def run(i, state=states.SUCCESS, value=None):
        claims.append(backend._store_chord_part(_part(gid, f"p{i}", i), state, i if value is None else value)[0])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run(3)  # a redelivered part counts once and claims nothing
    assert claims.count(True) == 1 and len(claims) == 41
    assert backend._chord_results(gid) == list(range(40))
    # Each part's result is stored once, in its result row: nothing else holds a copy.
    assert rows(pg_url, schema, "result") == 40 and rows(pg_url, schema, "chord_part") == 0
    assert app.AsyncResult("p7").get(timeout=10) == 7


def test_a_failure_stored_twice_does_not_complete_the_header_early(make):
    backend = make().backend
    gid = "twice"
    backend.set_chord_size(gid, 3)
    fail = _part(gid, "f", 0)
    assert backend._store_chord_part(fail, states.FAILURE, ValueError("x"))[0] is False
    assert backend._store_chord_part(fail, states.FAILURE, ValueError("x"))[0] is False  # counted twice...
    assert backend._store_chord_part(_part(gid, "a", 1), states.SUCCESS, 1)[0] is False  # ...but checked
    assert backend._store_chord_part(_part(gid, "b", 2), states.SUCCESS, 2)[0] is True
    with pytest.raises(Exception, match="Dependency f raised"):
        backend._chord_results(gid)


def test_part_returning_before_chord_size_is_counted(make):
    backend = make().backend
    gid = "early"
    assert backend._store_chord_part(_part(gid, "a", 0), states.SUCCESS, 1)[0] is False
    backend.set_chord_size(gid, 2)
    assert backend._store_chord_part(_part(gid, "b", 1), states.SUCCESS, 2)[0] is True
    assert backend._chord_results(gid) == [1, 2]


def test_cleanup_and_opportunistic_expiry(make, pg_url, schema):
    backend = make(result_expires=3600).backend
    for i in range(5):
        backend.store_result(f"old{i}", i, states.SUCCESS)
    app = make(result_expires=3600)
    app.GroupResult("oldgrp", [app.AsyncResult("old0")]).save()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for table in ("result", "group_result"):
            conn.execute(sql.SQL("UPDATE {}.{} SET expires_at = now() - interval '1 second'")
                         .format(sql.Identifier(schema), sql.Identifier(table)))
    backend.cleanup()
    assert rows(pg_url, schema, "result") == 0 and rows(pg_url, schema, "group_result") == 0

    eager = make(result_expires=3600, options={"maintenance_interval": 0.05}).backend
    eager.store_result("old", 1, states.SUCCESS)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("UPDATE {}.result SET expires_at = now() - interval '1 second'").format(sql.Identifier(schema)))
    deadline = time.monotonic() + 10
    while eager.get_task_meta("old", cache=False)["status"] != states.PENDING:
        assert time.monotonic() < deadline
        time.sleep(0.06)
        eager.store_result(f"new-{uuid.uuid4()}", 1, states.SUCCESS)  # a store may expire old rows


def test_too_large_result_is_refused_before_the_database(make):
    backend = make(options={"max_result_bytes": 1000}).backend
    with pytest.raises(ResultTooLarge, match="max_result_bytes"):
        backend.store_result("big", "x" * 5000, states.SUCCESS)
    assert backend.get_task_meta("big")["status"] == states.PENDING


def test_unreachable_database_names_the_target_not_the_password(make):
    app = make(url="postgresql://someone:s3cret@127.0.0.1:1/nodb", options={"connect_timeout": 1})
    with pytest.raises(DatabaseUnavailable) as info:
        app.backend.get_task_meta("x")
    assert "127.0.0.1:1/nodb" in str(info.value) and "s3cret" not in str(info.value)


def test_missing_schema_without_auto_migrate_is_a_clear_error(make):
    app = make(options={"schema": f"missing_{uuid.uuid4().hex[:8]}", "auto_migrate": False})
    with pytest.raises(SchemaError, match="missing"):
        app.backend.get_task_meta("x")


def test_url_is_required():
    app = Celery("t", broker="memory://", set_as_current=False)
    with pytest.raises(ImproperlyConfigured):
        PostgresBackend(app=app, url=None)
