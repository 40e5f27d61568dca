"""A private PgBouncer (Debian's ``/usr/sbin/pgbouncer``) in front of a private cluster, on a free port.

Its settings are PgBouncer's defaults except what a test must choose: the
pool mode (``transaction`` unless told), trust authentication for the users
listed (PgBouncer still wants them in its ``auth_file``), and the listen
address, port and socket directory. ``extra`` adds ``[pgbouncer]`` lines.
Like the server, it refuses to run as root: it runs as the cluster's OS user.

    def test_x(pg_cluster, pgbouncer):
        bouncer = pgbouncer(pg_cluster())
        url = bouncer.url("postgres")
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import quote

import psycopg
import pytest

from .pgcluster import SUPERUSER, PgCluster, free_port

PGBOUNCER = Path(os.environ.get("CELERY_DURABLE_PGBOUNCER", "/usr/sbin/pgbouncer"))
START_TIMEOUT = 30


class PgBouncer:
    def __init__(self, cluster: PgCluster, *, pool_mode: str = "transaction", users: Iterable[str] = (SUPERUSER,),
                 extra: Iterable[str] = ()) -> None:
        if not PGBOUNCER.exists():
            pytest.skip(f"pgbouncer not installed ({PGBOUNCER}); .ci/run installs the Debian package")
        self.cluster = cluster
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="cd_bouncer_")).resolve()
        self.logfile = self.root / "pgbouncer.log"
        (self.root / "userlist.txt").write_text("".join(f'"{user}" ""\n' for user in users))
        lines = [
            "[databases]",
            f"* = host=127.0.0.1 port={cluster.port}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            f"unix_socket_dir = {self.root}",
            f"logfile = {self.logfile}",
            "auth_type = trust",
            f"auth_file = {self.root / 'userlist.txt'}",
            f"pool_mode = {pool_mode}",
            *extra,
        ]
        (self.root / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
        for path in (self.root, *self.root.iterdir()):
            cluster._own(path)
        self.proc = subprocess.Popen([str(PGBOUNCER), str(self.root / "pgbouncer.ini")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, **cluster._as_user())
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"pgbouncer not listening after {START_TIMEOUT}s:\n{self.log()[-3000:]}")

    def url(self, dbname: str = "postgres", user: str = SUPERUSER, **params: str) -> str:
        query = "&".join(f"{quote(k)}={quote(str(v))}" for k, v in params.items())
        return f"postgresql://{quote(user, safe='')}@127.0.0.1:{self.port}/{quote(dbname, safe='')}" + (
            f"?{query}" if query else "")

    def connect(self, dbname: str = "postgres", user: str = SUPERUSER) -> psycopg.Connection:
        """A client connection through PgBouncer (autocommit, psycopg's own defaults otherwise)."""
        return psycopg.connect(self.url(dbname, user), autocommit=True)

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def pgbouncer() -> Iterator:
    """Factory: ``pgbouncer(cluster, pool_mode=…, users=[…], extra=[…])``; every one is stopped after the test."""
    started: list[PgBouncer] = []

    def start(cluster: PgCluster, **options) -> PgBouncer:
        bouncer = PgBouncer(cluster, **options)
        started.append(bouncer)
        return bouncer

    yield start
    for bouncer in started:
        bouncer.stop()
