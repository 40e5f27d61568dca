"""The integration's settings, read from Django's settings under Celery's ``CELERY_`` namespace.

``CELERY_DURABLE_JOIN_ATOMIC`` (default True): publishes inside ``atomic()``
on the broker's database join the transaction. ``CELERY_DURABLE_DATABASE``
(default None): the Django database alias on the broker's database; None
finds it by comparing server address, port and database name. Schemas are
read as the Celery app reads them: queues and dead letters live in the
``schema`` of ``CELERY_BROKER_TRANSPORT_OPTIONS``, workflows in that of
``CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS`` (each ``celery_durable`` when unset).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from ...config import SCHEMA_DEFAULT, Settings

JOIN_ATOMIC = "CELERY_DURABLE_JOIN_ATOMIC"
JOIN_ATOMIC_DEFAULT = True
DATABASE = "CELERY_DURABLE_DATABASE"
#: The integration's own settings: (name, default, meaning); the docs' settings reference lists them.
DJANGO_SETTINGS = (
    (JOIN_ATOMIC, JOIN_ATOMIC_DEFAULT, "publishes inside `transaction.atomic()` on the broker's database join it; "
                                       "false: they commit on their own"),
    (DATABASE, None, "the Django database alias on the broker's database (the admin pages read through it; "
                     "`default` when none is found); none: found by server address, port and database name"),
)


def join_atomic() -> bool:
    return bool(getattr(settings, JOIN_ATOMIC, JOIN_ATOMIC_DEFAULT))


def database_alias() -> str | None:
    return getattr(settings, DATABASE, None)


def broker_schema() -> str:
    """The broker's schema (queues, messages, dead letters), validated like the transport's.

    With another broker (Redis, RabbitMQ) those tables exist, empty, only in the backend's schema.
    """
    url = str(getattr(settings, "CELERY_BROKER_URL", "") or "")
    if url and not url.startswith(("postgresql", "postgres")):
        return backend_schema()
    return _schema("CELERY_BROKER_TRANSPORT_OPTIONS")


def backend_schema() -> str:
    """The result backend's schema (results, workflows, checkpoints), validated like the backend's."""
    return _schema("CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS")


def _schema(setting: str) -> str:
    options: Any = getattr(settings, setting, None) or {}
    return Settings(schema=options["schema"]).schema if options.get("schema") else SCHEMA_DEFAULT


def celery_app() -> Any:
    """The project's Celery app, also in a web server's request threads.

    Celery's current app is per thread: a thread that did not create the
    project's app gets Celery's fallback app. Then the app is the live app
    that uses this project's schema (several apps may live in one process:
    tests, or a second app for another project).
    """
    from celery import _state

    current = _state.get_current_app()
    if current is not _state.default_app or current.main != "default":
        return current
    others = [app for app in list(_state._get_active_apps()) if app is not current]
    ours = [app for app in others if _uses_schema(app, backend_schema()) or _uses_schema(app, broker_schema())]
    return (ours or others or [current])[0]


def _uses_schema(app: Any, name: str) -> bool:
    """Whether ``app``'s PostgreSQL broker or backend keeps its rows in schema ``name``."""
    conf = app.conf
    for url, options in ((conf.broker_url, conf.broker_transport_options),
                         (conf.result_backend, conf.result_backend_transport_options)):
        if (str(url or "").startswith(("postgresql", "postgres"))
                and (options or {}).get("schema", SCHEMA_DEFAULT) == name):
            return True
    return False
