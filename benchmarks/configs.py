"""The broker/backend matrix and its reachability checks.

Each config is a broker URL + result backend URL passed to ``benchmarks.app`` by
environment variables. Redis databases are separate per role so nothing we
measure shares a keyspace with the execution counter (db 15) or with other
users of the server (db 0): broker 10, results 11, pg-on-redis broker 12,
rabbitmq results 13 (both rabbitmq configs; they never run at the same time).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field

PG_HOST = os.environ.get("BENCH_PG_HOST", "127.0.0.1")
PG_PORT = os.environ.get("BENCH_PG_PORT", "5432")
PG_DB = os.environ.get("BENCH_PG_DB", "test")
PG_USER = os.environ.get("BENCH_PG_USER", "postgres")
PG_URL = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{PG_DB}"
#: A database only the idle-cost workload uses, so pg_stat_database counts nobody else.
PG_IDLE_DB = os.environ.get("BENCH_PG_IDLE_DB", "bench_idle")
PG_IDLE_URL = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{PG_IDLE_DB}"
SCHEMA = os.environ.get("BENCH_SCHEMA", "bench")

REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379")
AMQP = os.environ.get("BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672//")
COUNTER = f"{REDIS}/15"


@dataclass(frozen=True)
class Config:
    name: str
    broker: str
    backend: str
    description: str
    #: What a returned ``delay()`` means with this broker (the report's guarantee row).
    guarantee: str = ""
    #: The postgresql:// transport/backend of this package is involved.
    ours_broker: bool = False
    ours_backend: bool = False
    extra_env: dict = field(default_factory=dict)

    def env(self, **overrides: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            BENCH_BROKER=self.broker,
            BENCH_BACKEND=self.backend,
            BENCH_SCHEMA=SCHEMA,
            BENCH_COUNTER=COUNTER,
            BENCH_QUEUE="bench",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        env.update(overrides)
        return env


#: What a returned delay() means, by broker (the report's first row; benchmarks/README explains each).
COMMITTED = "committed, on disk"
PIPELINED = "sent; committed moments later"
NOT_FLUSHED = "committed, not yet on disk"
IN_MEMORY = "in Redis's memory"
CONFIRMED = "confirmed: persisted by RabbitMQ"
UNCONFIRMED = "in the client's socket"

CONFIGS: dict[str, Config] = {
    c.name: c
    for c in [
        Config("pg", PG_URL, PG_URL, "postgresql:// broker + postgresql:// backend (schema bench)", COMMITTED,
               ours_broker=True, ours_backend=True),
        Config("pg-pipelined", PG_URL, PG_URL, "pg with confirm_publish=false: publishes pipelined, committed in groups",
               PIPELINED, ours_broker=True, ours_backend=True, extra_env={"BENCH_CONFIRM_PUBLISH": "0"}),
        Config("pg-nosync", PG_URL, PG_URL, "pg with synchronous_commit=false: publishes and results skip the fsync",
               NOT_FLUSHED, ours_broker=True, ours_backend=True, extra_env={"BENCH_SYNCHRONOUS_COMMIT": "0"}),
        Config("redis", f"{REDIS}/10", f"{REDIS}/11", "redis broker + redis results", IN_MEMORY),
        Config("rabbitmq-confirm", AMQP, f"{REDIS}/13", "amqp broker with publisher confirms + redis results",
               CONFIRMED, extra_env={"BENCH_CONFIRM_PUBLISH": "1"}),
        Config("rabbitmq", AMQP, f"{REDIS}/13", "amqp broker (RabbitMQ, defaults) + redis results", UNCONFIRMED),
        Config(
            "sqla",
            f"sqla+postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{PG_DB}",
            f"db+postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{PG_DB}",
            "kombu sqla+ broker + Celery db+ backend (SQLAlchemy, psycopg 3)", COMMITTED,
        ),
        Config("pg-on-redis", f"{REDIS}/12", PG_URL, "redis broker + postgresql:// backend", IN_MEMORY,
               ours_backend=True),
    ]
}
ORDER = list(CONFIGS)


# --------------------------------------------------------------------------- checks
# Run in a subprocess (``python -m benchmarks.configs check NAME``) with a timeout, so a
# half-written transport that hangs or crashes on import cannot take the suite down.

def _check_redis(url: str) -> None:
    import redis

    redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3).ping()


def _check_kombu(url: str) -> None:
    import kombu

    with kombu.Connection(url, connect_timeout=5, transport_options={"schema": SCHEMA}) as conn:
        conn.ensure_connection(max_retries=1)
        ch = conn.channel()
        ch.close()


def _check_backend(url: str) -> None:
    from celery import Celery

    app = Celery("check", backend=url)
    if url.startswith("postgres"):
        app.conf.result_backend_transport_options = {"schema": SCHEMA}
    backend = app.backend  # loads the class through celery.result_backends entry points
    backend.get_state("bench-check-nonexistent")


def check_in_process(name: str) -> None:
    cfg = CONFIGS[name]
    if cfg.ours_broker or cfg.ours_backend:
        import celery_durable  # noqa: F401
    _check_redis(COUNTER)
    if cfg.broker.startswith("redis"):
        _check_redis(cfg.broker)
    else:
        _check_kombu(cfg.broker)
    if cfg.backend.startswith("redis"):
        _check_redis(cfg.backend)
    else:
        _check_backend(cfg.backend)


def check(name: str, timeout: float = 45.0) -> tuple[bool, str]:
    """(reachable, reason) for a config; runs the probe in a subprocess with a timeout."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.configs", "check", name],
            capture_output=True, text=True, timeout=timeout,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
    except subprocess.TimeoutExpired:
        return False, f"reachability check timed out after {timeout:.0f}s"
    if proc.returncode == 0:
        return True, "ok"
    lines = [l for l in (proc.stdout + proc.stderr).strip().splitlines() if l.strip()]
    return False, (lines[-1] if lines else f"check exited {proc.returncode}")[:300]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "check":
        try:
            check_in_process(sys.argv[2])
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            print(f"{type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
            raise SystemExit(1)
        print(json.dumps({"ok": True}))
    else:
        print("usage: python -m benchmarks.configs check NAME", file=sys.stderr)
        raise SystemExit(2)
