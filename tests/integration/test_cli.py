"""`celery-durable` / `celery durable` against a real database: output, JSON, errors, the -A app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types

import psycopg
import pytest
from click.testing import CliRunner
from kombu import Connection
from psycopg import sql

import celery_durable
from celery_durable.cli import conninfo_to_url, durable
from celery_durable.db import dsn, migrate

SECRET = "s3cret-pw"


@pytest.fixture
def cli(pg_url, schema):
    """Run the CLI in-process on this test's database and schema: ``cli("queues", "--json")``."""
    runner = CliRunner()

    def run(*args: str, expect: int = 0, url: str | None = pg_url):
        base = ["--schema", schema] + (["--url", url] if url else [])
        result = runner.invoke(durable, [*base, *args], catch_exceptions=False)
        assert result.exit_code == expect, result.output
        return result

    return run


@pytest.fixture
def db(pg_url, schema):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        migrate.ensure_schema(conn, schema)
        yield conn


def _q(text: str, schema: str) -> sql.Composed:
    return sql.SQL(text).format(s=sql.Identifier(schema))


def _run(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_DURABLE_")}
    full_env.update(env or {})
    return subprocess.run(args, capture_output=True, text=True, env=full_env, cwd=cwd, timeout=120)


# -- migrate and sql -------------------------------------------------------------------------------


def test_migrate_creates_then_reports_up_to_date(cli, pg_url, schema):
    first = cli("migrate")
    assert f"version {migrate.latest_version()} (created)" in first.output
    assert dsn.describe(dsn.from_url(pg_url)) in first.output
    again = json.loads(cli("migrate", "--json").output)
    assert again["version"] == migrate.latest_version() and again["previous_version"] == migrate.latest_version()
    assert again["action"] == "up to date" and again["schema"] == schema


def test_options_after_the_command(pg_url, schema):
    result = CliRunner().invoke(durable, ["migrate", "--url", pg_url, "--schema", schema])
    assert result.exit_code == 0, result.output
    assert repr(schema) in result.output


def test_url_and_schema_from_the_environment(pg_url, schema):
    env = {"CELERY_DURABLE_URL": pg_url, "CELERY_DURABLE_SCHEMA": schema}
    result = CliRunner(env=env).invoke(durable, ["migrate"])
    assert result.exit_code == 0, result.output
    assert repr(schema) in result.output


def test_sql_needs_no_database(schema):
    result = CliRunner().invoke(durable, ["sql", "--schema", schema])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == migrate.ddl(schema).strip()


def test_console_script_prints_ddl(schema):
    proc = _run(sys.executable, "-m", "celery_durable.cli", "sql", "--schema", schema)
    assert proc.returncode == 0, proc.stderr
    assert f'CREATE SCHEMA IF NOT EXISTS "{schema}"' in proc.stdout


# -- queues ----------------------------------------------------------------------------------------


def test_queues_table_and_json(cli, db, schema):
    assert "no queues" in cli("queues").output
    db.execute(_q("INSERT INTO {s}.queue (name) VALUES ('alpha'), ('empty')", schema))
    db.execute(_q(
        """INSERT INTO {s}.message (queue, payload, visible_at, lease_token, created_at) VALUES
           ('alpha', '{{}}', now(), NULL, now() - interval '90 seconds'),
           ('alpha', '{{}}', now(), NULL, now()),
           ('alpha', '{{}}', now() + interval '1 hour', NULL, now()),
           ('alpha', '{{}}', now() + interval '30 seconds', gen_random_uuid(), now())""", schema))
    rows = json.loads(cli("queues", "--json").output)
    assert [r["queue"] for r in rows] == ["alpha", "empty"]
    alpha, empty = rows
    assert (alpha["depth"], alpha["ready"], alpha["delayed"], alpha["leased"]) == (4, 2, 1, 1)
    assert 89 <= alpha["oldest_age"] < 600
    assert empty["depth"] == 0 and empty["oldest_age"] is None
    lines = cli("queues").output.splitlines()
    assert lines[0].split() == ["QUEUE", "DEPTH", "READY", "DELAYED", "LEASED", "OLDEST_AGE"]
    assert lines[1].split()[:5] == ["alpha", "4", "2", "1", "1"] and lines[1].split()[5].startswith("1m")
    assert lines[2].split() == ["empty", "0", "0", "0", "0", "-"]
    # Aligned: numbers end under the end of their header, text starts under its header.
    for header, row1, row2 in (("DEPTH", "4", "0"), ("READY", "2", "0"), ("LEASED", "1", "0")):
        end = lines[0].index(header) + len(header) - 1
        assert (lines[1][end], lines[2][end]) == (row1, row2)
    start = lines[0].index("OLDEST_AGE")
    assert lines[1][start:].startswith("1m") and lines[2][start:] == "-"


def test_queues_on_a_missing_schema_says_how_to_create_it(cli, pg_url, schema):
    result = cli("queues", expect=1)
    assert "missing" in result.output and "celery-durable migrate" in result.output
    assert dsn.describe(dsn.from_url(pg_url)) in result.output
    assert "Traceback" not in result.output
    with psycopg.connect(pg_url) as conn:
        assert migrate.current_version(conn, schema) is None  # read-only commands never create it


# -- dead letters ----------------------------------------------------------------------------------


def _dead_letters(pg_url: str, schema: str, bodies: list[str]) -> None:
    """Publish through the real transport and reject each message: the transport dead-letters them."""
    with Connection(pg_url, transport_options={"schema": schema, "polling_interval": 0.1}) as conn:
        queue = conn.SimpleQueue("dlq")
        for body in bodies:
            queue.put(body, priority=5)
        for _ in bodies:
            queue.get(timeout=10).reject()
        queue.close()


def test_dead_letters_list_requeue_purge(cli, db, pg_url, schema):
    assert "no dead letters" in cli("dead-letters").output
    _dead_letters(pg_url, schema, ["one", "two", "three"])
    rows = json.loads(cli("dead-letters", "--json").output)
    assert len(rows) == 3 and {r["queue"] for r in rows} == {"dlq"}
    assert all("rejected" in r["reason"] for r in rows)
    table = cli("dead-letters").output.splitlines()
    assert table[0].split() == ["ID", "QUEUE", "TASK", "REASON", "DELIVERY_COUNT", "DEAD_AT"] and len(table) == 4
    first, second, third = sorted(r["id"] for r in rows)

    moved = json.loads(cli("dead-letters", "--requeue", str(first), "--json").output)
    assert [m["dead_letter_id"] for m in moved] == [first] and moved[0]["queue"] == "dlq"
    message = db.execute(_q("SELECT priority, delivery_count, lease_token FROM {s}.message WHERE id = %s", schema),
                         (moved[0]["message_id"],)).fetchone()
    assert message == (5, 0, None)
    # The requeued message is delivered again, body intact.
    with Connection(pg_url, transport_options={"schema": schema, "polling_interval": 0.1}) as conn:
        queue = conn.SimpleQueue("dlq")
        got = queue.get(timeout=10)
        assert got.payload == "one"
        got.ack()
        queue.close()

    result = cli("dead-letters", "--requeue", str(first), expect=1)  # already gone
    assert f"no dead letter with id {first}" in result.output

    assert "purged 1 dead letter(s)" in cli("dead-letters", "--purge", str(second)).output
    assert [r["id"] for r in json.loads(cli("dead-letters", "--json").output)] == [third]
    cli("dead-letters", "--purge", expect=1)  # all of them only with --all
    assert "purged 1" in cli("dead-letters", "--purge", "--all", "--queue", "dlq").output
    assert json.loads(cli("dead-letters", "--json").output) == []


def test_dead_letter_requeue_recreates_an_expired_queue(cli, db, schema):
    db.execute(_q("INSERT INTO {s}.dead_letter (id, queue, task, reason, delivery_count, payload, created_at) "
                  "VALUES (42, 'gone', 't.x', 'too many deliveries', 16, 'not json', now())", schema))
    moved = json.loads(cli("dead-letters", "--requeue", "42", "--json").output)
    assert moved[0]["queue"] == "gone"
    assert [r["queue"] for r in json.loads(cli("queues", "--json").output)] == ["gone"]
    assert db.execute(_q("SELECT priority, task FROM {s}.message", schema)).fetchall() == [(0, "t.x")]


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["queues"], ["migrate"], ["dead-letters"]])
def test_unreachable_server_is_one_line_without_password(command, schema):
    url = f"postgresql://someone:{SECRET}@127.0.0.1:1/nodb"
    proc = _run("celery-durable", *command, "--url", url, "--schema", schema)
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "someone@127.0.0.1:1/nodb" in lines[0] and SECRET not in proc.stderr
    assert "Traceback" not in proc.stderr


def test_wrong_database_names_host_and_database(pg_url, schema):
    params = psycopg.conninfo.conninfo_to_dict(dsn.from_url(pg_url))
    params["dbname"] = "no_such_db_celery_durable"
    params["password"] = SECRET
    url = conninfo_to_url(psycopg.conninfo.make_conninfo(**params))
    result = CliRunner().invoke(durable, ["queues", "--url", url, "--schema", schema])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "no_such_db_celery_durable" in lines[0] and SECRET not in result.output


def test_bad_url_and_no_url():
    result = CliRunner().invoke(durable, ["queues", "--url", "mysql://x@y/z"])
    assert result.exit_code == 1 and "unsupported URL scheme" in result.output
    result = CliRunner(env={"CELERY_DURABLE_URL": None}).invoke(durable, ["queues"])
    assert result.exit_code == 1 and "no database given" in result.output


def test_conninfo_to_url_round_trips(pg_url):
    conninfo = dsn.from_url(pg_url + ("&" if "?" in pg_url else "?") + "application_name=a%20b+c&sslmode=disable")
    with_password = psycopg.conninfo.make_conninfo(conninfo, password="p@ss:/word")
    assert dsn.from_url(conninfo_to_url(with_password)) == dsn.canonical(psycopg.conninfo.conninfo_to_dict(with_password))


# -- as a celery subcommand ------------------------------------------------------------------------


def _app_module(tmp_path, broker: str, backend: str, schema: str) -> None:
    (tmp_path / "cliapp.py").write_text(textwrap.dedent(f"""
        from celery import Celery
        import celery_durable  # noqa: F401
        app = Celery("cliapp", broker={broker!r}, backend={backend!r})
        app.conf.broker_transport_options = {{"schema": {schema!r}}}
        app.conf.result_backend_transport_options = {{"schema": {schema!r}}}
    """))


def test_celery_subcommand_uses_the_app(tmp_path, db, pg_url, schema):
    db.execute(_q("INSERT INTO {s}.queue (name) VALUES ('from_app')", schema))
    _app_module(tmp_path, pg_url, pg_url, schema)
    # The environment points elsewhere: -A wins over it.
    env = {"CELERY_DURABLE_URL": f"postgresql://x:{SECRET}@127.0.0.1:1/elsewhere", "CELERY_DURABLE_SCHEMA": "nope"}
    proc = _run("celery", "-A", "cliapp", "durable", "queues", "--json", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [r["queue"] for r in json.loads(proc.stdout)] == ["from_app"]
    # A URL typed on the command line wins over the app.
    proc = _run("celery", "-A", "cliapp", "durable", "queues", "--url", f"postgresql://x:{SECRET}@127.0.0.1:1/typed",
                env=env, cwd=tmp_path)
    assert proc.returncode == 1 and "x@127.0.0.1:1/typed" in proc.stderr and SECRET not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_celery_subcommand_falls_back_to_the_result_backend(tmp_path, db, pg_url, schema):
    db.execute(_q("INSERT INTO {s}.queue (name) VALUES ('via_backend')", schema))
    _app_module(tmp_path, "redis://127.0.0.1:6379/0", pg_url, schema)
    proc = _run("celery", "-A", "cliapp", "durable", "queues", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "via_backend" in proc.stdout


def test_celery_subcommand_without_postgres_says_so(tmp_path):
    proc = _run("celery", "durable", "queues", cwd=tmp_path)
    assert proc.returncode == 1 and "no database given" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# -- workflows: the CLI is a thin layer over celery_durable.workflows --------------------------------


def test_workflows_need_the_schema(cli, schema):
    result = cli("workflows", "list", expect=1)
    assert "missing" in result.output and "celery-durable migrate" in result.output


@pytest.fixture
def fake_admin(monkeypatch):
    calls: list[tuple] = []
    rows = [{"id": "w1", "name": "etl", "status": "running", "current_step": 2, "step_count": 5,
             "current_task": "tasks.load", "error": None}]

    def list_workflows(url, schema, status=None, limit=50):
        calls.append(("list", url, schema, status, limit))
        return rows

    def get_workflow(url, schema, workflow_id):
        calls.append(("get", url, schema, workflow_id))
        if workflow_id != "w1":
            return None
        return {**rows[0], "steps": [{"step": 0, "task": "tasks.extract", "status": "done"},
                                     {"step": 1, "task": "tasks.load", "status": "running"}]}

    def cancel_workflow(app_or_url, workflow_id, schema=None):
        calls.append(("cancel", app_or_url, workflow_id, schema))
        return workflow_id == "w1"

    def resume_workflow(app, workflow_id):
        calls.append(("resume", app, workflow_id))

    def restart_workflow(app, workflow_id, from_step, args=None):
        calls.append(("restart", app, workflow_id, from_step, args))
        return "new-task-id"

    module = types.ModuleType("celery_durable.workflows")
    for func in (list_workflows, get_workflow, cancel_workflow, resume_workflow, restart_workflow):
        setattr(module, func.__name__, func)
    monkeypatch.setitem(sys.modules, "celery_durable.workflows", module)
    monkeypatch.setattr(celery_durable, "workflows", module, raising=False)
    return calls


def test_workflows_commands_call_the_admin_api(cli, db, fake_admin, pg_url, schema):
    out = cli("workflows", "list", "--status", "running").output.splitlines()
    assert out[0].split()[:3] == ["ID", "NAME", "STATUS"] and out[1].split()[:3] == ["w1", "etl", "running"]
    kind, url, called_schema, status, limit = fake_admin[-1]
    assert (kind, called_schema, status, limit) == ("list", schema, "running", 50)
    assert dsn.from_url(url) == dsn.from_url(pg_url)  # a URL the admin API can connect with

    assert json.loads(cli("workflows", "stalled", "--limit", "7", "--json").output)[0]["id"] == "w1"
    assert fake_admin[-1][3:] == ("stalled", 7)

    shown = cli("workflows", "show", "w1").output
    assert "tasks.extract" in shown and "steps:" in shown
    assert json.loads(cli("workflows", "show", "w1", "--json").output)["steps"][1]["status"] == "running"
    assert "no workflow 'nope'" in cli("workflows", "show", "nope", expect=1).output

    assert "workflow w1 cancelled" in cli("workflows", "cancel", "w1").output
    assert fake_admin[-1][0] == "cancel" and dsn.from_url(fake_admin[-1][1]) == dsn.from_url(pg_url)
    assert fake_admin[-1][3] == schema
    assert "already ended" in cli("workflows", "cancel", "w2").output

    assert "workflow w1 resumed" in cli("workflows", "resume", "w1").output
    app = fake_admin[-1][1]
    assert app.conf.broker_transport_options["schema"] == schema

    out = cli("workflows", "restart", "w1", "--from-step", "2", "--args", "[1, \"x\"]").output
    assert "restarted from step 2" in out and "new-task-id" in out
    assert fake_admin[-1][2:] == ("w1", 2, [1, "x"])
    assert "not valid JSON" in cli("workflows", "restart", "w1", "--from-step", "2", "--args", "{", expect=1).output
    cli("workflows", "restart", "w1", expect=2)  # --from-step is required
