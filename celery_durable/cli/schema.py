"""``migrate``, ``sql`` and ``queues``: the schema and the queues' state."""

from __future__ import annotations

from typing import Any

import click
import psycopg
from psycopg.rows import dict_row

from ..db import migrate
from ..db.queries import schema_sql
from .group import durable
from .output import emit, json_option, table
from .target import Target, with_target


@durable.command("migrate")
@json_option
@with_target
def migrate_cmd(target: Target, as_json: bool) -> None:
    """Create the schema or bring it to the current version; print the version."""
    with target.connect() as conn:
        before = migrate.current_version(conn, target.schema)
        version = migrate.ensure_schema(conn, target.schema, migrate=True)
    if before is None:
        action = "created"
    elif before == version:
        action = "up to date"
    else:
        action = f"migrated from version {before}"
    data = {"database": target.describe(), "schema": target.schema, "version": version,
            "previous_version": before, "action": action}
    emit(as_json, data, lambda: f"schema {target.schema!r} in {target.describe()}: version {version} ({action})")


@durable.command("sql")
@click.option("--grants", "role", metavar="ROLE",
              help="Print instead the GRANTs that let ROLE run workers, clients and read commands (DML only).")
@with_target
def sql_cmd(target: Target, role: str | None) -> None:
    """Print the DDL that creates the current schema (for a DBA; no database needed)."""
    if role is not None:
        if not role or "\x00" in role:
            raise click.BadParameter("a role name is needed", param_hint="--grants")
        click.echo(migrate.grants(target.schema, role).strip())
        return
    click.echo(migrate.ddl(target.schema).strip())


def _checked(conn: psycopg.Connection, target: Target) -> None:
    """Read-only commands never create the schema: say how to when it is missing or old."""
    migrate.ensure_schema(conn, target.schema, migrate=False)


QUEUE_COLUMNS = ("queue", "depth", "ready", "delayed", "leased", "oldest_age")
QUEUE_EXTRA = ("oldest", "estimated")


@durable.command("queues")
@json_option
@with_target
def queues_cmd(target: Target, as_json: bool) -> None:
    """Every declared queue: depth, ready, delayed, leased and the age of its oldest message."""
    query = schema_sql(f"SELECT {', '.join(QUEUE_COLUMNS + QUEUE_EXTRA)} FROM {{schema}}.queues ORDER BY queue",
                       target.schema)
    with target.connect() as conn:
        _checked(conn, target)
        rows = conn.cursor(row_factory=dict_row).execute(query).fetchall()
    emit(as_json, rows, lambda: _queue_table(rows, target.schema))


def _queue_table(rows: list[dict[str, Any]], schema: str) -> str:
    if not rows:
        return f"no queues in schema {schema!r}"
    text = table(QUEUE_COLUMNS, [[row[c] for c in QUEUE_COLUMNS] for row in rows])
    estimated = [row["queue"] for row in rows if row["estimated"]]
    if estimated:
        text += ("\nestimated from a sample of the message table (more than 10,000 messages): "
                 + ", ".join(estimated))
    return text
