"""Celery's own integration suite (``t/integration`` of its sdist) on our broker and backend, beside Redis.

``python -m tests.support.celery_suite --line 5.7`` runs the suite of that Celery line twice at
once: with ``TEST_BROKER``/``TEST_BACKEND`` on a private PostgreSQL cluster (the embedded wheel's
server, ``tests/support/pgcluster.py``), and on the machine's Redis (database 15), in a venv
of that line (:mod:`tests.support.matrix`'s, plus the suite's pytest plugins). It prints each
run's counts and every test that passed on Redis but not here; the "Coming from Redis or RabbitMQ" page's
table says why for each that is expected. Long (minutes per line): a documented command, not
part of ``.ci/run``. ``--files test_canvas.py,test_tasks.py`` picks modules; pytest options
go after ``--``. About 60 tests skip unless the result backend's URL starts with ``redis``: most
only use Redis as a side channel, and ``--side-channel`` runs them here too, with a private Redis for it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import os
import socket
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from tests.support import matrix

CACHE = matrix.REPO / ".cache" / "celery-sdist"
REDIS_URL = "redis://127.0.0.1:6379/15"
#: What the suite imports besides ours (its requirements/test.txt and test-integration.txt): pytest plugins,
#: test_security's cryptography, pydantic (t/integration/tasks.py from Celery 5.5 on) and azure-storage-blob
#: (test_backend.py imports Celery's Azure backend from 5.5 on, then skips without ``AZUREBLOCKBLOB_URL``).
SUITE_REQUIREMENTS = ("pytest-rerunfailures", "pytest-subtests", "pytest-order", "pytest-click", "cryptography",
                      "pydantic", "azure-storage-blob")


def sdist_root(line: str) -> Path:
    """``t/`` and the pytest configuration of Celery ``line``'s sdist, fetched with pip and unpacked once."""
    version = matrix.CELERY_LINES[line][0]
    root = CACHE / f"celery-{version}"
    if not (root / "t" / "integration" / "conftest.py").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"celery=={version}", "-d", str(CACHE)], check=True, capture_output=True)
        with tarfile.open(CACHE / f"celery-{version}.tar.gz") as tar:
            wanted = [member for member in tar.getmembers()
                      if member.name.startswith(f"celery-{version}/t/")
                      or member.name in (f"celery-{version}/pyproject.toml", f"celery-{version}/setup.cfg")]
            tar.extractall(CACHE, members=wanted)
    return root


def build_venv(line: str) -> Path:
    """The line's venv for the suite: the matrix cell's packages plus the suite's plugins."""
    venv = matrix.CACHE / "venvs" / f"suite-celery{line}"
    celery, kombu = matrix.CELERY_LINES[line]
    python = matrix.find_python(matrix.LINE_PYTHON)
    if not (venv / "bin" / "python").exists():
        subprocess.run([matrix.uv(), "venv", "-q", "--python", str(python), str(venv)], check=True)
    subprocess.run([matrix.uv(), "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                    "-e", f"{matrix.REPO}[dev]", f"celery=={celery}", f"kombu=={kombu}", *SUITE_REQUIREMENTS],
                   check=True, cwd=matrix.REPO)
    return venv


def side_channel_redis() -> tuple[subprocess.Popen, int]:
    """A private, memory-only redis-server on a free port: the side channel of the gated tests on our backend."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        ping = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True)
        if ping.stdout.strip() == "PONG":
            return proc, port
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the side channel's redis-server did not start")


def run(line: str, target: str, files: list[str], pytest_args: list[str], side_channel: bool = False) -> Path:
    """Run the suite against ``target`` (``pg`` or ``redis``); the JUnit XML report's path.

    ``side_channel``: on ``pg``, the tests gated on a Redis result backend run too
    (``suite_plugins/celery_suite_side_channel.py``), their side channel a private redis-server.
    """
    from tests.support.pgcluster import start_cluster

    root, venv = sdist_root(line), matrix.CACHE / "venvs" / f"suite-celery{line}"
    side_channel = side_channel and target == "pg"
    if side_channel:
        pytest_args = ["-p", "celery_suite_side_channel", *pytest_args]
    report = report_path(line, target, files, pytest_args)
    log = report.with_suffix(".log")
    report.parent.mkdir(parents=True, exist_ok=True)
    cluster = None
    if target == "pg":
        cluster = start_cluster(binaries=matrix.pg_bin("18"), name=f"suite_{line.replace('.', '_')}",
                                conf=["max_connections = 200"])
        cluster.create_database("suite")
        url = cluster.url("suite")
    else:
        url = REDIS_URL
        subprocess.run(["redis-cli", "-n", REDIS_URL.rsplit("/", 1)[1], "flushdb"], check=True, capture_output=True)
    env = {**os.environ, "TEST_BROKER": url, "TEST_BACKEND": url, "VIRTUAL_ENV": str(venv),
           "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}"}
    for name in ("CELERY_DURABLE_TEST_DSN", "PYTHONPATH"):
        env.pop(name, None)
    redis_proc = None
    if side_channel:
        redis_proc, port = side_channel_redis()
        env.update(REDIS_HOST="127.0.0.1", REDIS_PORT=str(port),
                   PYTHONPATH=str(Path(__file__).parent / "suite_plugins"))
    paths = [f"t/integration/{name}" for name in files] or ["t/integration"]
    try:
        with log.open("w") as out:
            subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "-p", "no:cacheprovider",
                            "-o", "addopts=", "-o", "python_classes=test_*", "--junitxml", str(report), "-q",
                            *pytest_args, *paths],
                           cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    finally:
        if cluster is not None:
            cluster.destroy()
        if redis_proc is not None:
            redis_proc.kill()
            redis_proc.wait()
    return report


def report_path(line: str, target: str, files: list[str], pytest_args: list[str]) -> Path:
    """The JUnit XML report of a run; a run of some modules or with pytest options has its own."""
    tag = hashlib.sha1(repr((files, pytest_args)).encode()).hexdigest()[:8] if files or pytest_args else ""
    return CACHE / "reports" / f"celery-{line}-{target}{'-' + tag if tag else ''}.xml"


def outcomes(report: Path) -> dict[str, tuple[str, str]]:
    """``{test id: (passed|failed|error|skipped, message)}`` from a JUnit XML report (a rerun test: its last run)."""
    found = {}
    for case in ElementTree.parse(report).iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kind, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                kind = "failed" if child.tag == "failure" else child.tag
                message = (child.get("message") or "").splitlines()[0][:120] if child.get("message") else ""
        found[name] = (kind, message)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--line", required=True, choices=sorted(matrix.CELERY_LINES))
    parser.add_argument("--files", default="", help="comma-separated t/integration modules (default: all)")
    parser.add_argument("--against", default="pg,redis", help="pg, redis or both (default)")
    parser.add_argument("--side-channel", action="store_true",
                        help="here, also run the tests gated on a Redis result backend "
                             "(a private Redis as their side channel)")
    parser.add_argument("--compare-only", action="store_true",
                        help="run nothing: compare the reports the last runs of these arguments left")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    files = [name for name in args.files.split(",") if name]
    targets = args.against.split(",")
    start = time.monotonic()
    if args.compare_only:
        reports = {target: report_path(args.line, target, files,
                                       ["-p", "celery_suite_side_channel", *args.pytest_args]
                                       if args.side_channel and target == "pg" else args.pytest_args)
                   for target in targets}
    else:
        sdist_root(args.line)
        build_venv(args.line)
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(targets)) as pool:
            runs = pool.map(lambda t: run(args.line, t, files, args.pytest_args, args.side_channel), targets)
            reports = dict(zip(targets, runs, strict=True))
    results = {target: outcomes(report) for target, report in reports.items()}
    for target, found in results.items():
        counts = {kind: sum(1 for v, _ in found.values() if v == kind)
                  for kind in ("passed", "failed", "error", "skipped")}
        print(f"celery {args.line} on {target}: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))
    code = 0
    if {"pg", "redis"} <= results.keys():
        worse = sorted(name for name, (outcome, _) in results["redis"].items()
                       if outcome == "passed" and results["pg"].get(name, ("",))[0] != "passed")
        print(f"passed on Redis, not here: {len(worse)}")
        for name in worse:
            outcome, message = results["pg"].get(name, ("not run", ""))
            print(f"  {name}: {outcome}" + (f" ({message})" if message else ""))
        code = 1 if worse else 0
    print(f"in {time.monotonic() - start:.0f}s; logs: {CACHE / 'reports'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
