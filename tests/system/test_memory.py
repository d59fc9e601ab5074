"""Memory per in-flight upload is bounded: one huge PATCH does not grow the daemon."""

from __future__ import annotations

import aiohttp

from .tusreq import create, offset_of, patch

MIB = 1024 * 1024


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(field)


async def test_one_256mib_patch_keeps_rss_bounded(daemon):
    size = 256 * MIB
    block = bytes(range(256)) * 4096  # 1 MiB

    async def body():
        for _ in range(size // MIB):
            yield block

    async with aiohttp.ClientSession() as session:
        url = await create(session, daemon.url, size)
        before = rss_kib(daemon.pid)
        with open(f"/proc/{daemon.pid}/clear_refs", "w") as fh:
            fh.write("5")  # reset the high-water mark to the current RSS
        r = await patch(session, url, 0, body())
        assert r.status == 204
        peak = rss_kib(daemon.pid, "VmHWM")
        assert await offset_of(session, url) == size
    growth_mib = (peak - before) / 1024
    print(f"daemon RSS before {before / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB "
          f"during a 256 MiB PATCH (growth {growth_mib:.1f} MiB)")
    assert growth_mib < 24, growth_mib
