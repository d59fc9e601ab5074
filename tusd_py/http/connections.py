"""Connection-level limits, below aiohttp's request handling: a header-read timeout, the
keep-alive timeout, caps on open connections (total and per client address), the
open-file limit raised at start, and accept errors logged once per episode.

aiohttp has a keep-alive timeout but nothing that ends a request whose line or headers
never finish, and no cap on connections: ``GuardedHandler`` (its ``RequestHandler`` with
a timer per connection) and ``ConnectionGuard`` add them; ``GuardedRunner`` makes the
app's server build ``GuardedHandler`` connections.
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
        #: Connections waiting for a request's line and headers (``GuardedHandler``); one
        #: periodic check ends those past their deadline (a timer per connection would
        #: cost more than the rest of the guard together).
        self.awaiting: set[GuardedHandler] = set()
        self._check_every = max(0.05, min(1.0, self.header_timeout / 4))
        self._checker: asyncio.Task[None] | None = None
        self.max_total = max_connections or server.max_connections or automatic_max_connections()
        self.max_per_address = server.max_connections_per_address
        self.total = 0
        self.per_address: dict[str, int] = {}
        self.lingering = 0
        self.refused = 0
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
            late = [conn for conn in self.awaiting if conn.header_deadline <= now]
            for conn in late:
                self.awaiting.discard(conn)
                conn.header_deadline = 0.0
                conn.header_timed_out()

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

    def refuse(self, transport: asyncio.Transport, address: str) -> bool:
        """Answer 503 and close (within ``REFUSAL_LINGER``), or close at once when too
        many refusals linger already; True if it lingers (``refusal_closed`` follows)."""
        self.refused += 1
        self._refusals.log("refusing connections: %d open (server.max_connections %d, "
                           "per address %s); latest from %s", self.total, self.max_total,
                           self.max_per_address or "unlimited", address or "a local socket")
        if self.lingering >= MAX_LINGERING:
            transport.abort()
            return False
        self.lingering += 1
        transport.write(REFUSAL)
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(REFUSAL_LINGER, transport.abort)
        return True

    def refusal_closed(self) -> None:
        self.lingering -= 1

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


class GuardedHandler(RequestHandler):
    """aiohttp's connection protocol with the guard's limits: refused over a cap, and
    closed (408) when a request's line and headers take longer than ``header_timeout``
    (from the connection's start, or from the first byte of a later request; between
    requests aiohttp's keep-alive timeout applies). Base methods are called by name, not
    through ``super()``: this runs for every connection and every chunk received."""

    __slots__ = ("_address", "_guard", "_refused", "header_deadline")

    def __init__(self, manager: web.Server, guard: ConnectionGuard, **kwargs: Any) -> None:
        RequestHandler.__init__(self, manager, **kwargs)
        self._guard = guard
        self._address: str | None = None
        self._refused = False
        #: Loop time by which the headers must be complete while waiting for them, else 0.
        self.header_deadline = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self._guard
        address = ""
        if guard.max_per_address:
            peer = transport.get_extra_info("peername")
            address = peer[0] if isinstance(peer, tuple) else ""
        if not guard.admit(address):
            self._force_close = True  # data_received drops whatever it sends
            if guard.max_per_address == 0:
                peer = transport.get_extra_info("peername")
                address = peer[0] if isinstance(peer, tuple) else ""
            self._refused = guard.refuse(cast(asyncio.Transport, transport), address)
            return
        self._address = address
        RequestHandler.connection_made(self, transport)
        self.header_deadline = self._loop.time() + guard.header_timeout
        guard.awaiting.add(self)

    def data_received(self, data: bytes) -> None:
        parsed = self._request_count  # aiohttp counts each request whose headers it parsed
        RequestHandler.data_received(self, data)
        if self.header_deadline:
            if self._request_count != parsed:  # the headers are complete
                self.header_deadline = 0.0
                self._guard.awaiting.discard(self)
        elif (self._request_count == parsed and (waiter := self._waiter) is not None
              and not waiter.done()):  # idle between requests: the next one's first bytes
            self.header_deadline = self._loop.time() + self._guard.header_timeout
            self._guard.awaiting.add(self)

    def header_timed_out(self) -> None:
        """Called by the guard past ``header_deadline``: answer 408 and close."""
        if self._force_close:
            return
        if self.transport is not None:
            self.transport.write(HEADER_TIMEOUT_ANSWER)
        log.debug("closed a connection: no complete request line and headers within %gs",
                  self._guard.header_timeout)
        self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            self._refused = False
            self._guard.refusal_closed()
            return
        if self.header_deadline:
            self.header_deadline = 0.0
            self._guard.awaiting.discard(self)
        address = self._address
        if address is not None:
            self._address = None
            self._guard.release(address)
        RequestHandler.connection_lost(self, exc)


class GuardedServer(web.Server):
    """The app's low-level server, building ``GuardedHandler`` connections."""

    guard: ConnectionGuard

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, self.guard, loop=self._loop, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """``web.AppRunner`` whose connections are ``GuardedHandler``; keep-alive connections
    close after ``server.keepalive_timeout`` idle."""

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
        # Application._make_handler builds a plain Server; only its protocol factory
        # (__call__) differs, so the object is reused as a GuardedServer.
        server.__class__ = GuardedServer
        cast(GuardedServer, server).guard = self.guard
        return server
