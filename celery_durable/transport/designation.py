"""One worker's part in designated wake-ups: whether it takes a wake-up, and what it tells the others.

The roster (:mod:`.roster`) says who takes each wake-up; this is what one worker
does with that: claim when designated (or pass the wake-up on when it has no
room), say idle once it waits with room to spare, tell the designated worker's
claim to the others (``t``), answer a newcomer's hello, and claim a wake-up
itself when the worker designated for it said nothing within
``FALLBACK_SECONDS`` (dead, stuck, or counted idle by a roster that heard
less than the others): such a wake-up waits that long, never until a safety poll.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import monotonic
from typing import TYPE_CHECKING, Protocol

from .roster import BYE, HELLO, IDLE, MORE, PASS, SETTLE_SECONDS, TOOK, Note, Roster

if TYPE_CHECKING:
    from .channel import Channel
    from .delivery import Delivery

#: Seconds a worker waits for the worker designated for a wake-up to say it claimed, before claiming itself.
FALLBACK_SECONDS = 1.0
#: Notes that answer a designation: the worker claimed (``t``; ``h`` rides on a claim of its whole queues,
#: ``x`` on a full claim) or passed it on.
ANSWERS = frozenset({TOOK, HELLO, MORE, PASS})


class NoteSender(Protocol):
    def send(self, note: Note, alone: bool) -> None:
        """Send ``note`` with the next round trip (``alone``: make one now)."""

    def drop(self, kind: str) -> None:
        """Forget the notes of ``kind`` not sent yet."""


@dataclass
class Awaited:
    """A wake-up designated to ``worker``, claimed here if it says nothing by ``deadline``."""

    deadline: float
    worker: str
    queue: str
    floors: dict[int, int] | None
    xid: int | None


class Designation:
    """The designated wake-ups of one worker (its transport, in Celery's event loop)."""

    def __init__(self, delivery: Delivery, roster: Roster, notes: NoteSender) -> None:
        self.delivery = delivery
        self.roster = roster
        self.notes = notes
        #: Whether this worker said it is idle and nobody has designated it since.
        self.idle_said = False
        #: Designated since its last claim: the next claim tells the others it took the wake-up.
        self.took = False
        #: When this worker's roster has heard the others' answers to its first hello (monotonic).
        self.settle_at: float | None = None
        self.awaited: list[Awaited] = []

    def settled(self) -> bool:
        """Whether this worker's roster has had time to learn every other worker (it acts on designations)."""
        return self.settle_at is not None and monotonic() >= self.settle_at

    def wake(self, queue: str, floors: dict[int, int], xid: int | None) -> bool:
        """A wake-up of ``queue``: whether this worker claims it now."""
        takers = self.roster.designate(queue)
        return takers is None or self._take(takers, queue, floors, xid) or not self.settled()

    def heard(self, note: Note) -> list[tuple[str, dict[int, int] | None]]:
        """Apply another worker's note (or this one's, heard back); return what this worker claims now:
        (queue, floors) of each wake-up handed on to it."""
        roster = self.roster
        if note.worker == roster.me and note.kind == HELLO and self.settle_at is None:
            self.settle_at = monotonic() + SETTLE_SECONDS
        if note.kind in ANSWERS:  # it claimed, passed the wake-up on, or polls its whole queues
            self.awaited = [a for a in self.awaited if a.worker != note.worker]
        elif note.kind == BYE:  # it left: what it was designated for is the others' now
            for awaited in self.awaited:
                if awaited.worker == note.worker:
                    awaited.deadline = 0.0
        alone = not roster.has_peers()
        heard = roster.heard(note)
        claim = []
        for queue, takers in heard.takers.items():
            if note.kind == PASS:
                mine = takers is None or self._take(takers, queue, note.floors, None)
            else:  # every idle worker woken by a full claim: no fallback, its sender goes on claiming
                mine = takers is None or roster.me in takers
                if takers and roster.me in takers:
                    self.idle_said = False
            if mine or not self.settled():
                claim.append((queue, note.floors))
        newcomer = heard.newcomer and self.settled() and self._queues()
        if newcomer:
            # Tell the newcomer what this worker is: a hello (busy), then idle again if it waits.
            self.idle_said = False
            self.notes.send(Note(HELLO, roster.me, newcomer), True)
        if newcomer or (alone and roster.has_peers()):
            for channel in self._channels():
                self.say_idle(channel)
        return claim

    def _take(self, takers: set[str], queue: str, floors: dict[int, int] | None, xid: int | None) -> bool:
        """Whether this worker claims a wake-up meant for ``takers``: one without room passes it on."""
        me = self.roster.me
        if me not in takers:
            if self.delivery.consumes(queue):
                self.awaited.extend(Awaited(monotonic() + FALLBACK_SECONDS, worker, queue, floors, xid)
                                    for worker in takers)
            return False
        self.idle_said = False
        self.notes.drop(IDLE)
        if self.delivery.has_room(queue):
            self.took = True
            return True
        self.notes.send(Note(PASS, me, (queue,), floors), True)
        return False

    def claiming(self, channel: Channel) -> None:
        """A claim of ``channel`` is about to go: it carries this worker's word that it took what it was
        designated for."""
        if self.took:
            self.took = False
            self.notes.send(Note(TOOK, self.roster.me, durable_queues(channel)), False)

    def hello(self, channel: Channel) -> None:
        """A safety poll's claim (or the first): it says hello, which says busy until this worker says idle."""
        self.idle_said = False
        self.notes.send(Note(HELLO, self.roster.me, durable_queues(channel)), False)

    def say_idle(self, channel: Channel) -> None:
        """Tell the other workers once ``channel`` waits for wake-ups with room to spare.

        The note rides on the ack of what the channel holds; with nothing to ack, it goes now.
        """
        if (self.idle_said or channel.ready or channel.claiming or self.delivery.room(channel) <= 0
                or not self.roster.has_peers() or not self.settled()):
            return
        queues = durable_queues(channel)
        if not queues:
            return
        self.idle_said = True
        alone = not channel.qos._delivered and self.delivery.leases.pending_age() is None
        self.notes.send(Note(IDLE, self.roster.me, queues), alone)

    def overflowing(self, channel: Channel) -> Note | None:
        """A claim of ``channel`` came back full: the note that wakes the other idle workers, if any wait."""
        queues = durable_queues(channel)
        if not queues or not any(self.roster.others_idle(q) for q in queues):
            return None
        floors = self.delivery.floors.known(queues[0]) if len(queues) == 1 else None
        return Note(MORE, self.roster.me, queues, floors)

    def next_fallback(self) -> float | None:
        return min((a.deadline for a in self.awaited), default=None)

    def fallbacks_due(self) -> list[Awaited]:
        """Wake-ups whose designated worker said nothing in time: this worker claims them."""
        now = monotonic()
        due = [a for a in self.awaited if a.deadline <= now]
        self.awaited = [a for a in self.awaited if a.deadline > now]
        return due

    def _queues(self) -> tuple[str, ...]:
        return next((q for q in (durable_queues(c) for c in self._channels()) if q), ())

    def _channels(self) -> list[Channel]:
        return list(self.delivery.transport.channels or [])


def durable_queues(channel: Channel) -> tuple[str, ...]:
    """The queues ``channel`` consumes that hold rows (not Celery's broadcast queues, which NOTIFY carries)."""
    return tuple(q for q in dict.fromkeys(channel._active_queues) if q not in channel.notify_only_queues)

