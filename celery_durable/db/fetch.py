"""The one row, or value, of a statement that always returns one (an aggregate, a lock, ``RETURNING``).

psycopg types ``fetchone()`` as "a row or None"; these say that None cannot happen here, and fail
with a LookupError that says so if it does, instead of a bare TypeError further on.
"""

from __future__ import annotations

from typing import Any

import psycopg


def one(cursor: psycopg.Cursor[Any]) -> Any:
    """The statement's only row; raises LookupError if it returned none."""
    row = cursor.fetchone()
    if row is None:
        raise LookupError("a statement that always returns a row returned none")
    return row


def value(cursor: psycopg.Cursor[Any]) -> Any:
    """The first column of the statement's only row; raises LookupError if it returned none."""
    return one(cursor)[0]
