"""Maintenance never delays lease renewal, and clears a large backlog in bounded batches.

Executions are counted in ``<schema>.executions`` by the tasks themselves;
every wait has a deadline.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from tests.apps.transport_app import wait_for

#: Expired messages and old dead letters waiting for maintenance.
BACKLOG = 100_000


def test_long_task_is_delivered_once_while_maintenance_clears_a_large_backlog(h):
    """Lease 2 s, task 6 s, two workers, and maintenance with a large backlog that it cannot finish at once.

    An operator's open transaction holds one expired row. The keeper used to run maintenance
    itself: its DELETE waited behind that row, no lease was renewed meanwhile, and the second
    worker received the running task. Now maintenance has its own thread, skips rows others
    hold, and the task runs once.
    """
    h.configure(CELERY_DURABLE_MAINTENANCE="1")
    h.q("INSERT INTO {s}.message (queue, expires_at, payload) "
        "SELECT 'expired', now() - interval '1 hour', repeat('x', 200) FROM generate_series(1, %s)", BACKLOG)
    h.q("INSERT INTO {s}.dead_letter (id, queue, reason, delivery_count, payload, created_at, dead_at) "
        "SELECT -g, 'old', 'test backlog', 1, '{{}}', now(), now() - interval '30 days' "
        "FROM generate_series(1, %s) AS g", BACKLOG)
    operator = psycopg.connect(h.url)  # a transaction left open, holding one expired row
    operator.execute(sql.SQL("SELECT id FROM {}.message WHERE queue = 'expired' ORDER BY id LIMIT 1 FOR UPDATE")
                     .format(sql.Identifier(h.schema)))
    try:
        h.start("-n", "w1@%h", concurrency=1)
        h.task("record_late").delay("long", sleep=6)
        wait_for(lambda: h.executions_of("long") >= 1, 60, "the long task to start")
        h.start("-n", "w2@%h", concurrency=1)
        # Either the task's message is acked, or a second execution shows up first.
        wait_for(lambda: h.messages("celery") == 0 or h.executions_of("long") > 1, 90,
                 "the long task to be acked")
        assert h.executions_of("long") == 1
        assert h.redelivered() == 0
        # The backlog goes in batches around the row the operator holds.
        wait_for(lambda: h.messages("expired") == 1, 90, f"the expired messages to go (at {h.messages('expired')})")
        wait_for(lambda: h.one("SELECT count(*) FROM {s}.dead_letter") == 0, 90, "the old dead letters to go")
    finally:
        operator.close()
