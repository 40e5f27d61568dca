"""A publish inside `transaction.atomic()` joins Django's transaction: rollback sends nothing,
commit sends once, savepoints are honoured, `delay_on_commit()` is transactional, and a setting
turns it off. A real worker runs what was sent; the broker is looked at from another connection."""

from __future__ import annotations

import time

import pytest
from celery import chord
from django.db import connection, transaction
from django.test import override_settings

from celery_durable import durable_chain
from celery_durable.compat import HAS_DJANGO_TASK

from .proj.shop.models import Execution, Order
from .proj.shop.tasks import (add, collect, delay_in_atomic, fail_in_atomic, grow_chord_in_atomic, record,
                              replace_in_atomic, retry_in_atomic)

pytestmark = pytest.mark.django_db(transaction=True)
TASK = "tests.ecosystem.dj.proj.shop.tasks.record"


def runs(tag: str) -> int:
    return Execution.objects.filter(tag=tag).count()


def wait_runs(tag: str, n: int = 1, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while runs(tag) < n:
        assert time.monotonic() < deadline, f"{tag} did not run {n} time(s)"
        time.sleep(0.05)


def settle() -> None:
    """Send a sentinel and wait for it: the worker takes messages in order, so whatever was
    committed before it has run by then."""
    tag = f"sentinel-{time.monotonic_ns()}"
    record.delay(tag)
    wait_runs(tag)


def test_rollback_sends_nothing(worker, broker):
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            Order.objects.create(number=1)
            record.delay("rolled-back")
            assert broker.messages(TASK) == 0  # not visible outside the transaction
            raise RuntimeError("the order fails")
    assert broker.messages(TASK) == 0
    settle()
    assert runs("rolled-back") == 0
    assert not Order.objects.exists()


def test_commit_sends_once_and_is_visible_only_at_commit(worker, broker):
    with transaction.atomic():
        Order.objects.create(number=2)
        result = record.delay("committed")
        with connection.cursor() as cursor:  # the message is a row of this very transaction
            cursor.execute(f'SELECT count(*) FROM "{broker_schema()}".message WHERE task = %s', [TASK])
            assert cursor.fetchone()[0] == 1
        assert broker.messages(TASK) == 0
    assert result.get(timeout=60) == "committed"
    settle()
    assert runs("committed") == 1


def test_nested_atomic_blocks_follow_their_savepoints(worker, broker):
    with transaction.atomic():
        record.delay("outer")
        try:
            with transaction.atomic():
                record.delay("inner-rolled-back")
                raise ValueError("inner block fails")
        except ValueError:
            pass
        with transaction.atomic():
            record.delay("inner-kept")
        assert broker.messages(TASK) == 0
    settle()
    assert (runs("outer"), runs("inner-rolled-back"), runs("inner-kept")) == (1, 0, 1)


@pytest.mark.skipif(not HAS_DJANGO_TASK, reason="Celery 5.3 has no delay_on_commit (DjangoTask came in 5.4)")
def test_delay_on_commit_publishes_inside_the_transaction(worker, broker):
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            record.delay_on_commit("on-commit-rolled-back")
            raise RuntimeError("rolled back")
    with transaction.atomic():
        assert record.delay_on_commit("on-commit") is None
        with connection.cursor() as cursor:  # published now, in the transaction: not left to on_commit
            cursor.execute(f'SELECT count(*) FROM "{broker_schema()}".message WHERE task = %s', [TASK])
            assert cursor.fetchone()[0] == 1
        assert not connection.run_on_commit
    settle()
    assert (runs("on-commit"), runs("on-commit-rolled-back")) == (1, 0)


def test_setting_off_publishes_on_its_own(worker, broker):
    with override_settings(CELERY_DURABLE_JOIN_ATOMIC=False):
        with pytest.raises(RuntimeError):
            with transaction.atomic():
                record.delay("not-joined")  # committed at once, outside the block
                raise RuntimeError("rolled back")
    wait_runs("not-joined")  # ran although the block rolled back


def test_outside_atomic_nothing_changes(worker, broker):
    record.delay("autocommit")
    wait_runs("autocommit")


def broker_schema() -> str:
    from .conftest import SCHEMA

    return SCHEMA


# -- Celery's publishes on a task's behalf never join the task's atomic block (issue 18 §1) --------
# Each task below runs its body in `with transaction.atomic():` on the broker's database, in a real
# worker; the block rolls back when retry()/replace() raise, or when the body raises after
# add_to_chord(). What Celery published on the task's behalf must survive that.

def test_retry_inside_atomic_runs_the_second_attempt(worker):
    result = retry_in_atomic.delay("retry")
    assert result.get(timeout=30) == 1  # the second attempt's return value
    assert (runs("retry:attempt0"), runs("retry:attempt1")) == (1, 1)
    assert list(Order.objects.values_list("number", flat=True)) == [1]  # the first block rolled back


def test_replace_inside_atomic_runs_the_replacement(worker):
    result = replace_in_atomic.delay("replace")
    assert result.get(timeout=30) == "replace:replacement"
    assert (runs("replace:attempt0"), runs("replace:replacement")) == (1, 1)
    assert not Order.objects.exists()


def test_add_to_chord_inside_a_rolled_back_block_still_completes_the_chord(worker):
    result = chord([grow_chord_in_atomic.s("grow"), record.si("member")], collect.s()).delay()
    assert {"grow", "member"} <= set(result.get(timeout=30))
    assert runs("grow:added") == 1


def test_a_durable_step_retrying_inside_atomic(worker):
    wf = durable_chain(retry_in_atomic.si("durable"), add.s(10)).apply_async()
    assert wf.get(timeout=30) == 11
    assert (runs("durable:attempt0"), runs("durable:attempt1")) == (1, 1)


def test_guard_the_tasks_own_delay_inside_atomic_rolls_back_with_the_block(worker):
    """Guard (passed before the change too): the rule keeps the task's own publishes joined."""
    assert delay_in_atomic.delay("own-rolled-back", True).get(timeout=60) == "own-rolled-back"
    assert delay_in_atomic.delay("own-kept", False).get(timeout=60) == "own-kept"
    wait_runs("own-kept:inner")
    settle()
    assert runs("own-rolled-back:inner") == 0


def test_guard_link_chord_and_errback_sent_from_an_atomic_block(worker):
    """Guard (passed before too): a chord, a link and a link_error sent inside a block follow the
    block, and the worker sends what they call back on its own, after the task's body (and its
    own atomic block) ended."""
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            chord([record.si("chord-rolled-back")], collect.s()).delay()
            record.apply_async(("link-rolled-back",), link=record.si("link-rolled-back:cb"))
            raise RuntimeError("rolled back")
    with transaction.atomic():
        fan_in = chord([record.si("chord-a"), record.si("chord-b")], collect.s()).delay()
        record.apply_async(("linked",), link=record.si("linked:cb"))
        fail_in_atomic.apply_async(("failing",), link_error=record.si("failing:errback"))
    assert fan_in.get(timeout=60) == ["chord-a", "chord-b"]
    wait_runs("linked:cb")
    wait_runs("failing:errback")
    settle()
    assert (runs("chord-rolled-back"), runs("link-rolled-back"), runs("link-rolled-back:cb")) == (0, 0, 0)
    assert not Order.objects.exists()
