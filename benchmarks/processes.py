"""The processes a benchmark runs and measures: its Celery worker, and CPU time read from ``/proc``."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TICK = os.sysconf("SC_CLK_TCK")


def start_worker(env: dict[str, str], concurrency: int = 2, pool: str = "prefork", *args: str):
    """``celery -A benchmarks.app worker`` on queue ``bench``, as every script runs it; not waited for.

    ``args`` go on the command line (``-n NAME`` for several workers on one machine).
    """
    from celery_durable.testing.workers import start_worker as start

    return start("benchmarks.app", "-Q", "bench", "--without-gossip", "--without-heartbeat", *args, env=env,
                 concurrency=concurrency, pool=pool, loglevel="WARNING", wait=False, cwd=str(ROOT))


def _stat(pid: int) -> tuple[str, list[str]] | None:
    """(comm, the fields after it) of ``/proc/<pid>/stat``, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            head, rest = f.read().rsplit(")", 1)
    except OSError:
        return None
    return head.split("(", 1)[1], rest.split()


def cpu_seconds(pid: int, reaped: bool = False) -> float:
    """User + system CPU seconds of ``pid`` (0 if it is gone); ``reaped``: with its waited-for children's."""
    stat = _stat(pid)
    if stat is None:
        return 0.0
    fields = stat[1]
    return sum(int(f) for f in fields[11:15 if reaped else 13]) / TICK


def processes() -> list[tuple[int, int, str]]:
    """(pid, ppid, comm) of every process."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                found.append((int(entry), int(stat[1][1]), stat[0]))
    return found
