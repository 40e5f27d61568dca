"""What one read of the metrics view costs with a big backlog: today's view against the one it replaced.

    python -m benchmarks.metrics_scrape [--rows 1000000] [--rounds 5]

On a private PostgreSQL cluster (the machine's PostgreSQL 15 when installed,
else the embedded server; ``CELERY_DURABLE_PG_BIN`` names another), the schema
is created at the current version, then ``--rows`` messages are queued in one
queue (payloads of a Celery task message's size; a hundredth of them delayed, a
hundredth leased), with two small queues, 20,000 workflows and 1,000 dead
letters beside them. The view of migration 0002 (``metrics_before``: every
scrape aggregated the tables in full) is created next to today's ``metrics``.
Each round reads both, interleaved, first while the planner has no statistics
for the backlog (it has just been queued), then after ANALYZE. Printed: the
median time of a read (min-max over rounds), the buffers it touched (EXPLAIN
ANALYZE BUFFERS; a page is 8 kB) and the estimate of the big queue's depth.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

SCHEMA = "metrics_scrape"
#: Padding that makes a row about the size of a Celery task message in this table.
PAYLOAD_BYTES = 900
CLUSTER_CONF = ["shared_buffers = 256MB", "max_wal_size = 4GB", "autovacuum = off"]
VIEWS = ("metrics", "metrics_before")


def load(conn, rows: int) -> None:
    from celery_durable.db import migrate
    from celery_durable.db.queries import schema_sql

    migrate.ensure_schema(conn, SCHEMA)
    folder = ROOT / "celery_durable" / "db" / "sql" / "migrations"
    before = (folder / "0002_metrics_view.sql").read_text().replace(
        "CREATE VIEW {schema}.metrics AS", "CREATE VIEW {schema}.metrics_before AS")
    conn.execute(schema_sql(before, SCHEMA))
    conn.execute(schema_sql("INSERT INTO {schema}.queue (name) VALUES ('celery'), ('emails'), ('reports')", SCHEMA))
    conn.execute(schema_sql(
        """INSERT INTO {schema}.message (queue, priority, payload, visible_at, lease_token, delivery_count)
           SELECT 'celery', i %% 3, repeat('x', %(pad)s) || i,
                  CASE WHEN i %% 100 = 0 THEN now() + interval '1 hour' WHEN i %% 100 = 1
                       THEN now() + interval '30 seconds' ELSE now() END,
                  CASE WHEN i %% 100 = 1 THEN gen_random_uuid() END,
                  CASE WHEN i %% 50 = 2 THEN 2 ELSE 1 END
           FROM generate_series(1, %(rows)s) AS i""", SCHEMA), {"pad": PAYLOAD_BYTES, "rows": rows})
    conn.execute(schema_sql("INSERT INTO {schema}.message (queue, payload) "
                            "SELECT 'emails', repeat('x', %s) FROM generate_series(1, 50)", SCHEMA), (PAYLOAD_BYTES,))
    conn.execute(schema_sql(
        """INSERT INTO {schema}.workflow (id, status, steps)
           SELECT 'w' || i, CASE WHEN i % 10 = 0 THEN 'running' ELSE 'succeeded' END, '[]'
           FROM generate_series(1, 20000) AS i""", SCHEMA))
    conn.execute(schema_sql(
        """INSERT INTO {schema}.dead_letter (id, queue, reason, delivery_count, payload, created_at)
           SELECT i, 'celery', 'rejected', 1, repeat('x', %s), now() FROM generate_series(1, 1000) AS i""",
        SCHEMA), (PAYLOAD_BYTES,))


def read(conn, view: str) -> tuple[float, float]:
    """Seconds one read of the view took, and the depth it gave queue ``celery``."""
    from celery_durable.db.queries import schema_sql

    query = schema_sql(f"SELECT metric, label, value FROM {{schema}}.{view}", SCHEMA)
    started = time.perf_counter()
    rows = conn.execute(query).fetchall()
    took = time.perf_counter() - started
    return took, next(v for m, label, v in rows if m == "queue_depth" and label == "celery")


def buffers(conn, view: str) -> int:
    from celery_durable.db.queries import schema_sql

    plan = conn.execute(schema_sql(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT * FROM {{schema}}.{view}",
                                   SCHEMA)).fetchone()[0][0]["Plan"]
    return plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]


def measure(conn, rounds: int) -> dict[str, dict]:
    times: dict[str, list[float]] = {view: [] for view in VIEWS}
    depth: dict[str, float] = {}
    for _ in range(rounds):
        for view in VIEWS:
            took, depth[view] = read(conn, view)
            times[view].append(took)
    return {view: {"times": times[view], "buffers": buffers(conn, view), "depth": depth[view]} for view in VIEWS}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.metrics_scrape", description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="messages queued in the big queue")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    import psycopg

    from tests.support.pgcluster import BIN_ENV, PG15_BIN, start_cluster

    chosen = None if os.environ.get(BIN_ENV) else (PG15_BIN if (PG15_BIN / "initdb").exists() else None)
    cluster = start_cluster(conf=CLUSTER_CONF, binaries=chosen)
    try:
        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            server = conn.execute("SHOW server_version").fetchone()[0]
            started = time.perf_counter()
            load(conn, args.rows)
            pages = conn.execute("SELECT pg_relation_size(%s) / 8192", (f"{SCHEMA}.message",)).fetchone()[0]
            print(f"queued {args.rows:,} messages ({pages:,} pages) in {time.perf_counter() - started:.0f} s;"
                  f" PostgreSQL {server}", file=sys.stderr)
            results = {"no statistics yet": measure(conn, args.rounds)}
            conn.execute(f"ANALYZE {SCHEMA}.message, {SCHEMA}.workflow, {SCHEMA}.dead_letter")
            results["after ANALYZE"] = measure(conn, args.rounds)
        print(f"| statistics | view | read (median, min-max of {args.rounds}) | buffers | depth of the big queue |")
        print("|---|---|---|---|---|")
        for phase, found in results.items():
            for view in VIEWS:
                row = found[view]
                ms = [t * 1000 for t in row["times"]]
                name = "before (migration 0002)" if view == "metrics_before" else "now"
                print(f"| {phase} | {name} | {statistics.median(ms):,.0f} ms ({min(ms):,.0f}-{max(ms):,.0f})"
                      f" | {row['buffers']:,} | {row['depth']:,.0f} |")
        for phase, found in results.items():
            ratio = statistics.median(found["metrics_before"]["times"]) / statistics.median(found["metrics"]["times"])
            print(f"{phase}: a read costs {ratio:.0f}x less time and "
                  f"{found['metrics_before']['buffers'] / found['metrics']['buffers']:.0f}x fewer buffers")
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    finally:
        cluster.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
