"""The exporter's port under trouble: a scrape hung on the database, several at once, the address it binds.

Each test starts ``celery-durable exporter`` as a subprocess and scrapes it over
HTTP as Prometheus would. A scrape must answer, bounded, even while the
database cannot (a lock held on the message table), with the last figures it
read marked stale; the database sees at most one of its queries at a time and
never keeps working on one past the exporter's timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import psycopg
import pytest
from kombu import Connection

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

#: Longest a test waits for one HTTP answer; the exporter's own bound is far below it.
HTTP_DEADLINE = 30


def figures(text: str) -> dict[tuple[str, str], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, next(iter(sample.labels.values()), ""))] = sample.value
    return found


def wait_until(check, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


class Exporter:
    """``celery-durable exporter`` in a subprocess; ``url`` is the /metrics address it printed."""

    def __init__(self, pg_url: str, schema: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery_durable.cli", "--url", pg_url, "--schema", schema,
             "exporter", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("CELERY_DURABLE_")},
        )
        line = self.proc.stdout.readline()
        if "/metrics" not in line:
            self.proc.kill()
            raise AssertionError(line + self.proc.stdout.read())
        self.url = line.split(" on ", 1)[1].strip()

    def scrape(self, url: str | None = None) -> dict[tuple[str, str], float]:
        with urllib.request.urlopen(url or self.url, timeout=HTTP_DEADLINE) as response:
            return figures(response.read().decode())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def queued(pg_url, schema):
    """One message waiting in queue ``celery`` (this creates the schema and the queue)."""
    with Connection(pg_url, transport_options={"schema": schema}) as conn:
        queue = conn.SimpleQueue("celery")
        queue.put({"n": 1})
        queue.close()


@pytest.fixture
def exporter(pg_url, schema, queued):
    started = []

    def start(*args: str) -> Exporter:
        started.append(Exporter(pg_url, schema, *args))
        return started[-1]

    yield start
    for one in started:
        one.stop()


@pytest.fixture
def locked(pg_url, schema):
    """``lock()`` takes an ACCESS EXCLUSIVE lock on the test's message table until the test ends.

    The locking transaction reads nothing, so it holds no snapshot: only this
    test's table is affected.
    """
    holder = psycopg.connect(pg_url, autocommit=True)
    relation = f'"{schema}".message'

    def lock() -> int:
        holder.execute("BEGIN")
        holder.execute(f"LOCK TABLE {relation} IN ACCESS EXCLUSIVE MODE")
        return holder.info.backend_pid

    yield lock
    holder.close()


def _waiting_on(pg_url: str, schema: str) -> int:
    """Sessions waiting for a lock on the test's message table."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = %s::regclass",
            (f'"{schema}".message',)).fetchone()[0]


def test_scrapes_answer_while_the_database_is_stuck_and_the_database_stops_working_for_them(
        exporter, locked, pg_url, schema):
    served = exporter("--addr", "127.0.0.1")
    assert served.scrape()[("celery_durable_queue_ready", "celery")] == 1
    locked()
    # Figures read moments ago may still be served as fresh; the next read finds the database stuck.
    wait_until(lambda: served.scrape().get(("celery_durable_scrape_success", "")) == 0,
               "a scrape that says its figures are stale")

    answers, errors = [], []

    def scrape() -> None:
        try:
            answers.append(served.scrape())
        except (urllib.error.URLError, OSError) as exc:  # TimeoutError: the scrape hung
            errors.append(exc)

    most_waiting = 0
    threads = [threading.Thread(target=scrape) for _ in range(3)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        most_waiting = max(most_waiting, _waiting_on(pg_url, schema))
        time.sleep(0.1)
    assert not errors, f"scrapes hung while the message table was locked: {errors}"
    for answer in answers:  # the last good figures, marked stale
        assert answer[("celery_durable_queue_ready", "celery")] == 1
        assert answer[("celery_durable_scrape_success", "")] == 0
        assert answer[("celery_durable_scrape_age_seconds", "")] > 0
    assert most_waiting <= 1, "more than one query of the exporter at a time against the database"
    # statement_timeout: the database does not keep working (here: waiting) for a scrape nobody awaits.
    wait_until(lambda: _waiting_on(pg_url, schema) == 0, "the exporter's query still waits on the lock")


def test_the_figures_are_fresh_again_once_the_database_answers(exporter, pg_url, schema):
    served = exporter("--addr", "127.0.0.1")
    holder = psycopg.connect(pg_url, autocommit=True)
    try:
        holder.execute("BEGIN")
        holder.execute(f'LOCK TABLE "{schema}".message IN ACCESS EXCLUSIVE MODE')
        stale = served.scrape()
        assert stale[("celery_durable_scrape_success", "")] == 0
        assert ("celery_durable_queue_ready", "celery") not in stale  # nothing read yet: no figures
    finally:
        holder.close()
    fresh = wait_until(lambda: (lambda f: f if f[("celery_durable_scrape_success", "")] == 1 else None)(
        served.scrape()), "a successful scrape after the lock was released")
    assert fresh[("celery_durable_queue_ready", "celery")] == 1


def test_bind_chooses_the_interface(exporter):
    served = exporter("--bind", "127.0.0.2")
    assert served.url.startswith("http://127.0.0.2:")
    assert served.scrape()[("celery_durable_queue_ready", "celery")] == 1
    elsewhere = served.url.replace("127.0.0.2", "127.0.0.1")
    with pytest.raises(urllib.error.URLError):
        served.scrape(elsewhere)


def test_all_interfaces_by_default(exporter):
    served = exporter()
    assert served.url.startswith("http://0.0.0.0:")
    for host in ("127.0.0.1", "127.0.0.2"):
        assert served.scrape(served.url.replace("0.0.0.0", host))[("celery_durable_queue_ready", "celery")] == 1


def test_the_metrics_command_gives_up_with_an_error_while_the_database_is_stuck(queued, locked, pg_url, schema):
    locked()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "celery_durable.cli", "--url", pg_url, "--schema", schema, "metrics"],
            capture_output=True, text=True, timeout=HTTP_DEADLINE,
            env={k: v for k, v in os.environ.items() if not k.startswith("CELERY_DURABLE_")})
    except subprocess.TimeoutExpired:
        pytest.fail("`celery-durable metrics` hung while the message table was locked")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "statement timeout" in done.stderr and "Traceback" not in done.stderr
    assert _waiting_on(pg_url, schema) == 0
