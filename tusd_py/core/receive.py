"""The body loop: a request body streamed into an upload's storage lock, how it ended
(``Outcome``), and what a body that was cut short answers (``interrupted``)."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp.http_exceptions import HttpProcessingError

from ..protocol.errors import BadRequest, ServiceUnavailable, TusError
from .writers import StopReason, Writer, WriterRegistry

if TYPE_CHECKING:
    from aiohttp import StreamReader, web

    from ..protocol.checksum import Hasher
    from ..storage.base import UploadLock
    from .events import EventBus


class Outcome(enum.Enum):
    COMPLETE = "complete"  # the body ended normally
    DISCONNECTED = "disconnected"  # the client went away mid-body
    TOO_LARGE = "too-large"  # more bytes than the upload may take
    STOPPED = "stopped"  # idle timeout, takeover, shutdown or hook (see writer.stop_reason)
    CANCELLED = "cancelled"  # the handler task was cancelled (servers that cancel on disconnect)


class BodyReceiver:
    """Streams request bodies into storage locks, every read under an idle deadline."""

    def __init__(self, writers: WriterRegistry, events: EventBus, idle_timeout: float,
                 min_rate: tuple[int, float] = (0, 1.0)) -> None:
        self.idle_deadline = writers.idle_deadline
        self.events = events
        #: (bytes, seconds): every window of a body must bring that many bytes.
        self.min_bytes, self.rate_window = min_rate
        # The idle deadline moves with every chunk; rescheduling its timer costs a timer
        # handle, so it is only moved once it lags by more than ``slack`` (or must come
        # sooner: a takeover or shutdown).
        self.slack = min(0.25, idle_timeout / 10)

    async def receive(self, request: web.Request, writer: Writer, lock: UploadLock,
                      room: int | None, hasher: Hasher | None) -> Outcome:
        """Stream the request body into ``lock`` until it ends, breaks, stalls or overflows
        (``room``: bytes the upload may still take, None for no limit).

        Memory is bounded by aiohttp's stream buffer (the chunks it hands over), never by
        what the client sends. Every read has a deadline (``idle_timeout``, shortened
        when another request wants the upload or the daemon stops), and each window of
        ``rate_window`` seconds must bring ``min_bytes`` (checked as chunks arrive, so a
        trickle is ended within a window plus one idle timeout). A body already all
        buffered, for a driver whose writes never wait, is read without any of that
        (``_receive_buffered``).
        """
        content = request.content
        write_nowait = lock.write_nowait
        if write_nowait is not None and content.is_eof():
            return await _receive_buffered(content, write_nowait, room, hasher)
        idle_deadline = self.idle_deadline
        loop = asyncio.get_running_loop()
        received = 0
        slack = self.slack
        # Listeners that want progress during a long body (post-receive hooks) set it.
        interval = self.events.receiving_interval
        next_tick = loop.time() + interval if interval > 0 else None
        min_bytes, rate_window = self.min_bytes, self.rate_window
        window_end = loop.time() + rate_window if min_bytes else None
        window_start_received = 0
        try:
            async with asyncio.timeout(None) as scope:
                # From here another task can stop this read by rescheduling the scope
                # (Writer.stop): a newer request taking over, the shutdown, or a hook's
                # StopUpload. The read then ends with TimeoutError, handled below.
                writer.scope = scope
                while True:
                    now = loop.time()
                    if window_end is not None and now >= window_end:
                        if received - window_start_received < min_bytes:
                            if writer.stop_reason is None:
                                writer.stop_reason = StopReason.SLOW
                            return Outcome.STOPPED
                        window_end, window_start_received = now + rate_window, received
                    deadline = idle_deadline(writer, now)
                    scheduled = scope.when()
                    if (scheduled is None or deadline < scheduled
                            or deadline - scheduled > slack):
                        scope.reschedule(deadline)
                    # One buffered chunk as it arrived (readany() would join what is
                    # buffered into a new bytes object: a copy of every byte).
                    chunk, chunk_boundary = await content.readchunk()
                    if not chunk:
                        # The end of an HTTP chunk, not of the body: read on. (aiohttp's
                        # shared empty body answers (b"", True) after its first read.)
                        if chunk_boundary and not content.at_eof():
                            continue
                        return Outcome.COMPLETE
                    received += len(chunk)
                    if room is not None and received > room:
                        return Outcome.TOO_LARGE
                    if hasher is not None:
                        hasher.update(chunk)
                    if write_nowait is not None:
                        write_nowait(chunk)
                    else:
                        scope.reschedule(None)  # a write that waits is not client idleness
                        waited = loop.time()
                        await lock.write(chunk)
                        if window_end is not None:  # nor client slowness
                            window_end += loop.time() - waited
                    if next_tick is not None and loop.time() >= next_tick:
                        next_tick = loop.time() + interval
                        self.events.receiving(lock.upload, request,
                                              lock.upload.offset + lock.written)
        except TimeoutError:
            if writer.stop_reason is None:
                writer.stop_reason = StopReason.IDLE
            return Outcome.STOPPED
        except (ConnectionError, HttpProcessingError, asyncio.IncompleteReadError):
            return Outcome.DISCONNECTED
        except asyncio.CancelledError:
            # aiohttp cancels handlers on disconnect when handler_cancellation is on (its
            # test server does): keep the bytes anyway; the handler re-raises the
            # cancellation once they are committed (TusHandler._after_write).
            return Outcome.CANCELLED
        finally:
            writer.scope = None


async def _receive_buffered(content: StreamReader, write: Callable[[bytes], None],
                            room: int | None, hasher: Hasher | None) -> Outcome:
    """A body that is already all buffered (a small PATCH arrives with its headers),
    written by a driver whose writes never wait: read without ever waiting, so no idle
    deadline, rate window or stop applies (no timeout scope: it costs more than such a
    body's writes)."""
    received = 0
    try:
        while True:
            chunk, chunk_boundary = await content.readchunk()
            if not chunk:
                if chunk_boundary and not content.at_eof():
                    continue
                return Outcome.COMPLETE
            received += len(chunk)
            if room is not None and received > room:
                return Outcome.TOO_LARGE
            if hasher is not None:
                hasher.update(chunk)
            write(chunk)
    except (ConnectionError, HttpProcessingError, asyncio.IncompleteReadError):
        return Outcome.DISCONNECTED
    except asyncio.CancelledError:
        return Outcome.CANCELLED  # as in BodyReceiver.receive


def interrupted(writer: Writer) -> TusError:
    """The answer to a request whose body was cut short, by why its writer stopped."""
    reason = writer.stop_reason
    if reason is StopReason.SHUTDOWN:
        return ServiceUnavailable("request stopped because the server is shutting down")
    if reason is StopReason.TAKEN_OVER:
        return BadRequest("upload has been interrupted by another request for this upload")
    if reason is StopReason.IDLE:
        return TusError("request body idle timeout", status=408)
    if reason is StopReason.SLOW:
        return TusError("request body slower than server.min_body_rate", status=408)
    if reason is StopReason.HOOK:  # post-receive StopUpload (tusd_py.hooks)
        if isinstance(writer.stop_error, TusError):
            return writer.stop_error
        return BadRequest("upload has been stopped by server")
    return BadRequest("request body ended early")
