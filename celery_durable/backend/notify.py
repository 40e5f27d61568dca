"""The payload of a result NOTIFY: a task id, or the task id with its whole meta.

A waiter that gets the meta in the notification resolves its result without
a query (one round trip less per ``get()``). Only small ASCII metas travel
so: NOTIFY payloads stop at 8000 bytes and must be valid in the server's
encoding, whatever it is. Format: ``\\x1e<len(id)>:<id><content type>\\x1e<content
encoding>\\x1e<meta>``; a payload without the leading record separator is a
bare task id (as every version has sent).
"""

from __future__ import annotations

MARK = "\x1e"
#: Largest inline payload, in bytes; the rest of PostgreSQL's 8000 leaves room for the channel name.
INLINE_MAX = 7000


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
