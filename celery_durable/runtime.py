"""What one process shares, in one place: pools, committers, pipelines, listeners, maintenance services,
and whether it is a Celery worker.

Each component asks the process's :class:`Runtime` for its shared object by a
kind and a key (:meth:`Runtime.get`), so one object per process owns them all.
A forked child (Celery's prefork pool) gets a fresh, empty runtime: its
parent's threads did not survive the fork and its parent's sockets belong to
the parent's sessions. The parent's runtime stays referenced by the child's,
never closed or collected, so libpq never sends a Terminate on the parent's
sockets; and the child's lock is new, so a lock another parent thread held at
the fork cannot block it.

What depends on settings is keyed by those settings
(:func:`connection_options`): the broker and the result backend on one URL
share a pool when their connection options agree, and each gets its own when
they differ.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .config import Settings

T = TypeVar("T")


class Runtime:
    """The shared objects of one process, by kind and key."""

    def __init__(self, parent: Runtime | None = None) -> None:
        self.pid = os.getpid()
        #: Held while a shared object is looked up or made (made at most once per kind and key).
        self.lock = threading.RLock()
        #: The runtime of the process this one was forked from: kept, never closed (see the module's docstring).
        self.parent = parent
        self._shared: dict[str, dict[Hashable, Any]] = {}

    def get(self, kind: str, key: Hashable, make: Callable[[], T]) -> T:
        """This process's ``kind`` object for ``key``, made by ``make()`` on first use."""
        found = self._shared.get(kind, {}).get(key)
        if found is not None:
            return found
        with self.lock:
            objects = self._shared.setdefault(kind, {})
            found = objects.get(key)
            if found is None:
                found = objects[key] = make()
            return found

    def find(self, kind: str) -> list[tuple[Hashable, Any]]:
        """Every ``(key, object)`` of ``kind`` made in this process."""
        with self.lock:
            return list(self._shared.get(kind, {}).items())

    def take(self, kind: str) -> list[tuple[Hashable, Any]]:
        """Forget every object of ``kind`` and return them (the caller closes them)."""
        with self.lock:
            return list(self._shared.pop(kind, {}).items())


_current = Runtime()


def current() -> Runtime:
    """This process's runtime (a new one in a forked child)."""
    runtime = _current
    if runtime.pid != os.getpid():  # a fork that ran no Python at-fork hooks
        _after_fork_in_child()
        runtime = _current
    return runtime


def _after_fork_in_child() -> None:
    global _current
    _current = Runtime(parent=_current)


os.register_at_fork(after_in_child=_after_fork_in_child)

#: Set once a Celery worker starts in this process; its pool's children inherit it.
_in_worker = False


def mark_worker() -> None:
    """This process is a Celery worker (``celery_durable.lifecycle``, on ``worker_init``)."""
    global _in_worker
    _in_worker = True


def in_worker() -> bool:
    """Whether this process is a Celery worker or one of its pool's children."""
    return _in_worker


def connection_options(settings: Settings) -> tuple[Any, ...]:
    """The settings a pooled connection depends on: objects that differ in them are kept apart."""
    return settings.pool_max_size, settings.prepared_statements, settings.connect_timeout
