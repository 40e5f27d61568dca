"""Result NOTIFYs reach only their waiters, and a client that never waits never holds the server.

PostgreSQL's NOTIFY queue is one per cluster: a session sent notifications it
never reads blocks in ClientWrite and holds the queue until every NOTIFY of
every application fails. Client processes here are real subprocesses
(tests/apps/result_clients.py) behind a Redis broker; workers are real
`celery worker` processes storing ~6 KB results, big enough to travel inside
their NOTIFY.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import psycopg
import pytest
from psycopg import sql

from celery_durable.db.migrate import ensure_schema
from tests.worker.test_backend_worker import BROKER

#: Result size: its meta (~6.3 KB of ASCII) travels inline in the NOTIFY.
RESULT_SIZE = 6000
#: pg_notification_queue_usage() is a fraction of the cluster's 8 GiB queue.
QUEUE_BYTES = 8 * 1024**3
TIMEOUT = 120


def wait_for(condition, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


class Client:
    """One tests.apps.result_clients process."""

    def __init__(self, url: str, schema: str, queue: str, count: int, mode: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.apps.result_clients", url, schema, BROKER, queue, str(count),
             str(RESULT_SIZE), mode],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=os.getcwd())

    def expect(self, line: str) -> None:
        got = self.proc.stdout.readline().strip()
        assert got == line, f"client said {got!r}, expected {line!r}"

    def report(self) -> dict:
        """Let it read everything the server sent it; what it received."""
        out, _ = self.proc.communicate("finish\n", timeout=TIMEOUT)
        return json.loads(out.strip().splitlines()[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def stored(url: str, schema: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql.SQL("SELECT count(*) FROM {}.result WHERE status = 'SUCCESS'")
                            .format(sql.Identifier(schema))).fetchone()[0]


@pytest.fixture
def queue() -> str:
    return f"q_{uuid.uuid4().hex[:10]}"


def start_results_worker(workers, url: str, schema: str, queue: str):
    return workers("tests.apps.results", "-Q", queue, "-n", f"{queue}@%h", "--without-gossip",
                   "--without-heartbeat", env={"CELERY_DURABLE_URL": url, "CELERY_DURABLE_BROKER": BROKER,
                                               "CELERY_DURABLE_QUEUE": queue}, concurrency=2)


def test_a_client_that_only_publishes_never_holds_the_notify_queue(pg_cluster, workers, schema, queue):
    cluster = pg_cluster()
    cluster.create_database("app")
    # Over the socket: its small buffers fill after a few dozen unread notifications, as TCP's do
    # after thousands; what follows is the same.
    url = cluster.url("app", socket=True)
    with psycopg.connect(url, autocommit=True) as conn:
        ensure_schema(conn, schema)
    count = 1000
    client = Client(url, schema, queue, count, "publish")
    try:
        client.expect("sent")
        start_results_worker(workers, url, schema, queue)
        wait_for(lambda: stored(url, schema) == count, TIMEOUT, f"{count} results stored", interval=0.5)
        with psycopg.connect(url, autocommit=True) as conn:
            # The queue's tail follows its slowest listener: back near empty once nobody lags behind.
            usage = wait_for(lambda: (u := conn.execute("SELECT pg_notification_queue_usage()").fetchone()[0])
                             * QUEUE_BYTES < 256 * 1024 or None, 15, "the NOTIFY queue to drain")
            assert usage is not None
            blocked = conn.execute(
                "SELECT pid, application_name, query FROM pg_stat_activity"
                " WHERE datname = 'app' AND wait_event = 'ClientWrite'").fetchall()
            assert blocked == [], f"sessions blocked writing to a client that does not read: {blocked}"
        assert client.report()["notifications"] == 0
    finally:
        client.kill()


def test_only_the_waiting_client_receives_results_and_only_its_own(pg_url, workers, schema, queue):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        ensure_schema(conn, schema)
    waiting = Client(pg_url, schema, queue, 40, "wait")
    publishers = [Client(pg_url, schema, queue, 100, "publish") for _ in range(2)]
    clients = [waiting, *publishers]
    try:
        for client in clients:
            client.expect("sent")
        # Started now, so the waiting client's first get() waits for its NOTIFY.
        start_results_worker(workers, pg_url, schema, queue)
        waiting.expect("done")
        wait_for(lambda: stored(pg_url, schema) == 240, TIMEOUT, "every client's results stored", interval=0.5)
        reports = [client.report() for client in clients]
    finally:
        for client in clients:
            client.kill()
    mine = reports[0]
    # The waiting client hears at most each of its own results once (one already stored when its
    # get() starts is read, not notified), and nothing of the others' 200.
    assert 0 < mine["own"] == mine["notifications"] <= 40, reports
    assert mine["notifications"] * RESULT_SIZE < mine["bytes"] < mine["notifications"] * (RESULT_SIZE + 1000), reports
    # Clients that never wait receive nothing, whatever the others' traffic.
    assert [r["notifications"] for r in reports[1:]] == [0, 0], reports
    assert [r["bytes"] for r in reports[1:]] == [0, 0], reports
