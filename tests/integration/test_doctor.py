"""`celery durable doctor` against a real server: each threat to the queue is named, with who and what to do.

Everything that holds the xmin horizon (a snapshot, a prepared transaction, a
replication slot, a standby's feedback) happens on a private cluster of this
module (prepared transactions and slots need settings the shared servers lack,
and held there they would slow every other test). Each test ends what it
started, even when it fails; the cluster is destroyed at the end.
"""

from __future__ import annotations

import json
import re
import time

import psycopg
import pytest
from click.testing import CliRunner

from celery_durable.cli import durable
from tests.support.pgcluster import start_cluster

pytestmark = pytest.mark.own_servers

DB = "shop"
SCHEMA = "celery_durable"


@pytest.fixture(scope="module")
def cluster():
    cluster = start_cluster(conf=["max_prepared_transactions = 4", "wal_level = logical",
                                  "max_replication_slots = 4", "hot_standby_feedback = on"])
    try:
        for role in ("owner", "app", "nobody"):
            cluster.execute(f"CREATE ROLE {role} LOGIN")
        cluster.create_database(DB, owner="owner")
        owner = cluster.url(DB, "owner")
        assert CliRunner().invoke(durable, ["--url", owner, "migrate"]).exit_code == 0
        grants = CliRunner().invoke(durable, ["--url", owner, "sql", "--grants", "app"]).output
        with psycopg.connect(owner, autocommit=True) as conn:
            conn.execute(grants)
        yield cluster
    finally:
        cluster.destroy()


def doctor(url: str, *args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(durable, ["--url", url, "doctor", "--json", *args], catch_exceptions=False)
    assert result.exit_code in (0, 2), result.output
    return result.exit_code, json.loads(result.output)


def findings(data: dict, check: str, severity: str | None = None) -> list[dict]:
    return [f for f in data["findings"] if f["check"] == check and (severity is None or f["severity"] == severity)]


def holder_finding(data: dict, kind: str, name: str) -> dict | None:
    return next((f for f in findings(data, "horizon") if (f["facts"].get("holder") or {}).get("kind") == kind
                 and f["facts"]["holder"]["name"] == name and f["severity"] in ("warning", "critical")), None)


def wait_for(check, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


@pytest.fixture
def session(cluster):
    """``session(role, application_name)``: an open connection, closed after the test whatever happens."""
    opened = []

    def open_(role: str = "owner", name: str = "pytest") -> psycopg.Connection:
        opened.append(psycopg.connect(cluster.url(DB, role, application_name=name), autocommit=True))
        return opened[-1]

    yield open_
    for conn in opened:
        conn.close()


def test_a_held_snapshot_is_named_with_its_pid_user_application_client_age_and_query(cluster, session):
    report = session("owner", "nightly-report")
    report.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    report.execute("SELECT count(*) AS report_rows FROM pg_class")
    url = cluster.url(DB, "owner")

    status, data = wait_for(lambda: (lambda r: r if holder_finding(r[1], "backend", "nightly-report") else None)(
        doctor(url, "--warning-age", "0.5")), "the doctor to name the held snapshot")
    assert status == 0  # a warning only
    found = holder_finding(data, "backend", "nightly-report")
    holder = found["facts"]["holder"]
    assert found["severity"] == "warning"
    assert holder["pid"] == report.info.backend_pid and holder["username"] == "owner"
    assert holder["client"].startswith("127.0.0.1:") and "report_rows" in holder["query"]
    assert holder["state"] == "idle in transaction" and holder["age_seconds"] >= 0.5
    assert f"pg_terminate_backend({report.info.backend_pid})" in found["advice"]

    status, data = wait_for(lambda: (lambda r: r if r[0] == 2 else None)(doctor(url, "--critical-age", "1")),
                            "the snapshot to become critical")
    assert holder_finding(data, "backend", "nightly-report")["severity"] == "critical"
    text = CliRunner().invoke(durable, ["--url", url, "doctor", "--critical-age", "1"]).output
    assert re.search(rf"^CRITICAL +horizon +session pid {report.info.backend_pid} \(nightly-report, user owner",
                     text, re.M), text
    assert "1 critical" in text and "exit status 2" in text

    report.execute("ROLLBACK")
    _, data = wait_for(lambda: (lambda r: r if not holder_finding(r[1], "backend", "nightly-report") else None)(
        doctor(url, "--warning-age", "0.5")), "the finding to go once the snapshot ended")


def test_a_forgotten_prepared_transaction_is_critical_with_how_to_end_it(cluster, session):
    url = cluster.url(DB, "owner")
    prepared = session("owner")
    prepared.execute("BEGIN")
    prepared.execute(f"INSERT INTO {SCHEMA}.queue (name) VALUES ('two-phase')")
    prepared.execute("PREPARE TRANSACTION 'order-42'")
    try:
        status, data = wait_for(lambda: (lambda r: r if r[0] == 2 else None)(
            doctor(url, "--warning-age", "0.2", "--critical-age", "0.5")), "the prepared transaction to be critical")
        found = holder_finding(data, "prepared", "order-42")
        assert found["severity"] == "critical" and found["facts"]["holder"]["username"] == "owner"
        assert "ROLLBACK PREPARED 'order-42'" in found["advice"]
    finally:
        cluster.execute("ROLLBACK PREPARED 'order-42'", dbname=DB)


def test_an_inactive_replication_slot(cluster):
    url = cluster.url(DB, "owner")
    cluster.execute("SELECT pg_create_logical_replication_slot('stale_cdc', 'pgoutput')", dbname=DB)
    try:
        _, data = doctor(url)
        found = holder_finding(data, "slot_catalog", "stale_cdc")
        assert found["severity"] == "warning" and found["facts"]["holder"]["state"] == "inactive"
        assert "system catalogs" in found["advice"] and "pg_drop_replication_slot('stale_cdc')" in found["advice"]
    finally:
        cluster.execute("SELECT pg_drop_replication_slot('stale_cdc')")


@pytest.mark.slow
def test_a_standbys_feedback_then_its_abandoned_slot(cluster, session):
    """A standby with hot_standby_feedback holds the horizon through its walsender; gone, its slot holds it."""
    url = cluster.url(DB, "owner")
    cluster.execute("SELECT pg_create_physical_replication_slot('replica_1')")
    plain = cluster.add_standby(name="replica_0", synchronous=False)
    slotted = cluster.add_standby(name="replica_1", synchronous=False, conf=["primary_slot_name = 'replica_1'"])
    try:
        data = wait_for(lambda: (lambda r: r if any(
            h["kind"] == "standby" and h["name"] == "replica_0" for h in _holders(r[1])) else None)(doctor(url)),
            "the standby's feedback to show as a holder")[1]
        assert findings(data, "standbys")[0]["facts"]["standbys"][0]["application_name"] == "replica_0"
        slotted.stop("fast")
        status, data = wait_for(lambda: (lambda r: r if holder_finding(r[1], "slot", "replica_1") else None)(
            doctor(url)), "the abandoned slot to be named")
        assert status == 2 and holder_finding(data, "slot", "replica_1")["severity"] == "critical"
    finally:
        plain.destroy()
        slotted.destroy()
        cluster.execute("SELECT pg_drop_replication_slot('replica_1')")


def _holders(data: dict) -> list[dict]:
    return next(f for f in findings(data, "horizon", "info"))["facts"]["holders"]


def test_dead_rows_the_held_horizon_keeps(cluster, session):
    url = cluster.url(DB, "owner")
    report = session("owner", "bi-dashboard")
    report.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    report.execute("SELECT 1")
    writer = session("owner")
    writer.execute(f"INSERT INTO {SCHEMA}.message (queue, payload) SELECT 'dead', '{{}}' FROM generate_series(1, 12000)")
    writer.execute(f"DELETE FROM {SCHEMA}.message WHERE queue = 'dead'")
    writer.execute(f"VACUUM {SCHEMA}.message")  # cannot remove them: the snapshot may still see them
    data = wait_for(lambda: (lambda r: r if findings(r[1], "tables", "warning") else None)(doctor(url)),
                    "the dead rows to be reported")[1]
    dead = findings(data, "tables", "warning")[0]
    assert "message holds 12,000 dead rows" in dead["title"] and "xmin horizon" in dead["advice"]
    # The holder of the horizon behind them is named even below the warning age.
    holder = next(f for f in findings(data, "horizon", "warning") if f["facts"]["holder"]["name"] == "bi-dashboard")
    assert holder["facts"]["message_dead_rows"] >= 12000


def test_a_dml_only_role_sees_the_holder_but_not_its_query_and_is_told_so(cluster, session):
    report = session("owner", "nightly-report")
    report.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    report.execute("SELECT 1")
    status, data = doctor(cluster.url(DB, "app"))
    assert status == 0, data
    assert not [f for f in data["findings"] if "this check failed" in f["title"]]
    hidden = [h for h in _holders(data) if h["pid"] == report.info.backend_pid]
    assert hidden and hidden[0]["hidden"] and hidden[0]["name"] == "nightly-report" and hidden[0]["query"] is None
    access = findings(data, "access")[0]
    assert "GRANT pg_monitor TO app" in access["advice"]
    assert findings(data, "grants", "ok")


def test_a_role_without_grants_is_told_which_and_how_to_give_them(cluster):
    status, data = doctor(cluster.url(DB, "nobody"))
    assert status == 2
    lacking = findings(data, "grants", "critical")[0]
    missing = {(m["kind"], m["object"], m["privilege"]) for m in lacking["facts"]["missing"]}
    assert ("schema", SCHEMA, "USAGE") in missing and ("table", "message", "INSERT") in missing
    assert ("table", "schema_version", "INSERT") not in missing  # grants.sql revokes it
    assert "celery-durable sql --grants nobody" in lacking["advice"]
    # What it may not read is said, not a crash; the rest of the checks still run.
    assert findings(data, "horizon") and findings(data, "connections") and findings(data, "autovacuum", "ok")
    # The owner checking the role on its behalf gets the same answer.
    _, as_owner = doctor(cluster.url(DB, "owner"), "--role", "nobody")
    assert findings(as_owner, "grants", "critical")[0]["facts"]["missing"] == lacking["facts"]["missing"]


def test_connections_ours_by_component_and_the_schema_version(cluster, session):
    session("app", "shop:worker")
    session("app", "shop:fetcher")
    _, data = doctor(cluster.url(DB, "owner"))
    used = findings(data, "connections")[0]
    assert used["facts"]["ours"]["shop:worker (shop)"] == 1 and used["facts"]["ours"]["shop:fetcher (shop)"] == 1
    assert used["facts"]["available"] == used["facts"]["max_connections"] - used["facts"]["superuser_reserved"] \
        - used["facts"]["reserved"]
    assert findings(data, "schema", "ok")[0]["facts"]["version"] == findings(data, "schema")[0]["facts"]["code_version"]


def test_a_missing_schema_is_critical(cluster):
    status, data = doctor(cluster.url("postgres", "postgres"), "--schema", "nowhere")
    assert status == 2 and "does not exist" in findings(data, "schema", "critical")[0]["title"]
