"""``metrics`` prints, ``exporter`` serves the Prometheus figures of the metrics view (extra ``[metrics]``)."""

from __future__ import annotations

import threading
from typing import Any

import click

from .group import durable
from .schema import _checked
from .target import CommandError, Target, with_target


def _registry(target: Target) -> tuple[Any, Any]:
    try:
        from prometheus_client import CollectorRegistry
    except ImportError:
        raise CommandError("metrics need prometheus-client: pip install 'celery-durable[metrics]'") from None
    from ..metrics import DurableCollector

    with target.connect() as conn:
        _checked(conn, target)
    collector = DurableCollector(target.connect, target.schema)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry, collector


@durable.command("metrics")
@with_target
def metrics_cmd(target: Target) -> None:
    """Print the Prometheus exposition once: queues, dead letters, workflows."""
    from prometheus_client import generate_latest

    registry, collector = _registry(target)
    try:
        click.echo(generate_latest(registry).decode(), nl=False)
    finally:
        collector.close()


@durable.command("exporter")
@click.option("--port", type=int, default=9808, show_default=True, help="TCP port (0: any free port, printed).")
@click.option("--addr", default="0.0.0.0", show_default=True, help="Address to listen on.")
@with_target
def exporter_cmd(target: Target, port: int, addr: str) -> None:
    """Serve /metrics for Prometheus; each scrape is one query on the metrics view."""
    from prometheus_client import start_http_server

    registry, collector = _registry(target)
    server, thread = start_http_server(port, addr=addr, registry=registry)
    click.echo(f"serving {target.describe()} schema {target.schema} on http://{addr}:{server.server_port}/metrics",
               err=False)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        collector.close()
