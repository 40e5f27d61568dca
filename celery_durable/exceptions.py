"""One error tree for celery_durable; driver errors are wrapped here.

Every error that means "the database is not there" subclasses
:class:`kombu.exceptions.OperationalError` so Celery's reconnect logic and
existing ``except`` clauses treat it as a connection loss.
"""

from __future__ import annotations

from kombu.exceptions import EncodeError, OperationalError


class DurableError(Exception):
    """Base class of every error raised by celery_durable."""


class DatabaseUnavailable(DurableError, OperationalError):
    """The database cannot be reached; names host and database, never the password."""


class SchemaError(DurableError):
    """The schema is missing, older than this code and auto-migration is off, or newer than this code."""


class MessageTooLarge(DurableError, ValueError):
    """A message is larger than ``max_message_bytes``."""


class PublishFailed(DurableError):
    """A pipelined publish (``confirm_publish: False``) was refused by the server; raised by the next publish or flush."""


class ResultTooLarge(DurableError, EncodeError):
    """An encoded result is larger than ``max_result_bytes``: the task fails with this error, the worker goes on."""


class LeaseLost(DurableError):
    """This worker no longer holds the message: another worker may be running it."""


class WorkflowError(DurableError):
    """A durable workflow cannot be run, resumed or changed as asked."""


class ListenUnavailable(DurableError):
    """LISTEN over this URL receives no notifications (a transaction pooler sits in between): set ``listen_url``."""


class Undecodable(WorkflowError):
    """A stored value's content type is one this process does not accept (or its data is corrupt): not decoded.

    ``path`` names the workflow task whose arguments or result it is, when known.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path
