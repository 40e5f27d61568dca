"""The fencing rule of a workflow's tasks (workflow/fence.py), as a table, with no database.

The table says what each act of a task finds, by the workflow's status, whether
the task's message is of the workflow's generation, whether it is a link
callback's ("side"), and what stands at its path. The exhaustive cases below it
check the rule against the checks it replaced, written out as they were, so
that moving them into one function changed nothing.
"""

from __future__ import annotations

import itertools

import pytest

from celery_durable.workflow.checkpoint import StepRef
from celery_durable.workflow.fence import Act, Verdict, standing, verdict
from celery_durable.workflow.records import LockedWorkflow, StepCheck

GO, SUPERSEDED, CANCELLED, FAILED, SUCCEEDED, REPLACED = (
    Verdict.GO, Verdict.SUPERSEDED, Verdict.CANCELLED, Verdict.FAILED, Verdict.SUCCEEDED, Verdict.REPLACED)

STATUSES = ("running", "succeeded", "failed", "cancelled")
KINDS = ("task", "chain", None)  # None: no node at the task's path
GENERATION = 3


def _step(side: bool = False) -> StepRef:
    return StepRef("wf", "1~0" if side else "1", GENERATION, None)


def _row(status: str, same_generation: bool = True, kind: str | None = "task") -> StepCheck:
    return StepCheck(status=status, generation=GENERATION if same_generation else GENERATION + 1,
                     failed_path=None, result_task_id="wf", kind=kind, then_kind="end")


def _locked(status: str, same_generation: bool = True) -> LockedWorkflow:
    return LockedWorkflow(status=status, current_step=0, generation=GENERATION if same_generation else GENERATION - 1,
                          result_task_id="wf", atomic=True, failed_path=None)


# act, status, same generation, side, node kind -> verdict
TABLE = [
    # Running, this generation, a task at its path: every act goes on.
    (Act.RUN, "running", True, False, "task", GO),
    (Act.COMMIT, "running", True, False, "task", GO),
    (Act.REPLACE, "running", True, False, "task", GO),
    (Act.COMMIT, "running", True, True, "task", GO),
    # Another generation (a restart since the message was sent), whatever else holds.
    (Act.RUN, "running", False, False, "task", SUPERSEDED),
    (Act.COMMIT, "running", False, True, "task", SUPERSEDED),
    (Act.REPLACE, "failed", False, False, "chain", SUPERSEDED),
    (Act.RUN, "cancelled", False, False, None, SUPERSEDED),
    # Cancelled: nothing more runs, moves on or is grafted.
    (Act.RUN, "cancelled", True, False, "task", CANCELLED),
    (Act.RUN, "cancelled", True, True, "task", CANCELLED),
    (Act.COMMIT, "cancelled", True, False, "task", CANCELLED),
    (Act.REPLACE, "cancelled", True, False, "task", CANCELLED),
    # Succeeded: only a link callback's task goes on.
    (Act.RUN, "succeeded", True, False, "task", SUCCEEDED),
    (Act.RUN, "succeeded", True, True, "task", GO),
    (Act.COMMIT, "succeeded", True, False, "task", SUCCEEDED),
    (Act.COMMIT, "succeeded", True, True, "task", GO),
    (Act.REPLACE, "succeeded", True, False, "task", GO),
    (Act.REPLACE, "succeeded", True, True, "task", GO),
    # Failed: the task still runs (a late success revives it) and commits, but does not move it on.
    (Act.RUN, "failed", True, False, "task", GO),
    (Act.COMMIT, "failed", True, False, "task", FAILED),
    (Act.COMMIT, "failed", True, True, "task", FAILED),
    (Act.REPLACE, "failed", True, False, "task", GO),
    # No task at its path any more (Task.replace, or no node): a commit asks the node first ...
    (Act.COMMIT, "running", True, False, "chain", REPLACED),
    (Act.COMMIT, "cancelled", True, False, "chain", REPLACED),
    (Act.COMMIT, "succeeded", True, False, None, REPLACED),
    (Act.COMMIT, "failed", True, False, "group", REPLACED),
    (Act.REPLACE, "cancelled", True, False, "chain", REPLACED),
    (Act.REPLACE, "running", True, False, None, REPLACED),
    # ... a run asks the workflow first.
    (Act.RUN, "running", True, False, "chain", REPLACED),
    (Act.RUN, "failed", True, False, None, REPLACED),
    (Act.RUN, "succeeded", True, True, "chain", REPLACED),
    (Act.RUN, "cancelled", True, False, "chain", CANCELLED),
    (Act.RUN, "succeeded", True, False, "chain", SUCCEEDED),
]


@pytest.mark.parametrize(("act", "status", "same_generation", "side", "kind", "expected"), TABLE)
def test_the_verdict_of_each_case(act, status, same_generation, side, kind, expected):
    assert verdict(_row(status, same_generation, kind), _step(side), act) is expected


@pytest.mark.parametrize("act", list(Act))
def test_a_workflow_gone_supersedes_every_act(act):
    assert verdict(None, _step(), act) is SUPERSEDED
    assert standing(None, _step(), act) is SUPERSEDED


# act, status, same generation, side -> the workflow's half (the node unread)
STANDING = [
    (Act.FAIL, "running", True, False, GO),
    (Act.FAIL, "running", False, False, SUPERSEDED),
    (Act.FAIL, "failed", True, False, FAILED),
    (Act.FAIL, "cancelled", True, False, CANCELLED),
    (Act.FAIL, "succeeded", True, False, SUCCEEDED),
    # A link callback's failure does not fail a workflow that succeeded.
    (Act.FAIL, "succeeded", True, True, SUCCEEDED),
    (Act.COMMIT, "succeeded", True, True, GO),
    (Act.COMMIT, "running", True, False, GO),
    (Act.COMMIT, "failed", True, False, FAILED),
]


@pytest.mark.parametrize(("act", "status", "same_generation", "side", "expected"), STANDING)
def test_the_workflows_half(act, status, same_generation, side, expected):
    assert standing(_locked(status, same_generation), _step(side), act) is expected


def test_an_unknown_status_is_refused():
    with pytest.raises(ValueError, match="unknown workflow status 'paused'"):
        verdict(_row("paused"), _step(), Act.RUN)


def test_the_sql_twin_of_a_pipelined_commit():
    """step_commit's `state`: generation = step's AND (running OR (succeeded AND side)), the node unread."""
    for status, same, side in itertools.product(STATUSES, (True, False), (True, False)):
        sql = same and (status == "running" or (status == "succeeded" and side))
        assert (standing(_locked(status, same), _step(side), Act.COMMIT) is GO) == sql, (status, same, side)


CASES = list(itertools.product(STATUSES, (True, False), (True, False), KINDS))


@pytest.mark.parametrize(("status", "same", "side", "kind"), CASES)
def test_as_the_checks_it_replaced(status, same, side, kind):
    """Every case, against each caller's check as it was written before the rule had one home."""
    row, step = _row(status, same, kind), _step(side)
    superseded = not same

    # before_run: a stopped run's task stops; else a task no longer there stops (after its checkpoint).
    stopped = superseded or status == "cancelled" or (status == "succeeded" and not side)
    run = verdict(row, step, Act.RUN)
    assert (run in (SUPERSEDED, CANCELLED, SUCCEEDED)) == stopped
    assert (run is REPLACED) == (not stopped and kind != "task")
    assert (run is GO) == (not stopped and kind == "task")

    # _commit_checked: superseded first, the node next, then whether it moves the workflow on.
    commit = verdict(row, step, Act.COMMIT)
    assert (commit is SUPERSEDED) == superseded
    assert (commit is REPLACED) == (not superseded and kind != "task")
    if not superseded and kind == "task":
        sending = status == "running" or (status == "succeeded" and side)
        assert (commit is GO) == sending
        assert (commit is FAILED) == (status == "failed")

    # record_failure: only a running workflow of the step's generation fails.
    assert (standing(_locked(status, same), step, Act.FAIL) is GO) == (same and status == "running")

    # commit_replacement: not in another generation, nor cancelled, nor where no task stands.
    replace = superseded or status == "cancelled" or kind != "task"
    assert (verdict(row, step, Act.REPLACE) is not GO) == replace
