"""Helpers that start real servers for tests: private PostgreSQL clusters, PgBouncer, TLS files."""
