"""Reading a statement's rows: by column name, and the one row, or value, of a statement that always returns one.

A row read by its columns' names does not depend on the order of the SELECT's
columns (:func:`execute_as`). psycopg types ``fetchone()`` as "a row or None";
:func:`one` and :func:`value` say that None cannot happen (an aggregate, a lock,
``RETURNING``), and fail with a LookupError that says so if it does, instead of
a bare TypeError further on.
"""

from __future__ import annotations

from typing import Any, TypeVar

import psycopg
from psycopg.rows import class_row

T = TypeVar("T")


def execute_as(conn: psycopg.Connection[Any], shape: type[T], query: str, params: Any = None) -> psycopg.Cursor[T]:
    """Send ``query``; its rows come back as ``shape`` (a dataclass), built from the columns by name.

    A cursor of its own, so it works inside ``conn.pipeline()`` like ``conn.execute``:
    the same statement, the rows read when they are fetched.
    """
    return conn.cursor(row_factory=class_row(shape)).execute(query, params)


def one(cursor: psycopg.Cursor[Any]) -> Any:
    """The statement's only row; raises LookupError if it returned none."""
    row = cursor.fetchone()
    if row is None:
        raise LookupError("a statement that always returns a row returned none")
    return row


def value(cursor: psycopg.Cursor[Any]) -> Any:
    """The first column of the statement's only row; raises LookupError if it returned none."""
    return one(cursor)[0]
