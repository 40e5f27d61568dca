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

Stored in ``workflow.steps`` as the root chain's elements (a JSON array),
with Kombu's JSON; an older version's steps (``{"kind": "task"|"group",
"signatures": [...]}``) read as the same tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from ..exceptions import WorkflowError

#: The input of a node that follows nothing (the first element of the root chain).
NOTHING: Any = type("Nothing", (), {"__repr__": lambda self: "NOTHING"})()


@dataclass(eq=False)
class Node:
    """One node: a task (``sig`` set), or a chain or group of ``children``."""

    kind: str
    children: list["Node"] = field(default_factory=list)
    sig: dict | None = None
    chord: bool = False
    #: Put in a task's place by Task.replace(): it starts from nothing, not from what preceded the task.
    replaced: bool = False
    links: list["Node"] = field(default_factory=list)
    path: str = ""
    parent: "Node | None" = field(default=None, repr=False)
    #: The task a link callback hangs on (set on the link's own node).
    owner: "Node | None" = field(default=None, repr=False)

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

    def tasks(self) -> Iterator["Node"]:
        """Every task under this node (itself for a task) and its link callbacks, in path order."""
        if self.kind == "task":
            yield self
            for link in self.links:
                yield from link.tasks()
        for child in self.children:
            yield from child.tasks()

    def terminals(self) -> list["Node"]:
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
        _number(root, "", None, self.nodes)

    def __getitem__(self, path: str) -> Node:
        try:
            return self.nodes[path]
        except KeyError:
            raise WorkflowError(f"no task or node at path {path!r}") from None

    def tasks(self) -> list[Node]:
        return list(self.root.tasks())


    # -- data flow -------------------------------------------------------------------------

    def enter(self, node: Node, given: Any) -> list[tuple[Node, Any]]:
        """The tasks that start when ``node`` receives ``given``, each with its input."""
        if node.kind == "task":
            return [(node, given)]
        if node.kind == "chain":
            return self.enter(node.children[0], given)
        return [entry for child in node.children for entry in self.enter(child, given)]

    def input_of(self, node: Node, values: dict[str, Any]) -> Any:
        """What ``node`` receives, from the results of what precedes it (NOTHING for the first)."""
        source = feeder(node)
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


def top_of(path: str) -> int:
    """The index of the root element holding ``path`` (a link's owner's)."""
    return int(path.partition(".")[0].partition("~")[0])


def feeder(node: Node) -> Node | None:
    """The node whose result ``node`` receives: what precedes it in a chain, or a link's task; None: nothing."""
    while True:
        if node.replaced:
            return None
        if node.owner is not None:
            return node.owner
        parent = node.parent
        if parent is None:
            return None
        if parent.kind == "chain" and node.index > 0:
            return parent.children[node.index - 1]
        node = parent


def _number(node: Node, path: str, parent: Node | None, nodes: dict[str, Node]) -> None:
    node.path, node.parent = path, parent
    if path:
        nodes[path] = node
    for i, child in enumerate(node.children):
        _number(child, f"{path}.{i}" if path else str(i), node, nodes)
    for i, link in enumerate(node.links):
        link.owner = node
        _number(link, f"{path}~{i}", None, nodes)


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


# -- JSON ---------------------------------------------------------------------------------------

def to_json(tree: Tree) -> list[dict]:
    return [_node_json(child) for child in tree.root.children]


def _node_json(node: Node) -> dict:
    if node.kind == "task":
        data = {"kind": "task", "task": node.name, "signatures": [node.sig]}
        if node.links:
            data["links"] = [_node_json(link) for link in node.links]
        return data
    data = {"kind": node.kind, "task": node.name, "children": [_node_json(c) for c in node.children]}
    if node.chord:
        data["chord"] = True
    if node.replaced:
        data["replaced"] = True
    return data


def from_json(elements: list[dict]) -> Tree:
    return Tree(Node("chain", [_node_from(e) for e in elements]))


def _node_from(data: dict) -> Node:
    kind = data["kind"]
    if kind == "task":
        return Node("task", sig=dict(data["signatures"][0]), links=[_node_from(l) for l in data.get("links", ())])
    if "children" in data:
        return Node(kind, [_node_from(c) for c in data["children"]], chord=bool(data.get("chord")),
                    replaced=bool(data.get("replaced")))
    # An older version's group step: its members are plain signatures.
    return Node(kind, [Node("task", sig=dict(s)) for s in data["signatures"]])
