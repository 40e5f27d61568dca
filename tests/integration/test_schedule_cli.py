"""`celery-durable schedule …` against a real database: add, list, pause, resume, run-now, remove, bad input."""

from __future__ import annotations

import json

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from celery_durable.cli import durable
from celery_durable.db import migrate


@pytest.fixture
def cli(pg_url, schema):
    runner = CliRunner()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        migrate.ensure_schema(conn, schema)

    def run(*args: str, expect: int = 0):
        result = runner.invoke(durable, ["--schema", schema, "--url", pg_url, *args], catch_exceptions=False)
        assert result.exit_code == expect, result.output
        return result

    return run


def _listed(cli, *args: str) -> dict:
    return json.loads(cli("schedule", "list", "--json", *args).output)


def test_add_list_pause_resume_run_now_remove(cli, pg_url, schema):
    cli("schedule", "add", "cleanup", "shop.cleanup", "--every", "30", "--args", "[1, \"a\"]",
        "--options", '{"queue": "maintenance"}', "--catch-up", "skip")
    added = cli("schedule", "add", "report", "shop.report", "--cron", "0 9 * * mon-fri", "--timezone",
                "America/New_York")
    assert "next run" in added.output
    found = _listed(cli)
    assert found["lease"] is None  # no beat ever ran here
    by_name = {row["name"]: row for row in found["entries"]}
    assert by_name["cleanup"]["schedule_text"] == "every 30s" and by_name["cleanup"]["catch_up"] == "skip"
    assert by_name["cleanup"]["args"] == [1, "a"] and by_name["cleanup"]["options"] == {"queue": "maintenance"}
    assert by_name["report"]["schedule"]["timezone"] == "America/New_York"
    assert by_name["report"]["next_run_at"] is not None and by_name["report"]["origin"] == "runtime"
    text = cli("schedule", "list").output
    assert "never taken" in text and "cron 0 9 * * mon-fri America/New_York" in text

    cli("schedule", "pause", "cleanup")
    assert _listed(cli, "cleanup")["entries"][0]["enabled"] is False
    cli("schedule", "resume", "cleanup")
    assert _listed(cli, "cleanup")["entries"][0]["enabled"] is True
    cli("schedule", "run-now", "cleanup")
    assert _listed(cli, "cleanup")["entries"][0]["run_requested_at"] is not None
    assert "runtime entry" in cli("schedule", "remove", "cleanup").output
    assert [row["name"] for row in _listed(cli)["entries"]] == ["report"]


@pytest.mark.parametrize("args, says", [
    (("schedule", "add", "x", "t"), "exactly one of --every, --cron and --schedule"),
    (("schedule", "add", "x", "t", "--every", "5", "--cron", "* * * * *"), "exactly one of"),
    (("schedule", "add", "x", "t", "--cron", "* * *"), "five fields"),
    (("schedule", "add", "x", "t", "--cron", "99 * * * *"), "invalid crontab"),
    (("schedule", "add", "x", "t", "--every", "5", "--timezone", "UTC"), "--timezone goes with --cron"),
    (("schedule", "add", "x", "t", "--schedule", '{"type": "weekly"}'), "unknown schedule type"),
    (("schedule", "add", "x", "t", "--every", "5", "--args", "{}"), "must be a JSON list"),
    (("schedule", "add", "x", "t", "--every", "5", "--kwargs", "nope"), "not JSON"),
    (("schedule", "pause", "nothing"), "no periodic task 'nothing'"),
    (("schedule", "list", "nothing"), "no periodic task 'nothing'"),
])
def test_bad_input_is_one_line_and_nothing_is_stored(cli, pg_url, schema, args, says):
    result = cli(*args, expect=1)
    assert says in result.output
    with psycopg.connect(pg_url, autocommit=True) as conn:
        count = conn.execute(sql.SQL("SELECT count(*) FROM {}.beat_entry").format(sql.Identifier(schema))).fetchone()
    assert count[0] == 0


def test_an_existing_name_needs_replace(cli):
    cli("schedule", "add", "x", "t", "--every", "5")
    assert "exists" in cli("schedule", "add", "x", "t", "--every", "9", expect=1).output
    cli("schedule", "add", "x", "t", "--every", "9", "--replace")
    assert _listed(cli, "x")["entries"][0]["schedule"]["every"] == 9


def test_import_shelve_brings_entries_and_last_runs_from_the_default_scheduler(cli, pg_url, schema, tmp_path):
    from datetime import datetime, timedelta, timezone

    from celery import Celery
    from celery.beat import PersistentScheduler
    from celery.schedules import crontab

    app = Celery("old", broker="memory://", set_as_current=False)
    app.conf.beat_schedule = {"every-minute": {"task": "shop.ping", "schedule": 60.0, "args": [1]},
                              "nightly": {"task": "shop.report", "schedule": crontab(minute=0, hour=3)}}
    app.conf.result_expires = None
    path = str(tmp_path / "celerybeat-schedule")
    old = PersistentScheduler(app=app, schedule_filename=path)  # Celery's own beat writes the file
    ran = datetime.now(timezone.utc) - timedelta(hours=2)
    old.schedule["every-minute"] = old.schedule["every-minute"]._next_instance(last_run_at=ran)
    old.close()

    cli("schedule", "import-shelve", path)
    found = {row["name"]: row for row in _listed(cli)["entries"]}
    assert set(found) == {"every-minute", "nightly"}
    assert found["every-minute"]["args"] == [1] and found["every-minute"]["schedule_text"] == "every 60s"
    assert datetime.fromisoformat(found["every-minute"]["last_run_at"]) == ran
    assert found["every-minute"]["total_run_count"] == 1
    assert found["nightly"]["schedule_text"] == "cron 0 3 * * *"
    # again: nothing moves back, nothing is added twice
    assert "kept" in cli("schedule", "import-shelve", path).output
    assert len(_listed(cli)["entries"]) == 2


def test_import_shelve_of_something_else_is_one_line(cli, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    assert "cannot read" in cli("schedule", "import-shelve", str(bad), expect=1).output


def test_import_redbeat_brings_entries_and_last_runs(cli, tmp_path):
    import uuid
    from datetime import datetime, timedelta, timezone

    import redis
    from celery import Celery
    from celery.schedules import crontab
    from redbeat.schedulers import RedBeatSchedulerEntry

    url = "redis://127.0.0.1:6379/14"
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    prefix = f"rb-{uuid.uuid4().hex[:8]}:"
    old = Celery("old", set_as_current=False)
    old.conf.update(redbeat_redis_url=url, redbeat_key_prefix=prefix)
    ran = datetime.now(timezone.utc) - timedelta(minutes=30)
    try:  # RedBeat's own API writes its entries
        RedBeatSchedulerEntry("ping", "shop.ping", 45.0, args=[1], options={"queue": "q"}, app=old).save()
        RedBeatSchedulerEntry("nightly", "shop.report", crontab(minute=0, hour=3), app=old, enabled=False).save()
        RedBeatSchedulerEntry.from_key(f"{prefix}ping", app=old)._next_instance(last_run_at=ran)

        done = json.loads(cli("schedule", "import-redbeat", url, "--key-prefix", prefix, "--json").output)
        actions = {d["name"]: d["action"] for d in done}
        assert actions["ping"] == "added, last run carried over" and actions["nightly"].startswith("added, paused")
        found = {row["name"]: row for row in _listed(cli)["entries"]}
        assert found["ping"]["args"] == [1] and found["ping"]["options"] == {"queue": "q"}
        assert abs(datetime.fromisoformat(found["ping"]["last_run_at"]) - ran) < timedelta(seconds=1)
        assert found["nightly"]["enabled"] is False and found["nightly"]["schedule_text"] == "cron 0 3 * * *"
    finally:
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
        client.close()
