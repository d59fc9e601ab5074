"""Our default fingerprint is tuspy's, byte for byte."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
from tusclient.fingerprint.fingerprint import Fingerprint as TuspyFingerprint

from tusd_py.client import FullSHA256Fingerprint, MD5Fingerprint, SHA256Fingerprint


@pytest.mark.parametrize("size", [0, 1, 1000, 65535, 65536, 65537, 300_000])
def test_md5_fingerprint_equals_tuspy(tmp_path: Path, size: int) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(size))
    with open(path, "rb") as fs:
        theirs = TuspyFingerprint().get_fingerprint(fs)
    with open(path, "rb") as fs:
        ours = MD5Fingerprint().get_fingerprint(fs)
    assert ours == theirs
    assert ours == MD5Fingerprint().for_path(path)
    assert ours.startswith(f"size:{size}--md5:")


def test_fingerprint_reads_from_start_whatever_the_position() -> None:
    data = os.urandom(100_000)
    fs = io.BytesIO(data)
    fs.seek(5000)
    assert MD5Fingerprint().get_fingerprint(fs) == TuspyFingerprint().get_fingerprint(io.BytesIO(data))


def test_sha256_fingerprint() -> None:
    data = os.urandom(70_000)
    fp = SHA256Fingerprint().get_fingerprint(io.BytesIO(data))
    assert fp == f"size:70000--sha256:{hashlib.sha256(data[:65536]).hexdigest()}"
    changed = bytes([data[0] ^ 1]) + data[1:]  # a byte inside the hashed block
    assert SHA256Fingerprint().get_fingerprint(io.BytesIO(changed)) != fp
    assert SHA256Fingerprint().get_fingerprint(io.BytesIO(data + b"x")) != fp  # the size


def test_full_sha256_fingerprint_sees_the_whole_file(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    fp = FullSHA256Fingerprint().for_path(path)
    assert fp == f"size:{len(data)}--sha256-full:{hashlib.sha256(data).hexdigest()}"
    tail_changed = data[:-1] + bytes([data[-1] ^ 1])
    assert FullSHA256Fingerprint().get_fingerprint(io.BytesIO(tail_changed)) != fp
    assert MD5Fingerprint().get_fingerprint(io.BytesIO(tail_changed)) == MD5Fingerprint().for_path(path)
