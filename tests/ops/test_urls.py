"""Forwarded (RFC 7239) / X-Forwarded-* parsing and validation (tusd_py.http.urls), with
hostile inputs. The same inputs through a real daemon: tests/ops/test_proxy.py."""

from __future__ import annotations

import pytest

from tusd_py.http.urls import parse_forwarded, valid_host, valid_prefix


@pytest.mark.parametrize(("header", "expected"), [
    ("host=up.example", {"host": "up.example"}),
    ('for=10.0.0.1;proto=https;host="up.example:8443", proto=http;host=inner',
     {"for": "10.0.0.1", "proto": "https", "host": "up.example:8443"}),
    # Parameter names are case-insensitive; values are kept as sent.
    ("For=10.0.0.1;HOST=Up.Example;Proto=HTTPS", {"for": "10.0.0.1", "host": "Up.Example", "proto": "HTTPS"}),
    # host= inside a quoted value is data, not a parameter (the old regex read "evil").
    ('for="host=evil";proto=https', {"for": "host=evil", "proto": "https"}),
    ('for="_x;host=evil";proto=https', {"for": "_x;host=evil", "proto": "https"}),
    # A comma inside a quoted value does not end the first element.
    ('for="a, host=evil";host=good.example', {"for": "a, host=evil", "host": "good.example"}),
    ('for="[2001:db8::1]:4711";host=a.example', {"for": "[2001:db8::1]:4711", "host": "a.example"}),
    (r'host="a\"b\\c"', {"host": 'a"b\\c'}),  # quoted-pairs unescaped
    (" host=a.example ; proto=https ", {"host": "a.example", "proto": "https"}),
    ("host=a.example;;proto=https;", {"host": "a.example", "proto": "https"}),  # empty pairs are legal
    # ':' and '[]' belong in quotes (RFC 7239 section 4), but are tolerated unquoted.
    ("host=[::1]:8443;proto=https", {"host": "[::1]:8443", "proto": "https"}),
    ("host=up.example:8443", {"host": "up.example:8443"}),
    ("", {}),
    (", host=second.example", {}),  # an empty first element names nothing
])
def test_parse_forwarded(header: str, expected: dict[str, str]) -> None:
    assert parse_forwarded(header) == expected


@pytest.mark.parametrize("header", [
    "host=a b",                  # whitespace inside a token
    "host=a.example;proto",      # a name without a value
    "host=",                     # an empty token
    '=x',
    'host="unterminated',
    'host="a"b',                 # junk after a quoted string
    "host=a.example;host=b.example",  # a parameter twice
    "proto=https;PROTO=http",    # ... also in another case
    "host=a/b@c;",               # '/' and '@' are not token characters
    'host="a\x00b"',             # control characters, even quoted
    "host=a.example\x0bproto=https",
])
def test_parse_forwarded_rejects_malformed_elements(header: str) -> None:
    assert parse_forwarded(header) is None


@pytest.mark.parametrize("host", [
    "example.com", "example.com:8443", "localhost", "up_stream:80", "10.0.0.1", "10.0.0.1:65535",
    "[2001:db8::1]", "[::1]:8080", "a-b.example",
])
def test_valid_host(host: str) -> None:
    assert valid_host(host)


@pytest.mark.parametrize("host", [
    "", "evil.example/x", "evil.example:80/x", "user@evil.example", "user:pw@evil.example",
    "evil.example?x", "evil.example#x", "evil.example\\x", "a b", "a\tb", "a\x00b", "a\r\nb",
    "host:", "host:99999", "host:8a", "host:80:80", "-evil", "a..b", ".", "évil.example",
    "[::1", "[::1]x", "[::1]:", "[zz::1]", "[10.0.0.1]", "[fe80::1%eth0]", "::1",
    "javascript:alert(1)",
])
def test_invalid_host(host: str) -> None:
    assert not valid_host(host)


@pytest.mark.parametrize("prefix", ["", "/uploads", "/tus/v1", "/a-b_c.d~e"])
def test_valid_prefix(prefix: str) -> None:
    assert valid_prefix(prefix)


@pytest.mark.parametrize("prefix", [
    "uploads", "/..", "/../x", "/a/../b", "/a/..", "/./a", "/.", "//evil.example", "/a//b",
    "/a?x", "/a#x", "/a b", "/%2e%2e", "/a%2Fb", "/a\\b", "/a\x00", "/a:b", "/@evil",
])
def test_invalid_prefix(prefix: str) -> None:
    assert not valid_prefix(prefix)
