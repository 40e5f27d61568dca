"""One OpenTelemetry trace per durable chain, with a span per step: from the caller's span,
across a worker SIGKILLed mid-step, and across a resume sent by an instrumented operator process.
Workers run opentelemetry-instrumentation-celery with the SDK's in-memory exporter (otel_app.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.instrumentation.celery")
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from celery_durable import durable_chain, workflows  # noqa: E402
# The durable chain tests' client app and execution counter; `env` below is this module's.
from tests.worker.workflow.conftest import client, db, sig  # noqa: E402,F401

APP = "tests.ecosystem.otel_app"
STEP = "run/tests.apps.durable_app.step"


@pytest.fixture
def env(worker_env, tmp_path):
    return {**worker_env, "CELERY_DURABLE_LEASE": "2", "CELERY_DURABLE_PREFETCH": "1", "OTEL_SPAN_DIR": str(tmp_path)}


@pytest.fixture
def caller():
    """A tracer of the test process (not the global provider) and its finished spans."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("checkout"), exporter
    provider.shutdown()


def worker_spans(folder: Path) -> list[dict]:
    return [span for path in folder.glob("*.json") for span in json.loads(path.read_text() or "[]")]


def step_runs(folder: Path) -> list[dict]:
    return [s for s in worker_spans(folder) if s["name"] == STEP]


def test_one_trace_per_durable_chain_across_a_worker_crash(client, db, workers, env, caller, tmp_path):
    tracer, _ = caller
    db.set("block:b", "block")
    first = workers(APP, env=env, concurrency=1)
    with tracer.start_as_current_span("checkout") as root:
        wf = durable_chain(sig(client, "step", [], "a"), sig(client, "step", "b"), sig(client, "step", "c")).apply_async()
    trace_id = format(root.get_span_context().trace_id, "032x")
    db.wait_runs("b")
    first.kill()  # mid-step b: its span never ends, its message comes back after the lease
    db.set("block:b", None)
    workers(APP, env=env, concurrency=1)
    assert wf.get(timeout=60) == ["a", "b", "c"]
    assert db.runs("b") == 2

    deadline = time.monotonic() + 30
    while len(step_runs(tmp_path)) < 3:
        assert time.monotonic() < deadline, worker_spans(tmp_path)
        time.sleep(0.1)
    runs = step_runs(tmp_path)
    assert len(runs) == 3  # one finished span per step (the killed attempt never finished)
    assert {s["trace_id"] for s in runs} == {trace_id}, runs
    # The first step's span is a child of the caller's; each later one descends from a worker's
    # publish span (the previous step sending it).
    root_id = format(root.get_span_context().span_id, "016x")
    publishes = {s["span_id"] for s in worker_spans(tmp_path) if s["kind"] == "PRODUCER"}
    assert sorted(s["parent_id"] == root_id for s in runs) == [False, False, True], runs
    assert all(s["parent_id"] in publishes for s in runs if s["parent_id"] != root_id), runs


RESUME = """
import sys
from celery import Celery
from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from celery_durable import workflows
from tests.apps import basic
trace.set_tracer_provider(TracerProvider())
CeleryInstrumentor().instrument()
app = Celery("operator")
app.conf.update(basic.config())
print(workflows.resume_workflow(app, sys.argv[1]))
"""


def test_a_resumed_workflow_stays_in_its_trace(client, db, workers, env, caller, tmp_path):
    tracer, _ = caller
    db.set("fail:b", "fail")
    workers(APP, env=env, concurrency=1)
    with tracer.start_as_current_span("checkout") as root:
        wf = durable_chain(sig(client, "step", [], "a"), sig(client, "step", "b"), sig(client, "step", "c")).apply_async()
    trace_id = format(root.get_span_context().trace_id, "032x")
    deadline = time.monotonic() + 60
    while workflows.get_workflow(client, workflow_id=wf.id)["status"] != "failed":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    db.set("fail:b", None)
    # An operator process with its own tracing (and no span open) resumes the workflow.
    done = subprocess.run([sys.executable, "-c", RESUME, wf.id], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert wf.get(timeout=60) == ["a", "b", "c"]
    deadline = time.monotonic() + 30
    while len(step_runs(tmp_path)) < 4:
        assert time.monotonic() < deadline, worker_spans(tmp_path)
        time.sleep(0.1)
    runs = step_runs(tmp_path)
    assert sorted(s["state"] for s in runs) == ["FAILURE", "SUCCESS", "SUCCESS", "SUCCESS"], runs
    assert {s["trace_id"] for s in runs} == {trace_id}, runs
