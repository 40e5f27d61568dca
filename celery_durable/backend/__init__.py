"""Celery result backend on PostgreSQL: ``result_backend = "postgresql://user@host/db"``.

Registered through Celery's ``celery.result_backends`` entry point under
``postgresql`` and ``postgres``, so no import is needed in the app module (importing this
module imports the package, which registers the ``postgresql://`` broker scheme too).

Features: every serializer (meta stored as bytea with its content type),
``result_extended``, groups, ``forget``, ``result_expires`` (beat's
``celery.backend_cleanup`` and opportunistic deletion), native chords (an
atomic counter, no ``chord_unlock`` polling), and ``AsyncResult.get()``,
joins and ``get_many`` woken by LISTEN/NOTIFY on the channel of each awaited
task, listened to only while something waits (see :mod:`.listener`).

Options (``result_backend_transport_options``): every key of
:class:`celery_durable.config.Settings` (notably ``schema``,
``pool_max_size``, ``connect_timeout``, ``auto_migrate``,
``maintenance_interval``: seconds between opportunistic expiry runs per
process, ``listen_url``: a direct URL for LISTEN behind PgBouncer), plus
``max_result_bytes`` (largest encoded result, default 64 MiB).
"""

from __future__ import annotations

from .backend import PostgresBackend

__all__ = ["PostgresBackend"]
