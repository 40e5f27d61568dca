"""Which worker takes a wake-up: one idle worker per published transaction, not every listener.

Every worker of a queue listens on the same channel, so without this each
publish woke all of them and every idle one claimed, all but one finding
nothing: a transaction each. Instead the workers tell each other, on that
channel, when they wait idle (``i``), and every listener keeps the same roster:
notifications reach every listener in commit order, so each applies the same
notes and wake-ups in the same order and picks the same worker. The worker that
said so last takes the wake-up (its process is the likeliest to be running and
cached still); the others leave it alone. Nothing here reads the clock, so two
rosters that heard the same notes agree.

A worker's entry is reset by its own notes: a hello (``h``, riding on its first
claim and on each safety poll's) says it is busy claiming; it says idle again
after. A worker that hears a newcomer's first hello says hello again at once
(and idle, if it is), so the newcomer learns every entry; until its roster has
had time to fill (``SETTLE_SECONDS``) a newcomer claims on every wake-up and
never says idle, so nobody relies on what it does not know yet.

What keeps it safe when an entry is wrong:

* the designated worker's claim says it took the wake-up (``t``); the others claim it
  themselves when it says nothing for a second (:mod:`.designation`);
* a designated worker without room passes the wake-up on (``p``), and one
  whose claim came back full (a burst) wakes every idle worker (``x``);
* nobody known to be idle: everyone claims, as before;
* an entry goes once another worker said hello more than ``EXPIRY_ROUNDS`` times
  while it said nothing, and a worker leaving says so (``b``). A worker killed while idle
  may still be designated once: the others claim that wake-up a second later.

Notes ride on round trips the worker makes anyway (its acks, its claims); a
worker that has heard no peer sends only its hellos.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

HELLO, IDLE, TOOK, PASS, MORE, BYE = "h", "i", "t", "p", "x", "b"
KINDS = frozenset({HELLO, IDLE, TOOK, PASS, MORE, BYE})

#: Longest note sent (PostgreSQL's payload limit is 8000 bytes): a worker whose queue names do not fit
#: announces nothing and is never designated (it still claims when nobody is known to be idle).
NOTE_MAX = 7000
#: An entry expires once another worker said hello more than this many times (safety polls) while it said
#: nothing.
EXPIRY_ROUNDS = 3
#: Seconds a new worker claims on every wake-up while the others' answers to its first hello arrive.
SETTLE_SECONDS = 1.0


@dataclass(frozen=True)
class Note:
    """A worker's note on the wake-up channel: ``kind`` of ``worker``, for ``queues``.

    ``floors`` (priority -> first id) says where a passed-on or overflowing wake-up's rows start.
    """

    kind: str
    worker: str
    queues: tuple[str, ...] = ()
    floors: dict[int, int] | None = None

    def payload(self) -> str | None:
        body: dict = {"k": self.kind, "w": self.worker, "q": list(self.queues)}
        if self.floors:
            body["f"] = {str(priority): first for priority, first in self.floors.items()}
        text = "w" + json.dumps(body, separators=(",", ":"))
        return text if len(text.encode()) <= NOTE_MAX else None


def parse_note(text: str) -> Note | None:
    """A note's payload without its ``w`` prefix; None when malformed (it is another process's data)."""
    try:
        body = json.loads(text)
        kind, worker, queues = body["k"], body["w"], body.get("q", [])
        floors = body.get("f")
        if (kind not in KINDS or not isinstance(worker, str) or not isinstance(queues, list)
                or not all(isinstance(q, str) for q in queues)):
            return None
        if floors is not None:
            floors = {int(priority): int(first) for priority, first in floors.items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return Note(kind, worker, tuple(queues), floors)


def new_worker_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class Entry:
    queues: frozenset[str]
    #: Idle since this note's number (None: not idle).
    idle_since: int | None = None
    #: Hellos of each other worker since this one's last note.
    silent: dict[str, int] = field(default_factory=dict)


@dataclass
class Heard:
    """What a note asks of this worker: who takes a handed-on wake-up per queue (None: everyone),
    and whether a newcomer needs this worker's hello."""

    takers: dict[str, set[str] | None] = field(default_factory=dict)
    newcomer: bool = False


@dataclass
class Roster:
    """The workers heard on the channel and which of them wait idle; ``me`` is this worker."""

    me: str
    entries: dict[str, Entry] = field(default_factory=dict)
    _notes: int = 0

    def heard(self, note: Note) -> Heard:
        """Apply ``note`` (in the channel's order)."""
        self._notes += 1
        if note.kind == BYE:
            self.entries.pop(note.worker, None)
            return Heard()
        entry = self.entries.get(note.worker)
        newcomer = entry is None and note.kind == HELLO and note.worker != self.me
        if entry is None:
            entry = self.entries[note.worker] = Entry(frozenset(note.queues))
        entry.silent.clear()
        if note.kind in (HELLO, IDLE):
            entry.queues = frozenset(note.queues)
            entry.idle_since = self._notes if note.kind == IDLE else None
        if note.kind == HELLO:
            self._expire(note.worker)
        if note.kind == PASS:
            entry.idle_since = None
            return Heard({queue: self._one(queue) for queue in note.queues})
        if note.kind == MORE:
            entry.idle_since = None
            return Heard({queue: self._all(queue) for queue in note.queues})
        return Heard(newcomer=newcomer)

    def designate(self, queue: str) -> set[str] | None:
        """Who takes a wake-up of ``queue``: the worker idle the shortest (None: nobody is known idle: everyone)."""
        return self._one(queue)

    def has_peers(self) -> bool:
        return any(worker != self.me for worker in self.entries)

    def others_idle(self, queue: str) -> bool:
        """Whether a worker other than this one waits idle for ``queue``."""
        return any(worker != self.me for _since, worker in self._idle(queue))

    def _idle(self, queue: str) -> list[tuple[int, str]]:
        return sorted((entry.idle_since, worker) for worker, entry in self.entries.items()
                      if entry.idle_since is not None and queue in entry.queues)

    def _one(self, queue: str) -> set[str] | None:
        idle = self._idle(queue)
        if not idle:
            return None
        _since, worker = idle[-1]
        self.entries[worker].idle_since = None  # taken: idle again when it says so
        return {worker}

    def _all(self, queue: str) -> set[str]:
        idle = self._idle(queue)
        for _since, worker in idle:
            self.entries[worker].idle_since = None
        return {worker for _since, worker in idle}

    def _expire(self, hello_of: str) -> None:
        """Count ``hello_of``'s hello against every other entry; drop those silent for too many."""
        for worker, entry in list(self.entries.items()):
            if worker != hello_of:
                entry.silent[hello_of] = entry.silent.get(hello_of, 0) + 1
                if entry.silent[hello_of] > EXPIRY_ROUNDS:
                    del self.entries[worker]
