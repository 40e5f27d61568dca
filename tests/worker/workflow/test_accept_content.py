"""Stored arguments and results are decoded only with content types the reading process accepts.

A worker with ``accept_content = ["json"]`` refuses a pickled task message, as
Celery promises; a durable step's stored arguments must get the same answer,
whoever stored them. The pickled payload here creates a file when it is
unpickled: the file appearing is code having run in the worker.
"""

from __future__ import annotations

import pickle

import pytest
from celery import Celery, group

from celery_durable import durable_chain
from celery_durable.exceptions import WorkflowError
from tests.apps import basic

from .conftest import APP, sig, wait_for

PICKLE = "application/x-python-serialize"


class Touch:
    """Unpickling this runs ``open(path, "x")``: the file is the proof that code ran."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "x"))


def _row(db, workflow_id: str) -> dict:
    """The workflow row, read without decoding anything (this test process accepts pickle)."""
    status, failed_path, error = db.q("SELECT status, failed_path, error FROM {s}.workflow WHERE id = %s",
                                      workflow_id)[0]
    paths = [p for (p,) in db.q("SELECT path FROM {s}.checkpoint WHERE workflow_id = %s ORDER BY path", workflow_id)]
    return {"status": status, "failed_path": failed_path, "error": error, "checkpoints": paths}


def test_a_json_only_worker_never_unpickles_a_later_steps_arguments(client, db, workers, env, tmp_path):
    """The producer accepts pickle and sets it on the second step; the worker accepts JSON only."""
    workers(APP, env={**env, "CELERY_DURABLE_ACCEPT": "json"})
    marker = tmp_path / "unpickled"
    wf = durable_chain(sig(client, "step", None, "a"),
                       sig(client, "step", Touch(marker)).set(serializer="pickle")).apply_async()
    wait_for(lambda: marker.exists() or _row(db, wf.id)["status"] != "running", 60,
             "the workflow to fail (or the payload to run)")
    assert not marker.exists(), "the worker unpickled the step's stored arguments"
    found = _row(db, wf.id)
    assert (found["status"], found["failed_path"]) == ("failed", "1")
    assert PICKLE in found["error"] and "accept" in found["error"]
    assert found["checkpoints"] == ["0"]  # the step before it stands
    with pytest.raises(Exception, match=PICKLE):
        wf.get(timeout=30)
    assert db.runs("a") == 1
    assert not marker.exists()


def test_durable_refuses_a_serializer_the_app_does_not_accept(db, env, pg_url):
    app = Celery("json-only-client")
    app.conf.update(basic.config({**env, "CELERY_DURABLE_ACCEPT": "json"}))
    try:
        with pytest.raises(WorkflowError, match="pickle.*accept_content"):
            durable_chain(sig(app, "step", None, "a"), sig(app, "step", "b").set(serializer="pickle")).apply_async()
        with pytest.raises(WorkflowError, match="pickle.*accept_content"):
            app.conf.task_serializer = "pickle"
            durable_chain(sig(app, "step", None, "a")).apply_async()
        assert db.q("SELECT count(*) FROM {s}.workflow")[0][0] == 0
    finally:
        app.close()


def test_a_rewritten_checkpoint_is_shown_not_unpickled(client, db, workers, env, schema, tmp_path):
    """A group member's checkpoint rewritten to pickle: ``workflows show`` (the CLI) prints its content
    type and size, and the JSON-only worker fails the member whose commit would read it."""
    from click.testing import CliRunner

    from celery_durable.cli import durable

    workers(APP, env={**env, "CELERY_DURABLE_ACCEPT": "json"})
    marker = tmp_path / "unpickled"
    db.set("block:b", "block")
    wf = durable_chain(group(sig(client, "member", None, "a"), sig(client, "member", None, "b")),
                       sig(client, "collect", "c")).apply_async()
    wait_for(lambda: db.runs("b") and db.q("SELECT count(*) FROM {s}.checkpoint WHERE path = '0.0'")[0][0],
             60, "member a's checkpoint while b runs")
    payload = pickle.dumps(Touch(marker))
    db.q("UPDATE {s}.checkpoint SET content_type = %s, result = %s WHERE workflow_id = %s AND path = '0.0'",
         PICKLE, payload, wf.id)
    shown = CliRunner().invoke(durable, ["--url", db.url, "--schema", schema, "workflows", "show", wf.id])
    assert shown.exit_code == 0, shown.output
    assert f"{PICKLE}, {len(payload)} bytes" in shown.output
    assert not marker.exists()

    db.set("block:b", None)  # b's commit completes the group: the chord body's input is a's result
    wait_for(lambda: marker.exists() or _row(db, wf.id)["status"] != "running", 60,
             "the workflow to fail (or the payload to run)")
    assert not marker.exists(), "the worker unpickled a stored checkpoint"
    found = _row(db, wf.id)
    assert (found["status"], found["failed_path"]) == ("failed", "0.1")
    assert PICKLE in found["error"] and "0.0" in found["error"]
    assert db.runs("c") == 0
