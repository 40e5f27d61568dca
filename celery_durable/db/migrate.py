"""Create, check and migrate the schema.

A fresh database gets ``sql/schema.sql`` (the current version); a database
at an older version gets ``sql/migrations/NNNN_*.sql`` in order. Both run
in one transaction under an advisory lock, so workers starting together
create the schema once.
"""

from __future__ import annotations

import re
from importlib import resources

import psycopg

from ..exceptions import SchemaError
from .queries import schema_sql

_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_SQL = "celery_durable.db"


def migrations() -> list[tuple[int, str]]:
    """``[(version, filename)]`` of every migration after version 1, in order."""
    folder = resources.files(_SQL).joinpath("sql").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name))
    return sorted(found)


def latest_version() -> int:
    return max([1] + [version for version, _ in migrations()])


def ddl(schema: str) -> str:
    """The SQL a DBA runs to create the current schema by hand."""
    text = resources.files(_SQL).joinpath("sql").joinpath("schema.sql").read_text(encoding="utf-8")
    version = f"\nINSERT INTO {{schema}}.schema_version (version) VALUES ({latest_version()});\n"
    return schema_sql(text + version, schema)


def grants(schema: str, role: str) -> str:
    """The GRANTs a DML-only application role needs (``sql/grants.sql``), ``role`` quoted as an identifier."""
    text = resources.files(_SQL).joinpath("sql").joinpath("grants.sql").read_text(encoding="utf-8")
    return schema_sql(text, schema).replace("{role}", '"' + role.replace('"', '""') + '"')


def current_version(conn: psycopg.Connection, schema: str) -> int | None:
    """The schema's version, or None when it does not exist."""
    # Read the catalog with a query, not to_regclass(): after waiting for the advisory lock inside
    # a transaction, to_regclass() answers from this backend's catalog cache, which still says
    # "no such schema" while another process has just committed it (no relation lock was taken,
    # so its invalidations were not read). Scanning pg_class locks it, which reads them.
    row = conn.execute(
        "SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = 'schema_version'",
        (schema,),
    ).fetchone()
    if row is None:
        return None
    found = conn.execute(schema_sql("SELECT max(version) FROM {schema}.schema_version", schema)).fetchone()
    return found[0] if found and found[0] is not None else None


def ensure_schema(conn: psycopg.Connection, schema: str, *, migrate: bool = True) -> int:
    """Bring the schema to the current version (or check it when ``migrate`` is false).

    Raises SchemaError when the schema is missing or old and ``migrate`` is
    false, or when it is newer than this code.
    """
    target = latest_version()
    version = current_version(conn, schema)
    if version == target:
        return version
    if version is not None and version > target:
        raise SchemaError(
            f"schema {schema!r} is at version {version}, newer than this celery_durable ({target}): upgrade the package"
        )
    if not migrate:
        state = "missing" if version is None else f"at version {version}"
        raise SchemaError(
            f"schema {schema!r} is {state}; this code needs version {target}. "
            "Run `celery-durable migrate` (or print the SQL with `celery-durable sql`), or enable auto_migrate"
        )
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"celery_durable:{schema}",))
        version = current_version(conn, schema)
        if version is None:
            conn.execute(ddl(schema))
        elif version < target:
            folder = resources.files(_SQL).joinpath("sql").joinpath("migrations")
            for number, name in migrations():
                if number > version:
                    conn.execute(schema_sql(folder.joinpath(name).read_text(encoding="utf-8"), schema))
                    conn.execute(
                        schema_sql("INSERT INTO {schema}.schema_version (version) VALUES (%s)", schema), (number,)
                    )
    return target
