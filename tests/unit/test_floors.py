"""Where claims start (transport/floors.py) and the wake-up payloads that move it (notifier.parse)."""

from celery_durable.transport import floors as f
from celery_durable.transport.delivery import _claim_statement
from celery_durable.transport.notifier import parse

CLAIM = {"lease": 30, "token": "t", "worker": "w"}


def statement(floors: f.Floors, queues: list[str], n: int = 10):
    plan = floors.plan(queues)
    return plan, _claim_statement(CLAIM, plan, n)


def rows(*triples):
    """Claimed rows as the claim statements return them: id, queue, priority, ..."""
    return [(i, q, p, 1, False, "{}") for i, q, p in triples]


def test_a_queue_never_heard_of_is_read_whole():
    plan, (name, params) = statement(f.Floors(), ["celery"])
    assert name == "message_claim_queue" and params["queue"] == "celery"


def test_a_drained_queue_is_claimed_from_where_the_wake_up_says():
    floors = f.Floors()
    plan, _ = statement(floors, ["celery"])
    floors.learn(plan, 10, rows((5, "celery", 0)), None)  # fewer than asked: nothing else ready
    assert statement(floors, ["celery"])[1] is None  # nothing to read until told
    floors.hint("celery", {0: 900}, xid=7)
    plan, (name, params) = statement(floors, ["celery"])
    assert name == "message_claim_from" and (params["priority"], params["floor"]) == (0, 900)


def test_a_full_claim_moves_the_floor_past_its_last_row():
    floors = f.Floors()
    floors.learn(floors.plan(["celery"]), 1, [], None)
    floors.hint("celery", {0: 10})
    plan, _ = statement(floors, ["celery"], n=3)
    floors.learn(plan, 3, rows((10, "celery", 0), (11, "celery", 0), (14, "celery", 0)), None)
    assert statement(floors, ["celery"])[1][1]["floor"] == 15


def test_a_requeued_row_behind_the_floor_lowers_it():
    floors = f.Floors()
    floors.learn(floors.plan(["celery"]), 1, [], None)
    floors.hint("celery", {0: 50})
    floors.hint("celery", {0: 7})  # message_requeue: the row keeps its old id
    assert statement(floors, ["celery"])[1][1]["floor"] == 7


def test_a_wake_up_during_a_claim_is_not_erased_by_its_result():
    floors = f.Floors()
    floors.learn(floors.plan(["celery"]), 1, [], None)
    floors.hint("celery", {0: 10})
    plan, _ = statement(floors, ["celery"])
    floors.hint("celery", {0: 20})  # committed after the claim's snapshot
    floors.learn(plan, 10, rows((10, "celery", 0)), None)  # the claim found only the first
    assert statement(floors, ["celery"])[1][1]["floor"] == 20


def test_a_safety_poll_during_a_claim_still_reads_the_whole_queue_next():
    floors = f.Floors()
    floors.learn(floors.plan(["celery"]), 1, [], None)
    floors.hint("celery", {0: 10})
    plan, _ = statement(floors, ["celery"])
    floors.forget()  # the safety poll, while the claim is in flight
    floors.learn(plan, 1, rows((10, "celery", 0)), None)
    assert statement(floors, ["celery"])[1][0] == "message_claim_queue"


def test_a_failed_claim_makes_its_queues_unknown():
    floors = f.Floors()
    floors.learn(floors.plan(["celery"]), 1, [], None)
    floors.hint("celery", {0: 10})
    floors.abandon(floors.plan(["celery"]))
    assert statement(floors, ["celery"])[1][0] == "message_claim_queue"


def test_a_full_whole_queue_claim_leaves_lower_priorities_unknown():
    floors = f.Floors()
    plan, _ = statement(floors, ["celery"], n=2)
    floors.learn(plan, 2, rows((3, "celery", 9), (8, "celery", 9)), None)  # limit reached at priority 9
    plan, (name, params) = statement(floors, ["celery"], n=2)
    assert name == "message_claim"
    assert list(zip(params["queues"], params["priorities"], params["floors"])) == [("celery", 9, 9)]
    assert list(zip(params["scan_queues"], params["below"])) == [("celery", 9)]  # 0-8 still unknown


def test_higher_priorities_are_exhausted_once_a_lower_one_was_claimed():
    floors = f.Floors()
    floors.learn(floors.plan(["celery"]), 1, [], None)
    floors.hint("celery", {9: 100, 0: 40})
    plan, (name, params) = statement(floors, ["celery"], n=2)
    assert name == "message_claim" and sorted(params["priorities"]) == [0, 9]
    floors.learn(plan, 2, rows((100, "celery", 9), (40, "celery", 0)), None)
    name, params = statement(floors, ["celery"])[1]
    assert name == "message_claim_from" and (params["priority"], params["floor"]) == (0, 41)


def test_queues_claimed_together_keep_their_own_floors():
    floors = f.Floors()
    floors.learn(floors.plan(["a", "b"]), 1, [], None)
    floors.hint("a", {0: 5})
    floors.hint("b", {0: 6})
    plan, (name, params) = statement(floors, ["a", "b"], n=2)
    assert name == "message_claim"
    floors.learn(plan, 2, rows((5, "a", 0), (7, "a", 0)), None)  # b's row 6 was locked by another worker
    name, params = statement(floors, ["a", "b"], n=2)[1]
    assert dict(zip(params["queues"], params["floors"])) == {"a": 8, "b": 6}


def test_a_wake_up_the_last_claim_already_saw_moves_nothing_back():
    floors = f.Floors()
    floors.learn(floors.plan(["celery"]), 1, [], "100:105:102")  # saw 101, 103, 104; not 102 (running)
    floors.hint("celery", {0: 500}, xid=106)
    plan, _ = statement(floors, ["celery"])
    floors.learn(plan, 10, rows((500, "celery", 0)), "100:107:102")
    floors.hint("celery", {0: 40}, xid=104)  # read late: its rows were taken before
    assert statement(floors, ["celery"])[1] is None
    floors.hint("celery", {0: 30}, xid=102)  # committed after both claims: news
    assert statement(floors, ["celery"])[1][1]["floor"] == 30


def test_a_claim_cut_by_its_limit_did_not_see_what_lies_past_it():
    floors = f.Floors()
    floors.learn(floors.plan(["celery"]), 1, [], "100:100:")
    floors.hint("celery", {0: 10}, xid=99)
    plan, _ = statement(floors, ["celery"], n=2)
    floors.learn(plan, 2, rows((10, "celery", 0), (11, "celery", 0)), "100:100:")
    floors.hint("celery", {0: 12}, xid=99)  # the same transaction's rows past the limit: still ahead
    assert statement(floors, ["celery"])[1][1]["floor"] == 12


def test_wake_up_payloads():
    assert parse("r731/0:17;celery").first_ids == {0: 17} and parse("r731/0:17;celery").xid == 731
    assert parse("r5/9:3,0:1;a;b").first_ids == {9: 3, 0: 1} and parse("r5/9:3,0:1;a;b").queue == "a;b"
    assert parse("r5/-1:3;q").first_ids == {-1: 3}
    old = parse("rcelery")  # an older publisher: where is not said, the whole queue is read
    assert old.queue == "celery" and old.first_ids is None
    assert parse("d1700000000.5:celery").at == 1700000000.5
