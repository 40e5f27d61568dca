"""The doctor's checks: each reads PostgreSQL's own view of one threat and says what to do about it.

A check that the role may not run (a catalog it cannot read) becomes a finding
that says so; the others still run. ``diagnose`` returns the findings, worst
first; the CLI (``celery durable doctor``) prints them and exits with status 2
when one is critical.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ..db import appname, fetch, migrate
from . import grants, horizon
from .findings import Finding, human_age
from .queries import sql

#: Dead rows in ``message`` worth a warning when they also outnumber the live ones.
DEAD_ROWS_WARNING = 10_000
#: Share of the server's connections in use that makes a warning, then a critical finding.
CONNECTIONS_WARNING = 0.75
CONNECTIONS_CRITICAL = 0.9
#: Holders listed in the text of the horizon's info finding (the JSON has them all).
HOLDERS_SHOWN = 5
#: Longest query text shown in a finding.
QUERY_CHARS = 200
#: What the horizon findings advise, by kind of holder.
ADVICE = {
    "backend": ("end it: SELECT pg_terminate_backend({pid}) (pg_cancel_backend for a running query), then "
                "fix the client so it commits or rolls back promptly, and bound it: ALTER ROLE {user} SET "
                "idle_in_transaction_session_timeout = '5min' (and statement_timeout)"),
    "prepared": ("find the transaction manager that prepared it; if it is gone for good, ROLLBACK PREPARED "
                 "'{name}' (or COMMIT PREPARED) as its owner or a superuser. A prepared transaction survives "
                 "restarts: it holds the horizon until someone ends it"),
    "slot": ("if its standby or consumer is gone for good: SELECT pg_drop_replication_slot('{name}'); else "
             "bring it back. An inactive slot's xmin never advances by itself"),
    "standby": ("a query on standby {name} keeps rows alive here (hot_standby_feedback = on there): find it in "
                "that standby's pg_stat_activity and end it, or bound queries there (statement_timeout), or "
                "turn hot_standby_feedback off for it (its queries may then be cancelled by replay)"),
    "hidden": ("this role may not see since when, nor its query: run the doctor as a role with pg_monitor "
               "(GRANT pg_monitor TO {role}) to see them"),
}


@dataclass(frozen=True)
class Limits:
    """Ages (seconds) past which holding the horizon is a warning, then critical."""

    warning_age: float
    critical_age: float


@dataclass
class Context:
    conn: psycopg.Connection
    schema: str
    role: str
    limits: Limits
    facts: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def holders(self) -> list[horizon.Holder]:
        return horizon.holders(self.conn)

    @cached_property
    def exists(self) -> bool:
        """Whether the schema exists (any role may ask: a catalog read)."""
        return fetch.value(self.conn.execute(sql("schema_exists"), {"schema": self.schema}))

    @cached_property
    def message_dead_rows(self) -> int:
        return horizon.message_dead_rows(self.conn, self.schema)


def diagnose(conn: psycopg.Connection, schema: str, limits: Limits, role: str | None = None) -> list[Finding]:
    """Every check's findings, worst first (``conn``: autocommit, so one failed check spoils no other)."""
    ctx = Context(conn, schema, role or fetch.value(conn.execute("SELECT current_user")), limits)
    found: list[Finding] = []
    for name, check in CHECKS.items():
        try:
            found += check(ctx)
        except psycopg.errors.InsufficientPrivilege as exc:
            ours = f"schema {schema}" in str(exc)  # (a privilege grants.sql gives: the grants finding says which)
            found.append(Finding(name, "warning", f"role {ctx.role} may not read what this check needs: {_line(exc)}",
                                 "see the grants finding" if ours else
                                 f"run the doctor as a role with pg_monitor (GRANT pg_monitor TO {ctx.role})"))
        except psycopg.Error as exc:
            found.append(Finding(name, "warning", f"this check failed: {_line(exc)}"))
    order = list(CHECKS)
    return sorted(found, key=lambda f: (-f.rank, order.index(f.check) if f.check in order else len(order)))


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- the checks --------------------------------------------------------------------------------------


def check_schema(ctx: Context) -> list[Finding]:
    latest = migrate.latest_version()
    version = migrate.current_version(ctx.conn, ctx.schema)
    facts = {"schema": ctx.schema, "version": version, "code_version": latest}
    if version is None:
        return [Finding("schema", "critical", f"schema {ctx.schema!r} does not exist",
                        "create it as the schema's owner: celery-durable migrate (or let a worker with "
                        "auto_migrate do it)", facts)]
    if version > latest:
        return [Finding("schema", "critical", f"schema {ctx.schema!r} is at version {version}, newer than this "
                        f"code ({latest})", "upgrade celery-durable here: this code refuses the schema", facts)]
    if version < latest:
        return [Finding("schema", "warning", f"schema {ctx.schema!r} is at version {version}; this code needs "
                        f"{latest}", "run celery-durable migrate as the schema's owner (workers with auto_migrate "
                        "do it when they start; with auto_migrate: false they refuse to start)", facts)]
    return [Finding("schema", "ok", f"schema {ctx.schema!r} at version {version}, this code's", facts=facts)]


def check_grants(ctx: Context) -> list[Finding]:
    if not ctx.exists:
        return []  # (the schema check says so)
    lacking = grants.missing(ctx.conn, ctx.schema, ctx.role)
    if not lacking:
        return [Finding("grants", "ok", f"role {ctx.role} has every privilege grants.sql gives")]
    by_privilege: dict[tuple[str, str], list[str]] = {}
    for kind, name, privilege in lacking:
        by_privilege.setdefault((privilege, kind), []).append(name)
    parts = [f"{privilege} on {len(names)} {kind}{'s' if len(names) > 1 else ''} ({_some(names)})"
             for (privilege, kind), names in sorted(by_privilege.items())]
    return [Finding("grants", "critical", f"role {ctx.role} lacks " + "; ".join(parts),
                    f"as the schema's owner: celery-durable sql --grants {ctx.role} | psql <the owner's URL>",
                    {"missing": [{"kind": k, "object": n, "privilege": p} for k, n, p in lacking]})]


def _some(names: list[str], shown: int = 4) -> str:
    return ", ".join(names[:shown]) + (f", … ({len(names) - shown} more)" if len(names) > shown else "")


def check_horizon(ctx: Context) -> list[Finding]:
    holders = ctx.holders
    limits = ctx.limits
    oldest = horizon.oldest(holders)
    dead = ctx.message_dead_rows
    found = []
    for h in holders:
        severity = _severity(h, limits, h is oldest and dead >= DEAD_ROWS_WARNING)
        if severity in ("ok", "info"):
            continue
        found.append(Finding("horizon", severity, _holder_title(h), _holder_advice(h, ctx.role),
                             {"holder": h.as_dict(), "message_dead_rows": dead}))
    if not found:
        title = ("nothing holds the xmin horizon" if oldest is None else
                 f"the xmin horizon: {_holder_title(oldest)}")
        found.append(Finding("horizon", "ok", title, facts={"holder": oldest.as_dict() if oldest else None}))
    if holders:
        found.append(Finding("horizon", "info", "holders of the xmin horizon, oldest first: " + "; ".join(
            f"{h.describe()}, {f'{h.age_seconds:.0f} s, ' if h.age_seconds is not None else ''}{h.age_xids:,} "
            "transactions" for h in holders[:HOLDERS_SHOWN]) + (f"; … ({len(holders) - HOLDERS_SHOWN} more)"
                                                              if len(holders) > HOLDERS_SHOWN else ""),
                             facts={"holders": [h.as_dict() for h in holders]}))
    return found


def _severity(h: horizon.Holder, limits: Limits, holds_dead_rows: bool) -> str:
    """Inactive slots never let go; others by how long they have held it (where PostgreSQL says), and the
    horizon's holder whenever the message table holds many dead rows behind it."""
    if h.kind in ("slot", "slot_catalog") and h.state == "inactive":
        return "critical" if h.kind == "slot" else "warning"
    if h.age_seconds is not None and h.kind in ("backend", "prepared"):
        if h.age_seconds >= limits.critical_age:
            return "critical"
        if h.age_seconds >= limits.warning_age:
            return "warning"
    return "warning" if holds_dead_rows else "info"


def _holder_title(h: horizon.Holder) -> str:
    held = f"{h.age_xids:,} transactions"
    if h.age_seconds is not None:
        held = f"{human_age(h.age_seconds)} ({held})"
    what = {"slot_catalog": "the system catalogs' xmin horizon"}.get(h.kind, "the xmin horizon")
    text = f"{h.describe()} has held {what} for {held}"
    if h.kind == "backend" and not h.hidden:
        text += f", {h.state}: {(h.query or '').strip()[:QUERY_CHARS]}"
    return text


def _holder_advice(h: horizon.Holder, role: str) -> str:
    key = "slot" if h.kind == "slot_catalog" else h.kind
    text = ADVICE[key].format(pid=h.pid, user=h.username, name=h.name, role=role)
    if h.kind == "slot_catalog":
        text = "it holds back VACUUM of the system catalogs, not of the queue's tables; " + text
    if h.hidden:
        text += "; " + ADVICE["hidden"].format(role=role)
    return text


def check_standbys(ctx: Context) -> list[Finding]:
    rows = _dicts(ctx.conn, "standbys")
    if not rows:
        return []
    names = [f"{r['application_name'] or r['pid']} ({r['client'] or 'local'}, {r['state']}, {r['sync_state']}"
             + (f", hot_standby_feedback holds {r['age_xids']:,} transactions" if r["xmin"] else "") + ")"
             for r in rows]
    return [Finding("standbys", "info", f"{len(rows)} standby(s): " + "; ".join(names), facts={"standbys": rows})]


def _dicts(conn: psycopg.Connection, query: str, **params: Any) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql(query), params).fetchall()


def check_tables(ctx: Context) -> list[Finding]:
    if not ctx.exists:
        return []
    tables = _dicts(ctx.conn, "table_stats", schema=ctx.schema)
    found = []
    for t in tables:
        live, dead = t["live_rows"] or 0, t["dead_rows"] or 0
        if dead >= DEAD_ROWS_WARNING and dead >= live:
            found.append(Finding(
                "tables", "warning", f"{t['table']} holds {dead:,} dead rows ({live:,} live, "
                f"{t['size']}); last vacuum {_when(t)}",
                "VACUUM cannot remove rows an older snapshot may still see: end what holds the xmin horizon "
                "(see horizon); if nothing does, autovacuum is behind (see autovacuum). "
                + ("Claims after a wake-up start past them, but each worker's safety poll (polling_interval) "
                   "and first claim still walk every dead row at the head of message_claim_idx."
                   if t["table"] == "message" else ""), {"table": t}))
    message = next((t for t in tables if t["table"] == "message"), None)
    if message is not None:
        found.append(Finding("tables", "ok" if not found else "info",
                             f"message: {message['live_rows'] or 0:,} live rows, {message['dead_rows'] or 0:,} dead, "
                             f"{message['size']}; last vacuum {_when(message)}",
                             facts={"tables": tables}))
    return found


def _when(t: dict[str, Any]) -> str:
    times = [v for v in (t["last_vacuum"], t["last_autovacuum"]) if v is not None]
    return max(times).isoformat(sep=" ", timespec="seconds") if times else "never"


def check_autovacuum(ctx: Context) -> list[Finding]:
    settings = {name: (value, unit) for name, value, unit in ctx.conn.execute(sql("autovacuum_settings"))}
    shown = {name: value + (unit or "") for name, (value, unit) in settings.items()}
    found = []
    if settings.get("track_counts", ("on",))[0] != "on":
        found.append(Finding("autovacuum", "critical", "track_counts is off: autovacuum cannot tell which tables "
                             "need it, and dead rows go uncounted", "ALTER SYSTEM SET track_counts = on", shown))
    if settings.get("autovacuum", ("on",))[0] != "on":
        found.append(Finding("autovacuum", "warning", "autovacuum is off on this server",
                             "workers VACUUM the message table themselves when their role owns it (docs: "
                             "Roles and the schema); every other table (results, workflows, dead letters) grows until "
                             "someone vacuums it: turn autovacuum on", shown))
    if ctx.exists:
        options = ctx.conn.execute(sql("table_options"), {"schema": ctx.schema}).fetchone()
        message_options = list(options[0]) if options else []
        shown["message"] = message_options
        if "autovacuum_enabled=false" in message_options:
            found.append(Finding("autovacuum", "critical", "autovacuum is disabled on the message table",
                                 f'ALTER TABLE "{ctx.schema}".message RESET (autovacuum_enabled)', shown))
    if not found:
        found.append(Finding("autovacuum", "ok", "autovacuum on (naptime {}, {} workers, cost limit {})".format(
            shown.get("autovacuum_naptime"), shown.get("autovacuum_max_workers"),
            shown.get("autovacuum_vacuum_cost_limit")), facts=shown))
    return found


def check_connections(ctx: Context) -> list[Finding]:
    ours = "^.*:(" + "|".join(re.escape(c) for c in appname.COMPONENTS) + ")$"
    rows = ctx.conn.execute(sql("connections"), {"ours": ours}).fetchall()
    limits = _dicts(ctx.conn, "connection_limits")[0]
    available = limits["max_connections"] - limits["superuser_reserved"] - limits["reserved"]
    used = sum(n for _, _, n, _ in rows)
    mine = {f"{name} ({db})": n for name, db, n, is_ours in rows if is_ours}
    facts = {**limits, "available": available, "used": used, "ours": mine}
    share = used / available if available > 0 else 1.0
    severity = "critical" if share >= CONNECTIONS_CRITICAL else "warning" if share >= CONNECTIONS_WARNING else "ok"
    title = (f"{used} of {available} connections in use ({share:.0%}); ours: {sum(mine.values())}"
             + (f" ({', '.join(f'{k} {v}' for k, v in sorted(mine.items()))})" if mine else ""))
    found = [Finding("connections", severity, title,
                     "" if severity == "ok" else "a worker -c N holds up to (N + 1) x pool_max_size + 3 (docs: "
                     "Connections): lower pool_max_size, put PgBouncer in front, or raise max_connections", facts)]
    if limits["role_limit"] is not None and limits["role_limit"] >= 0 \
            and limits["role_sessions"] >= CONNECTIONS_WARNING * limits["role_limit"]:
        found.append(Finding("connections", "warning", f"role {limits['role']} uses {limits['role_sessions']} of its "
                             f"{limits['role_limit']} connections (CONNECTION LIMIT)",
                             f"ALTER ROLE {limits['role']} CONNECTION LIMIT …, or lower pool_max_size", facts))
    return found


def check_access(ctx: Context) -> list[Finding]:
    hidden = [h for h in ctx.holders if h.hidden]
    if not hidden:
        return []
    return [Finding("access", "info", f"role {ctx.role} cannot see since when, nor the query of, {len(hidden)} "
                    "session(s) of other roles that hold the horizon", ADVICE["hidden"].format(role=ctx.role))]


CHECKS: dict[str, Callable[[Context], list[Finding]]] = {
    "horizon": check_horizon,
    "tables": check_tables,
    "autovacuum": check_autovacuum,
    "connections": check_connections,
    "schema": check_schema,
    "grants": check_grants,
    "standbys": check_standbys,
    "access": check_access,
}
