"""``python -m celery_durable.testing.embedded``: the quick start's server can be seen, stopped and removed.

The demo leaves the embedded server running on purpose (later runs reuse it);
the user needs a way to stop it. Each test runs its own server in a private
data directory (never the shared default one other test runs use).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from celery_durable.testing import embedded

pytestmark = pytest.mark.own_servers


def command(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "celery_durable.testing.embedded", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def data_dir():
    parent = Path(tempfile.mkdtemp(prefix="cd-embedded-", dir="/tmp"))
    path = parent / "pg"
    yield path
    try:
        embedded.stop(path)  # the test failed before stopping it
    except Exception:
        pass
    shutil.rmtree(parent, ignore_errors=True)


def test_stop_ends_the_server_the_demo_left_running_and_remove_deletes_its_data(data_dir):
    started = command("start", "--dir", str(data_dir))
    assert started.returncode == 0, started.stderr
    url = started.stdout.strip().splitlines()[-1]
    with psycopg.connect(url, connect_timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)

    status = command("status", "--dir", str(data_dir))
    assert status.returncode == 0 and url in status.stdout, status.stdout + status.stderr

    stopped = command("stop", "--dir", str(data_dir))
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped the server" in stopped.stdout
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=5).close()
    assert command("status", "--dir", str(data_dir)).returncode == 3
    assert (data_dir / "PG_VERSION").exists(), "stop without --remove keeps the data for the next start"
    again = command("stop", "--dir", str(data_dir))
    assert again.returncode == 0 and "no server running" in again.stdout

    # The next start reuses the data; stop --remove stops the running server and deletes it.
    assert command("start", "--dir", str(data_dir)).returncode == 0
    removed = command("stop", "--remove", "--dir", str(data_dir))
    assert removed.returncode == 0, removed.stderr
    assert "stopped the server" in removed.stdout and "removed" in removed.stdout
    assert not data_dir.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=5).close()


def test_remove_refuses_a_directory_that_is_no_database(data_dir):
    other = data_dir.parent / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    refused = command("stop", "--remove", "--dir", str(other))
    assert refused.returncode == 1
    assert "not a PostgreSQL data directory" in refused.stderr
    assert (other / "keep.txt").read_text() == "mine"
