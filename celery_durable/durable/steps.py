"""A durable chain's steps: flattening a canvas and storing signatures as JSON.

A step is one task, or a group whose members run in parallel. Nested chains
flatten into steps; a group becomes one step whose result is the list of its
members' results. Steps are stored in ``workflow.steps`` with Kombu's JSON
(datetimes, decimals, UUIDs and bytes survive), so SQL can read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Signature, group, maybe_signature
from celery.canvas import _chain, chord
from kombu.utils.json import dumps, loads

from ..exceptions import WorkflowError


@dataclass
class Step:
    """One step: ``signatures`` has one entry for a task, several for a group."""

    kind: str  # "task" or "group"
    signatures: list[dict]

    @property
    def display(self) -> str:
        names = [s["task"] for s in self.signatures]
        return names[0] if self.kind == "task" else f"group({', '.join(names)})"

    def as_json(self) -> dict:
        return {"kind": self.kind, "task": self.display, "signatures": self.signatures}

    @classmethod
    def from_json(cls, data: dict) -> "Step":
        return cls(data["kind"], list(data["signatures"]))


def split_path(path: str) -> tuple[int, int]:
    """``"2"`` -> (2, -1), a task step; ``"2.1"`` -> (2, 1), member 1 of a group step."""
    index, _, member = path.partition(".")
    return int(index), int(member) if member else -1


def flatten(signatures: tuple, app: Any) -> list[Step]:
    """Steps of a durable chain; raises WorkflowError for unknown tasks or unsupported canvases."""
    steps: list[Step] = []
    for sig in signatures:
        sig = maybe_signature(sig, app=app)
        if isinstance(sig, chord):
            raise WorkflowError("a chord cannot be a durable step: use a group step followed by a task step")
        if isinstance(sig, _chain):
            steps.extend(flatten(tuple(sig.tasks), app))
        elif isinstance(sig, group):
            members = []
            for member in sig.tasks:
                member = maybe_signature(member, app=app)
                if isinstance(member, (group, _chain)):
                    raise WorkflowError("a durable group step's members must be single tasks")
                members.append(_plain(member, app))
            if not members:
                raise WorkflowError("an empty group cannot be a durable step")
            steps.append(Step("group", members))
        elif isinstance(sig, Signature):
            steps.append(Step("task", [_plain(sig, app)]))
        else:
            raise WorkflowError(f"not a signature: {sig!r}")
    if not steps:
        raise WorkflowError("durable_chain needs at least one step")
    return steps


def _plain(sig: Signature, app: Any) -> dict:
    name = sig.task
    if _surely_unknown(app, name):
        raise WorkflowError(f"unknown task {name!r} in durable_chain (not registered with app {app.main!r})")
    options = {k: v for k, v in dict(sig.options).items() if k not in ("task_id", "parent_id", "root_id", "group_id", "chord", "reply_to")}
    return {
        "task": name,
        "args": list(sig.args),
        "kwargs": dict(sig.kwargs),
        "options": options,
        "immutable": bool(sig.immutable),
    }


def _surely_unknown(app: Any, name: str) -> bool:
    """A name without a module, or one whose module this app loaded without that task, is a typo.

    A client that sends tasks by name without importing their modules is left
    alone: the worker is the judge there.
    """
    if not name:
        return True
    if name in app.tasks:
        return False
    module = name.rpartition(".")[0]
    loaded = {task.rpartition(".")[0] for task in app.tasks if not task.startswith("celery.")}
    return not module or module in loaded


def encode_steps(steps: list[Step]) -> str:
    try:
        return dumps([s.as_json() for s in steps])
    except TypeError as exc:
        raise WorkflowError(f"durable_chain arguments must be JSON-serializable: {exc}") from None


def decode_steps(data: Any) -> list[Step]:
    raw = loads(data) if isinstance(data, (str, bytes)) else _revive(data)
    return [Step.from_json(d) for d in raw]


def _revive(data: Any) -> Any:
    """jsonb comes back as plain JSON; re-run Kombu's decoder to restore its typed values."""
    return loads(dumps(data))
