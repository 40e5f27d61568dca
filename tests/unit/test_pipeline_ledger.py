"""Pipelined publishes' bookkeeping without a server: the ledger of refusals, placeholders (no database needed)."""

from __future__ import annotations

from celery_durable.transport import pipeline


def test_refusals_of_closed_pipelines_are_given_out_once():
    ledger = pipeline.Ledger()
    one, two = object(), object()
    ledger.add(one)
    ledger.add(two)
    ledger.remove(one, [("t1", "23505: duplicate")], more=2)
    live, refused, more = ledger.take()
    assert live == [two] and refused == [("t1", "23505: duplicate")] and more == 2
    assert ledger.take() == ([two], [], 0)


def test_refusals_past_the_kept_number_are_counted_not_kept():
    ledger = pipeline.Ledger()
    failed = [(f"t{i}", "refused") for i in range(pipeline.FAILED_KEPT + 5)]
    ledger.remove(object(), failed[:10])
    ledger.remove(object(), failed[10:], more=1)
    _, refused, more = ledger.take()
    assert refused == failed[:pipeline.FAILED_KEPT] and more == 5 + 1


def test_named_placeholders_become_numbered_ones_each_name_once():
    sql, names = pipeline.positional("SELECT %(a)s, %(b)s, %(a)s, '100%%'")
    assert sql == b"SELECT $1, $2, $1, '100%'" and names == ["a", "b"]
