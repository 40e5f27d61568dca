"""The ``celery durable`` / ``celery-durable`` command line: schema, queues, dead letters, workflows.

Two ways in, one set of commands:

- ``celery -A proj durable queues``: Celery loads this group through the
  ``celery.commands`` entry point; the database, schema and options come from
  the app's broker (or, when the broker is not PostgreSQL, its result backend).
- ``celery-durable queues --url postgresql://user@host/db``: standalone; the URL
  may come from ``CELERY_DURABLE_URL`` and the schema from ``CELERY_DURABLE_SCHEMA``.

A ``--url``/``--schema`` typed on the command line beats the app; the app
beats the environment. Every command prints an aligned table, or JSON with
``--json``. Errors are one line naming ``user@host:port/database`` (never the
password) and exit with status 1; nothing but ``migrate`` changes the schema.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import quote, urlencode

import click
import psycopg
from click.core import ParameterSource
from psycopg.conninfo import conninfo_to_dict

from .config import SCHEMA_DEFAULT, Settings
from .db import dsn, migrate, pool
from .db.queries import schema_sql
from .exceptions import DurableError, SchemaError

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
        return pool.connect(self.require(), timeout=self.settings.connect_timeout)

    def url(self) -> str:
        """A ``postgresql://`` URL equal to the conninfo (the workflow admin API takes URLs)."""
        return conninfo_to_url(self.require())

    def celery_app(self) -> Any:
        """The ``-A`` app, or a minimal app on this database for commands that send tasks."""
        if self.app is not None:
            return self.app
        import celery_durable  # noqa: F401  (registers postgresql:// with Kombu)
        from celery import Celery

        url = self.url()
        app = Celery("celery_durable_cli", broker=url, backend=url, set_as_current=False)
        options = {"schema": self.schema, "auto_migrate": False}
        app.conf.update(broker_transport_options=options, result_backend_transport_options=options)
        self.app = app
        return app


def conninfo_to_url(conninfo: str) -> str:
    params = conninfo_to_dict(conninfo)
    user = quote(params.pop("user", "") or "", safe="")
    password = params.pop("password", None)
    auth = f"{user}:{quote(password, safe='')}@" if password else (f"{user}@" if user else "")
    host = quote(params.pop("host", "") or "", safe="")
    port = params.pop("port", None)
    dbname = quote(params.pop("dbname", "") or "", safe="")
    query = f"?{urlencode(params, quote_via=quote)}" if params else ""
    return f"postgresql://{auth}{host}{':' + str(port) if port else ''}/{dbname}{query}"


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


# -- output ----------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A JSON-friendly value: ages as seconds, times as ISO 8601."""
    if isinstance(value, timedelta):
        return round(value.total_seconds(), 3)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, timedelta):
        return human_age(value.total_seconds())
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        return json.dumps(_plain(value), separators=(",", ":"), default=str)
    text = str(value)
    return text if len(text) <= 80 and "\n" not in text else text.splitlines()[0][:77] + "..."


def human_age(seconds: float) -> str:
    """``45s``, ``3m12s``, ``2h05m``, ``3d04h``."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An aligned plain-text table; numbers right-aligned."""
    raw = [list(row) for row in rows]
    cells = [[_cell(v) for v in row] for row in raw]
    numeric = [
        bool(raw) and all(r[i] is None or (isinstance(r[i], (int, float, Decimal)) and not isinstance(r[i], bool))
                          for r in raw)
        for i in range(len(headers))
    ]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    return "\n".join([line([h.upper() for h in headers])] + [line(r) for r in cells])


def emit(as_json: bool, data: Any, text: Callable[[], str]) -> None:
    if as_json:
        click.echo(json.dumps(_plain(data), indent=2, default=str))
    else:
        click.echo(text())


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")


# -- commands --------------------------------------------------------------------------------------


@click.group(name="durable", context_settings={"help_option_names": ["-h", "--help"]})
@_db_options
@click.pass_context
def durable(ctx: click.Context, url: str | None, schema: str | None) -> None:
    """PostgreSQL broker, result backend and durable workflows: schema, queues, dead letters, workflows.

    --url and --schema go before or after the command name.
    """
    celery_ctx = ctx.find_root().obj if ctx.parent is not None else None
    given = _given(ctx, url, schema, None)
    given.app = getattr(celery_ctx, "app", None)
    ctx.obj = given


@durable.command("migrate")
@json_option
@with_target
def migrate_cmd(target: Target, as_json: bool) -> None:
    """Create the schema or bring it to the current version; print the version."""
    with target.connect() as conn:
        before = migrate.current_version(conn, target.schema)
        version = migrate.ensure_schema(conn, target.schema, migrate=True)
    if before is None:
        action = "created"
    elif before == version:
        action = "up to date"
    else:
        action = f"migrated from version {before}"
    data = {"database": target.describe(), "schema": target.schema, "version": version,
            "previous_version": before, "action": action}
    emit(as_json, data, lambda: f"schema {target.schema!r} in {target.describe()}: version {version} ({action})")


@durable.command("sql")
@with_target
def sql_cmd(target: Target) -> None:
    """Print the DDL that creates the current schema (for a DBA; no database needed)."""
    click.echo(migrate.ddl(target.schema).strip())


def _checked(conn: psycopg.Connection, target: Target) -> None:
    """Read-only commands never create the schema: say how to when it is missing or old."""
    migrate.ensure_schema(conn, target.schema, migrate=False)


QUEUE_COLUMNS = ("queue", "depth", "ready", "delayed", "leased", "oldest_age")


@durable.command("queues")
@json_option
@with_target
def queues_cmd(target: Target, as_json: bool) -> None:
    """Every declared queue: depth, ready, delayed, leased and the age of its oldest message."""
    query = schema_sql(f"SELECT {', '.join(QUEUE_COLUMNS)}, oldest FROM {{schema}}.queues ORDER BY queue",
                       target.schema)
    with target.connect() as conn:
        _checked(conn, target)
        rows = conn.execute(query).fetchall()
    data = [dict(zip(QUEUE_COLUMNS + ("oldest",), row)) for row in rows]
    emit(as_json, data, lambda: table(QUEUE_COLUMNS, [row[:-1] for row in rows]) if rows
         else f"no queues in schema {target.schema!r}")


DEAD_LETTER_COLUMNS = ("id", "queue", "task", "reason", "delivery_count", "dead_at")


@durable.command("dead-letters")
@click.argument("ids", nargs=-1, type=int)
@click.option("--requeue", is_flag=True, help="Move the given dead letters (or all, with --all) back to their queues.")
@click.option("--purge", is_flag=True, help="Delete the given dead letters (or all, with --all).")
@click.option("--all", "every", is_flag=True, help="With --requeue/--purge: every dead letter (of --queue).")
@click.option("--queue", metavar="NAME", help="Only dead letters of this queue.")
@click.option("--limit", default=DEAD_LETTER_LIMIT_DEFAULT, show_default=True, help="Most rows listed.")
@json_option
@with_target
def dead_letters_cmd(target: Target, ids: tuple[int, ...], requeue: bool, purge: bool, every: bool,
                     queue: str | None, limit: int, as_json: bool) -> None:
    """List dead letters; `--requeue ID…` sends them back to their queue, `--purge ID…` deletes them."""
    if requeue and purge:
        raise CommandError("choose one of --requeue and --purge")
    if (requeue or purge) and not ids and not every:
        raise CommandError("give the dead-letter IDs to act on, or --all")
    if ids and not (requeue or purge):
        raise CommandError("IDs need --requeue or --purge")
    where, params = _dead_letter_filter(ids if ids else None, queue)
    with target.connect() as conn:
        _checked(conn, target)
        if requeue:
            moved = _requeue(conn, target.schema, where, params)
            emit(as_json, moved, lambda: f"requeued {len(moved)} message(s)" + (
                "\n" + table(("dead_letter_id", "message_id", "queue"),
                             [(m["dead_letter_id"], m["message_id"], m["queue"]) for m in moved]) if moved else ""))
            _missing(ids, [m["dead_letter_id"] for m in moved])
            return
        if purge:
            deleted = [row[0] for row in conn.execute(
                schema_sql(f"DELETE FROM {{schema}}.dead_letter {where} RETURNING id", target.schema), params)]
            emit(as_json, {"purged": len(deleted), "ids": sorted(deleted)},
                 lambda: f"purged {len(deleted)} dead letter(s)")
            _missing(ids, deleted)
            return
        query = schema_sql(
            f"SELECT {', '.join(DEAD_LETTER_COLUMNS)} FROM {{schema}}.dead_letter {where} ORDER BY id LIMIT %(limit)s",
            target.schema,
        )
        rows = conn.execute(query, {**params, "limit": limit}).fetchall()
    data = [dict(zip(DEAD_LETTER_COLUMNS, row)) for row in rows]
    emit(as_json, data, lambda: table(DEAD_LETTER_COLUMNS, rows) if rows else "no dead letters")


def _dead_letter_filter(ids: Sequence[int] | None, queue: str | None) -> tuple[str, dict[str, Any]]:
    clauses, params = [], {}
    if ids:
        clauses.append("id = ANY(%(ids)s)")
        params["ids"] = list(ids)
    if queue:
        clauses.append("queue = %(queue)s")
        params["queue"] = queue
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


def _requeue(conn: psycopg.Connection, schema: str, where: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Move dead letters back into ``message`` in one transaction; delivery count starts again at 0.

    The priority is re-read from the payload (the dead-letter row does not
    keep it); the message TTL is not restored, so a requeued message does not
    expire at once. The queue row is created if it expired meanwhile, so the
    message shows in ``queues``. The insert trigger wakes listening workers.
    """
    moved = []
    with conn.transaction():
        rows = conn.execute(
            schema_sql(f"DELETE FROM {{schema}}.dead_letter {where} RETURNING id, queue, task, payload, created_at",
                       schema), params,
        ).fetchall()
        for dead_id, queue, task, payload, created_at in sorted(rows):
            conn.execute(schema_sql("INSERT INTO {schema}.queue (name) VALUES (%s) ON CONFLICT (name) DO NOTHING",
                                    schema), (queue,))
            new_id = conn.execute(
                schema_sql("INSERT INTO {schema}.message (queue, priority, task, payload, created_at) "
                           "VALUES (%s, %s, %s, %s, %s) RETURNING id", schema),
                (queue, _payload_priority(payload), task, payload, created_at),
            ).fetchone()[0]
            moved.append({"dead_letter_id": dead_id, "message_id": new_id, "queue": queue})
    return moved


def _payload_priority(payload: str) -> int:
    try:
        value = json.loads(payload).get("properties", {}).get("priority")
        return max(0, min(int(value), 255))
    except (ValueError, TypeError, AttributeError):
        return 0


def _missing(asked: Sequence[int], found: Iterable[int]) -> None:
    missing = sorted(set(asked) - set(found))
    if missing:
        raise CommandError(f"no dead letter with id {', '.join(map(str, missing))}")


# -- workflows: a thin layer over celery_durable.workflows ---------------------------------------------

WORKFLOW_COLUMNS = ("id", "name", "status", "current_step", "step_count", "current_task", "age", "updated_at", "error")


def _admin() -> Any:
    try:
        from . import workflows
    except ImportError as exc:
        if exc.name in (__package__, f"{__package__}.workflows") or "workflows" in str(exc):
            raise CommandError("workflow administration is not available: this celery_durable has no "
                               "celery_durable.workflows module") from None
        raise CommandError(f"workflow administration is not available: {_first_line(exc)}") from None
    return workflows


def _call(name: str, *args: Any, **kwargs: Any) -> Any:
    func = getattr(_admin(), name, None)
    if func is None:
        raise CommandError(f"workflow administration is not available: celery_durable.workflows has no {name}()")
    return func(*args, **kwargs)


def _require_schema(target: Target) -> None:
    """The admin API would create a missing schema on first use; a CLI read must not."""
    with target.connect() as conn:
        _checked(conn, target)


def _workflow_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no workflows"
    columns = [c for c in WORKFLOW_COLUMNS if any(c in row for row in rows)] or list(rows[0])
    return table(columns, [[row.get(c) for c in columns] for row in rows])


@durable.group("workflows")
def workflows_group() -> None:
    """Durable chains: list, show, cancel, resume, restart from a step, stalled."""


@workflows_group.command("list")
@click.option("--status", type=click.Choice(["running", "succeeded", "failed", "cancelled"]))
@click.option("--limit", default=WORKFLOW_LIMIT_DEFAULT, show_default=True)
@json_option
@with_target
def workflows_list(target: Target, status: str | None, limit: int, as_json: bool) -> None:
    """Most recent workflows, newest first."""
    _require_schema(target)
    rows = _call("list_workflows", target.url(), target.schema, status=status, limit=limit)
    emit(as_json, rows, lambda: _workflow_table(rows))


@workflows_group.command("stalled")
@click.option("--limit", default=WORKFLOW_LIMIT_DEFAULT, show_default=True)
@json_option
@with_target
def workflows_stalled(target: Target, limit: int, as_json: bool) -> None:
    """Running workflows with no progress for a while (the `stalled` column of the workflows view)."""
    _require_schema(target)
    rows = _call("list_workflows", target.url(), target.schema, status="stalled", limit=limit)
    emit(as_json, rows, lambda: _workflow_table(rows))


@workflows_group.command("show")
@click.argument("workflow_id")
@json_option
@with_target
def workflows_show(target: Target, workflow_id: str, as_json: bool) -> None:
    """One workflow with its steps and checkpoints."""
    _require_schema(target)
    found = _call("get_workflow", target.url(), target.schema, workflow_id)
    if not found:
        raise CommandError(f"no workflow {workflow_id!r} in schema {target.schema!r} of {target.describe()}")
    emit(as_json, found, lambda: _describe_workflow(found))


def _describe_workflow(found: dict[str, Any]) -> str:
    lines = []
    nested = {k: v for k, v in found.items() if isinstance(v, list) and v and all(isinstance(i, dict) for i in v)}
    width = max([len(k) for k in found if k not in nested] + [1])
    for key, value in found.items():
        if key not in nested:
            lines.append(f"{key.ljust(width)}  {_cell(value)}")
    for key, items in nested.items():
        columns = list(dict.fromkeys(c for item in items for c in item))
        lines += ["", f"{key}:", table(columns, [[item.get(c) for c in columns] for item in items])]
    return "\n".join(lines)


@workflows_group.command("cancel")
@click.argument("workflow_id")
@json_option
@with_target
def workflows_cancel(target: Target, workflow_id: str, as_json: bool) -> None:
    """Stop a workflow: no further step is sent."""
    _require_schema(target)
    if target.app is not None:
        result = _call("cancel_workflow", target.app, workflow_id)
    else:
        result = _call("cancel_workflow", target.url(), workflow_id, schema=target.schema)
    if result is False:
        emit(as_json, {"workflow_id": workflow_id, "action": "none", "result": False},
             lambda: f"workflow {workflow_id} had already ended; nothing to cancel")
        return
    _done(as_json, "cancelled", workflow_id, result)


@workflows_group.command("resume")
@click.argument("workflow_id")
@json_option
@with_target
def workflows_resume(target: Target, workflow_id: str, as_json: bool) -> None:
    """Send the first unfinished step of a stalled, failed or cancelled workflow again."""
    _require_schema(target)
    result = _call("resume_workflow", target.celery_app(), workflow_id)
    _done(as_json, "resumed", workflow_id, result)


@workflows_group.command("restart")
@click.argument("workflow_id")
@click.option("--from-step", "from_step", type=int, required=True, help="Index of the first step to run again (0-based).")
@click.option("--args", "args_json", metavar="JSON", help="New positional arguments for that step, as a JSON list.")
@json_option
@with_target
def workflows_restart(target: Target, workflow_id: str, from_step: int, args_json: str | None, as_json: bool) -> None:
    """Run a workflow again from step N (its earlier checkpoints are kept)."""
    args = None
    if args_json is not None:
        try:
            args = json.loads(args_json)
        except ValueError as exc:
            raise CommandError(f"--args is not valid JSON: {exc}") from None
        if not isinstance(args, list):
            args = [args]
    _require_schema(target)
    result = _call("restart_workflow", target.celery_app(), workflow_id, from_step, args=args)
    _done(as_json, f"restarted from step {from_step}", workflow_id, result)


def _done(as_json: bool, verb: str, workflow_id: str, result: Any) -> None:
    data = {"workflow_id": workflow_id, "action": verb}
    if result is not None:
        data["result"] = result
    extra = f": {_cell(result)}" if result not in (None, True) else ""
    emit(as_json, data, lambda: f"workflow {workflow_id} {verb}{extra}")


def main(argv: Sequence[str] | None = None) -> None:
    """Console script ``celery-durable``."""
    durable.main(args=list(argv) if argv is not None else None, prog_name="celery-durable")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
