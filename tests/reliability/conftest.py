"""Fixtures of the reliability suite, and the summary it prints when the run ends."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.tally import Tally

ARTIFACTS = Path(__file__).parents[2] / "artifacts"
_TALLY = Tally()


@pytest.fixture(scope="session")
def tally() -> Tally:
    """The run's count of bad inputs, faults and messages (see :mod:`tests.reliability.tally`)."""
    return _TALLY


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not (_TALLY.bad_inputs or _TALLY.faults or _TALLY.expected):
        return
    text = _TALLY.summary()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "reliability-summary.txt").write_text(text + "\n")
    terminalreporter.write_sep("=", "reliability")
    terminalreporter.write_line(text)
