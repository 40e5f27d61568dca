"""``doctor``: what threatens the queue, and who, with what to do about each; exit status 2 when critical."""

from __future__ import annotations

import click

from ..health.doctor import Limits, diagnose
from ..health.findings import Finding
from .group import durable
from .output import emit, json_option
from .target import Target, with_target

#: Holding the horizon this long is critical (the warning age is the horizon_warning_age setting).
CRITICAL_AGE_DEFAULT = 1800.0
#: Exit status when a finding is critical (not the status of a CLI error: no database, a bad option).
EXIT_CRITICAL = 2


@durable.command("doctor")
@click.option("--role", metavar="NAME", help="Check this role's grants (default: the role the URL connects as).")
@click.option("--warning-age", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Holding the xmin horizon this long is a warning (default: the horizon_warning_age setting).")
@click.option("--critical-age", type=click.FloatRange(min=0), default=CRITICAL_AGE_DEFAULT, show_default=True,
              metavar="SECONDS", help="Holding the xmin horizon this long is critical.")
@json_option
@with_target
def doctor_cmd(target: Target, role: str | None, warning_age: float | None, critical_age: float,
               as_json: bool) -> None:
    """What holds VACUUM back (sessions, prepared transactions, slots, standbys), dead rows, autovacuum,
    connections, the schema's version and the role's grants; exit status 2 when something is critical."""
    limits = Limits(warning_age=target.settings.horizon_warning_age if warning_age is None else warning_age,
                    critical_age=critical_age)
    with target.connect() as conn:
        findings = diagnose(conn, target.schema, limits, role)
    critical = [f for f in findings if f.severity == "critical"]
    data = {"database": target.describe(), "schema": target.schema, "critical": len(critical),
            "findings": [f.as_dict() for f in findings]}
    emit(as_json, data, lambda: _text(target, findings))
    if critical:
        raise SystemExit(EXIT_CRITICAL)


def _text(target: Target, findings: list[Finding]) -> str:
    width = max((len(f.check) for f in findings), default=0)
    lines = [f"{target.describe()}, schema {target.schema!r}"]
    for f in findings:
        lines.append(f"{f.severity.upper():<8}  {f.check:<{width}}  {f.title}")
        if f.advice:
            lines.append(f"{'':<8}  {'':<{width}}  -> {f.advice}")
    counts = {s: sum(f.severity == s for f in findings) for s in ("critical", "warning")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "nothing to fix"
    lines.append(summary + (f" (exit status {EXIT_CRITICAL})" if counts["critical"] else ""))
    return "\n".join(lines)
