"""What the wake-up NOTIFY costs when several processes publish: messages/s with the trigger on and off.

    python -m benchmarks.notify_cost [--producers 1,4,8] [--n 2400] [--rounds 3]

PostgreSQL serializes the commits of transactions that NOTIFY: one lock,
cluster-wide, held from before the commit record until the commit has been
flushed. Every publish NOTIFYs through the ``message_notify`` statement
trigger, so confirmed publishes from several processes cannot share WAL
flushes. This measures it on a private PostgreSQL 15 cluster (fsync on): P
processes publish N messages in all through Kombu and this transport (no
Celery, so the database side shows), confirmed (each publish one commit) and
pipelined (``confirm_publish: False``, commits shared), with the trigger
enabled and disabled (``ALTER TABLE … DISABLE TRIGGER``; nothing consumes, so
nobody misses a wake-up). Confirmed publishes run twice: with the wake-up
inside the commit (the default) and with ``wake_after_commit`` (the wake-up in
a quick transaction of its own after the commit; transport/committer.py).
Rounds interleave the variants.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

SCHEMA = "notify_cost"
#: Transport options of each way to publish, in the order of the report.
VARIANTS = {
    "confirmed": {"confirm_publish": True},
    "confirmed, wake_after_commit": {"confirm_publish": True, "wake_after_commit": True},
    "pipelined": {"confirm_publish": False},
}
CLUSTER_CONF = ["fsync = on", "synchronous_commit = on", "shared_buffers = 128MB"]


def _producer(url: str, variant: str, n: int, ready, go, out) -> None:
    import kombu

    import celery_durable  # noqa: F401  (registers postgresql://)

    with kombu.Connection(url, transport_options={"schema": SCHEMA, **VARIANTS[variant]}) as conn:
        producer = conn.Producer()
        body = {"task": "bench.noop", "args": [], "kwargs": {}, "pad": "x" * 300}
        producer.publish(body, routing_key="bench", declare=[kombu.Queue("bench")])
        ready.release()
        go.wait()
        t0 = time.perf_counter()
        for _ in range(n):
            producer.publish(body, routing_key="bench")
        import celery_durable as cd

        cd.flush_publishes()
        out.put(time.perf_counter() - t0)


def run(url: str, producers: int, variant: str, n: int) -> float:
    """Messages/s of ``producers`` processes publishing n messages in all, started together."""
    ctx = mp.get_context("fork")
    ready, go, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    each = n // producers
    procs = [ctx.Process(target=_producer, args=(url, variant, each, ready, go, out)) for _ in range(producers)]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.acquire()
    go.set()
    seconds = max(out.get() for _ in procs)
    for proc in procs:
        proc.join()
    return each * producers / seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.notify_cost", description=__doc__.splitlines()[0])
    ap.add_argument("--producers", default="1,4,8")
    ap.add_argument("--n", type=int, default=2400, help="messages per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    import psycopg

    from tests.support.pgcluster import PG15_BIN, start_cluster

    cluster = start_cluster(conf=CLUSTER_CONF, binaries=PG15_BIN if (PG15_BIN / "initdb").exists() else None)
    try:
        url = cluster.url()
        res: dict = {}
        for _ in range(args.rounds):
            for producers in [int(p) for p in args.producers.split(",")]:
                for variant in VARIANTS:
                    for trigger in (True, False):
                        with psycopg.connect(url, autocommit=True) as conn:
                            exists = conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.message",)).fetchone()[0]
                            if exists:
                                conn.execute(f"TRUNCATE {SCHEMA}.message")
                                conn.execute(f"ALTER TABLE {SCHEMA}.message {'ENABLE' if trigger else 'DISABLE'}"
                                             " TRIGGER message_notify")
                        if not exists and not trigger:
                            continue  # the first run creates the schema (trigger on)
                        res.setdefault((producers, variant, trigger), []).append(run(url, producers, variant, args.n))
        print("| producers | publish | NOTIFY trigger on | off | on / off |")
        print("|---|---|---|---|---|")
        order = list(VARIANTS)
        for (producers, variant, trigger), values in sorted(res.items(), key=lambda kv: (kv[0][0], order.index(kv[0][1]))):
            if not trigger:
                continue
            off = res.get((producers, variant, False), [])
            ratio = statistics.median([a / b for a, b in zip(values[-len(off):], off)]) if off else float("nan")
            print(f"| {producers} | {variant} | {statistics.median(values):,.0f}/s"
                  f" | {statistics.median(off):,.0f}/s | {ratio:.2f} |")
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    finally:
        cluster.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
