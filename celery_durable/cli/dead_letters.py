"""``dead-letters``: list, requeue and purge what the transport set aside."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import click
import psycopg

from ..db import fetch
from ..db.queries import schema_sql
from .group import durable
from .output import emit, json_option, table
from .schema import _checked
from .target import DEAD_LETTER_LIMIT_DEFAULT, CommandError, Target, with_target

DEAD_LETTER_COLUMNS = ("id", "queue", "task", "reason", "delivery_count", "dead_at")


@durable.command("dead-letters")
@click.argument("ids", nargs=-1, type=int)
@click.option("--requeue", is_flag=True, help="Move the given dead letters (or all, with --all) back to their queues.")
@click.option("--purge", is_flag=True, help="Delete the given dead letters (or all, with --all).")
@click.option("--all", "every", is_flag=True, help="With --requeue/--purge: every dead letter (of --queue).")
@click.option("--queue", metavar="NAME", help="Only dead letters of this queue.")
@click.option("--limit", default=DEAD_LETTER_LIMIT_DEFAULT, show_default=True, help="Most rows listed.")
@json_option
@with_target
def dead_letters_cmd(target: Target, ids: tuple[int, ...], requeue: bool, purge: bool, every: bool,
                     queue: str | None, limit: int, as_json: bool) -> None:
    """List dead letters; `--requeue ID…` sends them back to their queue, `--purge ID…` deletes them."""
    if requeue and purge:
        raise CommandError("choose one of --requeue and --purge")
    if (requeue or purge) and not ids and not every:
        raise CommandError("give the dead-letter IDs to act on, or --all")
    if ids and not (requeue or purge):
        raise CommandError("IDs need --requeue or --purge")
    where, params = _dead_letter_filter(ids if ids else None, queue)
    with target.connect() as conn:
        _checked(conn, target)
        if requeue:
            moved = _requeue(conn, target.schema, where, params)
            emit(as_json, moved, lambda: f"requeued {len(moved)} message(s)" + (
                "\n" + table(("dead_letter_id", "message_id", "queue"),
                             [(m["dead_letter_id"], m["message_id"], m["queue"]) for m in moved]) if moved else ""))
            _missing(ids, [m["dead_letter_id"] for m in moved])
            return
        if purge:
            deleted = [row[0] for row in conn.execute(
                schema_sql(f"DELETE FROM {{schema}}.dead_letter {where} RETURNING id", target.schema), params)]
            emit(as_json, {"purged": len(deleted), "ids": sorted(deleted)},
                 lambda: f"purged {len(deleted)} dead letter(s)")
            _missing(ids, deleted)
            return
        query = schema_sql(
            f"SELECT {', '.join(DEAD_LETTER_COLUMNS)} FROM {{schema}}.dead_letter {where} ORDER BY id LIMIT %(limit)s",
            target.schema,
        )
        rows = conn.execute(query, {**params, "limit": limit}).fetchall()
    data = [dict(zip(DEAD_LETTER_COLUMNS, row, strict=True)) for row in rows]
    emit(as_json, data, lambda: table(DEAD_LETTER_COLUMNS, rows) if rows else "no dead letters")


def _dead_letter_filter(ids: Sequence[int] | None, queue: str | None) -> tuple[str, dict[str, Any]]:
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if ids:
        clauses.append("id = ANY(%(ids)s)")
        params["ids"] = list(ids)
    if queue:
        clauses.append("queue = %(queue)s")
        params["queue"] = queue
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


def _requeue(conn: psycopg.Connection, schema: str, where: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Move dead letters back into ``message`` in one transaction; delivery count starts again at 0.

    The priority is re-read from the payload (the dead-letter row does not
    keep it); the message TTL is not restored, so a requeued message does not
    expire at once. The queue row is created if it expired meanwhile, so the
    message shows in ``queues``. The insert trigger wakes listening workers.
    """
    moved = []
    with conn.transaction():
        rows = conn.execute(
            schema_sql(f"DELETE FROM {{schema}}.dead_letter {where} RETURNING id, queue, task, payload, created_at",
                       schema), params,
        ).fetchall()
        for dead_id, queue, task, payload, created_at in sorted(rows):
            conn.execute(schema_sql("INSERT INTO {schema}.queue (name) VALUES (%s) ON CONFLICT (name) DO NOTHING",
                                    schema), (queue,))
            new_id = fetch.value(conn.execute(
                schema_sql("INSERT INTO {schema}.message (queue, priority, task, payload, created_at) "
                           "VALUES (%s, %s, %s, %s, %s) RETURNING id", schema),
                (queue, _payload_priority(payload), task, payload, created_at),
            ))
            moved.append({"dead_letter_id": dead_id, "message_id": new_id, "queue": queue})
    return moved


def _payload_priority(payload: str) -> int:
    try:
        value = json.loads(payload).get("properties", {}).get("priority")
        return max(0, min(int(value), 255))
    except (ValueError, TypeError, AttributeError):
        return 0


def _missing(asked: Sequence[int], found: Iterable[int]) -> None:
    missing = sorted(set(asked) - set(found))
    if missing:
        raise CommandError(f"no dead letter with id {', '.join(map(str, missing))}")


# -- workflows: a thin layer over celery_durable.workflows ---------------------------------------------
