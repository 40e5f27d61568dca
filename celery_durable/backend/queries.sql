-- Named queries of the result backend. {schema} is the quoted schema name.
-- %(channel)s is the task's own NOTIFY channel (notify.channel): a string for pg_notify.

-- result_store --
-- The upsert of a task's state, included by result_upsert and result_upsert_chord_part. A stored
-- SUCCESS wins over late duplicates (as Celery's key-value backends do); a chord header part
-- (%(chord_id)s set) also stores its place in the header, its result's only copy, which a store
-- of another run's part replaces. Other stores (%(chord_id)s null) leave the place as it is.
INSERT INTO {schema}.result AS r
    (task_id, status, name, worker, queue, retries, content_type, content_encoding, meta, date_done, expires_at,
     chord_id, chord_index)
VALUES (%(task_id)s, %(status)s, %(name)s, %(worker)s, %(queue)s, %(retries)s,
        %(content_type)s, %(content_encoding)s, %(meta)s,
        CASE WHEN %(ready)s THEN now() END,
        now() + make_interval(secs => %(expires)s::float8),
        %(chord_id)s, %(chord_index)s)
ON CONFLICT (task_id) DO UPDATE
    SET status = EXCLUDED.status,
        name = coalesce(EXCLUDED.name, r.name),
        worker = coalesce(EXCLUDED.worker, r.worker),
        queue = coalesce(EXCLUDED.queue, r.queue),
        retries = coalesce(EXCLUDED.retries, r.retries),
        content_type = EXCLUDED.content_type,
        content_encoding = EXCLUDED.content_encoding,
        meta = EXCLUDED.meta,
        date_done = EXCLUDED.date_done,
        expires_at = EXCLUDED.expires_at,
        chord_id = coalesce(EXCLUDED.chord_id, r.chord_id),
        chord_index = CASE WHEN EXCLUDED.chord_id IS NULL THEN r.chord_index ELSE EXCLUDED.chord_index END
    WHERE r.status <> 'SUCCESS' OR r.chord_id IS DISTINCT FROM coalesce(EXCLUDED.chord_id, r.chord_id)
RETURNING task_id

-- result_upsert --
-- Store a task's state (result_store), and listeners hear of it on commit: the task id, or
-- %(inline)s (the id and the meta itself) when the meta is small ASCII text, so the waiter needs no query.
WITH stored AS ({@result_store})
SELECT pg_notify(%(channel)s, coalesce(%(inline)s, task_id)) FROM stored

-- result_upsert_chord_part --
-- Store a chord header part's result (result_store) and count it in its chord, in one statement. A
-- store that changes nothing (the part's result is already stored for this run) counts nothing; a
-- FAILURE stored twice counts twice, which chord_claim corrects. complete: the header looks complete
-- and nobody holds the claim, so this part checks and claims (chord_claim).
WITH stored AS ({@result_store}), notified AS (
    SELECT pg_notify(%(channel)s, coalesce(%(inline)s, task_id)) FROM stored
)
INSERT INTO {schema}.chord AS c (group_id, done, expires_at)
VALUES (%(chord_id)s, (SELECT count(*) FROM notified), now() + make_interval(secs => %(chord_expires)s::float8))
ON CONFLICT (group_id) DO UPDATE SET done = c.done + EXCLUDED.done WHERE c.sent_at IS NULL
RETURNING c.size IS NOT NULL AND c.done >= c.size + c.extra
          AND (c.claim_token IS NULL OR c.claimed_until < now()) AS complete

-- result_get --
-- One task's encoded meta (AsyncResult.state/.get() before waiting).
SELECT content_type, content_encoding, meta FROM {schema}.result WHERE task_id = %s

-- result_get_many --
-- Encoded metas of many tasks in one round trip (groups, and ids a NOTIFY named).
SELECT task_id, content_type, content_encoding, meta FROM {schema}.result WHERE task_id = ANY(%s)

-- result_exists --
-- Whether any state was stored for a task, PENDING included.
SELECT EXISTS (SELECT 1 FROM {schema}.result WHERE task_id = %s)

-- result_delete --
-- AsyncResult.forget().
DELETE FROM {schema}.result WHERE task_id = %s

-- result_expire_batch --
-- Maintenance: a batch of expired results (rows others hold are skipped).
DELETE FROM {schema}.result
WHERE task_id IN (SELECT task_id FROM {schema}.result WHERE expires_at < now()
                  LIMIT %(limit)s FOR UPDATE SKIP LOCKED)

-- group_result_upsert --
-- GroupResult.save(): the member ids as Celery's result tuple, encoded.
INSERT INTO {schema}.group_result AS g (group_id, content_type, content_encoding, meta, expires_at)
VALUES (%(group_id)s, %(content_type)s, %(content_encoding)s, %(meta)s,
        now() + make_interval(secs => %(expires)s::float8))
ON CONFLICT (group_id) DO UPDATE
    SET content_type = EXCLUDED.content_type,
        content_encoding = EXCLUDED.content_encoding,
        meta = EXCLUDED.meta,
        date_done = now(),
        expires_at = EXCLUDED.expires_at

-- group_result_get --
-- GroupResult.restore().
SELECT content_type, content_encoding, meta FROM {schema}.group_result WHERE group_id = %s

-- group_result_delete --
-- GroupResult.delete().
DELETE FROM {schema}.group_result WHERE group_id = %s

-- group_result_expire_batch --
-- Maintenance: a batch of expired group results.
DELETE FROM {schema}.group_result
WHERE group_id IN (SELECT group_id FROM {schema}.group_result WHERE expires_at < now()
                   LIMIT %(limit)s FOR UPDATE SKIP LOCKED)

-- chord_size_set --
-- Set the header size once the last header task is about to be sent; re-applying a finished chord's frozen group id starts a new run (its parts' results count again).
WITH new_run AS (
    UPDATE {schema}.result SET chord_id = NULL
    WHERE chord_id = %(group_id)s
      AND EXISTS (SELECT 1 FROM {schema}.chord WHERE group_id = %(group_id)s AND sent_at IS NOT NULL)
)
INSERT INTO {schema}.chord AS c (group_id, size, expires_at)
VALUES (%(group_id)s, %(size)s, now() + make_interval(secs => %(expires)s::float8))
ON CONFLICT (group_id) DO UPDATE
    SET size = EXCLUDED.size,
        extra = CASE WHEN c.sent_at IS NULL THEN c.extra ELSE 0 END,
        done = CASE WHEN c.sent_at IS NULL THEN c.done ELSE 0 END,
        claim_token = NULL,
        claimed_until = NULL,
        sent_at = NULL,
        expires_at = EXCLUDED.expires_at

-- chord_extra_add --
-- Task.add_to_chord(): one more part to wait for.
INSERT INTO {schema}.chord AS c (group_id, extra, expires_at)
VALUES (%(group_id)s, 1, now() + make_interval(secs => %(expires)s::float8))
ON CONFLICT (group_id) DO UPDATE SET extra = c.extra + 1

-- chord_claim --
-- The part that saw the header complete counts the stored parts (a fresh snapshot: every part counted
-- before it has committed) and, if they are all there, takes the claim to send the body; done becomes
-- the true count either way.
UPDATE {schema}.chord AS c
SET done = p.n,
    claim_token = CASE WHEN p.n >= c.size + c.extra THEN %(token)s ELSE c.claim_token END,
    claimed_until = CASE WHEN p.n >= c.size + c.extra
                         THEN now() + make_interval(secs => %(claim_seconds)s::float8) ELSE c.claimed_until END
FROM (SELECT count(*) AS n FROM {schema}.result WHERE chord_id = %(chord_id)s AND date_done IS NOT NULL) AS p
WHERE c.group_id = %(chord_id)s AND c.sent_at IS NULL AND (c.claim_token IS NULL OR c.claimed_until < now())
RETURNING c.claim_token = %(token)s AS claimed

-- chord_part_list --
-- The header's results in header order, read by the part that sends the body.
SELECT content_type, content_encoding, meta FROM {schema}.result
WHERE chord_id = %s ORDER BY chord_index, task_id

-- chord_claim_extend --
-- Keep the claim while the body is published with retries; false when another worker took it over.
UPDATE {schema}.chord SET claimed_until = now() + make_interval(secs => %(claim_seconds)s::float8)
WHERE group_id = %(group_id)s AND claim_token = %(token)s
RETURNING 1

-- chord_finish --
-- The body was sent (or the chord failed): mark the chord finished so late duplicates are ignored.
UPDATE {schema}.chord SET sent_at = now(), claim_token = NULL, claimed_until = NULL
WHERE group_id = %(group_id)s AND (%(token)s::text IS NULL OR claim_token = %(token)s)
RETURNING 1

-- chord_expire_batch --
-- Maintenance: a batch of expired chords (their parts' results expire as results).
DELETE FROM {schema}.chord
WHERE group_id IN (SELECT group_id FROM {schema}.chord WHERE expires_at < now()
                   LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
