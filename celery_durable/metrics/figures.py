"""The figures the metrics view holds: each metric's label name and help text."""

from __future__ import annotations

PREFIX = "celery_durable"

#: metric (as the view names it) -> (label names, help text). Order is the exposition's.
FIGURES: dict[str, tuple[list[str], str]] = {
    "queue_depth": (["queue"], "Messages in the queue (ready, delayed and leased)."),
    "queue_ready": (["queue"], "Messages a worker may claim now."),
    "queue_delayed": (["queue"], "Messages waiting for their ETA or countdown in the table."),
    "queue_leased": (["queue"],
                     "Messages held by a live lease (prefetched, running, or waiting for an ETA in a worker)."),
    "queue_lease_expired": (["queue"], "Messages whose lease expired (their worker died or stalled); "
                                       "the next claim redelivers them."),
    "queue_redeliveries": (["queue"],
                           "Deliveries beyond the first of the messages now in the queue (expired leases, requeues)."),
    "queue_oldest_age_seconds": (["queue"], "Age of the oldest message in the queue (0 when empty)."),
    "queue_estimated": (["queue"], "1: the queue holds more than 10,000 messages and its figures are estimated "
                                   "from a sample of the table; 0: they are exact."),
    "dead_letters": (["queue"], "Dead letters kept, by the queue they came from."),
    "workflows": (["status"], "Durable workflows by status (finished ones until workflow_retention)."),
    "workflows_stalled": ([], "Running workflows with no progress for five minutes."),
    "message_dead_rows": ([], "Dead rows in the message table (acked messages VACUUM has not removed yet)."),
    "message_last_vacuum_timestamp_seconds": ([], "When the message table was last vacuumed (by autovacuum or not)."),
    "beat_lease_holder": (["holder"], "1 for the beat (host:pid) that holds the beat lease and sends periodic tasks; "
                                      "absent while none does."),
    "beat_lease_seconds_left": ([], "Seconds until the beat lease runs out unless renewed (negative: nobody holds it, "
                                    "no periodic task is sent)."),
    "beat_takeovers": ([], "Times a beat took the lease over from another (the holder died, stopped or stalled)."),
    "beat_entries": (["state"], "Periodic tasks in the schedule table, enabled or paused."),
    "beat_entries_overdue": ([], "Enabled periodic tasks whose next run is more than a minute late."),
    "beat_entries_failing": ([], "Periodic tasks the active beat cannot send (why: the error column of beat_entries)."),
}

#: The horizon's holders (not in the view: server-wide, read in the same transaction): suffix ->
#: (index in Reading.horizon's values, help text). Labels: kind, application_name.
HORIZON: dict[str, tuple[int, str]] = {
    "seconds": (0, "How long the oldest holder of each kind and application_name (a slot's name, a prepared "
                   "transaction's gid) has held the xmin horizon; where PostgreSQL does not tell the exporter's "
                   "role, since the exporter first saw it."),
    "xids": (1, "How many transactions old the xmin horizon held by the oldest holder of each kind and "
                "application_name is."),
}
