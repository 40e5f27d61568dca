"""Tasks for durable_chain tests: each records its executions outside the broker.

Same environment as basic.py (CELERY_DURABLE_URL/SCHEMA/BROKER/BACKEND).
A step can be slowed down or made to fail through the `control` table, so a
test can kill a worker mid-step or fix a failing step and resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import psycopg
from psycopg import sql

from celery import group

from celery_durable import current_step

from .basic import SCHEMA, URL, app

_S = sql.Identifier(SCHEMA)


def _db():
    return psycopg.connect(URL, autocommit=True)


def setup_tables() -> None:
    with _db() as conn:
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {}.executions (tag text, pid int, at timestamptz DEFAULT now())").format(_S))
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {}.control (key text PRIMARY KEY, value text)").format(_S))
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {}.ledger (key text PRIMARY KEY, amount int)").format(_S))


def control(key: str) -> str | None:
    with _db() as conn:
        row = conn.execute(sql.SQL("SELECT value FROM {}.control WHERE key = %s").format(_S), (key,)).fetchone()
    return row[0] if row else None


def _record(tag: str) -> None:
    with _db() as conn:
        conn.execute(sql.SQL("INSERT INTO {}.executions (tag, pid) VALUES (%s, %s)").format(_S), (tag, os.getpid()))


def _maybe_block(tag: str) -> None:
    """Sleep while control[tag] = 'block' (a test kills the worker meanwhile)."""
    while control(f"block:{tag}") == "block":
        time.sleep(0.1)


@app.task
def step(value, tag):
    """Record an execution of ``tag``, wait if told to, return value + [tag]."""
    _record(tag)
    _maybe_block(tag)
    if control(f"fail:{tag}") == "fail":
        raise RuntimeError(f"step {tag} told to fail")
    return list(value or []) + [tag]


@app.task
def start(tag):
    _record(tag)
    _maybe_block(tag)
    return [tag]


@app.task
def member(value, tag):
    _record(tag)
    _maybe_block(tag)
    return tag


@app.task
def collect(values, tag):
    _record(tag)
    return sorted(values)


@app.task
def write_ledger(value, key, amount):
    """Write a row through the step's transaction: it must exist exactly once in the end."""
    _record(f"ledger:{key}")
    ctx = current_step()
    ctx.connection.execute(sql.SQL("INSERT INTO {}.ledger (key, amount) VALUES (%s, %s)").format(_S), (key, amount))
    _maybe_block(f"ledger:{key}")
    return {"key": key, "idempotency_key": ctx.idempotency_key, "index": ctx.index}


@app.task(bind=True, max_retries=3, default_retry_delay=0.2)
def flaky(self, value, tag, failures):
    """Fail ``failures`` times, then succeed (Celery retries)."""
    _record(tag)
    if self.request.retries < failures:
        raise self.retry(exc=RuntimeError("flaky"))
    return list(value or []) + [tag]


@app.task
def where(value):
    ctx = current_step()
    return None if ctx is None else [ctx.workflow_id, ctx.index, ctx.idempotency_key]


@app.task
def chaos_step(value, chain, index, pause=0.0):
    """One step of the chaos test: an outside record, a row in the step's transaction, a pause."""
    ctx = current_step()
    _record(f"{chain}:{index}")
    ctx.connection.execute(
        sql.SQL("INSERT INTO {}.chaos_rows (chain, step, key) VALUES (%s, %s, %s)").format(_S),
        (chain, index, ctx.idempotency_key),
    )
    if pause:
        time.sleep(pause)
    return list(value or []) + [index]


def runs(tag: str) -> int:
    with _db() as conn:
        return conn.execute(sql.SQL("SELECT count(*) FROM {}.executions WHERE tag = %s").format(_S), (tag,)).fetchone()[0]


def _wait(condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@app.task
def contested(value, tag, first):
    """One step run by two attempts at once: the first lost its lease (a test stops its worker).

    The first attempt waits for the second to start, then ends as ``first`` says:
    ``raise_late`` raises once the second has committed, ``raise_early`` raises at once (the
    second waits for that), ``return`` returns while the second still waits on the ledger row
    the first wrote (so the first one's commit comes first, fenced out: LeaseLost).
    """
    _record(tag)
    attempt = runs(tag)
    ctx = current_step()
    if first == "return":
        # The second attempt blocks on this uncommitted row until the first attempt rolls back.
        ctx.connection.execute(sql.SQL("INSERT INTO {}.ledger (key, amount) VALUES (%s, %s)").format(_S),
                               (tag, attempt))
    if attempt == 1:
        _wait(lambda: runs(tag) >= 2)
        if first == "raise_late":
            _wait(lambda: _checkpointed(ctx.workflow_id, ctx.path))
            raise RuntimeError(f"{tag}: the attempt that lost its lease fails late")
        if first == "raise_early":
            _record(f"{tag}:raising")
            raise RuntimeError(f"{tag}: the attempt that lost its lease fails first")
    elif first == "raise_early":
        _wait(lambda: runs(f"{tag}:raising") >= 1)
        # Bounded: the failure of the first attempt, if it counted, shows within moments.
        _wait(lambda: _status(ctx.workflow_id) != "running", timeout=3)
    return f"{tag}:{attempt}"


def _checkpointed(workflow_id: str, path: str) -> bool:
    with _db() as conn:
        return conn.execute(sql.SQL("SELECT 1 FROM {}.checkpoint WHERE workflow_id = %s AND path = %s")
                            .format(_S), (workflow_id, path)).fetchone() is not None


def _status(workflow_id: str) -> str | None:
    with _db() as conn:
        row = conn.execute(sql.SQL("SELECT status FROM {}.workflow WHERE id = %s").format(_S), (workflow_id,)).fetchone()
    return row[0] if row else None


@app.task
def slow(value, tag, seconds):
    """Record an execution, run for ``seconds``, return value + [tag]."""
    _record(tag)
    time.sleep(seconds)
    return list(value or []) + [tag]


@app.task
def limited(value, tag, seconds):
    """Record an execution, then run for ``seconds`` (a test gives it a shorter time limit)."""
    _record(tag)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return list(value or []) + [tag]


@app.task
def node(*args, name="?"):
    """What a canvas test compares: the task's name and the inputs it received, as a list."""
    return [name, list(args)]


class Point:
    """A value only pickle carries."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    def __repr__(self):
        return f"Point({self.x}, {self.y})"


@app.task
def write_once(key):
    """Write a row through the task's transaction (its key must exist once in the end), return [key]."""
    _record(key)
    current_step().connection.execute(sql.SQL("INSERT INTO {}.ledger (key, amount) VALUES (%s, 1)").format(_S), (key,))
    _maybe_block(key)
    return [key]


@app.task
def digest(*args, name="?", pause=0.0):
    """A property-test task: a short digest of its name and inputs (so results show how values flowed).

    In a durable workflow it also records its execution (``<workflow>:<path>``)
    and writes one row through ``current_step().connection``.
    """
    ctx = current_step()
    if ctx is not None:
        _record(f"{ctx.workflow_id}:{ctx.path}")
        ctx.connection.execute(sql.SQL("INSERT INTO {}.canvas_rows (key) VALUES (%s)").format(_S),
                               (ctx.idempotency_key,))
    if pause:
        time.sleep(pause)
    return digest_of(name, args)


def digest_of(name: str, args: tuple | list) -> str:
    """What ``digest`` returns for this name and these inputs (tests compute expected results with it)."""
    return f"{name}:" + hashlib.sha1(json.dumps([name, list(args)], sort_keys=True).encode()).hexdigest()[:8]


@app.task
def callback(value, tag):
    """A link callback: records its run, writes a row through its transaction, returns [tag, value]."""
    _record(tag)
    ctx = current_step()
    if ctx is not None:
        ctx.connection.execute(sql.SQL("INSERT INTO {}.ledger (key, amount) VALUES (%s, 1)").format(_S), (tag,))
    _maybe_block(tag)
    return [tag, value]


@app.task
def on_error(task_id):
    """An old-style error callback (Celery passes the failed task's id)."""
    _record("errback")
    return task_id


@app.task
def fail_with(*args, tag="fail"):
    _record(tag)
    raise ValueError(f"{tag} failed")


@app.task(bind=True)
def replacer(self, value, how):
    """Replace itself (Task.replace) with a chain or a group, as a Celery task may."""
    _record(f"replacer:{how}")
    if how == "chain":
        return self.replace(step.s(["r"], "x") | step.s("y"))
    return self.replace(group(member.s(None, "g1"), member.s(None, "g2")))
