"""Whether a task may still act on its workflow: run, commit its checkpoint, fail it, replace itself.

One rule, read from the workflow's row as the task finds it, so that every
check of it says the same: a message of another generation (a restart since it
was sent), or of a workflow gone, acts on nothing; a cancelled workflow moves
on no more; a workflow that succeeded moves on only for its link callbacks'
tasks ("side" steps, which may run after the end they hang from); a task whose
path no longer holds a task (it was replaced) is done. The acts differ where
the workflow failed or ended, each for a reason of its own (see :class:`Act`).
The pipelined commit checks the same rule in SQL: ``step_commit``'s ``state``
(workflow/queries.sql) is :func:`standing` for :attr:`Act.COMMIT` being
:attr:`Verdict.GO`; change them together.
"""

from __future__ import annotations

from enum import Enum
from typing import Protocol


class Act(Enum):
    """What the task asks to do; each act reads the rule where the workflow has ended in its own way.

    RUN: before it runs. A failed workflow's task still runs: a late success
    of it may revive the workflow (its checkpoint wins over another attempt's
    failure). The workflow is asked before the node: a stopped run's task
    stops, even where its node was replaced meanwhile, while one of a run that
    goes on hands back its checkpoint if it has one.

    COMMIT: its checkpoint, on the checking path. It commits in every state
    of its generation, so that counts and checkpoints always match; only
    :attr:`Verdict.GO` moves the workflow on (and a FAILED one at this very
    task revives). The node is asked before the workflow: a checkpoint never
    lands on a path that no longer holds its task.

    FAIL: its failure. Only a running workflow fails; a link callback's
    failure does not fail a workflow that succeeded. The node is not read: a
    failure is recorded at the task's path whatever stands there now.

    REPLACE: ``Task.replace``. Grafts in every state of its generation but
    cancelled, which starts nothing more.
    """

    RUN = "run"
    COMMIT = "commit"
    FAIL = "fail"
    REPLACE = "replace"


class Verdict(Enum):
    """What the task found; GO lets the act go on in full, the others say why not (or not all of it)."""

    GO = "go"
    #: No workflow, or another generation: the message belongs to a run that no longer exists.
    SUPERSEDED = "superseded"
    CANCELLED = "cancelled"
    FAILED = "failed"
    #: The workflow succeeded and the task is not a link callback's.
    SUCCEEDED = "succeeded"
    #: The node at the task's path is no longer a task (``Task.replace``), or is gone.
    REPLACED = "replaced"


class Step(Protocol):
    """What the rule reads of the task: its message's generation, and whether it hangs from a link callback."""

    @property
    def generation(self) -> int: ...

    @property
    def side(self) -> bool: ...


class Workflow(Protocol):
    """What the rule reads of the workflow's row."""

    @property
    def status(self) -> str: ...

    @property
    def generation(self) -> int: ...


class WorkflowAndNode(Workflow, Protocol):
    """The workflow's row read with the task's node: its kind, None when there is no node at its path."""

    @property
    def kind(self) -> str | None: ...


#: Where each act goes on in full, by the workflow's status (a side step's in a succeeded workflow apart).
_GOES = {
    Act.RUN: frozenset({"running", "failed"}),
    Act.COMMIT: frozenset({"running"}),
    Act.FAIL: frozenset({"running"}),
    Act.REPLACE: frozenset({"running", "failed", "succeeded"}),
}
_ENDED = {"failed": Verdict.FAILED, "cancelled": Verdict.CANCELLED, "succeeded": Verdict.SUCCEEDED}


def standing(workflow: Workflow | None, step: Step, act: Act) -> Verdict:
    """The workflow's half of the rule (the node unread): what ``act`` of ``step`` may do."""
    if workflow is None or workflow.generation != step.generation:
        return Verdict.SUPERSEDED
    status = workflow.status
    if status in _GOES[act] or (status == "succeeded" and step.side and act is not Act.FAIL):
        return Verdict.GO
    if status not in _ENDED:
        raise ValueError(f"unknown workflow status {status!r}")
    return _ENDED[status]


def verdict(workflow: WorkflowAndNode | None, step: Step, act: Act) -> Verdict:
    """The whole rule: the workflow's half (:func:`standing`) and the task's node, in ``act``'s order."""
    found = standing(workflow, step, act)
    if workflow is None or found is Verdict.SUPERSEDED or workflow.kind == "task":
        return found
    if act is Act.RUN and found in (Verdict.CANCELLED, Verdict.SUCCEEDED):
        return found
    return Verdict.REPLACED
