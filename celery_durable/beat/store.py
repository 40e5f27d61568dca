"""Where the schedule lives, and how its entries are encoded.

The schedule is in the broker's database and schema when the broker is
postgresql:// (then a run's message commits with the entry's ``last_run_at``),
else in the result backend's (Redis or RabbitMQ broker: docs/how-to/periodic-tasks.md says what
then holds). Arguments, keyword arguments and options are encoded with the
app's task serializer (JSON when the app does not accept it) and decoded only
with content types the app accepts (``accept_content``), like a task message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kombu.serialization import dumps

from .. import content
from ..config import BACKEND_OPTIONS, BROKER_OPTIONS, Settings
from ..db import dsn, queries
from ..exceptions import ScheduleError

#: The lease's row: one active beat per schema.
LEASE_NAME = "beat"


@dataclass(frozen=True)
class Place:
    """The schedule's database and schema, and whether the broker is that same database (one transaction)."""

    conninfo: str
    settings: Settings
    in_broker: bool

    @property
    def queries(self) -> dict[str, str]:
        return queries.load("celery_durable.beat", "queries.sql", self.settings.schema)


def _is_postgres(url: Any) -> bool:
    return isinstance(url, str) and url.split("://", 1)[0].split("+", 1)[0].lower() in dsn.SCHEMES


def place(app: Any) -> Place:
    """Where ``app`` keeps its schedule; raises ScheduleError when neither broker nor backend is PostgreSQL."""
    conf = app.conf
    broker = conf.broker_write_url or conf.broker_url
    if isinstance(broker, str) and _is_postgres(broker.split(";", 1)[0]):
        options = dict(conf.broker_transport_options or {})
        client = app.connection_for_write()
        try:
            conninfo = dsn.from_kombu(client, options.get("connect_options"))
        finally:
            client.release()
        return Place(conninfo, Settings.from_options(options, BROKER_OPTIONS), in_broker=True)
    backend = conf.result_backend
    if _is_postgres(backend):
        options = dict(conf.result_backend_transport_options or {})
        return Place(dsn.from_url(backend), Settings.from_options(options, BACKEND_OPTIONS), in_broker=False)
    raise ScheduleError("celery_durable.beat keeps the schedule in PostgreSQL: the app needs a postgresql:// "
                        "broker_url or result_backend")


# -- encoding ----------------------------------------------------------------------------------------


def serializer(app: Any) -> str:
    """The app's task serializer when the app accepts it, else JSON; raises ScheduleError when neither is."""
    accepted = content.argument_types(app)
    for name in (app.conf.task_serializer, "json"):
        content_type, _, _ = dumps(None, serializer=name)
        if content_type in accepted:
            return name
    raise ScheduleError("the app accepts neither its task_serializer nor json (accept_content): "
                        "periodic tasks' arguments cannot be stored")


def encode(app: Any, name: str, args: Any, kwargs: Any, options: Any) -> dict[str, Any]:
    """The stored columns of an entry's arguments and options; raises ScheduleError naming the entry."""
    args = list(args or ())
    kwargs = dict(kwargs or {})
    options = dict(options or {})
    chosen = serializer(app)
    encoded: dict[str, Any] = {}
    for field, value in (("args", args), ("kwargs", kwargs), ("options", options)):
        try:
            content_type, encoding, data = dumps(value, serializer=chosen)
        except Exception as exc:  # the serializer's own error: name the entry and the field
            raise ScheduleError(f"periodic task {name!r}: its {field} cannot be encoded as {chosen}: {exc}") from None
        encoded[field] = data.encode(encoding or "utf-8") if isinstance(data, str) else bytes(data)
    encoded["content_type"], encoded["content_encoding"] = content_type, encoding or "binary"
    return encoded


def decode(app: Any, name: str, row: dict[str, Any]) -> tuple[list, dict, dict]:
    """An entry's args, kwargs and options; raises Undecodable for a content type the app does not accept."""
    accept = content.argument_types(app)
    values = []
    for field in ("args", "kwargs", "options"):
        data = bytes(row[field])
        values.append(content.load(data, row["content_type"], row["content_encoding"], accept,
                                   f"periodic task {name!r} {field}"))
    args, kwargs, options = values
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict) or not isinstance(options, dict):
        raise ScheduleError(f"periodic task {name!r}: args must be a list, kwargs and options objects")
    return list(args), dict(kwargs), dict(options)


def shown(row: dict[str, Any], app: Any | None) -> tuple[Any, Any, Any]:
    """args, kwargs and options for display: what the app does not decode (pickle never) shows as its type and size."""
    accept = content.shown_types(app)
    return tuple(content.show(bytes(row[f]), row["content_type"], row["content_encoding"], accept)
                 for f in ("args", "kwargs", "options"))


def schedule_json(value: Any) -> str:
    """A schedule column value (jsonb as text)."""
    from .schedules import to_json

    return json.dumps(to_json(value))
