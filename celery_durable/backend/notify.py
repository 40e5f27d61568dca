"""Result NOTIFYs: the channel of a task and the payload (a task id, or the id with its whole meta).

Each task has its own channel, derived from the schema and the task id, so a
process hears only the results it waits for (see :mod:`.listener`). Channel
names are identifiers of at most 63 bytes while task ids are any string: the
channel is a fixed-length digest. A collision between two tasks only wakes a
waiter for a task it then ignores, since the payload names the task.

A waiter that gets the meta in the notification resolves its result without
a query (one round trip less per ``get()``). Only small ASCII metas travel
so: NOTIFY payloads stop at 8000 bytes and must be valid in the server's
encoding, whatever it is. Format: ``\\x1e<len(id)>:<id><content type>\\x1e<content
encoding>\\x1e<meta>``; a payload without the leading record separator is a
bare task id (as every version has sent).
"""

from __future__ import annotations

from hashlib import blake2b

MARK = "\x1e"
#: Largest inline payload, in bytes; the rest of PostgreSQL's 8000 leaves room for the channel name.
INLINE_MAX = 7000
#: Prefix of per-task channels, so they are recognisable in ``pg_listening_channels()``.
CHANNEL_PREFIX = "cdr_"


def channel(schema: str, task_id: str) -> str:
    """The NOTIFY channel of one task's results: ``cdr_`` and 24 hex digits."""
    digest = blake2b(f"{schema}\x00{task_id}".encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()
    return CHANNEL_PREFIX + digest


def legacy_channel(schema: str) -> str:
    """The one channel every result went to before per-task channels (version 1 workers still send there)."""
    return f"{schema}.result"


def inline(task_id: str, content_type: str, content_encoding: str, meta: bytes) -> str | None:
    """The inline payload for a stored meta, or None when only the id should travel."""
    if len(meta) > INLINE_MAX or not meta.isascii() or b"\x00" in meta or MARK.encode() in meta:
        return None
    payload = f"{MARK}{len(task_id)}:{task_id}{content_type}{MARK}{content_encoding}{MARK}{meta.decode('ascii')}"
    if len(payload) > INLINE_MAX or not payload.isascii():
        return None
    return payload


def parse(payload: str) -> tuple[str, tuple[str, str, bytes] | None]:
    """``(task_id, (content_type, content_encoding, meta) or None)``."""
    if not payload.startswith(MARK):
        return payload, None
    try:
        size, rest = payload[1:].split(":", 1)
        task_id, rest = rest[: int(size)], rest[int(size):]
        content_type, content_encoding, meta = rest.split(MARK, 2)
    except ValueError:  # not ours after all: treat it as an id
        return payload, None
    return task_id, (content_type, content_encoding, meta.encode("ascii"))
