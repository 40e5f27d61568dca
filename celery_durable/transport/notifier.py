"""LISTEN/NOTIFY wake-ups: a dedicated connection whose socket joins Kombu's event loop.

Publishers' inserts fire a statement trigger that notifies ``<schema>.message``
with ``r<xid>/<priority>:<first id>[,...];<queue>`` (ready now, and where: see
:mod:`.floors`) or ``d<epoch>:<queue>`` (first delayed message);
broadcasts to transient queues travel whole as ``m<bytes>:<queue><message>``;
workers' notes to each other (``w<json>``, :mod:`.roster`) say which of them
takes a wake-up.
An idle worker therefore sends no queries until something arrives; a slow
safety poll (``polling_interval``) covers what no notification announces,
such as a dead worker's lease running out. The connection goes to
``listen_url`` when set (the main URL may lead through PgBouncer, which cannot
carry LISTEN; :mod:`celery_durable.db.listen` refuses such a URL).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import psycopg
from psycopg import sql

from ..config import Settings
from ..db import listen, waiting
from ..db.pool import unavailable
from .roster import Note, parse_note

logger = logging.getLogger(__name__)


def channel_name(schema: str) -> str:
    return f"{schema}.message"


#: Largest message sent inside a NOTIFY payload (PostgreSQL's limit is 8000 bytes with the queue name).
NOTIFY_MESSAGE_MAX = 6000


@dataclass(frozen=True)
class Wakeup:
    """A queue has messages ready now (``at`` None) or at epoch ``at``; or ``message`` came inline.

    ``first_ids`` maps each priority of the ready messages to the lowest new id (None: not said, as an
    older publisher's ``r<queue>``); ``xid`` is the transaction that made them ready.
    """

    queue: str
    at: float | None = None
    message: str | None = None
    first_ids: dict[int, int] | None = None
    xid: int | None = None


_FIRST_IDS = re.compile(r"(\d+)/(-?\d+:\d+(?:,-?\d+:\d+)*)")


def parse(payload: str) -> Wakeup | Note | None:
    if payload.startswith("w"):
        note = parse_note(payload[1:])
        if note is None:
            logger.warning("ignoring malformed worker note %r", payload[:100])
        return note
    if payload.startswith("r"):
        head, sep, queue = payload[1:].partition(";")
        found = _FIRST_IDS.fullmatch(head) if sep else None
        if found:
            pairs = (pair.split(":") for pair in found[2].split(","))
            return Wakeup(queue, first_ids={int(priority): int(first) for priority, first in pairs},
                          xid=int(found[1]))
        return Wakeup(payload[1:])
    if payload.startswith("m"):
        size, sep, rest = payload[1:].partition(":")
        if sep and size.isdigit():
            raw = rest.encode()
            n = int(size)
            return Wakeup(raw[:n].decode(errors="replace"), message=raw[n:].decode(errors="replace"))
    if payload.startswith("d"):
        epoch, sep, queue = payload[1:].partition(":")
        if sep:
            try:
                return Wakeup(queue, float(epoch))
            except ValueError:
                pass
    logger.warning("ignoring malformed notification payload %r", payload[:100])
    return None


class Notifier:
    """Owns the LISTEN connection; raises DatabaseUnavailable when it is lost."""

    def __init__(self, conninfo: str, settings: Settings) -> None:
        self.conninfo = conninfo
        self.channel = channel_name(settings.schema)
        self.conn: psycopg.Connection = listen.connect(conninfo, settings, "listener")
        self.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))

    def fileno(self) -> int:
        return self.conn.pgconn.socket

    def drain(self) -> list[Wakeup | Note]:
        """Read the notifications that have arrived, without blocking."""
        try:
            received = [parse(n.payload) for n in self.conn.notifies(timeout=0)]
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise unavailable(self.conninfo, exc) from exc
        return [w for w in received if w is not None]

    def wait(self, timeout: float) -> list[Wakeup | Note]:
        """Block up to ``timeout`` seconds for notifications (synchronous drain_events)."""
        if timeout > 0:
            try:
                waiting.readable(self.fileno(), timeout)
            except (OSError, ValueError) as exc:
                raise unavailable(self.conninfo, exc) from exc
        return self.drain()

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # closing a broken connection must not mask the original error
            pass
