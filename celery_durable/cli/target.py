"""Which database and schema a command acts on: ``--url``/``--schema``, the Celery app, or the environment."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import click
import psycopg
from click.core import ParameterSource

from ..config import SCHEMA_DEFAULT, Settings
from ..db import dsn, pool
from ..exceptions import DurableError, SchemaError

URL_ENV = "CELERY_DURABLE_URL"
SCHEMA_ENV = "CELERY_DURABLE_SCHEMA"
DEAD_LETTER_LIMIT_DEFAULT = 100
WORKFLOW_LIMIT_DEFAULT = 50


class CommandError(click.ClickException):
    """One line on stderr, exit status 1; click prints it without a traceback."""


# -- where the database is -------------------------------------------------------------------------


@dataclass
class Target:
    """The database and schema a command works on, resolved once per invocation."""

    conninfo: str | None
    settings: Settings
    app: Any = None  # the Celery app from ``celery -A``, when it points at PostgreSQL
    source: str = ""  # where conninfo came from, for the "no database" message

    @property
    def schema(self) -> str:
        return self.settings.schema

    def require(self) -> str:
        if not self.conninfo:
            raise CommandError(
                f"no database given: pass --url postgresql://user@host/db, set {URL_ENV}, "
                "or run as `celery -A proj durable …` with a postgresql:// broker or result backend"
            )
        return self.conninfo

    def describe(self) -> str:
        return dsn.describe(self.require())

    def connect(self) -> psycopg.Connection:
        """A direct autocommit connection; DatabaseUnavailable names the target."""
        return pool.connect(self.require(), settings=self.settings)

    def url(self) -> str:
        """A ``postgresql://`` URL equal to the conninfo (the workflow admin API takes URLs)."""
        return dsn.to_url(self.require())

    def celery_app(self) -> Any:
        """The ``-A`` app, or a minimal app on this database for commands that send tasks."""
        if self.app is not None:
            return self.app
        from celery import Celery

        url = self.url()
        app = Celery("celery_durable_cli", broker=url, backend=url, set_as_current=False)
        options = {"schema": self.schema, "auto_migrate": False}
        app.conf.update(broker_transport_options=options, result_backend_transport_options=options)
        self.app = app
        return app


#: Kept for callers of the old name: a ``postgresql://`` URL for a conninfo (multi-host lists kept).
conninfo_to_url = dsn.to_url


def _is_postgres(url: Any) -> bool:
    return isinstance(url, str) and url.split("://", 1)[0].split("+", 1)[0].lower() in dsn.SCHEMES


def _from_app(app: Any) -> tuple[str, Settings] | None:
    """Conninfo and settings of a Celery app whose broker or result backend is PostgreSQL."""
    conf = app.conf
    broker = conf.broker_write_url or conf.broker_url
    if isinstance(broker, str) and _is_postgres(broker.split(";", 1)[0]):
        options = dict(conf.broker_transport_options or {})
        client = app.connection_for_write()
        try:
            return dsn.from_kombu(client, options.get("connect_options")), Settings.from_options(options)
        finally:
            client.release()
    backend = conf.result_backend
    if _is_postgres(backend):
        options = dict(conf.result_backend_transport_options or {})
        return dsn.from_url(backend), Settings.from_options(options)
    return None


@dataclass
class Given:
    """``--url``/``--schema`` as given to the group, and the ``celery -A`` app if any."""

    url: str | None = None
    url_typed: bool = False
    schema: str | None = None
    schema_typed: bool = False
    app: Any = None


def _resolve(given: Given) -> Target:
    """Typed options beat the app's configuration, which beats the environment."""
    try:
        from_app = _from_app(given.app) if given.app is not None and not given.url_typed else None
        if from_app is not None:
            conninfo, settings = from_app
            if given.schema_typed and given.schema:
                settings = replace(settings, schema=given.schema)
            return Target(conninfo, settings, app=given.app, source="app")
        settings = Settings(schema=given.schema or SCHEMA_DEFAULT)
        return Target(dsn.from_url(given.url) if given.url else None, settings, source="url")
    except (ValueError, psycopg.Error) as exc:
        raise CommandError(f"invalid database URL or option: {_first_line(exc)}") from None


def _given(ctx: click.Context, url: str | None, schema: str | None, outer: Given | None) -> Given:
    """Merge this command's options over the enclosing group's."""
    typed = ParameterSource.COMMANDLINE
    given = replace(outer) if outer is not None else Given()
    if ctx.get_parameter_source("url") == typed or (url and not given.url):
        given.url, given.url_typed = url, given.url_typed or ctx.get_parameter_source("url") == typed
    if ctx.get_parameter_source("schema") == typed or (schema and not given.schema):
        given.schema, given.schema_typed = schema, given.schema_typed or ctx.get_parameter_source("schema") == typed
    return given


def _db_options(func: Callable) -> Callable:
    func = click.option("--schema", envvar=SCHEMA_ENV, metavar="NAME",
                        help=f"Schema holding the tables (env {SCHEMA_ENV}; default {SCHEMA_DEFAULT}).")(func)
    return click.option("--url", envvar=URL_ENV, metavar="URL",
                        help=f"postgresql://user:password@host:port/db (env {URL_ENV}; default: the -A app's).")(func)


def with_target(func: Callable) -> Callable:
    """Add --url/--schema, resolve the Target, and turn errors into one line naming the database."""

    @_db_options
    @click.pass_context
    @functools.wraps(func)
    def wrapper(ctx: click.Context, *args: Any, url: str | None, schema: str | None, **kwargs: Any) -> Any:
        target = _resolve(_given(ctx, url, schema, ctx.find_object(Given)))
        try:
            return func(target, *args, **kwargs)
        except click.ClickException:
            raise
        except SchemaError as exc:
            raise CommandError(f"{target.describe()}: {_first_line(exc)}") from None
        except DurableError as exc:
            raise CommandError(_first_line(exc)) from None
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            if target.conninfo:
                raise CommandError(_first_line(pool.unavailable(target.conninfo, exc))) from None
            raise CommandError(_first_line(exc)) from None
        except psycopg.Error as exc:
            where = f" in {target.describe()}" if target.conninfo else ""
            raise CommandError(f"database error{where}: {_first_line(exc)}") from None

    return wrapper

def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
