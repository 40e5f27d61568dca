-- Publishers may send the wake-up NOTIFY after their commit, in a second quick transaction, so a
-- commit that waits for its WAL flush does not hold PostgreSQL's NOTIFY lock meanwhile.
CREATE FUNCTION {schema}.message_notify_v2() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('celery_durable.wake_after_commit', true) IS DISTINCT FROM 'on' THEN
        PERFORM pg_notify(TG_TABLE_SCHEMA || '.message',
                          CASE WHEN n.first_visible <= now() THEN 'r' || n.queue
                               ELSE 'd' || extract(epoch FROM n.first_visible)::text || ':' || n.queue END)
        FROM (SELECT queue, min(visible_at) AS first_visible FROM new_rows GROUP BY queue) AS n;
        RETURN NULL;
    END IF;
    -- A session setting outlives the commit (and reverts with a rollback): [channel, payload] pairs.
    PERFORM set_config('celery_durable.wakes',
                       (coalesce(nullif(current_setting('celery_durable.wakes', true), ''), '[]')::jsonb
                        || w.wakes)::text, false)
    FROM (SELECT jsonb_agg(jsonb_build_array(
                     TG_TABLE_SCHEMA || '.message',
                     CASE WHEN n.first_visible <= now() THEN 'r' || n.queue
                          ELSE 'd' || extract(epoch FROM n.first_visible)::text || ':' || n.queue END)) AS wakes
          FROM (SELECT queue, min(visible_at) AS first_visible FROM new_rows GROUP BY queue) AS n) AS w;
    RETURN NULL;
END;
$$;

DROP TRIGGER message_notify ON {schema}.message;
CREATE TRIGGER message_notify AFTER INSERT ON {schema}.message
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.message_notify_v2();

-- Send (and forget) the wake-ups message_notify_v2 stashed in this session.
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

DROP FUNCTION {schema}.message_notify_v1();
