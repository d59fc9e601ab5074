"""A tus 1.0.0 load generator over real HTTP (aiohttp client).

It uses only the core protocol and the creation extension (POST, PATCH, HEAD), so any tus
server can be measured, and optionally GET (byte check) and DELETE (cleanup) outside the
timed phase. Scenarios:

- ``big``: one upload of ``--big-size`` in ``--big-chunk`` PATCHes (MB/s);
- ``many-small``: ``--small-count`` uploads of ``--small-size`` (POST + 1 PATCH each),
  ``--small-conc`` at a time (uploads/s, p50/p99 latency of POST + PATCH);
- ``parallel``: ``--par-count`` concurrent uploads of ``--par-size`` in ``--par-chunk``
  PATCHes (aggregate MB/s).

MB = 10**6 bytes. With ``--pid`` the server's peak RSS (VmRSS sampled every 10 ms from
``/proc/PID/status``, plus VmHWM after a reset through ``/proc/PID/clear_refs``; child
processes, e.g. workers, are added in; the largest one is reported too) and CPU time,
user and system apart (utime and stime of ``/proc/PID/stat``), are recorded per run, as
CPU seconds per GiB of upload data and milliseconds per upload.

Usage: python -m bench.loadgen http://127.0.0.1:8080/files/ --pid 1234 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp

MB = 1_000_000
KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TUS = "1.0.0"
SCENARIOS = ("big", "many-small", "parallel")

_UNITS = {"gib": 1 << 30, "mib": MiB, "kib": KiB, "gb": 10**9, "mb": MB, "kb": 1000,
          "g": 1 << 30, "m": MiB, "k": KiB, "b": 1}


def parse_size(text: str) -> int:
    """``512MiB``, ``16k``, ``1048576`` -> bytes."""
    value = text.strip().lower()
    for suffix, mult in _UNITS.items():
        if value.endswith(suffix):
            return int(float(value[: -len(suffix)]) * mult)
    return int(value)


def percentile(values: Sequence[float], p: float) -> float | None:
    """Linear-interpolated percentile (``p`` in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Scenario:
    name: str
    count: int          # uploads
    size: int           # bytes per upload
    chunk: int          # bytes per PATCH
    concurrency: int    # uploads in flight

    @property
    def total_bytes(self) -> int:
        return self.count * self.size


DEFAULTS = {
    "big": Scenario("big", 1, 512 * MiB, 8 * MiB, 1),
    "many-small": Scenario("many-small", 2000, 16 * KiB, 16 * KiB, 32),
    "parallel": Scenario("parallel", 32, 16 * MiB, 1 * MiB, 32),
}


def add_scenario_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated subset of " + ", ".join(SCENARIOS))
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario (medians are reported)")
    parser.add_argument("--big-size", type=parse_size, default=DEFAULTS["big"].size)
    parser.add_argument("--big-chunk", type=parse_size, default=DEFAULTS["big"].chunk)
    parser.add_argument("--small-count", type=int, default=DEFAULTS["many-small"].count)
    parser.add_argument("--small-size", type=parse_size, default=DEFAULTS["many-small"].size)
    parser.add_argument("--small-conc", type=int, default=DEFAULTS["many-small"].concurrency)
    parser.add_argument("--par-count", type=int, default=DEFAULTS["parallel"].count)
    parser.add_argument("--par-size", type=parse_size, default=DEFAULTS["parallel"].size)
    parser.add_argument("--par-chunk", type=parse_size, default=DEFAULTS["parallel"].chunk)
    parser.add_argument("--verify-bytes", action="store_true",
                        help="after each run, GET every upload and compare its sha256 (untimed)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the untimed HEAD of every upload after a run (each PATCH's "
                             "Upload-Offset is still checked): bench/instructions.sh counts the "
                             "uploads alone")
    parser.add_argument("--no-sync", action="store_true",
                        help="do not os.sync() before each run (by default dirty pages are "
                             "flushed, untimed, so one run's writeback does not bill the next)")
    parser.add_argument("--cleanup", choices=("large", "all", "none"), default="large",
                        help="which uploads to DELETE after each run (untimed): 'large' (>= 1 MiB) "
                             "frees disk without deleting thousands of inodes (on ext4, creating files "
                             "soon after mass deletions costs ~1 ms of kernel CPU each, which would "
                             "bill the next many-small run)")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="time limit of one run")
    parser.add_argument("--request-timeout", type=float, default=120.0)


def scenarios_from(args: argparse.Namespace) -> list[Scenario]:
    chosen = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    for name in chosen:
        if name not in SCENARIOS:
            raise SystemExit(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    table = {
        "big": Scenario("big", 1, args.big_size, args.big_chunk, 1),
        "many-small": Scenario("many-small", args.small_count, args.small_size, args.small_size,
                               args.small_conc),
        "parallel": Scenario("parallel", args.par_count, args.par_size, args.par_chunk, args.par_count),
    }
    return [table[name] for name in chosen]


def is_default(scenario: Scenario) -> bool:
    return DEFAULTS[scenario.name] == scenario


# ------------------------------------------------------------------ payload
class Payload:
    """Deterministic per-upload content from one random block (zero-copy slices).

    Upload ``i`` holds at offset ``x`` the byte ``block[(x + i * STRIDE) % period]``;
    the block is stored twice so any slice up to ``period`` bytes is one memoryview.
    """

    STRIDE = 1_000_003

    def __init__(self, largest_slice: int) -> None:
        self.period = max(largest_slice, 4 * MiB) + 4093
        raw = os.urandom(self.period)
        self.block = memoryview(raw + raw)

    def slice(self, upload: int, offset: int, length: int) -> memoryview:
        start = (offset + upload * self.STRIDE) % self.period
        return self.block[start:start + length]

    def sha256(self, upload: int, size: int) -> str:
        digest = hashlib.sha256()
        offset = 0
        while offset < size:
            n = min(self.period, size - offset)
            digest.update(self.slice(upload, offset, n))
            offset += n
        return digest.hexdigest()


# ------------------------------------------------------------------ server probe
class ProcessProbe:
    """Peak RSS and CPU time (user and system apart) of a server process and its
    children (a pre-forked daemon's workers), from /proc."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.peak_kb = 0
        self.peak_one_kb = 0  # the largest single process (a worker)
        self.start_kb = 0
        self.hwm_reset = False
        self._cpu0 = (0.0, 0.0, 0)
        self._task: asyncio.Task[None] | None = None

    def _pids(self) -> list[int]:
        assert self.pid is not None
        pids, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            try:
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as f:
                        todo.extend(int(c) for c in f.read().split())
            except OSError:
                pass
        return pids

    @staticmethod
    def _status(pid: int) -> dict[str, int]:
        values: dict[str, int] = {}
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, rest = line.split(":", 1)
                    values[key] = int(rest.split()[0])
        return values

    def _rss(self) -> tuple[int, int]:
        """(sum over the tree, largest process) of VmRSS in KiB."""
        total = largest = 0
        for pid in self._pids():
            try:
                rss = self._status(pid).get("VmRSS", 0)
            except OSError:
                continue
            total += rss
            largest = max(largest, rss)
        return total, largest

    def rss_kb(self) -> int:
        return self._rss()[0]

    def cpu(self) -> tuple[float, float, int]:
        """(user CPU s, system CPU s, minor faults) of the tree (``stat_totals``)."""
        return stat_totals(self._pids())

    def cpu_s(self) -> float:
        user, system, _ = self.cpu()
        return user + system

    async def start(self) -> None:
        if not self.pid:
            return
        for pid in self._pids():
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM to the current RSS
                self.hwm_reset = True
            except OSError:
                self.hwm_reset = False
        self.start_kb, self.peak_one_kb = self._rss()
        self.peak_kb = self.start_kb
        self._cpu0 = self.cpu()
        self._task = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            total, largest = self._rss()
            self.peak_kb = max(self.peak_kb, total)
            self.peak_one_kb = max(self.peak_one_kb, largest)
            await asyncio.sleep(0.01)

    async def stop(self) -> dict[str, Any]:
        if not self.pid:
            return {}
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        total, largest = self._rss()
        peak, peak_one = max(self.peak_kb, total), max(self.peak_one_kb, largest)
        alive = True
        try:
            pids = self._pids()
            if self.hwm_reset:
                hwm = [self._status(pid).get("VmHWM", 0) for pid in pids]
                peak_one = max(peak_one, *hwm)
                if len(pids) == 1:
                    peak = max(peak, hwm[0])
            os.kill(self.pid, 0)
        except OSError:
            alive = False
        user, system, minflt = self.cpu()
        user -= self._cpu0[0]
        system -= self._cpu0[1]
        return {"rss_start_mb": round(self.start_kb / 1024, 1), "rss_peak_mb": round(peak / 1024, 1),
                "rss_peak_process_mb": round(peak_one / 1024, 1),
                "cpu_s": round(user + system, 3), "cpu_user_s": round(user, 3),
                "cpu_sys_s": round(system, 3), "minflt": minflt - self._cpu0[2],
                "server_alive": alive}


def stat_totals(pids: Sequence[int]) -> tuple[float, float, int]:
    """Summed user and system CPU seconds and minor page faults of ``pids`` (utime, stime
    and minflt of /proc/PID/stat; the CPU times count in clock ticks, 10 ms here)."""
    user = system = 0.0
    minflt = 0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        minflt += int(fields[7])
        user += int(fields[11]) / tick
        system += int(fields[12]) / tick
    return user, system, minflt


#: Per-run server CPU figures (``cpu_figures``), also medianed in summaries.
CPU_KEYS = ("cpu_s_per_gib", "cpu_user_s_per_gib", "cpu_sys_s_per_gib", "cpu_ms_per_upload",
            "cpu_user_ms_per_upload", "cpu_sys_ms_per_upload")


def cpu_figures(cpu_user_s: float, cpu_sys_s: float, nbytes: int, uploads: int) -> dict[str, float]:
    """Server CPU per GiB of upload data and per upload, user and system apart."""
    figures: dict[str, float] = {}
    if nbytes:
        gib = nbytes / GiB
        figures["cpu_user_s_per_gib"] = round(cpu_user_s / gib, 3)
        figures["cpu_sys_s_per_gib"] = round(cpu_sys_s / gib, 3)
        figures["cpu_s_per_gib"] = round((cpu_user_s + cpu_sys_s) / gib, 3)
    if uploads:
        figures["cpu_user_ms_per_upload"] = round(1000 * cpu_user_s / uploads, 4)
        figures["cpu_sys_ms_per_upload"] = round(1000 * cpu_sys_s / uploads, 4)
        figures["cpu_ms_per_upload"] = round(1000 * (cpu_user_s + cpu_sys_s) / uploads, 4)
    return figures


# ------------------------------------------------------------------ tus client
class UploadFailed(Exception):
    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass
class Errors:
    counts: dict[str, int] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)

    def add(self, kind: str, detail: str = "") -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if len(self.samples) < 5:
            self.samples.append(f"{kind}: {detail}"[:300])

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class TusClient:
    def __init__(self, session: aiohttp.ClientSession, url: str, timeout: float) -> None:
        self.session = session
        self.url = url
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def create(self, length: int) -> str:
        headers = {"Tus-Resumable": TUS, "Upload-Length": str(length),
                   "Upload-Metadata": "filename YmVuY2guYmlu"}
        async with self.session.post(self.url, headers=headers, timeout=self.timeout) as r:
            body = await r.read()
            location = r.headers.get("Location")
            if r.status != 201 or not location:
                raise UploadFailed(f"POST {r.status}", body[:200].decode("latin-1"))
        return urljoin(self.url, location)

    async def patch(self, url: str, offset: int, data: memoryview) -> int:
        headers = {"Tus-Resumable": TUS, "Upload-Offset": str(offset),
                   "Content-Type": "application/offset+octet-stream"}
        async with self.session.patch(url, headers=headers, data=data, timeout=self.timeout) as r:
            body = await r.read()
            if r.status not in (200, 204):
                raise UploadFailed(f"PATCH {r.status}", body[:200].decode("latin-1"))
            new_offset = r.headers.get("Upload-Offset")
        expected = offset + len(data)
        if new_offset != str(expected):
            raise UploadFailed("PATCH Upload-Offset", f"{new_offset} != {expected}")
        return expected

    async def head(self, url: str) -> int | None:
        async with self.session.head(url, headers={"Tus-Resumable": TUS}, timeout=self.timeout) as r:
            if r.status != 200:
                raise UploadFailed(f"HEAD {r.status}")
            value = r.headers.get("Upload-Offset")
        return int(value) if value is not None else None

    async def sha256(self, url: str) -> str:
        digest = hashlib.sha256()
        async with self.session.get(url, headers={"Tus-Resumable": TUS}, timeout=self.timeout) as r:
            if r.status != 200:
                raise UploadFailed(f"GET {r.status}")
            async for chunk in r.content.iter_chunked(1 * MiB):
                digest.update(chunk)
        return digest.hexdigest()

    async def delete(self, url: str) -> None:
        async with self.session.delete(url, headers={"Tus-Resumable": TUS}, timeout=self.timeout) as r:
            await r.read()

    async def upload(self, payload: Payload, index: int, size: int, chunk: int) -> str:
        url = await self.create(size)
        offset = 0
        while offset < size:
            offset = await self.patch(url, offset, payload.slice(index, offset, min(chunk, size - offset)))
        return url


# ------------------------------------------------------------------ one run
async def _for_each(items: Sequence[Any], concurrency: int, job: Any) -> None:
    iterator = iter(items)

    async def worker() -> None:
        for item in iterator:
            await job(item)

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(items))))))


def _classify(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, UploadFailed):
        return exc.kind, exc.detail
    if isinstance(exc, TimeoutError):
        return "timeout", ""
    return type(exc).__name__, str(exc)


async def run_once(url: str, scenario: Scenario, payload: Payload, *, pid: int | None = None,
                   label: str = "", run: int = 1, first_index: int = 0, verify_bytes: bool = False,
                   cleanup: str = "large", sync: bool = True, max_seconds: float = 300.0,
                   request_timeout: float = 120.0, verify: bool = True,
                   timed_end: Callable[[], Awaitable[None]] | None = None) -> dict[str, Any]:
    """One timed run of ``scenario`` against the creation URL ``url``; ``timed_end`` is
    awaited as soon as the timed phase is over (before verification and clean-up)."""
    if sync:
        await asyncio.get_running_loop().run_in_executor(None, os.sync)
    calib_ms = cpu_calibration_ms()
    errors = Errors()
    done: dict[int, str] = {}
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=scenario.concurrency)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                     skip_auto_headers=["User-Agent"]) as session:
        client = TusClient(session, url, request_timeout)

        async def upload(index: int) -> None:
            t0 = time.perf_counter()
            try:
                location = await client.upload(payload, index, scenario.size, scenario.chunk)
            except (TimeoutError, UploadFailed, aiohttp.ClientError, OSError) as exc:
                errors.add(*_classify(exc))
                return
            latencies.append(time.perf_counter() - t0)
            done[index] = location

        indices = list(range(first_index, first_index + scenario.count))
        probe = ProcessProbe(pid)
        await probe.start()
        t0 = time.perf_counter()
        timed_out = False
        try:
            await asyncio.wait_for(_for_each(indices, scenario.concurrency, upload), max_seconds)
        except TimeoutError:
            timed_out = True
            errors.add("run time limit", f"{max_seconds}s")
        wall = time.perf_counter() - t0
        server = await probe.stop()
        if timed_end is not None:
            await timed_end()

        # Untimed: verify offsets (and bytes), then clean up.
        offsets_ok = 0
        bytes_ok = 0

        async def check(index: int) -> None:
            nonlocal offsets_ok, bytes_ok
            location = done[index]
            try:
                offset = await client.head(location)
                if offset != scenario.size:
                    errors.add("verify offset", f"{offset} != {scenario.size}")
                else:
                    offsets_ok += 1
                if verify_bytes:
                    got = await client.sha256(location)
                    want = await asyncio.get_running_loop().run_in_executor(
                        None, payload.sha256, index, scenario.size)
                    if got == want:
                        bytes_ok += 1
                    else:
                        errors.add("verify bytes", f"upload {index}: sha256 differs")
                if cleanup == "all" or (cleanup == "large" and scenario.size >= MiB):
                    await client.delete(location)
            except (TimeoutError, UploadFailed, aiohttp.ClientError, OSError) as exc:
                kind, detail = _classify(exc)
                errors.add("verify " + kind, detail)

        if verify:
            await _for_each(sorted(done), min(scenario.concurrency, 8), check)

    completed = len(done)
    result: dict[str, Any] = {
        "kind": "run", "label": label, "scenario": scenario.name, "run": run,
        "uploads": scenario.count, "size": scenario.size, "chunk": scenario.chunk,
        "concurrency": scenario.concurrency, "completed": completed,
        "offsets_ok": offsets_ok, "bytes_ok": bytes_ok if verify_bytes else None,
        "errors": errors.total, "error_kinds": errors.counts, "error_samples": errors.samples,
        "timed_out": timed_out, "wall_s": round(wall, 3),
        "mb_s": round(completed * scenario.size / MB / wall, 1) if wall else None,
        "uploads_s": round(completed / wall, 1) if wall else None,
        "p50_ms": _ms(percentile(latencies, 50)), "p99_ms": _ms(percentile(latencies, 99)),
        "max_ms": _ms(max(latencies) if latencies else None),
        "calib_ms": calib_ms,
    }
    result.update(server)
    if server.get("cpu_s") is not None and wall:
        result["cpu_pct"] = round(100 * server["cpu_s"] / wall)
    if server.get("cpu_user_s") is not None:
        # server CPU per GiB and per upload: less sensitive to machine noise than rates
        result.update(cpu_figures(server["cpu_user_s"], server["cpu_sys_s"],
                                  completed * scenario.size, completed))
    return result


def cpu_calibration_ms() -> float:
    """Milliseconds for a fixed pure-Python workload (best of 3), taken just before each
    run: it shows how fast the (shared, virtual) CPU was at the time, so drifting machine
    speed can be told apart from a server getting slower."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        total = 0
        for i in range(200_000):
            total += i & 7
        best = min(best, time.perf_counter() - t0)
    return round(best * 1000, 2)


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 2) if seconds is not None else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs of one scenario against one server."""

    def median(key: str) -> float | None:
        values = [r[key] for r in runs if r.get(key) is not None]
        return round(statistics.median(values), 3) if values else None

    summary: dict[str, Any] = {"kind": "summary", "label": runs[0]["label"],
                               "scenario": runs[0]["scenario"], "runs": len(runs)}
    for key in ("mb_s", "uploads_s", "p50_ms", "p99_ms", "wall_s", "cpu_pct", *CPU_KEYS,
                "calib_ms"):
        summary[key] = median(key)
    for key in ("rss_peak_mb", "rss_peak_process_mb"):
        summary[key] = max((r.get(key) or 0 for r in runs), default=None) or None
    summary["errors"] = sum(r["errors"] for r in runs)
    summary["completed"] = sum(r["completed"] for r in runs)
    summary["attempted"] = sum(r["uploads"] for r in runs)
    summary["offsets_ok"] = sum(r["offsets_ok"] for r in runs)
    if any(r.get("bytes_ok") is not None for r in runs):
        summary["bytes_ok"] = sum(r.get("bytes_ok") or 0 for r in runs)
    return summary


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i])
                               for i, cell in enumerate(row)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_table(summaries: list[dict[str, Any]]) -> str:
    """Medians per server and scenario: rates, latency, peak RSS and server CPU per GiB and
    per upload, user and system apart."""
    rows = [["server", "scenario", "MB/s", "uploads/s", "p50 ms", "p99 ms", "peak RSS MB",
             "CPU %", "CPU s/GiB usr+sys", "CPU ms/upload usr+sys", "ok/total", "errors"]]
    for s in summaries:
        rows.append([s["label"], s["scenario"], fmt(s["mb_s"]), fmt(s["uploads_s"]),
                     fmt(s["p50_ms"]), fmt(s["p99_ms"]), rss_text(s),
                     fmt(s["cpu_pct"], 0),
                     f"{fmt(s.get('cpu_user_s_per_gib'), 2)}+{fmt(s.get('cpu_sys_s_per_gib'), 2)}",
                     f"{fmt(s.get('cpu_user_ms_per_upload'), 3)}+"
                     f"{fmt(s.get('cpu_sys_ms_per_upload'), 3)}",
                     f"{s['offsets_ok']}/{s['attempted']}", str(s["errors"])])
    return format_table(rows)


def rss_text(s: dict[str, Any]) -> str:
    """Peak RSS; for several processes (workers) also the largest one's."""
    total, one = s.get("rss_peak_mb"), s.get("rss_peak_process_mb")
    if total is None or one is None or abs(total - one) < 1:
        return fmt(total, 0)
    return f"{fmt(total, 0)} ({fmt(one, 0)}/proc)"


def uvloop_run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    return uvloop.run(coro)


async def _amain(args: argparse.Namespace) -> int:
    scenarios = scenarios_from(args)
    payload = Payload(max(s.chunk for s in scenarios))
    summaries = []
    out = open(args.json_out, "a") if args.json_out else None
    index = 0
    try:
        for scenario in scenarios:
            runs = []
            for run in range(1, args.repeat + 1):
                result = await run_once(
                    args.url, scenario, payload, pid=args.pid, label=args.label, run=run,
                    first_index=index, verify_bytes=args.verify_bytes, cleanup=args.cleanup,
                    sync=not args.no_sync, max_seconds=args.max_seconds,
                    request_timeout=args.request_timeout, verify=not args.no_verify)
                index += scenario.count
                runs.append(result)
                _emit(result, out)
            summary = summarize(runs)
            summaries.append(summary)
            _emit(summary, out)
    finally:
        if out:
            out.close()
    print(summary_table(summaries), file=sys.stderr)
    return 1 if any(s["errors"] for s in summaries) else 0


def _emit(record: dict[str, Any], out: Any) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if out:
        out.write(line + "\n")
        out.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen",
                                     description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("url", help="creation URL, e.g. http://127.0.0.1:8080/files/")
    parser.add_argument("--pid", type=int, help="server PID: sample its peak RSS and CPU")
    parser.add_argument("--label", default="server")
    parser.add_argument("--json-out", type=Path, help="append JSON lines (runs and summaries) here")
    add_scenario_args(parser)
    args = parser.parse_args(argv)
    return int(uvloop_run(_amain(args)))


if __name__ == "__main__":
    sys.exit(main())
