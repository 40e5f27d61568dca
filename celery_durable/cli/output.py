"""How commands print: aligned tables, or JSON with ``--json``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import click

from ..health.findings import human_age


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
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=False)]
        return "  ".join(parts).rstrip()

    return "\n".join([line([h.upper() for h in headers])] + [line(r) for r in cells])


def emit(as_json: bool, data: Any, text: Callable[[], str]) -> None:
    if as_json:
        click.echo(json.dumps(_plain(data), indent=2, default=str))
    else:
        click.echo(text())


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
