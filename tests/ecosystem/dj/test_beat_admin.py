"""The periodic tasks' admin pages through Django's test client: add, change, pause, resume, run now, remove."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.urls import reverse

from celery_durable.beat import entries

pytestmark = pytest.mark.django_db(transaction=True)
ACTION = "django.contrib.admin.actions"


def _entry(app, name: str) -> dict | None:
    found = entries.list_entries(app, name)
    return found[0] if found else None


def test_add_change_pause_resume_run_now_and_remove(admin_client, django_project):
    app = django_project
    add = reverse("admin:celery_durable_beatentry_add")
    assert "Add periodic task" in admin_client.get(add).content.decode()
    refused = admin_client.post(add, {"name": "report", "task": "shop.report", "every": "", "cron": "",
                                      "args": "[]", "kwargs": "{}", "options": "{}", "catch_up": "once"})
    assert "give either an interval (every) or a crontab line" in refused.content.decode()
    assert _entry(app, "report") is None
    admin_client.post(add, {"name": "report", "task": "shop.report", "cron": "0 9 * * mon-fri",
                            "timezone": "Europe/Berlin", "args": "[7]", "kwargs": "{}",
                            "options": '{"queue": "reports"}', "catch_up": "skip"}, follow=True)
    added = _entry(app, "report")
    assert added["schedule"]["timezone"] == "Europe/Berlin" and added["args"] == [7]
    assert added["options"] == {"queue": "reports"} and added["catch_up"] == "skip" and added["origin"] == "runtime"

    changelist = reverse("admin:celery_durable_beatentry_changelist")
    page = admin_client.get(changelist).content.decode()
    assert "cron 0 9 * * mon-fri Europe/Berlin" in page
    detail = admin_client.get(reverse("admin:celery_durable_beatentry_change", args=["report"])).content.decode()
    assert "Change…" in detail and 'name="_save"' not in detail

    edit = reverse("admin:celery_durable_beatentry_edit", args=["report"])
    assert 'value="0 9 * * mon-fri"' in admin_client.get(edit).content.decode()
    bad = admin_client.post(edit, {"task": "shop.report", "every": "60", "cron": "", "timezone": "",
                                   "args": "{}", "kwargs": "{}", "options": "{}", "catch_up": "once"})
    assert "must be a JSON list" in bad.content.decode()
    admin_client.post(edit, {"task": "shop.report", "every": "60", "cron": "", "timezone": "", "args": "[8]",
                             "kwargs": "{}", "options": "{}", "catch_up": "once"}, follow=True)
    changed = _entry(app, "report")
    assert changed["schedule_text"] == "every 60s" and changed["args"] == [8]

    for action, check in (("pause", lambda e: not e["enabled"]), ("resume", lambda e: e["enabled"]),
                          ("run_now", lambda e: e["run_requested_at"] is not None)):
        done = admin_client.post(changelist, {"index": 0, "action": action, "_selected_action": ["report"]},
                                 follow=True)
        assert done.status_code == 200 and check(_entry(app, "report")), action
    admin_client.post(changelist, {"index": 0, "action": "remove", "_selected_action": ["report"]}, follow=True)
    assert _entry(app, "report") is None
    logged = [(e.action_flag, e.change_message) for e in
              LogEntry.objects.filter(object_id="report").order_by("action_time")]
    assert logged == [(ADDITION, "Added"), (CHANGE, "Changed"), (CHANGE, "Paused"), (CHANGE, "Resumed"),
                      (CHANGE, "Asked to run now"), (CHANGE, "Removed")]


def test_viewers_see_periodic_tasks_but_cannot_change_them(client, django_user_model, django_project):
    from django.contrib.auth.models import Permission

    entries.add_entry(django_project, "seen", "shop.report", 3600)
    viewer = django_user_model.objects.create_user("beat-viewer", password="pw", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename="view_beatentry"))
    client.force_login(viewer)
    page = client.get(reverse("admin:celery_durable_beatentry_changelist")).content.decode()
    assert "seen" in page and 'name="action"' not in page
    assert client.get(reverse("admin:celery_durable_beatentry_add")).status_code == 403
    assert client.get(reverse("admin:celery_durable_beatentry_edit", args=["seen"])).status_code == 403
    entries.remove_entry(django_project, "seen")


def test_import_from_django_celery_beat(django_project):
    pytest.importorskip("django_celery_beat")
    from datetime import datetime, timedelta, timezone

    from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask

    from celery_durable.beat.imports import import_django_celery_beat

    app = django_project
    ran = datetime.now(timezone.utc) - timedelta(hours=3)
    every = IntervalSchedule.objects.create(every=10, period=IntervalSchedule.MINUTES)
    nine = CrontabSchedule.objects.create(minute="0", hour="9", day_of_week="mon-fri", timezone="America/New_York")
    PeriodicTask.objects.create(name="dcb-ping", task="shop.ping", interval=every, args="[1, 2]", kwargs='{"a": 1}',
                                queue="pings", priority=5, last_run_at=ran, total_run_count=7)
    PeriodicTask.objects.create(name="dcb-report", task="shop.report", crontab=nine, enabled=False)
    clocked = ClockedSchedule.objects.create(clocked_time=datetime.now(timezone.utc) + timedelta(days=1))
    PeriodicTask.objects.create(name="dcb-once", task="shop.once", clocked=clocked, one_off=True)
    try:
        done = {d["name"]: d for d in import_django_celery_beat(app, PeriodicTask.objects.filter(name__startswith="dcb-"))}
        assert done["dcb-ping"]["action"] == "added, last run carried over"
        assert done["dcb-report"]["action"].startswith("added, paused")
        assert done["dcb-once"]["action"] == "not imported" and "one-off" in done["dcb-once"]["error"]
        ping = _entry(app, "dcb-ping")
        assert ping["schedule"] == {"type": "interval", "every": 600.0, "relative": False}
        assert ping["args"] == [1, 2] and ping["kwargs"] == {"a": 1}
        assert ping["options"] == {"queue": "pings", "priority": 5}
        assert ping["last_run_at"] == ran and ping["total_run_count"] == 7
        report = _entry(app, "dcb-report")
        assert report["schedule_text"] == "cron 0 9 * * mon-fri America/New_York" and not report["enabled"]
        assert _entry(app, "dcb-once") is None
    finally:
        for name in ("dcb-ping", "dcb-report"):
            entries.remove_entry(app, name)
