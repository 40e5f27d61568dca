"""The workflow's tree stored one row per node, and what each node's completion does.

``workflow_node`` holds every node of a tree by path (the root chain at
``""``): a task with its signature, a chain or group with its size. Each row
also says what the node's completion does (:class:`Then`), worked out once
when the tree is stored: enter the next element of its chain, count in its
group's ``fan_in``, end the workflow, or nothing (a link's branch ends). So a
finishing task reads its own row and the rows of what it starts, never the
whole tree, whatever the workflow's size; whole trees are read only by
operators' actions (show, resume, restart).

A group of ``n`` members counts in ``parts(n)`` parts (member ``i`` in part
``i % parts(n)``) and in its own row (part -1), which counts the filled parts:
members of different parts commit side by side, and only a member that fills
its part meets the others in the group's own row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from math import isqrt
from typing import Any

import psycopg
from kombu.utils.json import dumps, loads

from ..db import fetch
from ..exceptions import WorkflowError
from .records import FanInRow, Follows, NodeRow, StoredResult
from .tree import Node, Tree, child_path, path_key, split


def parts(size: int) -> int:
    """How many parts a group of ``size`` members counts in; 1: only its own row (a small group)."""
    return isqrt(size) if size >= 8 else 1


@dataclass(frozen=True)
class Then:
    """What a node's completion does: ``enter`` the node ``path``, ``count`` in the group ``path``'s
    ``part``, ``end`` the workflow, or ``none`` (the end of a link's branch)."""

    kind: str
    path: str | None = None
    part: int | None = None

    @classmethod
    def of(cls, row: Follows) -> Then:
        """What the node read in ``row`` does (its ``then_*`` columns); the row must have its node."""
        if row.then_kind is None:
            raise WorkflowError("a row without its node's then_* columns says nothing of what follows it")
        return cls(row.then_kind, row.then_path, row.then_part)

    @property
    def root_element(self) -> int | None:
        """The root chain's element it enters (the workflow's current step then), or None."""
        if self.kind != "enter" or "." in self.path or "~" in self.path:
            return None
        return int(self.path)


def then_of(node: Node, top: Node | None = None, top_then: Then | None = None) -> Then:
    """What ``node``'s completion does; ``top``, a subtree stored into a tree already there, does ``top_then``."""
    while node is not top:
        if node.owner is not None:
            return Then("none")
        parent = node.parent
        if parent is None:
            return Then("end")
        if parent.kind == "group":
            count = parts(len(parent.children))
            return Then("count", parent.path, node.index % count if count > 1 else -1)
        if node.index + 1 < len(parent.children):
            return Then("enter", parent.children[node.index + 1].path)
        node = parent
    return top_then


def sig_json(sig: dict) -> str:
    """A task's stored signature (arguments already encoded by its serializer); raises WorkflowError."""
    try:
        return dumps(sig)
    except TypeError as exc:
        raise WorkflowError(f"durable workflow options must be JSON-serializable: {exc}") from None


def sig_of(text: str | None) -> dict | None:
    """A stored signature, read back with Kombu's JSON (as it was written)."""
    return None if text is None else dict(loads(text))


def params(workflow_id: str, nodes: Iterable[Node], then: Callable[[Node], Then] = then_of) -> tuple[dict, dict]:
    """The parameters of ``node_insert`` and ``fan_in_insert`` that store these nodes; raises WorkflowError."""
    cols: dict[str, list] = {k: [] for k in ("paths", "kinds", "sizes", "links", "sigs", "names", "chords",
                                             "replaced", "then_kinds", "then_paths", "then_parts")}
    counts: dict[str, list] = {"paths": [], "parts": [], "sizes": []}
    for node in nodes:
        done = then(node)
        for key, value in (("paths", node.path), ("kinds", node.kind), ("sizes", len(node.children)),
                           ("links", len(node.links)), ("sigs", sig_json(node.sig) if node.kind == "task" else None),
                           ("names", None if node.kind == "task" else node.name), ("chords", node.chord),
                           ("replaced", node.replaced), ("then_kinds", done.kind), ("then_paths", done.path),
                           ("then_parts", done.part)):
            cols[key].append(value)
        if node.kind == "group":
            size = len(node.children)
            count = parts(size)
            rows = ([(-1, size)] if count == 1
                    else [(-1, count)] + [(p, len(range(p, size, count))) for p in range(count)])
            for part, members in rows:
                counts["paths"].append(node.path)
                counts["parts"].append(part)
                counts["sizes"].append(members)
    return {"id": workflow_id, **cols}, {"id": workflow_id, **counts}


def insert(conn: psycopg.Connection, queries: dict[str, str], stored: tuple[dict, dict]) -> None:
    """Insert nodes' rows and their groups' counts (``params``) in ``conn``'s transaction."""
    node_params, count_params = stored
    conn.execute(queries["node_insert"], node_params)
    if count_params["paths"]:
        conn.execute(queries["fan_in_insert"], count_params)


def build(rows: Iterable[NodeRow]) -> dict[str, Node]:
    """Nodes from their rows, each put in its parent when that is among them."""
    nodes: dict[str, Node] = {}
    for row in rows:
        nodes[row.path] = Node(row.kind, [None] * row.size, sig_of(row.sig), row.chord, row.replaced,
                               [None] * row.links, row.path)
    for path, node in nodes.items():
        if path:
            parent, separator, index = split(path)
            if parent in nodes:
                (nodes[parent].children if separator == "." else nodes[parent].links)[index] = node
    return nodes


def load_tree(conn: psycopg.Connection, queries: dict[str, str], workflow_id: str) -> Tree:
    """The whole tree of a workflow (operators' actions); raises WorkflowError when rows are missing."""
    nodes = build(fetch.execute_as(conn, NodeRow, queries["node_tree"], {"id": workflow_id}))
    if "" not in nodes or any(n is None for node in nodes.values() for n in node.children + node.links):
        raise WorkflowError(f"workflow {workflow_id} has no complete tree stored")
    return Tree(nodes[""])


def starts(conn: psycopg.Connection, queries: dict[str, str], workflow_id: str, found: list[NodeRow]) -> list[Node]:
    """The tasks that start when these nodes receive their input, in tree order: a task itself, a
    chain's first element, every member of a group; each level below read in one query."""
    tasks: list[Node] = []
    while found:
        below: list[str] = []
        for row in found:
            if row.kind == "task":
                tasks.append(Node("task", sig=sig_of(row.sig), path=row.path))
            elif row.kind == "chain":
                below.append(child_path(row.path, 0))
            else:
                below += [child_path(row.path, i) for i in range(row.size)]
        found = read(conn, queries, workflow_id, below)
    return sorted(tasks, key=lambda node: path_key(node.path))


def subtree(conn: psycopg.Connection, queries: dict[str, str], workflow_id: str, paths: list[str]) -> list[NodeRow]:
    """The rows of these nodes and of everything under them, link callbacks included."""
    found: list[NodeRow] = []
    level = paths
    while level:
        rows = read(conn, queries, workflow_id, level)
        found += rows
        level = [p for row in rows
                 for p in [child_path(row.path, i) for i in range(row.size)]
                 + [f"{row.path}~{i}" for i in range(row.links)]]
    return found


def value(conn: psycopg.Connection, queries: dict[str, str], workflow_id: str, top: str,
          decode: Callable[[str, str, bytes], Any]) -> tuple[Any, Then]:
    """A completed node's value and what its completion does. Its value comes from its tasks' results
    (a chain's last element's, each member's of a group, in member order), read once, each level of
    nodes in one query; ``decode(path, content_type, result)`` reads a result."""
    shape: dict[str, tuple[str, int]] = {}
    then = None
    level = [top]
    while level:
        below: list[str] = []
        for row in read(conn, queries, workflow_id, level):
            shape[row.path] = (row.kind, row.size)
            if row.path == top:
                then = Then.of(row)
            if row.kind == "chain":
                below.append(child_path(row.path, row.size - 1))
            elif row.kind == "group":
                below += [child_path(row.path, i) for i in range(row.size)]
        level = below
    tasks = [path for path, (kind, _size) in shape.items() if kind == "task"]
    found = fetch.execute_as(conn, StoredResult, queries["checkpoint_values"], {"id": workflow_id, "paths": tasks})
    results = {r.path: decode(r.path, r.content_type, r.result) for r in found}

    def of(path: str) -> Any:
        if path not in shape:
            raise WorkflowError(f"workflow {workflow_id} has no node {path} under {top}: its tree is damaged")
        kind, size = shape[path]
        if kind == "task":
            if path not in results:
                raise WorkflowError(f"task {path} has no checkpoint, yet the node {top} it completes is complete")
            return results[path]
        if kind == "chain":
            return of(child_path(path, size - 1))
        return [of(child_path(path, i)) for i in range(size)]

    return of(top), then


def read(conn: psycopg.Connection, queries: dict[str, str], workflow_id: str, paths: list[str]) -> list[NodeRow]:
    """The rows of these nodes (``node_rows``), in one query; none read for no paths."""
    if not paths:
        return []
    return fetch.execute_as(conn, NodeRow, queries["node_rows"], {"id": workflow_id, "paths": paths}).fetchall()


def counts(tree: Tree, done: set[str], stored: Iterable[FanInRow]) -> dict[str, list]:
    """``fan_in_set`` parameters: every group's counts from the tasks that finished (after a restart).

    ``stored``: the workflow's fan_in rows, which say how a group is split.
    """
    split_in: dict[str, dict[int, int]] = {}
    for row in stored:
        split_in.setdefault(row.path, {})[row.part] = row.size
    out: dict[str, list] = {"paths": [], "parts": [], "done": []}

    def put(path: str, part: int, value: int) -> None:
        out["paths"].append(path)
        out["parts"].append(part)
        out["done"].append(value)

    for path, sizes in split_in.items():
        group = tree.nodes.get(path)
        if group is None or group.kind != "group":
            continue
        finished = [member.complete(done) for member in group.children]
        count = len(sizes) - 1
        if count < 1:
            put(path, -1, sum(finished))
            continue
        filled = 0
        for part in range(count):
            members = sum(finished[part::count])
            put(path, part, members)
            filled += members == sizes[part]
        put(path, -1, filled)
    return out
