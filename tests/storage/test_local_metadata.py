"""The local driver stores metadata as JSON with hex values: the hand-built text is
exactly what ``json.dumps`` writes, whatever the keys are."""

from __future__ import annotations

import json

import pytest

from tusd_py.storage.local.store import _decode_metadata, _encode_metadata

KEYS = ["filename", "filetype", "relative_path", "a-b.c/d:e", "x=1&y?", "", "quote\"d",
        "back\\slash", "tab\there", "del\x7f", "nül", "日本", "\u2028"]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("value", [b"", b"hello", bytes(range(256)), None])
def test_the_text_is_json_dumps_and_reads_back(key: str, value: bytes | None) -> None:
    metadata = {"first": b"1", key: value, "last": None}
    text = _encode_metadata(metadata)
    assert text == json.dumps({k: None if v is None else v.hex() for k, v in metadata.items()})
    assert _decode_metadata(text) == metadata


def test_no_metadata() -> None:
    assert _encode_metadata({}) == "{}" and _decode_metadata("{}") == {}
