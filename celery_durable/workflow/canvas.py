"""From a Celery canvas to a durable tree, and signatures to and from storage.

Any nesting of signatures, chains, groups and chords becomes a ``Tree``;
``.map``/``.starmap`` are single tasks (Celery's ``celery.map``), ``.chunks``
a group of ``celery.starmap`` tasks, as when Celery applies them. A task's
arguments are stored with its task serializer: JSON stays readable in SQL,
any other serializer (pickle, msgpack, yaml) is stored encoded, so a resumed
task receives exactly what the first send would have. They are decoded only
with a content type the reading app accepts (:mod:`celery_durable.content`),
and a serializer the sending app does not accept is refused at send.
"""

from __future__ import annotations

import base64
from typing import Any

from celery import Signature, group, maybe_signature
from celery.canvas import _chain, _chord, chunks
from kombu.exceptions import SerializerNotInstalled
from kombu.serialization import dumps as encode_value
from kombu.serialization import prepare_accept_content
from kombu.utils.json import dumps

from .. import content
from ..exceptions import Undecodable, WorkflowError
from .tree import Node, Tree

#: Signature options that belong to one send, not to the workflow.
_PER_SEND = ("task_id", "parent_id", "root_id", "group_id", "group_index", "chord", "reply_to", "chain")


def build(signatures: tuple | list, app: Any, *, chain: bool = True) -> Tree:
    """The tree of a chain of ``signatures`` (``chain``), or of the one canvas in it.

    Raises WorkflowError for unknown tasks, empty groups or what is not a signature.
    """
    if chain:
        root = _chain_node(list(signatures), app)
    else:
        node = node_of(signatures[0], app)
        root = node if node.kind == "chain" else Node("chain", [node])
    return Tree(root)


def node_of(sig: Any, app: Any) -> Node:
    """The tree node of one signature or canvas (paths are given when its Tree is built)."""
    sig = _signature(sig, app)
    return _callbacks(_shape(sig, app), sig, app)


def _signature(value: Any, app: Any) -> Any:
    """``value`` as a Signature; raises WorkflowError for anything else (maybe_signature raises AttributeError)."""
    if value is not None and not isinstance(value, (dict, Signature)):
        raise WorkflowError(f"not a signature: {value!r}")
    return maybe_signature(value, app=app)


def _shape(sig: Any, app: Any) -> Node:
    if isinstance(sig, _chord):
        header = Node("group", _group_children(sig.tasks, app))
        if sig.body is None:
            return header
        return Node("chain", [header, node_of(sig.body, app)], chord=True)
    if isinstance(sig, _chain):
        return _chain_node(list(sig.tasks), app)
    if isinstance(sig, group):
        return Node("group", _group_children(sig.tasks, app))
    if isinstance(sig, chunks):
        return node_of(sig.group(), app)
    if isinstance(sig, Signature):
        links = [node_of(link, app) for link in listed(sig.options.get("link"))]
        return Node("task", sig=_plain(sig, app), links=links)
    raise WorkflowError(f"not a signature: {sig!r}")


def listed(value: Any) -> list:
    """A callback option as a list (Celery keeps one signature or several)."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _callbacks(node: Node, sig: Any, app: Any) -> Node:
    """A chain's, group's or chord's own ``link_error`` goes to each of its tasks, as Celery applies it;
    its ``link`` to a chain's last task (anything else has no single result to call back with)."""
    if node.kind == "task":
        return node
    errbacks = listed(sig.options.get("link_error"))
    if errbacks:
        add_errbacks(node, errbacks)
    links = listed(sig.options.get("link"))
    if links:
        last = node.children[-1] if node.kind == "chain" else None
        if last is None or last.kind != "task":
            raise WorkflowError(f"link on a {'chord' if node.chord else node.kind} has no single task to call "
                                "back from in a durable workflow: link the task whose result it needs")
        last.links += [node_of(link, app) for link in links]
    return node


def add_errbacks(node: Node, errbacks: list) -> None:
    """Give every task under ``node`` these ``link_error`` callbacks too (Celery calls them on its failure)."""
    for task in node.tasks():
        known = listed(task.sig["options"].get("link_error"))
        task.sig["options"]["link_error"] = known + [e for e in errbacks if e not in known]


def _chain_node(elements: list, app: Any) -> Node:
    children: list[Node] = []
    for element in elements:
        element = _signature(element, app)
        if isinstance(element, group) and not isinstance(element, _chord) and len(element.tasks) == 1:
            element = element.tasks[0]  # Celery runs a one-member group in a chain as that member
        child = node_of(element, app)
        if child.kind == "chain":
            children.extend(child.children)
        else:
            children.append(child)
    if not children:
        raise WorkflowError("a durable chain needs at least one task")
    return Node("chain", children)


def _group_children(tasks: Any, app: Any) -> list[Node]:
    children: list[Node] = []
    for task in list(tasks):
        child = node_of(task, app)
        if child.kind == "group":
            children.extend(child.children)  # as Celery, a group in a group is flattened
        else:
            children.append(child)
    if not children:
        raise WorkflowError("an empty group cannot be part of a durable workflow")
    return children


def _plain(sig: Signature, app: Any) -> dict:
    name = sig.task
    if _surely_unknown(app, name):
        raise WorkflowError(f"unknown task {name!r} in a durable workflow (not registered with app {app.main!r})")
    # A link becomes a side branch of the tree (started with the task's checkpoint), not a Celery callback.
    options = {k: v for k, v in dict(sig.options).items() if k not in _PER_SEND and k != "link"}
    kwargs = dict(sig.kwargs)
    if name in ("celery.map", "celery.starmap") and "it" in kwargs:
        kwargs["it"] = list(kwargs["it"])  # a lazy regen: store the items themselves
    return {"task": name, "args": list(sig.args), "kwargs": kwargs, "options": options,
            "immutable": bool(sig.immutable)}


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


# -- storage ------------------------------------------------------------------------------------

def encode_args(nodes: Any, app: Any) -> None:
    """Encode every task's arguments with its task serializer (JSON stays readable).

    Raises WorkflowError if they cannot be.
    """
    for node in nodes:
        if node.kind == "task":
            node.sig = _encoded(node.sig, app)


def call_args(sig: dict, app: Any, path: str | None = None) -> tuple[list, dict]:
    """A stored signature's args and kwargs, decoded with the serializer that stored them.

    Raises Undecodable when that serializer's content type is not in the app's ``accept_content``.
    """
    encoded = sig.get("encoded")
    if encoded is None:
        return list(sig["args"]), dict(sig["kwargs"])
    what = f"the arguments of {sig.get('task')}" + (f" (task {path})" if path else "")
    try:
        data = base64.b64decode(encoded["data"], validate=True)
        content_type, content_encoding = encoded["content_type"], encoded["content_encoding"]
    except (KeyError, TypeError, ValueError):
        raise Undecodable(f"{what} are stored malformed: not decoded", path) from None
    decoded = content.load(data, content_type, content_encoding, content.argument_types(app), what, path)
    try:
        args, kwargs = decoded
        return list(args), dict(kwargs)
    except (TypeError, ValueError):
        raise Undecodable(f"{what} decode to no (args, kwargs) pair: not used", path) from None


def with_args(sig: dict, args: list, kwargs: dict) -> dict:
    """A copy of ``sig`` with new (plain) args and kwargs; stored again with its serializer."""
    plain = {k: v for k, v in sig.items() if k != "encoded"}
    plain.update(args=list(args), kwargs=dict(kwargs))
    return plain


def _encoded(sig: dict, app: Any) -> dict:
    if "encoded" in sig:
        return sig
    serializer = sig["options"].get("serializer") or app.conf.task_serializer
    _accepted(serializer, sig["task"], app)
    if serializer == "json":
        try:
            dumps([sig["args"], sig["kwargs"]])
        except TypeError as exc:
            raise WorkflowError(f"arguments of {sig['task']} must be JSON-serializable (task_serializer "
                                f"json): {exc}") from None
        return sig
    try:
        content_type, content_encoding, data = encode_value((sig["args"], sig["kwargs"]), serializer=serializer)
    except Exception as exc:  # noqa: BLE001 - any serializer's error says the same thing
        raise WorkflowError(f"arguments of {sig['task']} cannot be encoded with {serializer}: {exc}") from None
    data = data.encode(content_encoding or "utf-8") if isinstance(data, str) else bytes(data)
    stored = {k: v for k, v in sig.items() if k not in ("args", "kwargs")}
    stored["encoded"] = {"content_type": content_type, "content_encoding": content_encoding or "binary",
                         "data": base64.b64encode(data).decode("ascii")}
    return stored


def _accepted(serializer: str, task: str, app: Any) -> None:
    """Refuse a serializer the app itself would not decode: its workers would refuse the step's arguments."""
    try:
        content_type = next(iter(prepare_accept_content([serializer])))
    except SerializerNotInstalled:
        raise WorkflowError(f"{task}: serializer {serializer!r} is not installed") from None
    if content_type not in content.argument_types(app):
        raise WorkflowError(f"{task}: serializer {serializer!r} ({content_type}) is not in the app's accept_content "
                            f"{list(app.conf.accept_content)}: its workers would refuse the step")
