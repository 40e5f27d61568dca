"""Issue 12 §2: every `celery inspect` / `celery control` verb, purge, result and events, from the command
line against one real worker on our broker and backend (shared by the whole module; shutdown is last)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
from celery.exceptions import TaskRevokedError, TimeLimitExceeded

from tests.support.parity import APP, Parity, node, wait_for

pytestmark = pytest.mark.slow

NAME = "verbs"
TIMEOUT = 30


@pytest.fixture(scope="module")
def p(pg_url):
    parity = Parity(pg_url)
    parity.start(NAME, "-Q", "celery,verbs_extra0")
    yield parity
    parity.close()


def task(p, name):
    return p.app.tasks[f"parity.{name}"]


def cli(p, kind: str, *args: str, name: str = NAME) -> dict:
    """`celery inspect|control VERB ... --json -d verbs@host`: the worker's reply."""
    out = p.celery(kind, *args, "--json", "-t", "20", "-d", node(name))
    assert out.returncode == 0, out.stdout + out.stderr
    replies = json.loads(out.stdout.strip().splitlines()[-1])
    if isinstance(replies, list):  # control verbs print a list of {node: reply}
        replies = {k: v for reply in replies for k, v in reply.items()}
    return replies[node(name)]


def api(p, verb: str, *args, name: str = NAME):
    """The same reply through the Python API (cheaper than the command line, for polling)."""
    replies = getattr(p.app.control.inspect(destination=[node(name)], timeout=10), verb)(*args)
    return (replies or {}).get(node(name))


def test_inspect_registered_conf_stats_active_queues(p):
    assert "parity.add" in cli(p, "inspect", "registered")
    conf = cli(p, "inspect", "conf")
    assert conf["broker_url"].startswith("postgresql://")
    assert conf["broker_transport_options"]["schema"] == p.schema
    stats = cli(p, "inspect", "stats")
    assert stats["broker"]["transport"] == "postgresql"
    assert stats["pool"]["max-concurrency"] >= 1
    assert {q["name"] for q in cli(p, "inspect", "active_queues")} == {"celery", "verbs_extra0"}


def test_inspect_active_reserved_scheduled_query_task_revoked(p):
    running = [task(p, "sleeping").delay(60) for _ in range(2)]
    waiting = task(p, "sleeping").delay(0)
    later = task(p, "add").apply_async((1, 2), countdown=30)
    wait_for(lambda: {r.id for r in running} <= {t["id"] for t in api(p, "active") or ()}, 30,
             "both sleeping tasks to be active")
    assert {r.id for r in running} <= {t["id"] for t in cli(p, "inspect", "active")}
    assert waiting.id in {t["id"] for t in cli(p, "inspect", "reserved")}
    assert later.id in {s["request"]["id"] for s in cli(p, "inspect", "scheduled")}
    assert cli(p, "inspect", "query_task", later.id)[later.id][0] == "scheduled"
    later.revoke()
    assert later.id in cli(p, "inspect", "revoked")
    p.app.control.revoke([r.id for r in running], terminate=True, signal="SIGKILL")
    assert waiting.get(timeout=TIMEOUT) == 0


def test_control_rate_limit_and_time_limit(p):
    assert "ok" in cli(p, "control", "rate_limit", "parity.identity", "600/m")
    assert "ok" in cli(p, "control", "time_limit", "parity.soft_limited", "0.5", "10")
    # Celery 5.7 builds each task's request class at start with the limits of that moment, so the new
    # limits reach the task's attributes only (the same on Redis); per-call limits always apply:
    assert "New time limits for tasks of type parity.soft_limited: soft=0.5 hard=10.0" in p.workers[0].log()
    assert task(p, "identity").delay("limited").get(timeout=TIMEOUT) == "limited"


def test_soft_and_hard_time_limits(p):
    assert task(p, "soft_limited").apply_async((5,), soft_time_limit=0.5).get(timeout=TIMEOUT) == "soft"
    with pytest.raises(TimeLimitExceeded):
        task(p, "sleeping").apply_async((5,), time_limit=1).get(timeout=TIMEOUT)


def test_control_add_and_cancel_consumer(p):
    result = task(p, "add").apply_async((2, 3), queue="verbs_extra1")
    assert "ok" in cli(p, "control", "add_consumer", "verbs_extra1")
    assert result.get(timeout=TIMEOUT) == 5
    assert "verbs_extra1" in {q["name"] for q in api(p, "active_queues")}
    assert "ok" in cli(p, "control", "cancel_consumer", "verbs_extra1")
    assert "verbs_extra1" not in {q["name"] for q in api(p, "active_queues")}


def test_control_pool_grow_and_shrink(p):
    def processes() -> int:
        return len(api(p, "stats")["pool"]["processes"])

    before = processes()
    assert "ok" in cli(p, "control", "pool_grow", "1")
    wait_for(lambda: processes() == before + 1, 30, "the pool to grow by one")
    assert "ok" in cli(p, "control", "pool_shrink", "1")
    wait_for(lambda: processes() == before, 30, "the pool to shrink back")


def test_control_autoscale(p):
    p.start("verbs_auto", "--autoscale=2,1", "-Q", "verbs_auto", "--without-gossip", "--without-heartbeat")
    reply = cli(p, "control", "autoscale", "3", "1", name="verbs_auto")
    assert reply == {"ok": "autoscale now max=3 min=1"}
    autoscaler = api(p, "stats", name="verbs_auto")["autoscaler"]
    assert (autoscaler["max"], autoscaler["min"]) == (3, 1)


def test_control_enable_and_disable_events_and_celery_events_dump(p):
    dump = subprocess.Popen([sys.executable, "-m", "celery", "-A", APP, "events", "--dump"],
                            env=p.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        # The dump's queue is bound once it consumes; then events reach it.
        wait_for(lambda: p.q("SELECT count(*) FROM {s}.binding WHERE exchange = 'celeryev'")[0][0] > 0, 30,
                 "celery events to bind its queue")
        assert "ok" in cli(p, "control", "enable_events")
        result = task(p, "add").delay(20, 22)
        assert result.get(timeout=TIMEOUT) == 42
        seen = []
        wait_for(lambda: _read_until(dump, seen, f"task succeeded: parity.add({result.id})"), 30,
                 "celery events --dump to print the task-succeeded event")
        assert "ok" in cli(p, "control", "disable_events")
    finally:
        dump.send_signal(signal.SIGINT)
        try:
            dump.wait(timeout=10)
        except subprocess.TimeoutExpired:
            dump.kill()


def _read_until(proc: subprocess.Popen, seen: list[str], needle: str) -> bool:
    line = proc.stdout.readline()
    seen.append(line)
    return needle.lower() in line.lower()


def test_control_revoke_terminate(p):
    result = task(p, "sleeping").delay(60)
    wait_for(lambda: result.id in {t["id"] for t in api(p, "active") or ()}, 30, "the task to start")
    # Celery's command line spells "revoke --terminate" as `celery control terminate SIGNAL ID`.
    assert "ok" in cli(p, "control", "terminate", "SIGKILL", result.id)
    with pytest.raises(TaskRevokedError):
        result.get(timeout=TIMEOUT)
    assert result.state == "REVOKED"


def test_purge_and_result(p):
    done = task(p, "add").delay(4, 5)
    assert done.get(timeout=TIMEOUT) == 9
    out = p.celery("result", done.id)
    assert out.returncode == 0 and out.stdout.strip() == "9", out.stdout + out.stderr
    for i in range(3):
        task(p, "add").apply_async((i, i), queue="verbs_idle")
    out = p.celery("purge", "-f", "-Q", "verbs_idle")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Purged 3 messages" in out.stdout, out.stdout
    assert p.q("SELECT count(*) FROM {s}.message WHERE queue = 'verbs_idle'") == [(0,)]


def test_control_shutdown(p):
    out = p.celery("control", "shutdown", "-d", node(NAME), "-t", "1")
    # Workers never reply to shutdown: "No nodes replied" (exit code 69), as on Redis.
    assert out.returncode in (0, 69), out.stdout + out.stderr
    worker = p.workers[0]
    assert worker.proc.wait(timeout=60) == 0, worker.log()[-3000:]
    assert "Got shutdown from remote" in worker.log()
