-- Named queries of durable workflows: workflows, their trees, counts and checkpoints, and steps sent to
-- other brokers. A path names a node in the workflow's tree: "2.1.0" (see workflow/tree.py), the root
-- chain "". No task locks the workflow row: a task's commit holds the workflow's fence (step_fence,
-- shared); what changes a whole workflow (cancel, resume, restart, a failure) takes it alone.

-- workflow_insert --
-- Start a workflow; a workflow_id seen before inserts nothing (deduplication).
INSERT INTO {schema}.workflow (id, name, result_task_id, atomic)
VALUES (%(id)s, %(name)s, %(result_task_id)s, %(atomic)s)
ON CONFLICT (id) DO NOTHING
RETURNING id

-- workflow_fence --
-- Change a whole workflow alone: wait for the commits of its tasks in flight (they hold the fence shared).
SELECT pg_advisory_xact_lock(hashtextextended(%(id)s, 0))

-- step_fence --
-- A task's commit: hold the workflow's fence shared, beside its other tasks' commits.
SELECT pg_advisory_xact_lock_shared(hashtextextended(%(id)s, 0))

-- workflow_lock --
-- Under the workflow's fence: its row, locked, to change it (cancel, resume, restart, a failure).
SELECT status, current_step, generation, result_task_id, atomic, failed_path
FROM {schema}.workflow WHERE id = %(id)s FOR UPDATE

-- workflow_get --
-- One workflow (the admin API; the sweep).
SELECT id, name, status, current_step, generation, result_task_id, error,
       created_at, updated_at, finished_at, atomic, failed_path
FROM {schema}.workflow WHERE id = %(id)s

-- workflow_list --
-- Recent workflows, optionally of one status ('stalled': running without progress for 5 minutes).
SELECT id, name, status, current_step, step_count, current_task, age, updated_at, error
FROM {schema}.workflows
WHERE %(status)s::text IS NULL OR status = %(status)s OR (%(status)s = 'stalled' AND stalled)
ORDER BY created_at DESC
LIMIT %(limit)s

-- workflow_advance --
-- The root chain moved on to its element `step` in this transaction.
UPDATE {schema}.workflow SET current_step = %(step)s, updated_at = now() WHERE id = %(id)s

-- workflow_progress --
-- A task finished inside the current element: progress for the stalled view, written at most every
-- half minute (otherwise the row is read, not locked).
UPDATE {schema}.workflow SET updated_at = now()
WHERE id = %(id)s AND status = 'running' AND updated_at < now() - interval '30 seconds'

-- workflow_finish --
-- The workflow reached an end state: succeeded, failed (at the task failed_path) or cancelled.
UPDATE {schema}.workflow
SET status = %(status)s, error = %(error)s, current_step = %(step)s, failed_path = %(failed_path)s,
    updated_at = now(), finished_at = CASE WHEN %(status)s = 'failed' THEN NULL ELSE now() END
WHERE id = %(id)s

-- workflow_restart --
-- Run again (from a task): a new generation (bump 1), so in-flight messages of the old run are ignored.
UPDATE {schema}.workflow
SET status = 'running', current_step = %(step)s, generation = generation + %(bump)s,
    error = NULL, failed_path = NULL, finished_at = NULL, updated_at = now()
WHERE id = %(id)s
RETURNING generation

-- workflow_revive --
-- A late success of the task a duplicate attempt failed: its checkpoint wins, the workflow runs on.
UPDATE {schema}.workflow SET status = 'running', error = NULL, failed_path = NULL, finished_at = NULL,
    updated_at = now()
WHERE id = %(id)s

-- workflow_expire --
-- Maintenance: forget a batch of finished workflows, with their trees, counts and checkpoints, after
-- the retention; rows others hold are skipped.
WITH gone AS (
    SELECT id FROM {schema}.workflow
    WHERE status IN ('succeeded', 'cancelled', 'failed')
      AND updated_at < now() - %(retention)s * interval '1 second'
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), nodes AS (
    DELETE FROM {schema}.workflow_node WHERE workflow_id IN (SELECT id FROM gone)
), counts AS (
    DELETE FROM {schema}.fan_in WHERE workflow_id IN (SELECT id FROM gone)
), checkpoints AS (
    DELETE FROM {schema}.checkpoint WHERE workflow_id IN (SELECT id FROM gone)
)
DELETE FROM {schema}.workflow WHERE id IN (SELECT id FROM gone)

-- step_state --
-- Before a task runs: its workflow's status and generation, its checkpoint if it already finished (a
-- redelivered finished task is not run again), and its own row of the tree: what its completion does.
SELECT w.status, w.generation, c.content_type, c.result, w.result_task_id, n.kind, n.then_kind, n.then_path,
       n.then_part
FROM {schema}.workflow w
LEFT JOIN {schema}.checkpoint c ON c.workflow_id = w.id AND c.path = %(path)s
LEFT JOIN {schema}.workflow_node n ON n.workflow_id = w.id AND n.path = %(path)s
WHERE w.id = %(id)s

-- step_check --
-- A task's commit on the checking path, under the fence: the workflow as it is now, and the task's row.
SELECT w.status, w.generation, w.failed_path, w.result_task_id, n.kind, n.then_kind, n.then_path, n.then_part
FROM {schema}.workflow w
LEFT JOIN {schema}.workflow_node n ON n.workflow_id = w.id AND n.path = %(path)s
WHERE w.id = %(id)s

-- step_commit --
-- Pipelined commit, its last statement before COMMIT: record the task (checkpoint, own message gone, its
-- group's count, the workflow's progress, advance or end) and abort, back to the savepoint, when what
-- the task read before it ran no longer holds: the workflow stopped or moved to another generation, the
-- lease is lost, or the task fills its group's count (a checkpoint already there aborts it too). Its
-- checks see the workflow as it was before it (the task that ends the workflow checks the status it
-- sets), and nothing that could be skipped follows it but COMMIT. `state` is the SQL twin of
-- fence.standing(workflow, step, Act.COMMIT) is Verdict.GO (workflow/fence.py): change them together. The
-- task's node is not read here: the task found a task at its path before it ran (step_state).
WITH state AS (
    SELECT generation = %(generation)s AND (status = 'running' OR (status = 'succeeded' AND %(side)s)) AS running
    FROM {schema}.workflow WHERE id = %(id)s
), checkpointed AS (
    INSERT INTO {schema}.checkpoint (workflow_id, path, task_id, task_name, content_type, result, attempts)
    VALUES (%(id)s, %(path)s, %(task_id)s, %(task_name)s, %(content_type)s, %(result)s, %(attempts)s)
), released AS (
    DELETE FROM {schema}.message WHERE id = %(lease_id)s::bigint AND lease_token = %(lease_token)s::uuid
    RETURNING 1
), unwatched AS (
    DELETE FROM {schema}.sent_step WHERE workflow_id = %(id)s AND path = %(path)s AND %(watched)s::boolean
), counted AS (
    UPDATE {schema}.fan_in SET done = done + 1
    WHERE workflow_id = %(id)s AND path = %(group)s::text AND part = %(part)s::int
    RETURNING done < size AS open
), moved AS (
    UPDATE {schema}.workflow
    SET current_step = coalesce(%(step)s::int, current_step), updated_at = now(),
        status = CASE WHEN %(end)s::boolean THEN 'succeeded' ELSE status END,
        finished_at = CASE WHEN %(end)s::boolean THEN now() ELSE finished_at END
    WHERE id = %(id)s AND (%(step)s::int IS NOT NULL OR %(end)s::boolean
                           OR (status = 'running' AND updated_at < now() - interval '30 seconds'))
)
SELECT {schema}.step_guard_v1((SELECT running FROM state), 'the workflow is not running this generation'),
       {schema}.step_guard_v1(%(lease_id)s::bigint IS NULL OR EXISTS (SELECT 1 FROM released),
                              'lost the lease of the step''s message'),
       {schema}.step_guard_v1(%(group)s::text IS NULL OR (SELECT open FROM counted), 'the task fills its group''s count')

-- node_insert --
-- Store nodes of a workflow's tree (a new workflow's, or what Task.replace() grafts in).
INSERT INTO {schema}.workflow_node (workflow_id, path, kind, size, links, sig, name, chord, replaced,
                                    then_kind, then_path, then_part)
SELECT %(id)s, n.path, n.kind, n.size, n.links, n.sig::jsonb, n.name, n.chord, n.replaced,
       n.then_kind, n.then_path, n.then_part
FROM unnest(%(paths)s::text[], %(kinds)s::text[], %(sizes)s::int[], %(links)s::int[], %(sigs)s::text[],
            %(names)s::text[], %(chords)s::bool[], %(replaced)s::bool[], %(then_kinds)s::text[],
            %(then_paths)s::text[], %(then_parts)s::int[])
     AS n (path, kind, size, links, sig, name, chord, replaced, then_kind, then_path, then_part)

-- node_tree --
-- A workflow's whole tree (show, resume, restart).
SELECT path, kind, size, links, sig::text, chord, replaced
FROM {schema}.workflow_node WHERE workflow_id = %(id)s

-- node_rows --
-- Nodes by path (primary key), with what their completion does: a level of what a task starts, of a
-- group's value, of what a replaced task hands on, or the nodes above a lost task (the sweep).
SELECT path, kind, size, links, sig::text, chord, replaced, then_kind, then_path, then_part
FROM {schema}.workflow_node WHERE workflow_id = %(id)s AND path = ANY(%(paths)s)

-- node_next --
-- Before a task runs: the node its completion enters (the next element of its chain) and its link
-- callbacks, each read by its whole primary key; when they are chains or groups their first tasks are
-- read next (node_rows). Each wanted path is looked up on its own (OFFSET 0 keeps the lookup a nested
-- probe of the key): matched against the workflow's rows as a set, or as `path = ANY(array)`, the
-- planner may scan every row of the workflow when the table's statistics predate a large workflow.
SELECT n.path, n.kind, n.size, n.links, n.sig::text, n.chord, n.replaced, n.then_kind, n.then_path, n.then_part
FROM {schema}.workflow_node o
CROSS JOIN LATERAL (
    SELECT CASE WHEN o.then_kind = 'enter' THEN o.then_path END
    UNION ALL
    SELECT o.path || '~' || i FROM generate_series(0, o.links - 1) AS i
) AS wanted (path)
CROSS JOIN LATERAL (
    SELECT * FROM {schema}.workflow_node n WHERE n.workflow_id = %(id)s AND n.path = wanted.path OFFSET 0
) AS n
WHERE o.workflow_id = %(id)s AND o.path = %(path)s

-- node_then --
-- What a node's completion does (a group that just completed).
SELECT then_kind, then_path, then_part FROM {schema}.workflow_node WHERE workflow_id = %(id)s AND path = %(path)s

-- node_delete --
-- Forget nodes (a replaced task's link callbacks, stored again under the task that replaces it).
DELETE FROM {schema}.workflow_node WHERE workflow_id = %(id)s AND path = ANY(%(paths)s)

-- node_sig --
-- restart with new arguments: the task's signature.
UPDATE {schema}.workflow_node SET sig = %(sig)s::jsonb WHERE workflow_id = %(id)s AND path = %(path)s

-- fan_in_insert --
-- The counts of a tree's groups, nothing finished yet.
INSERT INTO {schema}.fan_in (workflow_id, path, part, size)
SELECT %(id)s, c.path, c.part, c.size
FROM unnest(%(paths)s::text[], %(parts)s::int[], %(sizes)s::int[]) AS c (path, part, size)

-- fan_in_count --
-- Count a finished member in its part and, when that fills the part, the part in the group's own row
-- (part -1). Returns whether the group is complete (then this member sends what follows it), and
-- how many rows counted it (0: the group has no count).
WITH part AS (
    UPDATE {schema}.fan_in SET done = done + 1
    WHERE workflow_id = %(id)s AND path = %(path)s AND part = %(part)s
    RETURNING done >= size AS filled
), whole AS (
    UPDATE {schema}.fan_in SET done = done + 1
    WHERE workflow_id = %(id)s AND path = %(path)s AND part = -1 AND %(part)s <> -1 AND (SELECT filled FROM part)
    RETURNING done >= size AS filled
)
SELECT coalesce((SELECT filled FROM whole), (SELECT filled FROM part) AND %(part)s = -1, false) AS complete,
       (SELECT count(*) FROM part) AS counted

-- fan_in_list --
-- How a workflow's groups are split in parts (restart counts them again).
SELECT path, part, size FROM {schema}.fan_in WHERE workflow_id = %(id)s

-- fan_in_set --
-- restart and resume: every group's counts, from the tasks that finished.
UPDATE {schema}.fan_in f SET done = c.done
FROM unnest(%(paths)s::text[], %(parts)s::int[], %(done)s::int[]) AS c (path, part, done)
WHERE f.workflow_id = %(id)s AND f.path = c.path AND f.part = c.part

-- fan_in_delete --
-- Forget the counts of groups under a replaced task's link callbacks (stored again under their new paths).
DELETE FROM {schema}.fan_in WHERE workflow_id = %(id)s AND path = ANY(%(paths)s)

-- checkpoint_insert --
-- Record a finished task; nothing is inserted if another attempt already finished it.
INSERT INTO {schema}.checkpoint (workflow_id, path, task_id, task_name, content_type, result, attempts)
VALUES (%(id)s, %(path)s, %(task_id)s, %(task_name)s, %(content_type)s, %(result)s, %(attempts)s)
ON CONFLICT (workflow_id, path) DO NOTHING
RETURNING 1

-- checkpoint_exists --
-- Whether one task already has its checkpoint: then it is decided.
SELECT 1 FROM {schema}.checkpoint WHERE workflow_id = %(id)s AND path = %(path)s

-- checkpoint_values --
-- The results of these tasks (what a resumed task receives, a restarted workflow's end).
SELECT path, content_type, result FROM {schema}.checkpoint WHERE workflow_id = %(id)s AND path = ANY(%(paths)s)

-- checkpoint_done --
-- Which of these tasks finished (the sweep: a lost task that finished needs no message).
SELECT path FROM {schema}.checkpoint WHERE workflow_id = %(id)s AND path = ANY(%(paths)s)

-- checkpoint_paths --
-- Which tasks of a workflow finished (resume, restart: what is left to run).
SELECT path FROM {schema}.checkpoint WHERE workflow_id = %(id)s

-- checkpoint_list --
-- Every checkpoint of a workflow, for the admin API.
SELECT path, task_id, task_name, content_type, result, attempts, finished_at
FROM {schema}.checkpoint WHERE workflow_id = %(id)s

-- checkpoint_delete_paths --
-- Forget the checkpoints of the tasks a restart runs again.
DELETE FROM {schema}.checkpoint WHERE workflow_id = %(id)s AND path = ANY(%(paths)s)

-- message_release --
-- Delete the step's own message, only while this worker's lease still holds it (fencing).
DELETE FROM {schema}.message WHERE id = %(id)s AND lease_token = %(token)s
RETURNING id

-- sent_step_record --
-- Broker outside the database: the tasks this transaction decides to send, due after their
-- countdown or ETA; a row left from an earlier send of the same task is replaced.
INSERT INTO {schema}.sent_step (workflow_id, path, generation, task_id, due_at, seen_at)
SELECT %(id)s, s.path, %(generation)s, s.task_id,
       coalesce(s.eta, now() + coalesce(s.countdown, 0) * interval '1 second'), now()
FROM unnest(%(paths)s::text[], %(task_ids)s::text[], %(etas)s::timestamptz[], %(countdowns)s::float8[])
     AS s (path, task_id, eta, countdown)
ON CONFLICT (workflow_id, path) DO UPDATE
SET generation = excluded.generation, task_id = excluded.task_id, due_at = excluded.due_at, seen_at = now()

-- sent_step_done --
-- The task's checkpoint commits in this transaction: its message no longer needs watching.
DELETE FROM {schema}.sent_step WHERE workflow_id = %(id)s AND path = %(path)s

-- sent_step_retry --
-- Celery sent a retry of the task, due after its countdown: not lost while it waits.
UPDATE {schema}.sent_step
SET due_at = coalesce(%(eta)s::timestamptz, now() + coalesce(%(countdown)s::float8, 0) * interval '1 second'),
    seen_at = now()
WHERE workflow_id = %(id)s AND path = %(path)s

-- sent_step_seen --
-- Signs of life from a worker that holds these tasks (prefetched, waiting for a countdown, running).
UPDATE {schema}.sent_step AS s SET seen_at = now()
FROM unnest(%(ids)s::text[], %(paths)s::text[]) AS held (workflow_id, path)
WHERE s.workflow_id = held.workflow_id AND s.path = held.path

-- message_step_live --
-- Resume: which of these tasks still have a message of this generation in the table (queued, waiting
-- for its countdown, or held by a worker): a live attempt, not to be sent again. The task names narrow
-- the scan before any payload is parsed.
SELECT DISTINCT h.step ->> 'path'
FROM {schema}.message m,
     LATERAL (SELECT m.payload::jsonb -> 'headers' -> %(header)s AS step) h
WHERE m.task = ANY(%(tasks)s)
  AND h.step ->> 'workflow_id' = %(id)s
  AND h.step ->> 'generation' = %(generation)s::text
  AND h.step ->> 'path' = ANY(%(paths)s)

-- sent_step_live --
-- Resume behind another broker: which of these tasks were sent in this generation and show a sign of
-- life (sent, held by a worker) within `after` seconds, or are not due yet: a live attempt (the sweep's
-- sent_step_lost, turned round).
SELECT path
FROM {schema}.sent_step
WHERE workflow_id = %(id)s AND generation = %(generation)s AND path = ANY(%(paths)s)
  AND (seen_at >= now() - %(after)s * interval '1 second' OR due_at >= now() - %(after)s * interval '1 second')

-- sweep_try_lock --
-- One worker at a time re-sends lost steps: a transaction-scoped try-lock (it works through PgBouncer's
-- transaction mode); false: another worker sweeps now, so skip.
SELECT pg_try_advisory_xact_lock(hashtext(%(key)s))

-- sent_step_lost --
-- Sent tasks of running workflows (or link callbacks, paths with '~', of succeeded ones) with no sign
-- of life for `after` seconds past their due time: their message was lost (a worker died with it after
-- an early ack, or it was never sent).
SELECT s.workflow_id, s.path
FROM {schema}.sent_step s
JOIN {schema}.workflow w ON w.id = s.workflow_id
WHERE (w.status = 'running' OR (w.status = 'succeeded' AND strpos(s.path, '~') > 0))
  AND s.generation = w.generation
  AND s.seen_at < now() - %(after)s * interval '1 second'
  AND s.due_at < now() - %(after)s * interval '1 second'
ORDER BY s.seen_at
LIMIT 100
