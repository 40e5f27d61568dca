"""Kombu's own integration base classes (``t/integration/common.py``), from the sdist of the installed kombu.

They ship in the sdist only, not in the wheel. ``.ci/run`` fetches them once
during set-up (``python -m tests.support.kombu_sdist``) into the cache
directory the conformance test reads: ``$KOMBU_SDIST_CACHE``, else
``.cache/kombu-sdist`` in the repository. The test fetches them itself when
they are missing, and fails (never skips) when they cannot be had.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import kombu

CACHE_ENV = "KOMBU_SDIST_CACHE"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(__file__).resolve().parents[2] / ".cache" / "kombu-sdist")


def common_path(cache: Path | None = None) -> Path:
    """Where ``common.py`` of the installed kombu version lives once fetched."""
    return (cache or cache_dir()) / f"kombu-{kombu.__version__}-common.py"


def fetch(cache: Path | None = None) -> Path:
    """Download the sdist of the installed kombu with pip (once) and extract ``common.py``; return its path.

    Raises RuntimeError saying what failed (no registry reachable, no such file in the sdist).
    """
    cache = cache or cache_dir()
    target = common_path(cache)
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    version = kombu.__version__
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
         f"kombu=={version}", "-d", str(cache)],
        capture_output=True, text=True, timeout=300,
    )
    sdists = sorted(cache.glob(f"kombu-{version}.tar.gz"))
    if done.returncode != 0 or not sdists:
        raise RuntimeError(f"pip download kombu=={version} (sdist) failed: {done.stderr.strip()[-1000:]}")
    with tarfile.open(sdists[0]) as tar:
        member = tar.extractfile(f"kombu-{version}/t/integration/common.py")
        if member is None:
            raise RuntimeError(f"kombu-{version}.tar.gz holds no t/integration/common.py")
        target.write_bytes(member.read())
    return target


if __name__ == "__main__":
    print(fetch())
