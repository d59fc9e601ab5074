"""Parallel uploads: one file as several partial uploads sent at once, concatenated
into a final upload (the concatenation extension), resumable across runs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import UploadNotFound
from .uploader import Progress, Source, Uploader, encode_metadata

if TYPE_CHECKING:
    from .client import TusClient

log = logging.getLogger("tusd_py.client")

T = TypeVar("T")


def split_ranges(size: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` (start, length) ranges covering ``size`` bytes, as equal as possible."""
    parts = max(1, min(parts, size))
    step, extra = divmod(size, parts)
    ranges, start = [], 0
    for i in range(parts):
        length = step + (1 if i < extra else 0)
        ranges.append((start, length))
        start += length
    return ranges


async def upload_parallel(client: TusClient, src: Source, metadata: dict[str, str | bytes | None],
                           progress: Progress | None, parallel: int, chunk_size: int | None,
                           on_resume: Callable[[int, int | None], Any] | None) -> str:
    assert src.length is not None
    fingerprint = None
    if client.url_storage is not None:
        fingerprint = await src.fingerprint(client.fingerprinter)
        final = await stored_final(client, fingerprint, src.length)
        if final is not None:
            if on_resume:
                on_resume(src.length, src.length)
            if progress:
                progress(src.length, src.length)
            return final
    ranges = split_ranges(src.length, parallel)
    n = len(ranges)
    parts = [
        Uploader(client, src.part(start, length), chunk_size=chunk_size, partial=True,
                 fingerprint=f"{fingerprint}--part:{i + 1}/{n}" if fingerprint else None,
                 forget_when_done=False)
        for i, (start, length) in enumerate(ranges)
    ]
    await _all(p.prepare() for p in parts)
    if on_resume and any(p.resumed_from is not None for p in parts):
        on_resume(sum(p.offset for p in parts), src.length)
    done = [p.offset for p in parts]

    def part_progress(i: int) -> Progress:
        def report(offset: int, _total: int | None) -> None:
            done[i] = offset
            if progress:
                progress(sum(done), src.length)
        return report

    urls = await _all(p.upload(part_progress(i)) for i, p in enumerate(parts))
    headers = {"Upload-Concat": "final;" + " ".join(urls)}
    if metadata:
        headers["Upload-Metadata"] = encode_metadata(metadata)
    # Creation is retried like any POST: if an attempt reached the server but its answer
    # was lost, that final is an orphan (the parts stay intact; the server expires it).
    resp = await client.request("POST", client.url, headers, expect=(201,), what="create final upload")
    final = client.location(resp)
    if fingerprint is not None:
        # Stored before the parts are forgotten: a run that dies in between finds the
        # final (see stored_final) instead of creating a second one from the parts.
        assert client.url_storage is not None
        key = client.storage_key(fingerprint)
        await asyncio.to_thread(client.url_storage.set_url, key, final)
        for p in parts:
            await p.forget()
        await asyncio.to_thread(client.url_storage.remove_url, key)
    return final

async def stored_final(client: TusClient, fingerprint: str, length: int) -> str | None:
    """A final upload of this file that an earlier run created but did not finish
    cleaning up after (its parts' entries are forgotten now)."""
    assert client.url_storage is not None
    key = client.storage_key(fingerprint)
    url = await asyncio.to_thread(client.url_storage.get_url, key)
    if not url:
        return None
    try:
        info = await client.info(url)
    except UploadNotFound:
        await asyncio.to_thread(client.url_storage.remove_url, key)
        return None
    if not (info.concat or "").startswith("final;") or info.length != length:
        return None  # an ordinary upload of the whole file: not this path's business
    log.info("%s: final upload created by an earlier run", url)
    await forget_parts(client, fingerprint, len((info.concat or "")[6:].split()))
    await asyncio.to_thread(client.url_storage.remove_url, key)
    return url

async def forget_parts(client: TusClient, fingerprint: str, n: int) -> None:
    assert client.url_storage is not None
    for i in range(n):
        for key in client.lookup_keys(f"{fingerprint}--part:{i + 1}/{n}"):
            await asyncio.to_thread(client.url_storage.remove_url, key)

async def _all(coros: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run concurrently; the first failure cancels the others and is raised as is."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in coros]
    except BaseExceptionGroup as group_error:
        raise group_error.exceptions[0] from None
    return [t.result() for t in tasks]
