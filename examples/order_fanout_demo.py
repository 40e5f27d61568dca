"""A durable order fan-out (one chain per item, a chord back into the order) survives a killed worker.

    python examples/order_fanout_demo.py            # embedded PostgreSQL, started for you
    CELERY_DURABLE_URL=postgresql://… python examples/order_fanout_demo.py

It starts a worker, places an order of five items, SIGKILLs the worker while
the third item's reservation runs (the other items are reserved and packed
by then), starts a new worker, and prints what ran how often: `charge` once,
each item's `reserve` and `pack` once except the third item's `reserve` (the
killed attempt and the real one), `ship` once, and exactly one reservation row
per item and one shipment.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
SKUS = [f"sku-{i}" for i in range(1, 6)]


def main() -> int:
    from celery_durable.testing import embedded

    url = embedded.demo_url()

    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS order_runs, order_reservations, order_shipments")
        conn.execute("CREATE TABLE order_runs (task text, at timestamptz DEFAULT now())")
        conn.execute("CREATE TABLE order_reservations (order_id int, sku text)")
        conn.execute("CREATE TABLE order_shipments (order_id int, boxes int)")

    from celery_durable.testing.workers import start_worker

    import orders

    def runs(task: str) -> int:
        with psycopg.connect(url) as conn:
            return conn.execute("SELECT count(*) FROM order_runs WHERE task = %s", (task,)).fetchone()[0]

    order_id = int(time.time())
    env = {**os.environ, "ORDERS_SLOW_SKU": "sku-3", "ORDERS_SLOW_SECONDS": "60", "PYTHONPATH": str(HERE)}
    print("Starting worker 1 …")
    worker = start_worker("orders", env=env, cwd=str(HERE), loglevel="INFO")
    wf = orders.place_order(order_id, SKUS)
    print(f"Placed order {order_id}: workflow {wf.workflow_id}")

    deadline = time.monotonic() + 120
    while not (runs("reserve sku-3") and all(runs(f"pack {sku}") for sku in SKUS if sku != "sku-3")):
        if time.monotonic() > deadline:
            print(worker.log()[-3000:])
            raise SystemExit("the items were not reserved in time")
        time.sleep(0.1)
    print("Four items packed, sku-3 being reserved: SIGKILL worker 1 (its open transaction dies with it)")
    worker.kill()

    print("Starting worker 2 …")
    env["ORDERS_SLOW_SECONDS"] = "0"
    worker = start_worker("orders", env=env, cwd=str(HERE), loglevel="INFO")
    try:
        print("Result:", wf.get(timeout=120))
    finally:
        worker.stop()

    with psycopg.connect(url) as conn:
        reserved = dict(conn.execute("SELECT sku, count(*) FROM order_reservations GROUP BY sku").fetchall())
        shipments = conn.execute("SELECT count(*) FROM order_shipments").fetchone()[0]
    counts = {"charge": runs("charge"), "ship": runs("ship")}
    for sku in SKUS:
        counts[f"reserve {sku}"] = runs(f"reserve {sku}")
        counts[f"pack {sku}"] = runs(f"pack {sku}")
    print("\nWhat ran how often:")
    for task, n in counts.items():
        print(f"  {task:14} {n}")
    print(f"  reservation rows per item: {[reserved.get(sku, 0) for sku in SKUS]}, shipments: {shipments}")
    expected = {task: (2 if task == "reserve sku-3" else 1) for task in counts}
    ok = counts == expected and all(reserved.get(sku) == 1 for sku in SKUS) and shipments == 1
    print("\nOnly sku-3's reservation ran again; every row exists once." if ok else "\nUNEXPECTED COUNTS")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
