"""Load named SQL blocks from a component's ``.sql`` file.

A file holds blocks that start with ``-- name --`` and a one-line comment
saying why the query exists. ``{schema}`` stands for the configured schema
(validated as a plain identifier, then quoted); nothing else is templated.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

_BLOCK = re.compile(r"^-- ([a-z0-9_]+) --\n(.*?)(?=^-- [a-z0-9_]+ --\n|\Z)", re.M | re.S)


def schema_sql(text: str, schema: str) -> str:
    """Substitute the quoted schema name into SQL text."""
    return text.replace("{schema}", f'"{schema}"')


@lru_cache(maxsize=None)
def load(package: str, filename: str, schema: str) -> dict[str, str]:
    """``{name: sql}`` for one component's query file and schema."""
    text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    queries = {}
    for name, body in _BLOCK.findall(text):
        lines = [line for line in body.strip().splitlines() if not line.startswith("--")]
        queries[name] = schema_sql("\n".join(lines).strip(), schema)
    return queries
