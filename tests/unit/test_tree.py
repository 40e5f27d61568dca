"""The durable tree's paths and data flow (no database needed).

A path names the task a checkpoint belongs to: resolved wrongly, a step's result would be stored
under another task, or a task would start with another task's result as its input.
"""

from __future__ import annotations

import pytest

from celery_durable.exceptions import WorkflowError
from celery_durable.workflow.tree import (
    NOTHING,
    Node,
    Tree,
    ancestors,
    child_path,
    enter,
    feeder,
    path_key,
    split,
    top_of,
)


def task(name: str, *links: Node) -> Node:
    return Node("task", sig={"task": name}, links=list(links))


def chain(*children: Node) -> Node:
    return Node("chain", list(children))


def group(*children: Node) -> Node:
    return Node("group", list(children))


def shop() -> Tree:
    """``a | group(b, c | d) | e``, with ``audit`` linked to ``c``.

    Paths: a "0", the group "1", b "1.0", the chain "1.1", c "1.1.0", audit "1.1.0~0", d "1.1.1", e "2".
    """
    return Tree(chain(task("a"), group(task("b"), chain(task("c", task("audit")), task("d"))), task("e")))


def names(nodes: list[Node]) -> list[str]:
    return [n.name for n in nodes]


def test_every_node_gets_the_path_a_checkpoint_is_stored_under():
    """Paths are what checkpoints and operators' commands (`restart --path 1.1.0`) name."""
    tree = shop()
    assert {path: node.name for path, node in tree.nodes.items() if node.kind == "task"} == {
        "0": "a", "1.0": "b", "1.1.0": "c", "1.1.0~0": "audit", "1.1.1": "d", "2": "e",
    }
    assert tree["1"].kind == "group" and tree["1.1"].kind == "chain"
    assert tree.at("") is tree.root
    assert tree["1.1.0~0"].owner is tree["1.1.0"] and tree["1.1.0~0"].parent is None
    assert tree["1.1.1"].parent is tree["1.1"] and tree["1.1"].parent is tree["1"]


def test_a_path_that_names_no_node_is_a_clear_error():
    """An operator's mistyped path must not act on some other task."""
    with pytest.raises(WorkflowError, match="'1.2'"):
        shop()["1.2"]
    with pytest.raises(WorkflowError, match="at least one task"):
        Tree(chain())
    with pytest.raises(WorkflowError):
        Tree(group(task("a")))  # the root is always a chain


def test_index_of_a_child_and_of_a_link():
    """A node's index is its place in its parent; a link's, its place among its task's links (not a child)."""
    tree = Tree(chain(task("a", task("l0"), task("l1")), task("b"), task("c")))
    assert tree["2"].index == 2
    assert tree["0~1"].index == 1 and tree["0~1"].name == "l1"


@pytest.mark.parametrize("path, expected", [
    ("3", ("", ".", 3)),
    ("2.1", ("2", ".", 1)),
    ("2~0", ("2", "~", 0)),
    ("2.1~1.0", ("2.1~1", ".", 0)),
    ("10.12", ("10", ".", 12)),
])
def test_split_names_the_parent_and_whether_the_node_is_a_child_or_a_link(path, expected):
    """A running task reads only its own rows: which parent, and as child or link, comes from its path alone."""
    assert split(path) == expected


def test_ancestors_go_from_the_root_down_through_links():
    """The rows a running task loads to find its input: every node above it, a link's task included."""
    assert ancestors("2.1~1.0") == ["", "2", "2.1", "2.1~1", "2.1~1.0"]
    assert ancestors("3") == ["", "3"]


def test_top_of_and_child_path():
    """`top_of` is the root element (the `current_step`) a path belongs to; links belong to their task's."""
    assert top_of("2.1~0.3") == 2 and top_of("12~1") == 12 and top_of("0") == 0
    assert child_path("", 3) == "3" and child_path("2.1", 0) == "2.1.0" and child_path("2~0", 1) == "2~0.1"


def test_paths_sort_in_tree_order_not_string_order():
    """Listings (`durable workflows show`) follow the tree: "10" after "2", a task's link right after the task."""
    paths = ["10", "2.1", "2~0", "1", "2", "9"]
    assert sorted(paths, key=path_key) == ["1", "2", "2.1", "2~0", "9", "10"]
    assert sorted(["1~1", "1~0.1", "1~0", "1"], key=path_key) == ["1", "1~0", "1~0.1", "1~1"]


def test_each_task_receives_what_precedes_it_in_its_chain():
    """A chain hands each element's result to the next; a group's members all get the group's input."""
    tree = shop()
    source = {path: (None if tree.source(node) is None else tree.source(node).path)
              for path, node in tree.nodes.items()}
    assert source == {
        "0": None, "1": "0", "1.0": "0", "1.1": "0", "1.1.0": "0",
        "1.1.0~0": "1.1.0",  # a link receives its task's result
        "1.1.1": "1.1.0", "2": "1",
    }


def test_feeder_works_from_rows_alone():
    """A worker resolves its input from the rows of its ancestors, without the whole tree (`node_at`)."""
    tree = shop()
    asked = []

    def node_at(path):
        asked.append(path)
        return tree.at(path)

    assert feeder("1.1.1", node_at) == "1.1.0"
    assert set(asked) <= set(ancestors("1.1.1"))


def test_a_replaced_task_starts_from_nothing():
    """What Task.replace() put in a task's place does not receive the result of what preceded the task."""
    tree = shop()
    tree["2"].replaced = True
    assert tree.source(tree["2"]) is None
    assert tree.input_of(tree["2"], {}) is NOTHING
    tree["1.1"].replaced = True
    assert tree.source(tree["1.1.0"]) is None and tree.source(tree["1.1.1"]).path == "1.1.0"


def test_values_flow_as_in_celery():
    """A group gives the list of its members' results, a chain its last one; the first task gets NOTHING."""
    tree = shop()
    values = {"0": "A", "1.0": "B", "1.1.0": "C", "1.1.0~0": "AUDIT", "1.1.1": "D", "2": "E"}
    assert tree.input_of(tree["0"], values) is NOTHING
    assert tree.input_of(tree["1.0"], values) == "A"
    assert tree.input_of(tree["2"], values) == ["B", "D"]  # the link's result is not part of it
    assert tree.root.value(values) == "E"
    assert [n.path for n in tree["1"].terminals()] == ["1.0", "1.1.1"]
    assert tree["1"].complete({"1.0", "1.1.1"}) and not tree["1"].complete({"1.0", "1.1.0"})


def test_the_frontier_is_what_must_be_running_now():
    """After a crash the sweep resends exactly the frontier: not a finished task, not one whose input is missing."""
    tree = shop()
    assert names(tree.frontier(set())) == ["a"]
    assert names(tree.frontier({"0"})) == ["b", "c"]
    assert names(tree.frontier({"0", "1.1.0"})) == ["b", "audit", "d"]  # the link is due once its task is done
    assert names(tree.frontier({"0", "1.0", "1.1.0", "1.1.1"})) == ["audit", "e"]
    assert names(tree.frontier(set(tree.nodes))) == []


def test_enter_starts_every_first_task_of_a_group_with_the_same_input():
    tree = shop()
    assert [(n.name, given) for n, given in enter(tree["1"], "A")] == [("b", "A"), ("c", "A")]


def test_downstream_is_what_runs_again_after_a_restart():
    """Restarting a task reruns it and every later element of its chains, never its group's siblings."""
    tree = shop()
    assert names(tree.downstream("1.1.0")) == ["c", "audit", "d", "e"]
    assert names(tree.downstream("1.0")) == ["b", "e"]
    assert names(tree.downstream("2")) == ["e"]


def test_current_step_is_the_first_root_element_not_complete():
    """The `current_step` column operators see: a group counts as done only when all its branches are."""
    tree = shop()
    assert tree.current_step(set()) == 0
    assert tree.current_step({"0", "1.0"}) == 1
    assert tree.current_step({"0", "1.0", "1.1.1"}) == 2
    assert tree.current_step(set(tree.nodes)) == 2  # finished: the last element


def test_tasks_lists_links_right_after_their_task():
    assert [n.path for n in shop().tasks()] == ["0", "1.0", "1.1.0", "1.1.0~0", "1.1.1", "2"]


def test_a_node_shows_its_shape():
    """What `durable workflows show` prints for a chain, a group and a chord."""
    assert chain(*(task(str(i)) for i in range(5))).name == "chain(0, 1, 2, … 2 more)"
    chord = Node("chain", [group(task("h1"), task("h2")), task("body")], chord=True)
    assert chord.name == "chord(group(h1, h2), body)"
