"""The Content-Type/Content-Disposition sanitiser: the download's policy and the stored
object's, with the exact header values the drivers and the GET handler send."""

from __future__ import annotations

import pytest

from tusd_py.protocol.content import download_content, stored_content

RESUME = "résumé.pdf".encode()
RESUME_PARAMS = "; filename=\"r_sum_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"


@pytest.mark.parametrize("metadata, expected", [
    ({}, ("application/octet-stream", "attachment")),
    ({"filetype": b"image/png"}, ("image/png", "inline")),
    ({"filetype": b" Text/Plain ; Charset=\"UTF-8\""}, ("text/plain; charset=utf-8", "inline")),
    ({"filetype": b"text/plain; format=flowed"}, ("text/plain", "inline")),
    ({"filetype": b"text/html"}, ("application/octet-stream", "attachment")),
    ({"filetype": b"image/svg+xml", "filename": b"x.svg"},
     ("application/octet-stream", "attachment; filename=\"x.svg\"; filename*=UTF-8''x.svg")),
    ({"filetype": b"application/pdf", "filename": RESUME},
     ("application/pdf", "inline" + RESUME_PARAMS)),
    ({"filename": b"C:\\dir\\a\"b;c\r\n.txt"},
     ("application/octet-stream",
      "attachment; filename=\"a_b;c__.txt\"; filename*=UTF-8''a%22b%3Bc%0D%0A.txt")),
    ({"filename": b""}, ("application/octet-stream", "attachment")),
])
def test_download_content(metadata, expected):
    assert download_content(metadata) == expected


@pytest.mark.parametrize("metadata, expected", [
    ({}, ("application/octet-stream", None)),
    ({"filetype": b" Image/SVG+XML "}, ("image/svg+xml", None)),
    ({"filetype": b"text/html"}, ("text/html", None)),
    ({"filetype": b"text/plain; charset=utf-8"}, ("application/octet-stream", None)),
    ({"filetype": b"not a type"}, ("application/octet-stream", None)),
    ({"filetype": b"application/pdf", "filename": RESUME},
     ("application/pdf", "attachment" + RESUME_PARAMS)),
    ({"filetype": b"image/png", "filename": b"a/b/" + b"x" * 300},
     ("image/png", f"attachment; filename=\"{'x' * 255}\"; filename*=UTF-8''{'x' * 255}")),
    ({"filename": None}, ("application/octet-stream", None)),
])
def test_stored_content(metadata, expected):
    assert stored_content(metadata) == expected
