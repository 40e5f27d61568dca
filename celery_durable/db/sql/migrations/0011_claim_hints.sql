-- Wake-ups say where the new ready rows start: 'r<xid>/<priority>:<first id>[,...];<queue>'. A worker's
-- claim begins there instead of at the head of the queue's index, so it never walks the dead rows a
-- held snapshot keeps, nor leased or delayed rows. Workers of an older version read the new payload as
-- a queue they do not consume, and find messages at their safety poll until they are upgraded.
CREATE FUNCTION {schema}.message_notify_v3() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    payloads text[];
BEGIN
    SELECT array_agg(w.payload) INTO payloads
    FROM (SELECT 'r' || pg_current_xact_id() || '/'
                 || string_agg(r.priority || ':' || r.first_id, ',' ORDER BY r.priority DESC) || ';' || r.queue
          FROM (SELECT queue, priority, min(id) AS first_id FROM new_rows
                WHERE visible_at <= now() GROUP BY queue, priority) AS r
          GROUP BY r.queue
          UNION ALL
          SELECT 'd' || extract(epoch FROM min(visible_at))::text || ':' || queue
          FROM new_rows WHERE visible_at > now() GROUP BY queue) AS w(payload);
    IF current_setting('celery_durable.wake_after_commit', true) IS DISTINCT FROM 'on' THEN
        PERFORM pg_notify(TG_TABLE_SCHEMA || '.message', p) FROM unnest(payloads) AS p;
        RETURN NULL;
    END IF;
    -- A session setting outlives the commit (and reverts with a rollback): [channel, payload] pairs.
    PERFORM set_config('celery_durable.wakes',
                       (coalesce(nullif(current_setting('celery_durable.wakes', true), ''), '[]')::jsonb
                        || w.wakes)::text, false)
    FROM (SELECT jsonb_agg(jsonb_build_array(TG_TABLE_SCHEMA || '.message', p)) AS wakes
          FROM unnest(payloads) AS p) AS w;
    RETURN NULL;
END;
$$;

DROP TRIGGER message_notify ON {schema}.message;
CREATE TRIGGER message_notify AFTER INSERT ON {schema}.message
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.message_notify_v3();

DROP FUNCTION {schema}.message_notify_v2();
