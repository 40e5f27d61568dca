"""Random Celery canvases for the property tests: chains, groups and chords up to 3 deep, up to 30 tasks.

A canvas is plain data first (so Hypothesis can shrink it), then the same
Celery canvas for the plain run on Redis and the durable run on ours. Every
task is ``durable_app.digest``, whose result is a digest of its name and of
the inputs it received: two runs agree only if every value flowed the same way.

Some tasks carry a ``link`` callback (a digest too): it runs beside the
canvas, so it is not in the result, but a durable run checkpoints it.

What a canvas means is computed here too (``meant``): Celery's documented
value flow, the same rules as workflow/tree.py. A durable run must give it;
plain Celery must give it as well, except on the shapes ``plain_celery_errs``
names, where Celery 5.7 is known to hand a task other inputs.

Left out, because plain Celery 5.7 gets them wrong (so there is nothing to
compare with): a group directly inside a group (Celery flattens it but
reverses its members inside chains and chords), and a group that directly
follows a group in a chain (in ``chain(group, group, group)`` the last
group's members receive only the first member's result of the middle one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import chain, chord, group
from hypothesis import strategies as st

from tests.apps.durable_app import digest_of

MAX_TASKS = 30
DIGEST = "tests.apps.durable_app.digest"
#: The input of what follows nothing: no argument at all.
NOTHING: Any = type("Nothing", (), {"__repr__": lambda self: "NOTHING"})()


@dataclass
class Leaf:
    name: str
    immutable: bool
    linked: bool = False  # a link callback (digest too) hangs on it

    def count(self) -> int:
        return 1

    def rows(self) -> int:
        """Tasks a durable run checkpoints: this one and its link."""
        return 1 + self.linked


@dataclass
class Chain:
    items: list

    def count(self) -> int:
        return sum(i.count() for i in self.items)

    def rows(self) -> int:
        return sum(i.rows() for i in self.items)


@dataclass
class Group:
    items: list

    def count(self) -> int:
        return sum(i.count() for i in self.items)

    def rows(self) -> int:
        return sum(i.rows() for i in self.items)


@dataclass
class Chord:
    header: list
    body: Any

    def count(self) -> int:
        return sum(i.count() for i in self.header) + self.body.count()

    def rows(self) -> int:
        return sum(i.rows() for i in self.header) + self.body.rows()


def _ends_with_group(c: Any) -> bool:
    if isinstance(c, Group):
        return True
    if isinstance(c, Chord):
        return _ends_with_group(c.body)
    return isinstance(c, Chain) and _ends_with_group(c.items[-1])


def _starts_with_group(c: Any) -> bool:
    return isinstance(c, (Group, Chord)) or (isinstance(c, Chain) and _starts_with_group(c.items[0]))


_LEAF = st.builds(Leaf, name=st.text("abcdefgh", min_size=1, max_size=3),
                  immutable=st.sampled_from([False, False, False, True]),
                  linked=st.sampled_from([False] * 7 + [True]))


@st.composite
def _canvas(draw: Any, depth: int, budget: int, top: bool = False, no_group: bool = False) -> Any:
    """A canvas of at most ``budget`` tasks; ``no_group``: not a group (a group's members, a chord's header)."""
    if depth == 0 or budget < 2 or (not top and draw(st.integers(0, 2)) == 0):
        return draw(_LEAF)
    kinds = ["chain", "chord"] if no_group else ["chain", "group", "chord"]
    kind = draw(st.sampled_from(kinds))
    size = draw(st.integers(2, 4)) if budget >= 4 * (2 if kind == "chord" else 1) else 2
    share = max(1, budget // (size + (1 if kind == "chord" else 0)))
    if kind == "group":
        return Group([draw(_canvas(depth - 1, share, no_group=True)) for _ in range(size)])
    if kind == "chord":
        header = [draw(_canvas(depth - 1, share, no_group=True)) for _ in range(size)]
        return Chord(header, draw(_canvas(depth - 1, share)))
    items: list = []
    for _ in range(size):
        # Not a group (or chord) right after something that ends with a group: see the module docstring.
        follows_group = bool(items) and _ends_with_group(items[-1])
        item = draw(_canvas(depth - 1, share, no_group=follows_group))
        items.append(draw(_LEAF) if follows_group and _starts_with_group(item) else item)
    return Chain(items)


def canvases() -> st.SearchStrategy:
    """Canvases nested at most 3 deep with 2 to 30 tasks."""
    return _canvas(3, MAX_TASKS, top=True)


def meant(c: Any, given: Any = NOTHING) -> Any:
    """The result ``c`` means, computed here: Celery's documented value flow (tree.py states it).

    A chain hands each element's result to the next (a mutable task gets it as
    its first argument) and gives its last; a group or a chord's header hands
    its input to every member and gives their results in order; a chord's body
    gets its header's results. Links are beside the flow.
    """
    if isinstance(c, Leaf):
        return digest_of(c.name, [] if given is NOTHING or c.immutable else [given])
    if isinstance(c, Chain):
        for item in c.items:
            given = meant(item, given)
        return given
    if isinstance(c, Group):
        return [meant(item, given) for item in c.items]
    return meant(c.body, [meant(item, given) for item in c.header])


def plain_celery_errs(c: Any, followed: bool = False) -> bool:
    """Whether ``c`` holds a chord whose body ends with a group and that has something after it in its chain.

    Celery 5.7 composes such a chain in several ways, depending on what
    surrounds the chord. Most make its body ``chord(group, next)``, which is
    right; with a group earlier in the chain and a nested chain after the
    chord, the chord is left directly followed by the rest of the chain, and
    Celery runs that rest once per member of the group, each time with one
    member's result (issue 20). The wider shape is named, not the
    composition: plain Celery is not compared on it, the documented flow
    (``meant``) is, and the durable run must give that.
    """
    if isinstance(c, Leaf):
        return False
    if isinstance(c, Chain):
        last = len(c.items) - 1
        return any(plain_celery_errs(item, followed or i < last) for i, item in enumerate(c.items))
    if isinstance(c, Group):
        return any(plain_celery_errs(item) for item in c.items)
    return ((followed and _ends_with_group(c.body)) or any(plain_celery_errs(item) for item in c.header)
            or plain_celery_errs(c.body, followed))


@st.composite
def large_canvases(draw: Any, tasks: int) -> Any:
    """A fan-out of at least ``tasks`` tasks: a task, then a group or a chord of small random canvases
    (members up to 2 deep, up to 4 tasks), then a task."""
    members: list = []
    while sum(m.count() for m in members) < tasks:
        members.append(draw(_canvas(2, 4, no_group=True)))
    if draw(st.booleans()):
        return Chain([draw(_LEAF), Chord(members, draw(_LEAF)), draw(_LEAF)])
    return Chain([draw(_LEAF), Group(members), draw(_LEAF)])


def to_celery(c: Any, app: Any, **options: Any) -> Any:
    """The Celery canvas of ``c``; ``options`` (queue, pause) go to every task."""
    if isinstance(c, Leaf):
        kwargs = {"name": c.name, "pause": options.get("pause", 0.0)}
        sig_options = {k: v for k, v in options.items() if k != "pause"}
        if c.linked:
            sig_options["link"] = app.signature(DIGEST, kwargs={**kwargs, "name": c.name + "!"}, **sig_options)
        return app.signature(DIGEST, kwargs=kwargs, immutable=c.immutable, **sig_options)
    if isinstance(c, Chain):
        return chain(*[to_celery(i, app, **options) for i in c.items])
    if isinstance(c, Group):
        return group(*[to_celery(i, app, **options) for i in c.items])
    return chord([to_celery(i, app, **options) for i in c.header], to_celery(c.body, app, **options))
