"""The Celery app every benchmark worker (and client) runs, configured by environment variables.

BENCH_BROKER    broker URL (postgresql://…, redis://…, amqp://…, sqla+…)
BENCH_BACKEND   result backend URL (postgresql://…, redis://…, db+…)
BENCH_SCHEMA    PostgreSQL schema for our transport/backend (default ``bench``)
BENCH_COUNTER   Redis URL where counting tasks INCR a key (default redis://127.0.0.1:6379/15):
                executions are counted OUTSIDE the broker/backend under test, with one cheap INCR.
BENCH_QUEUE     queue the worker consumes (default ``bench``)
BENCH_SYNCHRONOUS_COMMIT  "0": our transport and backend with synchronous_commit off
BENCH_CONFIRM_PUBLISH     "0": our transport pipelines publishes (confirm_publish off);
                          "1" with an amqp:// broker: RabbitMQ publisher confirms on
BENCH_DESIGNATED_WAKES    "0" or "1": our transport's designated_wakes setting (unset: its default)
BENCH_TRACE_DIR           a directory: each worker process writes there when it received, started and
                          finished each task (``benchmarks.breakdown``)

Importing ``celery_durable`` (when it is importable) registers the postgresql:// broker scheme.
"""

from __future__ import annotations

import os
import sys

from celery import Celery, signals

try:  # registers postgresql:// with kombu; the other configs do not need it
    import celery_durable  # noqa: F401
except Exception:  # pragma: no cover - reported by configs.check()
    pass

BROKER = os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/10")
BACKEND = os.environ.get("BENCH_BACKEND", "redis://127.0.0.1:6379/11")
SCHEMA = os.environ.get("BENCH_SCHEMA", "bench")
COUNTER_URL = os.environ.get("BENCH_COUNTER", "redis://127.0.0.1:6379/15")
QUEUE = os.environ.get("BENCH_QUEUE", "bench")


def _is_ours(url: str) -> bool:
    return url.split("://", 1)[0].lower() in ("postgresql", "postgres")


app = Celery("bench")
conf: dict = dict(
    broker_url=BROKER,
    result_backend=BACKEND,
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
)
#: "0": our synchronous_commit setting off (the pg-nosync config).
SYNCHRONOUS_COMMIT = os.environ.get("BENCH_SYNCHRONOUS_COMMIT", "1") != "0"
#: Our transport: "0" pipelines publishes. An amqp:// broker: "1" turns publisher confirms on.
CONFIRM_PUBLISH = os.environ.get("BENCH_CONFIRM_PUBLISH", "")
if _is_ours(BROKER):
    conf["broker_transport_options"] = {"schema": SCHEMA, "synchronous_commit": SYNCHRONOUS_COMMIT,
                                        "confirm_publish": CONFIRM_PUBLISH != "0"}
    if os.environ.get("BENCH_DESIGNATED_WAKES"):
        conf["broker_transport_options"]["designated_wakes"] = os.environ["BENCH_DESIGNATED_WAKES"] == "1"
elif BROKER.startswith("amqp") and CONFIRM_PUBLISH == "1":
    conf["broker_transport_options"] = {"confirm_publish": True}
if _is_ours(BACKEND):
    conf["result_backend_transport_options"] = {"schema": SCHEMA, "synchronous_commit": SYNCHRONOUS_COMMIT}
app.conf.update(conf)

_redis = None
_redis_pid = None


def _counter():
    """One Redis client per process (re-created after fork)."""
    global _redis, _redis_pid
    if _redis is None or _redis_pid != os.getpid():
        import redis

        _redis = redis.Redis.from_url(COUNTER_URL)
        _redis_pid = os.getpid()
    return _redis


@app.task(ignore_result=True)
def count(key, n=0):
    """A no-op task whose only effect is one INCR on the counter Redis (not the system under test).

    The execution that brings the counter to ``n`` also pushes to ``<key>:done``, so the client
    waits with one BLPOP instead of polling.
    """
    r = _counter()
    if r.incr(key) == n:
        r.rpush(f"{key}:done", 1)


@app.task
def echo(x):
    return x


@app.task
def inc(x):
    return x + 1


@app.task
def tsum(xs):
    return sum(xs)


@signals.worker_ready.connect
def _announce_ready(**_):
    # The worker runs at WARNING level (INFO logging costs per task); this line is what
    # celery_durable.testing.workers.WorkerProcess.wait_ready looks for (" ready.").
    print("bench worker ready.", file=sys.stderr, flush=True)


TRACE_DIR = os.environ.get("BENCH_TRACE_DIR")
if TRACE_DIR:
    import time

    _trace = {}

    def _stamp(label: str, task_id) -> None:
        """One line per event, in this process's own file (no lock between processes)."""
        pid = os.getpid()
        f = _trace.get(pid)
        if f is None:
            f = _trace[pid] = open(os.path.join(TRACE_DIR, str(pid)), "a", buffering=1)
        f.write(f"{label} {task_id} {time.monotonic_ns()}\n")

    signals.task_received.connect(lambda request=None, **_: _stamp("received", request.id), weak=False)
    signals.task_prerun.connect(lambda task_id=None, **_: _stamp("prerun", task_id), weak=False)
    signals.task_postrun.connect(lambda task_id=None, **_: _stamp("postrun", task_id), weak=False)
