"""Prometheus figures: `durable metrics` and `durable exporter`, parsed with prometheus-client's parser.

The figures must move as a person would expect while tasks are queued, run,
delayed and dead-lettered by a real worker, and a durable chain finishes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest
from celery import Celery
from click.testing import CliRunner

from celery_durable import durable_chain
from celery_durable.cli import durable
from tests.apps import basic

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

T = "tests.apps.basic."


def figures(text: str) -> dict[tuple[str, str], float]:
    """``{(sample name, label value): value}`` of an exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, next(iter(sample.labels.values()), ""))] = sample.value
    return found


def wait_until(read, check, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if check(value):
            return value
        assert time.monotonic() < deadline, f"{what}; last figures: {value}"
        time.sleep(0.2)


@pytest.fixture
def client(worker_env):
    app = Celery("client", set_as_current=False)
    app.conf.update(basic.config(worker_env))
    yield app
    app.close()


def test_metrics_move_as_tasks_are_queued_run_and_dead_lettered(client, workers, pg_url, schema):
    runner = CliRunner()

    def scrape():
        result = runner.invoke(durable, ["--url", pg_url, "--schema", schema, "metrics"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return figures(result.output)

    for n in range(3):
        client.send_task(T + "record", args=[f"m{n}"])
    client.send_task(T + "record", args=["later"], countdown=600)  # waits in the table
    client.send_task(T + "no_such_task")  # the worker rejects it: a dead letter
    before = scrape()
    assert before[("celery_durable_queue_depth", "celery")] == 5
    assert before[("celery_durable_queue_ready", "celery")] == 4
    assert before[("celery_durable_queue_delayed", "celery")] == 1
    assert before[("celery_durable_queue_oldest_age_seconds", "celery")] >= 0
    assert ("celery_durable_dead_letters", "celery") not in before

    workers("tests.apps.basic")
    after = wait_until(scrape, lambda f: f.get(("celery_durable_dead_letters", "celery")) == 1
                       and f[("celery_durable_queue_depth", "celery")] == 1, "the worker to drain the queue")
    assert after[("celery_durable_queue_ready", "celery")] == 0  # only the delayed one is left
    assert after[("celery_durable_queue_delayed", "celery")] == 1
    assert after[("celery_durable_queue_leased", "celery")] == 0

    wf = durable_chain(client.signature(T + "add", args=(1, 2)), client.signature(T + "add", args=(3,))).apply_async()
    assert wf.get(timeout=60) == 6
    done = scrape()
    assert done[("celery_durable_workflows", "succeeded")] == 1
    assert done[("celery_durable_workflows", "running")] == 0
    assert done[("celery_durable_workflows_stalled", "")] == 0


def test_exporter_serves_what_the_database_holds(client, pg_url, schema):
    client.send_task(T + "record", args=["queued"])  # creates the schema and the queue
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery_durable.cli", "--url", pg_url, "--schema", schema,
         "exporter", "--port", "0", "--addr", "127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("CELERY_DURABLE_")},
    )
    try:
        line = proc.stdout.readline()
        assert "/metrics" in line, line + proc.stdout.read() if proc.poll() is not None else line
        url = line.split(" on ", 1)[1].strip()
        assert "@" not in url

        def scrape():
            with urllib.request.urlopen(url, timeout=30) as response:
                return figures(response.read().decode())

        assert scrape()[("celery_durable_queue_ready", "celery")] == 1
        client.send_task(T + "record", args=["queued"])
        # Scrapes within --min-interval of a read share its figures: the new message shows after it.
        wait_until(scrape, lambda f: f[("celery_durable_queue_ready", "celery")] == 2, "the second message to show")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_killed_workers_message_shows_as_expired_lease_then_redelivery(client, workers, pg_url, schema, worker_env):
    runner = CliRunner()

    def scrape():
        result = runner.invoke(durable, ["--url", pg_url, "--schema", schema, "metrics"], catch_exceptions=False)
        return figures(result.output)

    env = {"CELERY_DURABLE_LEASE": "2", "CELERY_DURABLE_PREFETCH": "1"}
    first = workers("tests.apps.basic", env=env, concurrency=1)
    client.send_task(T + "record_late", args=["slow", 4])
    wait_until(scrape, lambda f: f.get(("celery_durable_queue_leased", "celery")) == 1, "the worker to lease the task")
    first.kill()
    expired = wait_until(scrape, lambda f: f[("celery_durable_queue_lease_expired", "celery")] == 1,
                         "the killed worker's lease to expire")
    assert expired[("celery_durable_queue_redeliveries", "celery")] == 0
    workers("tests.apps.basic", env=env, concurrency=1)
    again = wait_until(scrape, lambda f: f[("celery_durable_queue_redeliveries", "celery")] == 1,
                       "the message to be delivered a second time")
    assert again[("celery_durable_queue_lease_expired", "celery")] == 0
