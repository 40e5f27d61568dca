-- Named queries of durable chains: workflows and their checkpoints.

-- workflow_insert --
-- Start a workflow; a workflow_id seen before inserts nothing (deduplication).
INSERT INTO {schema}.workflow (id, name, steps, result_task_id, atomic)
VALUES (%(id)s, %(name)s, %(steps)s, %(result_task_id)s, %(atomic)s)
ON CONFLICT (id) DO NOTHING
RETURNING id

-- workflow_lock --
-- Serialise everything that moves a workflow on (group members finishing together, cancel, restart).
SELECT status, current_step, generation, steps, result_task_id, atomic
FROM {schema}.workflow WHERE id = %(id)s FOR UPDATE

-- workflow_get --
-- One workflow, for the admin API.
SELECT id, name, status, current_step, generation, steps, result_task_id, error,
       created_at, updated_at, finished_at, atomic
FROM {schema}.workflow WHERE id = %(id)s

-- workflow_list --
-- Recent workflows, optionally of one status ('stalled': running without progress for 5 minutes).
SELECT id, name, status, current_step, step_count, current_task, age, updated_at, error
FROM {schema}.workflows
WHERE %(status)s::text IS NULL OR status = %(status)s OR (%(status)s = 'stalled' AND stalled)
ORDER BY created_at DESC
LIMIT %(limit)s

-- workflow_advance --
-- The next step was dispatched in this transaction.
UPDATE {schema}.workflow SET current_step = %(step)s, updated_at = now() WHERE id = %(id)s

-- workflow_finish --
-- The workflow reached an end state: succeeded, failed (at current_step) or cancelled.
UPDATE {schema}.workflow
SET status = %(status)s, error = %(error)s, current_step = %(step)s, updated_at = now(),
    finished_at = CASE WHEN %(status)s = 'failed' THEN NULL ELSE now() END
WHERE id = %(id)s

-- workflow_restart --
-- Run again from a step: a new generation, so in-flight messages of the old run are ignored.
UPDATE {schema}.workflow
SET status = 'running', current_step = %(step)s, generation = generation + %(bump)s,
    steps = %(steps)s, error = NULL, finished_at = NULL, updated_at = now()
WHERE id = %(id)s
RETURNING generation

-- workflow_touch --
-- A step was re-dispatched by the recovery sweep.
UPDATE {schema}.workflow SET updated_at = now() WHERE id = %(id)s

-- workflow_orphans --
-- Non-atomic workflows (broker outside this database) whose current step has no checkpoint
-- and has not moved for a while: its message may have been lost between commit and send.
SELECT w.id FROM {schema}.workflow w
WHERE w.status = 'running' AND NOT w.atomic
  AND w.updated_at < now() - %(after)s * interval '1 second'
  AND (SELECT count(*) FROM {schema}.checkpoint c WHERE c.workflow_id = w.id AND c.step = w.current_step)
      < jsonb_array_length(w.steps -> w.current_step -> 'signatures')
ORDER BY w.updated_at
LIMIT 100

-- workflow_expire --
-- Forget finished workflows (and, by cascade, their checkpoints) after the retention.
DELETE FROM {schema}.workflow
WHERE status IN ('succeeded', 'cancelled', 'failed')
  AND updated_at < now() - %(retention)s * interval '1 second'

-- step_state --
-- Before a step runs: its workflow's status and generation, and its checkpoint if it already
-- finished (a redelivered finished step is not run again). One round trip.
SELECT w.status, w.generation, c.content_type, c.result
FROM {schema}.workflow w
LEFT JOIN {schema}.checkpoint c
       ON c.workflow_id = w.id AND c.step = %(step)s AND c.member = %(member)s
WHERE w.id = %(id)s

-- checkpoint_insert --
-- Record a finished step; nothing is inserted if another attempt already finished it.
INSERT INTO {schema}.checkpoint (workflow_id, step, member, task_id, task_name, content_type, result, attempts)
VALUES (%(id)s, %(step)s, %(member)s, %(task_id)s, %(task_name)s, %(content_type)s, %(result)s, %(attempts)s)
ON CONFLICT (workflow_id, step, member) DO NOTHING
RETURNING 1

-- checkpoint_members --
-- Results of a group step's finished members, in member order.
SELECT member, content_type, result FROM {schema}.checkpoint
WHERE workflow_id = %(id)s AND step = %(step)s AND member >= 0
ORDER BY member

-- checkpoint_step --
-- Every checkpoint of one step (one row, or one per group member), in member order.
SELECT member, content_type, result FROM {schema}.checkpoint
WHERE workflow_id = %(id)s AND step = %(step)s
ORDER BY member

-- checkpoint_list --
-- Every checkpoint of a workflow, for the admin API.
SELECT step, member, task_id, task_name, content_type, result, attempts, finished_at
FROM {schema}.checkpoint WHERE workflow_id = %(id)s ORDER BY step, member

-- checkpoint_delete_from --
-- Forget the checkpoints of the steps a restart runs again.
DELETE FROM {schema}.checkpoint WHERE workflow_id = %(id)s AND step >= %(step)s

-- message_release --
-- Delete the step's own message, only while this worker's lease still holds it (fencing).
DELETE FROM {schema}.message WHERE id = %(id)s AND lease_token = %(token)s
RETURNING id
