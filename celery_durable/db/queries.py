"""Load named SQL blocks from a component's ``.sql`` file.

A file holds blocks that start with ``-- name --`` and a one-line comment
saying why the query exists. ``{schema}`` stands for the configured schema
(validated as a plain identifier, then quoted). ``{@name}`` stands for the
block ``name`` of the same file, so a statement two queries share (an
upsert's column list) is written once; nothing else is templated.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_BLOCK = re.compile(r"^-- ([a-z0-9_]+) --\n(.*?)(?=^-- [a-z0-9_]+ --\n|\Z)", re.M | re.S)
_INCLUDE = re.compile(r"\{@([a-z0-9_]+)\}")


def schema_sql(text: str, schema: str) -> str:
    """Substitute the quoted schema name into SQL text."""
    return text.replace("{schema}", f'"{schema}"')


@cache
def load(package: str, filename: str, schema: str) -> dict[str, str]:
    """``{name: sql}`` for one component's query file and schema; raises ValueError on a bad ``{@name}``."""
    text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    return {name: schema_sql(body, schema) for name, body in parse(text).items()}


def parse(text: str) -> dict[str, str]:
    """``{name: sql}`` of a file's blocks, comments dropped and ``{@name}`` expanded (no schema yet)."""
    raw = {}
    for name, body in _BLOCK.findall(text):
        lines = [line for line in body.strip().splitlines() if not line.startswith("--")]
        raw[name] = "\n".join(lines).strip()
    return {name: _expand(raw, name, ()) for name in raw}


def _expand(raw: dict[str, str], name: str, within: tuple[str, ...]) -> str:
    if name in within:
        raise ValueError(f"query block {name!r} includes itself: {' -> '.join((*within, name))}")
    if name not in raw:
        raise ValueError(f"query block {within[-1]!r} includes {name!r}, which the file does not define")
    return _INCLUDE.sub(lambda found: _expand(raw, found.group(1), (*within, name)), raw[name])
