-- Wake-ups come from a row trigger: every publish inserts one row per queue, and the statement
-- trigger's transition table and query cost a publish more than the row trigger's few expressions.
-- The payloads are those of message_notify_v3 (one id per wake-up), so workers of either version read them.
CREATE FUNCTION {schema}.message_notify_v4() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    payload text := CASE WHEN NEW.visible_at <= now()
                         THEN 'r' || pg_current_xact_id() || '/' || NEW.priority || ':' || NEW.id || ';' || NEW.queue
                         ELSE 'd' || extract(epoch FROM NEW.visible_at)::text || ':' || NEW.queue END;
BEGIN
    IF current_setting('celery_durable.wake_after_commit', true) IS DISTINCT FROM 'on' THEN
        PERFORM pg_notify(TG_TABLE_SCHEMA || '.message', payload);
        RETURN NULL;
    END IF;
    -- A session setting outlives the commit (and reverts with a rollback): [channel, payload] pairs.
    PERFORM set_config('celery_durable.wakes',
                       (coalesce(nullif(current_setting('celery_durable.wakes', true), ''), '[]')::jsonb
                        || jsonb_build_array(jsonb_build_array(TG_TABLE_SCHEMA || '.message', payload)))::text,
                       false);
    RETURN NULL;
END;
$$;

DROP TRIGGER message_notify ON {schema}.message;
CREATE TRIGGER message_notify AFTER INSERT ON {schema}.message
    FOR EACH ROW EXECUTE FUNCTION {schema}.message_notify_v4();

DROP FUNCTION {schema}.message_notify_v3();
