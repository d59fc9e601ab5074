"""In CI a skipped test is a failure: a run with ``CI=true`` (``.ci/run`` sets it) that
skipped or xfailed any test exits non-zero and lists them, so a skip added later (a tool
missing on the CI machine, a forgotten marker) cannot go unnoticed.

Opt-out, for a developer machine that lacks a tool (say no chromium): set
``TUSD_TEST_ALLOW_SKIPS=1``; the skips are then only reported, as pytest's ``-ra`` does.
Without ``CI=true`` nothing changes.
"""

from __future__ import annotations

import os

import pytest

#: The variable that lets a CI-like run skip tests.
OPT_OUT = "TUSD_TEST_ALLOW_SKIPS"

_not_run: list[str] = []


def _enforced() -> bool:
    return (os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")
            and os.environ.get(OPT_OUT, "").strip() != "1")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Note every test that was skipped, xfailed or xpassed (on the xdist controller,
    the workers' reports arrive here too)."""
    if hasattr(report, "wasxfail"):
        kind, reason = ("xpassed" if report.passed else "xfailed"), str(report.wasxfail)
    elif report.skipped:
        kind = "skipped"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    else:
        return
    _not_run.append(f"{kind} {report.nodeid}: {reason}")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput") or not _not_run or not _enforced():
        return  # (an xdist worker: its controller decides)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if hasattr(terminalreporter.config, "workerinput") or not _not_run or not _enforced():
        return
    terminalreporter.section("tests that did not run (CI=true: this run fails)", red=True)
    for line in _not_run:
        terminalreporter.line(line)
    terminalreporter.line(f"On a machine that lacks a tool, set {OPT_OUT}=1 to allow skips.")
