"""Smoke tests of the benchmark tool (bench/) with tiny sizes: it is one more real client
of the daemon. These prove the tool works; they assert no timings (benchmarks are not
tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.shared import find_shared
from tests.plugins.daemon import ROOT, Daemon
from tests.plugins.local_files import upload_file, upload_files

SHARED_BENCH = find_shared()

TINY = ["--repeat", "1", "--big-size", "2MiB", "--big-chunk", "512KiB", "--small-count", "20",
        "--small-conc", "4", "--par-count", "2", "--par-size", "1MiB", "--par-chunk", "256KiB",
        "--verify-bytes", "--no-sync"]
#: bench.run only (loadgen has no settle step): start at once, whatever the filesystem
#: state the suite left (test_fs_settle covers the probe).
RUN_TINY = [*TINY, "--no-settle"]


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_loadgen_against_daemon(daemon: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", daemon.url, "--pid", str(daemon.pid), "--label", "tusd-py",
         "--json-out", str(out), "--cleanup", "all", *TINY],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = {r["scenario"]: r for r in records(out) if r["kind"] == "summary"}
    assert set(summaries) == {"big", "many-small", "parallel"}
    for scenario, expected in (("big", 1), ("many-small", 20), ("parallel", 2)):
        s = summaries[scenario]
        assert s["errors"] == 0, s
        assert s["offsets_ok"] == s["bytes_ok"] == s["attempted"] == expected, s
        assert s["mb_s"] > 0 and s["p99_ms"] >= s["p50_ms"] > 0
        assert 10 < s["rss_peak_mb"] < 1000  # sampled from /proc/<daemon pid>/status
    assert "many-small" in proc.stderr  # the human-readable table
    # --cleanup all: every upload was DELETEd (termination) after its run
    assert (daemon.data_dir / "uploads").is_dir()
    assert upload_files(daemon.data_dir) == []


def test_run_compares_baseline_and_tusd(tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--json-out", str(out), *RUN_TINY],
                          cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = records(out)
    summaries = {(r["label"], r["scenario"]): r for r in rows if r["kind"] == "summary"}
    assert set(summaries) == {(server, scenario) for server in ("baseline", "tusd-py")
                              for scenario in ("big", "many-small", "parallel")}
    assert all(s["errors"] == 0 and s["bytes_ok"] == s["attempted"] for s in summaries.values())
    verdicts = next(r for r in rows if r["kind"] == "verdicts")["lines"]
    assert any(line.endswith("(target >= 1.0x)") and " big: " in line for line in verdicts)
    assert any("p99" in line and "(target < 50 ms)" in line for line in verdicts)
    assert any(" many-small: CPU per upload ratio " in line for line in verdicts)
    assert any(" parallel: CPU per GiB ratio " in line for line in verdicts)
    assert any("peak RSS" in line for line in verdicts)
    assert "ratio" in proc.stderr and ("PASS " in proc.stderr or "MISS " in proc.stderr)
    # Server CPU, user and system apart, per GiB and per upload, for both servers.
    for summary in summaries.values():
        assert summary["cpu_user_s_per_gib"] is not None and summary["cpu_sys_s_per_gib"] is not None
        assert summary["cpu_ms_per_upload"] == pytest.approx(
            summary["cpu_user_ms_per_upload"] + summary["cpu_sys_ms_per_upload"], abs=0.01)
    assert "CPU s/GiB usr+sys" in proc.stderr and "CPU ms/upload usr+sys" in proc.stderr


@pytest.mark.skipif(not (SHARED_BENCH / "tusbench.py").is_file(),
                    reason="the shared yardstick (shared/bench) is not beside the checkout or its origin")
def test_shared_yardstick_alternates_and_reports_cpu(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.shared", "--pairs", "2", "--cold", "--no-settle",
         "--scenarios", "many-small,parallel", "--out", str(out), "--", "--repeat", "1",
         "--small-count", "10", "--small-conc", "4", "--par-count", "2", "--par-size", "1MiB",
         "--par-chunk", "256KiB", "--warmup", "1", "--pause", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = records(out / "sitting.jsonl")
    runs = [r for r in rows if r["kind"] == "run"]
    # ABAB: baseline, tusd-py, baseline, tusd-py; every run verified by tusbench's HEADs.
    order = [(r["pair"], r["label"]) for r in runs if r["scenario"] == "many-small"]
    assert order == [(1, "baseline"), (1, "tusd-py"), (2, "baseline"), (2, "tusd-py")]
    assert all(r["errors"] == 0 and r["verified_head"] == r["uploads"] for r in runs)
    assert all(r["server_cpu_user_s"] is not None and r["server_cpu_sys_s"] is not None
               for r in runs)
    summaries = [r for r in rows if r["kind"] == "summary"]
    assert {(s["label"], s["scenario"]) for s in summaries} == {
        (server, scenario) for server in ("baseline", "tusd-py")
        for scenario in ("many-small", "parallel")}
    assert "per pair" in proc.stderr and "CPU ms/upload usr+sys" in proc.stderr


def test_run_on_the_s3_driver_starts_its_own_moto(tmp_path: Path) -> None:
    out = tmp_path / "s3.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--servers", "tusd-py", "--driver", "s3",
         "--scenarios", "big,many-small", "--json-out", str(out), *RUN_TINY],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = records(out)
    conditions = next(r for r in rows if r["kind"] == "conditions")
    assert conditions["driver"] == "s3"
    assert conditions["tusd_env"]["TUSD_STORAGE__DRIVER"] == "s3"
    assert "AWS_SECRET_ACCESS_KEY" not in conditions["tusd_env"]
    summaries = [r for r in rows if r["kind"] == "summary"]
    assert {s["scenario"] for s in summaries} == {"big", "many-small"}
    assert all(s["errors"] == 0 and s["bytes_ok"] == s["attempted"] for s in summaries)


def test_fs_settle_probes_file_creation_and_keeps_the_files(tmp_path: Path) -> None:
    from bench.fs_settle import create_cost_us, settle

    probe = tmp_path / "probe"
    assert create_cost_us(probe, count=50) > 0
    assert len(list(probe.iterdir())) == 50  # kept: deleting them would slow creates again
    assert settle(probe, threshold_us=1e9) > 0  # settled at the first probe
    assert len(list(probe.iterdir())) == 250
    # never settled: gives up after max_wait, having probed once more after the wait
    assert settle(probe, threshold_us=0.0, max_wait=0.2, interval=0.1) > 0
    assert len(list(probe.iterdir())) >= 650


def test_leanload_against_daemon(daemon: Daemon) -> None:
    """bench.leanload: every upload created, patched and checked (HEAD, and GET of a few)."""
    import asyncio

    from bench.leanload import run_once

    # /proc/<pid>/stat counts CPU in 10 ms ticks: 300 uploads take several of them (40
    # once took less than one on CI, and the figure read 0)
    result = asyncio.run(run_once(daemon.url, count=300, size=3000, concurrency=4, pid=daemon.pid))
    assert (result["uploads"], result["failures"]) == (300, 0), result
    assert result["p99_ms"] >= result["p50_ms"] > 0
    assert result["server_cpu_ms_per_upload"] > 0
    uploads = [upload_file(daemon.data_dir, name) for name in upload_files(daemon.data_dir)]
    assert len(uploads) == 300 and {p.stat().st_size for p in uploads} == {3000}
