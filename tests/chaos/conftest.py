"""The chaos tests' time budget fixture, and their figures at the end of the run."""

from __future__ import annotations

import pytest

from .modes import FIGURES, Budget


@pytest.fixture
def budget(request: pytest.FixtureRequest) -> Budget:
    """The test's time left before its pytest-timeout limit (its ``limit`` marker, or the project's default)."""
    marker = request.node.get_closest_marker("timeout")
    seconds = marker.args[0] if marker and marker.args else request.config.getini("timeout")
    return Budget(float(seconds))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("chaos figures")
        for name, figures in FIGURES.items():
            terminalreporter.write_line(f"{name}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
