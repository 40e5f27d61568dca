"""Send a step's message(s), in the caller's transaction when the broker lives there.

Messages are planned (task ids, headers, due times) before they are sent, so
that with a broker outside the database the transaction that decides to send
them can record them in ``sent_step`` first: a crash between that commit and
the send leaves a row the sweep finds.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from ..enqueue import in_transaction
from ..headers import STEP_HEADER
from ..tracing import continued
from .canvas import call_args
from .tree import NOTHING, Node


def step_header(workflow_id: str, path: str, generation: int) -> dict:
    """What a step message carries to find its place (read back by ``StepRef.from_headers``)."""
    return {"workflow_id": workflow_id, "path": path, "generation": generation}


@dataclass
class Message:
    """One task message, ready to send."""

    task: str
    args: tuple
    kwargs: dict
    task_id: str
    path: str
    options: dict = field(default_factory=dict)

    @property
    def eta(self) -> datetime | str | None:
        return self.options.get("eta")

    @property
    def countdown(self) -> float | None:
        countdown = self.options.get("countdown")
        return None if countdown is None else float(countdown)


def plan(app: Any, workflow_id: str, generation: int, entries: list[tuple[Node, Any]]) -> list[Message]:
    """The messages of tasks that start now, each with its input.

    An input (the result of what precedes the task) is prepended to a
    non-immutable task's args, as Celery's canvas does; NOTHING adds nothing.
    Raises Undecodable (naming the task's path) for stored arguments the app does not accept.
    """
    messages = []
    for node, given in entries:
        sig = node.sig
        args, kwargs = call_args(sig, app, node.path)
        if given is not NOTHING and not sig["immutable"]:
            args = [given] + args
        options = dict(sig["options"])
        # The checkpoint row is the step's result; storing it again per task id costs a commit.
        options.setdefault("ignore_result", True)
        options["headers"] = {**(options.get("headers") or {}), STEP_HEADER: step_header(workflow_id, node.path,
                                                                                          generation)}
        messages.append(Message(sig["task"], tuple(args), kwargs, str(uuid.uuid4()), node.path, options))
    return messages


def send(app: Any, messages: list[Message], *, conn: psycopg.Connection | None = None) -> list[str]:
    """Send planned messages; with ``conn`` each is an insert in that connection's open transaction."""
    for message in messages:
        if conn is not None:
            with in_transaction(conn):
                _send_one(app, message)
        else:
            _send_one(app, message)
    return [m.task_id for m in messages]


def _send_one(app: Any, message: Message) -> None:
    with continued(message.options["headers"]):
        app.send_task(message.task, args=message.args, kwargs=message.kwargs, task_id=message.task_id,
                      **message.options)


def stage(store: Any, conn: psycopg.Connection, workflow_id: str, generation: int,
          messages: list[Message]) -> list[Message]:
    """Make ``messages`` part of ``conn``'s open transaction; return what to send once it commits.

    Atomic mode: they are inserted in the transaction (nothing left to send).
    Broker outside the database: they are recorded in ``sent_step`` and
    returned, for ``send`` after the commit.
    """
    if store.atomic:
        send(store.app, messages, conn=conn)
        return []
    if messages:
        etas = [m.eta.isoformat() if isinstance(m.eta, datetime) else m.eta for m in messages]
        conn.execute(store.queries["sent_step_record"], {
            "id": workflow_id, "generation": generation, "paths": [m.path for m in messages],
            "task_ids": [m.task_id for m in messages], "etas": etas, "countdowns": [m.countdown for m in messages],
        })
    return messages
