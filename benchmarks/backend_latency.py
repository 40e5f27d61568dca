"""Result backend latency: ``delay().get()`` p50/p99 and a chord of 100, our backend vs Redis's, one run.

    python -m benchmarks.backend_latency [--n 300] [--pg postgresql://postgres@127.0.0.1:5432/test]

Each configuration starts its own ``celery worker`` (prefork, 2 processes) on
a fresh queue, warms up, then times sequential round trips and chords; the
configurations run back to back on the same machine so ratios are comparable.
Independent of the other benchmark files: this module is both the app
(``celery -A benchmarks.backend_latency worker``) and the driver.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid

from celery import Celery, chord

import celery_durable  # noqa: F401  (postgresql:// broker scheme)

app = Celery("backend_latency")
app.conf.update(
    broker_url=os.environ.get("BL_BROKER", "redis://127.0.0.1:6379/0"),
    result_backend=os.environ.get("BL_BACKEND", "redis://127.0.0.1:6379/0"),
    result_backend_transport_options={"schema": os.environ.get("BL_SCHEMA", "bench_backend")},
    broker_transport_options={"schema": os.environ.get("BL_SCHEMA", "bench_backend")},
    task_default_queue=os.environ.get("BL_QUEUE", "celery"),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bl.add")
def add(x, y):
    return x + y


@app.task(name="bl.tsum")
def tsum(values):
    return sum(values)


def _measure(broker: str, backend: str, n: int, chords: int, schema: str) -> dict:
    from celery_durable.testing.workers import start_worker

    queue = f"bl_{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, BL_BROKER=broker, BL_BACKEND=backend, BL_QUEUE=queue, BL_SCHEMA=schema)
    worker = start_worker("benchmarks.backend_latency", "-Q", queue, "-n", f"{queue}@%h",
                          "--without-gossip", "--without-heartbeat", env=env, loglevel="INFO", wait=False)
    client = Celery("bl_client", broker=broker, backend=backend)
    client.conf.update(result_backend_transport_options={"schema": schema},
                       broker_transport_options={"schema": schema}, task_default_queue=queue)
    c_add = client.signature("bl.add")
    c_tsum = client.signature("bl.tsum")
    try:
        worker.wait_ready()  # "ready." is logged at INFO
        for _ in range(30):  # warm-up: connections, pools, listener
            c_add.delay(1, 1).get(timeout=30)
        samples = []
        for i in range(n):
            t0 = time.perf_counter()
            c_add.delay(i, 1).get(timeout=30)
            samples.append((time.perf_counter() - t0) * 1000)
        chord_times = []
        for _ in range(chords):
            t0 = time.perf_counter()
            chord(c_add.clone((i, i)) for i in range(100))(c_tsum.clone()).get(timeout=120)
            chord_times.append((time.perf_counter() - t0) * 1000)
    finally:
        worker.kill()
        client.close()
    samples.sort()
    return {
        "p50": statistics.median(samples),
        "p99": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
        "chord100": statistics.median(chord_times),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="round trips per configuration")
    parser.add_argument("--chords", type=int, default=5, help="chords of 100 per configuration")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--with-pg-broker", action="store_true", help="also run broker=backend=PostgreSQL")
    args = parser.parse_args(argv)
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    configs = [
        ("redis broker + redis backend", args.redis, args.redis),
        ("redis broker + postgresql backend", args.redis, args.pg),
    ]
    if args.with_pg_broker:
        configs.append(("postgresql broker + postgresql backend", args.pg, args.pg))
    print(f"{'configuration':42} {'p50 ms':>8} {'p99 ms':>8} {'chord100 ms':>12}")
    for label, broker, backend in configs:
        r = _measure(broker, backend, args.n, args.chords, schema)
        print(f"{label:42} {r['p50']:8.2f} {r['p99']:8.2f} {r['chord100']:12.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
