"""MkDocs hook: the reference pages the code defines, generated at every build so they cannot drift.

- ``<!-- generated: settings -->`` becomes the settings tables: every field of
  ``celery_durable.config.Settings`` (name, type, default, which options dict
  reads it, and the ``#:`` comment above the field), the other keys of ours
  (``config.OTHER_KEYS``) and the Django integration's settings
  (``contrib.django.conf.DJANGO_SETTINGS``).
- ``<!-- generated: errors -->`` becomes the tree of ``celery_durable.exceptions``.
- ``<!-- generated: embedded-help -->`` becomes the help of ``python -m celery_durable.testing.embedded``
  and of each of its commands (argparse's own text).
- ``<!-- generated: schema -->`` becomes the list of tables, views and functions of
  ``celery_durable/db/sql/schema.sql`` with the comment above each.
- After the build, every setting, other key, Django setting and ``CELERY_DURABLE_*`` name in the
  package's code must have an ``id`` on the built settings page.
- ``benchmarks/scaling.png`` is published as ``assets/scaling.png`` (the
  benchmark writes it beside itself; the performance page shows it).

The build fails (PluginError) when a setting has no ``#:`` comment, when the
where-mapping names a setting that does not exist, or when a built settings
page lacks any setting's name: CI builds with ``mkdocs build --strict``.
"""

from __future__ import annotations

import argparse
import inspect
import re
from dataclasses import MISSING, fields
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

SETTINGS_MARK = "<!-- generated: settings -->"
ERRORS_MARK = "<!-- generated: errors -->"
SCHEMA_MARK = "<!-- generated: schema -->"
EMBEDDED_MARK = "<!-- generated: embedded-help -->"
SETTINGS_PAGE = "reference/settings.md"
ROOT = Path(__file__).resolve().parents[2]
_FIELD = re.compile(r"^\s{4}(\w+)\s*:")
_CREATE = re.compile(r"^CREATE (?:OR REPLACE )?(TABLE|VIEW|FUNCTION) \{schema\}\.(\w+)")


def field_docs(cls: type) -> dict[str, str]:
    """The ``#:`` comment lines right above each field of a dataclass, joined."""
    docs: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = _FIELD.match(line)
        if match and pending:
            docs[match.group(1)] = " ".join(pending)
        pending = []
    return docs


def _default(name: str, value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"`{value}`"
    if isinstance(value, (int, float)):
        number = int(value) if float(value).is_integer() else value
        text = f"{number:,}"
        if name.endswith("_bytes") and number >= 1024 * 1024 and number % (1024 * 1024) == 0:
            return f"{text} ({number // (1024 * 1024)} MiB)"
        if name.endswith(("_retention", "_age", "_after")) and number >= 86400 and number % 86400 == 0:
            return f"{text} ({number // 86400} days)"
        return text
    return f"`{value!r}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def settings_tables() -> str:
    from celery_durable import config
    from celery_durable.contrib.django import conf as django_conf

    docs = field_docs(config.Settings)
    names = [f.name for f in fields(config.Settings)]
    undocumented = [name for name in names if not docs.get(name)]
    if undocumented:
        raise PluginError(f"celery_durable.config.Settings: give each of these a '#:' comment: {undocumented}")
    stale = sorted(set(config._ONLY_IN) - set(names))
    if stale:
        raise PluginError(f"celery_durable.config._ONLY_IN names no setting: {stale}")
    where = {config.BROKER_OPTIONS: "broker", config.BACKEND_OPTIONS: "backend"}

    lines = ["| setting | meaning |", "|---|---|"]
    for f in fields(config.Settings):
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        dicts = where[config._ONLY_IN[f.name]] if f.name in config._ONLY_IN else "both"
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        facts = f"{_cell(kind)}, default {_default(f.name, default)}, {dicts}"
        lines.append(f'| <span id="{f.name}">`{f.name}`</span><br><small>{facts}</small> | {_cell(docs[f.name])} |')
    lines += ["", "### Other keys of the options dicts", "",
              "| key | meaning |", "|---|---|"]
    for key, (component, meaning) in sorted(config.OTHER_KEYS.items()):
        lines.append(f'| <span id="{key}">`{key}`</span><br><small>{where[component]}</small> | {_cell(meaning)} |')
    kombu = sorted(config._OTHER_READERS[config.BROKER_OPTIONS] - set(config.OTHER_KEYS))
    lines += ["", "Kombu's own keys pass through unchanged (no warning): "
              + ", ".join(f"`{key}`" for key in kombu) + ".", ""]

    lines += ["### Django settings", "",
              "Read from Django's settings by `celery_durable.contrib.django`:", "",
              "| setting | meaning |", "|---|---|"]
    for name, default, meaning in django_conf.DJANGO_SETTINGS:
        lines.append(f'| <span id="{name}">`{name}`</span><br><small>default {_default(name, default)}</small> '
                     f"| {_cell(meaning)} |")

    lines += ["", "### Names of other brokers' options", "",
              "A key another broker or backend knows is named in the WARNING with what does its job here:", "",
              "| their key | here |", "|---|---|"]
    for key, instead in config.EQUIVALENTS.items():
        lines.append(f"| `{key}` | {_cell(instead)} |")
    return "\n".join(lines) + "\n"


def errors_tree() -> str:
    from celery_durable import exceptions

    ours = {obj for obj in vars(exceptions).values()
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == exceptions.__name__}

    def summary(cls: type) -> str:
        doc = inspect.getdoc(cls) or ""
        return doc.split("\n\n", 1)[0].replace("\n", " ")

    def branch(cls: type, depth: int) -> list[str]:
        others = [base for base in cls.__bases__ if base not in ours and base is not Exception]
        also = f" (also {', '.join(f'`{b.__module__}.{b.__qualname__}`' for b in others)})" if others else ""
        out = [f"{'    ' * depth}- `{cls.__name__}`{also}: {summary(cls)}"]
        children = sorted((c for c in ours if cls in c.__bases__), key=lambda c: c.__name__)
        for child in children:
            out += branch(child, depth + 1)
        return out

    roots = sorted((c for c in ours if not any(base in ours for base in c.__bases__)), key=lambda c: c.__name__)
    lines: list[str] = []
    for root in roots:
        lines += branch(root, 0)
    return "\n".join(lines) + "\n"


def schema_objects() -> str:
    """Tables, views and functions of schema.sql, each with the ``--`` comment right above it."""
    sql = (ROOT / "celery_durable" / "db" / "sql" / "schema.sql").read_text(encoding="utf-8")
    rows = ["| object | kind | what it is |", "|---|---|---|"]
    comment: list[str] = []
    for line in sql.splitlines():
        if line.startswith("-- "):
            comment.append(line[3:].strip())
            continue
        match = _CREATE.match(line)
        if match:
            kind, name = match.groups()
            rows.append(f"| `{name}` | {kind.lower()} | {_cell(' '.join(comment))} |")
        comment = []
    return "\n".join(rows) + "\n"


def embedded_help() -> str:
    from celery_durable.testing import embedded

    parser = embedded.command_line()
    parsers = [parser] + [sub for action in parser._actions if isinstance(action, argparse._SubParsersAction)
                          for sub in action.choices.values()]
    blocks = []
    for each in parsers:
        each.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=100)
        blocks.append("```text\n" + each.format_help().rstrip() + "\n```")
    return "\n\n".join(blocks) + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if SETTINGS_MARK in markdown:
        markdown = markdown.replace(SETTINGS_MARK, settings_tables())
    if ERRORS_MARK in markdown:
        markdown = markdown.replace(ERRORS_MARK, errors_tree())
    if EMBEDDED_MARK in markdown:
        markdown = markdown.replace(EMBEDDED_MARK, embedded_help())
    if SCHEMA_MARK in markdown:
        markdown = markdown.replace(SCHEMA_MARK, schema_objects())
    return markdown


def on_files(files, config):
    files.append(File.generated(config, "assets/scaling.png", abs_src_path=str(ROOT / "benchmarks" / "scaling.png")))
    return files


def environment_variables() -> set[str]:
    """Every ``"CELERY_DURABLE_..."`` string the package's code holds: environment variables and Django settings."""
    names: set[str] = set()
    for path in (ROOT / "celery_durable").rglob("*.py"):
        names.update(re.findall(r"[\"'](CELERY_DURABLE_[A-Z0-9_]+)[\"']", path.read_text(encoding="utf-8")))
    return names


def on_post_build(config) -> None:
    """Every setting the code defines is on the built settings page (guards against a lost marker, and
    against an environment variable the page does not name)."""
    from celery_durable import config as settings_config
    from celery_durable.contrib.django import conf as django_conf

    built = Path(config["site_dir"]) / SETTINGS_PAGE.replace(".md", "") / "index.html"
    text = built.read_text(encoding="utf-8") if built.exists() else ""
    expected = [f.name for f in fields(settings_config.Settings)] + list(settings_config.OTHER_KEYS)
    expected += [name for name, _, _ in django_conf.DJANGO_SETTINGS]
    expected += sorted(environment_variables())
    missing = [name for name in expected if f'id="{name}"' not in text]
    if missing:
        raise PluginError(f"{built} does not list these settings: {missing}")
