"""Client side of each workload; runs in its own subprocess next to a running worker.

``python -m benchmarks.workloads NAME --params JSON --out FILE`` with the config in the
environment (see app.py). Writes ``{"metrics": {...}, "info": {...}}`` to FILE. The parent
(run.py) starts/stops the worker and kills this process if it overruns its time box.

Executions of no-op tasks are counted outside the system under test: the ``count`` task does
one Redis INCR on db 15 and this process polls that key every 2 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
import uuid

PG_ONLY = {"backlog", "idle"}

#: name -> (unit, "higher"|"lower" is better, description). The report iterates this order.
METRICS = {
    "e2e_tps": ("tasks/s", "higher", "N no-op tasks: first enqueue -> last execution (prefork -c 2)"),
    "drain_tps": ("tasks/s", "higher", "consumer alone: N queued tasks, add_consumer -> last execution"),
    "enqueue_tps": ("tasks/s", "higher", "delay() rate into a queue nobody consumes"),
    "enqueue_busy_tps": ("tasks/s", "higher", "delay() rate while the worker consumes them"),
    "group1000_enqueue_ms": ("ms", "lower", "group of 1,000 no-op tasks: apply_async() returns"),
    "group1000_e2e_ms": ("ms", "lower", "group of 1,000: apply_async -> all executed"),
    "threads_e2e_tps": ("tasks/s", "higher", "same as e2e_tps, -P threads -c 2"),
    "latency_p50_ms": ("ms", "lower", "sequential delay().get() round trip, p50"),
    "latency_p95_ms": ("ms", "lower", "p95"),
    "latency_p99_ms": ("ms", "lower", "p99"),
    "chain10_ms": ("ms", "lower", "chain of 10 (plain celery.chain) apply_async().get()"),
    "durable_chain10_ms": ("ms", "lower", "durable_chain of 10 (ratio vs Redis chain10_ms)"),
    "chord100_ms": ("ms", "lower", "chord of 100 + callback, apply_async().get()"),
    "durable_chord100_ms": ("ms", "lower", "durable(chord of 100 + callback) (ratio vs Redis chord100_ms)"),
    "backlog_empty_tps": ("tasks/s", "higher", "e2e tasks/s, message table empty"),
    "backlog_full_tps": ("tasks/s", "higher", "e2e tasks/s with the backlog queued in another queue"),
    "backlog_vs_empty": ("x", "higher", "backlog_full_tps / backlog_empty_tps (target >= 0.8)"),
    "backlog_fill_rows_s": ("rows/s", "higher", "how fast the backlog was created (method in info)"),
    "size_empty_mb": ("MB", "lower", "pg_total_relation_size(message) before the backlog"),
    "size_before_steady_mb": ("MB", "lower", "... with the backlog, before the steady run"),
    "size_after_steady_mb": ("MB", "lower", "... after the steady run"),
    "steady_growth": ("x", "lower", "size_after_steady / size_before_steady (target ~1.0)"),
    "steady_tps": ("tasks/s", "higher", "executions/s during the steady run (paced enqueue)"),
    "idle_xacts_per_s": ("xact/s", "lower", "transactions/s an idle worker causes (pg_stat_database)"),
    "idle_backends": ("conns", "lower", "connections the idle worker holds"),
}


# --------------------------------------------------------------------------- helpers

def _app():
    from benchmarks import app as appmod

    return appmod


def _counter():
    import redis

    return redis.Redis.from_url(os.environ.get("BENCH_COUNTER", "redis://127.0.0.1:6379/15"))


def purge(app, queues):
    """Empty queues through the broker itself; a queue that does not exist is fine."""
    purged = {}
    with app.connection_for_write() as conn:
        for q in queues:
            ch = conn.channel()
            try:
                purged[q] = ch.queue_purge(q)
            except Exception as exc:  # noqa: BLE001 - amqp: NOT_FOUND for an undeclared queue
                purged[q] = f"{type(exc).__name__}"
            finally:
                try:
                    ch.close()
                except Exception:  # noqa: BLE001
                    pass
    return purged


def settle(m) -> None:
    """Ours: VACUUM the message table, as autovacuum would have after the throughput workload's churn.

    The benchmark server runs with autovacuum off, the throughput workload before leaves its acked
    rows dead, and the worker's own maintenance VACUUM may not have come yet (benchmarks/README).
    """
    if not m._is_ours(m.BROKER):
        return
    with _pg() as conn:
        conn.execute(psycopg_sql("VACUUM (ANALYZE) {}", m.SCHEMA, "message"))


def wait_count(r, key, n, timeout):
    """Block until the n-th execution of ``count(key, n)`` (it pushes to ``<key>:done``)."""
    deadline = time.monotonic() + timeout
    while r.blpop(f"{key}:done", timeout=2) is None:  # short blocks: no client socket timeout
        if time.monotonic() > deadline:
            v = int(r.get(key) or 0)
            raise TimeoutError(f"only {v}/{n} executions after {timeout:.0f}s")
    t = time.perf_counter()
    r.delete(key, f"{key}:done")
    return t, n


def pct(samples, p):
    s = sorted(samples)
    if not s:
        return None
    k = (len(s) - 1) * p
    f = int(k)
    c = min(f + 1, len(s) - 1)
    return s[f] + (s[c] - s[f]) * (k - f)


def warm(m, r, timeout, n=200):
    """Run a few counted tasks first: pool processes open their connections, caches fill."""
    e2e(m, r, n, timeout)


def e2e(m, r, n, timeout):
    """Enqueue n counting tasks while the worker runs; (e2e tasks/s, enqueue tasks/s)."""
    key = f"bench:{uuid.uuid4().hex}"
    t0 = time.perf_counter()
    for _ in range(n):
        m.count.delay(key, n)
    t1 = time.perf_counter()
    t2, _ = wait_count(r, key, n, timeout)
    return n / (t2 - t0), n / (t1 - t0)


# --------------------------------------------------------------------------- workloads

def w_smoke(p):
    m = _app()
    purge(m.app, ["bench"])
    t = time.perf_counter()
    assert m.echo.delay(7).get(timeout=p.get("timeout", 20)) == 7
    r = _counter()
    key = f"bench:{uuid.uuid4().hex}"
    m.count.delay(key, 1)
    wait_count(r, key, 1, 20)
    return {}, {"roundtrip_s": time.perf_counter() - t}


def w_throughput(p):
    m = _app()
    from celery import group

    n = p["n"]
    r = _counter()
    purge(m.app, ["bench", "bench_enqueue"])
    warm(m, r, p["timeout"])
    # 1. enqueue rate alone: a queue no worker consumes (yet)
    key = f"bench:{uuid.uuid4().hex}"
    t0 = time.perf_counter()
    for _ in range(n):
        m.count.apply_async((key, n), queue="bench_enqueue")
    enqueue_tps = n / (time.perf_counter() - t0)
    # 1b. consumer alone: the worker starts consuming those n queued tasks
    t0 = time.perf_counter()
    replies = m.app.control.add_consumer("bench_enqueue", reply=True, timeout=5, limit=1)
    drain_tps = None
    if replies:
        t2, _ = wait_count(r, key, n, p["timeout"])
        drain_tps = n / (t2 - t0)
        m.app.control.cancel_consumer("bench_enqueue", reply=True, timeout=5, limit=1)
    purge(m.app, ["bench_enqueue"])
    # 2. end to end with the worker consuming
    e2e_tps, busy_tps = e2e(m, r, n, p["timeout"])
    # 3. a group of 1,000 (bulk enqueue)
    key = f"bench:{uuid.uuid4().hex}"
    g = group(m.count.s(key, 1000) for _ in range(1000))
    t0 = time.perf_counter()
    g.apply_async()
    t1 = time.perf_counter()
    t2, _ = wait_count(r, key, 1000, p["timeout"])
    metrics = {
        "e2e_tps": e2e_tps,
        "enqueue_tps": enqueue_tps,
        "enqueue_busy_tps": busy_tps,
        "group1000_enqueue_ms": (t1 - t0) * 1000,
        "group1000_e2e_ms": (t2 - t0) * 1000,
    }
    info = {"n": n}
    if drain_tps is None:
        info["drain"] = "skipped: no worker answered add_consumer (the broker carries no broadcast)"
    else:
        metrics["drain_tps"] = drain_tps
    return metrics, info


def w_throughput_threads(p):
    m = _app()
    purge(m.app, ["bench"])
    r = _counter()
    warm(m, r, p["timeout"])
    tps, _ = e2e(m, r, p["n"], p["timeout"])
    return {"threads_e2e_tps": tps}, {"n": p["n"]}


def _timed_samples(fn, count, budget, warmup=0):
    """Up to ``count`` timed calls, stopping once ``budget`` seconds are spent (at least one)."""
    for _ in range(warmup):
        fn()
    samples = []
    start = time.perf_counter()
    while len(samples) < count:
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
        if time.perf_counter() - start > budget:
            break
    return samples


def w_latency(p):
    m = _app()
    purge(m.app, ["bench"])
    settle(m)
    i = [0]

    def once():
        i[0] += 1
        assert m.echo.delay(i[0]).get(timeout=60) == i[0]

    s = _timed_samples(once, p["count"], p["budget"], warmup=p.get("warmup", 10))
    return {
        "latency_p50_ms": pct(s, 0.50),
        "latency_p95_ms": pct(s, 0.95),
        "latency_p99_ms": pct(s, 0.99),
    }, {"samples": len(s), "mean_ms": statistics.fmean(s)}


def _durable_chain():
    try:
        from celery_durable import durable_chain  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001
        return None, f"{type(exc).__name__}: {exc}"
    return durable_chain, None


def w_chain(p):
    m = _app()
    from celery import chain

    purge(m.app, ["bench"])
    settle(m)
    sigs = lambda: [m.echo.s(0)] + [m.inc.s() for _ in range(9)]  # noqa: E731

    def plain():
        assert chain(*sigs()).apply_async().get(timeout=120) == 9

    metrics = {}
    info = {}
    m.echo.delay(0).get(timeout=60)  # warm connections with one task, not a (slow) whole chain
    s = _timed_samples(plain, p["count"], p["budget"])
    metrics["chain10_ms"] = statistics.median(s)
    info["chain_samples"] = len(s)
    if p.get("durable"):
        dc, why = _durable_chain()
        if dc is None:
            info["durable_chain"] = f"skipped: not importable ({why})"
        else:
            def durable():
                res = dc(*sigs()).apply_async()
                assert res.get(timeout=120) == 9

            try:
                s = _timed_samples(durable, p["count"], p["budget"])
                metrics["durable_chain10_ms"] = statistics.median(s)
                info["durable_chain_samples"] = len(s)
            except Exception as exc:  # noqa: BLE001 - keep the plain-chain number
                info["durable_chain"] = f"failed: {type(exc).__name__}: {exc}"[:500]
    else:
        info["durable_chain"] = "skipped: needs the postgresql:// result backend"
    return metrics, info


def w_chord(p):
    m = _app()
    from celery import chord

    purge(m.app, ["bench"])
    settle(m)

    def once():
        assert chord([m.echo.s(i) for i in range(100)], m.tsum.s()).apply_async().get(timeout=300) == 4950

    m.echo.delay(0).get(timeout=60)
    s = _timed_samples(once, p["count"], p["budget"])
    metrics, info = {"chord100_ms": statistics.median(s)}, {"samples": len(s)}
    if p.get("durable"):
        try:
            from celery_durable import durable

            def durable_once():
                header = [m.echo.s(i) for i in range(100)]
                assert durable(chord(header, m.tsum.s())).apply_async().get(timeout=300) == 4950

            s = _timed_samples(durable_once, p["count"], p["budget"])
            metrics["durable_chord100_ms"] = statistics.median(s)
            info["durable_chord_samples"] = len(s)
        except Exception as exc:  # noqa: BLE001 - keep the plain-chord number
            info["durable_chord"] = f"failed: {type(exc).__name__}: {exc}"[:500]
    return metrics, info


# --------------------------------------------------------------------------- pg only

def _pg():
    import psycopg

    from benchmarks.configs import PG_URL

    return psycopg.connect(PG_URL, autocommit=True)


def psycopg_sql(template, *ident):
    from psycopg import sql

    return sql.SQL(template).format(sql.Identifier(*ident))


def _msg_size(conn, schema):
    row = conn.execute("SELECT to_regclass(%s)", (f"{schema}.message",)).fetchone()
    if row[0] is None:
        return None
    return conn.execute("SELECT pg_total_relation_size(%s::regclass)", (f"{schema}.message",)).fetchone()[0] / 1e6


def _fill_backlog(m, conn, schema, n, info):
    """Queue n rows in ``bench_backlog``: SQL copies of one real message, else publish them all."""
    from psycopg import sql

    t0 = time.perf_counter()
    res = m.count.apply_async(("bench:backlog",), queue="bench_backlog")
    tid = res.id
    tbl = sql.Identifier(schema, "message")
    try:
        with conn.transaction():
            rows = conn.execute(
                sql.SQL("SELECT ctid FROM {} m WHERE strpos(m::text, %s) > 0 OR strpos(m::text, %s) > 0").format(tbl),
                (tid, tid.encode().hex()),
            ).fetchall()
            if len(rows) != 1:
                raise RuntimeError(f"found {len(rows)} rows for the template message")
            cols = conn.execute(
                """SELECT column_name FROM information_schema.columns
                   WHERE table_schema = %s AND table_name = 'message'
                     AND column_default IS NULL AND is_identity = 'NO' AND is_generated = 'NEVER'
                   ORDER BY ordinal_position""",
                (schema,),
            ).fetchall()
            collist = sql.SQL(", ").join(sql.Identifier(c[0]) for c in cols)
            conn.execute(
                sql.SQL("INSERT INTO {t} ({c}) SELECT {c} FROM {t}, generate_series(1, %s) WHERE ctid = %s::tid").format(
                    t=tbl, c=collist),
                (n - 1, rows[0][0]),
            )
        info["backlog_method"] = "sql copy of one published message (columns without defaults)"
    except Exception as exc:  # noqa: BLE001 - unique ids without defaults etc.: publish instead
        info["backlog_sql_copy_failed"] = f"{type(exc).__name__}: {exc}"[:300]
        info["backlog_method"] = "published through the transport"
        for _ in range(n - 1):
            m.count.apply_async(("bench:backlog",), queue="bench_backlog")
    conn.execute(sql.SQL("ANALYZE {}").format(tbl))  # as autovacuum would have by then
    return n / (time.perf_counter() - t0)


def w_backlog(p):
    m = _app()
    schema = m.SCHEMA
    r = _counter()
    info = {}
    purge(m.app, ["bench", "bench_backlog"])
    conn = _pg()
    if _msg_size(conn, schema) is not None:
        # start from a compact table: earlier runs' purged backlogs leave dead space behind
        from psycopg import sql

        conn.execute(sql.SQL("VACUUM (FULL, ANALYZE) {}").format(sql.Identifier(schema, "message")))
    size_empty = _msg_size(conn, schema)
    warm(m, r, p["timeout"])
    empty_tps, _ = e2e(m, r, p["n"], p["timeout"])
    fill_rate = _fill_backlog(m, conn, schema, p["backlog"], info)
    full_tps, _ = e2e(m, r, p["n"], p["timeout"])
    size_before = _msg_size(conn, schema)
    if size_before is not None:
        info["rows_with_backlog"] = conn.execute(
            psycopg_sql("SELECT count(*) FROM {}", schema, "message")).fetchone()[0]

    # steady run: paced enqueue at half the empty-queue rate, the worker keeps up
    rate = min(max(empty_tps * 0.5, 20), 1000)
    key = f"bench:{uuid.uuid4().hex}"
    total = int(rate * p["steady_s"])
    sent = 0
    t0 = time.perf_counter()
    while sent < total and (now := time.perf_counter()) - t0 < p["steady_s"] * 3:
        due = int((now - t0) * rate)
        while sent < min(due, total):
            m.count.delay(key, total)
            sent += 1
        time.sleep(0.005)
    if sent < total:
        raise RuntimeError(f"steady run could only enqueue {sent}/{total}")
    t_end, _ = wait_count(r, key, total, p["timeout"])
    size_after = _msg_size(conn, schema)
    stats = conn.execute(
        "SELECT n_live_tup, n_dead_tup, autovacuum_count, last_autovacuum FROM pg_stat_user_tables "
        "WHERE schemaname = %s AND relname = 'message'", (schema,)).fetchone()
    purge(m.app, ["bench_backlog"])
    info.update(
        steady_rate_target=rate, steady_sent=sent,
        table_stats_after_steady=dict(zip(("n_live_tup", "n_dead_tup", "autovacuum_count", "last_autovacuum"),
                                          (str(x) for x in stats))) if stats else None,
        size_after_purge_mb=_msg_size(conn, schema), backlog_rows=p["backlog"],
    )
    metrics = {
        "backlog_empty_tps": empty_tps,
        "backlog_full_tps": full_tps,
        "backlog_vs_empty": full_tps / empty_tps,
        "backlog_fill_rows_s": fill_rate,
        "steady_tps": sent / (t_end - t0),
    }
    if size_before is not None:
        metrics.update(size_empty_mb=size_empty, size_before_steady_mb=size_before,
                       size_after_steady_mb=size_after, steady_growth=size_after / size_before)
    else:
        info["size"] = f"no table {schema}.message"
    return metrics, info


def w_idle(p):
    """Transactions/s an idle worker causes in a database nobody else uses (see README).

    Primary number: delta of ``xact_commit + xact_rollback`` in pg_stat_database for that
    database (pg_stat_statements needs shared_preload_libraries, which we cannot assume).
    Attribution: pg_stat_activity is sampled every 50 ms from another database; each new
    (pid, state_change) of a backend is at least one statement, counted by its last query text.
    """
    import collections

    import psycopg

    from benchmarks.configs import PG_IDLE_DB, PG_URL

    q = "SELECT xact_commit + xact_rollback, numbackends FROM pg_stat_database WHERE datname = %s"
    act = ("SELECT pid, state_change, left(regexp_replace(query, '\\s+', ' ', 'g'), 100) "
           "FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'")
    seen: dict = {}
    texts: collections.Counter = collections.Counter()
    with psycopg.connect(PG_URL, autocommit=True) as conn:  # reads stats from another database
        time.sleep(p["settle_s"])
        x0, _ = conn.execute(q, (PG_IDLE_DB,)).fetchone()
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < p["window_s"]:
            for pid, changed, text in conn.execute(act, (PG_IDLE_DB,)).fetchall():
                if pid in seen and seen[pid] != changed:
                    texts[text] += 1
                seen[pid] = changed
            time.sleep(0.05)
        x1, backends = conn.execute(q, (PG_IDLE_DB,)).fetchone()
        t1 = time.perf_counter()
    # a changed state_change between two samples = at least one statement (a lower bound)
    top = dict(texts.most_common(8))
    return {"idle_xacts_per_s": (x1 - x0) / (t1 - t0), "idle_backends": backends}, {
        "window_s": t1 - t0, "xacts": x1 - x0, "statements_seen_by_text": top}


WORKLOADS = {
    "smoke": w_smoke,
    "throughput": w_throughput,
    "throughput-threads": w_throughput_threads,
    "latency": w_latency,
    "chain": w_chain,
    "chord": w_chord,
    "backlog": w_backlog,
    "idle": w_idle,
}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("name", choices=list(WORKLOADS))
    ap.add_argument("--params", default="{}")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    try:
        metrics, info = WORKLOADS[a.name](json.loads(a.params))
        out = {"ok": True, "metrics": metrics, "info": info}
        code = 0
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        traceback.print_exc()
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:1000]}
        code = 1
    with open(a.out, "w") as f:
        json.dump(out, f)
    return code


if __name__ == "__main__":
    sys.exit(main())
