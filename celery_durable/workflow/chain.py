"""``durable(canvas)`` and ``durable_chain(*signatures)``: canvases whose finished tasks survive crashes."""

from __future__ import annotations

import uuid
from typing import Any

from celery import current_app
from celery.result import AsyncResult

from ..exceptions import WorkflowError
from ..tracing import carrier
from . import rows
from .canvas import add_errbacks, build, encode_args, listed, node_of
from .dispatch import plan, send, stage
from .runner import instrument
from .store import Store
from .tree import NOTHING, Tree, enter


class WorkflowResult(AsyncResult):
    """The workflow's result handle: ``get()`` returns what the plain canvas would return."""

    @property
    def workflow_id(self) -> str:
        return self.id


class DurableWorkflow:
    """A canvas of ordinary signatures whose every task is checkpointed in PostgreSQL."""

    def __init__(self, *signatures: Any, app: Any = None, name: str | None = None, chain: bool = True) -> None:
        if len(signatures) == 1 and isinstance(signatures[0], (list, tuple)):
            signatures, chain = tuple(signatures[0]), True
        self.signatures = signatures
        self.name = name
        self._chain = chain
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

    def tree(self) -> Tree:
        """The canvas as the tree the workflow row stores; raises WorkflowError for what cannot be durable."""
        return build(self.signatures, self.app, chain=self._chain)

    def apply_async(self, args: tuple | None = None, kwargs: dict | None = None, *,
                    workflow_id: str | None = None, **options: Any) -> WorkflowResult:
        """Record the workflow and send its first tasks; a ``workflow_id`` seen before sends nothing.

        ``args``/``kwargs`` go to the first tasks, as for the plain canvas
        (every member of a group at the start); ``options`` (queue, priority,
        countdown, …) are defaults for every task. Raises WorkflowError for
        unknown tasks, arguments the task serializer cannot encode, or a result
        backend that is not postgresql://.
        """
        app = self.app
        instrument(app)
        store = Store.for_app(app)
        tree = self.tree()
        errbacks = options.pop("link_error", None)
        if errbacks:  # an error callback on the whole: on each task, so it fires for the failure that decides
            add_errbacks(tree.root, listed(errbacks))
        links = options.pop("link", None)
        if links:
            last = tree.root.children[-1]
            if last.kind != "task":
                raise WorkflowError("link= on a durable workflow calls back from its last task, and this one ends "
                                    f"with a {last.kind}: link a task, or wait on the result")
            last.links += [node_of(link, app) for link in listed(links)]
            tree = Tree(tree.root)
        trace = carrier()
        for task in tree.tasks():
            sig = task.sig
            assert sig is not None  # a task's node carries its signature
            sig["options"] = {**options, **sig["options"]}
            if trace:  # every task continues the caller's trace, even when re-sent by an operator
                sig["options"]["headers"] = {**trace, **(sig["options"].get("headers") or {})}
        entries = enter(tree.root, NOTHING)
        for task, _given in entries:
            sig = task.sig
            assert sig is not None
            if not sig["immutable"]:
                sig["args"] = list(args or ()) + sig["args"]
                sig["kwargs"] = {**(kwargs or {}), **sig["kwargs"]}
        nodes = [tree.root, *tree.nodes.values()]
        encode_args(nodes, app)
        given = workflow_id is not None
        workflow_id = str(workflow_id or uuid.uuid4())
        stored = rows.params(workflow_id, nodes)
        staged = []
        # One round trip: the transaction is pipelined; a given id (which may exist) first asks whether it is new.
        with store.connection() as conn, conn.pipeline(), conn.transaction():
            created = conn.execute(store.queries["workflow_insert"], {
                "id": workflow_id, "name": self.name or tree.root.children[0].name,
                "result_task_id": workflow_id, "atomic": store.atomic,
            })
            if not given or created.fetchone():
                rows.insert(conn, store.queries, stored)
                staged = stage(store, conn, workflow_id, 0, plan(app, workflow_id, 0, entries))
        send(app, staged)
        return WorkflowResult(workflow_id, app=app, backend=store.backend)

    def delay(self, *args: Any, **kwargs: Any) -> WorkflowResult:
        return self.apply_async(args, kwargs)

    def __repr__(self) -> str:
        inner = ", ".join(repr(s) for s in self.signatures)
        return f"durable_chain({inner})" if self._chain else f"durable({inner})"


#: The chain form's class, under its earlier name.
DurableChain = DurableWorkflow


def durable(canvas: Any, *, app: Any = None, name: str | None = None) -> DurableWorkflow:
    """Make any canvas durable: a signature, chain, group or chord, nested any way (``.map``/``.chunks`` too).

    Every task is checkpointed; ``apply_async()`` returns a handle whose
    ``get()`` gives what the plain canvas gives.
    """
    return DurableWorkflow(canvas, app=app, name=name, chain=False)


def durable_chain(*signatures: Any, app: Any = None, name: str | None = None) -> DurableWorkflow:
    """Wrap ordinary signatures (``.s()``/``.si()``, and any canvas) into a crash-safe chain."""
    return DurableWorkflow(*signatures, app=app, name=name)
