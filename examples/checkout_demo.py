"""A durable chain survives a killed worker.

    python examples/checkout_demo.py            # embedded PostgreSQL, started for you
    CELERY_DURABLE_URL=postgresql://… python examples/checkout_demo.py

It starts a worker, sends durable_chain(charge, reserve, notify), SIGKILLs the
worker while `reserve` runs, starts a new one, and prints what ran how often:
`charge` once, `reserve` twice (the killed attempt and the real one), `notify`
once, and exactly one reservation row.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> int:
    from celery_durable.testing import embedded

    url = embedded.demo_url()

    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS shop_runs, shop_reservations")
        conn.execute("CREATE TABLE shop_runs (step text, at timestamptz DEFAULT now())")
        conn.execute("CREATE TABLE shop_reservations (order_id int, sku text)")

    from celery_durable import durable_chain
    from celery_durable.testing.workers import start_worker

    import shop

    env = {**os.environ, "SHOP_RESERVE_SECONDS": "30", "PYTHONPATH": str(HERE)}
    print("Starting worker 1 …")
    worker = start_worker("shop", env=env, cwd=str(HERE), loglevel="INFO")
    wf = durable_chain(shop.charge.s(42), shop.reserve.s(), shop.notify.s()).apply_async()
    print(f"Sent workflow {wf.workflow_id}")

    def runs(step: str) -> int:
        with psycopg.connect(url) as conn:
            return conn.execute("SELECT count(*) FROM shop_runs WHERE step = %s", (step,)).fetchone()[0]

    deadline = time.monotonic() + 60
    while runs("reserve") == 0:
        if time.monotonic() > deadline:
            print(worker.log()[-3000:])
            raise SystemExit("reserve never started")
        time.sleep(0.1)
    print("`reserve` is running: SIGKILL worker 1 (no shutdown, no ack, its open transaction dies with it)")
    worker.kill()

    print("Starting worker 2 …")
    env["SHOP_RESERVE_SECONDS"] = "0"
    worker = start_worker("shop", env=env, cwd=str(HERE), loglevel="INFO")
    try:
        print("Result:", wf.get(timeout=120))
    finally:
        worker.stop()

    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT count(*) FROM shop_reservations").fetchone()[0]
    print()
    print("What ran how often:")
    for step in ("charge", "reserve", "notify"):
        print(f"  {step:8} {runs(step)}")
    print(f"  reservation rows: {rows}")
    ok = (runs("charge"), runs("reserve"), runs("notify"), rows) == (1, 2, 1, 1)
    print("\ncharge did not run again; reserve's killed attempt left no row." if ok else "\nUNEXPECTED COUNTS")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
