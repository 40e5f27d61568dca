"""Schedules stored as JSON come back as Celery's own classes, and their due times are Celery's (zoneinfo, DST)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from celery import Celery
from celery.schedules import crontab, schedule

from celery_durable import compat
from celery_durable.beat import schedules
from celery_durable.exceptions import ScheduleError

UTC = timezone.utc


def _app(tz: str = "UTC") -> Celery:
    app = Celery("beat_unit", set_as_current=False)
    app.conf.timezone = tz
    return app


@pytest.mark.parametrize("value", [
    30, 2.5, timedelta(minutes=5), schedule(timedelta(hours=1), relative=True),
    crontab(minute="*/15"), crontab(minute=0, hour=[4, 16], day_of_week="mon-fri"),
    crontab(minute="30", hour="2", day_of_month="1-7", month_of_year="*/3"),
])
def test_a_schedule_comes_back_as_the_same_celery_schedule(value):
    stored = json.loads(json.dumps(schedules.to_json(value)))  # what the jsonb column gives back
    again = schedules.parse(stored, _app())
    expected = value if not isinstance(value, (int, float, timedelta)) else schedule(
        value if isinstance(value, timedelta) else timedelta(seconds=value))
    assert type(again) is type(expected)
    assert again == expected
    if isinstance(expected, schedule):
        assert again.relative == expected.relative


@pytest.mark.parametrize("stored, says", [
    ({"type": "hourly"}, "unknown schedule type"),
    ({"type": "interval", "every": 0}, "positive number"),
    ({"type": "interval", "every": "5"}, "positive number"),
    ({"type": "interval", "every": 5, "unit": "minutes"}, "unknown keys"),
    ({"type": "crontab", "minute": "61"}, "invalid crontab"),
    ({"type": "crontab", "minute": "0", "timezone": "Mars/Olympus"}, "unknown time zone"),
    ([1, 2], "JSON object"),
])
def test_a_bad_stored_schedule_is_refused_naming_what_is_wrong(stored, says):
    with pytest.raises(ScheduleError, match=says):
        schedules.parse(stored, _app())


def test_a_custom_schedule_class_is_refused_not_pickled():
    class Every(schedule):
        pass

    with pytest.raises(ScheduleError, match="cannot store a schedule of type Every"):
        schedules.to_json(Every(10))


def _celery_due_moments(sched, last: datetime, start: datetime, end: datetime, step: timedelta) -> list[datetime]:
    """Celery's default scheduler's decisions: each ``step`` of the clock, ``is_due(last_run_at)``; a run sets it to now."""
    found = []
    now = start
    last = last.astimezone(sched.tz)  # as app.now() gives it: in the app's (here: the entry's) zone
    while now <= end:
        sched.nowfun = lambda now=now: now.astimezone(sched.tz)
        if sched.is_due(last)[0]:
            found.append(now)
            last = now.astimezone(sched.tz)
        now += step
    sched.nowfun = None
    return found


def _our_due_times(sched, last: datetime, end: datetime, step: timedelta = timedelta(minutes=1)) -> list[datetime]:
    """Our scheduler's decisions: each ``step`` a tick plans the due runs after ``last_run_at`` (Celery before 5.7
    computes a crontab's next run differently depending on the day it is asked, so a tick asks when a beat would)."""
    found = []
    now = last
    while now <= end:
        plan = schedules.plan(sched, last, now, held_since=last, catch_up="all")
        found.extend(plan.runs)
        last = plan.last_run_at
        now += step
    return found


@pytest.mark.parametrize("stored, app_tz, start", [
    # Spring forward (Berlin, 2024-03-31: 02:00 -> 03:00) and fall back (2024-10-27: 03:00 -> 02:00), the entry's zone.
    ({"type": "crontab", "minute": "30", "hour": "1-3", "timezone": "Europe/Berlin"}, "UTC", datetime(2024, 3, 30, 12)),
    ({"type": "crontab", "minute": "30", "hour": "1-3", "timezone": "Europe/Berlin"}, "UTC", datetime(2024, 10, 26, 12)),
    ({"type": "crontab", "minute": "0,30", "hour": "2"}, "Europe/Berlin", datetime(2024, 3, 30, 12)),
    ({"type": "crontab", "minute": "0,30", "hour": "2"}, "Europe/Berlin", datetime(2024, 10, 26, 12)),
    # New York's zone on an entry of an app in Berlin's: 09:00 there, whatever the app's zone.
    ({"type": "crontab", "minute": "0", "hour": "9", "timezone": "America/New_York"}, "Europe/Berlin",
     datetime(2024, 3, 8, 12)),
    ({"type": "interval", "every": 3600}, "Europe/Berlin", datetime(2024, 10, 26, 22)),
])
def test_due_times_are_celerys_own_across_a_clock_change(stored, app_tz, start):
    if stored["type"] == "crontab" and start.month == 3 and not compat.CRONTAB_DST_EXACT:
        pytest.xfail("Celery before 5.5: a run in the skipped hour comes out an hour early (compat.CRONTAB_DST_EXACT)")
    app = _app(app_tz)
    start = start.replace(tzinfo=UTC)
    end = start + timedelta(days=3)
    ours = _our_due_times(schedules.parse(stored, app), start, end)
    celery = _celery_due_moments(schedules.parse(stored, app), start, start, end, timedelta(minutes=1))
    assert ours == celery
    assert ours, "the window holds runs"


def test_an_entry_in_new_york_runs_at_nine_there_across_its_own_clock_change():
    app = _app("Europe/Berlin")
    sched = schedules.parse({"type": "crontab", "minute": "0", "hour": "9", "timezone": "America/New_York"}, app)
    dues = _our_due_times(sched, datetime(2024, 3, 8, 15, tzinfo=UTC), datetime(2024, 3, 12, 15, tzinfo=UTC),
                          timedelta(minutes=10))
    local = [d.astimezone(ZoneInfo("America/New_York")) for d in dues]
    assert [(d.day, d.hour, d.minute) for d in local] == [(9, 9, 0), (10, 9, 0), (11, 9, 0), (12, 9, 0)]
    # New York moved its clocks on 2024-03-10: nine o'clock there is an hour earlier in UTC from then on.
    assert [d.astimezone(UTC).hour for d in dues] == [14, 13, 13, 13]


def _sched(every: float = 1.0):
    return schedules.parse({"type": "interval", "every": every}, _app())


T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def test_runs_due_while_the_lease_was_held_are_each_sent():
    plan = schedules.plan(_sched(), T0, T0 + timedelta(seconds=3.5), held_since=T0)
    assert plan.runs == tuple(T0 + timedelta(seconds=n) for n in (1, 2, 3))
    assert plan.last_run_at == T0 + timedelta(seconds=3)
    assert plan.next_run_at == T0 + timedelta(seconds=4)
    assert plan.skipped == 0


@pytest.mark.parametrize("catch_up, sent, skipped", [
    ("once", [9], 8),   # Celery's rule: one run for what was missed
    ("skip", [], 9),
    ("all", [1, 2, 3, 4, 5, 6, 7, 8, 9], 0),
])
def test_missed_runs_follow_the_catch_up_policy(catch_up, sent, skipped):
    # The lease was taken at T0 + 9.5 s: runs due before it fell due while no beat held it.
    plan = schedules.plan(_sched(), T0, T0 + timedelta(seconds=10.2), held_since=T0 + timedelta(seconds=9.5),
                          catch_up=catch_up)
    assert plan.runs == tuple(T0 + timedelta(seconds=n) for n in sent + [10])
    assert plan.skipped == skipped
    assert plan.last_run_at == T0 + timedelta(seconds=10)


def test_catching_up_is_bounded():
    plan = schedules.plan(_sched(), T0, T0 + timedelta(seconds=500.5), held_since=T0 + timedelta(seconds=500.2),
                          catch_up="all", limit=100)
    assert len(plan.runs) == 100
    assert plan.runs[-1] == T0 + timedelta(seconds=500)
    assert plan.skipped == 400


def test_a_gap_too_long_to_walk_counts_from_now():
    now = T0 + timedelta(seconds=schedules.SCAN_MAX * 3 + 0.5)
    plan = schedules.plan(_sched(), T0, now, held_since=now, catch_up="once")
    assert plan.last_run_at == now
    assert plan.next_run_at == now + timedelta(seconds=1)
    assert len(plan.runs) == 1


def test_a_runs_task_id_is_the_same_in_every_beat_and_differs_per_run():
    one = schedules.task_id("s", "report", T0)
    assert one == schedules.task_id("s", "report", T0.astimezone(ZoneInfo("Asia/Tokyo")))
    others = {schedules.task_id("s", "report", T0 + timedelta(seconds=1)), schedules.task_id("s", "other", T0),
              schedules.task_id("t", "report", T0), schedules.task_id("s", "report", T0, manual=True)}
    assert one not in others and len(others) == 4


def test_a_solar_schedule_comes_back_and_its_due_times_are_celerys():
    pytest.importorskip("ephem")
    from celery.schedules import solar

    app = _app("Europe/Berlin")
    stored = json.loads(json.dumps(schedules.to_json(solar("sunset", 52.52, 13.405))))
    assert stored == {"type": "solar", "event": "sunset", "lat": 52.52, "lon": 13.405}
    start = datetime(2024, 3, 29, 12, tzinfo=UTC)
    end = start + timedelta(days=3)
    ours = _our_due_times(schedules.parse(stored, app), start, end)
    celery = _celery_due_moments(schedules.parse(stored, app), start, start, end, timedelta(minutes=1))
    assert len(ours) == len(celery) == 3
    # a sunset falls between two minutes: Celery's is_due says "due" at the first minute of the clock after it
    assert all(timedelta(0) <= c - o < timedelta(minutes=1) for o, c in zip(ours, celery))
