"""A beat that dies between a run's publish and its commit: the run stays due (postgresql:// broker), or is sent
again with the same task id (Redis broker: at least once)."""

from __future__ import annotations

import json
import os
import uuid

from datetime import datetime

import pytest
import redis

from celery_durable.beat.schedules import task_id
from tests.support.beats import runs, start_beat, wait_for

APP = "tests.apps.durable_beat_app"


def test_a_run_whose_beat_died_before_the_commit_is_sent_once_by_the_next(pg_url, schema, worker_env, tmp_path):
    marker = tmp_path / "crashed"
    env = {**worker_env, "CELERY_DURABLE_BEAT_LEASE": "2", "CELERY_DURABLE_BEAT_CRASH": str(marker)}
    first = start_beat(APP, env)
    try:
        wait_for(lambda: marker.exists() and first.proc.poll() is not None, 120, "the first beat to die mid-run")
        crashed = json.loads(marker.read_text())["id"]
        assert crashed not in {r.id for r in runs(pg_url, schema)}  # rolled back with the transaction
        second = start_beat(APP, env)
        try:
            # the lease of the dead one runs out, the second takes over and sends the run (and later ones)
            found = wait_for(lambda: (f := runs(pg_url, schema)) and len(f) >= 3 and f, 120, "the next beat's runs")
        finally:
            second.kill()
        assert [r.id for r in found].count(crashed) == 1
        assert len({r.id for r in found}) == len(found)
    finally:
        first.kill()


def test_a_beat_paused_inside_a_runs_transaction_does_not_hold_the_lease_for_ever(pg_url, schema, worker_env,
                                                                                  tmp_path):
    """It holds the lease row's lock; the server ends its session after the lease, and another beat takes over."""
    import signal

    from tests.support.beats import lease

    marker = tmp_path / "paused"
    env = {**worker_env, "CELERY_DURABLE_BEAT_LEASE": "2", "CELERY_DURABLE_BEAT_PAUSE": str(marker)}
    first = start_beat(APP, env)
    second = None
    try:
        wait_for(lambda: marker.exists() and (held := lease(pg_url, schema)) and held, 120,
                 "the first beat to stop inside a run's transaction")
        paused = json.loads(marker.read_text())["id"]
        token = lease(pg_url, schema)["token"]
        second = start_beat(APP, env)
        wait_for(lambda: lease(pg_url, schema)["token"] != token, 60, "the second beat to take the lease over")
        found = wait_for(lambda: (f := runs(pg_url, schema)) and any(r.id == paused for r in f) and len(f) >= 3 and f,
                         60, "the second beat's runs, the paused run among them")
        os.kill(first.pid, signal.SIGCONT)  # the woken beat's transaction is gone: it sends nothing of it
        wait_for(lambda: len(runs(pg_url, schema)) >= len(found) + 3, 60, "more runs")
        found = runs(pg_url, schema)
        assert [r.id for r in found].count(paused) == 1
        assert len({r.id for r in found}) == len(found)
    finally:
        if first.proc.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
        first.kill()
        if second is not None:
            second.kill()


@pytest.fixture
def redis_db():
    client = redis.Redis(host="127.0.0.1", port=6379, db=13)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    prefix = f"beat-{uuid.uuid4().hex[:8]}:"
    yield client, prefix
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    client.close()


def test_with_redis_a_run_whose_beat_died_before_the_commit_is_sent_again_with_the_same_id(
        pg_url, schema, worker_env, tmp_path, redis_db):
    client, prefix = redis_db
    marker = tmp_path / "crashed"
    env = {**worker_env, "CELERY_DURABLE_BEAT_LEASE": "2", "CELERY_DURABLE_BEAT_CRASH": str(marker),
           "CELERY_DURABLE_BROKER": "redis://127.0.0.1:6379/13", "CELERY_DURABLE_REDIS_PREFIX": prefix}

    def sent() -> list[str]:
        return [json.loads(m)["headers"]["id"] for m in client.lrange(f"{prefix}beat_runs", 0, -1)]

    first = start_beat(APP, env)
    try:
        wait_for(lambda: marker.exists() and first.proc.poll() is not None, 120, "the first beat to die mid-run")
        crashed = json.loads(marker.read_text())["id"]
        assert sent() == [crashed]  # Redis took the message; the schedule's transaction never committed
        second = start_beat(APP, env)
        try:
            found = wait_for(lambda: (f := sent()) and len(f) >= 4 and f, 120, "the next beat's runs")
        finally:
            second.kill()
        # at least once: the run is sent again, with the same task id (one result, one id to deduplicate on)
        assert found.count(crashed) == 2
        assert len(set(found)) == len(found) - 1
    finally:
        first.kill()
    assert os.path.exists(marker)


def _cli(env: dict, *args: str) -> dict:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "celery", "-A", APP, "durable", "schedule", *args, "--json"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_changes_through_the_cli_reach_a_running_beat_within_a_tick(pg_url, schema, worker_env):
    env = {**worker_env, "CELERY_DURABLE_BEAT_LEASE": "3"}
    beat = start_beat(APP, env)
    try:
        wait_for(lambda: len(runs(pg_url, schema)) >= 2, 120, "the beat's first runs")
        listed = _cli(env, "list")
        assert listed["lease"]["live"] and listed["lease"]["holder"].endswith(f":{beat.pid}")
        second = next(row for row in listed["entries"] if row["name"] == "every-second")
        assert second["last_task_id"] and second["next_run_at"] and second["origin"] == "config"

        _cli(env, "pause", "every-second")
        paused = wait_for(lambda: (f := runs(pg_url, schema)) and f, 10, "runs")
        asked = datetime.fromisoformat(_cli(env, "run-now", "every-minute")["result"])
        manual_id = task_id(schema, "every-minute", asked, manual=True)
        manual = wait_for(lambda: [r for r in runs(pg_url, schema) if r.id == manual_id], 30, "the run-now's message")
        assert len(manual) == 1 and manual[0].entry == "every-minute"
        added = _cli(env, "add", "added-at-run-time", "tests.apps.basic.record", "--every", "0.5", "--args",
                     '["added"]', "--options", '{"queue": "beat_runs"}')
        assert added["origin"] == "runtime"
        wait_for(lambda: [r for r in runs(pg_url, schema) if r.entry == "added-at-run-time"], 30,
                 "a run of the entry added at run time")
        # the paused entry sent nothing since (at most the run already in flight when it was paused)
        later = [r for r in runs(pg_url, schema) if r.entry == "every-second"]
        assert len(later) <= len([r for r in paused if r.entry == "every-second"]) + 1
    finally:
        beat.kill()
