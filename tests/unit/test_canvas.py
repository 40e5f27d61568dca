"""From a Celery canvas to the stored durable tree, and stored arguments back (no database needed).

The tree built here is what runs: a canvas turned into the wrong shape runs tasks in the wrong order or
with the wrong inputs, and arguments stored wrongly reach a resumed task changed. Decoding refusals of
stored arguments are in test_content.py.
"""

from __future__ import annotations

import pytest
from celery import Celery, chain, chord, group

from celery_durable import content
from celery_durable.exceptions import WorkflowError
from celery_durable.workflow.canvas import build, call_args, encode_args, with_args


def anything(*args, **kwargs):
    return None


@pytest.fixture(scope="module")
def app() -> Celery:
    app = Celery("canvas", set_as_current=False)
    app.conf.update(accept_content=["json", "pickle", "yaml"])

    for name in ("a", "b", "c", "d", "notify", "failed"):
        app.task(name=f"shop.{name}", shared=False)(anything)
    app.finalize()
    return app


def sig(app: Celery, name: str, *args, **kwargs):
    return app.signature(f"shop.{name}", args=args, kwargs=kwargs)


def shape(tree) -> dict[str, str]:
    """Each path with its task's short name, or its node's kind."""
    return {path: node.sig["task"].split(".")[-1] if node.kind == "task" else node.kind
            for path, node in tree.nodes.items()}


def test_a_chain_of_signatures_becomes_the_root_chain(app):
    tree = build([sig(app, "a", 1), sig(app, "b"), sig(app, "c")], app)
    assert shape(tree) == {"0": "a", "1": "b", "2": "c"}
    assert tree["0"].sig["args"] == [1] and tree["1"].sig["args"] == []


def test_nested_chains_flatten_and_a_one_member_group_is_that_member(app):
    """As Celery runs them: `a | (b | c)` is three steps, and `group(b)` inside a chain receives a's result alone."""
    tree = build([sig(app, "a"), chain(sig(app, "b"), sig(app, "c")), group(sig(app, "d"))], app)
    assert shape(tree) == {"0": "a", "1": "b", "2": "c", "3": "d"}
    assert tree.source(tree["3"]).path == "2"


def test_groups_inside_a_group_flatten(app):
    """Celery flattens `group(a, group(b, c))`: its result is a flat list of three, so ours must be too."""
    tree = build([group(sig(app, "a"), group(sig(app, "b"), sig(app, "c")))], app, chain=False)
    assert shape(tree) == {"0": "group", "0.0": "a", "0.1": "b", "0.2": "c"}


def test_a_chord_is_the_chain_of_its_header_and_its_body(app):
    """The body receives the header's list of results, as with Celery's chord."""
    tree = build([chord([sig(app, "a"), sig(app, "b")], sig(app, "c"))], app, chain=False)
    assert shape(tree) == {"0": "group", "0.0": "a", "0.1": "b", "1": "c"}
    assert tree.root.chord and tree.root.name == "chord(group(shop.a, shop.b), shop.c)"
    assert tree.input_of(tree["1"], {"0.0": 1, "0.1": 2}) == [1, 2]


def test_a_chord_without_a_body_is_its_group(app):
    tree = build([chain(sig(app, "a"), chord([sig(app, "b"), sig(app, "c")]))], app, chain=False)
    assert shape(tree) == {"0": "a", "1": "group", "1.0": "b", "1.1": "c"}


def test_a_task_link_becomes_a_side_branch_fed_by_the_task(app):
    """A link is a durable task of its own (path "0~0"), not a Celery callback lost if the worker dies."""
    first = sig(app, "a")
    first.link(sig(app, "notify"))
    tree = build([first, sig(app, "b")], app)
    assert shape(tree) == {"0": "a", "0~0": "notify", "1": "b"}
    assert "link" not in tree["0"].sig["options"]
    assert tree.source(tree["0~0"]).path == "0" and tree.source(tree["1"]).path == "0"


def test_a_chains_link_goes_to_its_last_task(app):
    inner = chain(sig(app, "a"), sig(app, "b"))
    inner.link(sig(app, "notify"))
    tree = build([inner, sig(app, "c")], app)
    assert shape(tree) == {"0": "a", "1": "b", "1~0": "notify", "2": "c"}


def test_a_link_on_a_group_is_refused(app):
    """A group has no single result to call back with: said at send, not found out after a crash."""
    members = group(sig(app, "a"), sig(app, "b")).set(link=sig(app, "notify"))
    with pytest.raises(WorkflowError, match="link on a group"):
        build([members], app, chain=False)


def test_a_groups_error_callback_goes_to_each_of_its_tasks(app):
    """As Celery applies it: any member's failure calls the group's `link_error`, once per callback."""
    members = group(sig(app, "a"), sig(app, "b"))
    members.link_error(sig(app, "failed"))
    own = sig(app, "c")
    own.link_error(sig(app, "failed"))
    tree = build([members, own], app)
    for path in ("0.0", "0.1", "1"):
        assert [e["task"] for e in tree[path].sig["options"]["link_error"]] == ["shop.failed"], path


def test_options_of_one_send_are_not_stored(app):
    """A resent step gets a new task id: one stored with the workflow would be reused by every resend."""
    step = sig(app, "a").set(task_id="fixed", queue="orders", priority=7, countdown=3)
    stored = build([step], app)["0"].sig
    assert stored["options"] == {"queue": "orders", "priority": 7, "countdown": 3}
    assert stored["immutable"] is False
    assert build([sig(app, "a").set(immutable=True)], app)["0"].sig["immutable"] is True


@pytest.mark.parametrize("name", ["shop.typo", "typo", ""])
def test_unknown_tasks_are_refused_at_send(app, name):
    """A misspelt task name fails at send; a workflow stuck at that step later is much harder to see."""
    with pytest.raises(WorkflowError, match="unknown task"):
        build([app.signature(name)], app)


def test_a_task_of_a_module_this_app_did_not_load_is_left_to_the_worker(app):
    """A client that sends tasks by name without importing their modules (a web app) may send them."""
    tree = build([app.signature("billing.tasks.charge", args=(1,))], app)
    assert tree["0"].sig["task"] == "billing.tasks.charge"


@pytest.mark.parametrize("canvas, error", [
    (group([]), "empty group"),
    (chain(), "at least one task"),
    ("shop.a", "not a signature: 'shop.a'"),  # a task's name instead of its signature
    (42, "not a signature: 42"),
    (None, "not a signature: None"),
])
@pytest.mark.parametrize("in_chain", [True, False], ids=["durable_chain", "durable"])
def test_shapes_that_cannot_run_are_refused(app, canvas, error, in_chain):
    """Refused at send with what is wrong, not with an error from inside Celery."""
    with pytest.raises(WorkflowError, match=error):
        build([canvas], app, chain=in_chain)


def test_map_and_starmap_are_single_steps_with_their_items_stored(app):
    """`.map` runs as one task (celery.map); its items are stored themselves, not a generator."""
    tree = build([app.tasks["shop.a"].map(x for x in (1, 2)), app.tasks["shop.b"].starmap([(1, 2)])], app)
    assert tree["0"].sig["task"] == "celery.map" and tree["0"].sig["kwargs"]["it"] == [1, 2]
    assert tree["1"].sig["task"] == "celery.starmap"


def test_chunks_are_a_group_of_starmaps(app):
    tree = build([app.tasks["shop.a"].chunks([(i,) for i in range(4)], 2)], app, chain=False)
    assert shape(tree) == {"0": "group", "0.0": "starmap", "0.1": "starmap"}


def test_json_arguments_stay_plain_and_others_are_encoded_with_their_serializer(app):
    """JSON stays readable in SQL; pickled or YAML arguments reach a resumed task exactly as they were sent."""
    tree = build([sig(app, "a", 1, k="v"), sig(app, "b", {1, 2}).set(serializer="pickle"),
                  sig(app, "c", 1.5, k=[1]).set(serializer="yaml")], app)
    encode_args(tree.tasks(), app)
    plain, pickled, yamled = (tree[p].sig for p in ("0", "1", "2"))
    assert "encoded" not in plain and call_args(plain, app) == ([1], {"k": "v"})
    assert "args" not in pickled and pickled["encoded"]["content_type"] == content.PICKLE
    assert call_args(pickled, app) == ([{1, 2}], {})
    assert call_args(yamled, app) == ([1.5], {"k": [1]})
    again = with_args(pickled, ["new"], {})
    assert "encoded" not in again and call_args(again, app) == (["new"], {})


def test_arguments_json_cannot_carry_are_refused_at_send(app):
    tree = build([sig(app, "a", {1, 2})], app)
    with pytest.raises(WorkflowError, match="JSON-serializable"):
        encode_args(tree.tasks(), app)


def test_a_serializer_the_app_does_not_accept_is_refused_at_send():
    """Its own workers would refuse the step's arguments: the workflow would stop at that step."""
    app = Celery("json_only", set_as_current=False)
    app.conf.update(accept_content=["json"])
    app.task(name="shop.a", shared=False)(anything)
    tree = build([app.signature("shop.a", args=(1,)).set(serializer="pickle")], app)
    with pytest.raises(WorkflowError, match="not in the app's accept_content"):
        encode_args(tree.tasks(), app)
    tree = build([app.signature("shop.a", args=(1,)).set(serializer="no-such-thing")], app)
    with pytest.raises(WorkflowError, match="not installed"):
        encode_args(tree.tasks(), app)
