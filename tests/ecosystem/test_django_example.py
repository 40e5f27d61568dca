"""examples/django_shop runs as documented: migrate, a worker, an order placed through its view.

Subprocesses only (the example is another Django project than tests/ecosystem/dj's).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest

pytest.importorskip("django")

from celery_durable.testing import embedded  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "django_shop"

PLACE = """
from django.db import IntegrityError
from django.test import Client
client = Client(HTTP_HOST="localhost")
print("ORDER", client.get("/order/7/").json()["order"])
try:
    client.get("/order/7/")  # the same number again: the insert fails, the block rolls back
except IntegrityError:
    print("ROLLED BACK")
"""


@pytest.fixture
def database(pg_url):
    name = f"cd_ex_{uuid.uuid4().hex[:8]}"
    url = embedded.create_database(pg_url, name)
    yield url
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psycopg.sql.Identifier(name)))


def test_example_places_an_order_and_its_receipt_runs_once(database, celery_durable_worker):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_DURABLE_", "DJANGO_"))}
    env["DATABASE_URL"] = database

    def manage(*args: str) -> str:
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=EXAMPLE, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    manage("migrate", "-v", "0")
    celery_durable_worker("shop_site", env=env, cwd=str(EXAMPLE), concurrency=1)
    out = [line for line in manage("shell", "-c", PLACE).splitlines() if line.startswith(("ORDER", "ROLLED"))]
    assert out[1:] == ["ROLLED BACK"], out
    order_id = int(out[0].split()[1])
    with psycopg.connect(database, autocommit=True) as conn:
        deadline = time.monotonic() + 60
        while not conn.execute("SELECT receipt_sent FROM orders_order WHERE id = %s", (order_id,)).fetchone()[0]:
            assert time.monotonic() < deadline, "the receipt task did not run"
            time.sleep(0.1)
        assert conn.execute("SELECT count(*) FROM orders_order").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM celery_durable.message").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM celery_durable.dead_letter").fetchone()[0] == 0
        done = conn.execute("SELECT count(*) FROM celery_durable.result WHERE name = 'orders.tasks.send_receipt'").fetchone()
        assert done[0] == 1  # one receipt: the rolled-back order's task never existed
