"""Interim (1xx) responses, which aiohttp has no API for: written on the transport
before the final response starts, as aiohttp's own ``100 Continue`` is."""

from __future__ import annotations

from aiohttp import HttpVersion11, web


def send_interim(request: web.Request, status: int, reason: str,
                 headers: list[tuple[str, str]]) -> bool:
    """Write ``HTTP/1.1 <status> <reason>`` and ``headers`` to the client; False (nothing
    sent) when it cannot take one: not HTTP/1.1 (HTTP/1.0 clients must not get 1xx), the
    connection is closing, or the final response has started. Values must be free of
    CR and LF (ValueError otherwise)."""
    transport = request.transport
    if (request.version != HttpVersion11 or transport is None or transport.is_closing()
            or request.writer.output_size):
        return False
    lines = [f"HTTP/1.1 {status} {reason}"]
    for name, value in headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"invalid interim header {name!r}")
        lines.append(f"{name}: {value}")
    transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    return True
