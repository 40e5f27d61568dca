"""Which stored values a process decodes: only content types it accepts, as Celery's own message path.

A durable step's stored arguments are decoded with ``accept_content`` (what
Celery's consumer accepts in a task message); checkpoints and results with
``result_accept_content``, or ``accept_content`` when that is None (Celery's
result backend rule). Whatever was stored, by a producer or by anyone who can
write the schema's rows, any other content type raises
:class:`~celery_durable.exceptions.Undecodable` before a decoder runs.
What only shows values (the Django admin, the CLI) never unpickles, whatever
the app accepts: it shows what it does not decode as its content type and size.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kombu.exceptions import ContentDisallowed, DecodeError
from kombu.serialization import loads, prepare_accept_content

from .exceptions import Undecodable

PICKLE = "application/x-python-serialize"
#: What a process without a Celery app (the CLI given a URL) decodes: Celery's default accept_content.
JSON_ONLY = frozenset({"application/json"})


def argument_types(app: Any) -> frozenset[str]:
    """The content types ``app`` decodes task arguments with (``accept_content``)."""
    return frozenset(prepare_accept_content(app.conf.accept_content))


def result_types(app: Any) -> frozenset[str]:
    """The content types ``app`` decodes results with (``result_accept_content``, else ``accept_content``)."""
    accept = app.conf.result_accept_content
    return frozenset(prepare_accept_content(app.conf.accept_content if accept is None else accept))


def shown_types(app: Any | None) -> frozenset[str]:
    """What a page or command that only shows results decodes: the app's result types but pickle."""
    return JSON_ONLY if app is None else result_types(app) - {PICKLE}


def accept_types(names: Iterable[str]) -> frozenset[str]:
    """Serializer names or content types as content types (``["json"]`` -> ``{"application/json"}``)."""
    return frozenset(prepare_accept_content(list(names)))


def load(data: bytes, content_type: str, content_encoding: str | None, accept: frozenset[str], what: str,
         path: str | None = None) -> Any:
    """Decode ``data`` if its content type is in ``accept``; raises Undecodable (naming ``what``) otherwise."""
    try:
        return loads(data, content_type, content_encoding, accept=accept)
    except ContentDisallowed:
        raise Undecodable(f"{what} is stored as {content_type} ({len(data)} bytes), which this process does not "
                          f"accept (accept: {', '.join(sorted(accept))}): not decoded", path) from None
    except DecodeError as exc:
        raise Undecodable(f"{what} cannot be decoded as {content_type}: {exc}", path) from None


@dataclass(frozen=True)
class Opaque:
    """A stored value shown without decoding it."""

    content_type: str
    size: int

    def __str__(self) -> str:
        return f"<{self.content_type}, {self.size} bytes: not decoded>"


def show(data: bytes, content_type: str, content_encoding: str | None, accept: frozenset[str]) -> Any:
    """The decoded value, or an :class:`Opaque` for what ``accept`` leaves out (never raises Undecodable)."""
    try:
        return load(data, content_type, content_encoding, accept, "value")
    except Undecodable:
        return Opaque(content_type, len(data))
