"""Celery's publishes on a task's behalf never join the transaction the task's code has open.

``Task.retry``, ``Task.replace`` and ``Task.add_to_chord`` publish from inside
the task's body, often inside ``transaction.atomic()`` or ``in_transaction()``;
then they raise (Retry, Ignore) or the body goes on and may fail, and the
block rolls back while the task's own message is acked (or its chord counted):
a joined message would be lost. Wrapped here, their publishes run under
:func:`celery_durable.enqueue.on_behalf` and commit on their own.

What Celery sends after a task's body returns (the next task of a chain,
``link`` and ``link_error`` callbacks, a chord's body) runs outside every
block the body opened, so it commits on its own as well.

Relies on Celery's ``Task.retry``, ``Task.replace`` and ``Task.add_to_chord``
being the methods those publishes go through (Celery 5.3 to 5.7); a task class
that overrides one without calling ``super()`` publishes as its own code does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from .enqueue import on_behalf

METHODS = ("retry", "replace", "add_to_chord")
_MARK = "_celery_durable_on_behalf"


def install() -> None:
    """Wrap Celery's Task methods that publish on a task's behalf (once per process)."""
    from celery.app.task import Task

    for name in METHODS:
        method = getattr(Task, name)
        if not getattr(method, _MARK, False):
            setattr(Task, name, _wrapped(method))


def _wrapped(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def publishing_on_behalf(*args: Any, **kwargs: Any) -> Any:
        with on_behalf():
            return method(*args, **kwargs)

    setattr(publishing_on_behalf, _MARK, True)
    return publishing_on_behalf
