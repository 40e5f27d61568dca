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
    """Pipelined publishes (``confirm_publish: False``) the server refused; raised by ``flush_publishes()``.

    ``task_ids`` names them (``failures`` pairs each with the server's error; ``more`` counts those
    refused beyond the ones kept). Their messages are not stored.
    """

    def __init__(self, message: str, failures: list[tuple[str, str]] | None = None, more: int = 0) -> None:
        super().__init__(message)
        self.failures = list(failures or [])
        self.more = more

    @property
    def task_ids(self) -> list[str]:
        return [task_id for task_id, _ in self.failures]

    @classmethod
    def of(cls, failures: list[tuple[str, str]], more: int = 0) -> PublishFailed:
        listed = "; ".join(f"task {task_id}: {error}" for task_id, error in failures[:5])
        count = len(failures) + more
        return cls(f"{count} pipelined publish(es) were refused by the server and not stored: {listed}"
                   + (" …" if count > 5 else ""), failures, more)


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


class ScheduleError(DurableError, ValueError):
    """A periodic task's schedule, arguments or options cannot be stored or read back (names what is wrong)."""


class EntryNotFound(DurableError, LookupError):
    """No periodic task of that name in the schedule table."""
