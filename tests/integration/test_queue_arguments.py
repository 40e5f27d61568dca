"""Queue arguments: x-max-priority is honoured as on RabbitMQ; the ones we do not honour are named."""

from __future__ import annotations

import logging

from kombu import Connection, Exchange, Queue

import celery_durable  # noqa: F401  (registers postgresql://)


def test_x_max_priority_caps_the_priority(pg_url, schema):
    """Above the queue's maximum a priority counts as the maximum: those messages keep their order."""
    exchange = Exchange("capped", "direct")
    queue = Queue("capped", exchange, "capped", max_priority=5)
    with Connection(pg_url, transport_options={"schema": schema}) as conn:
        simple = conn.SimpleQueue(queue)
        for priority in (9, 5, 7, 1):
            simple.put({"p": priority}, priority=priority)  # through the exchange
        with conn.Producer() as producer:  # and straight to the queue
            producer.publish({"p": 8}, routing_key="capped", priority=8)
        got = []
        for _ in range(5):
            message = simple.get(timeout=10)
            got.append(message.payload["p"])
            message.ack()
        simple.close()
    assert got == [9, 5, 7, 8, 1]


def test_unhonoured_arguments_are_named_once(pg_url, schema, caplog):
    arguments = {"x-max-length": 10, "x-dead-letter-exchange": "dlx", "x-queue-type": "quorum", "x-message-ttl": 60000}
    queue = Queue("limited", Exchange("limited", "direct"), "limited", queue_arguments=arguments)
    with caplog.at_level(logging.WARNING, logger="celery_durable.transport.channel"):
        with Connection(pg_url, transport_options={"schema": schema}) as conn:
            queue(conn.default_channel).declare()
            queue(conn.default_channel).declare()
    said = [r.getMessage() for r in caplog.records if r.name == "celery_durable.transport.channel"]
    assert len(said) == 1, said
    assert "'limited'" in said[0]
    assert "x-max-length (the queue has no length limit)" in said[0]
    assert "x-dead-letter-exchange (rejected, too-often-delivered and undecodable messages go to the dead_letter table)" in said[0]
    assert "x-queue-type (ignored)" in said[0]
    assert "x-message-ttl" not in said[0]
