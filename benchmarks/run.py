"""Run the benchmark matrix: ``python -m benchmarks [--full] [--only pg,redis] [--workloads …] [--repeat K]``.

Rounds are interleaved: for each repeat, every config runs every selected workload
(A B C A B C …), each workload against a real ``celery worker`` subprocess and a client
subprocess, both time-boxed. The report gives medians over rounds with min–max and the
ratio to Redis in the same run; the raw numbers go to benchmarks/results/<timestamp>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # ``python benchmarks/run.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.configs import CONFIGS, ORDER, PG_IDLE_DB, PG_IDLE_URL, PG_URL, check  # noqa: E402
from benchmarks.processes import start_worker  # noqa: E402
from benchmarks.workloads import METRICS, PG_ONLY  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
ALL_WORKLOADS = ["throughput", "throughput-threads", "latency", "chain", "chord", "backlog", "idle"]

QUICK = {
    "repeat": 3,
    "timeout": 180,
    #: pg-only workloads run in the first round only in quick mode (they compare nothing across configs)
    "once": ["backlog", "idle"],
    "throughput": {"n": 5000},
    "throughput-threads": {"n": 5000},
    "latency": {"count": 200, "budget": 10, "warmup": 5},
    "chain": {"count": 10, "budget": 15},
    "chord": {"count": 3, "budget": 10},
    "backlog": {"n": 3000, "backlog": 50_000, "steady_s": 30},
    "idle": {"settle_s": 5, "window_s": 30},
}
FULL = {
    "repeat": 3,
    "timeout": 900,
    "once": [],
    "throughput": {"n": 10_000},
    "throughput-threads": {"n": 10_000},
    "latency": {"count": 1000, "budget": 120, "warmup": 20},
    "chain": {"count": 50, "budget": 120},
    "chord": {"count": 10, "budget": 180},
    "backlog": {"n": 10_000, "backlog": 1_000_000, "steady_s": 600},
    "idle": {"settle_s": 10, "window_s": 60},
}

# worker spec per workload: (pool, concurrency, env overrides key)
WORKER_SPEC = {
    "throughput": "prefork",
    "latency": "prefork",
    "chain": "prefork",
    "chord": "prefork",
    "backlog": "prefork",
    "throughput-threads": "threads",
    "idle": "idle",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- processes

class Worker:
    def __init__(self, cfg, spec: str):
        env = cfg.env()
        if spec == "idle":
            if cfg.ours_broker:
                env["BENCH_BROKER"] = PG_IDLE_URL
            if cfg.ours_backend:
                env["BENCH_BACKEND"] = PG_IDLE_URL
        pool = "threads" if spec == "threads" else "prefork"
        self.w = start_worker(env, pool=pool)

    def wait_ready(self, timeout: float = 60) -> None:
        self.w.wait_ready(timeout)

    def alive(self) -> bool:
        return self.w.proc.poll() is None

    def tail(self, n: int = 3) -> str:
        try:
            lines = [l for l in self.w.log().splitlines() if l.strip()]
        except OSError:
            return ""
        return " | ".join(lines[-n:])[-600:]

    def close(self, keep_log: bool = False, kill: bool = False) -> None:
        try:
            if kill:
                self.w.kill()
            else:
                self.w.stop(timeout=10)
        finally:
            try:
                os.killpg(self.w.pid, signal.SIGKILL)  # pool children, if any are left
            except (ProcessLookupError, PermissionError):
                pass
            if not keep_log:
                try:
                    self.w.log_path.unlink()
                except OSError:
                    pass


def run_client(cfg, name: str, params: dict, timeout: float) -> dict:
    fd, out = tempfile.mkstemp(prefix="bench-", suffix=".json")
    os.close(fd)
    argv = [sys.executable, "-m", "benchmarks.workloads", name, "--params", json.dumps(params), "--out", out]
    proc = subprocess.Popen(argv, env=cfg.env(), cwd=str(ROOT), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, text=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        os.unlink(out)
        return {"ok": False, "error": f"timed out after {timeout:.0f}s (client and worker killed)"}
    try:
        with open(out) as f:
            res = json.load(f)
    except (OSError, ValueError):
        tail = " | ".join(output.strip().splitlines()[-3:])
        res = {"ok": False, "error": f"client exited {proc.returncode}: {tail}"[:1000]}
    finally:
        try:
            os.unlink(out)
        except OSError:
            pass
    return res


def ensure_idle_db() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True, connect_timeout=5) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_IDLE_DB,)).fetchone():
                conn.execute(f'CREATE DATABASE "{PG_IDLE_DB}"')
        return None
    except Exception as exc:  # noqa: BLE001
        return f"cannot create database {PG_IDLE_DB}: {exc}"


# --------------------------------------------------------------------------- the run

def applicable(cfg, wl: str) -> str | None:
    """None if the workload applies to the config, else why not."""
    if wl in PG_ONLY and cfg.name != "pg":
        return "pg only"
    return None


def params_for(mode: dict, cfg, wl: str) -> dict:
    p = dict(mode[wl])
    p["timeout"] = mode["timeout"]
    if wl in ("chain", "chord"):
        p["durable"] = bool(cfg.ours_backend)
    return p


def workload_timeout(mode: dict, wl: str) -> float:
    t = mode["timeout"]
    if wl == "backlog":
        t = 3 * mode["timeout"] + mode["backlog"]["steady_s"] + mode["backlog"]["backlog"] / 500
    return t


def execute(args) -> dict:
    mode = dict(FULL if args.full else QUICK)
    if args.timeout:
        mode["timeout"] = args.timeout
    repeat = args.repeat or mode["repeat"]
    configs = args.only or ORDER
    workloads = args.workloads or ALL_WORKLOADS
    run = {
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "mode": "full" if args.full else "quick",
        "repeat": repeat,
        "params": {k: v for k, v in mode.items() if k in workloads or k == "timeout"},
        "machine": machine(),
        "configs": {},
        "skipped": {},
        "results": {},   # cfg -> workload -> [ {round, ok, metrics|error, info} ]
    }
    active = []
    for name in configs:
        ok, why = check(name)
        cfg = CONFIGS[name]
        run["configs"][name] = {"broker": cfg.broker, "backend": cfg.backend, "description": cfg.description}
        if ok:
            active.append(name)
            log(f"{name}: reachable")
        else:
            run["skipped"][name] = f"unreachable or not importable: {why}"
            log(f"{name}: SKIPPED ({why})")
    if "idle" in workloads and "pg" in active:
        why = ensure_idle_db()
        if why:
            run["skipped"]["pg/idle"] = why

    smoked: set[str] = set()
    for rnd in range(1, repeat + 1):
        for name in list(active):
            cfg = CONFIGS[name]
            todo = [w for w in workloads if applicable(cfg, w) is None
                    and not (rnd > 1 and w in mode["once"])]
            if name == "pg" and "pg/idle" in run["skipped"]:
                todo = [w for w in todo if w != "idle"]
            # group by worker spec, keeping the selected order
            specs: list[tuple[str, list[str]]] = []
            for w in todo:
                s = WORKER_SPEC[w]
                if specs and specs[-1][0] == s:
                    specs[-1][1].append(w)
                elif any(x[0] == s for x in specs):
                    next(x for x in specs if x[0] == s)[1].append(w)
                else:
                    specs.append((s, [w]))
            if name not in smoked:  # the smoke test shares the first prefork worker
                if specs and specs[0][0] == "prefork":
                    specs[0] = ("prefork", ["smoke"] + specs[0][1])
                else:
                    specs = [("prefork", ["smoke"])] + specs
            for spec, wls in specs:
                if name not in active:
                    break
                worker = None
                for wl in wls:
                    if worker is None:
                        worker = Worker(cfg, spec)
                        try:
                            worker.wait_ready(60)
                        except Exception as exc:  # noqa: BLE001
                            err = f"worker did not start: {type(exc).__name__}: {worker.tail()}"
                            worker.close(keep_log=True, kill=True)
                            worker = None
                            record(run, name, wl, rnd, {"ok": False, "error": err})
                            log(f"r{rnd} {name:12s} {wl:18s} FAILED: {err[:200]}")
                            if wl == "smoke":
                                active.remove(name)
                                run["skipped"][name] = f"smoke test failed: {err}"
                            continue
                    t = time.monotonic()
                    p = params_for(mode, cfg, wl) if wl != "smoke" else {"timeout": 20}
                    res = run_client(cfg, wl, p, workload_timeout(mode, wl) if wl != "smoke" else 60)
                    if not res.get("ok") and worker is not None:
                        res["worker_log_tail"] = worker.tail(5)
                        res["worker_log"] = str(worker.w.log_path)  # kept on failure
                    if wl == "smoke":
                        smoked.add(name)
                        if not res.get("ok"):
                            active.remove(name)
                            run["skipped"][name] = f"smoke test failed: {res.get('error')} / worker: {res.get('worker_log_tail', '')}"[:800]
                            log(f"{name}: SKIPPED (smoke test failed: {res.get('error')})")
                            worker.close(keep_log=True, kill=True)
                            worker = None
                            break
                        continue
                    record(run, name, wl, rnd, res)
                    log(f"r{rnd} {name:12s} {wl:18s} {time.monotonic() - t:6.1f}s " + summary(res))
                    if not res.get("ok") or not worker.alive():
                        worker.close(keep_log=True, kill=True)
                        worker = None  # a fresh worker for the next workload
                if worker is not None:
                    worker.close()
    run["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    return run


def record(run, cfg, wl, rnd, res):
    # 1-min load average after the workload: the machine may be shared, this flags noisy rounds
    res = {"round": rnd, "loadavg_1m": round(os.getloadavg()[0], 2), **res}
    run["results"].setdefault(cfg, {}).setdefault(wl, []).append(res)


def summary(res: dict) -> str:
    if not res.get("ok"):
        return "FAILED: " + str(res.get("error"))[:200]
    parts = [f"{k}={v:,.1f}" for k, v in res["metrics"].items() if isinstance(v, (int, float))]
    notes = [f"{k}: {v}" for k, v in res.get("info", {}).items() if isinstance(v, str) and ("skip" in v or "fail" in v)]
    return " ".join(parts + notes)


def machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        import celery
        import kombu

        info.update(celery=celery.__version__, kombu=kombu.__version__)
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), None)
    except OSError:
        pass
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=5) as conn:
            info["postgres"] = conn.execute("SHOW server_version").fetchone()[0]
            info["postgres_settings"] = dict(conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('synchronous_commit','fsync','shared_buffers','wal_level','autovacuum')").fetchall())
    except Exception:  # noqa: BLE001
        pass
    return info


# --------------------------------------------------------------------------- report

#: A durable workload's ratio is to Redis's plain run of the same canvas.
PLAIN_OF = {"durable_chain10_ms": "chain10_ms", "durable_chord100_ms": "chord100_ms"}


def aggregate(run: dict) -> dict:
    """cfg -> metric -> {median, min, max, n, by_round, ratio}

    ``ratio`` is the median over rounds of (this config / Redis in the same round), which
    cancels load that drifts between rounds better than a ratio of medians; for
    ``durable_chain10_ms`` and ``durable_chord100_ms`` the reference is Redis's plain canvas.
    """
    agg: dict = {}
    for cfg, wls in run["results"].items():
        for wl, rounds in wls.items():
            for r in rounds:
                if r.get("ok"):
                    for k, v in r["metrics"].items():
                        if isinstance(v, (int, float)):
                            m = agg.setdefault(cfg, {}).setdefault(k, {"values": [], "by_round": {}})
                            m["values"].append(v)
                            m["by_round"][r["round"]] = v
    ref = agg.get("redis", {})
    for cfg, ms in agg.items():
        for k, m in ms.items():
            vs = m["values"]
            m.update(median=statistics.median(vs), min=min(vs), max=max(vs), n=len(vs))
            base = ref.get(PLAIN_OF.get(k, k))
            if base and cfg != "redis":
                ratios = [v / base["by_round"][r] for r, v in m["by_round"].items()
                          if base["by_round"].get(r)]
                if ratios:
                    m["ratio"] = statistics.median(ratios)
    return agg


def fmt(v: float) -> str:
    if v is None:
        return "–"
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


#: Issue 13's targets: (label, config, metric, reference config, reference metric, "≥"/"≤", bound).
TARGETS = [
    ("end to end, ours (default) vs RabbitMQ with confirms", "pg", "e2e_tps", "rabbitmq-confirm", "e2e_tps", "≥", 1.25),
    ("end to end, ours pipelined vs RabbitMQ default", "pg-pipelined", "e2e_tps", "rabbitmq", "e2e_tps", "≥", 1.0),
    ("enqueue delay()/s, ours pipelined vs Redis", "pg-pipelined", "enqueue_tps", "redis", "enqueue_tps", "≥", 1.0),
    ("consumer alone, ours vs RabbitMQ", "pg", "drain_tps", "rabbitmq", "drain_tps", "≥", 1.0),
    ("delay().get() p50, ours vs Redis", "pg", "latency_p50_ms", "redis", "latency_p50_ms", "≤", 1.0),
    ("chain of 10, ours vs Redis", "pg", "chain10_ms", "redis", "chain10_ms", "≤", 1.0),
    ("durable_chain of 10 vs our plain chain of 10", "pg", "durable_chain10_ms", "pg", "chain10_ms", "≤", 1.1),
]


def round_ratio(agg: dict, cfg: str, metric: str, ref_cfg: str, ref_metric: str) -> float | None:
    """Median over rounds of cfg/metric divided by ref_cfg/ref_metric measured in the same round."""
    mine, ref = agg.get(cfg, {}).get(metric), agg.get(ref_cfg, {}).get(ref_metric)
    if not mine or not ref:
        return None
    ratios = [v / ref["by_round"][r] for r, v in mine["by_round"].items() if ref["by_round"].get(r)]
    return statistics.median(ratios) if ratios else None


def targets(agg: dict) -> list[str]:
    out = ["| target | ratio (median over rounds) | bound | met |", "|---|---|---|---|"]
    for label, cfg, metric, ref_cfg, ref_metric, op, bound in TARGETS:
        ratio = round_ratio(agg, cfg, metric, ref_cfg, ref_metric)
        if ratio is None:
            out.append(f"| {label} | – | {op} {bound} | not measured |")
            continue
        met = ratio >= bound if op == "≥" else ratio <= bound
        out.append(f"| {label} | {ratio:.2f}× | {op} {bound} | {'yes' if met else '**no**'} |")
    return out


def report(run: dict) -> str:
    agg = aggregate(run)
    run["summary"] = {c: {k: {x: m[x] for x in ("median", "min", "max", "n", "ratio") if x in m}
                          for k, m in ms.items()} for c, ms in agg.items()}
    cols = [c for c in ORDER if c in run["configs"]]
    out = [f"## celery-durable benchmarks — {run['mode']} mode, {run['repeat']} interleaved rounds, {run['started']}", ""]
    out.append("median (min–max) over rounds; **×** = median over rounds of the ratio to Redis in the "
               "same round (for durable_chain10_ms: to Redis's plain chain10_ms).")
    loads = [r.get("loadavg_1m") for wls in run["results"].values() for rs in wls.values() for r in rs
             if r.get("loadavg_1m") is not None]
    if loads:
        out.append(f"Machine 1-min load average after workloads: {min(loads):.1f}–{max(loads):.1f} "
                   f"on {run['machine'].get('cpus')} CPUs (above ~2 the box was shared: trust ratios, not absolutes).")
    out.append("")
    out.append("| metric | unit | " + " | ".join(cols) + " |")
    out.append("|---|---|" + "---|" * len(cols))
    out.append("| a returned `delay()` is | | " + " | ".join(CONFIGS[c].guarantee for c in cols) + " |")
    for metric, (unit, better, _) in METRICS.items():
        if not any(metric in agg.get(c, {}) for c in cols):
            continue
        cells = []
        for c in cols:
            m = agg.get(c, {}).get(metric)
            if not m:
                cells.append("–")
                continue
            cell = f"{fmt(m['median'])} ({fmt(m['min'])}–{fmt(m['max'])})"
            if m.get("ratio") is not None:
                cell += f" **{m['ratio']:.2f}×**"
            cells.append(cell)
        arrow = "↑" if better == "higher" else "↓"
        out.append(f"| {metric} {arrow} | {unit} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("Targets (issue 13; each ratio is taken within a round, then the median over rounds):")
    out.append("")
    out.extend(targets(agg))
    out.append("")
    if run["skipped"]:
        out.append("Skipped:")
        for k, v in run["skipped"].items():
            out.append(f"- **{k}**: {v}")
        out.append("")
    fails = []
    notes = []
    for cfg, wls in run["results"].items():
        for wl, rounds in wls.items():
            for r in rounds:
                if not r.get("ok"):
                    fails.append(f"- {cfg}/{wl} round {r['round']}: {r.get('error')}"
                                 + (f" — worker: {r['worker_log_tail']}" if r.get("worker_log_tail") else ""))
                for k, v in (r.get("info") or {}).items():
                    if isinstance(v, str) and ("skipped" in v or "failed" in v or k == "backlog_method"):
                        notes.append(f"- {cfg}/{wl}: {k}: {v}")
    if fails:
        out.append("Failures:")
        out.extend(fails)
        out.append("")
    if notes:
        out.append("Notes:")
        out.extend(sorted(set(notes)))
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="the full run (N=10,000, 1M-row backlog, 10-min steady run)")
    ap.add_argument("--only", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                    help=f"configs, comma-separated: {','.join(ORDER)}")
    ap.add_argument("--workloads", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                    help=f"workloads, comma-separated: {','.join(ALL_WORKLOADS)}")
    ap.add_argument("--repeat", type=int, help="interleaved rounds (default 3)")
    ap.add_argument("--timeout", type=float, help="per-workload time box in seconds (quick 180, full 900)")
    ap.add_argument("--out", help="JSON file (default benchmarks/results/<timestamp>.json)")
    ap.add_argument("--report", metavar="JSON", help="print the report of an earlier run's JSON and exit")
    args = ap.parse_args(argv)
    if args.report:
        print(report(json.loads(Path(args.report).read_text())))
        return 0
    for c in args.only or []:
        if c not in CONFIGS:
            ap.error(f"unknown config {c!r}; choose from {','.join(ORDER)}")
    for w in args.workloads or []:
        if w not in ALL_WORKLOADS:
            ap.error(f"unknown workload {w!r}; choose from {','.join(ALL_WORKLOADS)}")
    run = execute(args)
    text = report(run)
    print()
    print(text)
    out = Path(args.out) if args.out else RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(run, indent=2, default=str))
    print(f"raw results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
