"""The app of the result-backend worker tests: our backend behind any broker, on its own queue.

``make_app`` builds the same app (same task names) in the worker and in the
test process. Environment: CELERY_DURABLE_URL / CELERY_DURABLE_SCHEMA (backend
database and schema), CELERY_DURABLE_BROKER (default: redis://127.0.0.1:6379/0),
CELERY_DURABLE_QUEUE (a queue no other test uses), CELERY_DURABLE_SERIALIZER,
CELERY_DURABLE_RESULT_EXPIRES, CELERY_DURABLE_MAINTENANCE (expiry tests) and
CELERY_DURABLE_MAX_RESULT (max_result_bytes).
"""

from __future__ import annotations

import os

from celery import Celery

import celery_durable  # noqa: F401  (registers the postgresql:// broker scheme)

ACCEPT = ["json", "pickle", "msgpack", "yaml"]


def make_app(url: str, schema: str, broker: str, queue: str, *, serializer: str = "json",
             result_expires: float | None = None, maintenance_interval: float | None = None,
             extended: bool = True, max_result_bytes: int | None = None) -> Celery:
    app = Celery("results")
    options: dict = {"schema": schema}
    if maintenance_interval is not None:
        options["maintenance_interval"] = maintenance_interval
    if max_result_bytes is not None:
        options["max_result_bytes"] = max_result_bytes
    app.conf.update(
        broker_url=broker,
        result_backend=url,
        broker_transport_options={"schema": schema, "polling_interval": 1.0},
        result_backend_transport_options=options,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_default_queue=queue,
        task_serializer=serializer,
        result_serializer=serializer,
        accept_content=ACCEPT,
        result_accept_content=ACCEPT,
        result_extended=extended,
        worker_prefetch_multiplier=4,
    )
    if result_expires is not None:
        app.conf.result_expires = result_expires
    _register(app)
    return app


class Unserializable:
    """A return value no serializer but pickle can encode."""


def _register(app: Celery) -> None:
    @app.task(name="results.add", shared=False)
    def add(x, y):
        return x + y

    @app.task(name="results.echo", shared=False)
    def echo(value):
        return value

    @app.task(name="results.tsum", shared=False)
    def tsum(values):
        return sum(values)

    @app.task(name="results.fail", shared=False)
    def fail(message="boom"):
        raise ValueError(message)

    @app.task(name="results.big", shared=False)
    def big(nbytes):
        return "x" * nbytes

    @app.task(name="results.unserializable", shared=False)
    def unserializable():
        return Unserializable()

    @app.task(name="results.identity_list", shared=False)
    def identity_list(values):
        return list(values)


app = make_app(
    os.environ.get("CELERY_DURABLE_URL", ""),
    os.environ.get("CELERY_DURABLE_SCHEMA", "celery_durable"),
    os.environ.get("CELERY_DURABLE_BROKER", "redis://127.0.0.1:6379/0"),
    os.environ.get("CELERY_DURABLE_QUEUE", "celery"),
    serializer=os.environ.get("CELERY_DURABLE_SERIALIZER", "json"),
    result_expires=float(os.environ["CELERY_DURABLE_RESULT_EXPIRES"]) if os.environ.get("CELERY_DURABLE_RESULT_EXPIRES") else None,
    maintenance_interval=float(os.environ["CELERY_DURABLE_MAINTENANCE"]) if os.environ.get("CELERY_DURABLE_MAINTENANCE") else None,
    max_result_bytes=int(os.environ["CELERY_DURABLE_MAX_RESULT"]) if os.environ.get("CELERY_DURABLE_MAX_RESULT") else None,
)
