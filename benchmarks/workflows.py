"""Durable workflows at real sizes (issue 20's goals): cost per task by size, against plain Celery on our broker.

    python -m benchmarks.workflows                          # every goal, 1 round
    python -m benchmarks.workflows --goals fanout,length --rounds 3
    python -m benchmarks.workflows --quick                  # small sizes only (a few minutes)

Every figure runs on a private PostgreSQL 15 cluster (``tests/support/pgcluster``, fsync and
synchronous_commit on) that is both broker and result backend, with the ``benchmarks.app`` tasks
(``echo``, ``inc``, ``tsum``) and one ``celery worker -P prefork`` (``-c 2`` unless a goal says
otherwise). Plain and durable runs of a goal alternate within a round, and each round starts its runs
three further on: the first large run after a worker starts on fresh tables was the slowest in most
rounds, whatever its shape. A run's time goes from the first ``apply_async()`` to the last result read,
so "per task" includes the workflow's start and end.
A canvas of fewer than 1,000 tasks (the small sizes the goals compare with) is run 5 times in a
row and its median run kept: one run of it lasts a fraction of a second.

Goals (the report prints each ratio next to its target):

- ``fanout``: ``durable(group)``, ``durable(chord)`` and a durable group of chains of 3, small and
  large, and the plain group (chord, group of chains) of the large size: ms per task.
- ``length``: ``durable_chain`` of 10 and of 1,000 steps: ms per step.
- ``many``: 1,000 chains of 5 started at once, durable and plain: tasks/s until the last finished.
- ``concurrency``: a group of 2,000 on a worker ``-c 8``, durable and plain: tasks/s.
- ``memory``: the resident memory of each worker process (main and pool children) while a durable
  group of 10,000 runs, against the same process idle after a warm-up: MB above idle (max of samples).

Writes every figure to ``benchmarks/results/workflows-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from benchmarks.configs import CONFIGS  # noqa: E402
from benchmarks.processes import processes, start_worker  # noqa: E402

CLUSTER_CONF = ["fsync = on", "synchronous_commit = on", "shared_buffers = 128MB", "max_connections = 200"]
GOALS = ("fanout", "length", "many", "concurrency", "memory")
#: A canvas smaller than this runs in well under a second: it is run SMALL_REPEATS times, the median kept.
SMALL_BELOW, SMALL_REPEATS = 1000, 5
#: Each round starts its batch this many runs further on (a shape's small, large and plain runs stay together).
ROTATE = 3


# --------------------------------------------------------------------------- the client side

def _canvas(m, shape: str, n: int):
    """The canvas of ``n`` tasks of a shape, and the result its get() must return."""
    from celery import chain, chord, group

    if shape == "group":
        return group(m.echo.s(i) for i in range(n)), list(range(n))
    if shape == "chord":
        return chord([m.echo.s(i) for i in range(n)], m.tsum.s()), n * (n - 1) // 2
    if shape == "chains":
        return group(chain(m.echo.s(i), m.inc.s(), m.inc.s()) for i in range(n // 3)), [i + 2 for i in range(n // 3)]
    if shape == "chain":
        return chain(m.echo.s(0), *[m.inc.s() for _ in range(n - 1)]), n - 1
    raise ValueError(shape)


def run_once(kind: str, shape: str, n: int, timeout: float) -> dict:
    """One canvas, plain or durable: seconds from apply_async() to its result."""
    from benchmarks import app as m
    from celery_durable import durable

    canvas, expected = _canvas(m, shape, n)
    tasks = (n // 3) * 3 if shape == "chains" else n + (1 if shape == "chord" else 0)
    t0 = time.perf_counter()
    result = (durable(canvas) if kind == "durable" else canvas).apply_async()
    got = result.get(timeout=timeout)
    seconds = time.perf_counter() - t0
    assert got == expected, (shape, n, str(got)[:200])
    return {"seconds": seconds, "tasks": tasks, "ms_per_task": seconds / tasks * 1000}


def run_many(kind: str, workflows: int, steps: int, timeout: float) -> dict:
    """``workflows`` chains of ``steps`` started at once: tasks/s until the last one finished."""
    from benchmarks import app as m
    from celery import chain
    from celery_durable import durable_chain

    t0 = time.perf_counter()
    results = []
    for w in range(workflows):
        sigs = [m.echo.s(w)] + [m.inc.s() for _ in range(steps - 1)]
        results.append((durable_chain(*sigs) if kind == "durable" else chain(*sigs)).apply_async())
    started = time.perf_counter() - t0
    for w, result in enumerate(results):
        assert result.get(timeout=timeout) == w + steps - 1
    seconds = time.perf_counter() - t0
    tasks = workflows * steps
    return {"seconds": seconds, "tasks": tasks, "tasks_per_s": tasks / seconds, "start_seconds": started}


def client(spec: dict) -> dict:
    """Warm the worker's pool with a small run of the same kind, then measure ``spec``."""
    what = spec["what"]
    if what == "many":
        run_many(spec["kind"], 10, spec["steps"], spec["timeout"])
        return run_many(spec["kind"], spec["workflows"], spec["steps"], spec["timeout"])
    run_once(spec["kind"], spec["shape"], 30, spec["timeout"])
    if spec["n"] >= SMALL_BELOW:
        return run_once(spec["kind"], spec["shape"], spec["n"], spec["timeout"])
    runs = [run_once(spec["kind"], spec["shape"], spec["n"], spec["timeout"]) for _ in range(SMALL_REPEATS)]
    return {**sorted(runs, key=lambda r: r["seconds"])[SMALL_REPEATS // 2], "repeats": SMALL_REPEATS}


# --------------------------------------------------------------------------- the run

def _client_run(env: dict, spec: dict) -> dict:
    done = subprocess.run([sys.executable, "-m", "benchmarks.workflows", "client", json.dumps(spec)], env=env,
                          cwd=str(ROOT), capture_output=True, text=True, timeout=spec["timeout"] * 2 + 120)
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-3:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _worker_pids(root_pid: int) -> list[int]:
    """The worker's main process and its pool children (below the ``celery worker`` launcher)."""
    found, frontier = [], [root_pid]
    table = processes()
    while frontier:
        pid = frontier.pop()
        found.append(pid)
        frontier += [child for child, ppid, _ in table if ppid == pid]
    return found


def measure_memory(env: dict, n: int, timeout: float) -> dict:
    """MB above idle of each worker process while a durable group of ``n`` runs (max of 5 Hz samples)."""
    worker = start_worker(env, 2)
    try:
        worker.wait_ready(60)
        _client_run(env, {"what": "once", "kind": "durable", "shape": "group", "n": 200, "timeout": timeout})
        time.sleep(2)
        pids = _worker_pids(worker.pid)
        idle = {pid: _rss_mb(pid) for pid in pids}
        peak = dict(idle)
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.2):
                for pid in pids:
                    rss = _rss_mb(pid)
                    if rss is not None:
                        peak[pid] = max(peak[pid] or 0, rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        res = _client_run(env, {"what": "once", "kind": "durable", "shape": "group", "n": n, "timeout": timeout})
        stop.set()
        sampler.join()
    finally:
        worker.kill()
    above = {str(pid): round(peak[pid] - idle[pid], 1) for pid in pids if idle[pid] is not None}
    return {**res, "idle_mb": {str(p): round(v, 1) for p, v in idle.items() if v is not None},
            "above_idle_mb": above, "max_above_idle_mb": max(above.values())}


def plan(goals: list[str], quick: bool) -> list[dict]:
    """What each goal measures: (label, worker concurrency, client spec)."""
    big, chains_big, length_big, many, group_c8 = (1000, 300, 200, 200, 600) if quick else \
        (10_000, 3_000, 1_000, 1_000, 2_000)
    runs = []
    if "fanout" in goals:
        for shape, small, large in (("group", 100, big), ("chord", 100, big), ("chains", 99, chains_big)):
            runs.append({"label": f"durable {shape} of {small}", "kind": "durable", "shape": shape, "n": small})
            runs.append({"label": f"durable {shape} of {large}", "kind": "durable", "shape": shape, "n": large})
            runs.append({"label": f"plain {shape} of {large}", "kind": "plain", "shape": shape, "n": large})
    if "length" in goals:
        for n in (10, length_big):
            runs.append({"label": f"durable chain of {n}", "kind": "durable", "shape": "chain", "n": n})
        runs.append({"label": f"plain chain of {length_big}", "kind": "plain", "shape": "chain", "n": length_big})
    if "many" in goals:
        for kind in ("durable", "plain"):
            runs.append({"label": f"{many} {kind} chains of 5", "what": "many", "kind": kind, "workflows": many,
                         "steps": 5})
    if "concurrency" in goals:
        for kind in ("durable", "plain"):
            runs.append({"label": f"{kind} group of {group_c8}, -c 8", "kind": kind, "shape": "group",
                         "n": group_c8, "concurrency": 8})
    if "memory" in goals:
        runs.append({"label": f"memory: durable group of {big}", "what": "memory", "n": big})
    for run in runs:
        run.setdefault("what", "once")
        run.setdefault("concurrency", 2)
    return runs


def report(results: list[dict]) -> list[str]:
    """Medians per label, then each goal's ratio with its target."""
    by: dict[str, list[dict]] = {}
    for r in results:
        if "error" not in r:
            by.setdefault(r["label"], []).append(r)

    def med(label: str, key: str) -> float | None:
        values = [r[key] for r in by.get(label, []) if key in r]
        return statistics.median(values) if values else None

    lines = ["| run | ms per task | tasks/s | rounds |", "|---|---|---|---|"]
    for label, rs in by.items():
        ms, tps = med(label, "ms_per_task"), med(label, "tasks_per_s")
        extra = f" (worker above idle: max {med(label, 'max_above_idle_mb')} MB)" if "max_above_idle_mb" in rs[0] else ""
        lines.append(f"| {label}{extra} | {'' if ms is None else f'{ms:.2f}'} | "
                     f"{'' if tps is None else f'{tps:.0f}'} | {len(rs)} |")
    lines.append("")
    labels = list(by)

    def find(prefix: str) -> list[str]:
        return [label for label in labels if label.startswith(prefix)]

    def ratio(name: str, top: str, bottom: str, key: str, target: str) -> None:
        a, b = med(top, key), med(bottom, key)
        if a is not None and b is not None:
            lines.append(f"- {name}: {a / b:.2f} (target {target})")

    for shape in ("group", "chord", "chains"):
        durables = sorted((label for label in find(f"durable {shape} of ") if "," not in label),
                          key=lambda s: int(s.rsplit(" ", 1)[1]))  # not the -c 8 group
        if len(durables) == 2:
            small, large = durables
            ratio(f"{large} per task / {small}", large, small, "ms_per_task", "≤ 1.2")
            plain = f"plain {shape} of {large.rsplit(' ', 1)[1]}"
            ratio(f"{large} per task / {plain}", large, plain, "ms_per_task", "≤ 2")
    chains = sorted(find("durable chain of "), key=lambda s: int(s.rsplit(" ", 1)[1]))
    if len(chains) == 2:
        ratio(f"{chains[1]} per step / {chains[0]}", chains[1], chains[0], "ms_per_task", "≤ 1.2")
    many = find("") and [label for label in labels if " chains of 5" in label]
    if len(many) == 2:
        durable_many, plain_many = sorted(many, key=lambda s: "plain" in s)
        ratio("many durable workflows' rate / plain", durable_many, plain_many, "tasks_per_s", "≥ 0.8")
    c8 = [label for label in labels if label.endswith("-c 8")]
    if len(c8) == 2:
        durable_c8, plain_c8 = sorted(c8, key=lambda s: "plain" in s)
        a, b = med(durable_c8, "ms_per_task"), med(plain_c8, "ms_per_task")
        if a and b:
            lines.append(f"- {durable_c8} rate / plain: {b / a:.2f} (target ≥ 0.8)")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.workflows", description=__doc__.splitlines()[0])
    ap.add_argument("--goals", default=",".join(GOALS))
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not the goals' sizes)")
    ap.add_argument("--timeout", type=float, default=1800)
    args = ap.parse_args(argv)
    goals = [g.strip() for g in args.goals.split(",") if g.strip()]
    from tests.support.pgcluster import PG15_BIN, start_cluster

    cluster = start_cluster(conf=CLUSTER_CONF, binaries=PG15_BIN if (PG15_BIN / "initdb").exists() else None)
    url = cluster.url()
    env = CONFIGS["pg"].env(BENCH_BROKER=url, BENCH_BACKEND=url)
    results: list[dict] = []
    meta = {"params": vars(args), "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}
    try:
        runs = plan(goals, args.quick)
        for rnd in range(1, args.rounds + 1):
            for concurrency in sorted({r["concurrency"] for r in runs}):
                batch = [r for r in runs if r["concurrency"] == concurrency and r["what"] != "memory"]
                turn = ROTATE * (rnd - 1) % len(batch) if batch else 0
                batch = batch[turn:] + batch[:turn]  # not the same shape first (fresh worker, fresh tables) each round
                if batch:
                    worker = start_worker(env, concurrency)
                    try:
                        worker.wait_ready(60)
                        for run in batch:
                            res = _client_run(env, {**run, "timeout": args.timeout})
                            results.append({"round": rnd, **run, **res})
                            print(f"r{rnd} {run['label']}: {json.dumps(res)}", flush=True)
                    finally:
                        worker.kill()
            for run in (r for r in runs if r["what"] == "memory"):
                res = measure_memory(env, run["n"], args.timeout)
                results.append({"round": rnd, **run, **res})
                print(f"r{rnd} {run['label']}: {json.dumps(res)}", flush=True)
    finally:
        cluster.destroy()
    meta["loadavg_end"] = os.getloadavg()
    out = ROOT / "benchmarks" / "results" / f"workflows-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print("\n".join(report(results)))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        print(json.dumps(client(json.loads(sys.argv[2]))))
        raise SystemExit(0)
    raise SystemExit(main())
