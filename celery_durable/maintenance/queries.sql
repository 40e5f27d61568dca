-- Named queries of the maintenance service. {schema} is the configured schema.

-- maintenance_try_lock --
-- One process at a time deletes expired rows of a schema: the first statement of each round's
-- transaction. Transaction-scoped, so it works through PgBouncer's transaction mode and never
-- outlives the round; false: skip, never queue. Also bounds each statement of the round by its
-- share of the run's time (%(ms)s; NULL: the session's own statement_timeout), transaction-local.
SELECT pg_try_advisory_xact_lock(hashtext(%(key)s)),
       set_config('statement_timeout', coalesce(%(ms)s, current_setting('statement_timeout')), true)

-- maintenance_lock --
-- The same lock, waited for: an explicit cleanup (beat's) takes its turn instead of skipping.
SELECT true, set_config('statement_timeout', coalesce(%(ms)s, current_setting('statement_timeout')), true)
FROM (SELECT pg_advisory_xact_lock(hashtext(%(key)s))) AS locked
