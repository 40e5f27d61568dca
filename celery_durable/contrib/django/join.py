"""Publishes inside ``transaction.atomic()`` join Django's transaction on the broker's database.

Registered with :func:`celery_durable.enqueue.add_finder`: for each publish
to our broker outside an explicit ``in_transaction()``, the finder looks for
a Django connection that is inside an atomic block and reaches the same
server and database as the broker, and hands its psycopg connection to the
transport, which then inserts the message there (inside the current
savepoint). Outside atomic blocks nothing changes. Only the publishes the
user's code makes join: Celery's on a task's behalf (retry, replace,
add_to_chord) are never offered a connection (:mod:`celery_durable.behalf`).
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any

from django.db import connections

from ...db import pool
from . import conf

logger = logging.getLogger(__name__)

_targets: dict[str, tuple] = {}
_targets_lock = threading.Lock()


def _where(info: Any) -> tuple:
    """(address, port, database) of a live libpq connection: the same server under any host spelling."""
    address = getattr(info, "hostaddr", "") or info.host
    if address in ("::1", "localhost"):
        address = "127.0.0.1"
    return (address, int(info.port), info.dbname)


def _broker_target(conninfo: str) -> tuple:
    """Where the broker's conninfo leads, resolved once per process by connecting."""
    found = _targets.get(conninfo)
    if found is None:
        with _targets_lock:
            found = _targets.get(conninfo)
            if found is None:
                with pool.connect(conninfo) as conn:
                    found = _where(conn.info)
                _targets[conninfo] = found
    return found


def find_connection(conninfo: str) -> Any:
    """The psycopg connection of a Django atomic block on the broker's database, or None."""
    if not conf.join_atomic():
        return None
    alias = conf.database_alias()
    candidates = [connections[alias]] if alias else connections.all(initialized_only=True)
    for wrapper in candidates:
        if not wrapper.in_atomic_block or wrapper.vendor != "postgresql" or wrapper.connection is None:
            continue
        if alias or _where(wrapper.connection.info) == _broker_target(conninfo):
            return wrapper.connection
    return None


def transactional_on_commit(original):
    """Wrap ``DjangoTask.delay_on_commit``: inside an atomic block of the broker's database, publish now."""
    send = "delay" if original.__name__ == "delay_on_commit" else "apply_async"

    @functools.wraps(original)
    def on_commit(self, *args: Any, **kwargs: Any) -> None:
        conninfo = _broker_conninfo(self.app)
        if conninfo is not None and find_connection(conninfo) is not None:
            getattr(self, send)(*args, **kwargs)  # joins the open transaction
            return None
        return original(self, *args, **kwargs)

    on_commit.celery_durable = True
    return on_commit


def _broker_conninfo(app: Any) -> str | None:
    """The conninfo of the app's broker when it is our transport (cached on the app), else None."""
    try:
        return app._celery_durable_broker
    except AttributeError:
        pass
    from ...transport import Transport

    with app.connection_for_write() as connection:
        transport = connection.transport
        conninfo = transport.conninfo if isinstance(transport, Transport) else None
    app._celery_durable_broker = conninfo
    return conninfo


def install() -> None:
    """Register the finder and make ``delay_on_commit``/``apply_async_on_commit`` transactional."""
    from ... import enqueue
    from ...compat import django_task

    enqueue.add_finder(find_connection)
    DjangoTask = django_task()
    if DjangoTask is None:  # Celery 5.3 has no delay_on_commit
        return
    for name in ("delay_on_commit", "apply_async_on_commit"):
        method = getattr(DjangoTask, name, None)
        if method is not None and not getattr(method, "celery_durable", False):
            setattr(DjangoTask, name, transactional_on_commit(method))
