"""Issue 12 §3: moving a running Celery app off Redis with nothing lost and nothing run twice.

The switch-over of docs/how-to/coming-from-redis-rabbitmq.md, end to end: 1,000 tasks on Redis (50 held by a worker
that gets SIGKILLed, 100 with a countdown), producers move to PostgreSQL, the
old worker drains Redis while a new one consumes PostgreSQL, the old worker
stops, ``celery durable migrate-from`` moves the rest (the unacked hash
included). Redis db 14 with a key prefix of this test's own; removed after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import kombu
import psycopg
import pytest
import redis

from celery_durable.testing.embedded import create_database
from tests.apps.transport_app import create_executions
from tests.apps.parity_app import make_app
from tests.support.parity import Parity, wait_for

pytestmark = pytest.mark.slow

REDIS = "redis://127.0.0.1:6379/14"
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
KILLED, COUNTDOWN, PLAIN, NEW = 50, 100, 850, 10


@pytest.fixture
def p(pg_url):
    parity = Parity(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        create_executions(conn, parity.schema)
    parity.prefix = f"parity_{parity.schema}:"
    conf = {"broker_transport_options": {"global_keyprefix": parity.prefix},
            "result_backend_transport_options": {"global_keyprefix": parity.prefix}}
    parity.old_env = {"CELERY_DURABLE_BROKER": REDIS, "CELERY_DURABLE_BACKEND": REDIS, "PARITY_CONF": json.dumps(conf)}
    parity.redis = redis.Redis.from_url(REDIS)
    yield parity
    parity.close()
    keys = list(parity.redis.scan_iter(match=f"{parity.prefix}*", count=1000))
    if keys:
        parity.redis.delete(*keys)
    parity.redis.close()


def executions(p) -> dict[str, int]:
    return dict(p.q("SELECT tag, count(*) FROM {s}.executions GROUP BY tag"))


def test_switch_over_from_redis_loses_nothing_and_runs_nothing_twice(p):
    old = make_app({**p.env, **p.old_env})
    record = old.tasks["parity.record"]

    # A worker holds 50 tasks (prefetched, one stuck running) and is SIGKILLed: they sit in Redis's unacked hash.
    killed = p.start("old_killed", env={**p.old_env, "PARITY_STALL": "1", "CELERY_DURABLE_PREFETCH": str(KILLED)},
                     concurrency=1)
    results = {f"k-{i}": record.delay(f"k-{i}") for i in range(KILLED)}
    wait_for(lambda: p.redis.hlen(f"{p.prefix}unacked") == KILLED, 60, "the worker to hold all 50 tasks")
    killed.kill()

    # The old worker drains Redis; countdown tasks wait in its memory (and in the unacked hash).
    p.start("old", env=p.old_env, concurrency=2)
    results.update({f"c-{i}": record.apply_async((f"c-{i}",), countdown=15) for i in range(COUNTDOWN)})
    results.update({f"p-{i}": record.delay(f"p-{i}") for i in range(PLAIN)})

    # Producers move first: new tasks go to PostgreSQL, where a new worker consumes.
    new = make_app(p.env)
    new_results = {f"n-{i}": new.tasks["parity.record"].delay(f"n-{i}") for i in range(NEW)}
    p.start("new")
    wait_for(lambda: sum(1 for tag in executions(p) if tag[0] in "pn") == PLAIN + NEW, 120,
             "the old worker to drain the plain tasks and the new one to run the new tasks")

    # Restoring the unacked hash while an old worker holds tasks there would run them twice: refused.
    # Progress every 10: at least the 50 restored tasks move, however many the old worker ran meanwhile.
    migrate_from = ("durable", "migrate-from", REDIS, "-O", f"global_keyprefix={p.prefix}", "--progress-every", "10",
                    "--json")
    refused = p.celery(*migrate_from)
    assert refused.returncode == 1 and "workers still consume from the old broker" in refused.stderr, refused.stderr

    # The old worker stops (a warm shutdown gives its countdown tasks back to Redis); the rest moves.
    p.workers[1].stop()
    ran_before = len(executions(p))
    out = p.celery(*migrate_from)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "restored 50 unacked messages" in out.stderr and "moved 10/" in out.stderr, out.stderr
    summary = json.loads(out.stdout)
    assert summary["restored_unacked"] == KILLED
    assert summary["moved"] == KILLED + COUNTDOWN + PLAIN + NEW - ran_before
    assert summary["left"] == {"celery": 0}
    assert p.redis.hlen(f"{p.prefix}unacked") == 0

    everything = {**results, **new_results}
    wait_for(lambda: len(executions(p)) == len(everything), 120, "every task to run")
    counts = executions(p)
    assert counts == {tag: 1 for tag in everything}, {t: n for t, n in counts.items() if n != 1}

    # Each result is readable from the backend of the worker that ran it: Redis's or ours, never both.
    stored_here = {row[0] for row in p.q("SELECT task_id FROM {s}.result WHERE status = 'SUCCESS'")}
    for tag, result in everything.items():
        in_redis = old.AsyncResult(result.id).state == "SUCCESS"
        assert in_redis != (result.id in stored_here), tag
        reader = old if in_redis else new
        assert reader.AsyncResult(result.id).get(timeout=10) == tag
    old.close()
    new.close()


# -- Celery's own `celery migrate` in both directions, with Kombu's URLs (default schema: a database of its own) --


@pytest.fixture(scope="module")
def own_database(pg_url):
    """One database for the module's `celery migrate` tests (each uses queues of its own): creating and
    dropping databases is slow on a busy server."""
    name = f"parity_mig_{uuid.uuid4().hex[:8]}"
    url = create_database(pg_url, name)
    yield url
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psycopg.sql.Identifier(name)))


def celery_migrate(source: str, destination: str, queue: str) -> None:
    out = subprocess.run([sys.executable, "-m", "celery", "-A", "tests.apps.parity_app", "migrate", "-a", "-t", "2",
                          "-Q", queue, source, destination],
                         env={**os.environ, "C_FORCE_ROOT": "1"}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_celery_migrate_from_redis_keeps_countdowns(own_database):
    """Celery's own command moves what waits in Redis's lists (not its unacked hash: see migrate-from)."""
    queue = f"parity_{uuid.uuid4().hex[:8]}"
    app = make_app({"CELERY_DURABLE_BROKER": REDIS, "CELERY_DURABLE_BACKEND": "disabled://"})
    client = redis.Redis.from_url(REDIS)
    try:
        for i in range(10):
            app.tasks["parity.add"].apply_async((i, i), queue=queue, countdown=600 if i < 3 else None)
        celery_migrate(REDIS, own_database, queue)
        assert client.llen(queue) == 0
    finally:
        app.close()
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        client.close()
    with psycopg.connect(own_database) as conn:
        rows = conn.execute("SELECT visible_at > now() + interval '1 minute' FROM celery_durable.message "
                            "WHERE queue = %s", (queue,)).fetchall()
    assert sorted(rows) == [(False,)] * 7 + [(True,)] * 3


def test_celery_migrate_from_rabbitmq_keeps_countdowns(own_database):
    queue = f"parity_{uuid.uuid4().hex[:8]}"
    app = make_app({"CELERY_DURABLE_BROKER": RABBITMQ, "CELERY_DURABLE_BACKEND": "disabled://"})
    try:
        for i in range(15):
            app.tasks["parity.add"].apply_async((i, i), queue=queue)
        for i in range(5):
            app.tasks["parity.add"].apply_async((i, i), queue=queue, countdown=600)
        celery_migrate(RABBITMQ, own_database, queue)
        with app.connection_for_write() as conn:
            assert conn.default_channel.queue_declare(queue=queue, passive=True).message_count == 0
    finally:
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
            conn.default_channel.exchange_delete(queue)  # Celery declared one named after the queue
        app.close()
    with psycopg.connect(own_database) as conn:
        rows = conn.execute("SELECT visible_at > now() + interval '1 minute' FROM celery_durable.message "
                            "WHERE queue = %s", (queue,)).fetchall()
    assert sorted(rows) == [(False,)] * 15 + [(True,)] * 5  # countdowns wait in the table until due


def test_celery_migrate_from_postgresql_to_redis(own_database):
    queue = f"parity_{uuid.uuid4().hex[:8]}"
    app = make_app({"CELERY_DURABLE_BROKER": own_database, "CELERY_DURABLE_BACKEND": "disabled://"})
    client = redis.Redis.from_url(REDIS)
    try:
        for i in range(20):
            app.tasks["parity.add"].apply_async((i, i), queue=queue, countdown=600 if i < 5 else None)
        # Countdowns beyond native_delay_threshold wait in the table, invisible to consumers until due:
        # the docs' step releases them first (their ETA travels in the message; Redis's worker keeps it).
        with psycopg.connect(own_database, autocommit=True) as conn:
            conn.execute("UPDATE celery_durable.message SET visible_at = now() WHERE lease_token IS NULL")
        celery_migrate(own_database, REDIS, queue)
        assert client.llen(queue) == 20
        with psycopg.connect(own_database) as conn:
            assert conn.execute("SELECT count(*) FROM celery_durable.message WHERE queue = %s",
                                (queue,)).fetchone() == (0,)
    finally:
        app.close()
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        client.close()


def test_migrate_from_rabbitmq_into_the_apps_schema(pg_url):
    parity = Parity(pg_url)
    queue = f"parity_{uuid.uuid4().hex[:8]}"
    old = make_app({"CELERY_DURABLE_BROKER": RABBITMQ, "CELERY_DURABLE_BACKEND": "disabled://"})
    try:
        for i in range(10):
            old.tasks["parity.add"].apply_async((i, i), queue=queue, countdown=600 if i < 3 else None)
        out = parity.celery("durable", "migrate-from", RABBITMQ, "-Q", queue, "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        assert json.loads(out.stdout)["moved"] == 10
        assert parity.q("SELECT count(*) FROM {s}.message WHERE queue = %s", queue) == [(10,)]
    finally:
        with old.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
            conn.default_channel.exchange_delete(queue)  # Celery declared one named after the queue
        old.close()
        parity.close()


# -- migrate-from publishes confirmed, whatever the app's confirm_publish; what it cannot store stays on Redis --


@pytest.fixture
def pipelined(pg_url):
    """A Parity whose app pipelines its publishes (``confirm_publish: False``), with a Redis key prefix of its own."""
    parity = Parity(pg_url)
    parity.prefix = f"parity_{parity.schema}:"
    parity.queue = f"mig_{parity.schema}"
    conf = {"broker_transport_options": {"schema": parity.schema, "confirm_publish": False}}
    parity.env["PARITY_CONF"] = json.dumps(conf)
    parity.redis = redis.Redis.from_url(REDIS)
    parity.old = make_app({**parity.env, "CELERY_DURABLE_BROKER": REDIS, "CELERY_DURABLE_BACKEND": "disabled://",
                           "PARITY_CONF": json.dumps({"broker_transport_options": {"global_keyprefix": parity.prefix}})})
    yield parity
    parity.old.close()
    parity.close()
    keys = list(parity.redis.scan_iter(match=f"{parity.prefix}*", count=1000))
    if keys:
        parity.redis.delete(*keys)
    parity.redis.close()


def on_redis(p) -> set[str]:
    """Task ids of the messages still on Redis: in the queue, or in the unacked hash (delivered, not acked)."""
    queued = [json.loads(raw) for raw in p.redis.lrange(f"{p.prefix}{p.queue}", 0, -1)]
    held = [json.loads(raw)[0] for raw in p.redis.hvals(f"{p.prefix}unacked")]
    return {m["headers"]["id"] for m in queued + held}


def stored_here(p) -> set[str]:
    return {r[0] for r in p.q("SELECT payload::jsonb -> 'headers' ->> 'id' FROM {s}.message")}


def migrate_from(p, *args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "tests.apps.parity_app", "durable", "migrate-from", REDIS,
            "-O", f"global_keyprefix={p.prefix}", "-Q", p.queue, "--no-unacked", "--idle", "1", "--json", *args]


def test_migrate_from_acks_on_redis_only_what_committed_here_even_when_the_app_pipelines(pipelined):
    """migrate-from is killed while PostgreSQL cannot commit (the message table is locked): nothing is lost."""
    p = pipelined
    sent = {p.old.tasks["parity.add"].apply_async((i, i), queue=p.queue).id for i in range(20)}
    with psycopg.connect(p.url) as locker:
        locker.execute(psycopg.sql.SQL("LOCK TABLE {}.message IN SHARE MODE").format(psycopg.sql.Identifier(p.schema)))
        mover = subprocess.Popen(migrate_from(p), env=p.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: p.q("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
                                 f"%{p.schema}%message%"), 60, "migrate-from's insert to wait on the lock")
        finally:
            mover.kill()
            mover.wait(60)
        locker.commit()
    lost = sent - on_redis(p) - stored_here(p)
    assert not lost, f"{len(lost)} messages acked on Redis but never committed here"


def test_migrate_from_leaves_refused_and_unroutable_messages_on_redis_with_an_error(pipelined):
    p = pipelined
    p.q("CREATE FUNCTION {s}.refuse() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN IF NEW.payload LIKE '%%refuse me%%' THEN RAISE EXCEPTION 'refused by a test trigger'; END IF;"
        " RETURN NEW; END $$")
    p.q("CREATE TRIGGER refuse BEFORE INSERT ON {s}.message FOR EACH ROW EXECUTE FUNCTION {s}.refuse()")
    add = p.old.tasks["parity.identity"]
    moved = {add.apply_async((i,), queue=p.queue).id for i in range(5)}
    refused = add.apply_async(("refuse me",), queue=p.queue).id
    # Routed on Redis through an exchange the app here does not know: it reaches no queue here.
    with p.old.connection_for_write() as conn:
        kombu.Queue(p.queue, kombu.Exchange("nowhere-x", "direct"), routing_key="nowhere")(conn.default_channel).declare()
    unroutable = add.apply_async(("unroutable",), exchange="nowhere-x", routing_key="nowhere").id
    assert unroutable in on_redis(p)
    moved |= {add.apply_async((i,), queue=p.queue).id for i in range(5, 10)}
    out = subprocess.run(migrate_from(p), env=p.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert refused in out.stderr and "refused by a test trigger" in out.stderr, out.stderr
    assert unroutable in out.stderr and "routes to no queue" in out.stderr, out.stderr
    summary = json.loads(out.stdout)
    assert summary["moved"] == 10 and summary["left"] == {p.queue: 2}
    assert sorted(m["task_id"] for m in summary["left_behind"]) == sorted([refused, unroutable])
    assert stored_here(p) == moved
    assert on_redis(p) == {refused, unroutable}, "what could not be stored here must stay on Redis"
