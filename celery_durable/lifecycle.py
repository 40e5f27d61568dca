"""What this package does in a Celery worker and beat: every Celery signal it listens to, in one place.

============================  ==================  ==========================================================
signal                        process             what happens
============================  ==================  ==========================================================
``celeryd_init``              worker              connections are named as the worker's (``db.appname``)
``worker_init``               worker              the process knows it is a worker (``runtime.in_worker``);
                                                  durable tasks are wrapped (``workflow.runner``)
``worker_process_init``       pool child          connections are named as tasks'; durable tasks wrapped
``worker_ready``              worker              the process services start (below)
``task_received``             worker              a durable step request is held (``workflow.held``)
``task_failure``              worker              a hard time limit fails the durable step it killed
``task_unknown``              worker              a durable step of an unknown task fails its workflow
``worker_process_shutdown``   pool child          pipelined publishes are confirmed, pools closed
``worker_shutdown``           worker              the process services stop, each in turn
``beat_init``                 beat                connections are named as the beat's
============================  ==================  ==========================================================

The process services are the maintenance service's work for this worker (the
result backend's expiries, finished workflows' retention, the durable sweep
when the broker is elsewhere, the xmin horizon watch) and the durable step
pulse. Each is a :class:`Service`, started and stopped here: the pulse's stop
joins its thread; the maintenance work is detached from its service, whose
thread finishes its bounded run and ends with its last owner. The transport's
fetcher and keeper threads belong
to a broker connection, which Celery opens and closes, and start and stop with
it (:mod:`celery_durable.transport.loop`, :mod:`celery_durable.transport.keeper`).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Protocol

from celery import signals

from . import runtime
from .db import appname
from .maintenance.service import Chore, Expiry, Maintenance, for_database
from .transport import pipeline
from .workflow import held, runner

logger = logging.getLogger(__name__)


class Service(Protocol):
    """A process service of a worker: ``stop()`` ends it (see the module's docstring for how each does)."""

    def stop(self) -> None: ...


class Attached:
    """Work attached to a maintenance service (which runs it in its own thread) until stopped."""

    def __init__(self, service: Maintenance, owner: Any) -> None:
        self.service = service
        self.owner = owner

    def stop(self) -> None:
        self.service.detach(self.owner)


#: The process services started on ``worker_ready``, stopped on ``worker_shutdown``.
_services: list[Service] = []
#: The worker's main process (the solo pool sends ``worker_process_init`` from it, too).
_worker_pid: int | None = None


@signals.celeryd_init.connect(weak=False, dispatch_uid="celery_durable.lifecycle.celeryd_init")
def _on_celeryd_init(**_: Any) -> None:
    global _worker_pid
    _worker_pid = os.getpid()
    appname.set_role("worker")


@signals.worker_init.connect(weak=False, dispatch_uid="celery_durable.lifecycle.worker_init")
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    runtime.mark_worker()
    app = getattr(sender, "app", None)
    if app is not None:
        runner.instrument(app)


@signals.worker_process_init.connect(weak=False, dispatch_uid="celery_durable.lifecycle.worker_process_init")
def _on_worker_process_init(**_: Any) -> None:
    from celery import current_app

    if os.getpid() != _worker_pid:
        appname.set_role("task")
    runner.instrument(current_app)


@signals.worker_ready.connect(weak=False, dispatch_uid="celery_durable.lifecycle.worker_ready")
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    if app is None:
        return
    for start in (_horizon_watch, _backend_work, _step_pulse):
        service = start(app)
        if service is not None:
            _services.append(service)


@signals.task_received.connect(weak=False, dispatch_uid="celery_durable.lifecycle.task_received")
def _on_task_received(request: Any = None, **_: Any) -> None:
    held.remember(request)


@signals.task_failure.connect(weak=False, dispatch_uid="celery_durable.lifecycle.task_failure")
def _on_task_failure(sender: Any = None, task_id: str | None = None, exception: BaseException | None = None,
                     einfo: Any = None, **_: Any) -> None:
    held.failed(sender, task_id, exception, einfo)


@signals.task_unknown.connect(weak=False, dispatch_uid="celery_durable.lifecycle.task_unknown")
def _on_task_unknown(sender: Any = None, message: Any = None, name: str | None = None, **_: Any) -> None:
    runner.unknown_task(getattr(sender, "app", None), message, name)


@signals.worker_process_shutdown.connect(weak=False, dispatch_uid="celery_durable.lifecycle.worker_process_shutdown")
def _on_worker_process_shutdown(**_: Any) -> None:
    pipeline.close_all()  # a pool child leaves through os._exit(), past atexit


@signals.worker_shutdown.connect(weak=False, dispatch_uid="celery_durable.lifecycle.worker_shutdown")
def _on_worker_shutdown(**_: Any) -> None:
    while _services:
        service = _services.pop()
        try:
            service.stop()
        except Exception as exc:  # the others still stop
            logger.error("celery_durable: a worker service did not stop cleanly: %s: %s", type(exc).__name__, exc)


@signals.beat_init.connect(weak=False, dispatch_uid="celery_durable.lifecycle.beat_init")
def _on_beat_init(**_: Any) -> None:
    appname.set_role("beat")


# -- the process services ------------------------------------------------------------------------------------------


def _horizon_watch(app: Any) -> Service | None:
    """A broker of ours: the horizon watch (health/watch.py) in the maintenance thread of its database."""
    from .health.watch import HorizonWatch
    from .transport import Transport

    try:
        client = app.connection_for_write()
        try:
            transport = client.transport
        finally:
            client.release()
    except Exception:  # Kombu itself reports a broker it cannot build
        return None
    if not isinstance(transport, Transport) or transport.settings.horizon_check_interval <= 0:
        return None
    owner = ("horizon", id(app))
    try:
        service = for_database(transport.conninfo, transport.settings)
        service.attach(owner, chores=[Chore("horizon watch", HorizonWatch(transport.conninfo, transport.settings),
                                            transport.settings.horizon_check_interval)])
    except Exception as exc:
        logger.error("celery_durable: the worker's horizon watch did not start: %s: %s", type(exc).__name__, exc,
                     exc_info=True)
        return None
    return Attached(service, owner)


def _backend_work(app: Any) -> Service | None:
    """A result backend of ours: its expiries, finished workflows' retention, the durable sweep."""
    from .backend import PostgresBackend

    try:
        backend = app.backend
    except Exception:  # Celery itself reports a backend it cannot build
        return None
    if not isinstance(backend, PostgresBackend):
        logger.debug("celery_durable: result backend is not postgresql://: no result expiry or durable sweep here")
        return None
    owner = ("worker", id(app))
    try:
        workflow_expiries, chores = _durable_work(app)
        service = for_database(backend.conninfo, backend.settings)
        service.attach(owner, [*backend.expiries(), *workflow_expiries], chores)
    except Exception as exc:
        logger.error("celery_durable: the worker's maintenance (result expiry, durable workflow sweeper) "
                     "did not start: %s: %s", type(exc).__name__, exc, exc_info=True)
        return None
    return Attached(service, owner)


def _durable_work(app: Any) -> tuple[list[Expiry], list[Chore]]:
    """Finished workflows past their retention, and (broker outside the database) the re-sending of lost steps."""
    from .workflow import sweeper
    from .workflow.store import Store

    store = Store.for_app(app)
    expiry = Expiry("finished workflows", store.queries["workflow_expire"],
                    {"retention": store.settings.workflow_retention})
    if store.atomic:
        return [expiry], []
    return [expiry], [Chore("durable workflow sweep", lambda: sweeper.resend_lost(store), sweeper.interval(store))]


def _step_pulse(app: Any) -> Service | None:
    """A broker outside the database: the pulse that shows the durable steps this worker holds are alive."""
    from .exceptions import WorkflowError
    from .workflow.store import Store

    try:
        store = Store.for_app(app)
    except WorkflowError:
        return None  # not a durable-chain setup (no postgresql:// backend)
    except Exception:  # noqa: BLE001 - the worker runs on; say why held steps will not show as alive
        logger.exception("durable step pulse not started: steps this worker holds may be re-sent as lost")
        return None
    if store.atomic:
        return None
    pulse = held.Pulse(store)
    pulse.start()
    return pulse
