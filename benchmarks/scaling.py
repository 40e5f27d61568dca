"""How end-to-end throughput scales with producer processes and worker processes, and what PostgreSQL spends.

    python -m benchmarks.scaling                       # pg, pg-pipelined, redis, rabbitmq; P 1,2,4; C 2,4,8
    python -m benchmarks.scaling --only pg,redis --producers 1,4 --concurrency 2 --n 3000 --rounds 3

For each config and worker concurrency C a ``celery worker -P prefork -c C``
starts; for each producer count P, P processes (forked by one client
process) each ``delay()`` N/P counted no-op tasks at once, and tasks/s is N
over the time from their common start to the N-th execution (counted in
Redis, as in ``benchmarks.workloads``). Rounds interleave the configs.

Our configs run on a private PostgreSQL 15 cluster (``tests/support/pgcluster``,
fsync and synchronous_commit on, 128 MB shared buffers), so every CPU second
its processes spend is ours: PostgreSQL CPU seconds per 1,000 tasks is the
cluster's CPU time over the run (the postmaster, its live children, and the
children that exited, which the postmaster reaped) per 1,000 tasks.

Writes every figure to ``benchmarks/results/scaling-<time>.json`` and, unless
``--no-plot``, the PNG (matplotlib: ``pip install 'celery-durable[bench]'``);
``--replot JSON`` redraws the PNG from such a file.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
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

DEFAULT_CONFIGS = ["pg", "pg-pipelined", "redis", "rabbitmq"]
CLUSTER_CONF = ["fsync = on", "synchronous_commit = on", "shared_buffers = 128MB", "max_connections = 200"]


# --------------------------------------------------------------------------- the client side

def _produce(n: int, key: str, total: int, ready, go) -> None:
    from benchmarks import app as m

    for _ in range(5):  # open connections before the clock starts
        m.count.delay(f"{key}:warm", 0)
    ready.release()
    go.wait()
    for _ in range(n):
        m.count.delay(key, total)


def client(producers: int, n: int, timeout: float) -> dict:
    """Fork the producers, start them together, wait for the n-th execution; print a JSON line."""
    from benchmarks.workloads import _counter, purge, wait_count

    from benchmarks import app as m

    purge(m.app, ["bench"])
    m.app.close()
    key = f"bench:{uuid.uuid4().hex}"
    each = n // producers
    total = each * producers
    ctx = mp.get_context("fork")
    ready, go = ctx.Semaphore(0), ctx.Event()
    procs = [ctx.Process(target=_produce, args=(each, key, total, ready, go)) for _ in range(producers)]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.acquire()
    t0 = time.perf_counter()
    go.set()
    t_end, _ = wait_count(_counter(), key, total, timeout)
    for proc in procs:
        proc.join(timeout)
    return {"tps": total / (t_end - t0), "n": total, "seconds": t_end - t0}


# --------------------------------------------------------------------------- PostgreSQL CPU

def cluster_cpu_seconds(data_dir: Path) -> float:
    """CPU seconds of a cluster's processes so far: the postmaster, its live children, its reaped ones."""
    pid = int((data_dir / "postmaster.pid").read_text().split()[0])
    # A child that exited meanwhile counts 0 here: the postmaster's reaped time has it once reaped.
    return cpu_seconds(pid, reaped=True) + sum(cpu_seconds(child) for child, ppid, _ in processes() if ppid == pid)


# --------------------------------------------------------------------------- the run

def measure(cfg, url: str | None, data_dir: Path | None, concurrency: int, producers_list: list[int],
            n: int, timeout: float) -> dict:
    """One worker with ``-c concurrency``; a measurement per producer count."""
    env = cfg.env(**({"BENCH_BROKER": url, "BENCH_BACKEND": url} if url else {}))
    worker = start_worker(env, concurrency)
    out = {}
    try:
        worker.wait_ready(60)
        for producers in producers_list:
            cpu0 = cluster_cpu_seconds(data_dir) if data_dir else None
            done = subprocess.run([sys.executable, "-m", "benchmarks.scaling", "client", str(producers), str(n),
                                   str(timeout)], env=env, cwd=str(ROOT), capture_output=True, text=True,
                                  timeout=timeout + 60)
            if done.returncode != 0:
                out[producers] = {"error": (done.stderr or done.stdout).strip().splitlines()[-1:]}
                continue
            res = json.loads(done.stdout.strip().splitlines()[-1])
            if data_dir:
                res["pg_cpu_s_per_1000"] = (cluster_cpu_seconds(data_dir) - cpu0) / res["n"] * 1000
                res["pg_cores"] = (cluster_cpu_seconds(data_dir) - cpu0) / res["seconds"]
            out[producers] = res
    finally:
        worker.kill()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(DEFAULT_CONFIGS), help="configs (benchmarks/configs.py names)")
    ap.add_argument("--producers", default="1,2,4")
    ap.add_argument("--concurrency", default="2,4,8")
    ap.add_argument("--n", type=int, default=6000, help="tasks per measurement")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=180)
    ap.add_argument("--png", default=str(ROOT / "benchmarks" / "scaling.png"))
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--replot", metavar="JSON", help="draw the PNG from an earlier run's JSON and exit")
    args = ap.parse_args(argv)
    if args.replot:
        plot(json.loads(Path(args.replot).read_text()), Path(args.png))
        return 0
    configs = [c.strip() for c in args.only.split(",") if c.strip()]
    producers = [int(x) for x in args.producers.split(",")]
    concurrencies = [int(x) for x in args.concurrency.split(",")]
    cluster = None
    if any(CONFIGS[c].ours_broker or CONFIGS[c].ours_backend for c in configs):
        from tests.support.pgcluster import PG15_BIN, start_cluster

        cluster = start_cluster(conf=CLUSTER_CONF, binaries=PG15_BIN if (PG15_BIN / "initdb").exists() else None)
    results: dict = {"params": vars(args), "machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()},
                     "runs": []}
    try:
        for rnd in range(1, args.rounds + 1):
            for concurrency in concurrencies:
                for name in configs:
                    cfg = CONFIGS[name]
                    ours = cfg.ours_broker or cfg.ours_backend
                    url = cluster.url() if ours else None
                    res = measure(cfg, url, cluster.data if ours else None, concurrency, producers, args.n, args.timeout)
                    for p, r in res.items():
                        results["runs"].append({"round": rnd, "config": name, "concurrency": concurrency,
                                                "producers": p, **r})
                        print(f"r{rnd} {name:13s} -c {concurrency} x{p} producers: "
                              + (f"{r['tps']:7.0f} tasks/s" if "tps" in r else f"FAILED {r['error']}")
                              + (f"  pg {r['pg_cpu_s_per_1000']:.2f} cpu-s/1000 ({r['pg_cores']:.2f} cores)"
                                 if "pg_cpu_s_per_1000" in r else ""), flush=True)
    finally:
        if cluster is not None:
            cluster.destroy()
    results["machine"]["loadavg_end"] = os.getloadavg()
    out = ROOT / "benchmarks" / "results" / f"scaling-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    if not args.no_plot:
        plot(results, Path(args.png))
    print(f"results: {out}" + ("" if args.no_plot else f", plot: {args.png}"))
    return 0


def medians(results: dict, key: str) -> dict:
    """(config, concurrency) -> [(producers, median of key)]."""
    by: dict = {}
    for r in results["runs"]:
        if key in r:
            by.setdefault((r["config"], r["concurrency"]), {}).setdefault(r["producers"], []).append(r[key])
    return {k: sorted((p, statistics.median(v)) for p, v in ps.items()) for k, ps in by.items()}


def plot(results: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tps, cpu = medians(results, "tps"), medians(results, "pg_cpu_s_per_1000")
    concurrencies = sorted({c for _, c in tps})
    configs = list(dict.fromkeys(c for c, _ in tps))
    colors = {name: f"C{i}" for i, name in enumerate(configs)}
    styles = {c: s for c, s in zip(concurrencies, ["-", "--", ":", "-."])}
    fig, axes = plt.subplots(1, len(concurrencies) + 1, figsize=(4.2 * (len(concurrencies) + 1), 4), squeeze=False)
    axes = axes[0]
    for ax, concurrency in zip(axes, concurrencies):
        for name in configs:
            points = tps.get((name, concurrency))
            if points:
                ax.plot([p for p, _ in points], [v for _, v in points], marker="o", label=name, color=colors[name])
        ax.set_title(f"worker -c {concurrency}")
        ax.set_xlabel("producer processes")
        ax.set_ylabel("tasks/s end to end")
        ax.set_xticks(sorted({p for pts in tps.values() for p, _ in pts}))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend()
    ax = axes[-1]
    for (name, concurrency), points in sorted(cpu.items()):
        ax.plot([p for p, _ in points], [v for _, v in points], marker="o", label=f"{name} -c {concurrency}",
                color=colors[name], linestyle=styles.get(concurrency, "-"))
    ax.set_title("PostgreSQL CPU per 1,000 tasks")
    ax.set_xlabel("producer processes")
    ax.set_xticks(sorted({p for pts in cpu.values() for p, _ in pts}))
    ax.set_ylabel("CPU seconds")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    load = results["machine"]
    rounds = results["params"].get("rounds", 1)
    fig.suptitle(f"medians of {rounds} round(s), {results['params']['n']:,} tasks each; {load['cpus']} CPUs, "
                 f"load average {load['loadavg_start'][0]:.1f} at the start, {load['loadavg_end'][0]:.1f} at the end")
    fig.tight_layout()
    fig.savefig(png, dpi=90)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        print(json.dumps(client(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))))
        raise SystemExit(0)
    raise SystemExit(main())
