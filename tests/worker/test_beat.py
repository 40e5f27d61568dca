"""`celery beat` publishes its schedule through the postgresql:// broker to a real worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import psycopg
from psycopg import sql


def test_beat_schedule_reaches_the_worker(workers, worker_env, pg_url, schema):
    workers("tests.apps.beat_app", env=worker_env)
    with tempfile.TemporaryDirectory() as tmp:
        beat = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.apps.beat_app", "beat", "-l", "INFO",
             "-s", os.path.join(tmp, "schedule")],
            env={**worker_env, "C_FORCE_ROOT": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            runs = 0
            while runs < 3:
                assert time.monotonic() < deadline, f"beat's task ran {runs} times in 60 s"
                time.sleep(0.2)
                with psycopg.connect(pg_url, autocommit=True) as conn:
                    try:
                        runs = conn.execute(sql.SQL("SELECT count(*) FROM {}.executions WHERE tag = 'beat'")
                                            .format(sql.Identifier(schema))).fetchone()[0]
                    except psycopg.errors.UndefinedTable:
                        runs = 0
        finally:
            os.killpg(beat.pid, signal.SIGKILL)
            beat.wait()
