"""``metrics`` prints, ``exporter`` serves the Prometheus figures of the metrics view (extra ``[metrics]``)."""

from __future__ import annotations

import threading
from typing import Any

import click

from ..db import appname
from ..metrics.collector import MIN_INTERVAL_DEFAULT, TIMEOUT_DEFAULT
from .group import durable
from .schema import _checked
from .target import CommandError, Target, with_target

PORT_DEFAULT = 9808
#: All interfaces, as Prometheus exporters do; ``--bind 127.0.0.1`` keeps the port on this host.
BIND_DEFAULT = "0.0.0.0"

timeout_option = click.option(
    "--timeout", type=click.FloatRange(min=0.001), default=TIMEOUT_DEFAULT, show_default=True,
    help="Seconds a read of the database may run (its statement_timeout, lock waits included).")


def _registry(target: Target, **bounds: float) -> tuple[Any, Any]:
    try:
        from prometheus_client import CollectorRegistry
    except ImportError:
        raise CommandError("metrics need prometheus-client: pip install 'celery-durable[metrics]'") from None
    from ..metrics import DurableCollector

    with target.connect() as conn:
        _checked(conn, target)
    collector = DurableCollector(target.connect, target.schema, **bounds)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry, collector


@durable.command("metrics")
@timeout_option
@with_target
def metrics_cmd(target: Target, timeout: float) -> None:
    """Print the Prometheus exposition once: queues, dead letters, workflows."""
    from prometheus_client import generate_latest

    registry, collector = _registry(target, timeout=timeout)
    try:
        collector.read()  # an error here is the command's error; the exposition below serves this read
        click.echo(generate_latest(registry).decode(), nl=False)
    finally:
        collector.close()


@durable.command("exporter")
@click.option("--port", type=int, default=PORT_DEFAULT, show_default=True, help="TCP port (0: any free port, printed).")
@click.option("--bind", "--addr", "bind", default=BIND_DEFAULT, show_default=True, metavar="ADDRESS",
              help="Address to listen on: 0.0.0.0 every IPv4 interface, :: every interface, 127.0.0.1 this host only.")
@timeout_option
@click.option("--min-interval", type=click.FloatRange(min=0), default=MIN_INTERVAL_DEFAULT, show_default=True,
              help="Scrapes within this many seconds of a read are answered with its figures.")
@with_target
def exporter_cmd(target: Target, port: int, bind: str, timeout: float, min_interval: float) -> None:
    """Serve /metrics for Prometheus: one bounded read of the metrics view at a time, at most one per --min-interval."""
    from prometheus_client import start_http_server

    appname.set_role("exporter")
    registry, collector = _registry(target, timeout=timeout, min_interval=min_interval)
    server, thread = start_http_server(port, addr=bind, registry=registry)
    host = f"[{bind}]" if ":" in bind else bind
    click.echo(f"serving {target.describe()} schema {target.schema} on http://{host}:{server.server_port}/metrics")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        collector.close()
