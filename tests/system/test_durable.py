"""``storage.fsync: true``: what is acknowledged is on the device, not only in memory.

How this is checked, and what it proves:

* **Page flags at each acknowledgement.** Right after every 204 (and 201), the test maps
  the upload file and reads the kernel's flags of each of its page-cache pages
  (``/proc/self/pagemap`` -> PFN -> ``/proc/kpageflags``). A page that is dirty or under
  writeback holds bytes the device does not have yet: a power cut at that moment would
  lose them. So "no acknowledged page is dirty or in writeback" proves the daemon synced
  the bytes before it answered (the device's own volatile cache is flushed by the
  fdatasync's FLUSH, which no user-space test can observe). The same check in the
  default mode finds dirty pages: it can tell the two apart. The SQLite WAL, where the
  committed offset lives, is checked the same way.
* **O_DIRECT read-back.** The acknowledged bytes are read with ``O_DIRECT`` and compared.
  This proves the bytes the device holds are the acknowledged ones (a read that bypasses
  the page cache), but *not* by itself that they were synced before the answer: Linux
  writes dirty pages back before an O_DIRECT read of them. The page flags prove that.
* **kill -9** under fsync (tests/system/test_crash.py runs in both modes).
* **An entry lost before its first bytes** (power cut after the record, before any byte):
  the daemon makes the empty file again at start and the upload goes on.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

import aiohttp
import pytest

from tests.plugins.local_files import upload_file

from .tusreq import create, get, offset_of, patch

PAGE = mmap.PAGESIZE
KPF_DIRTY, KPF_WRITEBACK = 4, 8  # linux/kernel-page-flags.h
FSYNC = {"TUSD_STORAGE__FSYNC": "true"}


def _can_read_page_flags() -> bool:
    try:
        for name in ("/proc/kpageflags", "/proc/self/pagemap"):
            with open(name, "rb") as f:
                f.read(8)
    except OSError:
        return False
    return True


needs_page_flags = pytest.mark.skipif(not _can_read_page_flags(),
                                      reason="needs /proc/kpageflags (root, Linux)")


def unsynced_pages(path: Path, length: int) -> int:
    """Pages of the first ``length`` bytes of ``path`` that are dirty or under writeback."""
    if length == 0:
        return 0
    pages = (length + PAGE - 1) // PAGE
    fd = os.open(path, os.O_RDWR)
    try:
        with mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as m:
            buffer = (ctypes.c_char * len(m)).from_buffer(m)
            try:
                for i in range(pages):
                    _ = m[i * PAGE]  # fault the page cache page in (a read: nothing dirtied)
                address = ctypes.addressof(buffer)
                with open("/proc/self/pagemap", "rb") as pagemap:
                    pagemap.seek(8 * (address // PAGE))
                    entries = pagemap.read(8 * pages)
                count = 0
                with open("/proc/kpageflags", "rb") as flags:
                    for i in range(pages):
                        entry = int.from_bytes(entries[8 * i:8 * i + 8], "little")
                        assert entry >> 63, "page not present after touching it"
                        pfn = entry & ((1 << 55) - 1)
                        assert pfn, "no PFN in /proc/self/pagemap (not root?)"
                        flags.seek(8 * pfn)
                        value = int.from_bytes(flags.read(8), "little")
                        if value & (1 << KPF_DIRTY | 1 << KPF_WRITEBACK):
                            count += 1
                return count
            finally:
                del buffer
    finally:
        os.close(fd)


def read_direct(path: Path, length: int) -> bytes:
    """The first ``length`` bytes of ``path``, read with O_DIRECT (around the page cache)."""
    size = (length + 4095) // 4096 * 4096
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        buffer = mmap.mmap(-1, max(size, 4096))  # page-aligned, as O_DIRECT wants
        try:
            got = os.preadv(fd, [buffer], 0)
            return bytes(buffer[:min(got, length)])
        finally:
            buffer.close()
    finally:
        os.close(fd)


def upload_path(data_dir: Path, url: str) -> Path:
    return upload_file(data_dir, url.rsplit("/", 1)[1])


@needs_page_flags
async def test_every_acknowledged_byte_is_off_the_page_cache(daemon_factory, tmp_path):
    data_dir = tmp_path / "durable"
    daemon = daemon_factory(env=FSYNC, data_dir=data_dir)
    data = os.urandom(3 * 1024 * 1024 + 12345)
    wal = data_dir / "uploads.db-wal"
    async with aiohttp.ClientSession() as session:
        url = await create(session, daemon.url, len(data))
        path = upload_path(data_dir, url)
        offset = 0
        for step in (4096, 1, 300_000, 1 << 20, len(data)):
            chunk = data[offset:offset + step]
            r = await patch(session, url, offset, chunk)
            assert r.status == 204
            offset = int(r.headers["Upload-Offset"])
            assert unsynced_pages(path, offset) == 0, "acknowledged bytes still only in memory"
            assert unsynced_pages(wal, wal.stat().st_size) == 0, "committed offset not synced"
            assert read_direct(path, offset) == data[:offset]
        assert offset == len(data)
        assert await get(session, url) == data


@needs_page_flags
async def test_the_default_mode_acknowledges_from_the_page_cache(daemon_factory, tmp_path):
    """The control: without fsync the same check sees dirty pages (kill -9 safe only)."""
    data_dir = tmp_path / "fast"
    daemon = daemon_factory(data_dir=data_dir)
    data = os.urandom(4 << 20)
    async with aiohttp.ClientSession() as session:
        url = await create(session, daemon.url, len(data))
        r = await patch(session, url, 0, data)
        assert r.status == 204
        assert unsynced_pages(upload_path(data_dir, url), len(data)) > 0


async def test_an_entry_lost_before_its_first_bytes_is_made_again(daemon_factory, tmp_path):
    """A power cut after a creation's record was synced and before its file's entry was
    (durable mode syncs that with the first bytes): the upload is back, empty, and goes on."""
    data_dir = tmp_path / "data"
    first = daemon_factory(env=FSYNC, data_dir=data_dir)
    async with aiohttp.ClientSession() as session:
        url = await create(session, first.url, 10)
    first.kill()
    upload_path(data_dir, url).unlink()  # the entry the power cut took
    second = daemon_factory(env=FSYNC, data_dir=data_dir, port=first.port)
    async with aiohttp.ClientSession() as session:
        assert await offset_of(session, url) == 0
        assert (await patch(session, url, 0, b"0123456789")).status == 204
        assert await get(session, url) == b"0123456789"
    second.terminate()
