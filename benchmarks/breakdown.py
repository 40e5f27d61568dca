"""Where a task's time and CPU go, per broker: the profile behind the targets the matrix does not meet.

    python -m benchmarks.breakdown                     # pg, pg-pipelined, pg-nosync, redis, rabbitmq(-confirm); 3 rounds
    python -m benchmarks.breakdown --only pg,redis --rounds 5 --hops 300 --n 3000

Two measurements per config and round, each with a fresh ``celery worker -P prefork -c 2``:

* **hop**: sequential ``echo.delay().get()`` round trips, each timed at five points through Celery's
  own signals, so every broker is cut at the same places: ``delay()`` called, ``delay()`` returned
  (client), ``task_received`` (the worker's main process has the message), ``task_prerun`` and
  ``task_postrun`` (the pool child; the result is stored before ``postrun``), ``get()`` returned.
  The worker writes its stamps to a file per process (``BENCH_TRACE_DIR``, see ``app.py``); stamps
  are joined by task id. The clock is ``CLOCK_MONOTONIC``, one for every process of the machine.
* **cpu**: CPU seconds per 1,000 counted no-op tasks, by process: the client publishing N tasks to a
  queue no worker consumes, then the worker's main process and its pool children consuming them
  (``add_consumer``), and each server (PostgreSQL, Redis, RabbitMQ) during each phase, from
  ``/proc``. The counter Redis (one INCR per task, every config) is in the Redis column of every config.

Medians over rounds go to stdout as two Markdown tables; every sample to
``benchmarks/results/breakdown-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from benchmarks.configs import CONFIGS  # noqa: E402
from benchmarks.processes import cpu_seconds, processes, start_worker  # noqa: E402

DEFAULT_CONFIGS = ["pg", "pg-pipelined", "pg-nosync", "redis", "rabbitmq-confirm", "rabbitmq"]
#: Process names (``/proc/<pid>/comm``) counted as each server.
SERVERS = {"postgres": ("postgres",), "redis": ("redis-server",), "rabbitmq": ("beam.smp",)}
#: The hop's stamps in time order, and the phase that ends at each.
STAMPS = [
    ("called", None),
    ("returned", "delay() returns"),
    ("received", "worker's main process has it"),
    ("prerun", "pool child starts it"),
    ("postrun", "result stored, task done"),
    ("got", "get() returns"),
]


# --------------------------------------------------------------------------- CPU

def cpu_snapshot(worker_pid: int) -> dict[str, float]:
    """CPU seconds so far of the worker's main process, its pool children and each server."""
    procs = processes()
    snap = {"worker main": cpu_seconds(worker_pid),
            "pool children": sum(cpu_seconds(pid) for pid, ppid, _ in procs if ppid == worker_pid)}
    for server, names in SERVERS.items():
        snap[server] = sum(cpu_seconds(pid) for pid, _, comm in procs if comm in names)
    return snap


# --------------------------------------------------------------------------- the client side

def client_hop(hops: int, trace_dir: str) -> dict:
    """Sequential round trips; returns each phase's samples in milliseconds."""
    from benchmarks import app as m

    for i in range(20):  # connections open, caches warm
        m.echo.delay(i).get(timeout=30)
    mine: dict[str, dict[str, int]] = {}
    for i in range(hops):
        task_id = str(uuid.uuid4())
        called = time.monotonic_ns()
        result = m.echo.apply_async((i,), task_id=task_id)
        returned = time.monotonic_ns()
        result.get(timeout=30)
        mine[task_id] = {"called": called, "returned": returned, "got": time.monotonic_ns()}
    for path in Path(trace_dir).iterdir():
        for line in path.read_text().splitlines():
            label, task_id, ns = line.split()
            if task_id in mine:
                mine[task_id][label] = int(ns)
    phases: dict[str, list[float]] = {}
    for stamps in mine.values():
        if len(stamps) != len(STAMPS):
            continue  # a stamp is missing (should not happen): leave the hop out
        for (before, _), (label, _) in zip(STAMPS, STAMPS[1:]):
            # In this order even where a phase overlaps the one before (it would show negative).
            phases.setdefault(label, []).append((stamps[label] - stamps[before]) / 1e6)
        phases.setdefault("total", []).append((stamps["got"] - stamps["called"]) / 1e6)
    return phases


def client_cpu(n: int, worker_pid: int, timeout: float) -> dict:
    """CPU seconds per 1,000 tasks: publishing n (client, servers), then consuming them (worker, servers)."""
    import redis

    from benchmarks import app as m
    from benchmarks.workloads import purge, wait_count

    counter = redis.Redis.from_url(os.environ["BENCH_COUNTER"])
    purge(m.app, ["bench_cost"])
    warm = f"bench:{uuid.uuid4().hex}"
    for _ in range(200):
        m.count.delay(warm, 200)
    wait_count(counter, warm, 200, timeout)
    key = f"bench:{uuid.uuid4().hex}"
    before, self_before = cpu_snapshot(worker_pid), _self_cpu()
    for _ in range(n):
        m.count.apply_async((key, n), queue="bench_cost")
    if m._is_ours(m.BROKER):
        from celery_durable import flush_publishes

        flush_publishes()  # pipelined publishes (pg-pipelined) are answered inside the window
    published, self_after = cpu_snapshot(worker_pid), _self_cpu()
    if not m.app.control.add_consumer("bench_cost", reply=True, timeout=5, limit=1):
        raise RuntimeError("no worker answered add_consumer")
    wait_count(counter, key, n, timeout)
    consumed = cpu_snapshot(worker_pid)
    m.app.control.cancel_consumer("bench_cost", reply=True, timeout=5, limit=1)
    per = 1000 / n
    publish = {"client": (self_after - self_before) * per,
               **{s: (published[s] - before[s]) * per for s in SERVERS}}
    consume = {k: (consumed[k] - published[k]) * per for k in consumed}
    return {"publish": publish, "consume": consume}


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------- the parent

def run_config(cfg, hops: int, n: int, timeout: float) -> dict:
    trace_dir = tempfile.mkdtemp(prefix="bench-trace-")
    env = cfg.env(BENCH_TRACE_DIR=trace_dir)
    worker = start_worker(env)
    try:
        worker.wait_ready(60)
        out = {}
        for mode, arg in (("hop", hops), ("cpu", n)):
            fd, path = tempfile.mkstemp(suffix=".json")
            os.close(fd)
            argv = [sys.executable, "-m", "benchmarks.breakdown", "--client", mode, "--count", str(arg),
                    "--worker-pid", str(worker.pid), "--trace-dir", trace_dir, "--out", path]
            subprocess.run(argv, env=env, cwd=str(ROOT), check=True, timeout=timeout)
            out[mode] = json.loads(Path(path).read_text())
            os.unlink(path)
        return out
    finally:
        worker.stop(timeout=10)
        for path in Path(trace_dir).iterdir():
            path.unlink()
        os.rmdir(trace_dir)


def report(names: list[str], results: dict) -> str:
    def med(values):
        return statistics.median(values) if values else float("nan")

    lines = ["Hop: `delay().get()`, medians of each phase in ms (every hop of every round)", "",
             "| phase | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, phase in [*[(s, p) for s, p in STAMPS if p], ("total", "round trip")]:
        cells = [med([v for r in results[c] for v in r["hop"].get(label, [])]) for c in names]
        lines.append(f"| {phase} | " + " | ".join(f"{v:.2f}" for v in cells) + " |")
    for side in ("publish", "consume"):
        lines += ["", f"CPU seconds per 1,000 tasks, {side} (median of rounds)", "",
                  "| process | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        keys = list(dict.fromkeys(k for c in names for r in results[c] for k in r["cpu"][side]))
        for key in keys + ["all"]:
            cells = []
            for c in names:
                per_round = [sum(r["cpu"][side].values()) if key == "all" else r["cpu"][side].get(key, 0.0)
                             for r in results[c]]
                cells.append(med(per_round))
            lines.append(f"| {key} | " + " | ".join(f"{v:.2f}" for v in cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=",".join(DEFAULT_CONFIGS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hops", type=int, default=200)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--timeout", type=float, default=180)
    ap.add_argument("--client", choices=["hop", "cpu"], help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--worker-pid", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--trace-dir", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.client:
        if args.client == "hop":
            data = client_hop(args.count, args.trace_dir)
        else:
            data = client_cpu(args.count, args.worker_pid, args.timeout)
        Path(args.out).write_text(json.dumps(data))
        return 0
    names = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown configs: {', '.join(unknown)}")
    results: dict[str, list] = {c: [] for c in names}
    for rnd in range(1, args.rounds + 1):
        for name in names:
            t = time.monotonic()
            results[name].append(run_config(CONFIGS[name], args.hops, args.n, args.timeout))
            print(f"[{time.strftime('%H:%M:%S')}] r{rnd} {name:18} {time.monotonic() - t:5.1f}s", flush=True)
    print(report(names, results))
    out = ROOT / "benchmarks" / "results" / f"breakdown-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"configs": names, "hops": args.hops, "n": args.n, "results": results}, indent=1))
    print(f"\nraw samples: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
