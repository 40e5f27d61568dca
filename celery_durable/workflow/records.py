"""The rows the workflow queries return, one frozen dataclass per shape, read by column name.

Each is built by psycopg from the columns' names (``fetch.execute_as``), so
the code never depends on the order of a SELECT's columns in ``queries.sql``,
and a column renamed or dropped there fails where the row is read instead of
shifting every column after it. Field names are the columns' names; a field
is ``X | None`` where the column may be NULL or a LEFT JOIN may find no row
(``result_task_id`` is nullable in the table, yet every workflow is stored
with one: ``workflow_insert``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class WorkflowRow:
    """``workflow_get``: one workflow (the admin API, the sweep)."""

    id: str
    name: str | None
    status: str
    current_step: int
    generation: int
    result_task_id: str
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    atomic: bool
    failed_path: str | None


@dataclass(frozen=True)
class LockedWorkflow:
    """``workflow_lock``: the workflow's row, locked to change it (cancel, resume, restart, a failure)."""

    status: str
    current_step: int
    generation: int
    result_task_id: str
    atomic: bool
    failed_path: str | None


@dataclass(frozen=True, kw_only=True)
class Follows:
    """A node's ``then_*`` columns: what its completion does (``rows.Then.of`` reads them as one).

    None where the row has no node (a LEFT JOIN found none) or the query reads no ``then_*``.
    """

    then_kind: str | None = None
    then_path: str | None = None
    then_part: int | None = None


@dataclass(frozen=True)
class NodeRow(Follows):
    """A row of the workflow's tree (``node_rows``, ``node_next``; ``node_tree`` reads no ``then_*``)."""

    path: str
    kind: str
    size: int
    links: int
    sig: str | None
    chord: bool
    replaced: bool


@dataclass(frozen=True)
class StepState(Follows):
    """``step_state``: what a task reads before it runs; its checkpoint and node are None when absent."""

    status: str
    generation: int
    content_type: str | None
    result: bytes | None
    result_task_id: str
    kind: str | None


@dataclass(frozen=True)
class StepCheck(Follows):
    """``step_check``: the workflow and the task's node, under the fence, on the checking path."""

    status: str
    generation: int
    failed_path: str | None
    result_task_id: str
    kind: str | None


@dataclass(frozen=True)
class StoredResult:
    """``checkpoint_values``: a finished task's encoded result."""

    path: str
    content_type: str
    result: bytes


@dataclass(frozen=True)
class CheckpointRow:
    """``checkpoint_list``: a finished task, for the admin API."""

    path: str
    task_id: str
    task_name: str | None
    content_type: str
    result: bytes
    attempts: int
    finished_at: datetime


@dataclass(frozen=True)
class FanInRow:
    """``fan_in_list``: how a group is split: the size of one of its parts (part -1: the group's own row)."""

    path: str
    part: int
    size: int


@dataclass(frozen=True)
class Counted:
    """``fan_in_count``: whether the member completed its group, and how many rows counted it (0: no count)."""

    complete: bool
    counted: int


@dataclass(frozen=True)
class LostStep:
    """``sent_step_lost``: a sent task with no sign of life."""

    workflow_id: str
    path: str
