"""The queues and metrics views stay cheap with a big backlog, exact on small queues, and say when they estimate.

A scrape used to aggregate the whole message table: its cost grew with the
backlog, and a long scan held back VACUUM on the table it scanned. The cost of
one read is measured as the buffers it touches (EXPLAIN ANALYZE BUFFERS), a
count, not a time.
"""

from __future__ import annotations

import json

import psycopg
import pytest
from click.testing import CliRunner

from celery_durable.cli import durable
from celery_durable.db import migrate
from celery_durable.db.queries import schema_sql

BIG = 150_000


@pytest.fixture
def db(pg_url, schema):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        migrate.ensure_schema(conn, schema)
        yield conn


def _fill(db, schema: str, big: int = BIG) -> None:
    """A backlog of ``big`` messages in queue ``big`` and a few of each state in ``small``."""
    db.execute(schema_sql("INSERT INTO {schema}.queue (name) VALUES ('big'), ('small'), ('empty')", schema))
    db.execute(schema_sql("INSERT INTO {schema}.message (queue, payload) "
                          "SELECT 'big', repeat('x', 300) FROM generate_series(1, %s)", schema), (big,))
    db.execute(schema_sql(
        """INSERT INTO {schema}.message (queue, payload, visible_at, lease_token, delivery_count, created_at)
           SELECT 'small', '{{}}',
                  CASE WHEN i <= 5 THEN now() + interval '1 hour' WHEN i <= 8 THEN now() + interval '30 seconds'
                       ELSE now() END,
                  CASE WHEN i BETWEEN 6 AND 8 THEN gen_random_uuid() END,
                  CASE WHEN i = 20 THEN 3 ELSE 1 END,
                  now() - make_interval(secs => i)
           FROM generate_series(1, 20) AS i""", schema))


def _buffers(db, query: str) -> int:
    plan = db.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query).fetchone()[0][0]["Plan"]
    return plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]


def test_a_scrape_reads_a_bounded_part_of_a_big_backlog(db, schema):
    _fill(db, schema)
    pages = db.execute("SELECT pg_relation_size(%s) / current_setting('block_size')::int",
                       (f'"{schema}".message',)).fetchone()[0]
    cost = _buffers(db, schema_sql("SELECT * FROM {schema}.metrics", schema))
    assert cost < pages / 3, f"one read touched {cost} buffers; the message table has {pages} pages"

    rows = {(m, label): v for m, label, v in db.execute(schema_sql("SELECT * FROM {schema}.metrics", schema))}
    assert rows[("queue_estimated", "big")] == 1
    assert abs(rows[("queue_depth", "big")] - BIG) < BIG * 0.15
    assert abs(rows[("queue_ready", "big")] - BIG) < BIG * 0.15
    assert rows[("queue_oldest_age_seconds", "big")] >= 0
    # A small queue beside it is counted exactly.
    small = {m: v for (m, label), v in rows.items() if label == "small"}
    assert small["queue_estimated"] == 0
    assert (small["queue_depth"], small["queue_ready"], small["queue_delayed"], small["queue_leased"]) == (20, 12, 5, 3)
    assert small["queue_redeliveries"] == 2
    assert 20 <= small["queue_oldest_age_seconds"] < 600
    assert rows[("queue_depth", "empty")] == 0 and rows[("queue_oldest_age_seconds", "empty")] == 0


def test_the_queues_command_says_which_figures_are_estimated(db, schema, pg_url):
    _fill(db, schema, big=20_000)
    result = CliRunner().invoke(durable, ["--url", pg_url, "--schema", schema, "queues", "--json"])
    assert result.exit_code == 0, result.output
    found = {row["queue"]: row for row in json.loads(result.output)}
    assert found["big"]["estimated"] is True and found["small"]["estimated"] is False
    assert found["small"]["depth"] == 20
    text = CliRunner().invoke(durable, ["--url", pg_url, "--schema", schema, "queues"]).output
    assert "estimated" in text.splitlines()[-1] and "big" in text.splitlines()[-1]


def test_exact_below_the_sampling_limit_whatever_the_dead_rows(db, schema):
    """Dead rows (a held horizon, no VACUUM yet) in front of a small queue change nothing in its figures."""
    db.execute(schema_sql("INSERT INTO {schema}.queue (name) VALUES ('q')", schema))
    db.execute(schema_sql("INSERT INTO {schema}.message (queue, payload) "
                          "SELECT 'q', repeat('x', 300) FROM generate_series(1, 30000)", schema))
    db.execute(schema_sql("DELETE FROM {schema}.message WHERE id % 1000 <> 0", schema))
    rows = {(m, label): v for m, label, v in db.execute(schema_sql("SELECT * FROM {schema}.metrics", schema))}
    assert rows[("queue_depth", "q")] == 30 and rows[("queue_estimated", "q")] == 0
