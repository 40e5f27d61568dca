-- Named queries of the beat scheduler and the schedule API. {schema} is the configured schema.

-- beat_lease_take --
-- Take the beat lease when it is free or expired, or renew it when it is ours; then what holds it. held_since
-- is kept across renewals of a live lease and starts anew when the lease had expired (a gap nobody covered).
-- The database's clock times every lease, so the beats' own clocks need not agree.
WITH took AS (
    INSERT INTO {schema}.beat_lease AS l (name, holder, token, expires_at, held_since, renewed_at)
    VALUES (%(name)s, %(holder)s, %(token)s, clock_timestamp() + %(seconds)s * interval '1 second',
            clock_timestamp(), clock_timestamp())
    ON CONFLICT (name) DO UPDATE
    SET holder = excluded.holder, token = excluded.token, expires_at = excluded.expires_at,
        renewed_at = excluded.renewed_at,
        held_since = CASE WHEN l.token = excluded.token AND l.expires_at > excluded.renewed_at
                          THEN l.held_since ELSE excluded.held_since END,
        takeovers = l.takeovers + (l.token <> excluded.token)::int
    WHERE l.token = excluded.token OR l.expires_at <= clock_timestamp()
    RETURNING true AS ours, l.holder, l.held_since, l.expires_at
)
SELECT ours, holder, held_since, expires_at, clock_timestamp() AS now FROM took
UNION ALL
SELECT false, holder, held_since, expires_at, clock_timestamp()
FROM {schema}.beat_lease WHERE name = %(name)s AND NOT EXISTS (SELECT FROM took)

-- beat_lease_fence --
-- First statement of every run's transaction: the lease is still this beat's. The row lock makes a
-- takeover wait for this transaction's end, so no run commits after another beat took the lease. A beat
-- paused (or cut off) inside the transaction holds that lock at most %(ms)s ms: then the server ends its
-- session, rolling the run back, and the takeover goes on.
SELECT set_config('idle_in_transaction_session_timeout', %(ms)s, true)
FROM {schema}.beat_lease
WHERE name = %(name)s AND token = %(token)s AND expires_at > clock_timestamp()
FOR SHARE

-- beat_lease_release --
-- A beat that stops hands the lease on at once (the others take it at their next check).
UPDATE {schema}.beat_lease SET expires_at = clock_timestamp()
WHERE name = %(name)s AND token = %(token)s

-- beat_lease_get --
-- Who holds the beat lease, and for how long yet (a negative time: expired, nobody holds it).
SELECT holder, held_since, renewed_at, expires_at, expires_at - clock_timestamp() AS left_, takeovers
FROM {schema}.beat_lease WHERE name = %(name)s

-- beat_entry_active --
-- What the active beat looks at each tick: every entry it may have to send (a paused one only for a run-now).
SELECT name, task, schedule, content_type, content_encoding, args, kwargs, options, catch_up, enabled,
       last_run_at, next_run_at, revision, run_requested_at, error
FROM {schema}.beat_entry
WHERE enabled OR run_requested_at IS NOT NULL
ORDER BY name

-- beat_entry_ran --
-- In the run's transaction, after the fence: the entry moves past the runs sent with it. Matches only while
-- the entry is as the beat read it (its revision and last run), so a run is never sent twice, nor one of a
-- definition that changed meanwhile.
UPDATE {schema}.beat_entry
SET last_run_at = %(last_run_at)s, next_run_at = %(next_run_at)s,
    total_run_count = total_run_count + %(runs)s, skipped_run_count = skipped_run_count + %(skipped)s,
    last_task_id = coalesce(%(task_id)s, last_task_id),
    last_sent_at = CASE WHEN %(runs)s > 0 THEN clock_timestamp() ELSE last_sent_at END, error = NULL
WHERE name = %(name)s AND revision = %(revision)s AND last_run_at = %(previous)s
RETURNING name

-- beat_entry_ran_now --
-- In a run-now's transaction, after the fence: the request is served once (its schedule is left as it was).
UPDATE {schema}.beat_entry
SET run_requested_at = NULL, total_run_count = total_run_count + 1, last_task_id = %(task_id)s,
    last_sent_at = clock_timestamp()
WHERE name = %(name)s AND run_requested_at = %(requested)s
RETURNING name

-- beat_entry_next --
-- The active beat shows when an entry falls due next (for the view, the CLI's list and the metrics).
UPDATE {schema}.beat_entry SET next_run_at = %(next_run_at)s, error = NULL
WHERE name = %(name)s AND revision = %(revision)s AND last_run_at = %(previous)s
  AND (next_run_at IS DISTINCT FROM %(next_run_at)s OR error IS NOT NULL)

-- beat_entry_error --
-- An entry the beat cannot send (a schedule or arguments it cannot read): why, until its definition changes.
UPDATE {schema}.beat_entry SET error = %(error)s, next_run_at = NULL
WHERE name = %(name)s AND revision = %(revision)s AND error IS DISTINCT FROM %(error)s

-- beat_entry_sync --
-- A beat_schedule entry from the app's configuration: created, or its definition set to the code's. Its
-- pause, run history and pending run-now are kept; a runtime entry of that name becomes the config's.
INSERT INTO {schema}.beat_entry AS e (name, task, schedule, content_type, content_encoding, args, kwargs, options,
                                      catch_up, origin)
VALUES (%(name)s, %(task)s, %(schedule)s, %(content_type)s, %(content_encoding)s, %(args)s, %(kwargs)s,
        %(options)s, %(catch_up)s, 'config')
ON CONFLICT (name) DO UPDATE
SET task = excluded.task, schedule = excluded.schedule, content_type = excluded.content_type,
    content_encoding = excluded.content_encoding, args = excluded.args, kwargs = excluded.kwargs,
    options = excluded.options, catch_up = excluded.catch_up, origin = 'config'

-- beat_entry_unconfigured --
-- Config entries the app's beat_schedule no longer names: removed (runtime entries are never touched).
DELETE FROM {schema}.beat_entry
WHERE origin = 'config' AND NOT (name = ANY(%(names)s))
RETURNING name

-- beat_entry_add --
-- A runtime entry (API, CLI): created; an entry of that name is an error unless replace is asked.
INSERT INTO {schema}.beat_entry AS e (name, task, schedule, content_type, content_encoding, args, kwargs, options,
                                      catch_up, enabled, origin)
VALUES (%(name)s, %(task)s, %(schedule)s, %(content_type)s, %(content_encoding)s, %(args)s, %(kwargs)s,
        %(options)s, %(catch_up)s, %(enabled)s, 'runtime')
ON CONFLICT (name) DO UPDATE
SET task = excluded.task, schedule = excluded.schedule, content_type = excluded.content_type,
    content_encoding = excluded.content_encoding, args = excluded.args, kwargs = excluded.kwargs,
    options = excluded.options, catch_up = excluded.catch_up, enabled = excluded.enabled
WHERE %(replace)s
RETURNING name

-- beat_entry_get --
-- One entry as stored, for a change through the API (its row locked until the change commits).
SELECT name, task, schedule, content_type, content_encoding, args, kwargs, options, catch_up, enabled, origin
FROM {schema}.beat_entry WHERE name = %(name)s
FOR UPDATE

-- beat_entry_set --
-- A change through the API: the whole definition as the caller rebuilt it.
UPDATE {schema}.beat_entry
SET task = %(task)s, schedule = %(schedule)s, content_type = %(content_type)s, content_encoding = %(content_encoding)s,
    args = %(args)s, kwargs = %(kwargs)s, options = %(options)s, catch_up = %(catch_up)s, enabled = %(enabled)s
WHERE name = %(name)s
RETURNING name

-- beat_entry_enable --
-- Pause or resume an entry (a resumed entry counts from now: the trigger moves last_run_at).
UPDATE {schema}.beat_entry SET enabled = %(enabled)s WHERE name = %(name)s RETURNING name

-- beat_entry_remove --
-- Remove an entry (a config entry comes back at the next beat start unless the code drops it too).
DELETE FROM {schema}.beat_entry WHERE name = %(name)s RETURNING name, origin

-- beat_entry_run_now --
-- Ask the active beat to send one run of the entry at its next tick (once, whatever the number of asks).
UPDATE {schema}.beat_entry SET run_requested_at = coalesce(run_requested_at, clock_timestamp())
WHERE name = %(name)s RETURNING name, run_requested_at

-- beat_entry_list --
-- Every entry with its state and the lease's holder, as the beat_entries view shows them.
SELECT name, task, schedule, enabled, origin, catch_up, next_run_at, last_run_at, last_sent_at, last_task_id,
       last_status, total_run_count, skipped_run_count, run_requested_at, error, overdue, beat_holder,
       beat_lease_live, content_type, content_encoding, args, kwargs, options
FROM {schema}.beat_entries
WHERE %(name)s::text IS NULL OR name = %(name)s
ORDER BY name

-- beat_entry_last_run --
-- Carry a last run time over from another scheduler (its runs after it are due here, as after a restart of
-- that scheduler); never moves back past a run a beat of ours sent.
UPDATE {schema}.beat_entry
SET last_run_at = %(last_run_at)s, next_run_at = NULL,
    total_run_count = greatest(total_run_count, coalesce(%(total_run_count)s, total_run_count))
WHERE name = %(name)s AND (last_sent_at IS NULL OR last_run_at < %(last_run_at)s)
  AND last_run_at IS DISTINCT FROM %(last_run_at)s
RETURNING name
