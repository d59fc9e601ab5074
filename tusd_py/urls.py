"""The public base URL of a request, for Location headers.

Behind a reverse proxy (``server.behind_proxy: true``) the ``Forwarded`` header
(RFC 7239) or ``X-Forwarded-Proto`` / ``X-Forwarded-Host`` / ``X-Forwarded-Prefix`` name
the URL the client used. They are ignored unless configured: a client could forge them.
"""

from __future__ import annotations

import re

from aiohttp import web

_FORWARDED_PAIR = re.compile(r'(?i)\b(proto|host)=("[^"]*"|[^;,\s]*)')
_SAFE_HOST = re.compile(r"[A-Za-z0-9.\-:\[\]_]+")
_SAFE_PREFIX = re.compile(r"(/[A-Za-z0-9._~\-]+)*")


def base_url(request: web.Request, behind_proxy: bool) -> str:
    """``scheme://host[/prefix]`` (no trailing slash) as the client sees this server."""
    scheme, host, prefix = request.scheme, request.host, ""
    if behind_proxy:
        headers = request.headers
        forwarded = headers.get("Forwarded")
        if forwarded:
            first = forwarded.split(",", 1)[0]
            for key, value in _FORWARDED_PAIR.findall(first):
                value = value.strip('"')
                if key.lower() == "proto":
                    scheme = value
                else:
                    host = value
        else:
            scheme = headers.get("X-Forwarded-Proto", scheme).split(",", 1)[0].strip()
            host = headers.get("X-Forwarded-Host", host).split(",", 1)[0].strip()
        prefix = headers.get("X-Forwarded-Prefix", "").split(",", 1)[0].strip().rstrip("/")
        if scheme not in ("http", "https"):
            scheme = request.scheme
        if not _SAFE_HOST.fullmatch(host):
            host = request.host
        if not _SAFE_PREFIX.fullmatch(prefix):
            prefix = ""
    return f"{scheme}://{host}{prefix}"
