"""The maintenance of a Celery worker: the result backend's expiry and durable chains' sweep and retention.

On ``worker_ready`` a worker whose result backend is ours attaches the
backend's expiries, finished workflows past ``workflow_retention`` and the
durable sweep (re-sending lost steps) to the maintenance service of the
backend's database, and a worker whose broker is ours the horizon watch
(:mod:`celery_durable.health.watch`) to that of the broker's; the transport
attaches its own cleanup when it starts consuming.
If that fails, the worker says so in its log and runs on without them.
Processes of a worker (the pool's children inherit the flag) leave the
backend's opportunistic expiry to this service.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from .service import Chore, Expiry, for_database

logger = logging.getLogger(__name__)

_in_worker = False
#: (service, owner) pairs attached here, detached at worker shutdown.
_attached: list[tuple[Any, Any]] = []


def in_worker() -> bool:
    """Whether this process is a Celery worker or one of its pool's children."""
    return _in_worker


@signals.worker_init.connect
def _mark_worker(**_: Any) -> None:
    global _in_worker
    _in_worker = True


@signals.worker_ready.connect
def _start(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    if app is None:
        return
    _watch_horizon(app)
    _backend_work(app)


def _watch_horizon(app: Any) -> None:
    """A broker of ours: the horizon watch (health/watch.py) in the maintenance thread of its database."""
    from ..health.watch import HorizonWatch
    from ..transport import Transport

    try:
        client = app.connection_for_write()
        try:
            transport = client.transport
        finally:
            client.release()
    except Exception:  # Kombu itself reports a broker it cannot build
        return
    if not isinstance(transport, Transport) or transport.settings.horizon_check_interval <= 0:
        return
    owner = ("horizon", id(app))
    try:
        service = for_database(transport.conninfo, transport.settings)
        service.attach(owner, chores=[Chore("horizon watch", HorizonWatch(transport.conninfo, transport.settings),
                                            transport.settings.horizon_check_interval)])
    except Exception as exc:
        logger.error("celery_durable: the worker's horizon watch did not start: %s: %s", type(exc).__name__, exc,
                     exc_info=True)
        return
    _attached.append((service, owner))


def _backend_work(app: Any) -> None:
    """A result backend of ours: its expiries, finished workflows' retention, the durable sweep."""
    from ..backend import PostgresBackend

    try:
        backend = app.backend
    except Exception:  # Celery itself reports a backend it cannot build
        return
    if not isinstance(backend, PostgresBackend):
        logger.debug("celery_durable: result backend is not postgresql://: no result expiry or durable sweep here")
        return
    owner = ("worker", id(app))
    try:
        workflow_expiries, chores = _durable_work(app)
        service = for_database(backend.conninfo, backend.settings)
        service.attach(owner, [*backend.expiries(), *workflow_expiries], chores)
    except Exception as exc:
        logger.error("celery_durable: the worker's maintenance (result expiry, durable workflow sweeper) "
                     "did not start: %s: %s", type(exc).__name__, exc, exc_info=True)
        return
    _attached.append((service, owner))


def _durable_work(app: Any) -> tuple[list[Expiry], list[Chore]]:
    """Finished workflows past their retention, and (broker outside the database) the re-sending of lost steps."""
    from ..workflow import sweeper
    from ..workflow.store import Store

    store = Store.for_app(app)
    expiry = Expiry("finished workflows", store.queries["workflow_expire"],
                    {"retention": store.settings.workflow_retention})
    if store.atomic:
        return [expiry], []
    return [expiry], [Chore("durable workflow sweep", lambda: sweeper.resend_lost(store), sweeper.interval(store))]


@signals.worker_shutdown.connect
def _stop(**_: Any) -> None:
    while _attached:
        service, owner = _attached.pop()
        service.detach(owner)
