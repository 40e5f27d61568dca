"""Many workers on one queue: what each extra worker costs the database and the round trip.

    python -m benchmarks.many_workers                       # hops: 1 vs 12 workers; drain: 1 vs 48
    python -m benchmarks.many_workers --hop-workers 1,12 --drain-workers 1,48 --hops 300 --n 6000 --rounds 2
    python -m benchmarks.many_workers --drain-workers ""     # hops only

Every worker is ``celery worker -P prefork -c 1`` with a name of its own, as
one host each would run it. Everything runs on a private PostgreSQL 15
cluster (``tests/support/pgcluster``; fsync and synchronous_commit on) in a
database nothing else uses, so its counters and its processes' CPU are ours.

* **hops**: sequential ``echo.delay().get()`` round trips (default 300, after
  20 warm-ups). Reported: the p50 and p95, and database transactions per task:
  the delta of ``xact_commit + xact_rollback`` in ``pg_stat_database`` over the
  hops, minus what the same workers cost while idle (measured right after, over
  ``--idle`` seconds, and scaled to the hops' window). Counters are read 12 s
  after the last statement: PostgreSQL flushes an idle backend's counters up to
  10 s late. Also the CPU the workers and the cluster spent over the hops alone
  (ms per hop), and the statements run per hop (``pg_stat_statements``, by the
  first characters of their text): where the extra time and transactions of
  more listening workers go.
* **drain**: N counted no-op tasks are queued in ``bench_drain`` first; then
  ``add_consumer`` starts every worker on it, and the run lasts until the N-th
  execution. Reported: tasks/s, the cluster's CPU seconds per 1,000 tasks (its
  postmaster, live backends and the reaped ones, from ``/proc``), the workers'
  own CPU per 1,000 tasks, and transactions per task.

Each figure is also given as a ratio to the run with the fewest workers in the
same round. ``--wakes designated,all`` runs each count with the transport's
``designated_wakes`` on and off in turn (the default, ``default``, leaves the
setting alone). Every figure goes to ``benchmarks/results/many-workers-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from benchmarks.configs import CONFIGS  # noqa: E402
from benchmarks.processes import cpu_seconds, processes, start_worker  # noqa: E402
from benchmarks.scaling import cluster_cpu_seconds  # noqa: E402

CLUSTER_CONF = ["fsync = on", "synchronous_commit = on", "shared_buffers = 128MB", "max_connections = 600",
                "shared_preload_libraries = 'pg_stat_statements'"]
#: Statements reported per hop (the most called ones).
STATEMENTS_SHOWN = 20
DATABASE = "bench_many"
#: Seconds after the last statement until every backend has flushed its counters.
STATS_SETTLE = 12.0
DRAIN_QUEUE = "bench_drain"


# --------------------------------------------------------------------------- the client side

def _xacts(admin_url: str) -> int:
    """Transactions of our database so far (read from another database, so the read is not counted)."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        return conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                            (DATABASE,)).fetchone()[0]


def _statements(url: str) -> dict[str, int]:
    """Calls so far of each statement of our database (pg_stat_statements), by its text's first line."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT query, calls FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
                            " WHERE d.datname = %s", (DATABASE,)).fetchall()
    calls: dict[str, int] = {}
    for query, n in rows:
        key = " ".join(query.split())[:90]
        calls[key] = calls.get(key, 0) + n
    return calls


def hops_client(hops: int, idle: float, admin_url: str, workers: list[int], data_dir: str) -> dict:
    """Warm up, then ``hops`` sequential round trips; transactions over them, less the idle background.

    Also the CPU the workers (``workers``: main pids) and the cluster spent over the hops alone, and the
    statements run per hop: where a hop's extra time and transactions go when more workers listen.
    """
    from benchmarks import app as m

    for i in range(20):
        m.echo.delay(i).get(timeout=30)
    time.sleep(STATS_SETTLE)
    statements0 = _statements(admin_url)
    x0, t0 = _xacts(admin_url), time.monotonic()
    cpu0, pg0 = workers_cpu_seconds(set(workers)), cluster_cpu_seconds(Path(data_dir))
    samples = []
    for i in range(hops):
        s = time.perf_counter()
        assert m.echo.delay(i).get(timeout=30) == i
        samples.append((time.perf_counter() - s) * 1000)
    cpu1, pg1 = workers_cpu_seconds(set(workers)), cluster_cpu_seconds(Path(data_dir))
    time.sleep(STATS_SETTLE)
    statements1 = _statements(admin_url)
    per_hop = {q: (n - statements0.get(q, 0)) / hops for q, n in statements1.items() if n > statements0.get(q, 0)}
    x1, t1 = _xacts(admin_url), time.monotonic()
    i0 = x1
    time.sleep(idle)
    i1, t2 = _xacts(admin_url), time.monotonic()
    idle_rate = (i1 - i0) / (t2 - t1)
    samples.sort()
    return {
        "hops": hops, "p50_ms": statistics.median(samples), "p95_ms": samples[int(0.95 * (len(samples) - 1))],
        "xacts": x1 - x0, "window_s": t1 - t0, "idle_xacts_per_s": idle_rate,
        "xacts_per_task": ((x1 - x0) - idle_rate * (t1 - t0)) / hops,
        "workers_cpu_ms_per_hop": (cpu1 - cpu0) / hops * 1000, "pg_cpu_ms_per_hop": (pg1 - pg0) / hops * 1000,
        "statements_per_hop": dict(sorted(per_hop.items(), key=lambda kv: -kv[1])[:STATEMENTS_SHOWN]),
    }


def drain_fill(n: int, queue: str = DRAIN_QUEUE, purge_first: bool = True) -> str:
    """Queue n counted tasks in the drain queue (nobody consumes it yet); return the counter key.

    ``purge_first=False`` keeps what the queue holds (``benchmarks.shared_db`` drains behind a backlog).
    """
    from benchmarks.workloads import purge

    from benchmarks import app as m

    if purge_first:
        purge(m.app, [queue])
    key = f"bench:{uuid.uuid4().hex}"
    with m.app.producer_or_acquire() as producer:
        for _ in range(n):
            m.count.apply_async((key, n), queue=queue, producer=producer)
    m.app.close()  # pipelined publishes are flushed
    return key


def drain_run(key: str, n: int, workers: int, timeout: float, queue: str = DRAIN_QUEUE) -> dict:
    """Start every worker on the drain queue; wait for the n-th execution; then stop them consuming it."""
    from benchmarks.workloads import _counter, wait_count

    from benchmarks import app as m

    t0 = time.perf_counter()
    replies = m.app.control.add_consumer(queue, reply=True, timeout=10, limit=workers)
    if len(replies) < workers:
        raise RuntimeError(f"only {len(replies)} of {workers} workers answered add_consumer")
    t1, _ = wait_count(_counter(), key, n, timeout)
    m.app.control.cancel_consumer(queue, reply=True, timeout=10, limit=workers)
    return {"n": n, "seconds": t1 - t0, "tps": n / (t1 - t0)}


# --------------------------------------------------------------------------- the run

def workers_cpu_seconds(mains: set[int]) -> float:
    """CPU seconds of the worker processes (main pids): each with its reaped children, and the live ones."""
    return sum(cpu_seconds(pid, reaped=True) for pid in mains) + sum(
        cpu_seconds(pid) for pid, ppid, _ in processes() if ppid in mains)


def _client(env: dict, *args: str, timeout: float, stdin: str | None = None) -> dict:
    done = subprocess.run([sys.executable, "-m", "benchmarks.many_workers", *args], env=env, cwd=str(ROOT),
                          capture_output=True, text=True, timeout=timeout, input=stdin)
    if done.returncode != 0:
        raise RuntimeError((done.stderr or done.stdout).strip()[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(env: dict, data_dir: Path, admin_url: str, count: int, hops: int | None, drain: int | None,
            idle: float, timeout: float) -> dict:
    """Start ``count`` workers (-c 1 each); run the hops and/or the drain against them."""
    started = [start_worker(env, 1, "prefork", "-n", f"w{i}@%h") for i in range(count)]
    out: dict = {"workers": count}
    try:
        for w in started:
            w.wait_ready(300)
        if hops:
            out["hops"] = _client(env, "hops-client", str(hops), str(idle), admin_url,
                                  ",".join(str(w.pid) for w in started), str(data_dir), timeout=timeout + idle + 120)
        if drain:
            key = _client(env, "drain-fill", str(drain), timeout=timeout)["key"]
            time.sleep(STATS_SETTLE)
            mains = {w.pid for w in started}
            x0, cpu0, wcpu0 = _xacts(admin_url), cluster_cpu_seconds(data_dir), workers_cpu_seconds(mains)
            res = _client(env, "drain-run", key, str(drain), str(count), str(timeout), timeout=timeout + 60)
            cpu1, wcpu1 = cluster_cpu_seconds(data_dir), workers_cpu_seconds(mains)
            time.sleep(STATS_SETTLE)
            res["pg_cpu_s_per_1000"] = (cpu1 - cpu0) / drain * 1000
            res["workers_cpu_s_per_1000"] = (wcpu1 - wcpu0) / drain * 1000
            res["xacts_per_task"] = (_xacts(admin_url) - x0) / drain
            out["drain"] = res
    finally:
        for w in started:
            w.kill()
    return out


def report(runs: list[dict]) -> None:
    """Each part's figures per worker count, with the ratio to the fewest workers of the same round."""
    keys = {"hops": ["p50_ms", "p95_ms", "xacts_per_task", "idle_xacts_per_s", "workers_cpu_ms_per_hop",
                     "pg_cpu_ms_per_hop"],
            "drain": ["tps", "pg_cpu_s_per_1000", "workers_cpu_s_per_1000", "xacts_per_task"]}
    for part, names in keys.items():
        rows = [r for r in runs if part in r]
        if not rows:
            continue
        print(f"\n{part}:")
        for r in rows:
            base = min((b for b in rows if b["round"] == r["round"] and b["wakes"] == r["wakes"]),
                       key=lambda b: b["workers"])
            cells = []
            for name in names:
                v, b = r[part][name], base[part][name]
                cells.append(f"{name} {v:.2f}" + (f" ({v / b:.2f}x)" if b and r is not base else ""))
            print(f"  r{r['round']} {r['wakes']:>10} {r['workers']:3d} workers: " + ", ".join(cells))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.many_workers", description=__doc__.splitlines()[0])
    ap.add_argument("--hop-workers", default="1,12", help="worker counts of the hops part ('' to skip)")
    ap.add_argument("--drain-workers", default="1,48", help="worker counts of the drain part ('' to skip)")
    ap.add_argument("--hops", type=int, default=300)
    ap.add_argument("--n", type=int, default=6000, help="tasks the drain part queues")
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of the idle-background window")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--wakes", default="default",
                    help="designated_wakes settings to run in turn: designated, all, default (comma-separated)")
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args(argv)
    hop_counts = {int(x) for x in args.hop_workers.split(",") if x.strip()}
    drain_counts = {int(x) for x in args.drain_workers.split(",") if x.strip()}
    from tests.support.pgcluster import PG15_BIN, start_cluster

    cluster = start_cluster(conf=CLUSTER_CONF, binaries=PG15_BIN if (PG15_BIN / "initdb").exists() else None)
    results: dict = {"params": vars(args), "machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()},
                     "runs": []}
    try:
        cluster.create_database(DATABASE)
        import psycopg

        with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:  # read from there, for any database
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        url, admin_url = cluster.url(DATABASE), cluster.url("postgres")
        env = CONFIGS["pg"].env(BENCH_BROKER=url, BENCH_BACKEND=url)
        wakes = [w.strip() for w in args.wakes.split(",") if w.strip()]
        for rnd in range(1, args.rounds + 1):
            for count in sorted(hop_counts | drain_counts):
                for wake in wakes:
                    flag = {"designated": {"BENCH_DESIGNATED_WAKES": "1"}, "all": {"BENCH_DESIGNATED_WAKES": "0"}}
                    res = measure({**env, **flag.get(wake, {})}, cluster.data, admin_url, count,
                                  args.hops if count in hop_counts else None,
                                  args.n if count in drain_counts else None, args.idle, args.timeout)
                    res["round"], res["wakes"] = rnd, wake
                    results["runs"].append(res)
                    print(f"r{rnd} {wake} {count} workers: "
                          f"{json.dumps({k: v for k, v in res.items() if k not in ('round', 'wakes')})}", flush=True)
    finally:
        cluster.destroy()
    results["machine"]["loadavg_end"] = os.getloadavg()
    report(results["runs"])
    out = ROOT / "benchmarks" / "results" / f"many-workers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "hops-client":
        print(json.dumps(hops_client(int(sys.argv[2]), float(sys.argv[3]), sys.argv[4],
                                     [int(p) for p in sys.argv[5].split(",")], sys.argv[6])))
        raise SystemExit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "drain-fill":
        print(json.dumps({"key": drain_fill(int(sys.argv[2]))}))
        raise SystemExit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "drain-run":
        print(json.dumps(drain_run(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))))
        raise SystemExit(0)
    raise SystemExit(main())
