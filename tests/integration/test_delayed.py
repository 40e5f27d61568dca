"""Delayed messages on the event loop: a worker keeps timers for its own queues only, and they fire.

Every publish of a message that waits in the table (an ETA past
``native_delay_threshold``) notifies every listener of its due time. A worker
used to keep a heap entry and a hub timer for each, whatever its queue. Here
a consumer of ``mine`` runs Kombu's real event loop (``Hub``) while 300
delayed messages go to ``theirs``. The safety poll is ten minutes away, so
only the due-time timer can deliver ``mine``'s own delayed message on time.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from time import monotonic, time

import pytest
from kombu import Connection, Exchange, Queue
from kombu.asynchronous import Hub

import celery_durable  # noqa: F401  (registers postgresql://)

OTHERS = 300


def _eta(seconds: float) -> dict:
    return {"eta": (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat()}


def _run_until(hub: Hub, condition, timeout: float, what: str) -> None:
    deadline = monotonic() + timeout
    while not condition():
        assert monotonic() < deadline, f"timed out waiting for {what}"
        hub.run_once()


@pytest.fixture
def hub():
    loop = Hub()
    yield loop
    loop.close()


def test_timers_for_own_queues_only_and_they_fire(pg_url, schema, hub):
    options = {"schema": schema, "native_delay_threshold": 1, "polling_interval": 600}
    exchange = Exchange("delayed", "direct")
    mine, theirs = Queue("mine", exchange, "mine"), Queue("theirs", exchange, "theirs")
    received: list[tuple[str, float]] = []
    with Connection(pg_url, transport_options=options) as conn, Connection(pg_url, transport_options=options) as pub:
        with pub.Producer() as producer:
            producer.publish("warm-up", exchange=exchange, routing_key="theirs", declare=[mine, theirs])
        consumer = conn.Consumer([mine], callbacks=[lambda body, message: (received.append((body, time())),
                                                                            message.ack())])
        consumer.consume()
        conn.register_with_event_loop(hub)
        timers_before = len(hub.timer.queue)
        with pub.Producer() as producer:
            for i in range(OTHERS):
                producer.publish(f"theirs-{i}", exchange=exchange, routing_key="theirs", headers=_eta(3600 + i))
            due = time() + 3
            producer.publish("mine-delayed", exchange=exchange, routing_key="mine", headers=_eta(3))
            producer.publish("marker", exchange=exchange, routing_key="mine")
        # Notifications arrive in commit order: once the marker is in, every due time was announced.
        _run_until(hub, lambda: any(body == "marker" for body, _ in received), 30, "the marker")
        assert len(hub.timer.queue) <= timers_before + 1, "a timer per delayed message of another queue"
        assert len(conn.transport.delivery.delayed) == 1

        _run_until(hub, lambda: any(body == "mine-delayed" for body, _ in received), 30,
                   "the delayed message (the safety poll is ten minutes away)")
        at = dict(received)["mine-delayed"]
        assert at >= due - 0.5, "delivered before its ETA"
        consumer.cancel()
