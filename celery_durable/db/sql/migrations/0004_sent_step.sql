-- Durable chains behind Redis/RabbitMQ: the sweep re-sends only steps whose message is gone.
-- Running workflows of that mode get a row for each unfinished member of their current step,
-- as if just sent, so the sweep keeps covering them after the upgrade.

CREATE TABLE {schema}.sent_step (
    workflow_id text NOT NULL REFERENCES {schema}.workflow (id) ON DELETE CASCADE,
    path text NOT NULL,
    generation integer NOT NULL,
    task_id text,
    due_at timestamptz NOT NULL DEFAULT now(),
    seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, path)
);

INSERT INTO {schema}.sent_step (workflow_id, path, generation, due_at, seen_at)
SELECT w.id,
       CASE WHEN w.steps -> w.current_step ->> 'kind' = 'group' THEN w.current_step || '.' || m.member
            ELSE w.current_step::text END,
       w.generation, w.updated_at, w.updated_at
FROM {schema}.workflow w
CROSS JOIN LATERAL (
    SELECT CASE WHEN w.steps -> w.current_step ->> 'kind' = 'group' THEN g ELSE -1 END AS member
    FROM generate_series(0, jsonb_array_length(w.steps -> w.current_step -> 'signatures') - 1) AS g
    WHERE w.steps -> w.current_step ->> 'kind' = 'group' OR g = 0
) m
WHERE w.status = 'running' AND NOT w.atomic
  AND NOT EXISTS (SELECT 1 FROM {schema}.checkpoint c
                  WHERE c.workflow_id = w.id AND c.step = w.current_step AND c.member = m.member);
