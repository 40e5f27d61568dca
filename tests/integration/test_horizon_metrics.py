"""The metrics name what holds the xmin horizon and how long, and show the dead rows it keeps in `message`.

On a private cluster (a held snapshot, a prepared transaction and a slot there
slow nobody else); each test ends what it started.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import psycopg
import pytest
from click.testing import CliRunner

from celery_durable.cli import durable
from tests.support.pgcluster import start_cluster

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

pytestmark = pytest.mark.own_servers

DB = "shop"
SCHEMA = "celery_durable"


@pytest.fixture(scope="module")
def cluster():
    cluster = start_cluster(conf=["max_prepared_transactions = 4", "wal_level = logical", "max_replication_slots = 4"])
    try:
        cluster.execute("CREATE ROLE owner LOGIN")
        cluster.execute("CREATE ROLE app LOGIN")
        cluster.create_database(DB, owner="owner")
        owner = cluster.url(DB, "owner")
        assert CliRunner().invoke(durable, ["--url", owner, "migrate"]).exit_code == 0
        grants = CliRunner().invoke(durable, ["--url", owner, "sql", "--grants", "app"]).output
        with psycopg.connect(owner, autocommit=True) as conn:
            conn.execute(grants)
        yield cluster
    finally:
        cluster.destroy()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """``{(name, ((label, value), ...)): value}``."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def horizon(found: dict, unit: str, kind: str, name: str) -> float | None:
    return found.get((f"celery_durable_xmin_horizon_age_{unit}", (("application_name", name), ("kind", kind))))


def scrape_once(url: str) -> dict:
    result = CliRunner().invoke(durable, ["--url", url, "metrics"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return samples(result.output)


def wait_for(check, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


def test_each_holder_by_kind_and_application_name(cluster):
    url = cluster.url(DB, "owner")
    cluster.execute("SELECT pg_create_logical_replication_slot('cdc', 'pgoutput')", dbname=DB)
    report = psycopg.connect(cluster.url(DB, "owner", application_name="nightly-report"), autocommit=True)
    prepared = psycopg.connect(url, autocommit=True)
    try:
        report.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        report.execute("SELECT 1")
        prepared.execute("BEGIN")
        prepared.execute(f"INSERT INTO {SCHEMA}.queue (name) VALUES ('two-phase')")
        prepared.execute("PREPARE TRANSACTION 'order-7'")
        found = wait_for(lambda: (lambda f: f if (horizon(f, "seconds", "backend", "nightly-report") or 0) > 0
                                  else None)(scrape_once(url)), "the snapshot's age to show")
        assert horizon(found, "xids", "backend", "nightly-report") >= 1
        assert horizon(found, "seconds", "prepared", "order-7") > 0
        assert horizon(found, "xids", "slot_catalog", "cdc") >= 1
    finally:
        report.close()
        prepared.close()
        cluster.execute("ROLLBACK PREPARED 'order-7'", dbname=DB)
        cluster.execute("SELECT pg_drop_replication_slot('cdc')")
    after = scrape_once(url)
    assert horizon(after, "seconds", "backend", "nightly-report") is None
    assert horizon(after, "seconds", "prepared", "order-7") is None


def test_the_dead_rows_a_held_horizon_keeps_and_the_last_vacuum(cluster):
    url = cluster.url(DB, "owner")
    report = psycopg.connect(cluster.url(DB, "owner", application_name="bi"), autocommit=True)
    try:
        report.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        report.execute("SELECT 1")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"INSERT INTO {SCHEMA}.message (queue, payload) SELECT 'gone', '{{}}' FROM generate_series(1, 3000)")
            conn.execute(f"DELETE FROM {SCHEMA}.message WHERE queue = 'gone'")
            conn.execute(f"VACUUM {SCHEMA}.message")  # may not remove them: the snapshot may still see them
        # (PostgreSQL's statistics may count them twice: the DELETE's and VACUUM's reports)
        found = wait_for(lambda: (lambda f: f if f.get(("celery_durable_message_dead_rows", ()), 0) >= 3000 else None)(
            scrape_once(url)), "the dead rows to show")
        assert found[("celery_durable_message_last_vacuum_timestamp_seconds", ())] > 0
    finally:
        report.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"VACUUM {SCHEMA}.message")
    wait_for(lambda: scrape_once(url).get(("celery_durable_message_dead_rows", ())) == 0,
             "VACUUM to remove them once the snapshot ended")


def test_an_exporter_of_a_dml_only_role_times_a_holder_it_may_not_see_the_start_of(cluster):
    report = psycopg.connect(cluster.url(DB, "owner", application_name="nightly-report"), autocommit=True)
    exporter = subprocess.Popen(
        [sys.executable, "-m", "celery_durable.cli", "--url", cluster.url(DB, "app"), "exporter", "--port", "0",
         "--bind", "127.0.0.1", "--min-interval", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("CELERY_DURABLE_")})
    try:
        report.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        report.execute("SELECT 1")
        line = exporter.stdout.readline()
        assert "/metrics" in line, line
        url = line.split(" on ", 1)[1].strip()

        def scrape() -> dict:
            with urllib.request.urlopen(url, timeout=30) as response:
                return samples(response.read().decode())

        first = wait_for(lambda: (lambda f: f if horizon(f, "xids", "backend", "nightly-report") is not None
                                  else None)(scrape()), "the hidden holder to show")
        since = horizon(first, "seconds", "backend", "nightly-report")
        wait_for(lambda: (horizon(scrape(), "seconds", "backend", "nightly-report") or 0) > since,
                 "the exporter to time the holder it first saw")
    finally:
        report.close()
        exporter.terminate()
        exporter.wait(timeout=30)
