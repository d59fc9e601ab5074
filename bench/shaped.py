"""Object stores under real latency, one command: tusd-py (and, on S3, @tus/server with
@tus/s3-store) against an emulator behind a latency- and bandwidth-shaping proxy
(``bench.shaper``), in one sitting, the servers alternating (A B A B ...), a fresh
process each round.

For each server and scenario it reports MB/s, store requests per MiB uploaded, write
amplification (request body bytes sent to the store / bytes uploaded) and the server's
peak RSS, with tusd-py's documented memory bound (its RSS at start + 16 MiB, + part_size
x 2 + 8 MiB for each PATCH in flight, + the S3 tail cache). Scenarios (sizes
configurable): ``single``: one 512 MiB upload in one PATCH; ``p8``, ``p5``, ``p1``:
the same in 8, 5 and 1 MiB PATCHes; ``parallel``: 16 uploads of 64 MiB at once, one
PATCH each.

Usage:
    .venv/bin/python -m bench.shaped                       # S3 (moto): tusd-py vs @tus/s3-store
    .venv/bin/python -m bench.shaped --driver gcs --servers tusd-py --scenarios p1,p5,p8
    .venv/bin/python -m bench.shaped --latency 20ms --bandwidth 50MB --pairs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .emulators import AWS_ENV, AZURE_ACCOUNT, AZURE_KEY, _create_bucket, emulator_process
from .loadgen import MiB, Payload, Scenario, fmt, format_table, parse_size, run_once, uvloop_run
from .run import free_port, stop_process

ROOT = Path(__file__).resolve().parents[1]
TUSD, TUSD_PC1, NODE = "tusd-py", "tusd-py-pc1", "tus-node"
SERVERS = (TUSD, NODE, TUSD_PC1)
SCENARIOS = ("single", "p8", "p5", "p1", "parallel")
#: tusd-py's default storage.part_size, which the bound is computed from.
PART_SIZE = 8 * MiB


def scenario(name: str, args: argparse.Namespace) -> Scenario:
    big = args.big_size
    return {
        "single": Scenario("single", 1, big, big, 1),
        "p8": Scenario("p8", 1, big, 8 * MiB, 1),
        "p5": Scenario("p5", 1, big, 5 * MiB, 1),
        "p1": Scenario("p1", 1, args.p1_size or big, 1 * MiB, 1),
        "parallel": Scenario("parallel", args.par_count, args.par_size, args.par_size,
                             args.par_count),
    }[name]


class Process:
    """A server under test on 127.0.0.1, answering ``/healthz`` once it is up."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.command, self.env, self.log_path = name, command, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, port: int, timeout: float = 60.0) -> Process:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command, env=self.env, cwd=self.log_path.parent,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer /healthz")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc)


def storage_env(driver: str, endpoint: str, bucket: str) -> dict[str, str]:
    """tusd-py's storage settings for ``bucket`` on the emulator reached at ``endpoint``."""
    env = {"TUSD_STORAGE__DRIVER": driver, "TUSD_STORAGE__PREFIX": "bench/"}
    if driver == "s3":
        env.update(TUSD_STORAGE__BUCKET=bucket, TUSD_STORAGE__ENDPOINT_URL=endpoint,
                   TUSD_STORAGE__REGION="us-east-1", **AWS_ENV)
    elif driver == "gcs":
        env.update(TUSD_STORAGE__BUCKET=bucket, TUSD_STORAGE__ENDPOINT_URL=endpoint)
    else:
        env.update(TUSD_STORAGE__CONTAINER=bucket, TUSD_STORAGE__CREATE_CONTAINER="true",
                   TUSD_STORAGE__CONNECTION_STRING=(
                       f"DefaultEndpointsProtocol=http;AccountName={AZURE_ACCOUNT};"
                       f"AccountKey={AZURE_KEY};BlobEndpoint={endpoint}/{AZURE_ACCOUNT};"))
    return env


def server(name: str, driver: str, endpoint: str, bucket: str, work: Path,
           part_concurrency: int | None, lease_duration: str) -> tuple[Process, int, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSD_")}
    if name == NODE:
        env.update(AWS_ENV, S3_ENDPOINT=endpoint, S3_BUCKET=bucket, AWS_REGION="us-east-1",
                   PART_SIZE=str(PART_SIZE))
        command = ["node", str(ROOT / "bench" / "node" / "tus_s3_server.mjs"), str(port)]
    else:
        env.update(storage_env(driver, endpoint, bucket))
        # The sweeper is not part of the data path (and @tus/s3-store has none).
        env.update(TUSD_EXPIRATION__SWEEP_INTERVAL="0", TUSD_SERVER__ACCESS_LOG="false",
                   TUSD_STORAGE__LEASE_DURATION=lease_duration)
        if name == TUSD_PC1:
            env["TUSD_STORAGE__PART_CONCURRENCY"] = "1"
        elif part_concurrency:
            env["TUSD_STORAGE__PART_CONCURRENCY"] = str(part_concurrency)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "tusd_py", "serve", "--host", "127.0.0.1",
                   "--port", str(port)]
    process = Process(name, command, env, work / f"{name}-{port}.log")
    return process, port, f"http://127.0.0.1:{port}/files/"


@contextmanager
def shaper(upstream: str, latency: str, bandwidth: str, work: Path) -> Iterator[tuple[str, str]]:
    """The shaping proxy in a process of its own: (its URL, its control URL)."""
    port, control = free_port(), free_port()
    with open(work / "shaper.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bench.shaper", "--upstream", upstream,
                                 "--port", str(port), "--control-port", str(control),
                                 "--latency", latency, "--bandwidth", bandwidth],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{control}/stats", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the shaper did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{control}"
    finally:
        proc.terminate()
        proc.wait(10)


def control(url: str, path: str) -> dict[str, Any]:
    method = "POST" if path == "/reset" else "GET"
    with urllib.request.urlopen(urllib.request.Request(url + path, method=method,
                                                       data=b"" if method == "POST" else None),
                                timeout=10) as r:
        return dict(json.load(r))


#: What one PATCH costs beyond its two parts that the documentation allows for (a body
#: chunk, the store client's buffers of its parts being sent, allocator slack; measured
#: 2-6 MiB), and what the store clients keep once they have sent parts at all.
PER_PATCH = 8 * MiB
CLIENTS = 16 * MiB
#: The S3 driver's cache of the tail segments it wrote (at most 4 parts).
TAIL_CACHE = 4 * PART_SIZE


def bound_mb(result: dict[str, Any], sc: Scenario, driver: str) -> float:
    """tusd-py's documented bound: RSS at start + CLIENTS + per PATCH in flight
    part_size x 2 (the part filling, one uploading; a PATCH smaller than a part: its
    size and a part) + PER_PATCH; on S3 with PATCHes that leave a tail, its cache."""
    per_patch = min(2 * PART_SIZE, sc.chunk + PART_SIZE) + PER_PATCH
    tail = TAIL_CACHE if driver == "s3" and sc.chunk % PART_SIZE else 0
    return float(result.get("rss_start_mb") or 0) + (
        CLIENTS + tail + sc.concurrency * per_patch) / MiB


async def bench(args: argparse.Namespace) -> int:
    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    scenarios = [scenario(s.strip(), args) for s in args.scenarios.split(",") if s.strip()]
    if args.driver != "s3" and NODE in names:
        names.remove(NODE)  # @tus/s3-store is S3 only
    work = Path(tempfile.mkdtemp(prefix="tusd-shaped-", dir=args.work_dir))
    payload = Payload(max(s.chunk for s in scenarios))
    out = open(args.json_out, "a") if args.json_out else None
    runs: list[dict[str, Any]] = []

    def emit(record: dict[str, Any]) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    emit({"kind": "conditions", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
          "driver": args.driver, "latency": args.latency, "bandwidth": args.bandwidth,
          "loadavg": os.getloadavg(), "cpus": os.cpu_count(), "servers": names,
          "part_concurrency": args.part_concurrency, "lease_duration": args.lease_duration,
          "scenarios": [s.__dict__ for s in scenarios]})
    try:
        with emulator_process(args.driver, work, env={**os.environ, **AWS_ENV}) as emulator:
            buckets = {name: f"bench-{name}" for name in names}
            for bucket in buckets.values():
                _create_bucket(args.driver, emulator, bucket)
            with shaper(emulator, args.latency, args.bandwidth, work) as (endpoint, ctl):
                for round_ in range(1, args.pairs + 1):
                    for name in names:
                        todo = [s for s in scenarios if name != TUSD_PC1 or s.name == "single"]
                        if not todo:
                            continue
                        process, _port, url = server(name, args.driver, endpoint, buckets[name],
                                                     work, args.part_concurrency,
                                                     args.lease_duration)
                        process.start(_port)
                        try:
                            for sc in todo:
                                runs.append(await one(name, sc, round_, url, process, ctl,
                                                      payload, args, emit))
                        finally:
                            process.stop()
    finally:
        if out:
            out.close()
        if any(r["errors"] for r in runs):
            print(f"errors: the servers' logs are kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(report(runs, names, scenarios, args), file=sys.stderr)
    return 1 if any(r["errors"] for r in runs) else 0


async def one(name: str, sc: Scenario, round_: int, url: str, process: Process, ctl: str,
              payload: Payload, args: argparse.Namespace, emit: Any) -> dict[str, Any]:
    control(ctl, "/reset")
    stats: dict[str, Any] = {}

    async def timed_end() -> None:
        stats.update(await asyncio.to_thread(control, ctl, "/stats"))

    load = os.getloadavg()[0]
    result = await run_once(url, sc, payload, pid=process.pid, label=name, run=round_,
                            sync=False, max_seconds=args.max_seconds,
                            request_timeout=args.max_seconds, timed_end=timed_end)
    mib = sc.total_bytes / MiB
    result.update(
        requests=stats.get("requests", {}), store_requests=stats.get("total", 0),
        requests_per_mib=round(stats.get("total", 0) / mib, 2),
        sent=stats.get("sent", 0), write_amplification=round(stats.get("sent", 0) / sc.total_bytes, 3),
        loadavg=load)
    if name != NODE:
        result["bound_mb"] = round(bound_mb(result, sc, args.driver), 1)
    emit(result)
    print(f"  {name:12} {sc.name:8} round {round_}: {fmt(result['mb_s'])} MB/s, "
          f"{result['requests_per_mib']} req/MiB, WA {result['write_amplification']}, "
          f"RSS {fmt(result.get('rss_peak_mb'), 0)} MB"
          + (f" (bound {result['bound_mb']:.0f})" if "bound_mb" in result else "")
          + f", load {load:.2f}, errors {result['errors']}", file=sys.stderr)
    return result


def report(runs: list[dict[str, Any]], names: list[str], scenarios: list[Scenario],
           args: argparse.Namespace) -> str:
    def median(server: str, sc: str, key: str) -> float | None:
        values = [r[key] for r in runs if r["label"] == server and r["scenario"] == sc
                  and r.get(key) is not None]
        return statistics.median(values) if values else None

    rows = [["scenario", "server", "MB/s", "req/MiB", "write ampl.", "peak RSS MB", "bound MB",
             "runs"]]
    lines = []
    for sc in scenarios:
        for name in names:
            n = sum(1 for r in runs if r["label"] == name and r["scenario"] == sc.name)
            if not n:
                continue
            rss, bound = median(name, sc.name, "rss_peak_mb"), median(name, sc.name, "bound_mb")
            rows.append([sc.name, name, fmt(median(name, sc.name, "mb_s")),
                         fmt(median(name, sc.name, "requests_per_mib"), 2),
                         fmt(median(name, sc.name, "write_amplification"), 3), fmt(rss, 0),
                         fmt(bound, 0), str(n)])
            if bound is not None and rss is not None:
                worst = max(r["rss_peak_mb"] - r["bound_mb"] for r in runs
                            if r["label"] == name and r["scenario"] == sc.name)
                lines.append(f"{'PASS' if worst <= 0 else 'MISS'} {sc.name} {name}: peak RSS "
                             f"within the documented bound in every run (worst margin "
                             f"{-worst:.0f} MB)")
        ours, theirs, pc1 = (median(s, sc.name, "mb_s") for s in (TUSD, NODE, TUSD_PC1))
        if ours and theirs:
            ratio = ours / theirs
            target = " (target >= 1.0)" if sc.name == "single" else ""
            lines.append(f"{'PASS' if ratio >= 1 or not target else 'MISS'} {sc.name}: tusd-py / "
                         f"@tus/s3-store MB/s = {ratio:.2f}x{target}")
        if ours and pc1:
            ratio = ours / pc1
            lines.append(f"{'PASS' if ratio >= 4 else 'MISS'} {sc.name}: tusd-py / "
                         f"part_concurrency 1 = {ratio:.2f}x (target >= 4)")
        wa = median(TUSD, sc.name, "write_amplification")
        if sc.name == "p1" and wa is not None and args.driver in ("gcs", "azure"):
            lines.append(f"{'PASS' if wa <= 2 else 'MISS'} p1 write amplification {wa:.2f}x "
                         f"on {args.driver} (target <= 2)")
    head = (f"\n{args.driver} through the shaper ({args.latency} per request, "
            f"{args.bandwidth}/s per connection), medians of {args.pairs} round(s), "
            f"load average now {os.getloadavg()[0]:.2f}\n")
    return head + format_table(rows) + "\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.shaped",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--driver", choices=("s3", "gcs", "azure"), default="s3")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help=f"from {', '.join(SERVERS)} ({TUSD_PC1}: tusd-py with "
                             "part_concurrency 1, single PATCH only; tus-node: S3 only)")
    parser.add_argument("--scenarios", default="single,p8,p1,parallel",
                        help=f"comma-separated, from {', '.join(SCENARIOS)}")
    parser.add_argument("--pairs", type=int, default=3, help="rounds (each server once per round)")
    parser.add_argument("--latency", default="20ms", help="added per request")
    parser.add_argument("--bandwidth", default="50MB", help="per connection and direction")
    parser.add_argument("--part-concurrency", type=int, default=None,
                        help="tusd-py's storage.part_concurrency (default: its default)")
    parser.add_argument("--lease-duration", default="60s",
                        help="tusd-py's storage.lease_duration: on a loaded machine moto "
                             "answers the lease renewals too late for the default 10s (503 "
                             "'storage too slow' during part uploads and at completion)")
    parser.add_argument("--big-size", type=parse_size, default=512 * MiB)
    parser.add_argument("--p1-size", type=parse_size, default=None,
                        help="size of the 1 MiB-PATCH upload (default: --big-size)")
    parser.add_argument("--par-count", type=int, default=16)
    parser.add_argument("--par-size", type=parse_size, default=64 * MiB)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--work-dir")
    args = parser.parse_args(argv)
    return int(uvloop_run(bench(args)))


if __name__ == "__main__":
    sys.exit(main())
