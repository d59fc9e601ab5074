"""A thin synchronous wrapper around :class:`TusClient` for scripts.

Each instance runs its own event loop (``asyncio.Runner``); use it from plain,
non-async code only::

    with SyncTusClient("http://localhost:8080/files/") as client:
        url = client.upload("video.mp4", metadata={"filetype": "video/mp4"})
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from typing import IO, Any

from .client import TusClient, UploadInfo
from .uploader import Progress

__all__ = ["SyncTusClient"]


class SyncTusClient:
    """Same constructor arguments as :class:`TusClient`; same methods, blocking."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self._runner = asyncio.Runner()
        self.client: TusClient = self._runner.run(self._make(url, kwargs))

    @staticmethod
    async def _make(url: str, kwargs: dict[str, Any]) -> TusClient:
        return TusClient(url, **kwargs)  # built inside the loop it will run on

    def upload(self, source: Any, *, metadata: Mapping[str, str | bytes | None] | None = None,
               progress: Progress | None = None, parallel: int = 1,
               chunk_size: int | None = None,
               on_resume: Callable[[int, int | None], Any] | None = None) -> str:
        return self._runner.run(self.client.upload(
            source, metadata=metadata, progress=progress, parallel=parallel,
            chunk_size=chunk_size, on_resume=on_resume))

    def resume(self, url: str, source: Any, *, progress: Progress | None = None,
               chunk_size: int | None = None) -> str:
        return self._runner.run(self.client.resume(url, source, progress=progress,
                                                   chunk_size=chunk_size))

    def info(self, url: str) -> UploadInfo:
        return self._runner.run(self.client.info(url))

    def delete(self, url: str) -> None:
        self._runner.run(self.client.delete(url))

    def download(self, url: str, dest: str | os.PathLike[str] | IO[bytes], *,
                 progress: Progress | None = None) -> int:
        return self._runner.run(self.client.download(url, dest, progress=progress))

    def close(self) -> None:
        try:
            self._runner.run(self.client.close())
        finally:
            self._runner.close()

    def __enter__(self) -> SyncTusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
