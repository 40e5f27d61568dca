"""A small Django project for the integration tests (settings from the environment)."""
