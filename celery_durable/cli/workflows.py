"""``workflows``: list, show, cancel, resume, restart and find stalled durable workflows."""

from __future__ import annotations

import json
from typing import Any

import click

from .group import durable
from .output import _cell, emit, json_option, table
from .schema import _checked
from .target import WORKFLOW_LIMIT_DEFAULT, CommandError, Target, with_target

WORKFLOW_COLUMNS = ("id", "name", "status", "current_step", "step_count", "current_task", "age", "updated_at", "error")


def _admin() -> Any:
    # Imported on use: `celery` loads this package for every command it runs.
    from .. import workflows

    return workflows


def _call(name: str, *args: Any, **kwargs: Any) -> Any:
    return getattr(_admin(), name)(*args, **kwargs)


def _require_schema(target: Target) -> None:
    """The admin API would create a missing schema on first use; a CLI read must not."""
    with target.connect() as conn:
        _checked(conn, target)


def _workflow_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no workflows"
    columns = [c for c in WORKFLOW_COLUMNS if any(c in row for row in rows)] or list(rows[0])
    return table(columns, [[row.get(c) for c in columns] for row in rows])


@durable.group("workflows")
def workflows_group() -> None:
    """Durable workflows: list, show (as a tree), cancel, resume, restart from a task, stalled."""


@workflows_group.command("list")
@click.option("--status", type=click.Choice(["running", "succeeded", "failed", "cancelled"]))
@click.option("--limit", default=WORKFLOW_LIMIT_DEFAULT, show_default=True)
@json_option
@with_target
def workflows_list(target: Target, status: str | None, limit: int, as_json: bool) -> None:
    """Most recent workflows, newest first."""
    _require_schema(target)
    rows = _call("list_workflows", target.url(), target.schema, status=status, limit=limit)
    emit(as_json, rows, lambda: _workflow_table(rows))


@workflows_group.command("stalled")
@click.option("--limit", default=WORKFLOW_LIMIT_DEFAULT, show_default=True)
@json_option
@with_target
def workflows_stalled(target: Target, limit: int, as_json: bool) -> None:
    """Running workflows with no progress for a while (the `stalled` column of the workflows view)."""
    _require_schema(target)
    rows = _call("list_workflows", target.url(), target.schema, status="stalled", limit=limit)
    emit(as_json, rows, lambda: _workflow_table(rows))


@workflows_group.command("show")
@click.argument("workflow_id")
@json_option
@with_target
def workflows_show(target: Target, workflow_id: str, as_json: bool) -> None:
    """One workflow: its tasks as a tree (path, state, attempts), and its checkpoints."""
    _require_schema(target)
    found = _call("get_workflow", target.url(), target.schema, workflow_id)
    if not found:
        raise CommandError(f"no workflow {workflow_id!r} in schema {target.schema!r} of {target.describe()}")
    emit(as_json, found, lambda: _describe_workflow(found))


def _describe_workflow(found: dict[str, Any]) -> str:
    lines = []
    tree = found.get("tree")
    nested = {k: v for k, v in found.items()
              if k != "tree" and isinstance(v, list) and v and all(isinstance(i, dict) for i in v)}
    if tree:
        nested.pop("steps", None)
    width = max([len(k) for k in found if k not in nested and k != "tree"] + [1])
    for key, value in found.items():
        if key not in nested and key != "tree":
            lines.append(f"{key.ljust(width)}  {_cell(value)}")
    if tree:
        rows: list[list[Any]] = []
        _tree_rows(tree, 0, rows)
        lines += ["", "tree:", table(["PATH", "TASK", "STATE", "ATTEMPTS"], rows)]
    for key, items in nested.items():
        columns = list(dict.fromkeys(c for item in items for c in item))
        lines += ["", f"{key}:", table(columns, [[item.get(c) for c in columns] for item in items])]
    return "\n".join(lines)


def _tree_rows(nodes: list[dict[str, Any]], depth: int, rows: list[list[Any]]) -> None:
    """One row per node, its name indented by depth: the canvas drawn as a tree."""
    for node in nodes:
        label = node["task"] if node["kind"] == "task" else f"{node['kind']} ({len(node['children'])})"
        if "link_of" in node:
            label = f"link: {label}"
        rows.append([node["path"], "  " * depth + label, node["state"], node.get("attempts", "")])
        _tree_rows(node.get("children", []) + node.get("links", []), depth + 1, rows)


@workflows_group.command("cancel")
@click.argument("workflow_id")
@json_option
@with_target
def workflows_cancel(target: Target, workflow_id: str, as_json: bool) -> None:
    """Stop a workflow: no further step is sent."""
    _require_schema(target)
    if target.app is not None:
        result = _call("cancel_workflow", target.app, workflow_id)
    else:
        result = _call("cancel_workflow", target.url(), workflow_id, schema=target.schema)
    if result is False:
        emit(as_json, {"workflow_id": workflow_id, "action": "none", "result": False},
             lambda: f"workflow {workflow_id} had already ended; nothing to cancel")
        return
    _done(as_json, "cancelled", workflow_id, result)


@workflows_group.command("resume")
@click.argument("workflow_id")
@json_option
@with_target
def workflows_resume(target: Target, workflow_id: str, as_json: bool) -> None:
    """Send again the unfinished tasks of a stalled, failed or cancelled workflow that have no live attempt."""
    _require_schema(target)
    result = _call("resume_workflow", target.celery_app(), workflow_id)
    _done(as_json, "resumed", workflow_id, result)


@workflows_group.command("restart")
@click.argument("workflow_id")
@click.option("--from-step", "from_step", required=True, metavar="PATH",
              help="The task or node to run again, by its path in the tree (2.1.0), or a root index (2).")
@click.option("--args", "args_json", metavar="JSON", help="New positional arguments for that task, as a JSON list.")
@json_option
@with_target
def workflows_restart(target: Target, workflow_id: str, from_step: str, args_json: str | None, as_json: bool) -> None:
    """Run a workflow again from a task (earlier checkpoints and parallel branches are kept)."""
    args = None
    if args_json is not None:
        try:
            args = json.loads(args_json)
        except ValueError as exc:
            raise CommandError(f"--args is not valid JSON: {exc}") from None
        if not isinstance(args, list):
            args = [args]
    if not all(part.isdigit() for part in from_step.split(".")):
        raise CommandError(f"--from-step takes a path such as 2.1.0, not {from_step!r}")
    step: int | str = int(from_step) if from_step.isdigit() else from_step
    _require_schema(target)
    result = _call("restart_workflow", target.celery_app(), workflow_id, step, args=args)
    _done(as_json, f"restarted from step {from_step}", workflow_id, result)


def _done(as_json: bool, verb: str, workflow_id: str, result: Any) -> None:
    data = {"workflow_id": workflow_id, "action": verb}
    if result is not None:
        data["result"] = result
    extra = f": {_cell(result)}" if result not in (None, True) else ""
    emit(as_json, data, lambda: f"workflow {workflow_id} {verb}{extra}")
