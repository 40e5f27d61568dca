"""Send a step's message(s), in the caller's transaction when the broker lives there."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from ..enqueue import in_transaction
from ..headers import STEP_HEADER
from ..tracing import continued
from .steps import Step


def step_header(workflow_id: str, index: int, member: int, generation: int) -> dict:
    return {"w": workflow_id, "s": index, "m": member, "g": generation}


def dispatch(
    app: Any,
    workflow_id: str,
    steps: list[Step],
    index: int,
    previous: Any,
    generation: int,
    *,
    conn: psycopg.Connection | None = None,
    members: set[int] | None = None,
) -> list[str]:
    """Send step ``index`` (all members of a group, or only ``members``); return the task ids.

    ``previous`` (the prior step's result) is prepended to a non-immutable
    signature's args, as ``chain`` does. With ``conn`` every message is an
    insert in that connection's open transaction.
    """
    step = steps[index]
    sent = []
    for number, sig in enumerate(step.signatures):
        member = number if step.kind == "group" else -1
        if members is not None and member not in members:
            continue
        args = tuple(sig["args"])
        if index > 0 and not sig["immutable"]:
            args = (previous,) + args
        options = dict(sig["options"])
        # The checkpoint row is the step's result; storing it again per task id costs a commit.
        options.setdefault("ignore_result", True)
        headers = dict(options.pop("headers", None) or {})
        headers[STEP_HEADER] = step_header(workflow_id, index, member, generation)
        task_id = str(uuid.uuid4())
        send = lambda: app.send_task(  # noqa: E731
            sig["task"], args=args, kwargs=dict(sig["kwargs"]), task_id=task_id, headers=headers, **options
        )
        with continued(headers):
            if conn is not None:
                with in_transaction(conn):
                    send()
            else:
                send()
        sent.append(task_id)
    return sent
