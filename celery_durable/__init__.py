"""PostgreSQL as Celery's broker, result backend and durable workflow store.

Importing this package registers the ``postgresql://`` and ``postgres://``
broker URL schemes with Kombu (Kombu has no entry point for transports).
"""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES

from . import compat  # noqa: F401  (first: refuses a Celery or Kombu older than the oldest line we support)

TRANSPORT_ALIASES.setdefault("postgresql", "celery_durable.transport:Transport")
TRANSPORT_ALIASES.setdefault("postgres", "celery_durable.transport:Transport")

from .workflow import current_step, durable, durable_chain
from .enqueue import in_transaction
from . import behalf

behalf.install()  # Celery's publishes on a task's behalf never join the caller's transaction
from .transport.pipeline import flush_all as flush_publishes
from . import lifecycle  # noqa: F401  (every Celery signal this package listens to)

__all__ = ["current_step", "durable", "durable_chain", "flush_publishes", "in_transaction"]
__version__ = "0.1.0"
