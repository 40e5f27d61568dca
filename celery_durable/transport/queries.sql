-- Named queries of the Kombu transport. {schema} is the configured schema.
-- Every value is a parameter; no identifier is ever built from a queue,
-- exchange or routing-key string.

-- queue_declare --
-- Create a queue, or mark an existing one as used (keeps expiring queues alive).
INSERT INTO {schema}.queue AS q (name, durable, auto_delete, expires_ms, message_ttl_ms, max_priority)
VALUES (%(name)s, %(durable)s, %(auto_delete)s, %(expires_ms)s, %(message_ttl_ms)s, %(max_priority)s)
ON CONFLICT (name) DO UPDATE SET last_used_at = now()

-- queue_exists --
-- Passive declare: does the queue exist?
SELECT 1 FROM {schema}.queue WHERE name = %(name)s

-- queue_delete --
-- Delete a queue with its messages and bindings.
WITH gone AS (DELETE FROM {schema}.message WHERE queue = %(name)s)
DELETE FROM {schema}.queue WHERE name = %(name)s

-- queue_touch --
-- A consumer is alive: expiring and auto-delete queues it reads are in use.
UPDATE {schema}.queue SET last_used_at = now()
WHERE name = ANY(%(names)s) AND (expires_ms IS NOT NULL OR auto_delete)

-- queue_expire_messages --
-- Maintenance: a batch of the messages of expired queues (unused for longer than their x-expires,
-- at least a minute so a touch every lease/3 always arrives in time; auto-delete queues without
-- x-expires after ten minutes). Rows others hold are skipped.
DELETE FROM {schema}.message
WHERE id IN (
    SELECT m.id
    FROM {schema}.queue q
    JOIN {schema}.message m ON m.queue = q.name
    WHERE (q.expires_ms IS NOT NULL
           AND q.last_used_at < now() - greatest(q.expires_ms, 60000) * interval '1 millisecond')
       OR (q.expires_ms IS NULL AND q.auto_delete AND q.last_used_at < now() - interval '10 minutes')
    LIMIT %(limit)s
    FOR UPDATE OF m SKIP LOCKED
)

-- queue_expire --
-- Maintenance: drop a batch of expired queues whose messages are gone (bindings go by cascade).
DELETE FROM {schema}.queue
WHERE name IN (
    SELECT q.name
    FROM {schema}.queue q
    WHERE ((q.expires_ms IS NOT NULL
            AND q.last_used_at < now() - greatest(q.expires_ms, 60000) * interval '1 millisecond')
           OR (q.expires_ms IS NULL AND q.auto_delete AND q.last_used_at < now() - interval '10 minutes'))
      AND NOT EXISTS (SELECT 1 FROM {schema}.message m WHERE m.queue = q.name)
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)

-- exchange_declare --
-- Create an exchange; redeclaring is a no-op.
INSERT INTO {schema}.exchange (name, type, durable, auto_delete)
VALUES (%(name)s, %(type)s, %(durable)s, %(auto_delete)s)
ON CONFLICT (name) DO NOTHING

-- exchange_type --
-- Type of an exchange declared by any process (passive declare, routing decisions).
SELECT type FROM {schema}.exchange WHERE name = %(name)s

-- exchange_delete --
-- Delete an exchange and its bindings.
WITH unbound AS (DELETE FROM {schema}.binding WHERE exchange = %(name)s)
DELETE FROM {schema}.exchange WHERE name = %(name)s

-- binding_declare --
-- Bind a queue (created if missing) to an exchange; pattern is the topic regex.
WITH q AS (
    INSERT INTO {schema}.queue (name) VALUES (%(queue)s) ON CONFLICT (name) DO NOTHING
)
INSERT INTO {schema}.binding (exchange, routing_key, queue, pattern)
VALUES (%(exchange)s, %(routing_key)s, %(queue)s, %(pattern)s)
ON CONFLICT (exchange, routing_key, queue) DO NOTHING

-- binding_delete --
-- Remove one binding.
DELETE FROM {schema}.binding
WHERE exchange = %(exchange)s AND routing_key = %(routing_key)s AND queue = %(queue)s

-- binding_list --
-- Every binding, for Kombu's management API.
SELECT queue, exchange, routing_key FROM {schema}.binding ORDER BY exchange, routing_key, queue

-- binding_route --
-- The queues message_route stores a message in, without storing it (the same routing; keep the two in
-- step): durable migrate-from leaves a message that reaches none here on the old broker.
SELECT DISTINCT b.queue
FROM {schema}.binding b
JOIN {schema}.exchange e ON e.name = b.exchange
JOIN {schema}.queue q ON q.name = b.queue
WHERE b.exchange = %(exchange)s
  AND (e.type = 'fanout'
       OR (e.type = 'direct' AND b.routing_key = %(routing_key)s)
       OR (e.type = 'topic' AND %(routing_key)s ~ b.pattern))

-- message_route --
-- Publish through an exchange: route against the shared bindings in one statement. Every queue
-- gets a row (expiry: the earlier of the message's and the queue's TTL; priority: at most the
-- queue's x-max-priority), except transient
-- (auto-delete or non-durable) queues of Celery's broadcast exchanges (%(broadcast)s: remote
-- control, events, gossip), which get the message by NOTIFY, like Redis pub/sub, when it fits.
WITH target AS (
    SELECT DISTINCT ON (b.queue) b.queue, q.message_ttl_ms, q.max_priority,
           (%(broadcast)s AND e.type <> 'direct' AND (q.auto_delete OR NOT q.durable)
            AND octet_length(%(payload)s) <= %(notify_max)s) AS by_notify
    FROM {schema}.binding b
    JOIN {schema}.exchange e ON e.name = b.exchange
    JOIN {schema}.queue q ON q.name = b.queue
    WHERE b.exchange = %(exchange)s
      AND (e.type = 'fanout'
           OR (e.type = 'direct' AND b.routing_key = %(routing_key)s)
           OR (e.type = 'topic' AND %(routing_key)s ~ b.pattern))
),
stored AS (
    INSERT INTO {schema}.message (queue, priority, visible_at, expires_at, task, payload)
    SELECT t.queue, least(%(priority)s, coalesce(t.max_priority, %(priority)s)), coalesce(%(visible_at)s, now()),
           least(%(expires_at)s, now() + t.message_ttl_ms * interval '1 millisecond'),
           %(task)s, %(payload)s
    FROM target t WHERE NOT t.by_notify
    RETURNING queue
)
SELECT count(pg_notify(%(channel)s, 'm' || octet_length(t.queue) || ':' || t.queue || %(payload)s))
FROM target t WHERE t.by_notify

-- message_put --
-- Publish straight to a queue (the default exchange: routing key = queue name). The queue's
-- x-message-ttl bounds the expiry, its x-max-priority the priority (as RabbitMQ does).
INSERT INTO {schema}.message (queue, priority, visible_at, expires_at, task, payload)
SELECT %(queue)s, least(%(priority)s, coalesce(q.max_priority, %(priority)s)), coalesce(%(visible_at)s, now()),
       least(%(expires_at)s, now() + q.message_ttl_ms * interval '1 millisecond'),
       %(task)s, %(payload)s
FROM (VALUES (1)) AS one
LEFT JOIN {schema}.queue q ON q.name = %(queue)s
RETURNING queue

-- message_wake_after_commit --
-- For this transaction only: the trigger stashes wake-ups for message_wake instead of NOTIFYing.
SELECT set_config('celery_durable.wake_after_commit', 'on', true)

-- message_wake --
-- After a publish's commit, in a transaction of its own: send the stashed wake-ups. Nothing here
-- needs the WAL flush, so PostgreSQL's NOTIFY lock is held only for an instant.
SELECT set_config('synchronous_commit', 'off', true), {schema}.message_wake_v1()

-- message_claim_queue --
-- Lease up to n visible messages of one queue, the whole queue in index order (priority, then age),
-- skipping rows another worker is claiming: a worker's first claim, and its safety poll, which finds
-- what no wake-up announced (a dead worker's expired lease, a delayed message come due). It walks every
-- dead, leased and delayed row ahead of the first ready one; claims after a wake-up start where it
-- says (message_claim_from). A lease is visible_at in the future plus a fresh token; delivery_count
-- counts claims for the dead-letter limit. Every claim also returns its snapshot (one row of NULLs and
-- the snapshot when it took nothing): a wake-up from a transaction it saw tells of rows it already
-- read; so a row is due by the clock after that snapshot was taken, not by the transaction's start
-- (now()), which a row committed just before the snapshot may postdate. (A claim's transaction allows
-- neither a sequential scan nor a bitmap, delivery.CLAIM_SETTINGS: a cached plan must never come to
-- scan a backlog.)
WITH claimed AS (
    UPDATE {schema}.message m
    SET visible_at = now() + %(lease)s * interval '1 second',
        lease_token = %(token)s,
        leased_by = %(worker)s,
        delivery_count = m.delivery_count + 1
    WHERE m.ctid = ANY(ARRAY(
        SELECT c.ctid FROM {schema}.message c
        WHERE c.queue = %(queue)s AND c.visible_at <= (SELECT clock_timestamp())
        ORDER BY c.priority DESC, c.id
        LIMIT %(n)s
        FOR UPDATE SKIP LOCKED))
    RETURNING m.id, m.queue, m.priority, m.delivery_count, m.expires_at <= now() AS expired, m.payload
)
SELECT c.id, c.queue, c.priority, c.delivery_count, c.expired, c.payload, s.snapshot
FROM (SELECT pg_current_snapshot()::text AS snapshot) AS s
LEFT JOIN claimed AS c ON true

-- message_claim_from --
-- The usual claim: one queue and priority, from the first id a wake-up announced (or just past the
-- last claimed row). The index descends straight to it, past the rows acked, leased or delayed
-- before it, however many a held snapshot keeps from VACUUM. One floor per statement: with several
-- (from unnest), PostgreSQL plans the reads over the primary key and fetches every row past them.
WITH claimed AS (
    UPDATE {schema}.message m
    SET visible_at = now() + %(lease)s * interval '1 second',
        lease_token = %(token)s,
        leased_by = %(worker)s,
        delivery_count = m.delivery_count + 1
    WHERE m.ctid = ANY(ARRAY(
        SELECT c.ctid FROM {schema}.message c
        WHERE c.queue = %(queue)s AND c.priority = %(priority)s AND c.id >= %(floor)s AND c.visible_at <= (SELECT clock_timestamp())
        ORDER BY c.id
        LIMIT %(n)s
        FOR UPDATE SKIP LOCKED))
    RETURNING m.id, m.queue, m.priority, m.delivery_count, m.expires_at <= now() AS expired, m.payload
)
SELECT c.id, c.queue, c.priority, c.delivery_count, c.expired, c.payload, s.snapshot
FROM (SELECT pg_current_snapshot()::text AS snapshot) AS s
LEFT JOIN claimed AS c ON true

-- message_claim --
-- message_claim_queue for several queues: per queue in index order, together in claim order (priority,
-- then age), up to n.
WITH candidate AS (
    SELECT c.ctid
    FROM unnest(%(queues)s::text[]) AS q(name)
    CROSS JOIN LATERAL (
        SELECT m.ctid, m.id, m.priority
        FROM {schema}.message m
        WHERE m.queue = q.name AND m.visible_at <= (SELECT clock_timestamp())
        ORDER BY m.priority DESC, m.id
        LIMIT %(n)s
        FOR UPDATE SKIP LOCKED
    ) AS c
    ORDER BY c.priority DESC, c.id
    LIMIT %(n)s
),
claimed AS (
    UPDATE {schema}.message m
    SET visible_at = now() + %(lease)s * interval '1 second',
        lease_token = %(token)s,
        leased_by = %(worker)s,
        delivery_count = m.delivery_count + 1
    WHERE m.ctid = ANY(ARRAY(SELECT ctid FROM candidate))
    RETURNING m.id, m.queue, m.priority, m.delivery_count, m.expires_at <= now() AS expired, m.payload
)
SELECT c.id, c.queue, c.priority, c.delivery_count, c.expired, c.payload, s.snapshot
FROM (SELECT pg_current_snapshot()::text AS snapshot) AS s
LEFT JOIN claimed AS c ON true

-- message_held --
-- The rows of the given ids that these lease tokens still hold (fencing), locked in id order so no two
-- statements on held rows deadlock; their ctids, for a TID scan. Included by every statement on held rows.
SELECT m.ctid
FROM {schema}.message m
JOIN unnest(%(ids)s::bigint[], %(tokens)s::uuid[]) AS a(id, token) ON m.id = a.id AND m.lease_token = a.token
WHERE m.id = ANY(%(ids)s::bigint[])
ORDER BY m.id
FOR UPDATE OF m

-- message_ack --
-- Delete acknowledged messages, but only rows this lease still holds (message_held, which locks them in
-- id order); then it changes the rows it locked by their ctid (a TID scan). Statistics say the table is empty when a
-- held snapshot has left only dead rows in it, however many pages they fill, and PostgreSQL then
-- plans any other way to find them (a join, an index on id) as a full index scan.
WITH held AS ({@message_held})
DELETE FROM {schema}.message m
WHERE m.ctid = ANY(ARRAY(SELECT ctid FROM held))
RETURNING m.id

-- message_requeue --
-- Make held messages visible again now and wake consumers, telling them where each priority's
-- requeued rows start (they keep their ids, behind where claims have moved on); a graceful restore
-- (restored = 1) does not count as a delivery. Rows are locked in id order.
WITH held AS ({@message_held}),
requeued AS (
    UPDATE {schema}.message m
    SET visible_at = now(), lease_token = NULL, leased_by = NULL,
        delivery_count = greatest(m.delivery_count - %(restored)s, 0)
    WHERE m.ctid = ANY(ARRAY(SELECT ctid FROM held))
    RETURNING m.id, m.queue, m.priority
)
SELECT pg_notify(%(channel)s, 'r' || pg_current_xact_id() || '/'
                              || string_agg(r.priority || ':' || r.first_id, ',' ORDER BY r.priority DESC)
                              || ';' || r.queue)
FROM (SELECT queue, priority, min(id) AS first_id FROM requeued GROUP BY queue, priority) AS r
GROUP BY r.queue

-- message_dead_letter --
-- Move held messages to the dead-letter table with a reason, in one statement; rows are locked
-- in id order.
WITH held AS ({@message_held}),
moved AS (
    DELETE FROM {schema}.message m
    WHERE m.ctid = ANY(ARRAY(SELECT ctid FROM held))
    RETURNING m.*
)
INSERT INTO {schema}.dead_letter (id, queue, task, reason, delivery_count, payload, created_at)
SELECT id, queue, task, %(reason)s, delivery_count, payload, created_at FROM moved

-- lease_renew --
-- Extend the leases this worker still holds; rows missing from the result were acked
-- elsewhere or lost. Rows are locked in id order (claim order differs from ack order).
WITH held AS ({@message_held})
UPDATE {schema}.message m
SET visible_at = now() + %(lease)s * interval '1 second'
WHERE m.ctid = ANY(ARRAY(SELECT ctid FROM held))
RETURNING m.id

-- message_count --
-- Queue size as AMQP reports it: messages not held by a live lease.
SELECT count(*) FROM {schema}.message
WHERE queue = %(queue)s AND (lease_token IS NULL OR visible_at <= now())

-- message_purge --
-- Remove every message of a queue that no live lease holds, except durable workflow steps (their
-- workflow would stall for good; cancel it instead); returns how many. Rows another statement has
-- locked are in use (being claimed or acked) and stay: purge never waits for them. The step
-- header's name (headers.STEP_HEADER) as a JSON key only appears unescaped in a step's headers.
WITH purged AS (
    DELETE FROM {schema}.message
    WHERE id IN (SELECT id FROM {schema}.message
                 WHERE queue = %(queue)s AND (lease_token IS NULL OR visible_at <= now())
                   AND strpos(payload, '"celery_durable_step"') = 0
                 FOR UPDATE SKIP LOCKED)
    RETURNING 1
)
SELECT count(*) FROM purged

-- message_expire --
-- Maintenance: a batch of messages whose TTL passed and that no live lease holds.
DELETE FROM {schema}.message
WHERE id IN (
    SELECT id FROM {schema}.message
    WHERE expires_at < now() AND (lease_token IS NULL OR visible_at <= now())
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)

-- dead_letter_expire --
-- Maintenance: a batch of dead letters older than the retention.
DELETE FROM {schema}.dead_letter
WHERE id IN (
    SELECT id FROM {schema}.dead_letter
    WHERE dead_at < now() - %(retention)s * interval '1 second'
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)

-- dead_letter_chosen --
-- The dead letters an operator chose, included by dead_letter_list, _purge and _take: those named
-- (NULL: every one) of one queue (NULL: any).
(%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)

-- dead_letter_list --
-- The chosen dead letters (dead_letter_chosen) in id order.
SELECT id, queue, task, reason, delivery_count, dead_at
FROM {schema}.dead_letter
WHERE {@dead_letter_chosen}
ORDER BY id
LIMIT %(limit)s

-- dead_letter_purge --
-- Delete the chosen dead letters (dead_letter_chosen).
DELETE FROM {schema}.dead_letter
WHERE {@dead_letter_chosen}
RETURNING id

-- dead_letter_take --
-- A requeue's first step: remove the chosen dead letters (dead_letter_chosen), returning what goes back.
DELETE FROM {schema}.dead_letter
WHERE {@dead_letter_chosen}
RETURNING id, queue, task, payload, created_at

-- message_restore --
-- A requeue's second step, in the same transaction: a dead letter back in its queue (created again if
-- it expired meanwhile) as a message never delivered; the insert trigger wakes the workers.
WITH q AS (
    INSERT INTO {schema}.queue (name) VALUES (%(queue)s) ON CONFLICT (name) DO NOTHING
)
INSERT INTO {schema}.message (queue, priority, task, payload, created_at)
VALUES (%(queue)s, %(priority)s, %(task)s, %(payload)s, %(created_at)s)
RETURNING id

-- autovacuum_enabled --
-- Whether the server vacuums by itself; when it does not, workers vacuum the message table.
SELECT current_setting('autovacuum') = 'on'

-- message_vacuum_needed --
-- Whether acks left enough dead rows behind to vacuum, so an idle worker sends this one query, not
-- a VACUUM. (Not autovacuum's scale factor: behind a large backlog it lets a great many dead rows
-- pile up.)
SELECT s.n_dead_tup >= 1000
FROM pg_stat_user_tables s
WHERE s.relid = %(table)s::regclass

-- message_vacuum --
-- Reclaim the dead rows acks leave behind, so a busy queue's table stays the same size. One worker
-- at a time: VACUUM's own table lock conflicts with itself, and SKIP_LOCKED makes the others move on.
-- (No advisory lock: VACUUM cannot run in a transaction, and a session lock would stay behind on a
-- server session when PgBouncer sends the unlock elsewhere.)
VACUUM (ANALYZE, SKIP_LOCKED) {schema}.message

-- worker_note --
-- A worker's note to the others on the wake-up channel (transport/roster.py): it rides in a round trip
-- the worker makes anyway, and reaches every listener in commit order with the wake-ups.
SELECT pg_notify(%(channel)s, %(payload)s)
