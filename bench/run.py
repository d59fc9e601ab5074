"""One command: the baseline server and tusd-py, one after the other, same scenarios.

Starts ``bench.baseline_server`` and ``python -m tusd_py serve`` (default config, a temp
data dir) in turn, never both at once, runs every scenario against each ``--repeat``
times and prints medians, the tusd-py/baseline ratios, peak RSS and the verdicts against
the targets of issue 2. By default the servers alternate per round in ABBA order
(baseline, tusd-py, tusd-py, baseline, ...; a fresh process and data dir each) so that
drifting machine speed and noise from other work hit both alike.

Usage:
    .venv/bin/python -m bench.run --repeat 3
    .venv/bin/python -m bench.run --fsync                      # power-loss durability cost
    .venv/bin/python -m bench.run --servers tusd-py --driver s3   # against moto_server
    .venv/bin/python -m bench.run --servers tusd-py --env TUSD_STORAGE__DRIVER=s3 ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .emulators import DRIVERS, emulator
from .fs_settle import settle
from .loadgen import (
    Payload,
    Scenario,
    add_scenario_args,
    fmt,
    format_table,
    is_default,
    rss_text,
    run_once,
    scenarios_from,
    summarize,
    summary_table,
    uvloop_run,
)

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "baseline"
TUSD = "tusd-py"
TUSD_FSYNC = "tusd-py-fsync"  # tusd-py with storage.fsync=true (power-loss durability)
TUSD_WORKERS = "tusd-py-w2"  # tusd-py with server.workers=2 (pre-forked workers)
#: The servers and the environment each variant of tusd-py adds to ``--env``.
VARIANTS: dict[str, dict[str, str]] = {
    TUSD: {},
    TUSD_FSYNC: {"TUSD_STORAGE__FSYNC": "true"},
    TUSD_WORKERS: {"TUSD_SERVER__WORKERS": "2"},
}
SERVERS = (BASELINE, *VARIANTS)

#: Targets of issue 17, as ratios of medians taken in one sitting. The rate of each
#: scenario against the baseline's (at least):
TARGET_RATIO = {"big": ("mb_s", 1.0), "many-small": ("uploads_s", 0.75), "parallel": ("mb_s", 0.9)}
#: Server CPU (user + system) against the baseline's (at most): per upload, per GiB.
TARGET_CPU = {"many-small": ("cpu_ms_per_upload", 1.3), "parallel": ("cpu_s_per_gib", 1.15)}
TARGET_P99_MS = {"many-small": 50.0}
TARGET_RSS_MB = 100.0  # per process (each worker)
#: storage.fsync=true against the default, every scenario (at least).
TARGET_FSYNC = 0.7
#: server.workers=2 against one worker (at least): many-small faster, parallel not worse
#: (within 5 %: the noise of a sitting's medians).
TARGET_WORKERS = {"many-small": 1.3, "parallel": 0.95}


def files_dir(work_dir: Path) -> Path:
    return work_dir / "files"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server under test as a child process on 127.0.0.1."""

    def __init__(self, name: str, work_dir: Path, extra_env: dict[str, str]) -> None:
        self.name = name
        self.port = free_port()
        #: Every server's upload files go in one directory (bench.fs_settle says why): the
        #: baseline's data dir, tusd-py's ``uploads/`` (a symlink to it).
        self.files_dir = files_dir(work_dir)
        self.data_dir = self.files_dir if name == BASELINE else work_dir / f"{name}-{self.port}"
        self.log_path = work_dir / f"{name}-{self.port}.log"
        self.extra_env = extra_env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def is_tusd(self) -> bool:
        return self.name != BASELINE

    @property
    def url(self) -> str:
        base = self.extra_env.get("TUSD_SERVER__BASE_PATH", "/files/") if self.is_tusd else "/files/"
        return f"http://127.0.0.1:{self.port}{base}"

    def command(self) -> list[str]:
        if self.name == BASELINE:
            return [sys.executable, "-m", "bench.baseline_server", "--port", str(self.port),
                    "--data-dir", str(self.data_dir)]
        command = [sys.executable, "-m", "tusd_py", "serve", "--host", "127.0.0.1",
                   "--port", str(self.port)]
        if self.extra_env.get("TUSD_STORAGE__DRIVER", "local") == "local":
            command += ["--data-dir", str(self.data_dir)]  # a key of the local driver only
        return command

    def start(self, timeout: float = 30.0) -> Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUSD_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        if self.is_tusd:
            env.update(self.extra_env)
            env.update(VARIANTS[self.name])
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.is_tusd:  # the local driver keeps its files in data_dir/uploads
            (self.data_dir / "uploads").symlink_to(self.files_dir, target_is_directory=True)
        log = open(self.log_path, "ab")
        # tusd-py runs in an empty directory so no config/tusd.yaml is picked up: the
        # built-in defaults (plus --env / --fsync) are what is measured.
        self.proc = subprocess.Popen(self.command(), cwd=self.data_dir.parent if self.name == BASELINE
                                     else self.data_dir, env=env, stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            if self.answers():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer in {timeout}s:\n{self.log()}")

    def answers(self) -> bool:
        """Up: ``/healthz`` answers 200."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM a server and wait for it (30 s), then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("TUSD_"):
            raise SystemExit(f"--env wants TUSD_KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def verdicts(scenario: Scenario, base: dict[str, Any] | None, tusd: dict[str, Any] | None
             ) -> tuple[str, list[str]]:
    """(ratio text, verdict lines) for one scenario of tusd-py against the baseline."""
    lines: list[str] = []
    ratio_text = "-"
    if tusd is None:
        return ratio_text, lines
    key, target = TARGET_RATIO[scenario.name]
    if base and base.get(key) and tusd.get(key) is not None:
        ratio = tusd[key] / base[key]
        ratio_text = f"{ratio:.2f}x"
        unit = "MB/s" if key == "mb_s" else "uploads/s"
        lines.append(f"{_mark(ratio >= target)} {scenario.name}: {unit} ratio {ratio:.2f}x "
                     f"(target >= {target}x)")
    if scenario.name in TARGET_CPU and base:
        cpu_key, limit = TARGET_CPU[scenario.name]
        what = "CPU per upload" if cpu_key == "cpu_ms_per_upload" else "CPU per GiB"
        if base.get(cpu_key) and tusd.get(cpu_key) is not None:
            ratio = tusd[cpu_key] / base[cpu_key]
            lines.append(f"{_mark(ratio <= limit)} {scenario.name}: {what} ratio {ratio:.2f}x "
                         f"(target <= {limit}x)")
        else:  # /proc counts CPU time in clock ticks: a tiny run may show none
            lines.append(f"info {scenario.name}: {what} ratio unknown (no CPU time measured)")
    lines.extend(_rss_and_errors(scenario, tusd))
    if scenario.name in TARGET_P99_MS and tusd.get("p99_ms") is not None:
        limit_ms = TARGET_P99_MS[scenario.name]
        lines.append(f"{_mark(tusd['p99_ms'] < limit_ms)} {scenario.name}: p99 "
                     f"{tusd['p99_ms']:.1f} ms (target < {limit_ms:.0f} ms)")
    return ratio_text, lines


def _rss_and_errors(scenario: Scenario, summary: dict[str, Any]) -> list[str]:
    lines = []
    name = summary.get("label", "")
    per_process = summary.get("rss_peak_process_mb") or summary.get("rss_peak_mb")
    if per_process is not None:
        lines.append(f"{_mark(per_process < TARGET_RSS_MB)} {scenario.name}: {name} peak RSS "
                     f"{per_process:.0f} MB per process (target < {TARGET_RSS_MB:.0f} MB)")
    if summary.get("errors"):
        lines.append(f"FAIL {scenario.name}: {name} {summary['errors']} upload errors")
    return lines


def variant_verdicts(scenario: Scenario, name: str, variant: dict[str, Any] | None,
                     plain: dict[str, Any] | None) -> list[str]:
    """Verdict lines of a tusd-py variant (fsync, workers) against the default tusd-py."""
    key, _ = TARGET_RATIO[scenario.name]
    if not variant or variant.get(key) is None or not plain or not plain.get(key):
        return []
    ratio = variant[key] / plain[key]
    unit = "MB/s" if key == "mb_s" else "uploads/s"
    if name == TUSD_FSYNC:
        lines = [f"{_mark(ratio >= TARGET_FSYNC)} {scenario.name}: storage.fsync=true gives "
                 f"{ratio:.2f}x the default's {unit} (target >= {TARGET_FSYNC}x; p99 "
                 f"{fmt(variant.get('p99_ms'))} ms)"]
    elif name == TUSD_WORKERS and scenario.name in TARGET_WORKERS:
        target = TARGET_WORKERS[scenario.name]
        lines = [f"{_mark(ratio >= target)} {scenario.name}: server.workers=2 gives {ratio:.2f}x "
                 f"one worker's {unit} (target >= {target}x)"]
    else:
        lines = [f"info {scenario.name}: {name} gives {ratio:.2f}x the default's {unit}"]
    return lines + _rss_and_errors(scenario, variant)


def _mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def comparison_table(scenarios: list[Scenario], servers: list[str],
                     by: dict[tuple[str, str], dict[str, Any]]) -> str:
    """Every server's medians per scenario: its rate, server CPU per GiB and per upload
    (user + system), each with its ratio to the baseline's, p99 and peak RSS."""
    rows = [["scenario", "server", "rate", "x base", "CPU s/GiB usr+sys", "x base",
             "CPU ms/upload usr+sys", "x base", "p99 ms", "peak RSS MB"]]
    for scenario in scenarios:
        base = by.get((BASELINE, scenario.name))
        key, _ = TARGET_RATIO[scenario.name]
        unit = "MB/s" if key == "mb_s" else "up/s"
        for name in servers:
            summary = by.get((name, scenario.name))
            if summary is None:
                continue
            rows.append([
                scenario.name, name, f"{fmt(summary.get(key))} {unit}",
                _ratio(summary, base, key),
                f"{fmt(summary.get('cpu_user_s_per_gib'), 2)}+"
                f"{fmt(summary.get('cpu_sys_s_per_gib'), 2)}",
                _ratio(summary, base, "cpu_s_per_gib"),
                f"{fmt(summary.get('cpu_user_ms_per_upload'), 3)}+"
                f"{fmt(summary.get('cpu_sys_ms_per_upload'), 3)}",
                _ratio(summary, base, "cpu_ms_per_upload"),
                fmt(summary.get("p99_ms")), rss_text(summary)])
    return format_table(rows)


def _ratio(summary: dict[str, Any], base: dict[str, Any] | None, key: str) -> str:
    if summary is base or not base or not base.get(key) or summary.get(key) is None:
        return ""
    return f"{summary[key] / base[key]:.2f}x"


async def bench(args: argparse.Namespace) -> int:
    scenarios = scenarios_from(args)
    servers = [name.strip() for name in args.servers.split(",") if name.strip()]
    for name in servers:
        if name not in SERVERS:
            raise SystemExit(f"unknown server {name!r}; choose from {', '.join(SERVERS)}")
    extra_env = parse_env(args.env)
    if args.fsync:
        extra_env["TUSD_STORAGE__FSYNC"] = "true"
    payload = Payload(max(s.chunk for s in scenarios))
    work_dir = Path(tempfile.mkdtemp(prefix="tusd-bench-", dir=args.work_dir))
    with emulator(args.driver, work_dir) as driver_env:
        extra_env.update(driver_env)
        return await _bench(args, scenarios, servers, extra_env, payload, work_dir)


async def _bench(args: argparse.Namespace, scenarios: list[Scenario], servers: list[str],
                 extra_env: dict[str, str], payload: Payload, work_dir: Path) -> int:
    out = open(args.json_out, "a") if args.json_out else None
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    index = 0
    # sequential: each server runs all its rounds in one process; interleaved (default):
    # one process per server per round, alternating.
    if args.order == "interleaved":
        # ABBA: A B, B A, A B, ... so neither server always gets the fresher machine.
        plan = [(name, [round_]) for round_ in range(1, args.repeat + 1)
                for name in (servers if round_ % 2 else servers[::-1])]
    else:
        plan = [(name, list(range(1, args.repeat + 1))) for name in servers]
    create_us = None
    if any(s.name == "many-small" for s in scenarios) and not args.no_settle:
        create_us = round(await asyncio.to_thread(settle, files_dir(work_dir)), 1)
    conditions = {
        "kind": "conditions", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "file_create_us": create_us,
        "loadavg_before": os.getloadavg(), "cpus": os.cpu_count(), "order": args.order,
        "repeat": args.repeat, "driver": args.driver,
        "tusd_env": {k: v for k, v in extra_env.items() if "KEY" not in k and "CONNECTION" not in k},
        "scenarios": [s.__dict__ for s in scenarios],
    }
    _emit(conditions, out)
    try:
        for name, rounds in plan:
            server = Server(name, work_dir, extra_env).start()
            print(f"# {name} pid {server.pid} on {server.url}", file=sys.stderr)
            try:
                for round_ in rounds:
                    for scenario in scenarios:
                        result = await run_once(
                            server.url, scenario, payload, pid=server.pid, label=name, run=round_,
                            first_index=index, verify_bytes=args.verify_bytes,
                            cleanup=args.cleanup, sync=not args.no_sync,
                            max_seconds=args.max_seconds, request_timeout=args.request_timeout,
                            verify=not args.no_verify)
                        index += scenario.count
                        runs.setdefault((name, scenario.name), []).append(result)
                        _emit(result, out)
                        print(f"  {name:13} {scenario.name:10} run {round_}: "
                              f"{fmt(result['mb_s'])} MB/s {fmt(result['uploads_s'])} uploads/s "
                              f"p99 {fmt(result['p99_ms'])} ms CPU "
                              f"{fmt(result.get('cpu_user_s_per_gib'), 2)}+"
                              f"{fmt(result.get('cpu_sys_s_per_gib'), 2)} s/GiB "
                              f"{fmt(result.get('cpu_user_ms_per_upload'), 3)}+"
                              f"{fmt(result.get('cpu_sys_ms_per_upload'), 3)} ms/upload "
                              f"RSS {fmt(result.get('rss_peak_mb'), 0)} MB "
                              f"errors {result['errors']} (calib {result['calib_ms']} ms)",
                              file=sys.stderr)
            finally:
                server.stop()
                # Data dirs are removed only at the very end: deleting thousands of small
                # files makes the next server's file creations slow (see --cleanup).
    finally:
        if not args.keep_data:
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            print(f"# data and logs kept in {work_dir}", file=sys.stderr)

    summaries = {key: summarize(value) for key, value in runs.items()}
    for summary in summaries.values():
        _emit(summary, out)
    all_lines: list[str] = []
    for scenario in scenarios:
        plain = summaries.get((TUSD, scenario.name))
        _ratio_text, lines = verdicts(scenario, summaries.get((BASELINE, scenario.name)), plain)
        all_lines.extend(lines)
        for name in servers:
            if name not in (BASELINE, TUSD):
                all_lines.extend(variant_verdicts(scenario, name,
                                                  summaries.get((name, scenario.name)), plain))
        if not is_default(scenario):
            all_lines.append(f"note {scenario.name}: non-standard sizes, verdict is indicative only")
    _emit({"kind": "verdicts", "lines": all_lines, "loadavg_after": os.getloadavg()}, out)
    if out:
        out.close()

    print("\n" + summary_table(list(summaries.values())), file=sys.stderr)
    print(f"\nmedians of {args.repeat} run(s), {args.order}; tusd-py driver {args.driver}, env: "
          f"{conditions['tusd_env'] or 'defaults'}; load average before "
          f"{conditions['loadavg_before'][0]:.2f}, after {os.getloadavg()[0]:.2f}"
          + (f"; file creation {create_us:.0f} us" if create_us is not None else "")
          + "\n", file=sys.stderr)
    print(comparison_table(scenarios, servers, summaries), file=sys.stderr)
    print("\n" + "\n".join(all_lines), file=sys.stderr)
    failed = sum(s["errors"] for s in summaries.values())
    if failed:
        return 1
    if args.strict and any(line.startswith("MISS") for line in all_lines):
        return 3
    return 0


def _emit(record: dict[str, Any], out: Any) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if out:
        out.write(line + "\n")
        out.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_scenario_args(parser)
    parser.add_argument("--servers", default=f"{BASELINE},{TUSD}",
                        help=f"which servers to run, in this order, from {', '.join(SERVERS)} "
                             f"({TUSD_FSYNC}: tusd-py with storage.fsync=true, {TUSD_WORKERS}: "
                             f"with server.workers=2; each is judged against {TUSD}, {TUSD} "
                             f"against {BASELINE})")
    parser.add_argument("--order", choices=("interleaved", "sequential"), default="interleaved",
                        help="interleaved: alternate servers per round (a fresh process each); "
                             "sequential: all rounds of one server, then the next")
    parser.add_argument("--fsync", action="store_true",
                        help="run tusd-py with TUSD_STORAGE__FSYNC=true (power-loss durability)")
    parser.add_argument("--driver", choices=DRIVERS, default="local",
                        help="storage driver for tusd-py; s3/gcs/azure start moto_server, "
                             "fake-gcs-server or Azurite on 127.0.0.1 for the whole run")
    parser.add_argument("--env", action="append", default=[], metavar="TUSD_KEY=VALUE",
                        help="extra environment for tusd-py (repeatable), e.g. to bench the S3 driver")
    parser.add_argument("--json-out", type=Path, help="append JSON lines (conditions, runs, summaries) here")
    parser.add_argument("--work-dir", help="parent of the temp data dirs (default: system temp)")
    parser.add_argument("--keep-data", action="store_true", help="keep data dirs and server logs")
    parser.add_argument("--no-settle", action="store_true",
                        help="start at once even while file creation is slow after mass "
                             "deletions (by default many-small waits for it, see bench.fs_settle)")
    parser.add_argument("--strict", action="store_true", help="exit 3 when a target is missed")
    args = parser.parse_args(argv)
    return int(uvloop_run(bench(args)))


if __name__ == "__main__":
    sys.exit(main())
