"""``schedule``: the periodic tasks of ``celery_durable.beat:Scheduler``: list, add, pause, resume, remove, run-now,
and imports from Celery's default scheduler and RedBeat.

A change is one transaction on the schedule table; the active beat sees it at
its next tick (a few seconds), without a restart.
"""

from __future__ import annotations

import json
from typing import Any

import click

from ..db import dsn
from ..exceptions import DurableError
from .group import durable
from .output import emit, json_option, table
from .schema import _checked
from .target import CommandError, Target, with_target

LIST_COLUMNS = ("name", "task", "schedule_text", "enabled", "origin", "next_run_at", "last_run_at", "last_task_id",
                "last_status", "overdue", "error")


def _entries() -> Any:
    # Imported on use: `celery` loads this package for every command it runs.
    from ..beat import entries

    return entries


def _app(target: Target) -> Any:
    with target.connect() as conn:
        _checked(conn, target)
    app = target.celery_app()
    for key in ("broker_transport_options", "result_backend_transport_options"):
        options = dict(app.conf[key] or {})
        if options.get("schema") != target.schema:  # --schema typed over the app's
            app.conf[key] = {**options, "schema": target.schema}
    return app


def _json(text: str | None, what: str, kind: type) -> Any:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CommandError(f"{what} is not JSON: {exc}") from None
    if not isinstance(value, kind):
        raise CommandError(f"{what} must be a JSON {'list' if kind is list else 'object'}")
    return value


@durable.group("schedule")
def schedule_group() -> None:
    """Periodic tasks of celery_durable.beat:Scheduler: list, add, pause, resume, remove, run-now."""


@schedule_group.command("list")
@click.argument("name", required=False)
@json_option
@with_target
def schedule_list(target: Target, name: str | None, as_json: bool) -> None:
    """Each periodic task: schedule, next and last run, last task id and state; and which beat holds the lease."""
    app = _app(target)
    rows = _entries().list_entries(app, name)
    held = _entries().beat_lease(app)
    if name and not rows:
        raise CommandError(f"no periodic task {name!r}")
    lease = None if held is None else {k: held[k] for k in ("holder", "held_since", "expires_at", "live", "takeovers")}

    def text() -> str:
        if held is None:
            head = "beat lease: never taken (no celery_durable beat has run on this schema)"
        elif held["live"]:
            head = f"beat lease: held by {held['holder']} since {held['held_since']:%Y-%m-%d %H:%M:%S%z}"
        else:
            head = (f"beat lease: FREE, no beat sends (last holder {held['holder']}, "
                    f"expired {held['expires_at']:%Y-%m-%d %H:%M:%S%z})")
        body = (table(LIST_COLUMNS, [[row.get(c) for c in LIST_COLUMNS] for row in rows]) if rows
                else "no periodic tasks")
        return head + "\n" + body

    emit(as_json, {"lease": lease, "entries": rows}, text)


@schedule_group.command("add")
@click.argument("name")
@click.argument("task")
@click.option("--every", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS", help="An interval.")
@click.option("--cron", metavar="'M H DOM MON DOW'", help="A crontab line (five fields).")
@click.option("--timezone", "zone", metavar="ZONE", help="The crontab's IANA time zone (default: the app's).")
@click.option("--schedule", "schedule_json", metavar="JSON",
              help="The schedule as stored (see the docs' Periodic tasks).")
@click.option("--args", "args_json", metavar="JSON", help="Positional arguments, a JSON list.")
@click.option("--kwargs", "kwargs_json", metavar="JSON", help="Keyword arguments, a JSON object.")
@click.option("--options", "options_json", metavar="JSON", help='apply_async options, e.g. \'{"queue": "reports"}\'.')
@click.option("--catch-up", type=click.Choice(["once", "skip", "all"]),
              help="Runs missed while no beat held the lease.")
@click.option("--paused", is_flag=True, help="Add it paused.")
@click.option("--replace", is_flag=True, help="Replace an entry of that name.")
@json_option
@with_target
def schedule_add(target: Target, name: str, task: str, every: float | None, cron: str | None, zone: str | None,
                 schedule_json: str | None, args_json: str | None, kwargs_json: str | None,
                 options_json: str | None, catch_up: str | None, paused: bool, replace: bool, as_json: bool) -> None:
    """Add periodic task NAME running TASK: give one of --every, --cron, --schedule."""
    if sum(x is not None for x in (every, cron, schedule_json)) != 1:
        raise CommandError("give exactly one of --every, --cron and --schedule")
    if zone and not cron:
        raise CommandError("--timezone goes with --cron")
    if every is not None:
        schedule: Any = every
    elif cron is not None:
        fields = cron.split()
        if len(fields) != 5:
            raise CommandError(f"--cron needs five fields (minute hour day-of-month month day-of-week), got {cron!r}")
        minute, hour, day_of_month, month_of_year, day_of_week = fields
        schedule = {"type": "crontab", "minute": minute, "hour": hour, "day_of_month": day_of_month,
                    "month_of_year": month_of_year, "day_of_week": day_of_week, "timezone": zone}
    else:
        schedule = _json(schedule_json, "--schedule", dict)
    app = _app(target)
    _entries().add_entry(app, name, task, schedule, _json(args_json, "--args", list) or (),
                         _json(kwargs_json, "--kwargs", dict), _json(options_json, "--options", dict),
                         catch_up=catch_up, enabled=not paused, replace=replace)
    row = _entries().list_entries(app, name)[0]
    emit(as_json, row, lambda: f"added {name}: {row['schedule_text']}, next run {row['next_run_at']}")


def _simple(verb: str, call: str, done: str) -> None:
    @schedule_group.command(verb)
    @click.argument("name")
    @json_option
    @with_target
    def command(target: Target, name: str, as_json: bool) -> None:
        app = _app(target)
        result = getattr(_entries(), call)(app, name)
        emit(as_json, {"name": name, "result": result}, lambda: done.format(name=name, result=result))

    command.__doc__ = {
        "pause": "Pause NAME: the active beat sends none of its runs from its next tick on.",
        "resume": "Resume NAME: its runs count from now (those due while paused are not caught up).",
        "remove": "Remove NAME (a beat_schedule entry comes back at the next beat start if the code still has it).",
        "run-now": "Ask the active beat to send one run of NAME at its next tick (the schedule is unchanged).",
    }[verb]


_simple("pause", "pause_entry", "paused {name}")
_simple("resume", "resume_entry", "resumed {name}")
_simple("remove", "remove_entry", "removed {name} ({result} entry)")
_simple("run-now", "run_entry_now", "asked the active beat to send {name} now (asked at {result})")


def _imported(done: list[dict], as_json: bool) -> None:
    emit(as_json, done, lambda: table(("name", "action", "last_run_at", "error"),
                                      [[d["name"], d["action"], d["last_run_at"], d["error"]] for d in done])
         if done else "nothing to import")
    if any(d["error"] for d in done):
        raise CommandError("some entries were not imported (see above)")


@schedule_group.command("import-shelve")
@click.argument("path", type=click.Path(dir_okay=False))
@json_option
@with_target
def schedule_import_shelve(target: Target, path: str, as_json: bool) -> None:
    """Import Celery's default scheduler's file (celerybeat-schedule): entries and their last run times.

    The file holds pickles: import only a file your own beat wrote.
    """
    from ..beat.imports import import_shelve

    app = _app(target)
    try:
        done = import_shelve(app, path)
    except Exception as exc:  # dbm/pickle errors: the file is not a schedule this Python can read
        raise CommandError(f"cannot read {path} as a celery beat schedule file: {type(exc).__name__}: {exc}") from None
    _imported(done, as_json)


@schedule_group.command("import-redbeat")
@click.argument("redis_url")
@click.option("--key-prefix", default="redbeat:", show_default=True, help="RedBeat's redbeat_key_prefix.")
@json_option
@with_target
def schedule_import_redbeat(target: Target, redis_url: str, key_prefix: str, as_json: bool) -> None:
    """Import RedBeat's entries and last run times from REDIS_URL (needs celery-redbeat installed)."""
    from ..beat.imports import import_redbeat

    app = _app(target)
    try:
        done = import_redbeat(app, redis_url, key_prefix)
    except DurableError:
        raise
    except Exception as exc:  # the Redis client's errors: name the server, not its password
        raise CommandError(f"cannot read RedBeat's entries at {dsn.mask_url(redis_url)}: "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    _imported(done, as_json)
