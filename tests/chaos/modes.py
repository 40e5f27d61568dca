"""The chaos tests' two modes: bounded (CI) and long (CELERY_DURABLE_CHAOS_LONG=1), with a time limit each.

Each test does a fixed amount of work per mode and has a time limit per mode
(``limit``: its pytest-timeout marker). Waits inside it take their deadlines
from its ``budget`` fixture (tests/chaos/conftest.py), which ends a little
before that limit, so a slow run fails with a message saying what was slow
rather than being cut off. The long run as CONTRIBUTING.md gives it therefore
lasts at most the sum of its tests' limits.

Figures a test wants shown (canvases, kills, violations, wall time) go in
``FIGURES`` under its name; the conftest prints them at the end of the run.
"""

from __future__ import annotations

import os
import time
from typing import TypeVar

import pytest

LONG = os.environ.get("CELERY_DURABLE_CHAOS_LONG") == "1"

#: Figures by test, printed at the end of the run.
FIGURES: dict[str, dict[str, object]] = {}

T = TypeVar("T")


def per_mode(bounded: T, long: T) -> T:
    """The value for the mode this run is in."""
    return long if LONG else bounded


def limit(bounded: float, long: float) -> pytest.MarkDecorator:
    """The test's pytest-timeout limit in this mode (seconds)."""
    return pytest.mark.timeout(per_mode(bounded, long))


class Budget:
    """The time a test has left before its limit, from which its waits take their deadlines."""

    #: Kept back from the limit: module fixtures set up before the budget starts, and what follows the last wait.
    RESERVE = 60.0

    def __init__(self, seconds: float) -> None:
        self.started = time.monotonic()
        self.end = self.started + seconds - self.RESERVE

    def deadline(self, seconds: float) -> float:
        """A monotonic deadline ``seconds`` from now, or the budget's end if that comes first."""
        return min(time.monotonic() + seconds, self.end)

    def timeout(self, seconds: float) -> float:
        """A wait's timeout: ``seconds``, or what is left of the budget if that is less (at least one)."""
        return max(1.0, self.deadline(seconds) - time.monotonic())

    def elapsed(self) -> float:
        return time.monotonic() - self.started
