"""Connections for LISTEN: direct sessions that really receive what other sessions NOTIFY.

Behind PgBouncer in transaction mode a LISTEN succeeds but is worthless: the
server session that ran it goes back to PgBouncer's pool, and its
notifications reach another client or nobody. Workers would then wake only on
the safety poll and ``get()`` would wait for its timeout. So a listen
connection that finds a pooler in between (see :func:`.pool.behind_pooler`)
checks once that a NOTIFY sent by another session arrives, and raises
:class:`~celery_durable.exceptions.ListenUnavailable`, naming ``listen_url``,
when it does not. A direct connection skips the check.
"""

from __future__ import annotations

import time
import uuid

import psycopg
from psycopg import sql

from ..config import Settings
from ..exceptions import ListenUnavailable
from . import pool, waiting
from .dsn import describe

PROBE_PAYLOAD = "probe"


def connect(conninfo: str, settings: Settings, component: str) -> psycopg.Connection:
    """A new autocommit connection fit for LISTEN; raises DatabaseUnavailable or ListenUnavailable."""
    conn = pool.connect(conninfo, settings=settings, component=component)
    try:
        if pool.behind_pooler(conn) and not _probe_arrives(conn, conninfo, settings):
            raise ListenUnavailable(
                f"LISTEN over {describe(conninfo)} receives no notifications: a pooler in transaction mode "
                "(PgBouncer pool_mode=transaction) sits in between. Set listen_url in broker_transport_options "
                "and result_backend_transport_options to a direct postgresql:// URL of the database."
            )
    except psycopg.Error as exc:
        conn.close()
        raise pool.unavailable(conninfo, exc) from None
    except BaseException:
        conn.close()
        raise
    return conn


def _probe_arrives(conn: psycopg.Connection, conninfo: str, settings: Settings) -> bool:
    """LISTEN on a private channel, NOTIFY it from another session, wait up to ``connect_timeout`` for it."""
    channel = f"celery_durable_probe_{uuid.uuid4().hex}"
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    with pool.connect(conninfo, settings=settings, component="listener-probe") as sender:
        sender.execute("SELECT pg_notify(%s, %s)", (channel, PROBE_PAYLOAD))
    deadline = time.monotonic() + settings.connect_timeout
    arrived = False
    while not arrived:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        waiting.readable(conn.pgconn.socket, left)
        arrived = any(n.channel == channel for n in conn.notifies(timeout=0))
    conn.execute(sql.SQL("UNLISTEN {}").format(sql.Identifier(channel)))
    return arrived
