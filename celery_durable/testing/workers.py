"""Run real ``celery worker`` processes for tests and examples, and kill them the hard way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class WorkerProcess:
    """A ``celery worker`` subprocess whose output goes to a log file."""

    proc: subprocess.Popen
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> WorkerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.log()[-4000:]}")

    def kill(self) -> None:
        """SIGKILL the worker and its pool children (a crash, not a shutdown)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 30.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it does not exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()


def start_worker(
    app: str,
    *args: str,
    env: dict[str, str] | None = None,
    concurrency: int = 2,
    pool: str = "prefork",
    loglevel: str = "INFO",
    wait: bool = True,
    cwd: str | None = None,
    ready_timeout: float = 60.0,
) -> WorkerProcess:
    """Start ``celery -A app worker`` in its own process group; wait for "ready" unless told not to.

    A worker not ready within ``ready_timeout`` seconds is killed, and TimeoutError raised.
    """
    env = dict(os.environ if env is None else env)
    # Tests run as root in CI; Celery refuses root with pickle accepted unless told.
    env.setdefault("C_FORCE_ROOT", "1")
    fd, name = tempfile.mkstemp(prefix="celery-worker-", suffix=".log")
    log = os.fdopen(fd, "w")
    argv = [
        sys.executable, "-m", "celery", "-A", app, "worker",
        "-l", loglevel, "-c", str(concurrency), "-P", pool,
        "--without-mingle", *args,
    ]
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd or os.getcwd(),
        start_new_session=True,
    )
    log.close()
    worker = WorkerProcess(proc, Path(name), argv)
    if wait:
        try:
            worker.wait_ready(ready_timeout)
        except BaseException:
            worker.kill()  # a worker that never got ready must not outlive the test, holding connections
            raise
    return worker
