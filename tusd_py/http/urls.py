"""The public base URL of a request, for Location headers.

Behind a reverse proxy (``server.behind_proxy: true``) the ``Forwarded`` header
(RFC 7239) or ``X-Forwarded-Proto`` / ``X-Forwarded-Host`` / ``X-Forwarded-Prefix`` name
the URL the client used. They are ignored unless configured: a client could forge them.

Every forwarded value is checked before it goes into a URL: the scheme must be ``http``
or ``https``, the host a plain ``name[:port]``, ``IPv4[:port]`` or ``[IPv6][:port]``, the
prefix a clean absolute path (no ``.``/``..`` or empty segments, no query, no escapes).
A value that fails is ignored and the request's own scheme / host (or no prefix) used.
"""

from __future__ import annotations

import ipaddress
import re

from aiohttp import web

from ..protocol.errors import BadRequest

# RFC 7230 token and quoted-string, as RFC 7239 uses them. Unquoted values may also hold
# ':', '[' and ']' (host:port, [v6]), which some proxies send without the quotes the RFC
# asks for; the host check below decides whether they are acceptable.
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_VALUE = r"[!#$%&'*+\-.^_`|~0-9A-Za-z:\[\]]+"
_QUOTED = r'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\t\x20-\x7e\x80-\xff])*"'
_PAIR = re.compile(rf"[ \t]*({_TOKEN})=({_VALUE}|{_QUOTED})[ \t]*")
_QUOTED_PAIR = re.compile(r"\\(.)")
_SPACE = re.compile(r"[ \t]*")

_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_\-.]*[A-Za-z0-9_])?")
_PORT = re.compile(r"[0-9]{1,5}")
_SEGMENT = re.compile(r"[A-Za-z0-9._~\-]+")


def parse_forwarded(value: str) -> dict[str, str] | None:
    """The parameters of the first element of a ``Forwarded`` header (names lowercased,
    quoted strings unescaped); None when that element is not valid RFC 7239 syntax:
    ``forwarded-element = [ pair ] *( ";" [ pair ] )``, ``pair = token "=" value``,
    ``value = token / quoted-string``, each parameter at most once."""
    params: dict[str, str] = {}
    pos, end = 0, len(value)
    while True:
        match = _PAIR.match(value, pos) or _SPACE.match(value, pos)
        assert match is not None  # _SPACE matches the empty string
        if match.lastindex:
            name, raw = match.group(1).lower(), match.group(2)
            if name in params:
                return None
            params[name] = _QUOTED_PAIR.sub(r"\1", raw[1:-1]) if raw[0] == '"' else raw
        pos = match.end()
        if pos == end or value[pos] == ",":
            return params
        if value[pos] != ";":
            return None
        pos += 1


def valid_host(host: str) -> bool:
    """``name[:port]``, ``a.b.c.d[:port]`` or ``[v6][:port]``; nothing that could carry a
    path, credentials, whitespace or control characters into a URL."""
    if host.startswith("["):
        address, bracket, rest = host[1:].partition("]")
        if not bracket or not _is_ipv6(address):
            return False
        if not rest:
            return True
        if rest[0] != ":":
            return False
        port = rest[1:]
    else:
        name, colon, port = host.partition(":")
        if not _HOSTNAME.fullmatch(name) or ".." in name:
            return False
        if not colon:
            return True
    return _PORT.fullmatch(port) is not None and int(port) <= 65535


def _is_ipv6(address: str) -> bool:
    if "%" in address:  # a zone id would need escaping in a URL
        return False
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        return False
    return True


def valid_prefix(prefix: str) -> bool:
    """A clean absolute path without a trailing slash (or "", no prefix)."""
    if not prefix:
        return True
    if not prefix.startswith("/"):
        return False
    segments = prefix[1:].split("/")
    return all(_SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments)


#: The last host ``base_url`` found valid (a one-entry cache of ``valid_host``).
_last_valid_host: str | None = None


def _first(value: str) -> str:
    return value.split(",", 1)[0].strip()


def forwarded_prefix(request: web.Request) -> str:
    """The ``X-Forwarded-Prefix`` a proxy sent, if it is a clean path (else "")."""
    claimed = _first(request.headers.get("X-Forwarded-Prefix", "")).rstrip("/")
    return claimed if valid_prefix(claimed) else ""


def base_url(request: web.Request, behind_proxy: bool) -> str:
    """``scheme://host[/prefix]`` (no trailing slash) as the client sees this server.

    Raises ``BadRequest`` when the host to use is not a valid ``Host``: the request's
    own ``Host`` header is held to ``valid_host`` like a forwarded one (unless a valid
    forwarded host replaces it), since it goes into ``Location`` as well."""
    scheme, host, prefix = request.scheme, request.host, ""
    if behind_proxy:
        headers = request.headers
        forwarded = headers.get("Forwarded", "").strip()
        if forwarded:
            params = parse_forwarded(forwarded) or {}
            claimed_scheme, claimed_host = params.get("proto", ""), params.get("host", "")
        else:
            claimed_scheme = _first(headers.get("X-Forwarded-Proto", ""))
            claimed_host = _first(headers.get("X-Forwarded-Host", ""))
        claimed_scheme = claimed_scheme.lower()
        if claimed_scheme in ("http", "https"):
            scheme = claimed_scheme
        if claimed_host and valid_host(claimed_host):
            host = claimed_host
        prefix = forwarded_prefix(request)
    global _last_valid_host
    if host != _last_valid_host:  # clients send the same Host again and again
        if not valid_host(host):
            raise BadRequest("invalid Host header")
        _last_valid_host = host
    return f"{scheme}://{host}{prefix}"
