-- Named queries of the doctor, the horizon metrics and the worker's horizon watch. {schema} is the
-- configured schema. Everything here reads catalogs and statistics views a role without
-- pg_monitor may see only in part: columns it may not see read as NULL.

-- horizon_holders --
-- Who holds back VACUUM's horizon for this database's tables, oldest first: sessions of this database
-- with a snapshot or a transaction id, walsenders (a standby's hot_standby_feedback: every database's),
-- prepared transactions of this database, replication slots (xmin: every table; catalog_xmin: the
-- system catalogs only). age_seconds is NULL where PostgreSQL does not say since when (another role's
-- session without pg_read_all_stats, a standby's feedback, an active slot).
SELECT h.kind, h.pid, h.name, h.username, h.client, h.xmin::text AS xmin, age(h.xmin) AS age_xids,
       extract(epoch FROM now() - h.since)::float8 AS age_seconds, h.state, h.query, h.hidden
FROM (
    SELECT CASE WHEN r.pid IS NOT NULL THEN 'standby' ELSE 'backend' END AS kind, a.pid,
           coalesce(r.application_name, a.application_name) AS name, a.usename AS username,
           coalesce(host(a.client_addr) || ':' || a.client_port, a.client_hostname) AS client,
           CASE WHEN a.backend_xid IS NOT NULL AND (a.backend_xmin IS NULL OR age(a.backend_xid) > age(a.backend_xmin))
                THEN a.backend_xid ELSE a.backend_xmin END AS xmin,
           CASE WHEN r.pid IS NULL THEN a.xact_start END AS since, a.state,
           nullif(a.query, '<insufficient privilege>') AS query, a.query = '<insufficient privilege>' AS hidden
    FROM pg_stat_activity AS a
    LEFT JOIN pg_stat_replication AS r ON r.pid = a.pid
    WHERE (a.backend_xmin IS NOT NULL OR a.backend_xid IS NOT NULL) AND a.pid <> pg_backend_pid()
      AND (a.datid IS NULL OR a.datname = current_database())
    UNION ALL
    SELECT 'prepared', NULL, p.gid, p.owner::text, NULL, p.transaction, p.prepared, NULL, NULL, false
    FROM pg_prepared_xacts AS p
    WHERE p.database = current_database()
    UNION ALL
    SELECT CASE WHEN x.catalog THEN 'slot_catalog' ELSE 'slot' END, s.active_pid, s.slot_name, NULL, NULL,
           x.xmin, CASE WHEN NOT s.active THEN (to_jsonb(s) ->> 'inactive_since')::timestamptz END,
           CASE WHEN s.active THEN 'active' ELSE 'inactive' END, s.slot_type || coalesce(' ' || s.plugin, ''), false
    FROM pg_replication_slots AS s
    CROSS JOIN LATERAL (VALUES (s.xmin, false), (s.catalog_xmin, true)) AS x (xmin, catalog)
    WHERE x.xmin IS NOT NULL
) AS h
ORDER BY age(h.xmin) DESC, h.since

-- standbys --
-- Streaming standbys and what their feedback holds (backend_xmin: hot_standby_feedback is on there).
SELECT r.pid, r.application_name, coalesce(host(r.client_addr), r.client_hostname) AS client, r.state,
       r.sync_state, r.backend_xmin::text AS xmin, age(r.backend_xmin) AS age_xids
FROM pg_stat_replication AS r
ORDER BY r.application_name

-- message_dead_rows --
-- Dead rows in the message table (what claims walk past while VACUUM cannot remove them). Found by
-- name in the catalog, so a role without USAGE on the schema may ask too; no row without a schema.
SELECT pg_stat_get_dead_tuples(c.oid)
FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = 'message'

-- table_stats --
-- Our tables: rows, dead rows, sizes, and when they were last vacuumed and analyzed.
SELECT c.relname AS table, s.n_live_tup AS live_rows, s.n_dead_tup AS dead_rows,
       pg_relation_size(c.oid) AS table_bytes, pg_total_relation_size(c.oid) AS total_bytes,
       pg_size_pretty(pg_total_relation_size(c.oid)) AS size,
       s.last_vacuum, s.last_autovacuum, s.last_analyze, s.last_autoanalyze,
       s.vacuum_count, s.autovacuum_count, coalesce(c.reloptions, '{}') AS options
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables AS s ON s.relid = c.oid
WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p')
ORDER BY c.relname

-- table_options --
-- The message table's storage options (its own autovacuum settings, autovacuum_enabled).
SELECT coalesce(c.reloptions, '{}')
FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = 'message'

-- autovacuum_settings --
-- The server's autovacuum settings (those a table's storage options do not override).
SELECT name, setting, unit
FROM pg_settings
WHERE name IN ('autovacuum', 'track_counts', 'autovacuum_naptime', 'autovacuum_max_workers',
               'autovacuum_vacuum_scale_factor', 'autovacuum_vacuum_threshold',
               'autovacuum_vacuum_insert_scale_factor', 'autovacuum_vacuum_cost_limit',
               'autovacuum_vacuum_cost_delay', 'vacuum_cost_limit', 'old_snapshot_threshold',
               'idle_in_transaction_session_timeout', 'hot_standby_feedback')
ORDER BY name

-- connections --
-- Sessions by application_name, and which of them are ours (<base>:<component>, db/appname.py).
-- A role without pg_read_all_stats still sees every session's application_name and database.
SELECT a.application_name, a.datname, count(*) AS sessions,
       a.application_name ~ %(ours)s AS ours
FROM pg_stat_activity AS a
WHERE a.datid IS NOT NULL
GROUP BY 1, 2
ORDER BY 3 DESC, 1

-- connection_limits --
-- How many sessions the server admits for roles without special rights.
SELECT current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int AS superuser_reserved,
       coalesce(current_setting('reserved_connections', true)::int, 0) AS reserved,
       (SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user) AS role_limit,
       (SELECT count(*) FROM pg_stat_activity WHERE usename = current_user) AS role_sessions,
       current_user AS role

-- schema_exists --
-- Whether the schema exists (a catalog read any role may make).
SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = %(schema)s)

-- schema_objects --
-- The schema, its tables, views and sequences, and its functions: what grants.sql covers.
SELECT 'schema' AS kind, n.oid, n.nspname AS name FROM pg_namespace AS n WHERE n.nspname = %(schema)s
UNION ALL
SELECT CASE WHEN c.relkind = 'S' THEN 'sequence' ELSE 'table' END, c.oid, c.relname
FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
UNION ALL
SELECT 'function', p.oid, p.oid::regprocedure::text
FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
WHERE n.nspname = %(schema)s

-- privileges_missing --
-- Which (kind, object, privilege) of the list the role lacks, as PostgreSQL's own checks answer.
SELECT e.kind, e.name, e.privilege
FROM unnest(%(kinds)s::text[], %(oids)s::oid[], %(names)s::text[], %(privileges)s::text[])
    AS e (kind, oid, name, privilege)
WHERE NOT CASE e.kind
          WHEN 'schema' THEN has_schema_privilege(%(role)s, e.oid, e.privilege)
          WHEN 'table' THEN has_table_privilege(%(role)s, e.oid, e.privilege)
          WHEN 'sequence' THEN has_sequence_privilege(%(role)s, e.oid, e.privilege)
          WHEN 'function' THEN has_function_privilege(%(role)s, e.oid, e.privilege) END
ORDER BY e.kind, e.name, e.privilege
