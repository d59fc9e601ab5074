"""The part uploads of one write lock (S3 parts, GCS part objects, Azure blocks): started
while the body keeps arriving, at most ``concurrency`` in flight, collected in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, Generic, TypeVar

__all__ = ["PartUploads"]

T = TypeVar("T")


class PartUploads(Generic[T]):
    """A lock's part uploads: those in flight (tasks, oldest first, each with the size of
    its body) and those collected since the last commit (``done``, in order).

    A lock awaits ``room`` before each ``start``, so at most ``concurrency`` uploads (and
    their bodies) are in flight. An upload that fails is raised by the wait that collects
    it, once the others in flight have ended too."""

    __slots__ = ("_flight", "_flight_size", "concurrency", "done", "done_size")

    def __init__(self, concurrency: int = 1) -> None:
        self.concurrency = concurrency
        self._flight: list[tuple[asyncio.Task[T], int]] = []
        self._flight_size = 0
        #: What the collected uploads returned, in the order they were started.
        self.done: list[T] = []
        #: The body bytes of the collected uploads.
        self.done_size = 0

    @property
    def in_flight(self) -> int:
        """Uploads started and not yet collected."""
        return len(self._flight)

    @property
    def count(self) -> int:
        """Uploads in flight or collected."""
        return len(self._flight) + len(self.done)

    @property
    def size(self) -> int:
        """Body bytes of the uploads in flight or collected."""
        return self._flight_size + self.done_size

    def start(self, upload: Coroutine[Any, Any, T], size: int) -> None:
        """Run ``upload`` (of a body of ``size`` bytes) as a task of its own."""
        task = asyncio.get_running_loop().create_task(upload)
        self._flight.append((task, size))
        self._flight_size += size

    async def room(self) -> None:
        """Wait until fewer than ``concurrency`` uploads are in flight (oldest first,
        each collected)."""
        while len(self._flight) >= self.concurrency:
            await self._collect_oldest()

    async def collect(self) -> None:
        """Wait for every upload in flight and collect them, in order."""
        while self._flight:
            await self._collect_oldest()

    async def _collect_oldest(self) -> None:
        task, size = self._flight[0]
        try:
            result = await task
        except BaseException:
            await self.drain()
            raise
        self._flight.pop(0)
        self._flight_size -= size
        self.done.append(result)
        self.done_size += size

    async def drain(self) -> None:
        """Let the uploads in flight finish (or fail) without collecting them."""
        flight, self._flight = self._flight, []
        self._flight_size = 0
        for task, _ in flight:
            with contextlib.suppress(Exception):
                await task

    def clear(self) -> None:
        """Forget the collected uploads (published, or dropped)."""
        self.done = []
        self.done_size = 0
