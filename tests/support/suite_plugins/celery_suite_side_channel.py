"""pytest plugin for Celery's ``t/integration`` on our backend: run the tests gated on a Redis result backend.

About 60 of Celery's integration tests skip unless ``app.conf.result_backend`` starts with ``redis``.
Most use Redis only as a side channel: tasks such as ``redis_echo`` push to a list the test reads
(``REDIS_HOST``/``REDIS_PORT``, database 0), whatever the result backend. With this plugin
(``python -m tests.support.celery_suite --side-channel``) the result backend's URL answers
``startswith("redis")`` with True, so those tests run against ours, with a private Redis as the side
channel. The few that look at Redis's own result backend (its pub/sub channels) are about Redis, not
about us, and say so when they fail here.
"""

from __future__ import annotations

import pytest


class GatedUrl(str):
    """Our backend's URL, which passes the suite's ``result_backend.startswith("redis")`` gate."""

    def startswith(self, prefix, *args):  # type: ignore[override]
        prefixes = prefix if isinstance(prefix, tuple) else (prefix,)
        if not args and any(p in ("redis", "redis://") for p in prefixes):
            return True
        return str.startswith(self, prefix, *args)


@pytest.fixture(scope="session", autouse=True)
def _redis_gate_passes(celery_config):
    """Every app the suite builds (the session app and each test's) takes its config from this dict."""
    celery_config["result_backend"] = GatedUrl(celery_config["result_backend"])
