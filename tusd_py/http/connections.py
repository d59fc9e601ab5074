"""Connection-level limits, below aiohttp's request handling: a header-read timeout, the
keep-alive timeout, caps on open connections (total and per client address), the
open-file limit raised at start, and accept errors logged once per episode.

aiohttp has a keep-alive timeout but nothing that ends a first request whose line or
headers never finish, and no cap on connections. ``ConnectionGuard`` adds them through
the two calls aiohttp's low-level server already gets for every connection
(``GuardedServer.connection_made`` / ``connection_lost``), so nothing runs per request or
per chunk received; ``GuardedRunner`` makes the app's server a ``GuardedServer``.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from ..config import ServerConfig

log = logging.getLogger("tusd_py.connections")

#: File descriptors kept out of the automatic ``server.max_connections``: the listening
#: sockets, the database and its journal files, the log, hook and object-store clients.
FD_RESERVE = 64
#: A refused connection is answered and closed within this many seconds.
REFUSAL_LINGER = 0.5
#: Beyond this many refused connections still lingering, new ones are closed unanswered.
MAX_LINGERING = 32
#: Refusals and accept errors are logged at most once per this many seconds (counted).
LOG_INTERVAL = 10.0

_REFUSAL_BODY = b"too many connections; retry later\n"
REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Content-Length: " + str(len(_REFUSAL_BODY)).encode() + b"\r\nRetry-After: 1\r\n"
           b"Tus-Resumable: 1.0.0\r\nConnection: close\r\n\r\n" + _REFUSAL_BODY)
HEADER_TIMEOUT_ANSWER = (b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as Go's runtime does); returns
    (before, after). Left as it is where the system refuses."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft >= hard:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft, soft
    return soft, hard


def automatic_max_connections() -> int:
    """Half of what the open-file limit leaves after ``FD_RESERVE``: an upload in
    progress holds its socket and its file."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, (soft - FD_RESERVE) // 2)


class _Throttled:
    """One log line per ``LOG_INTERVAL`` for a recurring condition, with the count."""

    def __init__(self) -> None:
        self.last = 0.0
        self.unlogged = 0

    def log(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if self.last and now - self.last < LOG_INTERVAL:
            self.unlogged += 1
            return
        more = f" ({self.unlogged} more since the last line)" if self.unlogged else ""
        self.last, self.unlogged = now, 0
        log.warning(message + "%s", *args, more)


class ConnectionGuard:
    """The open connections of one daemon, total and per client address, and what a
    connection may take: ``header_timeout`` for its request line and headers."""

    def __init__(self, server: ServerConfig, *, max_connections: int | None = None) -> None:
        self.header_timeout = server.header_timeout
        #: Connections waiting for their first request's line and headers, with the
        #: loop time it must be complete by; one periodic check ends those past it (a
        #: timer per connection would cost more than the rest of the guard together).
        self.awaiting: dict[RequestHandler, float] = {}
        #: Refused connections not closed yet.
        self.refused_connections: set[RequestHandler] = set()
        self._check_every = max(0.05, min(1.0, self.header_timeout / 4))
        self._checker: asyncio.Task[None] | None = None
        self.max_total = max_connections or server.max_connections or automatic_max_connections()
        self.max_per_address = server.max_connections_per_address
        self.total = 0
        self.per_address: dict[str, int] = {}
        #: The client address of each open connection (with a per-address cap only).
        self.addresses: dict[RequestHandler, str] = {}
        self.lingering = 0
        self._refusals = _Throttled()
        self._accept_errors = _Throttled()

    def start(self) -> None:
        """Start the periodic header-timeout check (in the running loop)."""
        if self._checker is None:
            self._checker = asyncio.get_running_loop().create_task(
                self._check_headers(), name="tusd-header-timeout")

    def stop(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            self._checker = None

    async def _check_headers(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._check_every)
            now = loop.time()
            awaiting = self.awaiting
            # aiohttp counts each request whose line and headers it parsed.
            done = [conn for conn, deadline in awaiting.items()
                    if conn._request_count or deadline <= now]
            for conn in done:
                del awaiting[conn]
                if not conn._request_count:
                    _header_timed_out(conn, self.header_timeout)

    def admit(self, address: str) -> bool:
        """Count a new connection from ``address`` ("" when per-address counting is
        off); False if it is over a cap."""
        if self.total >= self.max_total:
            return False
        if self.max_per_address:
            count = self.per_address.get(address, 0)
            if count >= self.max_per_address:
                return False
            self.per_address[address] = count + 1
        self.total += 1
        return True

    def release(self, address: str) -> None:
        self.total -= 1
        if self.max_per_address:
            count = self.per_address[address] - 1
            if count:
                self.per_address[address] = count
            else:
                del self.per_address[address]

    def refuse(self, handler: RequestHandler, transport: asyncio.Transport,
               address: str) -> None:
        """Answer 503 and close within ``REFUSAL_LINGER`` (unanswered at once when too many
        refusals linger already). The transport is closed only once aiohttp's start() of
        the connection has ended (it must not find the connection lost before it ran)."""
        self._refusals.log("refusing connections: %d open (server.max_connections %d, "
                           "per address %s); latest from %s", self.total, self.max_total,
                           self.max_per_address or "unlimited", address or "a local socket")
        linger = 0.0
        if self.lingering < MAX_LINGERING:
            transport.write(REFUSAL)
            if transport.can_write_eof():
                transport.write_eof()
            linger = REFUSAL_LINGER
        self.lingering += 1
        self.refused_connections.add(handler)
        loop = asyncio.get_running_loop()

        def close_later(_: object = None) -> None:
            loop.call_later(linger, transport.abort)

        def after_start() -> None:  # runs before the start() task's first step
            task = handler._task_handler
            if task is None or task.done():
                close_later()
            else:
                task.add_done_callback(close_later)

        loop.call_soon(after_start)

    def loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The loop's exception handler: accept() failing for want of file descriptors
        (asyncio pauses accepting for a second and reports every attempt) is logged
        once per episode; anything else as asyncio would."""
        exc = context.get("exception")
        if isinstance(exc, OSError) and "accept" in str(context.get("message", "")):
            self._accept_errors.log("cannot accept connections: %s (%d open; the open-file "
                                    "limit is %d)", exc.strerror, self.total,
                                    resource.getrlimit(resource.RLIMIT_NOFILE)[0])
            return
        loop.default_exception_handler(context)


def _peer_address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return peer[0] if isinstance(peer, tuple) else ""  # "" for a unix socket


def _header_timed_out(conn: RequestHandler, timeout: float) -> None:
    """No complete first request within ``timeout``: answer 408 and close."""
    if conn.transport is None:
        return
    conn.transport.write(HEADER_TIMEOUT_ANSWER)
    log.debug("closed a connection: no complete request line and headers within %gs", timeout)
    conn.force_close()


class GuardedServer(web.Server):
    """The app's low-level server with the guard's limits. aiohttp calls these two for
    every connection (from ``RequestHandler.connection_made`` before it starts reading,
    and from its ``connection_lost``): a connection over a cap is refused there (marked
    force-closed, so aiohttp never reads from it), and one whose first request has not
    arrived within ``header_timeout`` is closed by the guard's check. Between requests,
    and for a later request's headers, aiohttp's keep-alive timeout applies."""

    guard: ConnectionGuard

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        guard = self.guard
        if guard.max_per_address:
            address = _peer_address(transport)
            admitted = guard.admit(address)
            if admitted:
                guard.addresses[handler] = address
        elif guard.total < guard.max_total:  # admit(), inline: this is every connection
            guard.total += 1
            admitted = True
        else:
            address, admitted = _peer_address(transport), False
        if not admitted:
            handler._force_close = True  # its start() ends at once; data_received drops data
            guard.refuse(handler, transport, address)
            return
        self._connections[handler] = transport
        guard.awaiting[handler] = self._loop.time() + guard.header_timeout

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        guard = self.guard
        if guard.lingering and handler in guard.refused_connections:
            guard.refused_connections.discard(handler)
            guard.lingering -= 1
            return
        guard.awaiting.pop(handler, None)
        if guard.max_per_address:
            guard.release(guard.addresses.pop(handler, ""))
        else:
            guard.total -= 1
        web.Server.connection_lost(self, handler, exc)


class GuardedRunner(web.AppRunner):
    """``web.AppRunner`` whose server is a ``GuardedServer``; keep-alive connections close
    after ``server.keepalive_timeout`` idle."""

    __slots__ = ("guard",)

    def __init__(self, app: web.Application, guard: ConnectionGuard,
                 keepalive_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, keepalive_timeout=keepalive_timeout, **kwargs)
        self.guard = guard

    async def setup(self) -> None:
        await super().setup()
        self.guard.start()

    async def cleanup(self) -> None:
        self.guard.stop()
        await super().cleanup()

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # Application._make_handler builds a plain Server; a GuardedServer only differs
        # in connection_made/connection_lost, so the object is reused as one.
        server.__class__ = GuardedServer
        cast(GuardedServer, server).guard = self.guard
        return server
