"""The CI guard (``tests/plugins/ci_guard.py``): a run of a tiny suite in a subprocess,
with and without ``CI=true`` and the opt-out, judged by its exit status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.plugins.daemon import ROOT

SUITE = '''
import pytest

def test_passes():
    pass

@pytest.mark.skipif({skip}, reason="a tool is missing")
def test_maybe_skipped():
    pass

@pytest.mark.xfail({xfail}, reason="known to fail", strict=False)
def test_maybe_xfailed():
    assert not {xfail}
'''


def run(tmp_path: Path, env: dict[str, str], *, skip: bool = False, xfail: bool = False,
        args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # none of the project's options
    (tmp_path / "test_tiny.py").write_text(SUITE.format(skip=skip, xfail=xfail))
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "TUSD_TEST_ALLOW_SKIPS")}
    clean["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-p", "tests.plugins.ci_guard", "-c", str(tmp_path / "pytest.ini"), *args,
         str(tmp_path / "test_tiny.py")],
        cwd=tmp_path, env={**clean, **env}, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("case", ["skip", "xfail"])
def test_a_ci_run_that_did_not_run_a_test_fails(tmp_path: Path, case: str) -> None:
    result = run(tmp_path, {"CI": "true"}, **{case: True})
    assert result.returncode == 1, result.stdout
    assert "test_tiny.py::test_maybe_" in result.stdout
    assert "TUSD_TEST_ALLOW_SKIPS=1" in result.stdout


def test_a_ci_run_that_ran_everything_passes(tmp_path: Path) -> None:
    result = run(tmp_path, {"CI": "true"})
    assert result.returncode == 0, result.stdout
    assert "3 passed" in result.stdout


def test_skips_outside_ci_or_with_the_opt_out_pass(tmp_path: Path) -> None:
    for env in ({}, {"CI": "true", "TUSD_TEST_ALLOW_SKIPS": "1"}):
        result = run(tmp_path, env, skip=True, xfail=True)
        assert result.returncode == 0, (env, result.stdout)
        assert "1 skipped" in result.stdout and "1 xfailed" in result.stdout


def test_a_failing_ci_run_keeps_its_own_status(tmp_path: Path) -> None:
    (tmp_path / "test_fails.py").write_text("def test_fails():\n    assert False\n")
    result = run(tmp_path, {"CI": "true"}, skip=True, args=(str(tmp_path / "test_fails.py"),))
    assert result.returncode == 1, result.stdout
    assert "1 failed" in result.stdout
