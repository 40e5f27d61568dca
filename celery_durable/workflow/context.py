"""``current_step()``: where a running task sits in its durable workflow.

``connection`` is a psycopg connection whose transaction commits together
with the step's checkpoint (and, with the broker in the same database, with
the next step's message and the removal of this step's message). It begins
lazily: a step that never touches it holds no transaction while it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import psycopg

from .tree import top_of

_current: ContextVar[StepContext | None] = ContextVar("celery_durable_step", default=None)


@dataclass
class StepContext:
    """The running task of a durable workflow."""

    workflow_id: str
    path: str
    generation: int
    _open: Callable[[], psycopg.Connection] = field(repr=False)
    _conn: psycopg.Connection | None = field(default=None, repr=False)

    @property
    def index(self) -> int:
        """The element of the workflow's root chain this task belongs to (a durable_chain's step)."""
        return top_of(self.path)

    @property
    def member(self) -> int:
        """Its place in that element (a group step's member), -1 when the element is the task itself."""
        parts = self.path.split(".")
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1

    @property
    def idempotency_key(self) -> str:
        """The same on every attempt of this task: pass it to outside APIs so they act once."""
        key = f"{self.workflow_id}:{self.path}"
        if self.generation:
            key += f"@{self.generation}"
        return key

    @property
    def connection(self) -> psycopg.Connection:
        """A connection inside the step's checkpoint transaction; rows written here commit exactly once."""
        if self._conn is None:
            self._conn = self._open()
        return self._conn

    @property
    def in_transaction(self) -> bool:
        return self._conn is not None


def current_step() -> StepContext | None:
    """The durable step this task runs as, or None outside a durable chain."""
    return _current.get()


def _enter(step: StepContext) -> Any:
    return _current.set(step)


def _leave(token: Any) -> None:
    _current.reset(token)
