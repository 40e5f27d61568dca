"""The quick-start shop: charge a card, reserve stock, send a confirmation.

An ordinary Celery app. The only celery-durable parts are the import (it
registers the postgresql:// broker) and current_step() in `reserve`, which
writes its rows in the step's own transaction.
"""

from __future__ import annotations

import os
import time

from celery import Celery

import celery_durable
from celery_durable import current_step

URL = os.environ["CELERY_DURABLE_URL"]

app = Celery("shop", broker=URL, backend=URL)
app.conf.update(
    broker_transport_options={"lease_seconds": 5},  # a killed worker's step comes back after 5 s
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


def _ran(name: str) -> None:
    """Count executions in a table of our own, so the demo can show what ran how often."""
    with celery_durable.db.pool.connection(celery_durable.db.dsn.from_url(URL), celery_durable.config.Settings()) as conn:
        conn.execute("INSERT INTO shop_runs (step) VALUES (%s)", (name,))


@app.task
def charge(order_id: int) -> dict:
    _ran("charge")
    step = current_step()
    # A real payment API would get step.idempotency_key, the same on every attempt.
    return {"order": order_id, "charge": f"ch_{order_id}", "idempotency_key": step.idempotency_key}


@app.task
def reserve(payment: dict) -> dict:
    _ran("reserve")
    step = current_step()
    step.connection.execute(
        "INSERT INTO shop_reservations (order_id, sku) VALUES (%s, %s)", (payment["order"], "book-1")
    )
    # The demo kills the worker while this sleeps; the row above is rolled back with it.
    time.sleep(float(os.environ.get("SHOP_RESERVE_SECONDS", "0")))
    return {**payment, "reserved": "book-1"}


@app.task
def notify(order: dict) -> str:
    _ran("notify")
    return f"order {order['order']}: charged {order['charge']}, reserved {order['reserved']}"
