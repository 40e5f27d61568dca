-- The current full schema of celery_durable (at the version of the newest migration).
-- A fresh database gets this file; an older one gets migrations/NNNN_*.sql in order.
-- {schema} is the configured schema name (default celery_durable).
-- No superuser and no extension needed.

CREATE SCHEMA IF NOT EXISTS {schema};

CREATE TABLE {schema}.schema_version (
    version integer NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

------------------------------------------------------------------------------
-- Transport: queues, exchanges, bindings, messages, dead letters
------------------------------------------------------------------------------

-- A declared queue. expires_ms / message_ttl_ms are AMQP's x-expires / x-message-ttl.
CREATE TABLE {schema}.queue (
    name text PRIMARY KEY,
    durable boolean NOT NULL DEFAULT true,
    auto_delete boolean NOT NULL DEFAULT false,
    expires_ms bigint,
    message_ttl_ms bigint,
    max_priority smallint,
    last_used_at timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE {schema}.exchange (
    name text PRIMARY KEY,
    type text NOT NULL CHECK (type IN ('direct', 'topic', 'fanout')),
    durable boolean NOT NULL DEFAULT true,
    auto_delete boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Routing shared by every process: publish routes in SQL against this table.
-- pattern is the topic regex (kombu's syntax) for topic exchanges.
CREATE TABLE {schema}.binding (
    exchange text NOT NULL,
    routing_key text NOT NULL,
    queue text NOT NULL REFERENCES {schema}.queue (name) ON DELETE CASCADE,
    pattern text,
    PRIMARY KEY (exchange, routing_key, queue)
);
CREATE INDEX binding_queue_idx ON {schema}.binding (queue);

-- One row per message. visible_at is both "not before" (ETA, requeue) and the
-- lease expiry of a claimed row; lease_token fences acks of a lost lease.
CREATE TABLE {schema}.message (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue text NOT NULL,
    priority smallint NOT NULL DEFAULT 0,
    visible_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    lease_token uuid,
    leased_by text,
    delivery_count integer NOT NULL DEFAULT 0,
    task text,
    payload text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_insert_scale_factor = 0.01);
-- Claim order: per queue, highest priority first, then oldest.
CREATE INDEX message_claim_idx ON {schema}.message (queue, priority DESC, id);
-- Only messages with a TTL; expiry never changes on claim, so claims stay HOT updates.
CREATE INDEX message_expires_idx ON {schema}.message (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE {schema}.dead_letter (
    id bigint PRIMARY KEY,
    queue text NOT NULL,
    task text,
    reason text NOT NULL,
    delivery_count integer NOT NULL,
    payload text NOT NULL,
    created_at timestamptz NOT NULL,
    dead_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letter_dead_at_idx ON {schema}.dead_letter (dead_at);

-- Wake listeners for each new message. Payload 'r<xid>/<priority>:<id>;<queue>' for a ready one (where
-- a worker's claim starts: claims never walk the dead, leased and delayed rows before it; the
-- transaction, so a worker whose claim already saw it moves on), 'd<epoch>:<queue>' for a delayed one,
-- so workers can set a timer. A row trigger: every publish inserts one row per queue, and a row
-- trigger costs a publish less than a statement trigger's transition table and query (a bulk INSERT
-- of n rows sends n wake-ups; a worker keeps the lowest id of each priority). A transaction that
-- NOTIFYs holds a cluster-wide lock from before its commit record until its commit has been flushed,
-- so such commits cannot share a WAL flush. A publisher that sets celery_durable.wake_after_commit for
-- its transaction gets the payloads stashed in its session instead, and sends them with
-- message_wake_v1() in a second, quick transaction right after.
CREATE FUNCTION {schema}.message_notify_v4() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    payload text := CASE WHEN NEW.visible_at <= now()
                         THEN 'r' || pg_current_xact_id() || '/' || NEW.priority || ':' || NEW.id || ';' || NEW.queue
                         ELSE 'd' || extract(epoch FROM NEW.visible_at)::text || ':' || NEW.queue END;
BEGIN
    IF current_setting('celery_durable.wake_after_commit', true) IS DISTINCT FROM 'on' THEN
        PERFORM pg_notify(TG_TABLE_SCHEMA || '.message', payload);
        RETURN NULL;
    END IF;
    -- A session setting outlives the commit (and reverts with a rollback): [channel, payload] pairs.
    PERFORM set_config('celery_durable.wakes',
                       (coalesce(nullif(current_setting('celery_durable.wakes', true), ''), '[]')::jsonb
                        || jsonb_build_array(jsonb_build_array(TG_TABLE_SCHEMA || '.message', payload)))::text,
                       false);
    RETURN NULL;
END;
$$;

CREATE TRIGGER message_notify AFTER INSERT ON {schema}.message
    FOR EACH ROW EXECUTE FUNCTION {schema}.message_notify_v4();

-- Send (and forget) the wake-ups message_notify_v4 stashed in this session.
CREATE FUNCTION {schema}.message_wake_v1() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    stash text := nullif(current_setting('celery_durable.wakes', true), '');
BEGIN
    IF stash IS NOT NULL THEN
        PERFORM set_config('celery_durable.wakes', '', false);
        PERFORM pg_notify(e ->> 0, e ->> 1) FROM jsonb_array_elements(stash::jsonb) AS e;
    END IF;
END;
$$;

------------------------------------------------------------------------------
-- Result backend: task results, group results, chord counters
------------------------------------------------------------------------------

-- meta is Celery's encoded task meta (status, result, traceback, children, extended
-- fields) in content_type; the plain columns exist for SQL monitoring.
CREATE TABLE {schema}.result (
    task_id text PRIMARY KEY,
    status text NOT NULL,
    name text,
    worker text,
    queue text,
    retries integer,
    content_type text NOT NULL,
    content_encoding text NOT NULL DEFAULT 'utf-8',
    meta bytea NOT NULL,
    date_done timestamptz,
    expires_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- A chord header part: its chord (group id) and header index. The row is the part's only copy:
    -- the part that completes the header reads the results from here (migration 0003).
    chord_id text,
    chord_index integer
);
CREATE INDEX result_expires_idx ON {schema}.result (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX result_chord_idx ON {schema}.result (chord_id, chord_index) WHERE chord_id IS NOT NULL;

CREATE TABLE {schema}.group_result (
    group_id text PRIMARY KEY,
    content_type text NOT NULL,
    content_encoding text NOT NULL DEFAULT 'utf-8',
    meta bytea NOT NULL,
    date_done timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz
);
CREATE INDEX group_result_expires_idx ON {schema}.group_result (expires_at) WHERE expires_at IS NOT NULL;

-- Native chords: the header's parts count themselves here, in the statement that
-- stores each part's result (result.chord_id); the part that makes done = size + extra
-- checks the count against the stored results, claims the chord (claim_token, until
-- claimed_until) and sends the body; sent_at marks it finished so late duplicates of a
-- part change nothing. size stays NULL until the last header task is sent (earlier
-- parts may return before that).
CREATE TABLE {schema}.chord (
    group_id text PRIMARY KEY,
    size integer,
    extra integer NOT NULL DEFAULT 0,
    done integer NOT NULL DEFAULT 0,
    claim_token text,
    claimed_until timestamptz,
    sent_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz
);
CREATE INDEX chord_expires_idx ON {schema}.chord (expires_at) WHERE expires_at IS NOT NULL;

-- Written only by version 1 and 2 workers (a second copy of each header part's
-- result); since version 3 a part lives in its result row. Kept so that older
-- workers still running during an upgrade can store their chord parts; a later
-- version drops it.
CREATE TABLE {schema}.chord_part (
    group_id text NOT NULL REFERENCES {schema}.chord (group_id) ON DELETE CASCADE,
    task_id text NOT NULL,
    group_index integer NOT NULL,
    content_type text NOT NULL,
    content_encoding text NOT NULL DEFAULT 'utf-8',
    meta bytea NOT NULL,
    PRIMARY KEY (group_id, group_index, task_id)
);

------------------------------------------------------------------------------
-- Durable workflows: workflows and their task checkpoints
------------------------------------------------------------------------------

-- status: running, succeeded, failed (at the task failed_path), cancelled.
-- The canvas's tree is in workflow_node; current_step is the first unfinished element of its root
-- chain. generation changes on restart, so messages of an abandoned run cannot checkpoint.
-- A task reads this row and writes it only when the root chain advances, the workflow ends, or
-- (updated_at, for the stalled view) at most every half minute.
CREATE TABLE {schema}.workflow (
    id text PRIMARY KEY,
    name text,
    status text NOT NULL DEFAULT 'running'
        CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled')),
    current_step integer NOT NULL DEFAULT 0,
    generation integer NOT NULL DEFAULT 0,
    atomic boolean NOT NULL DEFAULT true,
    result_task_id text,
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    failed_path text
);
CREATE INDEX workflow_status_idx ON {schema}.workflow (status, updated_at);

-- The workflow's tree, one row per node (workflow/rows.py), keyed by its path: the root chain is
-- '', "2" the third element of the root chain, "2.1.0" the first element of its second member,
-- "2~0" the first link callback of the task "2". A task has its signature in sig (arguments
-- encoded with its task serializer unless json) and links callbacks; a chain or group has size
-- children and a name to show. then_* is what the node's completion does, so that a finishing
-- task reads its own row, not the tree: 'enter' the node then_path (the next element of a chain),
-- 'count' it in the fan_in of the group then_path (its part then_part), 'end' the workflow (its
-- result), or 'none' (the end of a link callback's branch). Rows of a workflow go with it
-- (maintenance), as do its fan_in and checkpoint rows.
CREATE TABLE {schema}.workflow_node (
    workflow_id text NOT NULL,
    path text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('task', 'chain', 'group')),
    size integer NOT NULL DEFAULT 0,
    links integer NOT NULL DEFAULT 0,
    sig jsonb,
    name text,
    chord boolean NOT NULL DEFAULT false,
    replaced boolean NOT NULL DEFAULT false,
    then_kind text NOT NULL CHECK (then_kind IN ('enter', 'count', 'end', 'none')),
    then_path text,
    then_part integer,
    PRIMARY KEY (workflow_id, path)
);

-- How many members of a group finished (a member finishes when its last task does). part -1
-- counts the whole group: its size members, or, for a group split in parts, its size parts; part
-- p >= 0 counts the members i with i % (number of parts) = p. A member's commit increments its
-- row, so members of different parts commit side by side; the member that fills its part counts
-- the part in row -1, and the one that fills row -1 sends what follows the group, once.
CREATE TABLE {schema}.fan_in (
    workflow_id text NOT NULL,
    path text NOT NULL,
    part integer NOT NULL,
    size integer NOT NULL,
    done integer NOT NULL DEFAULT 0,
    PRIMARY KEY (workflow_id, path, part)
);

-- One row per finished task, keyed by its path in the workflow's tree (as workflow_node). result
-- is encoded with content_type (the app's result serializer).
CREATE TABLE {schema}.checkpoint (
    workflow_id text NOT NULL,
    path text NOT NULL,
    task_id text NOT NULL,
    task_name text,
    content_type text NOT NULL,
    result bytea NOT NULL,
    attempts integer NOT NULL DEFAULT 1,
    finished_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, path)
);

-- A durable step commits in one pipelined round trip, built on what it read before it ran; each
-- condition that choice relied on (workflow still running this generation, lease still held, the
-- step not the one that fills its group's count) is checked by this guard, which aborts the
-- transaction with the reason when one no longer holds.
CREATE FUNCTION {schema}.step_guard_v1(ok boolean, reason text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION 'celery_durable step guard: %', reason;
    END IF;
END;
$$;

-- Broker outside the database (Redis, RabbitMQ): one row per step message sent and not yet
-- checkpointed, written in the transaction that decides to send it, so the sweep can tell a
-- lost message from a slow one. seen_at is the last sign of life (sent, or held by a worker:
-- prefetched, waiting for its countdown, running); due_at is when its countdown or ETA lets it run.
-- path is the task's place in the workflow's tree, as in checkpoint.
CREATE TABLE {schema}.sent_step (
    workflow_id text NOT NULL REFERENCES {schema}.workflow (id) ON DELETE CASCADE,
    path text NOT NULL,
    generation integer NOT NULL,
    task_id text,
    due_at timestamptz NOT NULL DEFAULT now(),
    seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, path)
);

------------------------------------------------------------------------------
-- Beat: periodic tasks and the lease of the one active beat (celery_durable.beat:Scheduler)
------------------------------------------------------------------------------

-- A periodic task. schedule is JSON Celery's schedule classes are built from (beat/schedules.py):
-- {"type": "interval", "every": <seconds>, "relative": <bool>}, {"type": "crontab", "minute": ..., "hour": ...,
-- "day_of_week": ..., "day_of_month": ..., "month_of_year": ..., "timezone": <IANA name or null>},
-- {"type": "solar", "event": ..., "lat": ..., "lon": ...}. args, kwargs and options are encoded with
-- content_type (beat_entry_put_v1 writes JSON). origin: 'config' (the app's beat_schedule, synced at each
-- beat's start) or 'runtime' (API, CLI, SQL, admin). last_run_at is the due time of the last run sent (the
-- creation time before the first); runs due after it are sent with it, in one transaction, fenced by the
-- lease. catch_up: what runs that fell due while no beat held the lease become ('once': the latest is sent;
-- 'skip': none; 'all': each, up to beat_catch_up_max). revision counts definition changes (trigger).
CREATE TABLE {schema}.beat_entry (
    name text PRIMARY KEY,
    task text NOT NULL,
    schedule jsonb NOT NULL CHECK (schedule ->> 'type' IN ('interval', 'crontab', 'solar')),
    content_type text NOT NULL DEFAULT 'application/json',
    content_encoding text NOT NULL DEFAULT 'utf-8',
    args bytea NOT NULL DEFAULT convert_to('[]', 'UTF8'),
    kwargs bytea NOT NULL DEFAULT convert_to('{}', 'UTF8'),
    options bytea NOT NULL DEFAULT convert_to('{}', 'UTF8'),
    catch_up text NOT NULL DEFAULT 'once' CHECK (catch_up IN ('once', 'skip', 'all')),
    origin text NOT NULL DEFAULT 'runtime' CHECK (origin IN ('config', 'runtime')),
    enabled boolean NOT NULL DEFAULT true,
    last_run_at timestamptz NOT NULL DEFAULT now(),
    next_run_at timestamptz,
    total_run_count bigint NOT NULL DEFAULT 0,
    skipped_run_count bigint NOT NULL DEFAULT 0,
    last_task_id text,
    last_sent_at timestamptz,
    run_requested_at timestamptz,
    error text,
    revision bigint NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Whoever changes an entry (API, SQL, admin): a new definition gets a new revision (a beat that read the old
-- one sends nothing of it); a new schedule, or a paused entry resumed, counts from now (no catch-up of runs
-- it never promised).
CREATE FUNCTION {schema}.beat_entry_revise_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.task, NEW.schedule, NEW.content_type, NEW.content_encoding, NEW.args, NEW.kwargs, NEW.options,
        NEW.catch_up, NEW.enabled)
       IS DISTINCT FROM (OLD.task, OLD.schedule, OLD.content_type, OLD.content_encoding, OLD.args, OLD.kwargs,
                         OLD.options, OLD.catch_up, OLD.enabled) THEN
        NEW.revision := OLD.revision + 1;
        NEW.updated_at := now();
        NEW.error := NULL;
        IF (NEW.schedule IS DISTINCT FROM OLD.schedule OR (NEW.enabled AND NOT OLD.enabled))
           AND NEW.last_run_at IS NOT DISTINCT FROM OLD.last_run_at THEN
            NEW.last_run_at := now();
            NEW.next_run_at := NULL;
        END IF;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER beat_entry_revise BEFORE UPDATE ON {schema}.beat_entry
    FOR EACH ROW EXECUTE FUNCTION {schema}.beat_entry_revise_v1();

-- Add or replace a runtime entry from SQL, with JSON arguments and options:
-- SELECT celery_durable.beat_entry_put_v1('report', 'shop.tasks.report', '{"type": "crontab", "minute": "0"}');
CREATE FUNCTION {schema}.beat_entry_put_v1(entry_name text, task_name text, entry_schedule jsonb,
                                           entry_args jsonb DEFAULT '[]', entry_kwargs jsonb DEFAULT '{}',
                                           entry_options jsonb DEFAULT '{}', entry_catch_up text DEFAULT 'once')
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO {schema}.beat_entry (name, task, schedule, content_type, content_encoding, args, kwargs, options,
                                     catch_up)
    VALUES (entry_name, task_name, entry_schedule, 'application/json', 'utf-8', convert_to(entry_args::text, 'UTF8'),
            convert_to(entry_kwargs::text, 'UTF8'), convert_to(entry_options::text, 'UTF8'), entry_catch_up)
    ON CONFLICT (name) DO UPDATE
    SET task = excluded.task, schedule = excluded.schedule, content_type = excluded.content_type,
        content_encoding = excluded.content_encoding, args = excluded.args, kwargs = excluded.kwargs,
        options = excluded.options, catch_up = excluded.catch_up
$$;

-- The lease of the active beat (one row per schema): the holder renews it every third of its length; a beat
-- that finds it expired takes it with a new token. Every run's transaction locks this row and checks the
-- token first (beat_lease_fence), so a beat that lost the lease (paused, cut off) sends nothing.
CREATE TABLE {schema}.beat_lease (
    name text PRIMARY KEY,
    holder text NOT NULL,
    token uuid NOT NULL,
    expires_at timestamptz NOT NULL,
    held_since timestamptz NOT NULL,
    renewed_at timestamptz NOT NULL,
    takeovers bigint NOT NULL DEFAULT 0
);

-- Each periodic task with its next and last run, the last run's task id and result state (when results are
-- stored in this schema), and which beat holds the lease. overdue: enabled, and its next run (as the active beat
-- computed it) is more than a minute late: no beat holds the lease, or the active one is stuck.
CREATE VIEW {schema}.beat_entries AS
SELECT e.name, e.task, e.schedule, e.enabled, e.origin, e.catch_up, e.next_run_at, e.last_run_at, e.last_sent_at,
       e.last_task_id, r.status AS last_status, e.total_run_count, e.skipped_run_count, e.run_requested_at, e.error,
       coalesce(e.enabled AND e.next_run_at < now() - interval '1 minute', false) AS overdue,
       l.holder AS beat_holder, coalesce(l.expires_at > now(), false) AS beat_lease_live,
       e.content_type, e.content_encoding, e.args, e.kwargs, e.options, e.revision, e.created_at, e.updated_at
FROM {schema}.beat_entry AS e
LEFT JOIN {schema}.result AS r ON r.task_id = e.last_task_id
LEFT JOIN {schema}.beat_lease AS l ON l.name = 'beat';

------------------------------------------------------------------------------
-- Views for people who monitor with SQL
------------------------------------------------------------------------------

-- The share of a table's pages (percent) that TABLESAMPLE SYSTEM reads to see a fixed number of them:
-- all of a smaller table, so the figures drawn from it are exact there.
CREATE FUNCTION {schema}.sample_percent_v1(rel regclass) RETURNS float8
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT least(100, 100.0 * 1000 / greatest(1, pg_relation_size(rel) / current_setting('block_size')::int))
$$;

-- One queue's figures, exact over its first rows_max + 1 messages in claim order (all of a smaller queue),
-- read through the claim index only: the planner settings below keep it from reading the whole queue
-- when its statistics are stale (a backlog that built up since the last ANALYZE). oldest is that of
-- every message when they were all read, else the oldest first message of each priority (index probes).
CREATE FUNCTION {schema}.queue_head_v1(queue_name text, rows_max integer)
RETURNS TABLE (depth bigint, ready bigint, delayed bigint, leased bigint, lease_expired bigint,
               redeliveries bigint, oldest timestamptz)
LANGUAGE sql STABLE ROWS 1
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_sort = off
AS $$
    SELECT h.depth, h.ready, h.delayed, h.leased, h.lease_expired, h.redeliveries,
           CASE WHEN h.depth <= rows_max THEN h.oldest ELSE (
               WITH RECURSIVE heads AS (
                   (SELECT m.priority, m.created_at FROM {schema}.message AS m WHERE m.queue = queue_name
                    ORDER BY m.priority DESC, m.id LIMIT 1)
                   UNION ALL
                   SELECT n.priority, n.created_at
                   FROM heads AS p
                   CROSS JOIN LATERAL (SELECT m.priority, m.created_at FROM {schema}.message AS m
                                       WHERE m.queue = queue_name AND m.priority < p.priority
                                       ORDER BY m.priority DESC, m.id LIMIT 1) AS n
               )
               SELECT min(heads.created_at) FROM heads) END
    FROM (SELECT count(*) AS depth,
                 count(*) FILTER (WHERE m.lease_token IS NULL AND m.visible_at <= now()) AS ready,
                 count(*) FILTER (WHERE m.lease_token IS NULL AND m.visible_at > now()) AS delayed,
                 count(*) FILTER (WHERE m.lease_token IS NOT NULL AND m.visible_at > now()) AS leased,
                 count(*) FILTER (WHERE m.lease_token IS NOT NULL AND m.visible_at <= now()) AS lease_expired,
                 coalesce(sum(m.delivery_count - 1) FILTER (WHERE m.delivery_count > 1), 0) AS redeliveries,
                 min(m.created_at) AS oldest
          FROM (SELECT m.lease_token, m.visible_at, m.delivery_count, m.created_at
                FROM {schema}.message AS m WHERE m.queue = queue_name
                ORDER BY m.priority DESC, m.id LIMIT rows_max + 1) AS m) AS h
$$;

-- Per queue: depth, ready, delayed, leased, oldest, and the figures the metrics add. It costs about the
-- same to read with a million messages queued as with ten: a queue's figures are exact while it holds no
-- more messages than the limit passed to queue_head_v1 (whatever else the table holds, dead rows
-- included); past that they are estimated from a sample of the table's pages (estimated = true).
CREATE VIEW {schema}.queues AS
WITH head AS (
    SELECT q.name AS queue, h.*
    FROM {schema}.queue AS q
    CROSS JOIN LATERAL {schema}.queue_head_v1(q.name, 10000) AS h
),
sampled AS (
    SELECT m.queue,
           count(*) * 100 / {schema}.sample_percent_v1('{schema}.message'::regclass) AS scaled,
           count(*) AS depth,
           count(*) FILTER (WHERE m.lease_token IS NULL AND m.visible_at <= now()) AS ready,
           count(*) FILTER (WHERE m.lease_token IS NULL AND m.visible_at > now()) AS delayed,
           count(*) FILTER (WHERE m.lease_token IS NOT NULL AND m.visible_at > now()) AS leased,
           count(*) FILTER (WHERE m.lease_token IS NOT NULL AND m.visible_at <= now()) AS lease_expired,
           coalesce(sum(m.delivery_count - 1) FILTER (WHERE m.delivery_count > 1), 0) AS redeliveries
    FROM {schema}.message AS m TABLESAMPLE SYSTEM ({schema}.sample_percent_v1('{schema}.message'::regclass))
    WHERE EXISTS (SELECT FROM head WHERE head.depth > 10000)
    GROUP BY m.queue
)
SELECT h.queue,
       coalesce(round(s.depth * e.scale), h.depth)::bigint AS depth,
       coalesce(round(s.ready * e.scale), h.ready)::bigint AS ready,
       coalesce(round(s.delayed * e.scale), h.delayed)::bigint AS delayed,
       coalesce(round(s.leased * e.scale), h.leased)::bigint AS leased,
       h.oldest,
       now() - h.oldest AS oldest_age,
       coalesce(round(s.lease_expired * e.scale), h.lease_expired)::bigint AS lease_expired,
       coalesce(round(s.redeliveries * e.scale), h.redeliveries)::bigint AS redeliveries,
       h.depth > 10000 AS estimated
FROM head AS h
LEFT JOIN sampled AS s ON s.queue = h.queue AND h.depth > 10000
CROSS JOIN LATERAL (SELECT greatest(h.depth, s.scaled) / s.depth AS scale) AS e;

CREATE VIEW {schema}.workflows AS
SELECT w.id, w.name, w.status, w.current_step,
       r.size AS step_count,
       coalesce(c.name, c.sig ->> 'task') AS current_task,
       w.created_at, w.updated_at,
       now() - w.created_at AS age,
       (w.status = 'running' AND w.updated_at < now() - interval '5 minutes') AS stalled,
       w.error
FROM {schema}.workflow AS w
LEFT JOIN {schema}.workflow_node AS r ON r.workflow_id = w.id AND r.path = ''
LEFT JOIN {schema}.workflow_node AS c ON c.workflow_id = w.id AND c.path = w.current_step::text;

-- Every figure the Prometheus exporter publishes (metric, label, value): a scrape is one query, about as
-- cheap with a million rows in the tables as with ten. Queues as in the queues view; dead letters are
-- counted exactly while their table is no bigger than sample_percent_v1's sample, workflows while each
-- status (and the stalled) holds no more than the same limit as a queue; both are estimated from a
-- sample of the table beyond.
CREATE VIEW {schema}.metrics AS
WITH workflow_counts AS (  -- (constants, not a join: the planner then knows which statuses are rare)
    SELECT 'running' AS status,
           (SELECT count(*) FROM (SELECT FROM {schema}.workflow WHERE status = 'running' LIMIT 10001) AS x) AS n
    UNION ALL
    SELECT 'succeeded', (SELECT count(*) FROM (SELECT FROM {schema}.workflow WHERE status = 'succeeded' LIMIT 10001) AS x)
    UNION ALL
    SELECT 'failed', (SELECT count(*) FROM (SELECT FROM {schema}.workflow WHERE status = 'failed' LIMIT 10001) AS x)
    UNION ALL
    SELECT 'cancelled', (SELECT count(*) FROM (SELECT FROM {schema}.workflow WHERE status = 'cancelled' LIMIT 10001) AS x)
    UNION ALL
    SELECT 'stalled', (SELECT count(*) FROM (SELECT FROM {schema}.workflows AS w WHERE w.stalled LIMIT 10001) AS x)
),
workflow_sample AS (
    SELECT w.status, count(*) * 100 / {schema}.sample_percent_v1('{schema}.workflow'::regclass) AS n,
           -- (the workflows view's stalled)
           count(*) FILTER (WHERE w.status = 'running' AND w.updated_at < now() - interval '5 minutes')
               * 100 / {schema}.sample_percent_v1('{schema}.workflow'::regclass) AS stalled
    FROM {schema}.workflow AS w TABLESAMPLE SYSTEM ({schema}.sample_percent_v1('{schema}.workflow'::regclass))
    WHERE EXISTS (SELECT FROM workflow_counts AS c WHERE c.n > 10000)
    GROUP BY w.status
)
SELECT 'queue_' || f.metric AS metric, q.queue AS label, f.value AS value
FROM {schema}.queues AS q
CROSS JOIN LATERAL (VALUES ('depth', q.depth::float8), ('ready', q.ready::float8), ('delayed', q.delayed::float8),
                           ('leased', q.leased::float8), ('lease_expired', q.lease_expired::float8),
                           ('redeliveries', q.redeliveries::float8),
                           ('oldest_age_seconds', coalesce(extract(epoch FROM q.oldest_age)::float8, 0)),
                           ('estimated', q.estimated::int::float8))
    AS f (metric, value)
UNION ALL
SELECT 'dead_letters', d.queue, round(count(*) * 100 / {schema}.sample_percent_v1('{schema}.dead_letter'::regclass))
FROM {schema}.dead_letter AS d TABLESAMPLE SYSTEM ({schema}.sample_percent_v1('{schema}.dead_letter'::regclass))
GROUP BY d.queue
UNION ALL
SELECT CASE WHEN c.status = 'stalled' THEN 'workflows_stalled' ELSE 'workflows' END,
       CASE WHEN c.status = 'stalled' THEN '' ELSE c.status END,
       (CASE WHEN c.n <= 10000 THEN c.n
             ELSE greatest(c.n, round(CASE WHEN c.status = 'stalled' THEN s.stalled ELSE s.n END)) END)::float8
FROM workflow_counts AS c
LEFT JOIN workflow_sample AS s ON s.status = CASE WHEN c.status = 'stalled' THEN 'running' ELSE c.status END
UNION ALL
SELECT 'message_dead_rows', '', pg_stat_get_dead_tuples('{schema}.message'::regclass)::float8
UNION ALL
SELECT 'message_last_vacuum_timestamp_seconds', '', extract(epoch FROM v.at)::float8
FROM (SELECT greatest(pg_stat_get_last_vacuum_time('{schema}.message'::regclass),
                      pg_stat_get_last_autovacuum_time('{schema}.message'::regclass)) AS at) AS v
WHERE v.at IS NOT NULL
UNION ALL
SELECT 'beat_lease_holder', l.holder, 1 FROM {schema}.beat_lease AS l WHERE l.expires_at > now()
UNION ALL
SELECT 'beat_lease_seconds_left', '', extract(epoch FROM l.expires_at - now())::float8 FROM {schema}.beat_lease AS l
UNION ALL
SELECT 'beat_takeovers', '', l.takeovers::float8 FROM {schema}.beat_lease AS l
UNION ALL
SELECT 'beat_entries', s.state, (SELECT count(*) FROM {schema}.beat_entry AS e WHERE e.enabled = (s.state = 'enabled'))
FROM (VALUES ('enabled'), ('paused')) AS s (state)
UNION ALL
SELECT 'beat_entries_overdue', '', count(*) FILTER (WHERE b.overdue) FROM {schema}.beat_entries AS b
UNION ALL
SELECT 'beat_entries_failing', '', count(*) FILTER (WHERE b.error IS NOT NULL) FROM {schema}.beat_entry AS b;
