"""The roster that picks which worker takes a wake-up (celery_durable/transport/roster.py).

Every worker applies the same notifications in the same order; these tests feed
the same stream to several rosters and check they agree, since a disagreement
means a wake-up nobody claims until a safety poll, or one every worker claims.
"""

from __future__ import annotations

from celery_durable.transport import notifier
from celery_durable.transport.roster import (
    BYE, EXPIRY_ROUNDS, HELLO, IDLE, MORE, NOTE_MAX, PASS, Note, Roster, parse_note,
)


def rosters(*names: str) -> dict[str, Roster]:
    return {name: Roster(name) for name in names}


def hear(all_rosters: dict[str, Roster], note: Note) -> dict:
    return {name: roster.heard(note).takers for name, roster in all_rosters.items()}


def designate(all_rosters: dict[str, Roster], queue: str) -> dict[str, set[str] | None]:
    return {name: roster.designate(queue) for name, roster in all_rosters.items()}


def test_each_wake_up_goes_to_one_idle_worker_the_last_to_say_so_and_every_roster_agrees():
    workers = rosters("a", "b", "c")
    for name in "abc":
        hear(workers, Note(HELLO, name, ("celery",)))
    for name in "cab":
        hear(workers, Note(IDLE, name, ("celery",)))
    assert designate(workers, "celery") == {"a": {"b"}, "b": {"b"}, "c": {"b"}}
    assert designate(workers, "celery") == {"a": {"a"}, "b": {"a"}, "c": {"a"}}
    assert designate(workers, "celery") == {"a": {"c"}, "b": {"c"}, "c": {"c"}}


def test_with_nobody_known_idle_every_worker_claims():
    """A lone worker, or workers all busy: the wake-up is everyone's, as without the roster."""
    workers = rosters("a", "b")
    hear(workers, Note(HELLO, "a", ("celery",)))
    assert designate(workers, "celery") == {"a": None, "b": None}
    hear(workers, Note(IDLE, "b", ("celery",)))
    designate(workers, "celery")
    assert designate(workers, "celery") == {"a": None, "b": None}


def test_a_hello_says_busy_until_the_worker_says_idle_again():
    """A safety poll's claim rides with a hello: nobody designates that worker while it claims."""
    workers = rosters("a", "b")
    hear(workers, Note(IDLE, "a", ("celery",)))
    hear(workers, Note(HELLO, "a", ("celery",)))
    assert designate(workers, "celery") == {"a": None, "b": None}
    hear(workers, Note(IDLE, "a", ("celery",)))
    assert designate(workers, "celery") == {"a": {"a"}, "b": {"a"}}


def test_a_worker_idle_for_other_queues_is_not_designated():
    workers = rosters("a", "b")
    hear(workers, Note(IDLE, "a", ("emails",)))
    hear(workers, Note(IDLE, "b", ("celery", "emails")))
    assert designate(workers, "celery") == {"a": {"b"}, "b": {"b"}}
    assert designate(workers, "emails") == {"a": {"a"}, "b": {"a"}}


def test_a_designated_worker_without_room_passes_the_wake_up_to_the_next_idle_one():
    workers = rosters("a", "b", "c")
    for name in "abc":
        hear(workers, Note(IDLE, name, ("celery",)))
    designate(workers, "celery")  # c
    assert hear(workers, Note(PASS, "c", ("celery",), {0: 42})) == {n: {"celery": {"b"}} for n in "abc"}
    designate(workers, "celery")  # a
    assert hear(workers, Note(PASS, "a", ("celery",))) == {n: {"celery": None} for n in "abc"}


def test_a_full_claim_wakes_every_idle_worker_and_nobody_when_none_is_idle():
    workers = rosters("a", "b", "c")
    for name in "bc":
        hear(workers, Note(IDLE, name, ("celery",)))
    assert hear(workers, Note(MORE, "a", ("celery",), {5: 7})) == {n: {"celery": {"b", "c"}} for n in "abc"}
    assert hear(workers, Note(MORE, "a", ("celery",))) == {n: {"celery": set()} for n in "abc"}


def test_a_silent_worker_expires_after_the_others_polls_and_one_leaving_at_once():
    workers = rosters("a", "b", "c")
    hear(workers, Note(IDLE, "a", ("celery",)))
    hear(workers, Note(IDLE, "c", ("celery",)))
    for _ in range(EXPIRY_ROUNDS + 1):  # b polls; a says nothing, c says idle again each time
        hear(workers, Note(HELLO, "b", ("celery",)))
        hear(workers, Note(IDLE, "c", ("celery",)))
    assert all("a" not in roster.entries for roster in workers.values())
    assert designate(workers, "celery") == {n: {"c"} for n in "abc"}
    hear(workers, Note(BYE, "c"))
    hear(workers, Note(IDLE, "b", ("celery",)))
    assert designate(workers, "celery") == {n: {"b"} for n in "abc"}


def test_a_newcomer_is_told_by_its_first_hello_only():
    old, new = Roster("a"), Roster("n")
    old.heard(Note(IDLE, "a", ("celery",)))
    assert old.heard(Note(HELLO, "n", ("celery",))).newcomer
    assert not old.heard(Note(HELLO, "n", ("celery",))).newcomer
    assert not new.heard(Note(HELLO, "n", ("celery",))).newcomer  # its own hello, heard back


def test_notes_travel_whole_whatever_the_queue_names_hold():
    note = Note(PASS, "w1", ("a;b", 'q"uote', "r1/2:3;x", "ünï"), {9: 12, 0: 3})
    payload = note.payload()
    assert payload is not None and payload.startswith("w")
    assert notifier.parse(payload) == note
    assert Note(IDLE, "w1", ("q" * NOTE_MAX,)).payload() is None  # too long for a NOTIFY: not sent


def test_malformed_notes_are_ignored():
    for text in ('{"k":"z","w":"a"}', '{"k":"i"}', '{"k":"i","w":1}', '{"k":"i","w":"a","q":"celery"}',
                 '{"k":"p","w":"a","f":{"x":1}}', "[1]", "not json"):
        assert parse_note(text) is None, text
    assert notifier.parse("w{broken") is None
