-- Named queries of durable workflows: workflows, their checkpoints, and steps sent to other brokers.
-- A path names a task in the workflow's tree: "2.1.0" (see workflow/tree.py).

-- workflow_insert --
-- Start a workflow; a workflow_id seen before inserts nothing (deduplication).
INSERT INTO {schema}.workflow (id, name, steps, result_task_id, atomic)
VALUES (%(id)s, %(name)s, %(steps)s, %(result_task_id)s, %(atomic)s)
ON CONFLICT (id) DO NOTHING
RETURNING id

-- workflow_lock --
-- Serialise everything that moves a workflow on (group members finishing together, cancel, restart).
SELECT status, current_step, generation, steps, result_task_id, atomic, failed_path
FROM {schema}.workflow WHERE id = %(id)s FOR UPDATE

-- workflow_get --
-- One workflow, for the admin API.
SELECT id, name, status, current_step, generation, steps, result_task_id, error,
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

-- workflow_touch --
-- A task inside the current element finished: progress, for the stalled view.
UPDATE {schema}.workflow SET updated_at = now() WHERE id = %(id)s

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
    steps = %(steps)s, error = NULL, failed_path = NULL, finished_at = NULL, updated_at = now()
WHERE id = %(id)s
RETURNING generation

-- workflow_steps --
-- Task.replace() inside a durable task: the tree with the replacement grafted in its place.
UPDATE {schema}.workflow SET steps = %(steps)s, updated_at = now() WHERE id = %(id)s

-- workflow_revive --
-- A late success of the task a duplicate attempt failed: its checkpoint wins, the workflow runs on.
UPDATE {schema}.workflow SET status = 'running', error = NULL, failed_path = NULL, finished_at = NULL,
    updated_at = now()
WHERE id = %(id)s

-- workflow_expire --
-- Maintenance: forget a batch of finished workflows (and, by cascade, their checkpoints) after
-- the retention; rows others hold are skipped.
DELETE FROM {schema}.workflow
WHERE id IN (
    SELECT id FROM {schema}.workflow
    WHERE status IN ('succeeded', 'cancelled', 'failed')
      AND updated_at < now() - %(retention)s * interval '1 second'
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)

-- step_state --
-- Before a task runs: its workflow's status, generation, current step, steps and result id, and its
-- checkpoint if it already finished (a redelivered finished task is not run again). One round trip;
-- what it reads lets the task's commit go out in one more (see step_guard_lock).
SELECT w.status, w.generation, c.content_type, c.result, w.current_step, w.steps, w.result_task_id
FROM {schema}.workflow w
LEFT JOIN {schema}.checkpoint c ON c.workflow_id = w.id AND c.path = %(path)s
WHERE w.id = %(id)s

-- step_guard_lock --
-- Pipelined commit: lock the workflow; abort unless it still runs this generation at this root element.
SELECT {schema}.step_guard_v1(
    (SELECT status = 'running' AND generation = %(generation)s AND current_step = %(step)s
     FROM {schema}.workflow WHERE id = %(id)s FOR UPDATE),
    'the workflow moved on while the step ran')

-- checkpoint_insert --
-- Record a finished task; nothing is inserted if another attempt already finished it.
INSERT INTO {schema}.checkpoint (workflow_id, path, task_id, task_name, content_type, result, attempts)
VALUES (%(id)s, %(path)s, %(task_id)s, %(task_name)s, %(content_type)s, %(result)s, %(attempts)s)
ON CONFLICT (workflow_id, path) DO NOTHING
RETURNING 1

-- checkpoint_insert_new --
-- Pipelined commit: record the finished task; a checkpoint already there aborts the transaction.
INSERT INTO {schema}.checkpoint (workflow_id, path, task_id, task_name, content_type, result, attempts)
VALUES (%(id)s, %(path)s, %(task_id)s, %(task_name)s, %(content_type)s, %(result)s, %(attempts)s)

-- checkpoint_exists --
-- Whether one task already has its checkpoint: then it is decided.
SELECT 1 FROM {schema}.checkpoint WHERE workflow_id = %(id)s AND path = %(path)s

-- checkpoint_count --
-- How many of these tasks finished (a group is complete when all its terminal tasks did).
SELECT count(*) FROM {schema}.checkpoint WHERE workflow_id = %(id)s AND path = ANY(%(paths)s)

-- checkpoint_values --
-- The results of these tasks (a completed group's members, what a resumed task receives).
SELECT path, content_type, result FROM {schema}.checkpoint WHERE workflow_id = %(id)s AND path = ANY(%(paths)s)

-- checkpoint_paths --
-- Which tasks of a workflow finished (resume, restart, sweep: what is left to run).
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

-- message_release_guarded --
-- Pipelined commit: delete the step's own message; abort unless this worker's lease still holds it.
WITH released AS (
    DELETE FROM {schema}.message WHERE id = %(id)s AND lease_token = %(token)s RETURNING 1
)
SELECT {schema}.step_guard_v1((SELECT count(*) FROM released) = 1, 'lost the lease of the step''s message')

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
