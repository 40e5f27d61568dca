"""Wake-up payloads read from NOTIFY (no database needed).

A payload read wrongly wakes the wrong queue: the worker consuming the right one waits for its safety
poll (`polling_interval`), or a broadcast (remote control) never arrives. The basic forms of ``r`` and
``d`` are also in test_floors.py; here every kind, queue names with the separators in them, and what is
malformed.
"""

from __future__ import annotations

import json
import logging

import pytest

from celery_durable.transport.notifier import Wakeup, parse


@pytest.mark.parametrize("queue", ["celery", "a;b", "a:b", "it's \"q\"", "files/2024:03;x", "10/0:5", "é☃"])
def test_ready_with_where_its_rows_start(queue):
    """``r<xid>/<prio>:<first id>[,...];<queue>``: only the first ';' ends the head, the rest is the queue."""
    assert parse(f"r731/9:3,0:17,-2:40;{queue}") == Wakeup(queue, first_ids={9: 3, 0: 17, -2: 40}, xid=731)


@pytest.mark.parametrize("queue", ["celery", "a;b", "a:b", "it's \"q\"", "10/0:5"])
def test_ready_from_an_older_publisher_names_only_the_queue(queue):
    """``r<queue>`` (before the first ids were sent): the whole queue is read, nothing is lost."""
    assert parse(f"r{queue}") == Wakeup(queue)


@pytest.mark.parametrize("head", ["731/0:", "731/:1", "/0:1", "x/0:1", "731/0:1,", "731/0:1:2"])
def test_a_head_that_is_not_first_ids_is_read_as_an_older_queue_name(head):
    """Never a wrong floor: without a well-formed head the payload is taken whole as a queue name."""
    assert parse(f"r{head};celery") == Wakeup(f"{head};celery")


@pytest.mark.parametrize("queue", ["celery", "a:b", "a;b", "it's \"q\"", "café", "☃:☃"])
def test_an_inline_broadcast_splits_at_the_queue_names_size_in_bytes(queue):
    """``m<size>:<queue><message>``: PostgreSQL's octet_length, so a multibyte name must not cut the message."""
    message = json.dumps({"body": "é ☃ 🐍", "headers": {"a": 1}}, ensure_ascii=False)
    found = parse(f"m{len(queue.encode())}:{queue}{message}")
    assert found == Wakeup(queue, message=message)
    assert json.loads(found.message)["body"] == "é ☃ 🐍"


def test_an_inline_broadcast_with_an_empty_message():
    assert parse("m6:celery") == Wakeup("celery", message="")


@pytest.mark.parametrize("queue", ["celery", "a:b", "a;b", "it's \"q\""])
def test_delayed_says_when_the_first_message_comes_due(queue):
    """``d<epoch>:<queue>``: the worker sets a timer for it instead of polling."""
    assert parse(f"d1700000000.25:{queue}") == Wakeup(queue, at=1700000000.25)
    assert parse(f"d1700000000:{queue}").at == 1700000000.0


@pytest.mark.parametrize("payload", [
    "", "x", "xcelery", "m", "m:celery", "mx:celery", "m-1:celery", "m6celery", "d", "dsoon:celery",
    "d1700000000", "d:celery",
])
def test_malformed_payloads_are_ignored_with_a_warning(payload, caplog):
    """A payload from another version or another writer on the channel must not stop the worker."""
    with caplog.at_level(logging.WARNING, logger="celery_durable.transport.notifier"):
        assert parse(payload) is None
    assert [r.getMessage() for r in caplog.records] == [f"ignoring malformed notification payload {payload!r}"]


def test_the_warning_shows_at_most_100_characters_of_a_payload(caplog):
    with caplog.at_level(logging.WARNING, logger="celery_durable.transport.notifier"):
        assert parse("z" + "y" * 7000) is None
    assert caplog.records[0].getMessage() == f"ignoring malformed notification payload {'z' + 'y' * 99!r}"
