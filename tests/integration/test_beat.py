"""The beat scheduler against a real PostgreSQL, in this process: lease, fence, catch-up, runtime changes."""

from __future__ import annotations

import time
from datetime import timedelta

import psycopg
import pytest
from celery import Celery
from psycopg import sql

import celery_durable  # noqa: F401  (registers postgresql://)
from celery_durable.beat import Scheduler, entries
from celery_durable.beat.schedules import task_id
from celery_durable.exceptions import EntryNotFound, ScheduleError

LEASE = 1.0


def _app(pg_url: str, schema: str, beat_schedule: dict | None = None, **options) -> Celery:
    app = Celery("beat_it", broker=pg_url, backend=pg_url, set_as_current=False)
    opts = {"schema": schema, "beat_lease_seconds": LEASE, **options}
    app.conf.update(broker_transport_options=opts, result_backend_transport_options={"schema": schema},
                    beat_schedule=beat_schedule or {}, result_expires=None, accept_content=["json"])
    return app


def _sql(conn, schema: str, text: str, params=()):
    return conn.execute(sql.SQL(text).format(schema=sql.Identifier(schema)), params)


def _runs(pg_url: str, schema: str) -> list[tuple[str, str, str]]:
    """(entry, due, task id) of every message the beats sent, in the order they were stored."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        return _sql(conn, schema, """
            SELECT payload::jsonb -> 'headers' -> 'celery_durable_beat' ->> 'entry',
                   payload::jsonb -> 'headers' -> 'celery_durable_beat' ->> 'due', payload::jsonb -> 'headers' ->> 'id'
            FROM {schema}.message WHERE queue = 'beat_runs' ORDER BY id""").fetchall()


def _entry(pg_url: str, schema: str, name: str) -> dict:
    with psycopg.connect(pg_url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        return _sql(conn, schema, "SELECT * FROM {schema}.beat_entry WHERE name = %s", (name,)).fetchone()


def _tick_until(scheduler: Scheduler, condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met while the scheduler ticked"
        time.sleep(min(0.05, scheduler.tick()))


EVERY_SECOND = {"every-second": {"task": "celery.ping", "schedule": 1.0, "options": {"queue": "beat_runs"},
                                 "catch_up": "all"}}


def test_two_schedulers_one_sends_each_run_once(pg_url, schema):
    first = Scheduler(_app(pg_url, schema, EVERY_SECOND))
    second = Scheduler(_app(pg_url, schema, EVERY_SECOND))
    try:
        deadline = time.monotonic() + 60
        while len(_runs(pg_url, schema)) < 4:
            assert time.monotonic() < deadline, "four runs within a minute"
            time.sleep(min(first.tick(), second.tick(), 0.2))
        assert first.lease.ours != second.lease.ours
        found = _runs(pg_url, schema)
        assert len({r[1] for r in found}) == len(found)  # no due time twice
        assert all(r[2] == task_id(schema, r[0], _ts(r[1])) for r in found)
    finally:
        first.close()
        second.close()


def _ts(text: str):
    from datetime import datetime

    return datetime.fromisoformat(text)


def test_a_holder_that_lost_its_lease_while_paused_sends_nothing(pg_url, schema):
    paused = Scheduler(_app(pg_url, schema, EVERY_SECOND))
    other = Scheduler(_app(pg_url, schema, EVERY_SECOND))
    try:
        _tick_until(paused, lambda: paused.lease.ours)
        row = _entry(pg_url, schema, "every-second")
        # paused for longer than the lease: the other beat takes it over meanwhile
        _tick_until(other, lambda: other.lease.ours, timeout=LEASE * 10)
        # the paused one wakes up believing it still holds the lease, and sends a run it read before the pause
        paused.lease._renewed = time.monotonic()
        plan = __import__("celery_durable.beat.schedules", fromlist=["plan"]).plan(
            paused._schedule(row), row["last_run_at"], paused.app.now(), row["last_run_at"], "all")
        assert plan.runs
        before = _runs(pg_url, schema)
        paused._send(paused._connection(), row, plan.runs, plan=plan)
        assert not paused.lease.ours  # the fence told it
        assert _runs(pg_url, schema) == before  # nothing of the paused beat's
        assert len({r[1] for r in before}) == len(before)
    finally:
        paused.close()
        other.close()


@pytest.mark.parametrize("catch_up, expected", [("once", 1), ("skip", 0), ("all", 5)])
def test_runs_missed_while_no_beat_held_the_lease_follow_the_catch_up_policy(pg_url, schema, catch_up, expected):
    app = _app(pg_url, schema, {"hourly": {"task": "celery.ping", "schedule": 3600.0, "catch_up": catch_up,
                                           "options": {"queue": "beat_runs"}}})
    beat = Scheduler(app)
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:  # the last run five and a half hours ago
            _sql(conn, schema, "UPDATE {schema}.beat_entry SET last_run_at = now() - interval '5 hours 30 minutes'")
        _tick_until(beat, lambda: _entry(pg_url, schema, "hourly")["next_run_at"] is not None
                    and _entry(pg_url, schema, "hourly")["skipped_run_count"] + len(_runs(pg_url, schema)) == 5)
        assert len(_runs(pg_url, schema)) == expected
        row = _entry(pg_url, schema, "hourly")
        assert row["skipped_run_count"] == 5 - expected
        assert row["next_run_at"] - row["last_run_at"] == timedelta(hours=1)
    finally:
        beat.close()


def test_runtime_changes_are_seen_at_the_next_tick(pg_url, schema):
    app = _app(pg_url, schema)
    beat = Scheduler(app)
    try:
        _tick_until(beat, lambda: beat.lease.ours)
        entries.add_entry(app, "fast", "celery.ping", 0.5, options={"queue": "beat_runs"})
        with pytest.raises(ScheduleError, match="exists"):
            entries.add_entry(app, "fast", "celery.ping", 1)
        _tick_until(beat, lambda: len(_runs(pg_url, schema)) >= 2)
        entries.pause_entry(app, "fast")
        beat.tick()
        paused_at = len(_runs(pg_url, schema))
        entries.run_entry_now(app, "fast")
        _tick_until(beat, lambda: len(_runs(pg_url, schema)) == paused_at + 1)
        time.sleep(1.2)  # two periods of the paused entry pass: none is sent
        beat.tick()
        assert len(_runs(pg_url, schema)) == paused_at + 1
        manual = _runs(pg_url, schema)[-1]
        assert manual[2] == _entry(pg_url, schema, "fast")["last_task_id"]
        entries.resume_entry(app, "fast")
        _tick_until(beat, lambda: len(_runs(pg_url, schema)) >= paused_at + 2)
        entries.change_entry(app, "fast", schedule=3600)
        beat.tick()
        row = entries.list_entries(app, "fast")[0]
        assert row["schedule_text"] == "every 3600s" and row["beat_holder"] == beat.lease.holder
        assert row["next_run_at"] > app.now() + timedelta(minutes=59)
        assert entries.remove_entry(app, "fast") == "runtime"
        with pytest.raises(EntryNotFound):
            entries.pause_entry(app, "fast")
    finally:
        beat.close()


def test_config_entries_follow_the_code_and_runtime_ones_stay(pg_url, schema):
    app = _app(pg_url, schema, {"a": {"task": "celery.ping", "schedule": 60}, "b": {"task": "celery.ping",
                                                                                     "schedule": 60}})
    Scheduler(app).close()
    entries.add_entry(app, "mine", "celery.ping", 60)
    entries.pause_entry(app, "a")
    app.conf.beat_schedule = {"a": {"task": "celery.ping", "schedule": 120}}
    Scheduler(app).close()
    found = {row["name"]: row for row in entries.list_entries(app)}
    assert set(found) == {"a", "mine"}  # b left the code: removed; the runtime entry stays
    assert found["a"]["schedule"]["every"] == 120 and not found["a"]["enabled"]  # the code's definition, paused still
    assert found["mine"]["origin"] == "runtime" and found["a"]["origin"] == "config"


def test_an_entry_added_with_sql_runs(pg_url, schema):
    app = _app(pg_url, schema)
    beat = Scheduler(app)
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            _sql(conn, schema, "SELECT {schema}.beat_entry_put_v1('from-sql', 'celery.ping', %s, '[1, 2]', '{{}}', "
                               "'{{\"queue\": \"beat_runs\"}}')", ('{"type": "interval", "every": 0.5}',))
        _tick_until(beat, lambda: len(_runs(pg_url, schema)) >= 1)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            payload = _sql(conn, schema, "SELECT payload::jsonb FROM {schema}.message WHERE queue = 'beat_runs'").fetchone()[0]
        assert payload["headers"]["task"] == "celery.ping"
    finally:
        beat.close()


def test_arguments_stored_in_a_type_the_app_does_not_accept_are_not_decoded(pg_url, schema):
    app = _app(pg_url, schema)
    beat = Scheduler(app)
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            _sql(conn, schema, "INSERT INTO {schema}.beat_entry (name, task, schedule, content_type, "
                               "content_encoding, args) VALUES ('pickled', 'celery.ping', %s, "
                               "'application/x-python-serialize', 'binary', %s)",
                 ('{"type": "interval", "every": 0.2}', b"\x80\x04K\x01."))
        _tick_until(beat, lambda: (_entry(pg_url, schema, "pickled")["error"] or "") != "")
        assert "not decoded" in _entry(pg_url, schema, "pickled")["error"]
        assert _runs(pg_url, schema) == []
        listed = entries.list_entries(app, "pickled")[0]
        assert "not decoded" in str(listed["args"])
    finally:
        beat.close()


def test_metrics_show_the_lease_holder_and_overdue_entries(pg_url, schema):
    from celery_durable.metrics import read

    app = _app(pg_url, schema, {"hourly": {"task": "celery.ping", "schedule": 3600}})
    beat = Scheduler(app)

    def figures() -> dict:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            return {(m, label): v for m, label, v in read(conn, schema, 5.0).rows if m.startswith("beat_")}

    try:
        _tick_until(beat, lambda: _entry(pg_url, schema, "hourly")["next_run_at"] is not None)
        held = figures()
        assert held[("beat_lease_holder", beat.lease.holder)] == 1
        assert held[("beat_entries", "enabled")] == 1 and held[("beat_entries_overdue", "")] == 0
        assert 0 < held[("beat_lease_seconds_left", "")] <= LEASE
    finally:
        beat.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:  # what a beat that stopped an hour ago leaves behind
        _sql(conn, schema, "UPDATE {schema}.beat_entry SET last_run_at = now() - interval '2 hours', "
                           "next_run_at = now() - interval '1 hour'")
    after = figures()
    assert not [key for key in after if key[0] == "beat_lease_holder"]
    assert after[("beat_lease_seconds_left", "")] <= 0
    assert after[("beat_entries_overdue", "")] == 1
    assert entries.list_entries(app, "hourly")[0]["overdue"]
