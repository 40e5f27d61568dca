"""The app of the transport worker tests: the postgresql:// broker under test, tunable from the environment.

``make_app()`` builds the same app (same task names) in the worker and in the
test process. Environment (all optional except the first two):

- CELERY_DURABLE_URL / CELERY_DURABLE_SCHEMA: database and schema of the broker
  and of the ``executions`` table;
- CELERY_DURABLE_BACKEND: result backend URL (default: none);
- CELERY_DURABLE_LEASE (lease_seconds, default 2), CELERY_DURABLE_POLL
  (polling_interval, default 0.5), CELERY_DURABLE_NATIVE_DELAY
  (native_delay_threshold, default 60), CELERY_DURABLE_PREFETCH
  (worker_prefetch_multiplier, default 4), CELERY_DURABLE_SYNCHRONOUS_COMMIT and
  CELERY_DURABLE_CONFIRM_PUBLISH (the settings, default true),
  CELERY_DURABLE_WAKE_AFTER_COMMIT (the setting, default false), CELERY_DURABLE_DESIGNATED_WAKES
  (the setting, default true), CELERY_DURABLE_MAINTENANCE
  (maintenance_interval, default 30).

Executions are counted in ``<schema>.executions`` through a connection of the
task's own (not the broker's pool), so counts never depend on the broker under
test (the test creates the table before starting workers). ``_Recorder.record`` retries while the database is unreachable (the restart test
stops PostgreSQL under load): a failed count must not turn into a failed task.
"""

from __future__ import annotations

import os
import threading
import time

import psycopg
from celery import Celery
from psycopg import sql

import celery_durable  # noqa: F401  (registers the postgresql:// broker scheme)

EXECUTIONS_DDL = (
    "CREATE TABLE IF NOT EXISTS {}.executions "
    "(seq bigserial PRIMARY KEY, tag text NOT NULL, pid int, redelivered boolean,"
    " at timestamptz NOT NULL DEFAULT now())"
)


def create_executions(conn: psycopg.Connection, schema: str) -> None:
    conn.execute(sql.SQL(EXECUTIONS_DDL).format(sql.Identifier(schema)))


def make_app(env: dict | None = None) -> Celery:
    env = os.environ if env is None else env
    url = env.get("CELERY_DURABLE_URL", "")
    schema = env.get("CELERY_DURABLE_SCHEMA", "celery_durable")
    options = {
        "schema": schema,
        "lease_seconds": float(env.get("CELERY_DURABLE_LEASE", "2")),
        "polling_interval": float(env.get("CELERY_DURABLE_POLL", "0.5")),
        "native_delay_threshold": float(env.get("CELERY_DURABLE_NATIVE_DELAY", "60")),
        "connect_timeout": 5,
        "maintenance_interval": float(env.get("CELERY_DURABLE_MAINTENANCE", "30")),
        # "false" as a string, as it would come from a config file
        "synchronous_commit": env.get("CELERY_DURABLE_SYNCHRONOUS_COMMIT", "true"),
        "confirm_publish": env.get("CELERY_DURABLE_CONFIRM_PUBLISH", "true"),
        "wake_after_commit": env.get("CELERY_DURABLE_WAKE_AFTER_COMMIT", "false"),
        "designated_wakes": env.get("CELERY_DURABLE_DESIGNATED_WAKES", "true"),
    }
    app = Celery("transport_app")
    app.conf.update(
        broker_url=url,
        result_backend=env.get("CELERY_DURABLE_BACKEND") or None,
        broker_transport_options=options,
        result_backend_transport_options={"schema": schema, "synchronous_commit": options["synchronous_commit"]},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_hijack_root_logger=False,
        worker_prefetch_multiplier=int(env.get("CELERY_DURABLE_PREFETCH", "4")),
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
    )
    app.task(name="t.add")(add)
    app.task(name="t.echo")(echo)
    app.task(name="t.record", bind=True)(record)
    app.task(name="t.record_late", bind=True, acks_late=True)(record_late)
    return app


# Module-level task functions: every app made here registers the same callables (Celery warns
# when one name gets different callables). They only run in workers, configured by os.environ.


def add(x, y):
    return x + y


def echo(value):
    return value


def record(task, tag, sleep=0.0):
    """Count one execution of ``tag`` (outside the broker), optionally after sleeping."""
    if sleep:
        time.sleep(sleep)
    redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
    _recorder().record(tag, redelivered)
    return tag


def record_late(task, tag, sleep=0.0):
    """``record`` registered with acks_late=True."""
    return record(task, tag, sleep)


_the_recorder = None


def _recorder() -> "_Recorder":
    global _the_recorder
    if _the_recorder is None:
        _the_recorder = _Recorder(os.environ.get("CELERY_DURABLE_URL", ""),
                                  os.environ.get("CELERY_DURABLE_SCHEMA", "celery_durable"))
    return _the_recorder


class _Recorder:
    """One connection per process (re-made after fork or loss) writing to ``<schema>.executions``."""

    def __init__(self, url: str, schema: str) -> None:
        self.url = url
        self.schema = schema
        self._conn: psycopg.Connection | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._insert = sql.SQL("INSERT INTO {}.executions (tag, pid, redelivered) VALUES (%s, %s, %s)").format(
            sql.Identifier(schema))

    def record(self, tag: str, redelivered: bool, give_up_after: float = 120.0) -> None:
        deadline = time.monotonic() + give_up_after
        with self._lock:
            while True:
                try:
                    if self._conn is None or self._pid != os.getpid() or self._conn.closed:
                        self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=3)
                        self._pid = os.getpid()
                    self._conn.execute(self._insert, (tag, os.getpid(), redelivered))
                    return
                except psycopg.OperationalError:
                    self._conn = None
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)


app = make_app()


# -- helpers shared by tests/worker/test_transport_*.py and tests/chaos/test_transport_*.py ------------


def wait_for(condition, timeout: float, what: str, interval: float = 0.1):
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class Harness:
    """What a transport test needs: the worker env, an app in this process, and SQL on the test schema."""

    def __init__(self, url: str, schema: str, env: dict, start) -> None:
        self.url = url
        self.schema = schema
        self.env = dict(env)
        self._start = start
        self.app = make_app(self.env)
        with self.app.connection_for_write() as conn:
            conn.connect()  # the transport creates the schema on first use
        self.db = psycopg.connect(url, autocommit=True)
        create_executions(self.db, schema)

    def close(self) -> None:
        self.db.close()
        self.app.close()

    def configure(self, **env: str) -> None:
        """Change the environment of later workers and of this process's app."""
        self.env.update(env)
        self.app.close()
        self.app = make_app(self.env)

    def task(self, name: str):
        return self.app.tasks[f"t.{name}"]

    def start(self, *args: str, concurrency: int = 2, env: dict | None = None, quiet: bool = True, **kwargs):
        """Start ``celery worker`` on transport_app; ``quiet`` drops gossip/heartbeats (no event rows)."""
        extra = ("--without-gossip", "--without-heartbeat") if quiet else ()
        return self._start("tests.apps.transport_app", *extra, *args, concurrency=concurrency,
                           env={**self.env, **(env or {})}, **kwargs)

    def q(self, query: str, *params):
        """Run ``query`` with ``{s}`` standing for the quoted test schema; return all rows.

        Reconnects once if the server went away (the restart test restarts it).
        """
        text = sql.SQL(query).format(s=sql.Identifier(self.schema))
        try:
            cur = self.db.execute(text, params)
        except psycopg.OperationalError:
            self.db.close()
            self.db = psycopg.connect(self.url, autocommit=True)
            cur = self.db.execute(text, params)
        return cur.fetchall() if cur.description else []

    def one(self, query: str, *params):
        return self.q(query, *params)[0][0]

    def executed(self) -> list[str]:
        return [r[0] for r in self.q("SELECT tag FROM {s}.executions ORDER BY seq")]

    def executions_of(self, tag: str) -> int:
        return self.one("SELECT count(*) FROM {s}.executions WHERE tag = %s", tag)

    def distinct_executed(self) -> int:
        return self.one("SELECT count(DISTINCT tag) FROM {s}.executions")

    def redelivered(self) -> int:
        """Executions of a message that had been delivered before (to a worker since killed, say)."""
        return self.one("SELECT count(*) FROM {s}.executions WHERE redelivered")

    def messages(self, queue: str | None = None) -> int:
        if queue is None:
            return self.one("SELECT count(*) FROM {s}.message")
        return self.one("SELECT count(*) FROM {s}.message WHERE queue = %s", queue)
