"""An order fan-out: charge once, then one chain per item (reserve, pack), then a chord back into the order.

An ordinary Celery app; ``durable(...)`` makes the whole canvas crash-safe.
``reserve`` writes its stock row through ``current_step().connection``, so the
row commits with the item's checkpoint: exactly once, whatever crashes.
"""

from __future__ import annotations

import os
import time

from celery import Celery, chain, chord, group

import celery_durable
from celery_durable import current_step, durable

URL = os.environ["CELERY_DURABLE_URL"]

app = Celery("orders", broker=URL, backend=URL)
app.conf.update(
    broker_transport_options={"lease_seconds": 5},  # a killed worker's tasks come back after 5 s
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


def _ran(name: str) -> None:
    """Count executions in a table of our own, so the demo can show what ran how often."""
    with celery_durable.db.pool.connection(celery_durable.db.dsn.from_url(URL), celery_durable.config.Settings()) as conn:
        conn.execute("INSERT INTO order_runs (task) VALUES (%s)", (name,))


@app.task
def charge(order_id: int) -> dict:
    _ran("charge")
    # A real payment API would get current_step().idempotency_key, the same on every attempt.
    return {"order": order_id, "charge": f"ch_{order_id}"}


@app.task
def reserve(payment: dict, sku: str) -> dict:
    _ran(f"reserve {sku}")
    current_step().connection.execute(
        "INSERT INTO order_reservations (order_id, sku) VALUES (%s, %s)", (payment["order"], sku))
    if sku == os.environ.get("ORDERS_SLOW_SKU"):
        time.sleep(float(os.environ.get("ORDERS_SLOW_SECONDS", "0")))  # the demo kills the worker here
    return {"order": payment["order"], "sku": sku}


@app.task
def pack(reservation: dict) -> dict:
    _ran(f"pack {reservation['sku']}")
    return {**reservation, "box": f"box-{reservation['sku']}"}


@app.task
def ship(parcels: list, order_id: int) -> str:
    _ran("ship")
    current_step().connection.execute("INSERT INTO order_shipments (order_id, boxes) VALUES (%s, %s)",
                                      (order_id, len(parcels)))
    return f"order {order_id}: shipped {', '.join(p['box'] for p in parcels)}"


def place_order(order_id: int, skus: list[str]):
    """The whole order as one durable canvas; returns its result handle."""
    per_item = group(chain(reserve.s(sku), pack.s()) for sku in skus)
    return durable(chain(charge.s(order_id), chord(per_item, ship.s(order_id)))).apply_async(
        workflow_id=f"order-{order_id}")
