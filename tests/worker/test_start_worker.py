"""``start_worker``, the helper tests and users start real workers with: a worker that never gets ready."""

from __future__ import annotations

import os
import uuid

import psutil
import pytest

from celery_durable.testing.workers import start_worker


def test_a_worker_that_never_gets_ready_is_killed_not_left_consuming():
    """A chaos test's restarted worker that timed out went on running after its test, holding connections."""
    name = f"never-ready-{uuid.uuid4().hex[:8]}@%h"
    env = {**os.environ, "CELERY_DURABLE_URL": "postgresql://postgres@127.0.0.1:1/nowhere"}
    with pytest.raises(TimeoutError):
        start_worker("tests.apps.basic", "-n", name, env=env, ready_timeout=3)
    left = [p.pid for p in psutil.process_iter(["cmdline"]) if name in (p.info["cmdline"] or [])]
    assert left == [], f"worker processes left running: {left}"
