"""The schema as a DBA and a locked-down deployment see it: printed DDL, no superuser, no extension."""

from __future__ import annotations

import re
import uuid

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from celery_durable.cli import durable
from celery_durable.db import migrate


@pytest.fixture
def conn(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as connection:
        yield connection


def _printed_ddl(schema: str) -> str:
    # No URL and an unreachable one: printing the DDL never connects.
    result = CliRunner().invoke(durable, ["sql", "--schema", schema, "--url", "postgresql://nobody@127.0.0.1:1/none"])
    assert result.exit_code == 0, result.output
    return result.output


def test_printed_ddl_applies_to_an_empty_schema(conn, schema):
    text = _printed_ddl(schema)
    assert f'"{schema}"' in text and "{schema}" not in text
    assert "CREATE EXTENSION" not in text.upper()
    with conn.transaction():
        conn.execute(text)
    # The result is the current version: the code accepts it without migrating.
    assert migrate.ensure_schema(conn, schema, migrate=False) == migrate.latest_version()


def test_printed_ddl_is_what_ensure_schema_runs(schema):
    assert _printed_ddl(schema).strip() == migrate.ddl(schema).strip()


def test_schema_needs_no_extension(conn, schema):
    migrate.ensure_schema(conn, schema)
    languages = {row[0] for row in conn.execute(
        "SELECT DISTINCT l.lanname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "JOIN pg_language l ON l.oid = p.prolang WHERE n.nspname = %s", (schema,))}
    assert languages <= {"plpgsql", "sql"}
    depends_on_extension = conn.execute(
        """
        SELECT count(*) FROM pg_depend d
        JOIN pg_class c ON c.oid = d.objid AND d.classid = 'pg_class'::regclass
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND d.refclassid = 'pg_extension'::regclass
        """,
        (schema,),
    ).fetchone()[0]
    assert depends_on_extension == 0


@pytest.fixture
def plain_role(conn):
    """A role with no superuser, no CREATEDB, no CREATEROLE; only CREATE on this database."""
    name = f"cd_plain_{uuid.uuid4().hex[:8]}"
    role = sql.Identifier(name)
    database = sql.Identifier(conn.info.dbname)
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE").format(role))
    conn.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(database, role))
    yield name
    conn.execute("RESET ROLE")
    conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(role))
    conn.execute(sql.SQL("DROP ROLE {}").format(role))


def test_schema_works_for_a_plain_role(conn, schema, plain_role):
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(plain_role)))
    assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0] is False
    assert migrate.ensure_schema(conn, schema) == migrate.latest_version()
    owner = conn.execute("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()[0]
    assert owner == plain_role
    # The tables, the NOTIFY trigger and the views work for this role.
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(f"{schema}.message")))
    conn.execute(sql.SQL("INSERT INTO {}.queue (name) VALUES ('q')").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.message (queue, payload) VALUES ('q', '{{}}')").format(s))
    assert conn.execute(sql.SQL("SELECT depth, ready FROM {}.queues").format(s)).fetchone() == (1, 1)
    notices = list(conn.notifies(timeout=5, stop_after=1))
    assert notices and re.fullmatch(r"r\d+/0:1;q", notices[0].payload)  # ready: its xid, priority 0 from id 1
    # Running again as the same role is a no-op.
    assert migrate.ensure_schema(conn, schema) == migrate.latest_version()
