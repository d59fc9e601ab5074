"""Memory per in-flight upload is bounded on every driver: a 256 MiB upload, in one PATCH
or in 64 MiB PATCHes, grows the daemon's RSS by no more than its part buffers may hold,
and the bytes read back by GET are the bytes sent; 16 uploads at once to an object store
slower than the client stay within the documented bound the manifests are sized from."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from pathlib import Path

import aiohttp
import pytest

from tests.plugins.daemon import Daemon, DriverDaemons

from .tusreq import MIB, SeededBody, create, get, get_digest, offset_of, patch

# The bound, per driver, from the documented buffering (README "Where bytes go"):
#
#     peak RSS <= baseline RSS + PARTS_HELD[driver] x part size + SLACK
#
# * baseline: the daemon's VmRSS right before the upload, after a small warm-up upload and
#   GET (imports, SDK clients and connection pools are live by then);
# * part size: the driver's test config (tests/plugins/<driver>.py PART_SIZE): S3 5 MiB,
#   GCS 256 KiB, Azure 1 MiB; the local driver has no parts;
# * PARTS_HELD: what one PATCH may hold: local nothing beyond aiohttp's read buffer (each
#   chunk is written as it comes); S3 one part filling + part_concurrency (1) uploading +
#   the cached tail of the previous PATCH (at most a part) = 3; GCS and Azure one part
#   filling + one in flight = 2;
# * SLACK: allocator and HTTP-client working memory beyond the buffers themselves.
#
# So the bounds are +8 MiB (local), +23 MiB (S3), +8.5 MiB (GCS), +10 MiB (Azure): holding
# one 64 MiB PATCH, or a quarter of the upload, breaks each. The peak is the kernel's
# high-water mark (VmHWM, reset through /proc/PID/clear_refs before the upload): no
# sampling interval can miss it.
SIZE = 256 * MIB
SLACK = 8 * MIB
PARTS_HELD = {"local": 0, "s3": 3, "gcs": 2, "azure": 2}


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def reset_peak(pid: int) -> None:
    """Set the process's VmHWM to its current RSS."""
    with open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")


async def warm_up(session: aiohttp.ClientSession, daemon: Daemon) -> None:
    """A small upload and GET, so everything a big one uses exists before the baseline."""
    url = await create(session, daemon.url, 3 * MIB)
    assert (await patch(session, url, 0, b"w" * (3 * MIB))).status == 204
    assert await get(session, url) == b"w" * (3 * MIB)
    async with session.delete(url, headers={"Tus-Resumable": "1.0.0"}) as r:
        assert r.status == 204


@pytest.mark.slow
@pytest.mark.timeout(360)  # 256 MiB through an emulator: about 60 s on GCS here, more under load
@pytest.mark.parametrize("patch_size", [SIZE, 64 * MIB], ids=["one-patch", "64MiB-patches"])
async def test_a_256mib_upload_keeps_rss_bounded_and_reads_back(
        driver_daemons: DriverDaemons, patch_size: int) -> None:
    daemon = driver_daemons.start()
    bound = PARTS_HELD[driver_daemons.driver] * driver_daemons.part_size + SLACK
    body = SeededBody(seed=patch_size, size=SIZE)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await warm_up(session, daemon)
        url = await create(session, daemon.url, SIZE)
        baseline = status_kib(daemon.pid, "VmRSS") * 1024
        reset_peak(daemon.pid)
        for offset in range(0, SIZE, patch_size):
            r = await patch(session, url, offset, body.part(offset, offset + patch_size))
            assert r.status == 204, r.status
            assert int(r.headers["Upload-Offset"]) == offset + patch_size
        peak = status_kib(daemon.pid, "VmHWM") * 1024
        assert await offset_of(session, url) == SIZE
        assert await get_digest(session, url) == (SIZE, body.digest)
        # Leave nothing in the emulator's memory for the rest of the session.
        async with session.delete(url, headers={"Tus-Resumable": "1.0.0"}) as r:
            assert r.status == 204
    growth = peak - baseline
    print(f"{driver_daemons.driver}: RSS {baseline / MIB:.1f} MiB before, peak "
          f"{peak / MIB:.1f} MiB (+{growth / MIB:.1f} MiB, bound +{bound / MIB:.1f} MiB)")
    assert growth <= bound, (growth / MIB, bound / MIB)


# 16 uploads at once against a store slower than the client (the object-store drivers):
# the bound the deployment manifests size their memory limit from (docs: Object stores
# at scale, "part_concurrency: memory and disk"),
#
#     peak RSS <= idle RSS + CLIENTS + uploads in flight x (part_size x 2 + PER_UPLOAD)
#
# * part_size x 2: the part filling and the one uploading from memory; parts waiting
#   their turn (part_concurrency 10, the default) are in spill files, not in memory;
# * PER_UPLOAD: the rest one PATCH costs (a body chunk, aiohttp's read buffer, the store
#   client's buffers of its parts being sent, the allocator's fragmentation): measured
#   1.7-6.2 MiB with 8 MiB parts (bench.shaped, 16 x 64 MiB);
# * CLIENTS: what the store clients keep once they have sent parts at all (connection
#   pools, their buffers), which the warm-up's single part does not fully start.
#
# The store is slowed by the shaping proxy (bench.shaper: 20 ms per request, 2 MB/s per
# connection), so the client delivers a part in far less than it takes to send one and
# parts queue: the test checks that spill files were open. A PATCH that kept its waiting
# parts in memory (16 x 20 MiB and more) breaks the bound.
PARALLEL = 16
PARALLEL_PART = 5 * MIB
PARALLEL_SIZE = 4 * PARALLEL_PART
PER_UPLOAD = 8 * MIB
CLIENTS = 16 * MIB


def through_shaper(driver: str, env: dict[str, str], stack: contextlib.ExitStack,
                   work: Path) -> dict[str, str]:
    """``env`` with the store reached through a shaping proxy (started on ``stack``)."""
    from bench.shaped import shaper

    if driver == "azure":
        string = env["TUSD_STORAGE__CONNECTION_STRING"]
        blob = re.search(r"BlobEndpoint=(http://[^/;]+)/", string)
        assert blob is not None, string
        url, _control = stack.enter_context(shaper(blob.group(1), "20ms", "2MB", work))
        return {**env, "TUSD_STORAGE__CONNECTION_STRING": string.replace(blob.group(1), url)}
    url, _control = stack.enter_context(
        shaper(env["TUSD_STORAGE__ENDPOINT_URL"], "20ms", "2MB", work))
    return {**env, "TUSD_STORAGE__ENDPOINT_URL": url}


def spill_files(pid: int, spill_dir: Path) -> int:
    """How many files in ``spill_dir`` the process has open now."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith(str(spill_dir))
    return n


@pytest.mark.slow
@pytest.mark.timeout(600)  # 320 MiB through the shaping proxy to an emulator
@pytest.mark.parametrize("driver_daemons", ["s3", "gcs", "azure"], indirect=True)
async def test_16_parallel_uploads_to_a_slower_store_keep_rss_within_the_bound(
        driver_daemons: DriverDaemons, tmp_path: Path) -> None:
    driver = driver_daemons.driver
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    with contextlib.ExitStack() as stack:
        env = through_shaper(driver, driver_daemons.storage_env, stack, tmp_path)
        daemon = driver_daemons.factory(
            env={**env, "TUSD_STORAGE__PART_SIZE": str(PARALLEL_PART),
                 "TUSD_STORAGE__SPILL_DIR": str(spill_dir),
                 "TUSD_STORAGE__LEASE_DURATION": "60s"},  # the shaped store is slow
            data_dir=driver_daemons.data_dir)
        bodies = [SeededBody(seed=1000 + i, size=PARALLEL_SIZE) for i in range(PARALLEL)]
        timeout = aiohttp.ClientTimeout(total=480)
        connector = aiohttp.TCPConnector(limit=PARALLEL + 4)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            await warm_up(session, daemon)
            urls = [await create(session, daemon.url, PARALLEL_SIZE) for _ in bodies]
            baseline = status_kib(daemon.pid, "VmRSS") * 1024
            reset_peak(daemon.pid)
            spilled = 0

            async def watch() -> None:
                nonlocal spilled
                while True:
                    spilled = max(spilled, spill_files(daemon.pid, spill_dir))
                    await asyncio.sleep(0.05)

            watcher = asyncio.create_task(watch())
            try:
                answers = await asyncio.gather(*(
                    patch(session, url, 0, body.part(0, PARALLEL_SIZE))
                    for url, body in zip(urls, bodies, strict=True)))
            finally:
                watcher.cancel()
            peak = status_kib(daemon.pid, "VmHWM") * 1024
            assert [r.status for r in answers] == [204] * PARALLEL
            for url, body in [(urls[0], bodies[0]), (urls[-1], bodies[-1])]:
                assert await get_digest(session, url) == (PARALLEL_SIZE, body.digest)
            for url in urls:  # leave nothing in the emulator's memory
                async with session.delete(url, headers={"Tus-Resumable": "1.0.0"}) as r:
                    assert r.status == 204
    growth = peak - baseline
    bound = PARALLEL * (2 * PARALLEL_PART + PER_UPLOAD) + CLIENTS
    print(f"{driver}: {PARALLEL} x {PARALLEL_SIZE / MIB:.0f} MiB at once: RSS "
          f"{baseline / MIB:.1f} MiB before, peak {peak / MIB:.1f} MiB (+{growth / MIB:.1f} "
          f"MiB, bound +{bound / MIB:.1f} MiB), spill files open at once: {spilled}")
    assert growth <= bound, (growth / MIB, bound / MIB)
    assert spilled > 0, "no part waited its turn: the store was not slower than the client"
