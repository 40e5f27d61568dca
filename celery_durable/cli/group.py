"""The ``durable`` command group every command registers with."""

from __future__ import annotations

import click

from ..db import appname
from .target import _db_options, _given


@click.group(name="durable", context_settings={"help_option_names": ["-h", "--help"]})
@_db_options
@click.pass_context
def durable(ctx: click.Context, url: str | None, schema: str | None) -> None:
    """PostgreSQL broker, result backend and durable workflows: schema, queues, dead letters, workflows.

    --url and --schema go before or after the command name.
    """
    previous = appname.set_role("cli")  # its connections show as <name>:cli in pg_stat_activity
    ctx.call_on_close(lambda: appname.set_role(previous))  # (the CLI may run inside another process)
    celery_ctx = ctx.find_root().obj if ctx.parent is not None else None
    given = _given(ctx, url, schema, None)
    given.app = getattr(celery_ctx, "app", None)
    ctx.obj = given
