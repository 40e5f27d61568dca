"""Message headers shared by the transport and durable chains.

A durable step's message carries ``STEP_HEADER``; when the transport hands
such a message to a worker it adds ``LEASE_HEADER`` (``"<row id>:<lease token>"``)
so the step's checkpoint transaction can delete exactly the row it holds, and
only while it still holds it. Celery copies headers into ``task.request``.
"""

from __future__ import annotations

STEP_HEADER = "celery_durable_step"
LEASE_HEADER = "celery_durable_lease"
