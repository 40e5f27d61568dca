"""Which part of Celery a connection serves, shown as its ``application_name`` in ``pg_stat_activity``.

A process has a role (``client`` until Celery's signals say it is a worker,
a worker's pool child or beat, :mod:`celery_durable.lifecycle`; the CLI says ``cli``); a background thread may
name its own component (the fetcher, the keeper). A connection is named
``<base>:<component>``, where ``<base>`` is the URL's ``application_name``
or ``celery_durable``. Components:

- ``worker``: a worker's main process (consuming: declares, replies, maintenance)
- ``task``: a prefork worker's child (results, checkpoints, publishes of tasks)
- ``fetcher``, ``keeper``: a worker's claim/ack thread and lease-renewal thread
- ``listener``: a worker's LISTEN connection (message wake-ups)
- ``result-listener``: the LISTEN connection of a process waiting for results
- ``client``, ``beat``, ``cli``: any other process, celery beat, the ``celery durable`` commands
- ``exporter``: ``celery durable exporter`` (one connection, its reads of the metrics view)
"""

from __future__ import annotations

import threading

from psycopg.conninfo import conninfo_to_dict

BASE_DEFAULT = "celery_durable"
#: PostgreSQL keeps the first 63 bytes of an application_name.
NAME_MAX = 63

#: Every component a connection may name (the doctor counts ``<base>:<component>`` as ours).
COMPONENTS = ("worker", "task", "fetcher", "keeper", "listener", "result-listener", "client", "beat", "cli",
              "exporter")

_process_role = "client"
_thread = threading.local()


def set_role(role: str) -> str:
    """Name this process's part (``cli``, ``beat``…) for connections made from now on; returns the previous one."""
    global _process_role
    previous, _process_role = _process_role, role
    return previous


def set_thread_component(component: str | None) -> None:
    """Name the component the calling thread serves (None: the process's role)."""
    _thread.component = component


def component() -> str:
    return getattr(_thread, "component", None) or _process_role


def application_name(conninfo: str, name: str | None = None) -> str:
    """``<URL's application_name or celery_durable>:<component>``."""
    base = conninfo_to_dict(conninfo).get("application_name") or BASE_DEFAULT
    return f"{base}:{name or component()}"[:NAME_MAX]

