"""Production topologies: libpq URLs, PgBouncer, TLS, failover, least privilege, connection budget."""
