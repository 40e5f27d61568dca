"""Named SQL blocks: every file loads, every block says why, ``{@name}`` includes (no database needed)."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from celery_durable.db import queries

#: Every component that keeps its SQL in a queries.sql file.
PACKAGES = sorted(
    f"celery_durable.{entry.name}" for entry in resources.files("celery_durable").iterdir()
    if entry.is_dir() and entry.joinpath("queries.sql").is_file()
)


def test_the_components_with_sql_are_found():
    assert {"celery_durable.backend", "celery_durable.transport", "celery_durable.workflow"} <= set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_block_loads_and_says_why(package):
    text = resources.files(package).joinpath("queries.sql").read_text(encoding="utf-8")
    loaded = queries.load(package, "queries.sql", "s")
    for name, body in re.findall(r"^-- ([a-z0-9_]+) --\n(.*?)(?=^-- [a-z0-9_]+ --\n|\Z)", text, re.M | re.S):
        assert body.startswith("-- ") and len(body.split("\n", 1)[0]) > 10, f"{package}:{name} has no why-line"
        assert loaded[name] and "{@" not in loaded[name] and "{schema}" not in loaded[name], name


def test_a_block_includes_another_by_name():
    parsed = queries.parse("-- inner --\n-- Why.\nSELECT 1\n\n-- outer --\n-- Why.\nWITH x AS ({@inner}) SELECT * FROM x\n")
    assert parsed["outer"] == "WITH x AS (SELECT 1) SELECT * FROM x"


def test_an_unknown_or_circular_include_is_refused():
    with pytest.raises(ValueError, match="'outer' includes 'nowhere'"):
        queries.parse("-- outer --\n-- Why.\nSELECT ({@nowhere})\n")
    with pytest.raises(ValueError, match="includes itself: a -> b -> a"):
        queries.parse("-- a --\n-- Why.\n{@b}\n-- b --\n-- Why.\n{@a}\n")


def test_the_result_upserts_share_one_column_list():
    loaded = queries.load("celery_durable.backend", "queries.sql", "s")
    store = loaded["result_store"]
    assert store in loaded["result_upsert"] and store in loaded["result_upsert_chord_part"]
    text = resources.files("celery_durable.backend").joinpath("queries.sql").read_text(encoding="utf-8")
    assert text.count("ON CONFLICT (task_id)") == 1
