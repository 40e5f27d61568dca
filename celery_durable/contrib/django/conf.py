"""The integration's settings, read from Django's settings under Celery's ``CELERY_`` namespace.

``CELERY_DURABLE_JOIN_ATOMIC`` (default True): publishes inside ``atomic()``
on the broker's database join the transaction. ``CELERY_DURABLE_DATABASE``
(default None): the Django database alias on the broker's database; None
finds it by comparing server address, port and database name. The schema
is the ``schema`` of ``CELERY_BROKER_TRANSPORT_OPTIONS`` (or of
``CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS``), as the Celery app reads it.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from ...config import SCHEMA_DEFAULT, Settings

JOIN_ATOMIC_DEFAULT = True


def join_atomic() -> bool:
    return bool(getattr(settings, "CELERY_DURABLE_JOIN_ATOMIC", JOIN_ATOMIC_DEFAULT))


def database_alias() -> str | None:
    return getattr(settings, "CELERY_DURABLE_DATABASE", None)


def schema() -> str:
    """The configured schema, validated like the transport's (a plain lower-case identifier)."""
    for name in ("CELERY_BROKER_TRANSPORT_OPTIONS", "CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS"):
        options: Any = getattr(settings, name, None) or {}
        if options.get("schema"):
            return Settings(schema=options["schema"]).schema
    return SCHEMA_DEFAULT


def celery_app() -> Any:
    """The project's Celery app (the current one: Django projects create it before apps load)."""
    from celery import current_app

    return current_app._get_current_object()
