"""Real beat processes for the beat tests (``celery beat`` or ``celery worker --beat``) and the runs they sent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import sql

from celery_durable.beat.schedules import task_id


@dataclass
class BeatProcess:
    """A ``celery beat`` (or ``worker --beat``) in its own process group; its output goes to a log file."""

    proc: subprocess.Popen
    log_path: Path
    kind: str
    killed: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def owns(self, pid: int) -> bool:
        """Whether ``pid`` (a lease holder's) is this process or one of its group (a worker's embedded beat)."""
        try:
            return pid == self.proc.pid or os.getpgid(pid) == self.proc.pid
        except ProcessLookupError:
            return False

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)
        self.killed = True

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown (the lease is handed on), SIGKILL if it does not exit."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()


def start_beat(app: str, env: dict[str, str], kind: str = "beat", *args: str) -> BeatProcess:
    """Start ``celery -A app beat`` (kind ``beat``) or ``celery -A app worker --beat`` (kind ``worker``)."""
    env = {**env, "C_FORCE_ROOT": "1"}
    fd, name = tempfile.mkstemp(prefix=f"celery-{kind}-", suffix=".log")
    log = os.fdopen(fd, "w")
    workdir = tempfile.mkdtemp(prefix="celery-beat-")  # each its own pid and schedule files
    base = [sys.executable, "-m", "celery", "-A", app]
    if kind == "beat":
        argv = [*base, "beat", "-l", "INFO", "-s", os.path.join(workdir, "schedule"), "--pidfile=", *args]
    else:
        argv = [*base, "worker", "--beat", "-l", "INFO", "-c", "1", "-Q", "celery", "--without-mingle",
                "--without-gossip", "-s", os.path.join(workdir, "schedule"), *args]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=os.getcwd(),
                            start_new_session=True)
    log.close()
    return BeatProcess(proc, Path(name), kind)


def _q(schema: str, text: str) -> sql.Composed:
    return sql.SQL(text).format(schema=sql.Identifier(schema))


@dataclass(frozen=True)
class Run:
    """One message a beat sent: its entry, due time and task id."""

    entry: str
    due: datetime
    id: str


def runs(pg_url: str, schema: str) -> list[Run]:
    """Every message the beats left in the queue ``beat_runs``, oldest due first (none before the schema exists)."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        try:
            rows = conn.execute(_q(schema, """
                SELECT payload::jsonb -> 'headers' -> 'celery_durable_beat' ->> 'entry',
                       (payload::jsonb -> 'headers' -> 'celery_durable_beat' ->> 'due')::timestamptz,
                       payload::jsonb -> 'headers' ->> 'id'
                FROM {schema}.message WHERE queue = 'beat_runs'""")).fetchall()
        except psycopg.errors.UndefinedTable:  # no beat has created the schema yet
            return []
    return sorted((Run(*row) for row in rows), key=lambda r: (r.entry, r.due))


def lease(pg_url: str, schema: str) -> dict | None:
    """The beat lease's row (holder, token, expires_at, held_since, now by the database's clock), or None."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.row_factory = psycopg.rows.dict_row
        try:
            return conn.execute(_q(schema, "SELECT *, clock_timestamp() AS now FROM {schema}.beat_lease")).fetchone()
        except psycopg.errors.UndefinedTable:
            return None


@dataclass
class Tally:
    """Runs per entry, doubles (a task id or due time sent more than once) and holes in the sequence of due times."""

    runs: int = 0
    doubled: int = 0
    missing: int = 0
    wrong_ids: int = 0
    first: datetime | None = None
    last: datetime | None = None


def tally(found: list[Run], schema: str, entry: str, step: timedelta | None) -> Tally:
    """Count ``entry``'s runs; ``step``: the interval between due times (None: at most one per minute, crontab)."""
    mine = [r for r in found if r.entry == entry]
    result = Tally(runs=len(mine))
    if not mine:
        return result
    by_id = Counter(r.id for r in mine)
    by_due = Counter(r.due for r in mine)
    result.doubled = sum(n - 1 for n in by_id.values() if n > 1) + sum(n - 1 for n in by_due.values() if n > 1)
    result.wrong_ids = sum(1 for r in mine if r.id != task_id(schema, entry, r.due))
    dues = sorted(by_due)
    result.first, result.last = dues[0], dues[-1]
    for before, after in zip(dues, dues[1:]):
        if step is not None:
            result.missing += round((after - before) / step) - 1
        else:
            result.missing += round((after - before) / timedelta(minutes=1)) - 1
    return result


def wait_for(condition, timeout: float, what: str, interval: float = 0.1):
    """Poll ``condition()`` until it returns something true; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(interval)
