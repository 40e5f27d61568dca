"""A chain that fails before a group fails the group's members too.

In ``a | failing | group(b, c)`` the group never runs, so its members' results
would stay PENDING and ``GroupResult.get()`` would wait for ever (on Celery's
Redis backend too, Celery issue 6437). Celery's ``mark_as_failure`` already
stores the failure under the ids of the chain's later tasks; this adds the ids
of the members of later groups, so the group's ``get()`` raises the error.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from celery import states

if TYPE_CHECKING:  # a mixin of our result backend: what it uses of the backend is there (Celery has no types)
    from celery.backends.base import BaseBackend as _Backend
else:
    _Backend = object


class ChainFailureMixin(_Backend):
    def mark_as_failure(self, task_id: Any, exc: BaseException, traceback: Any = None, request: Any = None,
                        store_result: bool = True, call_errbacks: bool = True,
                        state: str = states.FAILURE) -> None:
        super().mark_as_failure(task_id, exc, traceback=traceback, request=request, store_result=store_result,
                                call_errbacks=call_errbacks, state=state)
        if not (store_result and request is not None and state in states.PROPAGATE_STATES):
            return
        try:
            later = list(getattr(request, "chain", None) or ())
        except TypeError:
            return
        for signature in later:
            if _kind(signature) == "group":
                for member_id in _task_ids(signature):
                    self.store_result(member_id, exc, state, traceback=traceback)


def _kind(signature: Any) -> str | None:
    return signature.get("subtask_type") if isinstance(signature, dict) else None


def _task_ids(signature: Any) -> Iterator[str]:
    """The frozen task ids inside a group, chain or chord signature (as a message carries it)."""
    if not isinstance(signature, dict):
        return
    kind = _kind(signature)
    kwargs = signature.get("kwargs") or {}
    if kind in ("group", "chain"):
        for member in kwargs.get("tasks") or ():
            yield from _task_ids(member)
    elif kind == "chord":
        yield from _task_ids(kwargs.get("body"))
    else:
        task_id = (signature.get("options") or {}).get("task_id")
        if task_id:
            yield task_id
