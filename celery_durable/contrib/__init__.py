"""Integrations with the tools Celery users already run (Django)."""
