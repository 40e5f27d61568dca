"""A schema as an earlier version left it: the frozen version-1 schema, then the migrations up to that version.

Tests of an upgrade write rows the way that version did, then migrate
(``ensure_schema``, or any client's first use) and check what the current
code makes of them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import psycopg
from psycopg import sql

from celery_durable.db import migrate
from celery_durable.db.queries import schema_sql

BASELINE = Path(__file__).resolve().parents[1] / "migration" / "schema_v1.sql"


def schema_at(conn: psycopg.Connection, schema: str, version: int) -> None:
    """Create ``schema`` at ``version`` (autocommit ``conn``)."""
    conn.execute(schema_sql(BASELINE.read_text(encoding="utf-8"), schema))
    conn.execute(sql.SQL("INSERT INTO {}.schema_version (version) VALUES (1)").format(sql.Identifier(schema)))
    folder = resources.files("celery_durable.db").joinpath("sql", "migrations")
    for number, name in migrate.migrations():
        if number <= version:
            conn.execute(schema_sql(folder.joinpath(name).read_text(encoding="utf-8"), schema))
            conn.execute(sql.SQL("INSERT INTO {}.schema_version (version) VALUES (%s)")
                         .format(sql.Identifier(schema)), (number,))
