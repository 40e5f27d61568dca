"""Bad input: malformed rows, undecodable messages, hostile names, wrong URLs."""

from __future__ import annotations

import kombu
import pytest

from tests.apps.transport_app import Harness, wait_for

pytestmark = pytest.mark.slow


def _dead_letters(h: Harness):
    return h.q("SELECT queue, reason, payload FROM {s}.dead_letter ORDER BY dead_at")


MALFORMED = [
    "not json",
    "[1, 2]",
    '{"properties": "x"}',
    '{"body": "e30=", "headers": {}}',
    '{"properties": {"body_encoding": "base64"}, "body": "%%% not base64", "content-type": "application/json"}',
]


@pytest.mark.parametrize("raw", MALFORMED)
def test_malformed_row_is_dead_lettered_and_the_worker_goes_on(h, raw):
    worker = h.start(concurrency=1)
    h.q("INSERT INTO {s}.message (queue, payload) VALUES ('celery', %s)", raw)
    wait_for(lambda: _dead_letters(h), 30, "the malformed row to be dead-lettered")
    [(queue, reason, payload)] = _dead_letters(h)
    assert queue == "celery" and payload == raw
    assert "undecodable" in reason
    h.task("record").delay("after-bad-row")
    wait_for(lambda: h.executions_of("after-bad-row") == 1, 30, "a later task to run")
    assert worker.proc.poll() is None
    assert h.messages() == 0


def test_message_celery_cannot_decode_is_dead_lettered_not_lost(h):
    worker = h.start(concurrency=1)
    with kombu.Connection(h.url, transport_options=h.app.conf.broker_transport_options) as conn:
        producer = conn.Producer()
        producer.publish(b"\x00\x01 opaque", exchange="celery", routing_key="celery",
                         content_type="application/x-unknown", content_encoding="binary")
    h.task("record").delay("after-undecodable")
    wait_for(lambda: h.executions_of("after-undecodable") == 1, 30, "a later task to run")
    assert worker.proc.poll() is None
    rows = wait_for(lambda: _dead_letters(h), 30,
                    "the undecodable message to be dead-lettered")
    [(queue, reason, payload)] = rows
    assert queue == "celery"
    assert "x-unknown" in payload
    assert "undecodable" in reason and "application/x-unknown" in reason, reason
    assert h.messages() == 0


NAMES = ['"; DROP TABLE x; --', "ü名", "a'b"]


@pytest.mark.parametrize("name", NAMES)
def test_hostile_names_are_plain_data(h, name):
    h.q("CREATE TABLE {s}.x (id int)")
    options = h.app.conf.broker_transport_options
    for exchange_type in ("direct", "topic", "fanout"):
        exchange = kombu.Exchange(f"{name}-{exchange_type}", type=exchange_type)
        queue = kombu.Queue(f"{name}-q-{exchange_type}", exchange, routing_key=f"{name}.rk")
        with kombu.Connection(h.url, transport_options=options) as conn:
            with conn.SimpleQueue(queue) as simple:
                conn.Producer().publish({"name": name}, exchange=exchange, routing_key=f"{name}.rk",
                                        declare=[queue])
                message = simple.get(timeout=10)
                assert message.payload == {"name": name}
                assert message.delivery_info["routing_key"] == f"{name}.rk"
                message.ack()
        assert h.one("SELECT count(*) FROM {s}.queue WHERE name = %s", f"{name}-q-{exchange_type}") == 1
        assert h.one("SELECT count(*) FROM {s}.exchange WHERE name = %s", f"{name}-{exchange_type}") == 1
        assert h.one("SELECT routing_key FROM {s}.binding WHERE queue = %s",
                     f"{name}-q-{exchange_type}") == f"{name}.rk"
    assert h.one("SELECT count(*) FROM {s}.x") == 0  # still there
    assert h.messages() == 0


def test_celery_queue_with_hostile_name(h):
    name = "ü名 a'b \"; DROP TABLE x; --"
    h.q("CREATE TABLE {s}.x (id int)")
    h.start("-Q", name, concurrency=1)
    h.task("record").apply_async(("odd-queue",), queue=name)
    wait_for(lambda: h.executions_of("odd-queue") == 1, 30, "the task on the oddly named queue to run")
    assert h.one("SELECT count(*) FROM {s}.queue WHERE name = %s", name) == 1
    assert h.one("SELECT count(*) FROM {s}.x") == 0


@pytest.mark.parametrize("url", [
    "postgresql://u:secretpw@127.0.0.1:59999/db",
    "postgres://u:secretpw@127.0.0.1:59999/db",
])
def test_unreachable_server_gives_one_clear_error_without_the_password(url):
    conn = kombu.Connection(url, connect_timeout=5, transport_options={"connect_timeout": 2})
    with pytest.raises(Exception) as info:
        conn.connect()
    message = str(info.value)
    assert "127.0.0.1" in message and "59999" in message and "db" in message, message
    assert "secretpw" not in message, message
    assert "secretpw" not in repr(info.value)
    assert isinstance(info.value, conn.connection_errors + (kombu.exceptions.OperationalError,)), type(info.value)
    conn.release()


def test_wrong_database_name_is_named(pg_url):
    base = pg_url.rsplit("/", 1)[0]
    conn = kombu.Connection(f"{base}/no_such_db_cd", transport_options={"connect_timeout": 2})
    with pytest.raises(Exception) as info:
        conn.connect()
    assert "no_such_db_cd" in str(info.value), str(info.value)
    conn.release()
