-- Durable canvases: a checkpoint is keyed by its task's path in the workflow's tree ("2.1.0")
-- instead of (step, member); an older row's step s, member m becomes "s" or "s.m", the same task
-- in the tree an older workflow's steps decode to. The table is rebuilt (not altered) so that its
-- columns read as schema.sql has them. A failed workflow remembers the failed task.

CREATE TEMPORARY TABLE checkpoint_by_path ON COMMIT DROP AS
SELECT workflow_id, CASE WHEN member < 0 THEN step::text ELSE step || '.' || member END AS path,
       task_id, task_name, content_type, result, attempts, finished_at
FROM {schema}.checkpoint;

DROP TABLE {schema}.checkpoint;

CREATE TABLE {schema}.checkpoint (
    workflow_id text NOT NULL REFERENCES {schema}.workflow (id) ON DELETE CASCADE,
    path text NOT NULL,
    task_id text NOT NULL,
    task_name text,
    content_type text NOT NULL,
    result bytea NOT NULL,
    attempts integer NOT NULL DEFAULT 1,
    finished_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, path)
);

INSERT INTO {schema}.checkpoint SELECT * FROM checkpoint_by_path;

ALTER TABLE {schema}.workflow ADD COLUMN failed_path text;
UPDATE {schema}.workflow SET failed_path = current_step::text WHERE status = 'failed';
