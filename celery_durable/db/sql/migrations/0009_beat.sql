-- Periodic tasks in the database (celery_durable.beat:Scheduler): entries, the beat lease, the beat_entries
-- view, and the metrics view gains the lease holder and overdue entries.

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

-- Every figure the Prometheus exporter publishes (metric, label, value): a scrape is one query, about as
-- cheap with a million rows in the tables as with ten. Queues as in the queues view; dead letters are
-- counted exactly while their table is no bigger than sample_percent_v1's sample, workflows while each
-- status (and the stalled) holds no more than the same limit as a queue; both are estimated from a
-- sample of the table beyond.
CREATE OR REPLACE VIEW {schema}.metrics AS
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
