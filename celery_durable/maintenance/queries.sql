-- Named queries of the maintenance service. {schema} is the configured schema.

-- maintenance_try_lock --
-- One process at a time deletes expired rows of a schema. Transaction-scoped, so it works through
-- PgBouncer's transaction mode and can never outlive the batch that took it; false: skip, never queue.
SELECT pg_try_advisory_xact_lock(hashtext(%(key)s))

-- maintenance_lock --
-- The same lock, waited for: an explicit cleanup (beat's) takes its turn instead of skipping.
SELECT pg_advisory_xact_lock(hashtext(%(key)s))

-- maintenance_time_limit --
-- Bound one batch by what is left of the run's time (transaction-local, so nothing leaks to the pool).
SELECT set_config('statement_timeout', %(ms)s, true)
