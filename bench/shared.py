"""The shared yardstick, run the fair way: ``tusbench.py`` against ``baseline_aiohttp.py``
and tusd-py, alternating, with server CPU per GiB and per upload.

The team's yardstick (``../shared/bench``: ``tusbench.py``, the load generator, and
``baseline_aiohttp.py``, the baseline) is what the performance targets are judged by.
This runs it from where it lies, never a copy: the servers one at a time, in ABAB order
for ``--pairs`` pairs, each with tusbench's ``--repeat`` runs of every scenario (its
probe replaced by ``bench.tusbench_probe``'s, which reads user and system CPU apart and
sums a daemon's workers). It prints every pair's medians, the sitting's medians (over
all runs of a server) with their ratios, server CPU seconds per GiB and milliseconds per
upload (user + system) beside MB/s and uploads/s, and the verdicts against the targets
(``bench.run``).

Fair conditions, as in ``bench.run``:

* **Page cache**: tusbench keeps every upload, so each server's runs fill gigabytes of
  page cache; on this VM a page the guest never touched costs a host fault on its first
  write, billing whichever server ran later. Before the sitting 4 GiB are written and
  freed, and after each server the large uploads (> 1 MiB) are deleted and ``sync`` run,
  so every server writes into recycled pages. ``--cold`` skips both: the slow regime,
  where the page cache grows into fresh memory run after run.
* **File creation**: one directory for every server's upload files (tusd-py's
  ``uploads/`` a symlink to it), probed by ``bench.fs_settle`` until a create costs what
  it normally does; small files are removed only at the end.

Usage:
    .venv/bin/python -m bench.shared                       # 3 pairs, baseline vs tusd-py
    .venv/bin/python -m bench.shared --pairs 4 --servers baseline,tusd-py,tusd-py-fsync
    .venv/bin/python -m bench.shared --scenarios parallel --cold -- --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .fs_settle import settle
from .loadgen import SCENARIOS, Scenario, cpu_figures, fmt, format_table
from .run import (
    BASELINE,
    ROOT,
    SERVERS,
    TUSD,
    Server,
    comparison_table,
    files_dir,
    parse_env,
    variant_verdicts,
    verdicts,
)


def find_shared(root: Path = ROOT) -> Path:
    """Where the shared yardstick is: ``$SHARED_BENCH``, else ``shared/bench`` beside the
    checkout, else beside the repository a clone was made from (a clean clone of a local
    checkout, as CI makes one, elsewhere on the disk)."""
    if os.environ.get("SHARED_BENCH"):
        return Path(os.environ["SHARED_BENCH"])
    beside = root.parent / "shared" / "bench"
    if beside.is_dir():
        return beside
    origin = subprocess.run(["git", "-C", str(root), "config", "--get", "remote.origin.url"],
                            capture_output=True, text=True).stdout.strip()
    if origin and Path(origin).is_dir():
        return Path(origin).resolve().parent / "shared" / "bench"
    return beside


DEFAULT_SHARED = find_shared()
#: tusbench's scenarios at its default sizes (the verdicts need the scenario's name only).
SHARED_SCENARIOS = {
    "big": Scenario("big", 1, 512 << 20, 8 << 20, 1),
    "many-small": Scenario("many-small", 2000, 16 << 10, 16 << 10, 32),
    "parallel": Scenario("parallel", 32, 16 << 20, 1 << 20, 32),
}


class SharedBaseline(Server):
    """The shared ``baseline_aiohttp.py`` (no health route: any HTTP answer means up)."""

    def __init__(self, shared: Path, work_dir: Path) -> None:
        super().__init__(BASELINE, work_dir, {})
        self.script = shared / "baseline_aiohttp.py"

    def command(self) -> list[str]:
        return [sys.executable, str(self.script), str(self.port), str(self.data_dir)]

    def answers(self) -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=1).close()
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True


def warm_pages(directory: Path, gib: int = 4) -> None:
    """Write and free ``gib`` GiB so the page cache reuses pages the guest has touched."""
    path = directory / "warm"
    block = b"\0" * (8 << 20)
    with open(path, "wb") as f:
        for _ in range(gib * 128):
            f.write(block)
    path.unlink()
    os.sync()


def drop_large_files(directory: Path, limit: int = 1 << 20) -> None:
    for entry in os.scandir(directory):
        if entry.is_file() and entry.stat().st_size > limit:
            os.unlink(entry.path)
    os.sync()


def meminfo_mib() -> dict[str, int]:
    """MemFree and Cached of /proc/meminfo, in MiB (the page cache's state)."""
    values = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("MemFree", "Cached", "Dirty"):
                values[name] = int(rest.split()[0]) // 1024
    return values


def normalise(run: dict[str, Any]) -> dict[str, Any]:
    """A tusbench run line with bench.loadgen's keys (p99_ms, CPU per GiB and per upload)."""
    out = dict(run)
    out["p99_ms"] = run.get("lat_p99_ms")
    out["p50_ms"] = run.get("lat_p50_ms")
    out["rss_peak_mb"] = run.get("server_rss_peak_mb")
    out["rss_peak_process_mb"] = run.get("server_rss_peak_process_mb")
    if run.get("server_cpu_user_s") is not None:
        completed = run["completed"]
        out.update(cpu_figures(run["server_cpu_user_s"], run["server_cpu_sys_s"],
                               completed * run["size"], completed))
        if completed:
            out["minflt_per_mib"] = round(run.get("server_minflt", 0) / (completed * run["size"]
                                                                        / (1 << 20)), 1)
    return out


_MEDIAN_KEYS = ("mb_s", "uploads_s", "p50_ms", "p99_ms", "cpu_s_per_gib", "cpu_user_s_per_gib",
                "cpu_sys_s_per_gib", "cpu_ms_per_upload", "cpu_user_ms_per_upload",
                "cpu_sys_ms_per_upload", "minflt_per_mib")


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of a server's runs of one scenario (peak RSS: the highest)."""
    summary: dict[str, Any] = {"kind": "summary", "label": runs[0]["label"],
                               "scenario": runs[0]["scenario"], "runs": len(runs)}
    for key in _MEDIAN_KEYS:
        values = [r[key] for r in runs if r.get(key) is not None]
        summary[key] = round(statistics.median(values), 4) if values else None
    for key in ("rss_peak_mb", "rss_peak_process_mb"):
        summary[key] = max((r.get(key) or 0 for r in runs), default=None) or None
    summary["errors"] = sum(r["errors"] for r in runs)
    summary["completed"] = sum(r["completed"] for r in runs)
    return summary


def pairs_table(scenarios: list[str], servers: list[str],
                runs: list[dict[str, Any]], pairs: int) -> str:
    """Each pair's medians, per scenario and server."""
    rows = [["scenario", "pair", *[f"{name} rate" for name in servers], "ratio",
             *[f"{name} CPU usr+sys" for name in servers], "CPU ratio"]]
    for scenario in scenarios:
        key = "mb_s" if scenario != "many-small" else "uploads_s"
        cpu_key = "cpu_ms_per_upload" if scenario == "many-small" else "cpu_s_per_gib"
        unit = "ms/up" if scenario == "many-small" else "s/GiB"
        for pair in range(1, pairs + 1):
            by = {name: summarize(mine) for name in servers
                  if (mine := [r for r in runs if r["label"] == name and r["scenario"] == scenario
                               and r["pair"] == pair])}
            if not by:
                continue
            cells = [fmt(by[name].get(key)) if name in by else "-" for name in servers]
            cpu = [(f"{fmt(by[name].get(cpu_key.replace('cpu_', 'cpu_user_')), 3)}+"
                    f"{fmt(by[name].get(cpu_key.replace('cpu_', 'cpu_sys_')), 3)} {unit}")
                   if name in by else "-" for name in servers]
            base, other = by.get(servers[0]), by.get(servers[1]) if len(servers) > 1 else None
            rows.append([scenario, str(pair), *cells, _ratio_of(other, base, key), *cpu,
                         _ratio_of(other, base, cpu_key)])
    return format_table(rows)


def _ratio_of(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str) -> str:
    if not a or not b or not b.get(key) or a.get(key) is None:
        return "-"
    return f"{a[key] / b[key]:.2f}x"


def run_server(server: Server, tusbench_args: list[str], shared: Path, out: Path,
               pair: int) -> list[dict[str, Any]]:
    """One server's tusbench runs; their normalised JSON lines, tagged with the pair."""
    lines = out / f"{server.name}-pair{pair}.jsonl"
    command = [sys.executable, "-m", "bench.tusbench_probe", str(shared / "tusbench.py"),
               server.url, "--pid", str(server.pid), "--label", server.name,
               "--json-out", str(lines), *tusbench_args]
    proc = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"tusbench failed against {server.name} ({proc.returncode})")
    runs = []
    for line in lines.read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "run":
            record = normalise(record)
            record["pair"] = pair
            runs.append(record)
    return runs


def sitting(args: argparse.Namespace) -> int:
    shared = Path(args.shared)
    if not (shared / "tusbench.py").is_file() or not (shared / "baseline_aiohttp.py").is_file():
        raise SystemExit(f"shared yardstick not found in {shared} (use --shared)")
    servers = [name.strip() for name in args.servers.split(",") if name.strip()]
    for name in servers:
        if name not in SERVERS:
            raise SystemExit(f"unknown server {name!r}; choose from {', '.join(SERVERS)}")
    scenarios = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    for name in scenarios:
        if name not in SCENARIOS:
            raise SystemExit(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    tusbench_args = ["--scenarios", ",".join(scenarios), *(args.tusbench or ["--repeat", "3"])]
    extra_env = parse_env(args.env)
    work_dir = Path(tempfile.mkdtemp(prefix="tusd-shared-", dir=args.work_dir))
    out = Path(args.out) if args.out else work_dir / "results"
    out.mkdir(parents=True, exist_ok=True)
    files = files_dir(work_dir)
    files.mkdir(parents=True)
    conditions: dict[str, Any] = {
        "kind": "conditions", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_before": os.getloadavg(), "cpus": os.cpu_count(), "pairs": args.pairs,
        "servers": servers, "order": args.order, "tusbench_args": tusbench_args,
        "warm": not args.cold,
        "tusd_env": extra_env}
    if not args.cold:
        warm_pages(work_dir)
    if not args.no_settle and "many-small" in scenarios:
        conditions["file_create_us"] = round(settle(files), 1)
    runs: list[dict[str, Any]] = []
    try:
        for pair in range(1, args.pairs + 1):
            # ABAB, or ABBA (--order abba: in the cold regime the page cache only grows, so
            # the later server of every ABAB pair would always meet the larger one).
            order = servers if args.order == "abab" or pair % 2 else servers[::-1]
            for name in order:
                server = (SharedBaseline(shared, work_dir) if name == BASELINE
                          else Server(name, work_dir, extra_env))
                server.start()
                print(f"# pair {pair}: {name} (pid {server.pid}), load average "
                      f"{os.getloadavg()[0]:.2f}", file=sys.stderr)
                memory = meminfo_mib()
                try:
                    for run in run_server(server, tusbench_args, shared, out, pair):
                        run["meminfo_before_mib"] = memory
                        runs.append(run)
                finally:
                    server.stop()
                if not args.cold:
                    drop_large_files(files)
    finally:
        if not args.keep_data:
            shutil.rmtree(files, ignore_errors=True)
            for path in work_dir.iterdir():
                if path != out and path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
    conditions["loadavg_after"] = os.getloadavg()

    summaries = {(name, scenario): summarize(mine) for name in servers for scenario in scenarios
                 if (mine := [r for r in runs if r["label"] == name and r["scenario"] == scenario])}
    lines: list[str] = []
    for scenario in scenarios:
        spec = SHARED_SCENARIOS[scenario]
        plain = summaries.get((TUSD, scenario))
        lines.extend(verdicts(spec, summaries.get((BASELINE, scenario)), plain)[1])
        for name in servers:
            if name not in (BASELINE, TUSD):
                lines.extend(variant_verdicts(spec, name, summaries.get((name, scenario)), plain))
    with open(out / "sitting.jsonl", "a") as f:
        for record in (conditions, *runs, *summaries.values(),
                       {"kind": "verdicts", "lines": lines}):
            f.write(json.dumps(record) + "\n")
    print(f"\nshared yardstick, {args.pairs} pair(s) {args.order.upper()}, tusbench "
          f"{' '.join(tusbench_args)}; "
          f"page cache {'cold (not warmed)' if args.cold else 'warmed'}; load average before "
          f"{conditions['loadavg_before'][0]:.2f}, after {conditions['loadavg_after'][0]:.2f}"
          + (f"; file creation {conditions['file_create_us']:.0f} us"
             if "file_create_us" in conditions else ""), file=sys.stderr)
    print("\nper pair (medians of each server's runs in the pair):", file=sys.stderr)
    print(pairs_table(scenarios, servers, runs, args.pairs), file=sys.stderr)
    print("\nthe sitting (medians of all runs):", file=sys.stderr)
    print(comparison_table([SHARED_SCENARIOS[s] for s in scenarios], servers, summaries),
          file=sys.stderr)
    print("\n" + "\n".join(lines), file=sys.stderr)
    print(f"# results in {out}", file=sys.stderr)
    return 1 if any(s["errors"] for s in summaries.values()) else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.shared",
                                     description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3, help="ABAB pairs of runs")
    parser.add_argument("--servers", default=f"{BASELINE},{TUSD}",
                        help=f"in the order of a pair, from {', '.join(SERVERS)} (the first is "
                             "the one ratios are taken against)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--env", action="append", default=[], metavar="TUSD_KEY=VALUE",
                        help="extra environment for tusd-py (repeatable)")
    parser.add_argument("--order", choices=("abab", "abba"), default="abab",
                        help="servers in the same order in every pair, or reversed every "
                             "other pair")
    parser.add_argument("--cold", action="store_true",
                        help="no page warming and no deletion of large uploads between servers")
    parser.add_argument("--no-settle", action="store_true", help="skip bench.fs_settle")
    parser.add_argument("--shared", default=str(DEFAULT_SHARED),
                        help="directory of tusbench.py and baseline_aiohttp.py")
    parser.add_argument("--work-dir", help="parent of the temp data dirs")
    parser.add_argument("--out", help="directory for JSON lines (default: in the work dir, kept)")
    parser.add_argument("--keep-data", action="store_true")
    parser.add_argument("tusbench", nargs=argparse.REMAINDER,
                        help="after --: arguments for tusbench (default --repeat 3)")
    args = parser.parse_args(argv)
    if args.tusbench and args.tusbench[0] == "--":
        args.tusbench = args.tusbench[1:]
    return sitting(args)


if __name__ == "__main__":
    sys.exit(main())
