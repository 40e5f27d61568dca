-- Durable workflows at any size: the tree moves from workflow.steps (one JSON document that every
-- task read and decoded) to one row per node (workflow_node), each saying what its completion
-- does, and groups count their finished members in fan_in instead of counting checkpoints. Every
-- stored tree becomes rows here; each group's count starts at its members that already finished
-- (groups stored before this version count in one part). checkpoint loses its foreign key (each
-- insert locked the workflow row); workflow is rebuilt without steps, so that its columns read as
-- schema.sql has them, and the views over it are made again.

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

CREATE TABLE {schema}.fan_in (
    workflow_id text NOT NULL,
    path text NOT NULL,
    part integer NOT NULL,
    size integer NOT NULL,
    done integer NOT NULL DEFAULT 0,
    PRIMARY KEY (workflow_id, path, part)
);

-- Every node of every stored tree, from the root down: a child's path, its "then" (from its
-- parent's) and anchors, the group members it completes as a last task (to count what finished).
-- A stored group of an older version lists plain signatures: each is a task.
CREATE TEMPORARY TABLE stored_node ON COMMIT DROP AS
WITH RECURSIVE node (workflow_id, path, parent, data, then_kind, then_path, anchors) AS (
    SELECT w.id, ''::text, NULL::text, jsonb_build_object('kind', 'chain', 'children', w.steps),
           'end'::text, NULL::text, ARRAY[]::text[]
    FROM {schema}.workflow AS w
    UNION ALL
    SELECT n.workflow_id, c.path, n.path, c.data, c.then_kind, c.then_path, c.anchors
    FROM node AS n
    CROSS JOIN LATERAL (
        SELECT coalesce(n.data -> 'children',
                        CASE WHEN n.data ->> 'kind' = 'group' THEN n.data -> 'signatures' END) AS list,
               CASE WHEN n.path = '' THEN '' ELSE n.path || '.' END AS prefix,
               n.data ->> 'kind' = 'group' AS in_group
    ) AS m
    CROSS JOIN LATERAL (
        SELECT m.prefix || (e.i - 1) AS path,
               CASE WHEN n.data ? 'children' THEN e.child
                    ELSE jsonb_build_object('kind', 'task', 'signatures', jsonb_build_array(e.child)) END AS data,
               CASE WHEN m.in_group THEN 'count'
                    WHEN e.i < jsonb_array_length(m.list) THEN 'enter' ELSE n.then_kind END AS then_kind,
               CASE WHEN m.in_group THEN n.path
                    WHEN e.i < jsonb_array_length(m.list) THEN m.prefix || e.i ELSE n.then_path END AS then_path,
               CASE WHEN m.in_group THEN n.anchors || (m.prefix || (e.i - 1))
                    WHEN e.i = jsonb_array_length(m.list) THEN n.anchors ELSE ARRAY[]::text[] END AS anchors
        FROM jsonb_array_elements(m.list) WITH ORDINALITY AS e (child, i)
        UNION ALL
        SELECT n.path || '~' || (l.i - 1), l.link, 'none', NULL, ARRAY[]::text[]
        FROM jsonb_array_elements(CASE WHEN n.data ->> 'kind' = 'task' THEN n.data -> 'links' END)
             WITH ORDINALITY AS l (link, i)
    ) AS c
)
SELECT workflow_id, path, parent, data ->> 'kind' AS kind, data, then_kind, then_path, anchors
FROM node;

INSERT INTO {schema}.workflow_node (workflow_id, path, kind, size, links, sig, name, chord, replaced,
                                    then_kind, then_path, then_part)
SELECT workflow_id, path, kind,
       CASE WHEN kind = 'task' THEN 0
            ELSE jsonb_array_length(coalesce(data -> 'children', data -> 'signatures')) END,
       CASE WHEN kind = 'task' THEN coalesce(jsonb_array_length(data -> 'links'), 0) ELSE 0 END,
       CASE WHEN kind = 'task' THEN data -> 'signatures' -> 0 END,
       CASE WHEN kind <> 'task' THEN data ->> 'task' END,
       coalesce((data ->> 'chord')::boolean, false), coalesce((data ->> 'replaced')::boolean, false),
       then_kind, then_path, CASE WHEN then_kind = 'count' THEN -1 END
FROM stored_node;

-- A group member is finished when every task it completes as a last task has its checkpoint.
INSERT INTO {schema}.fan_in (workflow_id, path, part, size, done)
SELECT g.workflow_id, g.path, -1, g.size, g.size - coalesce(o.unfinished, 0)
FROM {schema}.workflow_node AS g
LEFT JOIN (
    SELECT member.workflow_id, member.parent, count(*) AS unfinished
    FROM (SELECT DISTINCT t.workflow_id, a.anchor
          FROM stored_node AS t CROSS JOIN unnest(t.anchors) AS a (anchor)
          WHERE t.kind = 'task'
            AND NOT EXISTS (SELECT 1 FROM {schema}.checkpoint AS k
                            WHERE k.workflow_id = t.workflow_id AND k.path = t.path)) AS open
    JOIN stored_node AS member ON member.workflow_id = open.workflow_id AND member.path = open.anchor
    GROUP BY member.workflow_id, member.parent
) AS o ON o.workflow_id = g.workflow_id AND o.parent = g.path
WHERE g.kind = 'group';

CREATE TEMPORARY TABLE stored_workflow ON COMMIT DROP AS
SELECT id, name, status, current_step, generation, atomic, result_task_id, error, created_at, updated_at,
       finished_at, failed_path
FROM {schema}.workflow;

-- Drops the views over it (workflows, metrics) and the foreign keys of checkpoint and sent_step.
DROP TABLE {schema}.workflow CASCADE;

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

INSERT INTO {schema}.workflow SELECT * FROM stored_workflow;

ALTER TABLE {schema}.sent_step ADD CONSTRAINT sent_step_workflow_id_fkey
    FOREIGN KEY (workflow_id) REFERENCES {schema}.workflow (id) ON DELETE CASCADE;

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
