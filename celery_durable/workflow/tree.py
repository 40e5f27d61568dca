"""A durable canvas as a tree of tasks, chains and groups, each node addressed by its path.

The root is always a chain: ``durable(group(...))`` is a chain of one group.
A path names a node from the root: ``"2"`` is the root's third element,
``"2.1.0"`` the first element of the second member of that element. Values
flow as in Celery: a chain hands each element's result to the next one
(prepended to a task's args unless it is immutable) and gives its last
result; a group hands its input to every member and gives the list of their
results. A chord is the chain of its header group and its body. As Celery
does, nested chains flatten into their chain, groups directly inside a group
flatten into it, and a one-member group inside a chain is that member.

A task's ``link`` callbacks hang on it as side branches (paths ``"2.1~0"``,
``"2.1~1.0"``…): each receives the task's result when it finishes, nothing
waits for them, and the workflow's result does not include theirs.

Stored one row per node (``workflow/rows.py``); operators' actions read
whole trees, a running task only the rows it needs, by path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import WorkflowError

#: The input of a node that follows nothing (the first element of the root chain).
NOTHING: Any = type("Nothing", (), {"__repr__": lambda self: "NOTHING"})()


@dataclass(eq=False)
class Node:
    """One node: a task (``sig`` set), or a chain or group of ``children``."""

    kind: str
    children: list[Node] = field(default_factory=list)
    sig: dict | None = None
    chord: bool = False
    #: Put in a task's place by Task.replace(): it starts from nothing, not from what preceded the task.
    replaced: bool = False
    links: list[Node] = field(default_factory=list)
    path: str = ""
    parent: Node | None = field(default=None, repr=False)
    #: The task a link callback hangs on (set on the link's own node).
    owner: Node | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """What the node shows: a task's name, or its kind with its members."""
        if self.kind == "task":
            return self.sig["task"]
        inner = ", ".join(child.name for child in self.children[:3])
        if len(self.children) > 3:
            inner += f", … {len(self.children) - 3} more"
        if self.chord:
            return f"chord({self.children[0].name}, {self.children[1].name})"
        return f"{self.kind}({inner})"

    @property
    def index(self) -> int:
        """The node's place in its parent (a link's place among its task's links)."""
        last = self.path.rpartition(".")[2]
        return int(last.partition("~")[2] if self.owner is not None else last)

    def tasks(self) -> Iterator[Node]:
        """Every task under this node (itself for a task) and its link callbacks, in path order."""
        if self.kind == "task":
            yield self
            for link in self.links:
                yield from link.tasks()
        for child in self.children:
            yield from child.tasks()

    def terminals(self) -> list[Node]:
        """The tasks whose checkpoints complete this node: then its value is known."""
        if self.kind == "task":
            return [self]
        if self.kind == "chain":
            return self.children[-1].terminals()
        return [t for child in self.children for t in child.terminals()]

    def value(self, values: dict[str, Any]) -> Any:
        """The node's result from its terminal tasks' results (``values`` by path)."""
        if self.kind == "task":
            return values[self.path]
        if self.kind == "chain":
            return self.children[-1].value(values)
        return [child.value(values) for child in self.children]

    def complete(self, done: set[str]) -> bool:
        return all(t.path in done for t in self.terminals())


class Tree:
    """The root chain and every node by path."""

    def __init__(self, root: Node) -> None:
        if root.kind != "chain" or not root.children:
            raise WorkflowError("a durable workflow needs at least one task")
        self.root = root
        self.nodes: dict[str, Node] = {}
        number(root, "", None, self.nodes)

    def __getitem__(self, path: str) -> Node:
        try:
            return self.nodes[path]
        except KeyError:
            raise WorkflowError(f"no task or node at path {path!r}") from None

    def tasks(self) -> list[Node]:
        return list(self.root.tasks())


    def at(self, path: str) -> Node:
        """The node at ``path``, the root chain at ``""``."""
        return self.root if path == "" else self[path]

    # -- data flow -------------------------------------------------------------------------

    def source(self, node: Node) -> Node | None:
        """The node whose result ``node`` receives (None: nothing)."""
        path = feeder(node.path, self.at)
        return None if path is None else self[path]

    def input_of(self, node: Node, values: dict[str, Any]) -> Any:
        """What ``node`` receives, from the results of what precedes it (NOTHING for the first)."""
        source = self.source(node)
        return NOTHING if source is None else source.value(values)

    def frontier(self, done: set[str]) -> list[Node]:
        """Tasks whose input is ready and that have no checkpoint: what must be running now."""
        return list(_pending(self.root, done))

    def downstream(self, path: str) -> list[Node]:
        """Tasks that run again when ``path`` does: its own, and every later element of its chains."""
        node = self[path]
        found = list(node.tasks())
        while node.parent is not None:
            parent = node.parent
            if parent.kind == "chain":
                for later in parent.children[node.index + 1:]:
                    found.extend(later.tasks())
            node = parent
        return found

    def current_step(self, done: set[str]) -> int:
        """The first root element not complete (the ``current_step`` column)."""
        for child in self.root.children:
            if not child.complete(done):
                return child.index
        return len(self.root.children) - 1


def enter(node: Node, given: Any) -> list[tuple[Node, Any]]:
    """The tasks that start when ``node`` receives ``given``, each with its input."""
    if node.kind == "task":
        return [(node, given)]
    if node.kind == "chain":
        return enter(node.children[0], given)
    return [entry for child in node.children for entry in enter(child, given)]


def top_of(path: str) -> int:
    """The index of the root element holding ``path`` (a link's owner's)."""
    return int(path.partition(".")[0].partition("~")[0])


def split(path: str) -> tuple[str, str, int]:
    """``(parent, separator, index)``.

    ``"2.1"`` is child 1 of ``"2"``, ``"2~0"`` link 0 of ``"2"``, ``"3"`` child 3 of ``""``.
    """
    cut = max(path.rfind("."), path.rfind("~"))
    if cut < 0:
        return "", ".", int(path)
    return path[:cut], path[cut], int(path[cut + 1:])


def child_path(parent: str, index: int) -> str:
    """The path of a chain's or group's child."""
    return f"{parent}.{index}" if parent else str(index)


def ancestors(path: str) -> list[str]:
    """Every node above ``path``, the root ``""`` first, then ``path`` itself."""
    found = [""]
    for i, char in enumerate(path):
        if char in ".~":
            found.append(path[:i])
    return found + [path]


def path_key(path: str) -> tuple[tuple[int, int], ...]:
    """Paths in tree order: "2" < "2~0" (its link) < "10"."""
    return tuple((int(a), int(b) if b else -1) for a, _, b in (part.partition("~") for part in path.split(".")))


def feeder(path: str, node_at: Callable[[str], Any]) -> str | None:
    """The path whose result the node at ``path`` receives: what precedes it in a chain, or a link's task.

    None: nothing (the first element of the root chain, or a node put in place
    by Task.replace()). ``node_at(path)`` gives a node's ``kind`` and
    ``replaced``, the root's at ``""``: a whole tree or the rows of these paths.
    """
    while path:
        if node_at(path).replaced:
            return None
        parent, separator, index = split(path)
        if separator == "~":
            return parent
        if node_at(parent).kind == "chain" and index > 0:
            return child_path(parent, index - 1)
        path = parent
    return None


def number(node: Node, path: str, parent: Node | None, nodes: dict[str, Node]) -> None:
    """Give ``node`` and everything under it their paths (and parents, links their owners), indexed in ``nodes``."""
    node.path, node.parent = path, parent
    if path:
        nodes[path] = node
    for i, child in enumerate(node.children):
        number(child, f"{path}.{i}" if path else str(i), node, nodes)
    for i, link in enumerate(node.links):
        link.owner = node
        number(link, f"{path}~{i}", None, nodes)


def _pending(node: Node, done: set[str]) -> Iterator[Node]:
    if node.kind == "task":
        if node.path not in done:
            yield node
        else:
            for link in node.links:
                yield from _pending(link, done)
    elif node.kind == "chain":
        for child in node.children:
            yield from _pending(child, done)  # of a complete element: the links still due
            if not child.complete(done):
                return
    else:
        for child in node.children:
            yield from _pending(child, done)
