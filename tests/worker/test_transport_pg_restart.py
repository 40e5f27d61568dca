"""PostgreSQL restarted under load: the worker reconnects by itself and no acks_late task is lost.

The machine's shared PostgreSQL is never touched: the test starts its own
private cluster (tests/support/pgcluster.py) and stops and starts it.
"""

from __future__ import annotations

import pytest

from tests.apps.transport_app import Harness, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def private_server(pg_cluster):
    return pg_cluster()


def test_worker_survives_postgres_restart_without_losing_tasks(private_server, schema, worker_env, workers):
    url = private_server.url()
    h = Harness(url, schema, {**worker_env, "CELERY_DURABLE_URL": url}, workers)
    total = 300
    try:
        tags = [f"r{i}" for i in range(total)]
        for tag in tags:
            h.task("record_late").delay(tag, sleep=0.02)
        worker = h.start(concurrency=2)
        wait_for(lambda: h.distinct_executed() >= 30, 60, "30 executions before the restart")
        private_server.stop("fast")
        # Down long enough for the worker to notice and to fail at least one reconnection attempt.
        wait_for(lambda: "Cannot connect to" in worker.log().split("Connection to broker lost", 1)[-1]
                 or worker.proc.poll() is not None,
                 60, "the worker to fail a reconnection while the database is down")
        assert "cannot use PostgreSQL at postgres@" in worker.log()  # a clear error naming the target
        private_server.start()
        wait_for(lambda: h.distinct_executed() == total, 120,
                 f"all {total} tasks to run after the restart", interval=0.5)
        wait_for(lambda: h.messages("celery") == 0, 60, "the task queue to empty")
        assert set(h.executed()) == set(tags)
        assert worker.proc.poll() is None, "the worker died instead of reconnecting"
        # Unacked messages could not be given back while the server was down: a warning, not Kombu's
        # "UNABLE TO RESTORE" error and emergency dump (they were never at risk).
        assert "UNABLE TO RESTORE" not in worker.log() and "emergency" not in worker.log().lower()
        # Still consuming on the new connection:
        h.task("record").delay("after-restart")
        wait_for(lambda: h.executions_of("after-restart") == 1, 30, "a task sent after the restart to run")
    finally:
        h.close()
