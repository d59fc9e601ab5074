import base64
import re

import pytest

from tusd_py.protocol import (
    ALGORITHMS,
    format_metadata,
    http_date,
    new_hasher,
    parse_checksum,
    parse_concat,
    parse_defer_length,
    parse_metadata,
    parse_uint,
)
from tusd_py.protocol.errors import BadRequest


@pytest.mark.parametrize("value,expected", [("0", 0), ("42", 42), ("9223372036854775807", 2**63 - 1)])
def test_parse_uint_accepts_plain_digits(value, expected):
    assert parse_uint(value, "Upload-Length") == expected


@pytest.mark.parametrize("value", [
    "", " 1", "1 ", "+1", "-1", "1.0", "1e3", "0x10", "١٢", "9223372036854775808",
    "99999999999999999999", "1,2", "abc",
])
def test_parse_uint_rejects_everything_else(value):
    with pytest.raises(BadRequest) as err:
        parse_uint(value, "Upload-Offset")
    assert "Upload-Offset" in err.value.message


def test_parse_uint_missing():
    assert parse_uint(None, "Upload-Length", required=False) is None
    with pytest.raises(BadRequest, match="missing Upload-Length"):
        parse_uint(None, "Upload-Length")


def test_defer_length_only_accepts_1():
    assert parse_defer_length("1") is True
    assert parse_defer_length(None) is False
    for bad in ("0", "true", " 1", "2"):
        with pytest.raises(BadRequest):
            parse_defer_length(bad)


def b64(s: bytes) -> str:
    return base64.b64encode(s).decode()


def test_metadata_roundtrip_with_key_only_entry():
    name = b64("résumé.pdf".encode())
    header = f"filename {name},is_confidential,filetype {b64(b'application/pdf')}"
    parsed = parse_metadata(header)
    assert parsed == {"filename": "résumé.pdf".encode(), "is_confidential": None,
                      "filetype": b"application/pdf"}
    assert parse_metadata(format_metadata(parsed)) == parsed


def test_metadata_tolerates_spaces_around_pairs_and_empty_header():
    assert parse_metadata("") == {}
    assert parse_metadata(f"a {b64(b'1')}, b {b64(b'2')}") == {"a": b"1", "b": b"2"}


@pytest.mark.parametrize("header", [
    f"a {b64(b'1')},a {b64(b'2')}",  # duplicate key
    "a !!!!",  # not base64
    "a YQ",  # unpadded base64
    f"a {b64(b'x')} extra",  # three parts
    "k\u00e9y YQ==",  # non-ASCII key
    ",",  # empty key
    "a YQ==,,b YQ==",  # empty pair
])
def test_metadata_rejects_malformed(header):
    with pytest.raises(BadRequest):
        parse_metadata(header)


def test_metadata_size_cap():
    with pytest.raises(BadRequest, match="too large"):
        parse_metadata("k " + "A" * 5000)
    with pytest.raises(BadRequest, match="too many"):
        parse_metadata(",".join(f"k{i}" for i in range(65)))


def test_concat():
    assert parse_concat(None) is None
    assert parse_concat("partial").partial
    final = parse_concat("final;/files/a http://x/files/b")
    assert final.final and final.final_urls == ("/files/a", "http://x/files/b")
    for bad in ("final;", "final", "partial;x", "Partial", "final; "):
        with pytest.raises(BadRequest):
            parse_concat(bad)


#: The digests of b"abc" (the FIPS 180 / RFC 1321 test vectors).
ABC = {
    "md5": "900150983cd24fb0d6963f7d28e17f72",
    "sha1": "a9993e364706816aba3e25717850c26c9cd0d89d",
    "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    "sha512": "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
              "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
}


def test_checksum_header():
    digest = bytes.fromhex(ABC["sha1"])
    parsed = parse_checksum(f"sha1 {b64(digest)}", ALGORITHMS)
    assert parsed.algorithm == "sha1" and parsed.digest == digest
    with pytest.raises(BadRequest, match="unsupported checksum algorithm"):
        parse_checksum("crc32 AAAA", ALGORITHMS)
    with pytest.raises(BadRequest):
        parse_checksum("sha1", ALGORITHMS)
    with pytest.raises(BadRequest):
        parse_checksum("sha1 not*base64", ALGORITHMS)
    with pytest.raises(BadRequest, match="unsupported"):
        parse_checksum("sha256 AAAA", ("sha1",))


def test_all_four_algorithms():
    assert set(ALGORITHMS) == {"md5", "sha1", "sha256", "sha512"}
    for name in ALGORITHMS:
        hasher = new_hasher(name)
        hasher.update(b"ab")
        hasher.update(b"c")  # fed in pieces, as a PATCH body arrives
        assert hasher.digest().hex() == ABC[name], name


def test_http_date_is_rfc7231():
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"


def test_http_date_whole_seconds_and_cache_follows_the_clock():
    assert http_date(86400.9) == "Fri, 02 Jan 1970 00:00:00 GMT"
    assert http_date(86400.1) == "Fri, 02 Jan 1970 00:00:00 GMT"  # same second: kept text
    assert http_date(86401.0) == "Fri, 02 Jan 1970 00:00:01 GMT"
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"  # and back


# The metadata checks by str methods accept exactly what the patterns of the tus grammar
# accept: a key of printable ASCII but space and comma, strict base64 values.
_KEY_PATTERN = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
_B64_PATTERN = re.compile(r"[A-Za-z0-9+/]*={0,2}")


@pytest.mark.parametrize("code", [c for c in range(0x110) if chr(c) not in " ,"])  # separators
def test_a_metadata_key_is_accepted_as_the_grammar_says(code: int) -> None:
    key = f"k{chr(code)}y"
    valid = _KEY_PATTERN.fullmatch(key) is not None
    try:
        parsed = parse_metadata(f"{key} aGk=")
    except BadRequest:
        assert not valid
    else:
        assert valid and parsed == {key: b"hi"}


@pytest.mark.parametrize("value", ["aGk=", "aGVsbG8h", "aA==", "a+/b", "ab/+cd==", "aGk", "a===",
                                   "====", "ab=c", "ab==", "a=b=", "aGk-", "aGk_", "YWJj\u00e9===",
                                   "\u0661\u0662\u0663\u0664", "AAAA", "+///"])
def test_a_metadata_value_is_accepted_as_strict_base64(value: str) -> None:
    valid = len(value) % 4 == 0 and _B64_PATTERN.fullmatch(value) is not None
    try:
        parsed = parse_metadata(f"key {value}")
    except BadRequest:
        assert not valid or not _strict_b64_ok(value)
    else:
        assert valid and parsed == {"key": base64.b64decode(value, validate=True)}


def _strict_b64_ok(value: str) -> bool:
    try:
        base64.b64decode(value, validate=True)
    except ValueError:
        return False
    return True
