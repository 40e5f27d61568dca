"""Where claims start (transport/floors.py) and the wake-up payloads that move it (notifier.parse)."""

from celery_durable.transport import floors as f
from celery_durable.transport.delivery import _claim_statement
from celery_durable.transport.notifier import parse

CLAIM = {"lease": 30, "token": "t", "worker": "w"}


def claim(floors: f.Floors, queues: list[str], n: int, taken: list[tuple], snapshot: str | None = None):
    """One claim: the statement it sends, then what it found (rows of id, queue, priority) learnt."""
    plan = floors.plan(queues)
    sent = None if plan is None else _claim_statement(CLAIM, plan, n)
    if plan is not None:
        floors.learn(plan, n, [(i, q, p, 1, False, "{}") for i, q, p in taken], snapshot)
    return sent


def next_statement(floors: f.Floors, queues: list[str], n: int = 10):
    plan = floors.plan(queues)
    if plan is None:
        return None
    floors.abandon(plan)  # only looking: the queues are unknown again afterwards
    return _claim_statement(CLAIM, plan, n)


def drained(queues=("celery",)) -> f.Floors:
    floors = f.Floors()
    for queue in queues:
        assert claim(floors, [queue], 10, [])[0] == "message_claim_queue"
    return floors


def test_a_queue_never_heard_of_is_read_whole():
    name, params = claim(f.Floors(), ["celery"], 10, [])
    assert name == "message_claim_queue" and params["queue"] == "celery"


def test_a_drained_queue_is_claimed_from_where_the_wake_up_says():
    floors = drained()
    assert claim(floors, ["celery"], 10, []) is None  # nothing to read until told
    floors.hint("celery", {0: 900}, xid=7)
    name, params = claim(floors, ["celery"], 10, [(900, "celery", 0)])
    assert name == "message_claim_from" and (params["priority"], params["floor"]) == (0, 900)
    assert not floors.pending(["celery"])


def test_a_full_claim_moves_the_floor_past_its_last_row():
    floors = drained()
    floors.hint("celery", {0: 10})
    claim(floors, ["celery"], 3, [(10, "celery", 0), (11, "celery", 0), (14, "celery", 0)])
    assert floors.pending(["celery"])
    assert claim(floors, ["celery"], 3, [])[1]["floor"] == 15


def test_a_requeued_row_behind_the_floor_lowers_it():
    floors = drained()
    floors.hint("celery", {0: 50})
    floors.hint("celery", {0: 7})  # message_requeue: the row keeps its old id
    assert claim(floors, ["celery"], 10, [])[1]["floor"] == 7


def test_a_wake_up_during_a_claim_is_not_erased_by_its_result():
    floors = drained()
    floors.hint("celery", {0: 10})
    plan = floors.plan(["celery"])
    floors.hint("celery", {0: 20})  # committed after the claim's snapshot
    floors.learn(plan, 10, [(10, "celery", 0, 1, False, "{}")], None)  # the claim found only the first
    assert claim(floors, ["celery"], 10, [])[1]["floor"] == 20


def test_a_safety_poll_during_a_claim_still_reads_the_whole_queue_next():
    floors = drained()
    floors.hint("celery", {0: 10})
    plan = floors.plan(["celery"])
    floors.forget()  # the safety poll, while the claim is in flight
    floors.learn(plan, 1, [(10, "celery", 0, 1, False, "{}")], None)
    assert claim(floors, ["celery"], 10, [])[0] == "message_claim_queue"


def test_a_failed_claim_makes_its_queues_unknown():
    floors = drained()
    floors.hint("celery", {0: 10})
    floors.abandon(floors.plan(["celery"]))
    assert claim(floors, ["celery"], 10, [])[0] == "message_claim_queue"


def test_a_full_whole_queue_claim_leaves_lower_priorities_unknown():
    floors = f.Floors()
    claim(floors, ["celery"], 2, [(3, "celery", 9), (8, "celery", 9)])  # limit reached at priority 9
    assert claim(floors, ["celery"], 2, [])[0] == "message_claim_queue"  # priorities 0-8: not known
    assert claim(floors, ["celery"], 2, []) is None  # that one found nothing: all known, nothing ready


def test_a_full_whole_queue_claim_at_priority_zero_knows_the_whole_queue():
    floors = f.Floors()
    claim(floors, ["celery"], 2, [(3, "celery", 0), (8, "celery", 0)])
    name, params = claim(floors, ["celery"], 2, [])
    assert name == "message_claim_from" and (params["priority"], params["floor"]) == (0, 9)


def test_the_highest_priority_is_claimed_first_then_the_rest():
    floors = drained()
    floors.hint("celery", {0: 40, 9: 100})
    name, params = claim(floors, ["celery"], 2, [(100, "celery", 9)])
    assert name == "message_claim_from" and params["priority"] == 9
    assert floors.pending(["celery"])
    name, params = claim(floors, ["celery"], 2, [(40, "celery", 0)])
    assert (params["priority"], params["floor"]) == (0, 40)
    assert not floors.pending(["celery"])


def test_queues_claimed_together_take_the_oldest_floor_first():
    floors = drained(("a", "b"))
    floors.hint("b", {0: 6})
    floors.hint("a", {0: 5})
    assert claim(floors, ["a", "b"], 2, [(5, "a", 0)])[1]["queue"] == "a"
    assert claim(floors, ["a", "b"], 2, [])[1]["queue"] == "b"  # b's row 6 was locked by another worker
    assert next_statement(floors, ["a", "b"]) is None


def test_several_unknown_queues_are_read_whole_together():
    floors = drained(("a",))
    name, params = claim(floors, ["a", "b", "c"], 2, [])
    assert name == "message_claim" and params["queues"] == ["b", "c"]


def test_a_wake_up_the_last_claim_already_saw_moves_nothing_back():
    floors = f.Floors()
    claim(floors, ["celery"], 1, [], "100:105:102")  # saw 101, 103, 104; not 102 (running)
    floors.hint("celery", {0: 500}, xid=106)
    claim(floors, ["celery"], 10, [(500, "celery", 0)], "100:107:102")
    floors.hint("celery", {0: 40}, xid=104)  # read late: its rows were taken before
    assert claim(floors, ["celery"], 10, []) is None
    floors.hint("celery", {0: 30}, xid=102)  # committed after both claims: news
    assert claim(floors, ["celery"], 10, [])[1]["floor"] == 30


def test_a_claim_cut_by_its_limit_did_not_see_what_lies_past_it():
    floors = f.Floors()
    claim(floors, ["celery"], 1, [], "100:100:")
    floors.hint("celery", {0: 10}, xid=150)
    claim(floors, ["celery"], 2, [(10, "celery", 0), (11, "celery", 0)], "200:200:")
    floors.hint("celery", {0: 12}, xid=150)  # the same transaction's rows past the limit: still ahead
    assert claim(floors, ["celery"], 2, [])[1]["floor"] == 12


def test_a_long_burst_read_late_is_recognised_however_many_claims_it_took():
    floors = f.Floors()
    claim(floors, ["celery"], 1, [], "1000:1000:")
    floors.hint("celery", {0: 1}, xid=1)
    for start in range(1, 400, 4):  # 100 claims of 4, every row published before the first
        claim(floors, ["celery"], 4, [(i, "celery", 0) for i in range(start, start + 4)], f"{1000 + start}:{1000 + start}:")
    claim(floors, ["celery"], 4, [], "2000:2000:")
    for xid in range(2, 400):  # the burst's own wake-ups, read only now
        floors.hint("celery", {0: xid}, xid=xid)
    assert next_statement(floors, ["celery"]) is None


def test_wake_up_payloads():
    assert parse("r731/0:17;celery").first_ids == {0: 17} and parse("r731/0:17;celery").xid == 731
    assert parse("r5/9:3,0:1;a;b").first_ids == {9: 3, 0: 1} and parse("r5/9:3,0:1;a;b").queue == "a;b"
    old = parse("rcelery")  # an older publisher: where is not said, the whole queue is read
    assert old.queue == "celery" and old.first_ids is None
    assert parse("d1700000000.5:celery").at == 1700000000.5
