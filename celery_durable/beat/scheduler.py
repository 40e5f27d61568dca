"""``beat_scheduler = "celery_durable.beat:Scheduler"``: the schedule in PostgreSQL, any number of beats, one active.

At start a beat writes the app's ``beat_schedule`` into the ``beat_entry``
table (origin ``config``; config entries the code no longer names are
removed, runtime ones are never touched). Then each tick it takes or renews
the lease (:mod:`.lease`); while it holds it, it reads the enabled entries
(so a change made by the API, the CLI, SQL or the admin is seen at the next
tick), asks Celery's schedule classes which runs are due (:mod:`.schedules`)
and sends each entry's due runs in ONE transaction that first checks the lease
token (fence), then moves the entry's ``last_run_at`` past them (only if the
entry is still as read), then publishes. With the broker in the same database
the message is part of that transaction (``in_transaction``): a crash before
the commit leaves the run due, after it leaves it done, so each run is
enqueued exactly once. With another broker the publish happens just before
the commit: a crash between the two sends the run again, with the same task id
(at least once). A run's task id is derived from the entry and its due time.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import psycopg
from celery import beat
from celery.schedules import crontab, schedule
from psycopg.rows import dict_row

from .. import enqueue
from ..db import dsn, pool
from ..exceptions import DatabaseUnavailable, DurableError, ScheduleError
from . import schedules, store
from .lease import Lease

logger = logging.getLogger(__name__)

#: Longest sleep between ticks: a change to the table is picked up within it.
MAX_INTERVAL_DEFAULT = 5.0
#: Header of every message a beat sends: the entry's name and the run's due time (ISO 8601).
DUE_HEADER = "celery_durable_beat"

_CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, DatabaseUnavailable)


class Scheduler(beat.Scheduler):
    """Celery's beat scheduler over the ``beat_entry`` table; see the module's docstring."""

    max_interval = MAX_INTERVAL_DEFAULT

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        self._place: store.Place | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._lease: Lease | None = None
        self._schedules: dict[str, tuple[Any, Any]] = {}  # name -> (stored JSON, Celery schedule)
        super().__init__(app, *args, **kwargs)

    # -- set-up --------------------------------------------------------------------------------------

    @property
    def place(self) -> store.Place:
        if self._place is None:
            self._place = store.place(self.app)
        return self._place

    @property
    def lease(self) -> Lease:
        if self._lease is None:
            self._lease = Lease(self.place)
        return self._lease

    def setup_schedule(self) -> None:
        pool.prepare_schema(self.place.conninfo, self.place.settings)
        self.sync_config()

    def config_entries(self) -> dict[str, dict]:
        """The app's ``beat_schedule``, with Celery's default cleanup entry when Celery would add it."""
        entries = dict(self.app.conf.beat_schedule or {})
        if (self.app.conf.result_expires and "celery.backend_cleanup" not in entries
                and not getattr(self.app.backend, "supports_autoexpire", False)):
            entries["celery.backend_cleanup"] = {
                "task": "celery.backend_cleanup", "schedule": crontab("0", "4", "*"),
                "options": {"expires": 12 * 3600},
            }
        return entries

    def sync_config(self) -> None:
        """Write ``beat_schedule`` into the table; an entry that cannot be stored is logged and left as it was."""
        rows, kept = [], []
        for name, entry in sorted(self.config_entries().items()):
            try:
                rows.append(config_row(self.app, name, entry, self.place.settings.beat_catch_up))
            except (ScheduleError, KeyError, TypeError) as exc:
                logger.error("beat: periodic task %r of beat_schedule cannot be stored, left as it was: %s", name, exc)
            kept.append(name)
        q = self.place.queries
        conn = self._connection()
        with conn.transaction():
            for row in rows:
                conn.execute(q["beat_entry_sync"], row)
            gone = [r["name"] for r in conn.execute(q["beat_entry_unconfigured"], {"names": kept})]
        if gone:
            logger.info("beat: removed periodic tasks no longer in beat_schedule: %s", ", ".join(sorted(gone)))
        logger.info("beat: %d periodic task(s) from beat_schedule in %s schema %s", len(rows),
                    dsn.describe(self.place.conninfo), self.place.settings.schema)

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn: psycopg.Connection[Any] = pool.connect(self.place.conninfo, settings=self.place.settings,
                                                         component="beat")
            conn.row_factory = dict_row
            self._conn = conn
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass

    # -- the loop ------------------------------------------------------------------------------------

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Take or renew the lease; while held, send every due run. Returns the seconds to sleep."""
        try:
            return self._tick()
        except _CONNECTION_ERRORS as exc:
            self._drop_connection()
            wait = min(self.max_interval, self.lease.seconds / 3)
            logger.warning("beat: the database is unavailable (%s); trying again in %.1fs", _first_line(exc), wait)
            return wait

    def _tick(self) -> float:
        conn = self._connection()
        lease = self.lease
        if not lease.ours or lease.due_in() <= 0:
            lease.hold(conn)
        if not lease.ours:
            return min(lease.due_in(), self.max_interval)
        rows = conn.execute(self.place.queries["beat_entry_active"]).fetchall()
        now = self.app.now()
        wake = self.max_interval
        for row in rows:
            if not lease.ours:
                break
            wake = min(wake, self._visit(conn, row, now))
        return max(0.0, min(wake, lease.due_in(), self.max_interval))

    def _visit(self, conn: psycopg.Connection[Any], row: dict, now: datetime) -> float:
        """Send what ``row`` has due; the seconds until it needs a look again."""
        name = row["name"]
        try:
            sched = self._schedule(row)
        except ScheduleError as exc:
            self._failed(conn, row, str(exc))
            return self.max_interval
        if row["run_requested_at"] is not None:
            self._send(conn, row, (), manual=row["run_requested_at"])
        if not row["enabled"]:
            return self.max_interval
        settings = self.place.settings
        held = self.lease.held
        assert held is not None and held.held_since is not None  # only the lease's holder visits entries
        try:
            plan = schedules.plan(sched, row["last_run_at"], now, held.held_since,
                                  row["catch_up"], settings.beat_catch_up_max)
        except Exception as exc:  # Celery's computation failed for this entry (Celery's beat logs and goes on too)
            self._failed(conn, row, f"cannot compute the next run: {type(exc).__name__}: {exc}")
            return self.max_interval
        if plan.runs or plan.last_run_at != row["last_run_at"]:
            self._send(conn, row, plan.runs, plan=plan)
        elif plan.next_run_at != row["next_run_at"] or row["error"] is not None:
            conn.execute(self.place.queries["beat_entry_next"],
                         {"name": name, "revision": row["revision"], "previous": row["last_run_at"],
                          "next_run_at": plan.next_run_at})
        return (plan.next_run_at - now).total_seconds()

    def _schedule(self, row: dict) -> Any:
        stored = row["schedule"]
        cached = self._schedules.get(row["name"])
        if cached is not None and cached[0] == stored:
            return cached[1]
        sched = schedules.parse(stored, self.app)
        self._schedules[row["name"]] = (stored, sched)
        return sched

    def _failed(self, conn: psycopg.Connection[Any], row: dict, error: str) -> None:
        if row["error"] != error:
            logger.error("beat: periodic task %r cannot be sent: %s", row["name"], error)
        conn.execute(self.place.queries["beat_entry_error"],
                     {"name": row["name"], "revision": row["revision"], "error": error[:1000]})

    # -- sending -------------------------------------------------------------------------------------

    def _send(self, conn: psycopg.Connection[Any], row: dict, runs: tuple, plan: schedules.Plan | None = None,
              manual: datetime | None = None) -> None:
        """Send ``runs`` (or one run-now) in one transaction fenced by the lease; nothing if the entry moved."""
        name = row["name"]
        schema = self.place.settings.schema
        try:
            args, kwargs, options = store.decode(self.app, name, row)
        except DurableError as exc:
            self._failed(conn, row, str(exc))
            return
        if manual is not None:
            sends = [(manual, schedules.task_id(schema, name, manual, manual=True))]
        else:
            sends = [(due, schedules.task_id(schema, name, due)) for due in runs]
        q = self.place.queries
        outcome = "sent"
        try:
            with conn.transaction() as tx:
                if not self.lease.fence(conn):
                    self.lease.lost()
                    outcome = "fenced"
                    raise psycopg.Rollback(tx)
                if manual is not None:
                    moved = conn.execute(q["beat_entry_ran_now"], {"name": name, "requested": manual,
                                                                    "task_id": sends[0][1]}).fetchone()
                else:
                    assert plan is not None  # scheduled runs come with their plan
                    moved = conn.execute(q["beat_entry_ran"], {
                        "name": name, "revision": row["revision"], "previous": row["last_run_at"],
                        "last_run_at": plan.last_run_at, "next_run_at": plan.next_run_at, "runs": len(sends),
                        "skipped": plan.skipped, "task_id": sends[-1][1] if sends else None,
                    }).fetchone()
                if moved is None:  # changed since read (or another beat sent it): look again next tick
                    outcome = "moved"
                    raise psycopg.Rollback(tx)
                for due, task_id in sends:
                    self._publish(conn, row, args, kwargs, options, task_id, due, manual is not None)
        except _CONNECTION_ERRORS:
            raise
        except Exception as exc:  # the publish failed: nothing was committed, the run stays due
            self._failed(conn, row, f"sending failed, retried at the next tick: {type(exc).__name__}: {exc}")
            return
        if outcome != "sent":
            return
        if plan is not None and plan.skipped:
            logger.warning("beat: periodic task %r: %d run(s) that fell due while no beat held the lease were "
                           "not sent (catch_up %s, at most %d per tick)", name, plan.skipped, row["catch_up"],
                           self.place.settings.beat_catch_up_max)

    def _publish(self, conn: psycopg.Connection[Any], row: dict, args: list, kwargs: dict, options: dict,
                 task_id: str, due: datetime, manual: bool) -> None:
        """Publish one run.

        Inside ``conn``'s transaction when the broker is this database, else just before it commits.
        """
        name, task_name = row["name"], row["task"]
        options = dict(options)
        options["headers"] = {**(options.get("headers") or {}), "celery_beat_task": True,
                              DUE_HEADER: {"entry": name, "due": due.isoformat(), "manual": manual}}
        options["task_id"] = task_id
        logger.info("Scheduler: Sending due task %s (%s) due %s id %s", name, task_name, due.isoformat(), task_id)
        task = self.app.tasks.get(task_name)
        if self.place.in_broker:
            options["retry"] = False  # a failed insert aborted the transaction: the next tick sends it again
            with enqueue.in_transaction(conn):
                self._apply(task, task_name, args, kwargs, options)
        else:
            self._apply(task, task_name, args, kwargs, options)

    def _apply(self, task: Any, task_name: str, args: list, kwargs: dict, options: dict) -> None:
        if task is not None:
            task.apply_async(args, kwargs, producer=self.producer, **options)
        else:
            self.app.send_task(task_name, args, kwargs, producer=self.producer, **options)

    # -- Celery's interface --------------------------------------------------------------------------

    def get_schedule(self) -> dict:
        """Celery's view of the entries (``celery beat`` shows only their count): built from the table."""
        try:
            conn = self._connection()
            rows = conn.execute(self.place.queries["beat_entry_active"]).fetchall()
        except (*_CONNECTION_ERRORS, ScheduleError):
            return {}
        found = {}
        for row in rows:
            try:
                found[row["name"]] = self.Entry(name=row["name"], task=row["task"], app=self.app,
                                                schedule=self._schedule(row), last_run_at=row["last_run_at"])
            except ScheduleError:
                continue
        return found

    def set_schedule(self, schedule: dict) -> None:
        """Celery's setter; the table is the schedule (change it through celery_durable.beat's API)."""

    schedule = property(get_schedule, set_schedule)

    def sync(self) -> None:
        """Nothing to flush: each run's state commits with it."""

    def close(self) -> None:
        """Hand the lease on and close the connection, then Celery's own clean-up."""
        try:
            if self._conn is not None and not self._conn.closed and self._lease is not None:
                self._lease.release(self._conn)
        except _CONNECTION_ERRORS:
            pass
        finally:
            self._drop_connection()
            super().close()

    @property
    def info(self) -> str:
        try:
            where = f"{dsn.describe(self.place.conninfo)} schema {self.place.settings.schema}"
        except ScheduleError as exc:
            return f"    . db -> {exc}"
        return f"    . db -> {where} (lease {self.place.settings.beat_lease_seconds:g}s)"


def config_row(app: Any, name: str, entry: dict, catch_up_default: str) -> dict:
    """The ``beat_entry_sync`` parameters of one ``beat_schedule`` entry; raises ScheduleError naming it."""
    if not isinstance(entry, dict) or "task" not in entry or "schedule" not in entry:
        raise ScheduleError("an entry needs 'task' and 'schedule'")
    unknown = set(entry) - {"task", "schedule", "args", "kwargs", "options", "relative", "catch_up"}
    if unknown:
        raise ScheduleError(f"unknown keys {sorted(unknown)}")
    value = entry["schedule"]
    if entry.get("relative") and isinstance(value, (int, float, timedelta)):
        value = schedule(value if isinstance(value, timedelta) else timedelta(seconds=value), relative=True)
    catch_up = entry.get("catch_up", catch_up_default)
    if catch_up not in schedules.CATCH_UP:
        raise ScheduleError(f"catch_up must be one of {', '.join(schedules.CATCH_UP)}, got {catch_up!r}")
    row = {"name": name, "task": entry["task"], "schedule": store.schedule_json(value), "catch_up": catch_up}
    row.update(store.encode(app, name, entry.get("args"), entry.get("kwargs"), entry.get("options")))
    return row


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
