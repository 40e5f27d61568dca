"""Throwaway PostgreSQL servers and databases for examples and tests."""
