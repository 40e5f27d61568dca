"""Several beats (and workers with --beat), the active one SIGKILLed at random moments: each due run once.

Two entries (tests/apps/durable_beat_app.py): every second, and a crontab every minute. No worker consumes
their queue, so every message a beat ever committed is still in the table: each run's task id derives from
its entry and due time, so a run sent twice shows as two rows. From the entry's creation to its last run
(the beat_entry row), every due time must have exactly one message. The bounded run lasts until it has
crossed a minute boundary (the crontab's run) and at least 30 s; the long one five minutes.
"""

from __future__ import annotations

import os
import random
import signal
import time
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from psycopg import sql

from tests.support.beats import lease, runs, start_beat, tally, wait_for

from .modes import FIGURES, LONG, limit, per_mode

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

APP = "tests.apps.durable_beat_app"
LEASE = 4.0
#: A standby takes the lease when it runs out; it looks at most this late on a busy machine.
TAKEOVER_SLACK = 2.0


def _entry(pg_url: str, schema: str, name: str) -> dict:
    with psycopg.connect(pg_url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(sql.SQL("SELECT * FROM {}.beat_entry WHERE name = %s").format(sql.Identifier(schema)),
                            (name,)).fetchone()


def _db_now(pg_url: str) -> datetime:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        return conn.execute("SELECT clock_timestamp()").fetchone()[0]


@limit(300, 900)
@pytest.mark.parametrize("beats, workers", [
    (2, 0), (2, 1), pytest.param(3, 0, marks=pytest.mark.skipif(not LONG, reason="long mode only")),
], ids=["two-beats", "two-beats-and-a-worker-beat", "three-beats"])
def test_each_due_run_is_enqueued_once_while_the_active_beat_is_killed(beats, workers, pg_url, schema, worker_env,
                                                                        budget):
    env = {**worker_env, "CELERY_DURABLE_BEAT_LEASE": str(LEASE)}
    procs = [start_beat(APP, env) for _ in range(beats)] + [start_beat(APP, env, "worker") for _ in range(workers)]
    kills, takeovers = 0, []
    try:
        wait_for(lambda: (held := lease(pg_url, schema)) and held["expires_at"] > held["now"], budget.timeout(120),
                 "a beat holds the lease")
        now = datetime.now(timezone.utc)
        boundary = (now + timedelta(minutes=1)).replace(second=0, microsecond=0)
        end = time.monotonic() + max(per_mode(30, 300), (boundary - now).total_seconds() + 2 * LEASE)
        while time.monotonic() < end:
            time.sleep(random.uniform(0.5, 2 * LEASE))  # a random moment of the active beat's life
            held = lease(pg_url, schema)
            pid = int(held["holder"].rsplit(":", 1)[1])
            victim = next((p for p in procs if not p.killed and p.owns(pid)), None)
            if victim is None or held["expires_at"] <= held["now"]:
                continue
            killed_at = _db_now(pg_url)
            victim.kill()
            kills += 1
            procs.append(start_beat(APP, env, victim.kind))  # keep as many competing
            new = wait_for(lambda: (h := lease(pg_url, schema)) and h["token"] != held["token"] and h,
                           budget.timeout(LEASE * 5 + 60), "another beat takes the lease over")
            takeovers.append((new["held_since"] - killed_at).total_seconds())
        assert kills >= 3
        # the last takeover's beat goes on sending: wait for a run it found due itself
        wait_for(lambda: _entry(pg_url, schema, "every-second")["last_run_at"] > new["held_since"],
                 budget.timeout(LEASE * 5 + 30), "a run after the last takeover")
        for proc in procs:
            proc.kill()
        found = runs(pg_url, schema)
        second = tally(found, schema, "every-second", timedelta(seconds=1))
        minute = tally(found, schema, "every-minute", None)
        name = f"beat kills, {beats} beats + {workers} worker --beat"
        FIGURES[name] = {"runs": f"{second.runs} + {minute.runs} (crontab)", "kills": kills,
                         "takeover max s": round(max(takeovers, default=0), 2),
                         "takeover mean s": round(sum(takeovers) / max(1, len(takeovers)), 2),
                         "doubled": second.doubled + minute.doubled, "missing": second.missing + minute.missing}
        assert (second.doubled, minute.doubled) == (0, 0), FIGURES[name]
        assert (second.wrong_ids, minute.wrong_ids) == (0, 0)
        for entry, counted, step in (("every-second", second, timedelta(seconds=1)), ("every-minute", minute, None)):
            row = _entry(pg_url, schema, entry)
            first_due = row["created_at"] + step if step else \
                (row["created_at"] + timedelta(minutes=1)).replace(second=0, microsecond=0)
            # every due time from the entry's creation to its last run: present, once
            assert counted.runs >= 1, f"{entry}: no run"
            assert (counted.first, counted.last, counted.missing) == (first_due, row["last_run_at"], 0), FIGURES[name]
        assert max(takeovers) <= LEASE + TAKEOVER_SLACK, takeovers
    finally:
        for proc in procs:
            proc.kill()


@limit(300, 900)
def test_a_holder_paused_past_its_lease_sends_nothing_once_another_took_over(pg_url, schema, worker_env, budget):
    """SIGSTOP the active beat for twice the lease at random moments (inside a run's transaction or not), then
    SIGCONT it: the other beat takes over meanwhile, and the woken one sends nothing (the fence; a transaction
    it was paused in is ended by the server after the lease)."""
    env = {**worker_env, "CELERY_DURABLE_BEAT_LEASE": str(LEASE)}
    procs = [start_beat(APP, env) for _ in range(2)]
    pauses, takeovers = 0, []
    try:
        wait_for(lambda: (held := lease(pg_url, schema)) and held["expires_at"] > held["now"], budget.timeout(120),
                 "a beat holds the lease")
        end = time.monotonic() + per_mode(30, 300)
        while time.monotonic() < end or pauses < 3:
            time.sleep(random.uniform(0.5, 2 * LEASE))
            held = lease(pg_url, schema)
            pid = int(held["holder"].rsplit(":", 1)[1])
            victim = next((p for p in procs if p.owns(pid)), None)
            if victim is None or held["expires_at"] <= held["now"]:
                continue
            paused_at = _db_now(pg_url)
            os.killpg(victim.pid, signal.SIGSTOP)
            try:
                new = wait_for(lambda: (h := lease(pg_url, schema)) and h["token"] != held["token"] and h,
                               budget.timeout(LEASE * 5 + 60), "the other beat takes the lease over")
                takeovers.append((new["held_since"] - paused_at).total_seconds())
                time.sleep(LEASE)  # the paused one stays paused well past its lease
            finally:
                os.killpg(victim.pid, signal.SIGCONT)
            pauses += 1
        wait_for(lambda: _entry(pg_url, schema, "every-second")["last_run_at"] > new["held_since"],
                 budget.timeout(LEASE * 5 + 30), "a run after the last takeover")
        for proc in procs:
            proc.kill()
        found = runs(pg_url, schema)
        second = tally(found, schema, "every-second", timedelta(seconds=1))
        row = _entry(pg_url, schema, "every-second")
        FIGURES["beat pauses (SIGSTOP past the lease), 2 beats"] = {
            "runs": second.runs, "pauses": pauses, "takeover max s": round(max(takeovers), 2),
            "doubled": second.doubled, "missing": second.missing}
        assert (second.doubled, second.wrong_ids) == (0, 0)
        assert (second.first, second.last, second.missing) == (row["created_at"] + timedelta(seconds=1),
                                                               row["last_run_at"], 0)
    finally:
        for proc in procs:
            if proc.proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)
            proc.kill()
