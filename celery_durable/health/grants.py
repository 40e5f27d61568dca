"""The privileges ``db/sql/grants.sql`` gives an application role, and which of them a role lacks.

The expected privileges are read from grants.sql itself, so the doctor checks
exactly what ``celery-durable sql --grants ROLE`` prints. Its statements have
one of four forms (``GRANT privileges ON SCHEMA``, ``GRANT privileges ON ALL
TABLES|SEQUENCES|FUNCTIONS IN SCHEMA``, ``REVOKE privileges ON {schema}.name``,
and ``ALTER DEFAULT PRIVILEGES`` for objects created later, which has nothing
to check yet); anything else is an error here, so a new form cannot be
skipped silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import psycopg

from .queries import sql

_ON_SCHEMA = re.compile(r"^GRANT ([A-Z, ]+) ON SCHEMA \{schema\} TO \{role\};$")
_ON_ALL = re.compile(r"^GRANT ([A-Z, ]+) ON ALL (TABLES|SEQUENCES|FUNCTIONS) IN SCHEMA \{schema\} TO \{role\};$")
_REVOKE = re.compile(r"^REVOKE ([A-Z, ]+) ON \{schema\}\.([a-z_]+) FROM \{role\};$")
_KIND = {"TABLES": "table", "SEQUENCES": "sequence", "FUNCTIONS": "function"}


@dataclass(frozen=True)
class Rules:
    """What grants.sql gives: privileges per kind of object, minus those revoked per object name."""

    by_kind: dict[str, frozenset[str]]
    revoked: dict[str, frozenset[str]]

    def expected(self, kind: str, name: str) -> frozenset[str]:
        return self.by_kind.get(kind, frozenset()) - self.revoked.get(name, frozenset())


def rules() -> Rules:
    text = resources.files("celery_durable.db").joinpath("sql").joinpath("grants.sql").read_text(encoding="utf-8")
    by_kind: dict[str, set[str]] = {}
    revoked: dict[str, set[str]] = {}
    for statement in _statements(text):
        if statement.startswith("ALTER DEFAULT PRIVILEGES "):
            continue
        if match := _ON_SCHEMA.match(statement):
            by_kind.setdefault("schema", set()).update(_privileges(match.group(1)))
        elif match := _ON_ALL.match(statement):
            by_kind.setdefault(_KIND[match.group(2)], set()).update(_privileges(match.group(1)))
        elif match := _REVOKE.match(statement):
            revoked.setdefault(match.group(2), set()).update(_privileges(match.group(1)))
        else:
            raise ValueError(f"grants.sql: the doctor cannot read this statement: {statement}")
    return Rules({k: frozenset(v) for k, v in by_kind.items()}, {k: frozenset(v) for k, v in revoked.items()})


def _statements(text: str) -> list[str]:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("--")]
    return [" ".join(part.split()) + ";" for part in " ".join(lines).split(";") if part.strip()]


def _privileges(text: str) -> set[str]:
    return {p.strip() for p in text.split(",") if p.strip()}


def missing(conn: psycopg.Connection, schema: str, role: str) -> list[tuple[str, str, str]]:
    """``[(kind, object, privilege)]`` that grants.sql gives and ``role`` lacks (empty: none, or no schema)."""
    expected = rules()
    objects = conn.execute(sql("schema_objects"), {"schema": schema}).fetchall()
    wanted = [(kind, oid, name, privilege)
              for kind, oid, name in objects for privilege in sorted(expected.expected(kind, name))]
    if not wanted:
        return []
    kinds, oids, names, privileges = (list(column) for column in zip(*wanted, strict=True))
    return conn.execute(sql("privileges_missing"), {"kinds": kinds, "oids": oids, "names": names,
                                                   "privileges": privileges, "role": role}).fetchall()
