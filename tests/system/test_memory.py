"""Memory per in-flight upload is bounded on every driver: a 256 MiB upload, in one PATCH
or in 64 MiB PATCHes, grows the daemon's RSS by no more than its part buffers may hold,
and the bytes read back by GET are the bytes sent."""

from __future__ import annotations

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
