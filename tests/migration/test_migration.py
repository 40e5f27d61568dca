"""Migrations equal ``schema.sql``; the schema is created once, checked, and never downgraded.

Three ways to build the current schema must give the same catalog:
``ensure_schema`` on an empty database (``schema.sql``), the frozen version-1
schema (``schema_v1.sql``) plus every migration, and the DDL printed by
``celery-durable sql``. When adding migration NNNN, change ``schema.sql`` in
the same commit and leave ``schema_v1.sql`` alone.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from importlib import resources
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from celery_durable.cli import durable
from celery_durable.db import migrate
from celery_durable.db.queries import schema_sql
from celery_durable.exceptions import SchemaError

from .catalog import differences, dump

BASELINE = Path(__file__).with_name("schema_v1.sql")


@pytest.fixture
def conn(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def other_schema(pg_url):
    """A second throwaway schema for side-by-side comparisons."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def _assert_same(conn, first: str, second: str) -> None:
    one, two = dump(conn, first), dump(conn, second)
    # A migrated schema also keeps the rows of the versions it passed: compare the current one.
    one["schema_version"], two["schema_version"] = max(one["schema_version"]), max(two["schema_version"])
    diff = differences(one, two)
    assert not diff, "schemas differ:\n" + "\n".join(diff)


def test_migration_files_are_numbered_in_order():
    folder = resources.files("celery_durable.db").joinpath("sql", "migrations")
    names = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sql"))
    found = migrate.migrations()
    # A file the loader's pattern does not match would be skipped silently.
    assert [name for _, name in found] == names
    assert [version for version, _ in found] == list(range(2, 2 + len(found)))
    assert migrate.latest_version() == 1 + len(found)


def test_schema_sql_equals_printed_ddl(conn, schema, other_schema):
    assert migrate.ensure_schema(conn, schema) == migrate.latest_version()
    result = CliRunner().invoke(durable, ["sql", "--schema", other_schema])
    assert result.exit_code == 0, result.output
    conn.execute(result.output)
    _assert_same(conn, schema, other_schema)
    assert dump(conn, schema)["schema_version"] == [migrate.latest_version()]


def test_migrations_equal_schema_sql(conn, schema, other_schema):
    """The frozen version-1 schema, migrated by ensure_schema (every migration file runs), equals a fresh schema.sql."""
    conn.execute(schema_sql(BASELINE.read_text(encoding="utf-8"), other_schema))
    conn.execute(sql.SQL("INSERT INTO {}.schema_version (version) VALUES (1)").format(sql.Identifier(other_schema)))
    assert migrate.ensure_schema(conn, other_schema) == migrate.latest_version()
    migrate.ensure_schema(conn, schema)
    _assert_same(conn, schema, other_schema)
    # One schema_version row per migration applied, in order.
    assert dump(conn, other_schema)["schema_version"] == list(range(1, migrate.latest_version() + 1))


def test_comparison_sees_a_difference(conn, schema, other_schema):
    """The dump is not blind: one extra index is reported."""
    migrate.ensure_schema(conn, schema)
    migrate.ensure_schema(conn, other_schema)
    conn.execute(sql.SQL("CREATE INDEX extra_idx ON {}.message (task)").format(sql.Identifier(other_schema)))
    conn.execute(sql.SQL("ALTER TABLE {}.queue ALTER COLUMN durable DROP DEFAULT").format(sql.Identifier(other_schema)))
    diff = differences(dump(conn, schema), dump(conn, other_schema))
    assert any("extra_idx" in line for line in diff)
    assert any(line.startswith("columns:") and "durable" in line for line in diff)


_CHILD = """
import sys, psycopg
from celery_durable.db.migrate import ensure_schema
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    print(conn.execute("SELECT pg_backend_pid()").fetchone()[0], flush=True)
    sys.stdin.readline()
    print(ensure_schema(conn, sys.argv[2]), flush=True)
"""


def test_concurrent_ensure_schema_creates_once(pg_url, conn, schema):
    """Four processes race on an empty database; the advisory lock lets one create, the others wait and see it."""
    key = f"celery_durable:{schema}"
    conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
    children = [
        subprocess.Popen([sys.executable, "-c", _CHILD, pg_url, schema], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    try:
        pids = [int(child.stdout.readline()) for child in children]
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        # Wait until all four block on the lock we hold (they passed the unlocked version check).
        deadline = time.monotonic() + 60
        while True:
            waiting = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND pid = ANY(%s)", (pids,)
            ).fetchone()[0]
            if waiting == 4:
                break
            assert time.monotonic() < deadline, f"only {waiting} of 4 processes reached the lock"
            time.sleep(0.05)
        conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))
        outputs = [child.communicate(timeout=120) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    for child, (out, err) in zip(children, outputs):
        assert child.returncode == 0, err
        assert out.strip() == str(migrate.latest_version())
    versions = conn.execute(sql.SQL("SELECT version FROM {}.schema_version").format(sql.Identifier(schema))).fetchall()
    assert versions == [(migrate.latest_version(),)]


def test_missing_schema_without_auto_migrate(conn, schema):
    with pytest.raises(SchemaError) as info:
        migrate.ensure_schema(conn, schema, migrate=False)
    message = str(info.value)
    assert schema in message and "missing" in message and "celery-durable migrate" in message
    assert migrate.current_version(conn, schema) is None  # nothing was created


def test_missing_schema_through_settings(pg_url, schema):
    from celery_durable.config import Settings
    from celery_durable.db import dsn, pool

    with pytest.raises(SchemaError, match="missing"):
        pool.prepare_schema(dsn.from_url(pg_url), Settings(schema=schema, auto_migrate=False))


@pytest.mark.parametrize("auto_migrate", [True, False])
def test_newer_schema_is_refused(conn, schema, auto_migrate):
    migrate.ensure_schema(conn, schema)
    newer = migrate.latest_version() + 1
    conn.execute(sql.SQL("INSERT INTO {}.schema_version (version) VALUES (%s)").format(sql.Identifier(schema)), (newer,))
    with pytest.raises(SchemaError) as info:
        migrate.ensure_schema(conn, schema, migrate=auto_migrate)
    assert f"version {newer}" in str(info.value) and "newer" in str(info.value)
