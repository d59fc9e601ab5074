"""Real-socket tools for interruption tests: wait until a peer has read what was sent
(kernel socket queues, from ``/proc/net/tcp``), and a TCP proxy that cuts a connection
mid-body (a network path that breaks, not a mock).

* ``await wait_delivered(writer)``: every byte written on ``writer``'s connection (to
  127.0.0.1) has left our send queue and been read out of the peer's receive queue.
* ``CuttingProxy(upstream_port)``: forwards 127.0.0.1 connections to the upstream port;
  ``cut_after(n)`` resets the next connection that carries more than ``n`` request
  bytes, once. ``offsets`` lists the ``Upload-Offset`` of every request it forwarded.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator

#: Connection states in /proc/net/tcp whose queues we read (ESTABLISHED, CLOSE_WAIT).
_LIVE = {"01", "08"}


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1], 16)


def _sockets() -> Iterator[tuple[int, int, int, int]]:
    """(local port, remote port, send queue, receive queue) of each live IPv4 socket."""
    with open("/proc/net/tcp") as fh:
        next(fh)
        for line in fh:
            fields = line.split()
            if fields[3] not in _LIVE:
                continue
            tx, rx = (int(q, 16) for q in fields[4].split(":"))
            yield _port(fields[1]), _port(fields[2]), tx, rx


def queued(local_port: int, remote_port: int) -> tuple[int, int]:
    """Bytes not yet acknowledged by the peer on our end, and bytes the peer's process
    has not read yet on its end, of the loopback connection ``local_port`` ->
    ``remote_port``. (0, 0) once the peer has read everything sent."""
    ours = theirs = 0
    for local, remote, tx, rx in _sockets():
        if (local, remote) == (local_port, remote_port):
            ours = tx
        elif (local, remote) == (remote_port, local_port):
            theirs = rx
    return ours, theirs


async def wait_delivered(writer: asyncio.StreamWriter, limit: float = 30.0) -> None:
    """Wait until the peer process has read every byte written on ``writer`` (our
    buffer and both kernel queues are empty). The peer may still hold the last bytes in
    its own user-space buffer (aiohttp: less than its read-ahead limit)."""
    await writer.drain()
    local_port = writer.get_extra_info("sockname")[1]
    remote_port = writer.get_extra_info("peername")[1]
    async with asyncio.timeout(limit):
        while writer.transport.get_write_buffer_size() or any(queued(local_port, remote_port)):
            await asyncio.sleep(0.01)


_OFFSET = re.compile(rb"\r\nUpload-Offset: *(\d+)\r\n", re.IGNORECASE)


class CuttingProxy:
    """A threaded TCP proxy on 127.0.0.1 in front of ``upstream_port``: bytes pass both
    ways unchanged, until ``cut_after(n)`` arms it; then the first connection to carry
    more than ``n`` request bytes is reset on both sides (RST, as when a path breaks)
    right after byte ``n`` went through. Usable from sync and async tests alike."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._cut_at: int | None = None
        #: Connections cut so far.
        self.cuts = 0
        #: Upload-Offset of each request forwarded (in the order they came).
        self.offsets: list[int] = []
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._open: set[socket.socket] = set()
        accept = threading.Thread(target=self._accept, name="cutting-proxy", daemon=True)
        accept.start()
        self._threads.append(accept)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut_after(self, n: int) -> None:
        """Reset the next connection once it has forwarded ``n`` request bytes."""
        with self._lock:
            self._cut_at = n

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self._open.update((client, upstream))
            connection = _Connection(self, client, upstream)
            for target in (connection.requests, connection.responses):
                thread = threading.Thread(target=target, daemon=True)
                thread.start()
                self._threads.append(thread)

    def _take_cut(self, forwarded: int, chunk: int) -> int | None:
        """How many bytes of the next ``chunk`` go through before this connection is cut
        (None: no cut is due)."""
        with self._lock:
            if self._cut_at is None or forwarded + chunk <= self._cut_at:
                return None
            keep = max(0, self._cut_at - forwarded)
            self._cut_at = None
            self.cuts += 1
            return keep

    def _record_offsets(self, tail: bytes, data: bytes) -> None:
        """Offsets in ``data`` (``tail``: the end of the previous read, already searched,
        for a header split across reads)."""
        found = [int(m.group(1)) for m in _OFFSET.finditer(tail + data) if m.end() > len(tail)]
        with self._lock:
            self.offsets.extend(found)

    def close(self) -> None:
        self._closing = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close would not)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            sockets = list(self._open)
        for s in sockets:
            _reset(s)
        for thread in self._threads:
            thread.join(5)


def _reset(s: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a broken path looks to both ends. (The read
    shutdown wakes the other direction's thread blocked on this socket: the kernel
    releases the socket, and sends the RST, only once no call is using it.)"""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    s.close()


def _wait_read(s: socket.socket, timeout: float = 10.0) -> None:
    """Until the peer process has read everything sent on ``s`` (or ``timeout``)."""
    local_port, remote_port = s.getsockname()[1], s.getpeername()[1]
    deadline = time.monotonic() + timeout
    while any(queued(local_port, remote_port)) and time.monotonic() < deadline:
        time.sleep(0.005)


class _Connection:
    """One proxied connection: a thread per direction."""

    def __init__(self, proxy: CuttingProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy, self.client, self.upstream = proxy, client, upstream
        self.forwarded = 0
        self.cut = False
        self._tail = b""  # the end of the last chunk, for headers split across reads

    def requests(self) -> None:
        try:
            while data := self.client.recv(65536):
                keep = self.proxy._take_cut(self.forwarded, len(data))
                if keep is not None:
                    self.upstream.sendall(data[:keep])
                    _wait_read(self.upstream)  # byte n reached the upstream process
                    self.cut = True
                    _reset(self.upstream)
                    _reset(self.client)
                    return
                self.proxy._record_offsets(self._tail, data)
                self._tail = data[-64:]
                self.upstream.sendall(data)
                self.forwarded += len(data)
            self.upstream.shutdown(socket.SHUT_WR)
        except OSError:
            self._close()

    def responses(self) -> None:
        try:
            while data := self.upstream.recv(65536):
                self.client.sendall(data)
            self.client.shutdown(socket.SHUT_WR)
        except OSError:
            self._close()

    def _close(self) -> None:
        for s in (self.client, self.upstream):
            try:
                s.close()
            except OSError:
                pass
