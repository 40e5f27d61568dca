"""Kombu transport that keeps every message in PostgreSQL; see :mod:`.transport` for URL and options."""

from .transport import Transport

__all__ = ["Transport"]
