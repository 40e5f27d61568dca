-- Durable steps commit in one pipelined round trip; this guard aborts it when a condition the
-- step read before it ran no longer holds (the step then takes the slower, checking path).

-- A durable step commits in one pipelined round trip, built on what it read before it ran; each
-- condition that choice relied on (workflow still at this step, lease still held) is checked by
-- this guard, which aborts the transaction with the reason when one no longer holds.
CREATE FUNCTION {schema}.step_guard_v1(ok boolean, reason text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION 'celery_durable step guard: %', reason;
    END IF;
END;
$$;
