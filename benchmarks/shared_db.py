"""A shared, busy database (issue 19, goals 1 and 3): a held snapshot and a scheduled backlog against an idle queue.

    python -m benchmarks.shared_db                                  # baseline, held, scheduled (3 rounds); spiral 180 s
    python -m benchmarks.shared_db --only baseline,held --rounds 2
    python -m benchmarks.shared_db --only spiral --spiral-seconds 600 --spiral-hold 120
    python -m benchmarks.shared_db --quick                          # small counts: a smoke run, not the goals' sizes

Everything runs on a private PostgreSQL 15 cluster (``tests/support/pgcluster``; fsync, synchronous_commit
and autovacuum on, ``pg_stat_statements`` loaded), each run in a fresh database, with one
``celery worker -P prefork -c 2`` on queue ``bench`` (configuration ``pg``: confirmed publishes, our
result backend). Only Celery's public API, our settings and plain SQL on the schema are used, so the
script measures any version of the claim.

Workloads (one run each; a round interleaves a baseline before each other workload):

* ``baseline``: 300 sequential ``echo.delay().get()`` after 20 warm-ups (p50, p90), then the drain of
  2,000 counted tasks queued while the worker does not consume ``bench`` (``cancel_consumer``), from
  ``add_consumer`` to the 2,000th execution.
* ``held``: a ``REPEATABLE READ`` transaction on another connection runs ``SELECT count(*)`` on
  ``message`` and stays open while 20,000 counted tasks are pushed through, then through the same
  hops and drain. Dead rows in ``message`` (``n_dead_tup``) at the end.
* ``scheduled``: 50,000 tasks with ``countdown=3600`` (beyond ``native_delay_threshold``, so they wait
  in ``message``) and 5,000 ready rows set by SQL to the state a claim leaves (token, holder,
  ``visible_at`` an hour ahead), all in ``bench``; then the same hops and drain.
* ``spiral``: tasks arrive steadily at half the drain rate of one worker (the baselines' median, else
  measured first) while ``REPEATABLE READ`` transactions, each held ``--spiral-hold`` seconds, open
  every hold/``--spiral-holders`` seconds, so one is always open. Sampled every 5 s: ready rows, the
  age of the oldest ready row, the mean time of a claim statement (``pg_stat_statements``), dead rows.

Before each measurement ``message`` is vacuumed and analysed, as autovacuum would have done by then
(a held snapshot keeps what it can still see). Claim statements are recognised in
``pg_stat_statements`` as those that set a lease token with ``SKIP LOCKED``. Every figure goes to
``benchmarks/results/shared-db-<time>.json``; the spiral also writes a CSV and, with matplotlib
(``pip install -e '.[bench]'``), a PNG next to it.
"""

from __future__ import annotations

import argparse
import csv
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

from benchmarks.configs import CONFIGS, SCHEMA  # noqa: E402
from benchmarks.many_workers import STATS_SETTLE  # noqa: E402
from benchmarks.processes import start_worker  # noqa: E402

CLUSTER_CONF = ["fsync = on", "synchronous_commit = on", "shared_buffers = 128MB", "max_connections = 200",
                "shared_preload_libraries = 'pg_stat_statements'"]
QUEUE = "bench"
WORKLOADS = ("baseline", "held", "scheduled", "spiral")
GOAL = 1.2
FULL = {"hops": 300, "drain": 2000, "push": 20_000, "delayed": 50_000, "leased": 5000}
QUICK = {"hops": 50, "drain": 500, "push": 2000, "delayed": 5000, "leased": 500}
RESULTS = ROOT / "benchmarks" / "results"


# --------------------------------------------------------------------------- the client side (a subprocess)

def _app():
    from benchmarks import app as m

    return m


def _control(m, verb: str) -> None:
    """Start or stop the one worker consuming ``bench``, waiting for its answer."""
    replies = getattr(m.app.control, verb)(QUEUE, reply=True, timeout=10, limit=1)
    if not replies:
        raise RuntimeError(f"the worker did not answer {verb}")


def c_warm(p: dict) -> dict:
    """Pool processes open their connections before anything is timed."""
    from benchmarks.workloads import _counter, warm

    m = _app()
    warm(m, _counter(), p["timeout"])
    for i in range(10):
        m.echo.delay(i).get(timeout=60)
    return {}


def c_push(p: dict) -> dict:
    """Push ``n`` counted tasks through while the worker runs (the churn a held snapshot keeps)."""
    from benchmarks.workloads import _counter, e2e

    tps, enqueue_tps = e2e(_app(), _counter(), p["n"], p["timeout"])
    return {"n": p["n"], "tps": tps, "enqueue_tps": enqueue_tps}


def c_hops(p: dict) -> dict:
    """``n`` sequential round trips after 20 warm-ups."""
    from benchmarks.workloads import _timed_samples, pct

    m = _app()
    i = [0]

    def once() -> None:
        i[0] += 1
        assert m.echo.delay(i[0]).get(timeout=60) == i[0]

    samples = _timed_samples(once, p["n"], float("inf"), warmup=20)
    return {"n": len(samples), "p50_ms": pct(samples, 0.5), "p90_ms": pct(samples, 0.9),
            "mean_ms": statistics.fmean(samples)}


def c_drain(p: dict) -> dict:
    """Stop consuming, queue ``n`` counted tasks behind whatever the queue holds, time their drain."""
    from benchmarks.many_workers import drain_fill, drain_run

    _control(_app(), "cancel_consumer")
    key = drain_fill(p["n"], QUEUE, purge_first=False)
    return drain_run(key, p["n"], 1, p["timeout"], queue=QUEUE)


def c_publish(p: dict) -> dict:
    """Queue ``n`` tasks nobody counts (``countdown`` optional); ``pause`` stops the worker consuming first."""
    m = _app()
    if p.get("pause"):
        _control(m, "cancel_consumer")
    t0 = time.perf_counter()
    with m.app.producer_or_acquire() as producer:
        for _ in range(p["n"]):
            m.count.apply_async(("bench:never",), countdown=p.get("countdown"), queue=QUEUE, producer=producer)
    m.app.close()  # pipelined publishes are flushed
    return {"n": p["n"], "seconds": time.perf_counter() - t0}


def c_resume(p: dict) -> dict:
    _control(_app(), "add_consumer")
    return {}


def c_arrive(p: dict) -> dict:
    """Publish counted tasks at ``rate``/s for ``seconds``; every 50 add to ``<key>:sent``."""
    from benchmarks.workloads import _counter

    m, r = _app(), _counter()
    key, rate, seconds = p["key"], p["rate"], p["seconds"]
    sent = unreported = 0
    t0 = time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        while sent < int(elapsed * rate):
            m.count.delay(key, 0)  # n=0: never the last, nothing is pushed to <key>:done
            sent += 1
            unreported += 1
            if unreported == 50:
                r.incrby(f"{key}:sent", unreported)
                unreported = 0
        time.sleep(0.005)
    r.incrby(f"{key}:sent", unreported)
    return {"sent": sent, "rate": sent / (time.perf_counter() - t0)}


CLIENT = {"warm": c_warm, "push": c_push, "hops": c_hops, "drain": c_drain, "publish": c_publish,
          "resume": c_resume, "arrive": c_arrive}


def _client_args(step: str, params: dict) -> list[str]:
    return [sys.executable, "-m", "benchmarks.shared_db", "client", step, json.dumps(params)]


def _step(env: dict, step: str, timeout: float, **params) -> dict:
    """One client step in its own process (``benchmarks.app`` reads its configuration at import)."""
    done = subprocess.run(_client_args(step, {**params, "timeout": timeout}), env=env, cwd=str(ROOT),
                          capture_output=True, text=True, timeout=timeout + 120)
    if done.returncode != 0:
        raise RuntimeError(f"{step}: " + (done.stderr or done.stdout).strip()[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- plain SQL on the schema

def _sql(template: str):
    from psycopg import sql

    return sql.SQL(template).format(schema=sql.Identifier(SCHEMA))


def table_stats(conn) -> dict:
    """``message``'s dead and live rows as the statistics count them, and its size."""
    row = conn.execute("SELECT n_dead_tup, n_live_tup, pg_total_relation_size(relid) FROM pg_stat_user_tables "
                       "WHERE schemaname = %s AND relname = 'message'", (SCHEMA,)).fetchone()
    return {"dead_rows": row[0], "live_rows": row[1], "size_mb": row[2] / 1e6} if row else {}


def queue_rows(conn) -> dict:
    """Rows of ``bench`` in ``message`` by state, and the age of the oldest ready one."""
    row = conn.execute(_sql(
        "SELECT count(*) FILTER (WHERE visible_at <= now()), count(*) FILTER (WHERE lease_token IS NOT NULL), "
        "count(*), extract(epoch FROM now() - min(created_at) FILTER (WHERE visible_at <= now())) "
        "FROM {schema}.message WHERE queue = %s"), (QUEUE,)).fetchone()
    return {"ready": row[0], "leased": row[1], "rows": row[2], "oldest_ready_s": float(row[3] or 0)}


def claim_stats(conn) -> tuple[int, float]:
    """(calls, total ms) of the claim statements this database ran, from ``pg_stat_statements``."""
    row = conn.execute(
        r"SELECT coalesce(sum(calls), 0), coalesce(sum(total_exec_time), 0) FROM pg_stat_statements "
        r"WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        r"AND query ~* 'lease_token\s*=\s*\$\d' AND query ILIKE '%SKIP LOCKED%'").fetchone()
    return int(row[0]), float(row[1])


def top_statements(conn, limit: int = 8) -> list[dict]:
    """The statements this database spent the most time in (``pg_stat_statements``): what a run cost."""
    rows = conn.execute(
        "SELECT calls, total_exec_time, mean_exec_time, shared_blks_hit + shared_blks_read, "
        "left(regexp_replace(query, '\\s+', ' ', 'g'), 160) FROM pg_stat_statements "
        "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "ORDER BY total_exec_time DESC LIMIT %s", (limit,)).fetchall()
    return [{"calls": r[0], "total_ms": round(r[1], 1), "mean_ms": round(r[2], 3),
             "blocks_per_call": round(r[3] / max(r[0], 1), 1), "query": r[4]} for r in rows]


def claim_ms(before: tuple[int, float], after: tuple[int, float]) -> float | None:
    calls = after[0] - before[0]
    return (after[1] - before[1]) / calls if calls > 0 else None


def lease_ready_rows(conn, n: int) -> int:
    """Put ``n`` ready rows of ``bench`` in the state a claim leaves them: long-running leased tasks."""
    return conn.execute(_sql(
        "UPDATE {schema}.message SET lease_token = gen_random_uuid(), leased_by = 'bench', "
        "visible_at = now() + interval '1 hour' WHERE id IN (SELECT id FROM {schema}.message "
        "WHERE queue = %s AND visible_at <= now() AND lease_token IS NULL ORDER BY id LIMIT %s)"),
        (QUEUE, n)).rowcount


def hold_snapshot(url: str):
    """A REPEATABLE READ transaction that has read ``message``: its snapshot holds VACUUM's horizon."""
    import psycopg

    conn = psycopg.connect(url, application_name="bench-snapshot")
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.execute(_sql("SELECT count(*) FROM {schema}.message")).fetchone()
    return conn


def release(conn) -> None:
    try:
        conn.rollback()
    finally:
        conn.close()


def oldest_xmin_age(conn) -> int:
    """Transactions the oldest snapshot of this database is behind (0 when none is held)."""
    return conn.execute("SELECT coalesce(max(age(backend_xmin)), 0) FROM pg_stat_activity "
                        "WHERE datname = current_database()").fetchone()[0]


# --------------------------------------------------------------------------- one run

class Run:
    """A fresh database with its worker; the connection for SQL, dropped with the database at the end."""

    def __init__(self, cluster, name: str):
        self.cluster, self.db = cluster, name
        cluster.create_database(name)
        self.url = cluster.url(name)
        self.env = CONFIGS["pg"].env(BENCH_BROKER=self.url, BENCH_BACKEND=self.url)
        self.worker = start_worker(self.env, 2)
        self.conn = None

    def __enter__(self) -> Run:
        try:
            self.worker.wait_ready(180)
            self.conn = self.cluster.connect(self.db)
            self.conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        from psycopg import sql

        self.worker.kill()
        if self.conn is not None:
            self.conn.close()
        self.cluster.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(self.db)))

    def vacuum(self) -> None:
        self.conn.execute(_sql("VACUUM (ANALYZE) {schema}.message"))


def run_workload(cluster, name: str, rnd: int, sizes: dict, timeout: float) -> dict:
    """One run of baseline, held or scheduled in a fresh database: hops, then the drain."""
    out: dict = {"workload": name, "round": rnd, "loadavg_start": os.getloadavg()[0]}
    with Run(cluster, f"shared_{name}_{rnd}") as run:
        _step(run.env, "warm", timeout)
        holder = None
        try:
            if name == "held":
                holder = hold_snapshot(run.url)
                out["push"] = _step(run.env, "push", timeout, n=sizes["push"])
            elif name == "scheduled":
                fast = {**run.env, "BENCH_CONFIRM_PUBLISH": "0"}  # filling only: publishes pipelined
                out["delayed"] = _step(fast, "publish", timeout, n=sizes["delayed"], countdown=3600)
                _step(fast, "publish", timeout, n=sizes["leased"], pause=True)
                out["leased_rows"] = lease_ready_rows(run.conn, sizes["leased"])
                _step(run.env, "resume", timeout)
            run.vacuum()
            out["before"] = {**queue_rows(run.conn), **table_stats(run.conn)}
            run.conn.execute("SELECT pg_stat_statements_reset()")
            c0 = claim_stats(run.conn)
            out["hops"] = _step(run.env, "hops", timeout, n=sizes["hops"])
            c1 = claim_stats(run.conn)
            out["drain"] = _step(run.env, "drain", timeout, n=sizes["drain"])
            c2 = claim_stats(run.conn)
            out["statements"] = top_statements(run.conn)
            out["claim_ms_hops"], out["claim_ms_drain"] = claim_ms(c0, c1), claim_ms(c1, c2)
            time.sleep(STATS_SETTLE)  # idle backends flush their counters up to 10 s late
            out["after"] = {**queue_rows(run.conn), **table_stats(run.conn),
                            "oldest_xmin_age": oldest_xmin_age(run.conn)}
        finally:
            if holder is not None:
                release(holder)
    out["loadavg_end"] = os.getloadavg()[0]
    return out


# --------------------------------------------------------------------------- the spiral

def run_spiral(cluster, args, sizes: dict, drain_tps: float | None, timeout: float) -> dict:
    """Arrivals at half a worker's drain rate with overlapping long snapshots; a sample every interval."""
    from benchmarks.workloads import _counter

    out: dict = {"workload": "spiral", "loadavg_start": os.getloadavg()[0], "seconds": args.spiral_seconds,
                 "hold": args.spiral_hold, "holders": args.spiral_holders}
    with Run(cluster, "shared_spiral") as run:
        _step(run.env, "warm", timeout)
        if args.spiral_rate:
            rate = args.spiral_rate
        else:
            if drain_tps is None:
                drain_tps = _step(run.env, "drain", timeout, n=sizes["drain"])["tps"]
                _step(run.env, "resume", timeout)
            rate = drain_tps / 2
        out["drain_tps"], out["rate"] = drain_tps, rate
        run.vacuum()
        r, key = _counter(), f"bench:{uuid.uuid4().hex}"
        producers = [subprocess.Popen(
            _client_args("arrive", {"key": key, "rate": rate / args.spiral_producers, "seconds": args.spiral_seconds}),
            env=run.env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(args.spiral_producers)]
        stagger = args.spiral_hold / args.spiral_holders if args.spiral_holders else None
        holders: list[tuple[float, object]] = []
        spans, samples = [], []
        t0 = time.monotonic()
        next_open, next_sample = 0.0, 0.0
        last = (0.0, 0, 0, claim_stats(run.conn))

        def sample(now: float) -> None:
            nonlocal last
            sent, done, claims = int(r.get(f"{key}:sent") or 0), int(r.get(key) or 0), claim_stats(run.conn)
            dt = max(now - last[0], 1e-6)
            row = {"t": round(now, 1), "arrivals_per_s": (sent - last[1]) / dt, "done_per_s": (done - last[2]) / dt,
                   "sent": sent, "done": done, **queue_rows(run.conn), "claim_ms": claim_ms(last[3], claims),
                   **table_stats(run.conn), "holders": len(holders), "oldest_xmin_age": oldest_xmin_age(run.conn)}
            samples.append(row)
            last = (now, sent, done, claims)
            print(_spiral_line(row), flush=True)

        print(_spiral_header(), flush=True)
        try:
            while (now := time.monotonic() - t0) < args.spiral_seconds:
                while holders and now - holders[0][0] >= args.spiral_hold:
                    opened, conn = holders.pop(0)
                    release(conn)
                    spans.append((opened, now))
                if stagger is not None and now >= next_open:
                    # on the schedule's time, not the tick's: the one it replaces closes on the same tick
                    holders.append((next_open, hold_snapshot(run.url)))
                    next_open += stagger
                if now >= next_sample:
                    sample(now)
                    next_sample += args.spiral_interval
                time.sleep(0.2)
            if time.monotonic() - t0 - last[0] >= args.spiral_interval / 2:
                sample(time.monotonic() - t0)
        finally:
            end = time.monotonic() - t0
            for opened, conn in holders:
                release(conn)
                spans.append((opened, end))
            for proc in producers:
                try:
                    stdout, _ = proc.communicate(timeout=60)
                    out.setdefault("producers", []).append(json.loads(stdout.strip().splitlines()[-1]))
                except Exception as exc:  # noqa: BLE001 - a producer that failed: its share is missing, say so
                    proc.kill()
                    out.setdefault("producer_errors", []).append(f"{type(exc).__name__}: {exc}"[:300])
            r.delete(key, f"{key}:sent")
    out.update(samples=samples, holder_spans=spans, loadavg_end=os.getloadavg()[0])
    return out


SPIRAL_COLUMNS = [("t", "t s", 6, ".0f"), ("arrivals_per_s", "in/s", 6, ".0f"), ("done_per_s", "done/s", 6, ".0f"),
                  ("ready", "ready", 8, "d"), ("oldest_ready_s", "oldest s", 8, ".2f"),
                  ("claim_ms", "claim ms", 8, ".2f"), ("dead_rows", "dead", 8, "d"), ("holders", "held", 4, "d")]


def _spiral_header() -> str:
    return " ".join(f"{title:>{width}}" for _, title, width, _ in SPIRAL_COLUMNS)


def _spiral_line(row: dict) -> str:
    cells = []
    for name, _, width, fmt in SPIRAL_COLUMNS:
        value = row.get(name)
        cells.append(f"{'-' if value is None else format(value, fmt):>{width}}")
    return " ".join(cells)


def write_spiral(spiral: dict, stem: Path) -> list[Path]:
    """The samples as CSV, and the PNG when matplotlib is installed."""
    written = [stem.with_suffix(".csv")]
    with written[0].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(spiral["samples"][0]))
        writer.writeheader()
        writer.writerows(spiral["samples"])
    png = plot_spirals([("", spiral)], stem.with_suffix(".png"))
    return written + ([png] if png else [])


def plot_spirals(spirals: list[tuple[str, dict]], png: Path) -> Path | None:
    """Each spiral's samples over time, one line per (label, spiral); None without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("ready", "ready rows in message (backlog)"), ("oldest_ready_s", "age of the oldest ready row, s"),
              ("claim_ms", "mean claim statement, ms"), ("dead_rows", "dead rows in message (n_dead_tup)"),
              ("done_per_s", "executions/s (dashed: arrivals/s)"), ("holders", "snapshots held open")]
    fig, axes = plt.subplots(3, 2, figsize=(11, 9), sharex=True)
    for i, (label, spiral) in enumerate(spirals):
        s = spiral["samples"]
        t = [row["t"] for row in s]
        for ax, (name, title) in zip(axes.flat, panels, strict=True):
            values = [float("nan") if row.get(name) is None else row[name] for row in s]
            ax.plot(t, values, marker=".", color=f"C{i}", label=label or None)
            if name == "done_per_s":
                ax.plot(t, [row["arrivals_per_s"] for row in s], linestyle="--", color=f"C{i}")
            ax.set_title(title, fontsize=10)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("seconds")
    if any(label for label, _ in spirals):
        axes[0][0].legend(fontsize=8)
    first = spirals[0][1]
    fig.suptitle(f"arrivals {first['rate']:.0f}/s (half a worker's drain), REPEATABLE READ snapshots of "
                 f"{first['hold']:.0f} s, {first['holders']} overlapping; load average "
                 f"{first['loadavg_start']:.1f}→{first['loadavg_end']:.1f} on {os.cpu_count()} CPUs", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png


# --------------------------------------------------------------------------- the report

def _med(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def report(runs: list[dict]) -> list[str]:
    """Medians per workload, and each workload's ratios to the baseline run just before it (the goal ≤ 1.2×)."""
    lines = ["| workload | runs | get() p50 ms | p90 ms | drain tasks/s | claim ms (hops) | dead rows after |"
             " p50 / baseline | baseline drain / drain | goal ≤ 1.2× |", "|---" * 10 + "|"]
    by: dict[str, list[dict]] = {}
    for r in runs:
        by.setdefault(r["workload"], []).append(r)
    for name in ("baseline", "held", "scheduled"):
        rs = by.get(name)
        if not rs:
            continue
        p50, drain = _med([r["hops"]["p50_ms"] for r in rs]), _med([r["drain"]["tps"] for r in rs])
        lat_ratios, drain_ratios = [], []
        for r in rs:
            base = r.get("baseline")
            if base is not None:
                lat_ratios.append(r["hops"]["p50_ms"] / base["hops"]["p50_ms"])
                drain_ratios.append(base["drain"]["tps"] / r["drain"]["tps"])
        lat, slow = _med(lat_ratios), _med(drain_ratios)
        met = "-" if lat is None else ("met" if lat <= GOAL and slow <= GOAL else "not met")
        lines.append(f"| {name} | {len(rs)} | {_fmt(p50)} | {_fmt(_med([r['hops']['p90_ms'] for r in rs]))} | "
                     f"{_fmt(drain, '.0f')} | {_fmt(_med([r['claim_ms_hops'] for r in rs]), '.3f')} | "
                     f"{_fmt(_med([r['after'].get('dead_rows') for r in rs]), ',.0f')} | "
                     f"{_fmt(lat)}{'×' if lat else ''} | {_fmt(slow)}{'×' if slow else ''} | {met} |")
    return lines


def spiral_report(spiral: dict) -> list[str]:
    """The spiral's goal: the backlog under one second of arrivals, claim latency flat."""
    s = spiral["samples"]
    ready = [row["ready"] for row in s]
    tail = s[len(s) // 2:]
    rate = spiral["rate"]
    head_age = _med([row["oldest_ready_s"] for row in s[1:len(s) // 4 + 2]])
    tail_age = _med([row["oldest_ready_s"] for row in s[-max(1, len(s) // 4):]])
    achieved = sum(p["rate"] for p in spiral.get("producers", [])) or None
    lines = [f"spiral: {spiral['seconds']:.0f} s, arrivals {rate:.0f}/s targeted ({_fmt(achieved, '.0f')}/s achieved), "
             f"{spiral['holders']} snapshots of {spiral['hold']:.0f} s overlapping",
             f"- backlog at the end {ready[-1]:,} ({ready[-1] / rate:.1f} s of arrivals), max {max(ready):,} "
             f"({max(ready) / rate:.1f} s); goal < 1 s of arrivals: {'met' if max(ready) < rate else 'not met'}",
             f"- oldest ready row: median {_fmt(head_age)} s in the first quarter, {_fmt(tail_age)} s in the last",
             f"- claim statement: median {_fmt(_med([row['claim_ms'] for row in s[:len(s) // 2]]), '.3f')} ms in the "
             f"first half, {_fmt(_med([row['claim_ms'] for row in tail]), '.3f')} ms in the second",
             f"- dead rows in message at the end {s[-1].get('dead_rows', 0):,}"]
    return lines


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.shared_db", description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(WORKLOADS), help="workloads, comma-separated: " + ",".join(WORKLOADS))
    ap.add_argument("--rounds", type=int, default=None, help="rounds of baseline/held/scheduled (default 3, quick 1)")
    ap.add_argument("--quick", action="store_true", help="small counts and a 30 s spiral: a smoke run")
    ap.add_argument("--spiral-seconds", type=float, default=None, help="the spiral's length (default 180, quick 30)")
    ap.add_argument("--spiral-hold", type=float, default=None, help="seconds each snapshot is held (default 120)")
    ap.add_argument("--spiral-holders", type=int, default=3, help="snapshots open at once (0: the same load without)")
    ap.add_argument("--spiral-rate", type=float, default=None, help="arrivals/s (default: half the drain rate)")
    ap.add_argument("--spiral-producers", type=int, default=2, help="processes publishing the arrivals")
    ap.add_argument("--spiral-interval", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--timeout", type=float, default=900, help="time box of each client step")
    ap.add_argument("--compare", nargs="+", metavar="LABEL=JSON",
                    help="plot the spirals of earlier runs' JSON files together (e.g. before=a.json after=b.json)")
    args = ap.parse_args(argv)
    if args.compare:
        spirals = []
        for item in args.compare:
            label, _, path = item.rpartition("=")
            spirals.append((label or Path(path).stem, json.loads(Path(path).read_text())["spiral"]))
        for label, spiral in spirals:
            print(f"{label}:\n" + "\n".join(spiral_report(spiral)))
        png = RESULTS / f"shared-db-spiral-compare-{time.strftime('%Y%m%d-%H%M%S')}.png"
        print(f"plot: {plot_spirals(spirals, png)}")
        return 0
    only = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = set(only) - set(WORKLOADS)
    if unknown:
        ap.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    sizes = QUICK if args.quick else FULL
    rounds = args.rounds or (1 if args.quick else 3)
    args.spiral_seconds = args.spiral_seconds or (30.0 if args.quick else 180.0)
    args.spiral_hold = args.spiral_hold or (12.0 if args.quick else 120.0)
    from tests.support.pgcluster import PG15_BIN, start_cluster

    cluster = start_cluster(conf=CLUSTER_CONF, binaries=PG15_BIN if (PG15_BIN / "initdb").exists() else None)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    results: dict = {"params": {**vars(args), "sizes": sizes, "rounds": rounds, "commit": commit.stdout.strip()},
                     "machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}, "runs": []}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        others = [w for w in ("held", "scheduled") if w in only]
        for rnd in range(1, rounds + 1):
            for other in others or [None]:
                base = run_workload(cluster, "baseline", rnd, sizes, args.timeout) if "baseline" in only else None
                if base is not None:
                    results["runs"].append(base)
                    print(f"r{rnd} baseline: {json.dumps(base)}", flush=True)
                if other is not None:
                    res = run_workload(cluster, other, rnd, sizes, args.timeout)
                    res["baseline"] = base
                    results["runs"].append(res)
                    print(f"r{rnd} {other}: {json.dumps({k: v for k, v in res.items() if k != 'baseline'})}",
                          flush=True)
        if "spiral" in only:
            drains = [r["drain"]["tps"] for r in results["runs"] if r["workload"] == "baseline"]
            results["spiral"] = run_spiral(cluster, args, sizes, _med(drains), args.timeout)
    finally:
        cluster.destroy()
        results["machine"]["loadavg_end"] = os.getloadavg()
        out = RESULTS / f"shared-db-{stamp}.json"
        out.write_text(json.dumps(results, indent=2, default=str))
    lines = report(results["runs"]) if results["runs"] else []
    if results.get("spiral"):
        lines += [""] + spiral_report(results["spiral"])
        written = write_spiral(results["spiral"], RESULTS / f"shared-db-spiral-{stamp}")
        lines += [f"spiral samples: {p}" for p in written]
    load = results["machine"]
    print(f"\nload average {load['loadavg_start'][0]:.1f} at the start, {load['loadavg_end'][0]:.1f} at the end, "
          f"{load['cpus']} CPUs (a shared machine: compare ratios measured side by side)")
    print("\n".join(lines))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        print(json.dumps(CLIENT[sys.argv[2]](json.loads(sys.argv[3]))))
        raise SystemExit(0)
    raise SystemExit(main())
