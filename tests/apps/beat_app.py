"""The basic app plus a one-second beat schedule."""

from __future__ import annotations

from .basic import app, record

app.conf.beat_schedule = {"every-second": {"task": record.name, "schedule": 1.0, "args": ("beat",)}}
