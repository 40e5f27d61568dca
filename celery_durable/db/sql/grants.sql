-- What an application role needs to run workers, clients, beat and the CLI's read commands:
-- data access only. Run it as the schema's owner (the role that ran `celery-durable migrate`),
-- after migrating; ALTER DEFAULT PRIVILEGES covers what later migrations by that owner create.
-- The application role then uses auto_migrate: false; it cannot change the schema. It also cannot
-- VACUUM (only needed when autovacuum is off: PostgreSQL 17+ can GRANT MAINTAIN ON {schema}.message).
GRANT USAGE ON SCHEMA {schema} TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role};
REVOKE INSERT, UPDATE, DELETE ON {schema}.schema_version FROM {role};
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role};
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {schema} TO {role};
ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role};
ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT USAGE, SELECT ON SEQUENCES TO {role};
ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT EXECUTE ON FUNCTIONS TO {role};
