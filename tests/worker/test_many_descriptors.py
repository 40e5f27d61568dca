"""A process that holds more than 1,024 descriptors (a busy web or gevent process) uses the database.

``select()`` refuses descriptor numbers past ``FD_SETSIZE`` (1,024), which
such a process hands to every new connection. Each test opens 1,100
descriptors before anything connects (tests/apps/crowded.py) and then asks
for what users do: ``delay()``, ``get()`` (waiting on the notification), a
durable chain and pipelined publishes (``confirm_publish: False``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.apps import crowded

ROOT = Path(__file__).resolve().parents[2]
HOLD = 1100
CHECKS = ["delay-get", "result-wait", "durable-chain", "pipelined"]


def test_a_worker_holding_many_descriptors_runs_tasks_and_durable_chains(workers, worker_env):
    workers("tests.apps.crowded", env={"CELERY_DURABLE_HOLD_FDS": str(HOLD)})
    outcome = crowded.run_checks(worker_env)
    assert outcome == [(name, None) for name in CHECKS]


def test_a_client_holding_many_descriptors_publishes_and_waits_for_results(workers, worker_env):
    env = {**worker_env, "CELERY_DURABLE_HOLD_FDS": str(HOLD)}
    workers("tests.apps.crowded", env={"CELERY_DURABLE_HOLD_FDS": str(HOLD)})
    client = subprocess.run([sys.executable, "-m", "tests.apps.crowded"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    lines = client.stdout.splitlines()
    assert lines and int(lines[0].split()[-1]) > 1024, "the client's connections would not be past select()'s limit"
    assert lines[1:] == [f"ok {name}" for name in CHECKS], client.stdout + client.stderr[-3000:]
