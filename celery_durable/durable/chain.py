"""``durable_chain(*signatures)``: a chain whose finished steps survive crashes."""

from __future__ import annotations

import uuid
from typing import Any

from celery import current_app
from celery.result import AsyncResult

from ..tracing import carrier
from .dispatch import plan, send, stage
from .runner import instrument
from .steps import Step, encode_steps, flatten
from .store import Store


class WorkflowResult(AsyncResult):
    """The workflow's result handle: ``get()`` returns the last step's result (a list for a group step)."""

    @property
    def workflow_id(self) -> str:
        return self.id


class DurableChain:
    """Ordinary signatures run one after another, each finished step checkpointed in PostgreSQL."""

    def __init__(self, *signatures: Any, app: Any = None, name: str | None = None) -> None:
        if len(signatures) == 1 and isinstance(signatures[0], (list, tuple)):
            signatures = tuple(signatures[0])
        self.signatures = signatures
        self.name = name
        self._app = app

    @property
    def app(self) -> Any:
        if self._app is not None:
            return self._app
        for sig in self.signatures:
            app = getattr(sig, "_app", None) or getattr(sig, "app", None)
            if app is not None:
                return app
        return current_app

    def steps(self) -> list[Step]:
        return flatten(self.signatures, self.app)

    def apply_async(self, args: tuple | None = None, kwargs: dict | None = None, *,
                    workflow_id: str | None = None, **options: Any) -> WorkflowResult:
        """Record the workflow and send its first step; a ``workflow_id`` seen before sends nothing.

        ``args`` are prepended to the first step's arguments (as ``chain``);
        ``options`` (queue, priority, countdown, …) are defaults for every step.
        Raises WorkflowError for unknown tasks, unsupported canvases or a
        result backend that is not postgresql://.
        """
        app = self.app
        instrument(app)
        store = Store.for_app(app)
        steps = self.steps()
        if options:
            for step in steps:
                for sig in step.signatures:
                    sig["options"] = {**options, **sig["options"]}
        trace = carrier()
        if trace:  # every step continues the caller's trace, even when re-sent by an operator
            for step in steps:
                for sig in step.signatures:
                    sig["options"]["headers"] = {**trace, **(sig["options"].get("headers") or {})}
        for sig in steps[0].signatures:
            sig["args"] = list(args or ()) + sig["args"]
            sig["kwargs"] = {**(kwargs or {}), **sig["kwargs"]}
        workflow_id = str(workflow_id or uuid.uuid4())
        staged = []
        with store.connection() as conn:
            with conn.transaction():
                created = conn.execute(store.queries["workflow_insert"], {
                    "id": workflow_id, "name": self.name or steps[0].display, "steps": encode_steps(steps),
                    "result_task_id": workflow_id, "atomic": store.atomic,
                }).fetchone()
                if created:
                    staged = stage(store, conn, workflow_id, 0, plan(workflow_id, steps, 0, None, 0))
        send(app, staged)
        return WorkflowResult(workflow_id, app=app, backend=store.backend)

    def delay(self, *args: Any, **kwargs: Any) -> WorkflowResult:
        return self.apply_async(args, kwargs)

    def __repr__(self) -> str:
        return f"durable_chain({', '.join(repr(s) for s in self.signatures)})"


def durable_chain(*signatures: Any, app: Any = None, name: str | None = None) -> DurableChain:
    """Wrap ordinary signatures (``.s()``/``.si()``, nested chains, groups) into a crash-safe chain."""
    return DurableChain(*signatures, app=app, name=name)
