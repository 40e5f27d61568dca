"""The durable test app with OpenTelemetry: each pool process instruments Celery and keeps its
finished spans in the SDK's in-memory exporter, dumped to OTEL_SPAN_DIR/<pid>.json on every span
end (a SIGKILLed process keeps what it had finished)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from celery.signals import worker_process_init
from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.apps.durable_app import app  # noqa: F401  (the app and its tasks)

exporter = InMemorySpanExporter()


def span_record(span) -> dict:
    return {
        "name": span.name, "kind": span.kind.name, "trace_id": format(span.context.trace_id, "032x"),
        "span_id": format(span.context.span_id, "016x"),
        "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
        "task_id": span.attributes.get("celery.task_id") or span.attributes.get("messaging.message.id"),
        "state": span.attributes.get("celery.state"),
    }


class Dump(SpanProcessor):
    def on_end(self, span) -> None:
        path = Path(os.environ["OTEL_SPAN_DIR"]) / f"{os.getpid()}.json"
        path.write_text(json.dumps([span_record(s) for s in exporter.get_finished_spans()]))


@worker_process_init.connect(weak=False)
def _tracing(**_) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.add_span_processor(Dump())
    trace.set_tracer_provider(provider)
    CeleryInstrumentor().instrument()
