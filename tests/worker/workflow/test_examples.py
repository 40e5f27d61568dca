"""The demos run as their docstrings (and the docs' Getting started) say: a killed worker, only the killed task again.

examples/checkout_demo.py is the README's (and Getting started's) quick-start demo; examples/order_fanout_demo.py the fan-out one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from celery_durable.db.dsn import describe
from celery_durable.testing.embedded import create_database

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@pytest.fixture
def own_database(pg_url):
    """The demo creates tables in the default schema: give it a database of its own."""
    name = f"cd_orders_{uuid.uuid4().hex[:8]}"
    yield create_database(pg_url, name)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_order_fanout_demo_survives_a_killed_worker(own_database):
    done = subprocess.run([sys.executable, str(EXAMPLES / "order_fanout_demo.py")], capture_output=True, text=True,
                          env={**os.environ, "CELERY_DURABLE_URL": own_database}, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "reserve sku-3  2" in done.stdout and "shipments: 1" in done.stdout


def test_checkout_demo_runs_the_killed_step_again_and_nothing_else(own_database):
    done = subprocess.run([sys.executable, str(EXAMPLES / "checkout_demo.py")], capture_output=True, text=True,
                          env={**os.environ, "CELERY_DURABLE_URL": own_database}, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"Database: {describe(own_database)}" in done.stdout
    assert "Result: order 42: charged ch_42, reserved book-1" in done.stdout
    counts = [line.split() for line in done.stdout.splitlines() if line.startswith("  ")]
    assert counts == [["charge", "1"], ["reserve", "2"], ["notify", "1"], ["reservation", "rows:", "1"]]
