"""Durable canvases: chords, groups of chains, nesting, map/chunks, every serializer, tree operations.

The expected results are what plain Celery 5.7 returns for the same canvas
(the property test in tests/chaos/test_canvas_property.py compares the two
on random canvases).
"""

from __future__ import annotations

import datetime as dt
import time

import psycopg
import pytest
from celery import Celery, chain, chord, group
from celery.canvas import chunks, xmap, xstarmap

from celery_durable import durable, durable_chain, workflows
from celery_durable.exceptions import WorkflowError
from tests.apps import basic

from .conftest import APP, T, sig, wait_for


def n(client, name, *args, **options):
    """A task that returns its name and the inputs it received."""
    return client.signature(T + "node", args=args, kwargs={"name": name}, **options)


def test_chord_and_group_of_chains_give_what_celery_gives(client, db, workers, env):
    workers(APP, concurrency=4, env=env)
    fan_in = durable(chord([chain(n(client, "a"), n(client, "b")), n(client, "c")], n(client, "d"))).apply_async()
    nested = durable(chain(n(client, "a"), group(chain(n(client, "b"), group(n(client, "c"), n(client, "d"))),
                                                 n(client, "e")), n(client, "f"))).apply_async()
    top_group = durable(group(chord([n(client, "a"), n(client, "b")], n(client, "c")), n(client, "d"))).apply_async()
    assert fan_in.get(timeout=60) == ["d", [[["b", [["a", []]]], ["c", []]]]]
    assert nested.get(timeout=60) == ["f", [[[["c", [["b", [["a", []]]]]], ["d", [["b", [["a", []]]]]]],
                                             ["e", [["a", []]]]]]]
    assert top_group.get(timeout=60) == [["c", [[["a", []], ["b", []]]]], ["d", []]]
    shown = workflows.get_workflow(client, workflow_id=fan_in.workflow_id)
    assert [c["path"] for c in shown["checkpoints"]] == ["0.0.0", "0.0.1", "0.1", "1"]  # header 0, body 1
    assert shown["tree"][0]["kind"] == "group" and shown["tree"][0]["children"][0]["kind"] == "chain"
    assert {node["state"] for node in shown["tree"]} == {"succeeded"}


def test_map_starmap_and_chunks_are_steps(client, workers, env):
    workers(APP, env=env)
    add, echo = client.signature("tests.apps.basic.add"), client.signature("tests.apps.basic.echo")
    mapped = durable(xstarmap(add, [(1, 2), (3, 4)])).apply_async()  # add.starmap(...) with the task at hand
    chunked = durable_chain(chunks(add, [(i, i) for i in range(5)], 2), n(client, "sum")).apply_async()
    echo_map = durable(xmap(echo, [1, 2, 3])).apply_async()
    assert mapped.get(timeout=60) == [3, 7]
    assert chunked.get(timeout=60) == ["sum", [[[0, 2], [4, 6], [8]]]]
    assert echo_map.get(timeout=60) == [1, 2, 3]


@pytest.mark.parametrize("serializer,value", [
    ("pickle", ("point", {1, 2})),
    ("msgpack", b"\x00\xffbytes"),
    ("yaml", dt.date(2026, 11, 28)),
])
def test_any_serializer_carries_arguments_and_results(db, workers, env, serializer, value):
    senv = {**env, "CELERY_DURABLE_SERIALIZER": serializer}
    app = Celery("serializer-client")
    app.conf.update(basic.config(senv))
    if serializer == "pickle":
        from tests.apps.durable_app import Point

        value = (Point(1, 2), {1, 2})
    workers(APP, env=senv)
    wf = durable(chord([n(app, "a", value), n(app, "b")], n(app, "c"))).apply_async()
    assert wf.get(timeout=60) == ["c", [[["a", [value]], ["b", []]]]]
    assert workflows.get_workflow(app, workflow_id=wf.workflow_id)["checkpoints"][0]["result"] == ["a", [value]]


def test_arguments_the_serializer_cannot_carry_are_a_clear_error(client):
    with pytest.raises(WorkflowError, match="JSON-serializable"):
        durable(n(client, "a", {1, 2})).apply_async()


def test_tree_show_resume_and_restart_by_path(client, db, workers, env):
    """A group of two chains: the second fails, is fixed and resumed, then the first is restarted from its task 0.0.1."""
    db.set("fail:c2", "fail")
    workers(APP, concurrency=3, env=env)
    wf = durable(group(chain(sig(client, "start", "a1"), sig(client, "step", "b1")),
                       chain(sig(client, "start", "a2"), sig(client, "step", "c2")))).apply_async()
    with pytest.raises(RuntimeError, match="c2 told to fail"):
        wf.get(timeout=60)
    # The other branch runs on (as in Celery) and checkpoints; nothing follows it while the workflow is failed.
    wait_for(lambda: db.q("SELECT 1 FROM {s}.checkpoint WHERE workflow_id = %s AND path = '0.0.1'", wf.workflow_id))
    shown = workflows.get_workflow(client, workflow_id=wf.workflow_id)
    assert shown["status"] == "failed" and shown["failed_path"] == "0.1.1"
    states = {t["path"]: t["state"] for branch in shown["tree"][0]["children"] for t in branch["children"]}
    assert states == {"0.0.0": "succeeded", "0.0.1": "succeeded", "0.1.0": "succeeded", "0.1.1": "failed"}
    db.set("fail:c2", None)
    assert len(workflows.resume_workflow(client, wf.workflow_id)) == 1
    assert client.AsyncResult(wf.workflow_id).get(timeout=60) == [["a1", "b1"], ["a2", "c2"]]
    workflows.restart_workflow(client, wf.workflow_id, from_step="0.0.1", args=["b1-again"])
    assert client.AsyncResult(wf.workflow_id).get(timeout=60) == [["a1", "b1-again"], ["a2", "c2"]]
    assert (db.runs("a1"), db.runs("b1"), db.runs("b1-again"), db.runs("a2"), db.runs("c2")) == (1, 1, 1, 1, 2)
    with pytest.raises(WorkflowError, match="no task or node at path '0.7'"):
        workflows.restart_workflow(client, wf.workflow_id, from_step="0.7")


def test_chord_body_runs_once_after_a_kill_in_its_header(client, db, workers, env):
    """Header members write rows through their transaction; the worker dies with members unfinished."""
    db.set("block:k3", "block")
    first = workers(APP, concurrency=3, env=env)
    members = [sig(client, "write_once", f"k{i}") for i in range(6)]
    wf = durable(chord(members, sig(client, "collect", "body"))).apply_async()
    db.wait_runs("k3")
    first.kill()
    db.set("block:k3", None)
    workers(APP, concurrency=3, env=env)
    assert wf.get(timeout=90) == sorted([f"k{i}"] for i in range(6))
    assert db.runs("body") == 1
    assert db.q("SELECT key, count(*) FROM {s}.ledger GROUP BY key ORDER BY key") == [(f"k{i}", 1) for i in range(6)]


def test_workflows_stored_by_the_previous_version_finish_after_the_upgrade(pg_url, schema, env, workers):
    """Version 7 kept the tree in workflow.steps. A running workflow (its group half done, the other members'
    messages in flight) finishes after the upgrade; a failed one (the older flat format) resumes. Tasks that
    finished before the upgrade do not run again."""
    from psycopg.types.json import Jsonb

    from celery_durable.config import Settings
    from celery_durable.db import dsn, pool
    from celery_durable.headers import STEP_HEADER
    from tests.support.old_schema import schema_at

    from .conftest import Db

    def old_sig(name, *args):
        return {"task": T + name, "args": list(args), "kwargs": {}, "options": {}, "immutable": False}

    def old_task(name, *args):
        return {"kind": "task", "task": T + name, "signatures": [old_sig(name, *args)]}

    running = [old_task("start", "a"),
               {"kind": "group", "task": "group(…)", "children": [old_task("member", f"m{i}") for i in (1, 2, 3)]},
               old_task("collect", "end")]
    flat = [{"kind": "task", "task": T + "start", "signatures": [old_sig("start", "a2")]},
            {"kind": "group", "task": "group", "signatures": [old_sig("member", "n1"), old_sig("member", "n2")]},
            {"kind": "task", "task": T + "collect", "signatures": [old_sig("collect", "end2")]}]
    db = Db(pg_url, schema)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        schema_at(conn, schema, 7)
    db.q("INSERT INTO {s}.workflow (id, status, steps, current_step, atomic, result_task_id)"
         " VALUES ('running-7', 'running', %s, 1, true, 'running-7')", Jsonb(running))
    db.q("INSERT INTO {s}.workflow (id, status, steps, current_step, atomic, result_task_id, failed_path)"
         " VALUES ('failed-7', 'failed', %s, 1, true, 'failed-7', '1.1')", Jsonb(flat))
    for workflow_id, path, value in (("running-7", "0", b'["a"]'), ("running-7", "1.0", b'"m1"'),
                                     ("failed-7", "0", b'["a2"]'), ("failed-7", "1.0", b'"n1"')):
        db.q("INSERT INTO {s}.checkpoint (workflow_id, path, task_id, content_type, result)"
             " VALUES (%s, %s, 't', 'application/json', %s)", workflow_id, path, value)
    pool.prepare_schema(dsn.from_url(pg_url), Settings(schema=schema))  # the upgrade
    for table in ("executions (tag text, pid int, at timestamptz DEFAULT now())", "control (key text PRIMARY KEY, value text)",
                  "ledger (key text PRIMARY KEY, amount int)"):
        db.q("CREATE TABLE {s}." + table)
    client = Celery("upgraded-client")
    client.conf.update(basic.config(env))
    for member in ("m2", "m3"):  # the previous version sent these before the upgrade: the same messages
        client.send_task(T + "member", args=(["a"], member), ignore_result=True, headers={
            STEP_HEADER: {"workflow_id": "running-7", "path": f"1.{int(member[1:]) - 1}",
                          "generation": 0}})
    workers(APP, env=env)
    assert client.AsyncResult("running-7").get(timeout=60) == ["m1", "m2", "m3"]
    assert len(workflows.resume_workflow(client, "failed-7")) == 1
    assert client.AsyncResult("failed-7").get(timeout=60) == ["n1", "n2"]
    assert [db.runs(tag) for tag in ("a", "m1", "m2", "m3", "end", "a2", "n1", "n2", "end2")] == [0, 0, 1, 1, 1, 0, 0, 1, 1]
    client.close()


def test_link_callbacks_are_durable_tasks(client, db, workers, env):
    """A task's link runs with its result, once its task committed; a crash in the callback re-runs only it."""
    db.set("block:cb2", "block")
    first = workers(APP, concurrency=3, env=env)
    linked = sig(client, "step", "b", link=client.signature(T + "callback", args=("cb1",)))
    header = sig(client, "member", "m", link=client.signature(T + "callback", args=("cb2",)))
    wf = durable(chain(sig(client, "start", "a"), linked, chord([header, sig(client, "member", "n")],
                                                               sig(client, "collect", "end")))).apply_async()
    db.wait_runs("cb2")
    # cb1 runs beside cb2 (concurrency 3): kill only once it committed, so only cb2 is cut off.
    wait_for(lambda: db.q("SELECT 1 FROM {s}.checkpoint WHERE workflow_id = %s AND path = '1~0'", wf.workflow_id))
    first.kill()  # cb2 ran but did not commit
    db.set("block:cb2", None)
    workers(APP, concurrency=3, env=env)
    assert wf.get(timeout=60) == ["m", "n"]
    wait_for(lambda: db.q("SELECT 1 FROM {s}.checkpoint WHERE workflow_id = %s AND path = '2.0~0'", wf.workflow_id))
    assert (db.runs("a"), db.runs("b"), db.runs("cb1"), db.runs("cb2")) == (1, 1, 1, 2)
    assert db.q("SELECT key, count(*) FROM {s}.ledger GROUP BY key ORDER BY key") == [("cb1", 1), ("cb2", 1)]
    shown = workflows.get_workflow(client, workflow_id=wf.workflow_id)
    marks = {c["path"]: c["result"] for c in shown["checkpoints"]}
    assert marks["1~0"] == ["cb1", ["a", "b"]] and marks["2.0~0"] == ["cb2", "m"]
    assert shown["tree"][1]["links"][0]["link_of"] == "1"


def test_error_callbacks_fire_once(client, db, workers, env):
    """A task's link_error, and an error callback on the whole workflow when two of its tasks fail."""
    workers(APP, concurrency=3, env=env)
    on_error = client.signature(T + "on_error")
    whole = durable(group(client.signature(T + "fail_with", kwargs={"tag": "x"}),
                          client.signature(T + "fail_with", kwargs={"tag": "y"}),
                          sig(client, "start", "ok"))).apply_async(link_error=on_error)
    with pytest.raises(ValueError, match="failed"):
        whole.get(timeout=60)
    db.wait_runs("x")
    db.wait_runs("y")
    db.wait_runs("errback")
    # Bounded: the second failure, fenced out, would have called its errback by now.
    time.sleep(1.0)
    assert db.runs("errback") == 1
    single = durable_chain(sig(client, "start", "a"),
                           client.signature(T + "fail_with", kwargs={"tag": "z"}, link_error=on_error)).apply_async()
    with pytest.raises(ValueError, match="z failed"):
        single.get(timeout=60)
    db.wait_runs("errback", 2)


@pytest.mark.parametrize("how,expected", [("chain", ["r", "x", "y", "c"]), ("group", ["g1", "g2", "c"])])
def test_task_replace_inside_a_durable_workflow(client, db, workers, env, how, expected):
    """Task.replace() puts the new canvas in the task's place in the tree; its result flows on."""
    workers(APP, concurrency=2, env=env)
    wf = durable_chain(sig(client, "start", "a"), sig(client, "replacer", how), sig(client, "step", "c")).apply_async()
    assert wf.get(timeout=60) == expected
    assert db.runs(f"replacer:{how}") == 1
    shown = workflows.get_workflow(client, workflow_id=wf.workflow_id)
    assert shown["tree"][1]["kind"] == "chain" and shown["tree"][1]["state"] == "succeeded"
    assert [c["path"] for c in shown["checkpoints"]][0] == "0" and "1" not in {c["path"] for c in shown["checkpoints"]}


def test_a_chord_with_a_group_body_then_a_chain_under_kills(client, db, workers, env):
    """Issue 20's shape (plain Celery 5.7 runs ``h`` once per body member, see docs/how-to/durable-workflows.md), killed between commits.

    A guard: it passed before the issue was looked into. The worker dies after the body's first member
    committed and while the second runs, then while ``h`` runs: the second member's commit sends ``h``
    once with both results, and only the killed tasks run again.
    """
    db.set("block:g", "block")
    first = workers(APP, env=env)
    wf = durable(chain(group(sig(client, "start", "p"), sig(client, "start", "q")), sig(client, "step", "c"),
                       chord([sig(client, "member", "d"), sig(client, "member", "e")],
                             group(sig(client, "member", "f"), sig(client, "member", "g"))),
                       chain(sig(client, "step", "h"), sig(client, "step", "i")))).apply_async()
    db.wait_runs("g")
    wait_for(lambda: db.q("SELECT 1 FROM {s}.checkpoint WHERE workflow_id = %s AND convert_from(result, 'UTF8') = %s",
                          wf.workflow_id, '"f"'), what="the body's first member to commit")
    first.kill()
    db.set("block:h", "block")
    db.set("block:g", None)
    second = workers(APP, env=env)
    db.wait_runs("h")
    second.kill()
    db.set("block:h", None)
    workers(APP, env=env)
    assert wf.get(timeout=60) == ["f", "g", "h", "i"]
    assert [db.runs(t) for t in "pqcdefghi"] == [1, 1, 1, 1, 1, 1, 2, 2, 1]


def test_a_replaced_task_hands_its_link_to_its_replacement(client, db, workers, env):
    """A group member with a link callback replaces itself with a chain: the callback (its row moved under the
    chain's last task) runs once, with the replacement's result, and the group completes with that result."""
    workers(APP, concurrency=2, env=env)
    linked = sig(client, "replacer", "chain", link=client.signature(T + "callback", args=("cb",)))
    wf = durable_chain(sig(client, "start", "a"), group(linked, sig(client, "member", "m")),
                       sig(client, "step", "end")).apply_async()
    assert wf.get(timeout=60) == [["r", "x", "y"], "m", "end"]
    wait_for(lambda: db.q("SELECT 1 FROM {s}.checkpoint WHERE workflow_id = %s AND path = '1.0.1~0'",
                          wf.workflow_id), what="the moved link's checkpoint")
    marks = {c["path"]: c["result"] for c in workflows.get_workflow(client, workflow_id=wf.workflow_id)["checkpoints"]}
    assert marks["1.0.1~0"] == ["cb", ["r", "x", "y"]]
    assert db.runs("cb") == 1


def test_tasks_commit_while_their_workflow_row_is_locked(client, db, workers, env, pg_url, schema):
    """No task waits for its workflow's row: with the row locked elsewhere, the steps of chains inside a group and
    the group's members finish and checkpoint side by side; only the commit that advances the root chain (past the
    group) writes the row, so it alone waits for the lock."""
    members = [chain(sig(client, "start", f"a{i}"), sig(client, "step", f"b{i}")) for i in range(3)]
    members += [sig(client, "member", None, f"m{i}") for i in range(3)]
    wf = durable(chain(group(members), sig(client, "step", "end"))).apply_async()
    with psycopg.connect(pg_url) as locker:
        locker.execute(psycopg.sql.SQL("SELECT 1 FROM {}.workflow WHERE id = %s FOR UPDATE")
                       .format(psycopg.sql.Identifier(schema)), (wf.workflow_id,))
        workers(APP, concurrency=3, env=env)
        wait_for(lambda: db.q("SELECT count(*) FROM {s}.checkpoint WHERE workflow_id = %s", wf.workflow_id) == [(8,)],
                 what="every task but the group's last to checkpoint while the row is locked")
        locker.rollback()
    assert wf.get(timeout=60) == [["a0", "b0"], ["a1", "b1"], ["a2", "b2"], "m0", "m1", "m2", "end"]
