"""OpenTelemetry context for durable chains: one trace from the caller through every step.

With ``opentelemetry-instrumentation-celery``, each step's publish carries the
trace context of the step that sent it. Two sends have no such step: the
first one (the caller may not instrument Celery) and a re-send by an operator
(resume, restart, the recovery sweep). So ``apply_async`` stores the caller's
context with the workflow's steps (W3C ``traceparent`` headers), and a send
made outside any span continues that stored context. Without OpenTelemetry
installed both are no-ops.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

try:
    from opentelemetry import context as _context
    from opentelemetry import propagate as _propagate
    from opentelemetry import trace as _trace
except ImportError:  # the [otel] extra is not installed
    _context = _propagate = _trace = None  # type: ignore[assignment]


def carrier() -> dict[str, str]:
    """The current trace context as message headers (``traceparent``…); empty outside a span."""
    if _propagate is None or not _trace.get_current_span().get_span_context().is_valid:
        return {}
    headers: dict[str, str] = {}
    _propagate.inject(headers)
    return headers


@contextmanager
def continued(headers: dict) -> Iterator[None]:
    """Outside any span, make the context stored in ``headers`` current while a step is sent."""
    if _propagate is None or "traceparent" not in headers or _trace.get_current_span().get_span_context().is_valid:
        yield
        return
    token = _context.attach(_propagate.extract(headers))
    try:
        yield
    finally:
        _context.detach(token)
