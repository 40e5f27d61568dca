"""Schedules as JSON, read back into Celery's own schedule classes; which runs are due.

A schedule is stored as a JSON object, never pickled, and parsed into
:class:`celery.schedules.schedule` (``{"type": "interval", "every": seconds,
"relative": false}``), :class:`~celery.schedules.crontab` (``{"type":
"crontab", "minute": "*/15", "hour": "*", "day_of_week": "*", "day_of_month":
"*", "month_of_year": "*", "timezone": "Europe/Berlin"}``; ``timezone`` is
optional, else the app's) or :class:`~celery.schedules.solar` (``{"type":
"solar", "event": "sunset", "lat": 48.1, "lon": 11.6}``, needs ``ephem``).
Celery's classes compute every due time, with Celery's time-zone and DST rules.

An entry's ``last_run_at`` is the due time of its last run (not when it was
sent), so due times form a fixed sequence: the next one is what Celery's
schedule gives after the previous one. A run's task id is derived from the
entry and its due time, so two sends of one run carry the same id.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery.schedules import BaseSchedule, crontab, schedule, solar

from ..exceptions import ScheduleError

#: What an entry does with runs that fell due while no beat held the lease.
CATCH_UP = ("once", "skip", "all")
CATCH_UP_DEFAULT = "once"
_CRON_FIELDS = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")
#: A crontab line's order (``describe``, the CLI's ``--cron``).
_CRON_LINE = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
#: Due times looked at, at most, to find the latest missed run of a long gap (then Celery's rule: from now).
SCAN_MAX = 10_000
_IDS = uuid.UUID("5f0c6b36-6a8e-4b61-9a53-2f2f7c0d0b22")


def to_json(value: Any) -> dict:
    """The JSON form of a ``beat_schedule`` schedule: a number of seconds, a timedelta, or Celery's classes.

    Raises ScheduleError for anything else (a subclass of Celery's that adds
    behaviour cannot be stored without losing it).
    """
    if isinstance(value, dict):
        return dict(parse(value, None)._celery_durable_json)
    if isinstance(value, bool):
        raise ScheduleError(f"not a schedule: {value!r}")
    if isinstance(value, (int, float)):
        value = timedelta(seconds=value)
    if isinstance(value, timedelta):
        value = schedule(value)
    if type(value) is schedule:
        every = value.run_every.total_seconds()
        return _checked({"type": "interval", "every": every, "relative": bool(value.relative)})
    if type(value) is crontab or type(value).__name__ == "ZonedCrontab":
        found = {name: _cron_text(getattr(value, f"_orig_{name}")) for name in _CRON_FIELDS}
        zone = getattr(value, "_celery_durable_zone", None)
        return _checked({"type": "crontab", **found, "timezone": zone})
    if type(value) is solar:
        return _checked({"type": "solar", "event": value.event, "lat": value.lat, "lon": value.lon})
    raise ScheduleError(
        f"cannot store a schedule of type {type(value).__name__}: use a number of seconds, a timedelta, "
        "celery.schedules.schedule, crontab or solar"
    )


def _checked(data: dict) -> dict:
    parse(data, None)
    return data


def _cron_text(spec: Any) -> str:
    if isinstance(spec, str):
        return spec
    if isinstance(spec, int):
        return str(spec)
    try:
        return ",".join(str(int(part)) for part in sorted(spec))
    except (TypeError, ValueError):
        raise ScheduleError(f"crontab field {spec!r} is neither a string, a number nor a list of numbers") from None


class ZonedCrontab(crontab):
    """Celery's crontab in a time zone of its own (else the app's): Celery's code computes every due time."""

    def __init__(self, *args: Any, zone: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._celery_durable_zone = zone
        self.tz = ZoneInfo(zone)  # Celery's tz is a cached property: this instance's own wins


def parse(data: Any, app: Any) -> BaseSchedule:
    """The Celery schedule of a stored JSON object; raises ScheduleError naming what is wrong."""
    if not isinstance(data, dict):
        raise ScheduleError(f"a schedule is a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    try:
        if kind == "interval":
            _only(data, {"type", "every", "relative"})
            every = data.get("every")
            if isinstance(every, bool) or not isinstance(every, (int, float)) or not every > 0 \
                    or not math.isfinite(every):
                raise ScheduleError(f"interval 'every' must be a positive number of seconds, got {every!r}")
            found: BaseSchedule = schedule(timedelta(seconds=every), bool(data.get("relative", False)), app=app)
        elif kind == "crontab":
            _only(data, {"type", "timezone", *_CRON_FIELDS})
            fields = {}
            for name in _CRON_FIELDS:
                value = data.get(name, "*")
                if not isinstance(value, (str, int)) or isinstance(value, bool):
                    raise ScheduleError(f"crontab {name!r} must be a string such as '*/5', got {value!r}")
                fields[name] = str(value)
            zone = data.get("timezone")
            if zone is None:
                found = crontab(**fields, app=app)
            else:
                if not isinstance(zone, str):
                    raise ScheduleError(f"timezone must be an IANA name such as 'Europe/Berlin', got {zone!r}")
                found = ZonedCrontab(**fields, zone=zone, app=app)
        elif kind == "solar":
            _only(data, {"type", "event", "lat", "lon"})
            found = solar(data.get("event"), float(data["lat"]), float(data["lon"]), app=app)
        else:
            raise ScheduleError(f"unknown schedule type {kind!r} (interval, crontab, solar)")
    except ScheduleError:
        raise
    except ZoneInfoNotFoundError:
        raise ScheduleError(f"unknown time zone {data.get('timezone')!r}") from None
    except Exception as exc:  # Celery's own checks: ParseException, ValueError, ImproperlyConfigured (ephem)
        raise ScheduleError(f"invalid {kind} schedule {data}: {type(exc).__name__}: {exc}") from None
    found._celery_durable_json = {**data}
    return found


def _only(data: dict, allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ScheduleError(f"{data.get('type')} schedule has unknown keys {unknown} (known: {sorted(allowed)})")


def describe(data: dict) -> str:
    """A short human form: ``every 30s``, ``cron */5 * * * mon-fri Europe/Berlin``, ``solar …``.

    A crontab is shown in a crontab line's order.
    """
    kind = data.get("type")
    if kind == "interval":
        return f"every {data.get('every'):g}s" + (" (relative)" if data.get("relative") else "")
    if kind == "crontab":
        text = " ".join(str(data.get(name, "*")) for name in _CRON_LINE)
        return f"cron {text}" + (f" {data['timezone']}" if data.get("timezone") else "")
    if kind == "solar":
        return f"solar {data.get('event')} {data.get('lat')},{data.get('lon')}"
    return str(data)


# -- due times ---------------------------------------------------------------------------------------


def next_due(sched: BaseSchedule, after: datetime, now: datetime) -> datetime:
    """The first due time after ``after``, as Celery's schedule computes it with the clock at ``now``.

    (Celery answers "how long from now"; with its clock pinned to ``now`` that
    is the due time itself, whatever ``now`` is.)
    """
    # In the schedule's own zone, as Celery's beat hands them over (app.now()): Celery before 5.7 computes a
    # crontab in the frame of the datetimes it is given.
    # The sum in UTC: added to a zoned datetime, a timedelta moves its wall clock, not time.
    zone = sched.tz
    local = now.astimezone(zone)
    pinned = sched.nowfun
    sched.nowfun = lambda: local
    try:
        return now.astimezone(timezone.utc) + sched.remaining_estimate(after.astimezone(zone))
    finally:
        sched.nowfun = pinned


@dataclass(frozen=True)
class Plan:
    """What a tick does with one entry: ``runs`` (due times to send, oldest first), and the state after them."""

    runs: tuple[datetime, ...]
    #: ``last_run_at`` once the runs are sent (the latest due time dealt with).
    last_run_at: datetime
    #: Missed runs the catch-up policy (or its bound) leaves out.
    skipped: int
    #: When the entry falls due next, after this plan.
    next_run_at: datetime


def plan(sched: BaseSchedule, last_run_at: datetime, now: datetime, held_since: datetime,
         catch_up: str = CATCH_UP_DEFAULT, limit: int = 100) -> Plan:
    """The runs due at ``now`` after ``last_run_at``, with the catch-up policy applied.

    A run due before ``held_since`` (when this beat's lease began) fell due while
    no beat held the lease: it is *missed*. ``once`` sends the latest missed run
    only, ``skip`` none, ``all`` each one; runs due while the lease was held are
    sent, each one. At most the latest ``limit`` runs are sent; the rest count as skipped.
    """
    due: list[datetime] = []
    at = last_run_at
    latest = last_run_at
    while len(due) < SCAN_MAX:
        following = next_due(sched, at, now)
        if following <= at:
            # No due time after the last run (Celery before 5.5 across a DST change): Celery's own beat's rule,
            # the run is due now and the next counts from now.
            if not due and at < now:
                due.append(now)
                latest = now
            break
        if following > now:
            break
        due.append(following)
        at = latest = following
    else:
        # A gap too long to walk: Celery's own rule, the next run counts from now.
        latest = now
    missed = [d for d in due if d < held_since]
    kept = [d for d in due if d >= held_since]
    if catch_up == "skip":
        chosen: list[datetime] = []
    elif catch_up == "all":
        chosen = missed
    else:
        chosen = missed[-1:]
    runs = tuple((chosen + kept)[-limit:]) if limit > 0 else ()
    skipped = len(due) - len(runs) + (1 if len(due) >= SCAN_MAX else 0)
    return Plan(runs=runs, last_run_at=latest, skipped=skipped, next_run_at=next_due(sched, latest, now))


def task_id(schema: str, name: str, due: datetime, manual: bool = False) -> str:
    """The id of entry ``name``'s run due at ``due`` (or asked for then, ``manual``): the same in every beat."""
    kind = "now" if manual else "due"
    return str(uuid.uuid5(_IDS, f"{schema}\x00{name}\x00{kind}\x00{due.astimezone(timezone.utc).isoformat()}"))
