-- The queues and metrics views cost about the same with a million messages queued as with ten: a queue
-- is counted exactly up to 10,000 messages through the claim index, estimated from a sample of the
-- table's pages beyond (queues.estimated); dead letters and workflows likewise. The queues view gains
-- lease_expired, redeliveries and estimated (the metrics view reads every per-queue figure from it), and
-- the metrics view the message table's dead rows and last vacuum.
-- The share of a table's pages (percent) that TABLESAMPLE SYSTEM reads to see about 1,000 of them:
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
-- same to read with a million messages queued as with ten: a queue's figures are exact while it holds at
-- most 10,000 messages (queue_head_v1, whatever else the table holds, dead rows included); past that
-- they are estimated from a sample of the table's pages (estimated = true).
CREATE OR REPLACE VIEW {schema}.queues AS
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

-- Every figure the Prometheus exporter publishes (metric, label, value): a scrape is one query, about as
-- cheap with a million rows in the tables as with ten. Queues as in the queues view; dead letters and
-- workflows are counted exactly while the dead_letter table is under 1,000 pages and while each status
-- (and the stalled) holds at most 10,000 workflows, and estimated from a sample of 1,000 pages beyond.
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
WHERE v.at IS NOT NULL;
