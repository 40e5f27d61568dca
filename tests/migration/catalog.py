"""A comparable description of everything a schema holds, read from the system catalogs.

Two schemas built different ways (``schema.sql``, migrations, the DDL printed
for a DBA) must give equal dumps. The schema's own name is replaced by
``{schema}`` so schemas with different names compare equal.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg

# (section, query): every query takes the schema name as %(schema)s and returns sortable rows.
QUERIES: dict[str, str] = {
    "tables": """
        SELECT c.relname, c.relkind, c.relpersistence, coalesce(c.reloptions, '{}')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p', 'v', 'm', 'S')""",
    # Column order is compared too: a migration can only append, so schema.sql must list new columns last.
    "columns": """
        SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               a.attidentity, a.attgenerated, pg_get_expr(d.adbin, d.adrelid), coll.collname
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        LEFT JOIN pg_collation coll ON coll.oid = a.attcollation AND a.attcollation <> 100
        WHERE n.nspname = %(schema)s AND a.attnum > 0 AND NOT a.attisdropped
          AND c.relkind IN ('r', 'p', 'v', 'm')""",
    "constraints": """
        SELECT c.relname, k.conname, k.contype, pg_get_constraintdef(k.oid, true)
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %(schema)s""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = %(schema)s""",
    "views": """
        SELECT c.relname, pg_get_viewdef(c.oid, true)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %(schema)s AND c.relkind IN ('v', 'm')""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), l.lanname, pg_get_functiondef(p.oid)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang
        WHERE n.nspname = %(schema)s""",
    "triggers": """
        SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid, true), t.tgenabled
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %(schema)s AND NOT t.tgisinternal""",
    "sequences": """
        SELECT s.sequencename, s.data_type::text, s.start_value, s.increment_by, s.cycle
        FROM pg_sequences s WHERE s.schemaname = %(schema)s""",
    "types": """
        SELECT t.typname, t.typtype
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = %(schema)s AND t.typtype IN ('e', 'd', 'c')
          AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.reltype = t.oid)""",
    "comments": """
        SELECT c.relname, coalesce(a.attname, ''), d.description
        FROM pg_description d
        JOIN pg_class c ON c.oid = d.objoid AND d.classoid = 'pg_class'::regclass
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.objsubid AND d.objsubid > 0
        WHERE n.nspname = %(schema)s""",
}


def dump(conn: psycopg.Connection, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """``{section: sorted rows}`` with the schema name replaced by ``{schema}``."""
    name = re.compile(rf'"{re.escape(schema)}"|\b{re.escape(schema)}\b')
    result: dict[str, list[tuple[Any, ...]]] = {}
    for section, query in QUERIES.items():
        rows = conn.execute(query, {"schema": schema}).fetchall()
        result[section] = sorted(
            (tuple(name.sub("{schema}", v) if isinstance(v, str) else _plain(v) for v in row) for row in rows),
            key=repr,
        )
    versions = conn.execute(
        psycopg.sql.SQL("SELECT version FROM {}.schema_version ORDER BY version").format(psycopg.sql.Identifier(schema))
    ).fetchall()
    result["schema_version"] = [row[0] for row in versions]
    return result


def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(sorted(str(v) for v in value))
    return value


def differences(left: dict, right: dict) -> list[str]:
    """Readable lines for every row present on one side only."""
    lines = []
    for section in sorted(set(left) | set(right)):
        a, b = left.get(section, []), right.get(section, [])
        if a == b:
            continue
        only_a = [row for row in a if row not in b]
        only_b = [row for row in b if row not in a]
        lines += [f"{section}: only in first:  {row!r}" for row in only_a]
        lines += [f"{section}: only in second: {row!r}" for row in only_b]
        if not only_a and not only_b:
            lines.append(f"{section}: same rows, different order/count: {a!r} != {b!r}")
    return lines
