"""The named queries of ``queries.sql`` (catalog reads: the schema is always a parameter there)."""

from __future__ import annotations

from ..db import queries


def sql(name: str) -> str:
    return queries.load("celery_durable.health", "queries.sql", "")[name]
