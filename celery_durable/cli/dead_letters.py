"""``dead-letters``: list, requeue and purge what the transport set aside."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, astuple, fields

import click

from ..dead_letters import DeadLetter, list_dead_letters, purge_dead_letters, requeue_dead_letters
from .group import durable
from .output import emit, json_option, table
from .schema import _checked
from .target import DEAD_LETTER_LIMIT_DEFAULT, CommandError, Target, with_target

DEAD_LETTER_COLUMNS = tuple(f.name for f in fields(DeadLetter))


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
    chosen = list(ids) if ids else None
    with target.connect() as conn:
        _checked(conn, target)
        if requeue:
            moved = [asdict(m) for m in requeue_dead_letters(conn, target.schema, ids=chosen, queue=queue)]
            emit(as_json, moved, lambda: f"requeued {len(moved)} message(s)" + (
                "\n" + table(("dead_letter_id", "message_id", "queue"),
                             [(m["dead_letter_id"], m["message_id"], m["queue"]) for m in moved]) if moved else ""))
            _missing(ids, [m["dead_letter_id"] for m in moved])
            return
        if purge:
            deleted = purge_dead_letters(conn, target.schema, ids=chosen, queue=queue)
            emit(as_json, {"purged": len(deleted), "ids": deleted},
                 lambda: f"purged {len(deleted)} dead letter(s)")
            _missing(ids, deleted)
            return
        found = list_dead_letters(conn, target.schema, ids=chosen, queue=queue, limit=limit)
    data = [asdict(letter) for letter in found]
    emit(as_json, data, lambda: table(DEAD_LETTER_COLUMNS, [astuple(letter) for letter in found])
         if found else "no dead letters")


def _missing(asked: Sequence[int], found: Iterable[int]) -> None:
    missing = sorted(set(asked) - set(found))
    if missing:
        raise CommandError(f"no dead letter with id {', '.join(map(str, missing))}")

