"""Ids of several segments and per-upload key prefixes chosen by pre-create
(``ChangeFileInfo.ID``, ``ChangeFileInfo.Storage.Prefix``) on every driver, and what a
hook cannot make the server build: traversal through every field a hook can set."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from tests.http.helpers import OCTET, TUS, head, patch, path_of
from tests.plugins.app import DRIVERS
from tests.plugins.local_files import upload_file
from tusd_py.storage.base import Upload
from tusd_py.storage.local import store as local_store
from tusd_py.storage.local.store import LocalStore

from .conftest import HookedFactory, Receiver, StoredBytes, expected_storage

NESTED = "tenant-a/2026-12/report_1"


def tree(top: Path) -> list[str]:
    """Every path under ``top``."""
    return sorted(str(p) for p in top.rglob("*"))


def pre_create_answer(answer: dict[str, Any]):  # type: ignore[no-untyped-def]
    return lambda body, request: answer if body["Type"] == "pre-create" else {}


@pytest.mark.parametrize("storage_config", DRIVERS, indirect=True)
async def test_an_id_of_segments_on_every_driver(hooked: HookedFactory, receiver: Receiver,
                                                 storage_config, request) -> None:  # type: ignore[no-untyped-def]
    receiver.responder = pre_create_answer({"ChangeFileInfo": {"ID": NESTED}})
    client = await hooked(enabled=["pre-create", "post-finish"])
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "6"})
    assert r.status == 201, await r.text()
    path = path_of(r.headers["Location"])
    assert path == f"/files/{NESTED}"  # the segments as they are, not escaped
    assert (await patch(client, path, 0, b"abc")).status == 204
    assert (await head(client, path)).headers["Upload-Offset"] == "3"
    assert (await patch(client, path, 3, b"def")).status == 204
    got = await client.get(path)
    assert (got.status, await got.read()) == (200, b"abcdef")
    (finished,) = await receiver.wait_for("post-finish")
    assert finished.upload["ID"] == NESTED
    if storage_config["driver"] != "memory":
        assert finished.upload["Storage"] == expected_storage(NESTED, storage_config)
        stored: StoredBytes = request.getfixturevalue("stored_bytes")
        assert stored(finished.upload["Storage"]) == b"abcdef"
    # One segment less or more is another upload (none).
    for other in ("/files/tenant-a/2026-12", f"/files/{NESTED}/x", f"/files/{NESTED}/"):
        assert (await head(client, other)).status == 404, other
    assert (await client.delete(path, headers=TUS)).status == 204
    assert (await head(client, path)).status == 404


@pytest.mark.parametrize("storage_config", DRIVERS, indirect=True)
async def test_a_key_prefix_chosen_per_upload(hooked: HookedFactory, receiver: Receiver,
                                              storage_config) -> None:  # type: ignore[no-untyped-def]
    """``Storage.Prefix`` goes before the server's own (unguessable) id, or before the
    hook's ``ID``: on object stores the keys are ``<storage prefix><Prefix><id>``."""
    receiver.responder = pre_create_answer({"ChangeFileInfo": {"Storage": {"Prefix": "tenant-b/"}}})
    client = await hooked(enabled=["pre-create", "post-create"])
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert r.status == 201, await r.text()
    upload_id = path_of(r.headers["Location"])[len("/files/"):]
    assert re.fullmatch(r"tenant-b/[0-9a-f]{32}", upload_id), upload_id
    (created,) = await receiver.wait_for("post-create")
    if storage_config["driver"] != "memory":
        assert created.upload["Storage"] == expected_storage(upload_id, storage_config)

    receiver.responder = pre_create_answer(
        {"ChangeFileInfo": {"ID": "x-1", "Storage": {"Prefix": "tenant-b/2027/"}}})
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert path_of(r.headers["Location"]) == "/files/tenant-b/2027/x-1"
    assert (await patch(client, "/files/tenant-b/2027/x-1", 0, b"z")).status == 204


BAD_IDS = ["..", ".", "a/../b", "../a", "/abs", "a//b", "a/", "/", "", "a%2fb", "a%2Fb",
           "a\\b", "..\\a", "a\x00b", "a\nb", "a b", "a.b", "~a", "é", "a" * 129,
           "/".join(["a"] * 9), "/".join(["a" * 100] * 3), "C:\\x", "a/./b", "-a", "a/-b"]
BAD_PREFIXES = [p + "/" for p in BAD_IDS if p] + ["a", "", "/", "a//", "../", "a/b"]


@pytest.mark.parametrize("answer", (
    [{"ChangeFileInfo": {"ID": bad}} for bad in BAD_IDS if bad]
    + [{"ChangeFileInfo": {"Storage": {"Prefix": bad}}} for bad in BAD_PREFIXES]
    + [{"ChangeFileInfo": {"ID": "ok", "Storage": {"Prefix": "ok/", "Path": "../../etc/x"}}},
       {"ChangeFileInfo": {"Storage": {"Path": "/etc/passwd"}}},
       {"ChangeFileInfo": {"Storage": {"Key": "../../x"}}},
       {"ChangeFileInfo": {"Storage": {"Bucket": "other-bucket"}}},
       # 8 segments of prefix and id together are the most
       {"ChangeFileInfo": {"ID": "a/b/c/d", "Storage": {"Prefix": "e/f/g/h/i/"}}}]),
    ids=lambda answer: repr(answer["ChangeFileInfo"])[:60])
async def test_traversal_through_every_field_a_hook_sets(hooked: HookedFactory,
                                                         receiver: Receiver, tmp_path: Path,
                                                         answer: dict[str, Any]) -> None:
    receiver.responder = pre_create_answer(answer)
    client = await hooked(enabled=["pre-create"])
    before = tree(tmp_path)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert r.status == 500
    assert await r.text() == "pre-create hook returned an invalid upload id\n"
    assert "Location" not in r.headers
    assert tree(tmp_path) == before  # nothing made anywhere


async def test_metadata_keys_and_response_headers_a_hook_sets_are_checked(
        hooked: HookedFactory, receiver: Receiver) -> None:
    receiver.responder = pre_create_answer({"ChangeFileInfo": {"MetaData": {"a b": "x"}}})
    client = await hooked(enabled=["pre-create"])
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert (r.status, await r.text()) == (500, "pre-create hook failed: invalid hook response\n")
    # A header value cannot split the response (no CR/LF reaches the wire).
    receiver.responder = pre_create_answer(
        {"HTTPResponse": {"Header": {"X-Ok": "1\r\nSet-Cookie: stolen=1"}}})
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert (r.status, await r.text()) == (500, "pre-create hook failed: invalid hook response\n")
    assert "Set-Cookie" not in r.headers
    for header in ({"Content-Length": "0"}, {"Transfer-Encoding": "chunked"},
                   {"Bad Name": "1"}, {"X-Nul": "a\x00b"}):
        receiver.responder = pre_create_answer({"HTTPResponse": {"Header": header}})
        r = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
        assert r.status == 500, header


async def test_the_url_carries_segments_not_escapes(hooked: HookedFactory,
                                                    receiver: Receiver) -> None:
    """An escaped ``/`` (``%2F``) is not a separator, and dot segments are not resolved
    into another upload: each is 404, never the upload."""
    receiver.responder = pre_create_answer({"ChangeFileInfo": {"ID": "u/v/w"}})
    client = await hooked(enabled=["pre-create"])
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "2"})
    assert path_of(r.headers["Location"]) == "/files/u/v/w"
    for raw in ("/files/u%2Fv%2Fw", "/files/u%2fv/w", "/files/u/v/../v/w", "/files/u//v/w",
                "/files/u/./v/w", "/files/u%5Cv%5Cw", "/files/u/v/w%00", "/files/%2E%2E/u/v/w",
                "/files/u/v/w/", "/files/u/v/w/..", "/files/x/../u/v/w"):
        # As sent (an HTTP client would resolve the dot segments before sending).
        assert await raw_status(client, "HEAD", raw) == 404, raw
        assert await raw_status(client, "PATCH", raw, b"hi") == 404, raw
    assert (await head(client, "/files/u/v/w")).headers["Upload-Offset"] == "0"


async def raw_status(client, method: str, target: str, body: bytes = b"") -> int:  # type: ignore[no-untyped-def]
    """The status of one request whose target is sent byte for byte."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    head_lines = (f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
                  f"Upload-Offset: 0\r\nContent-Type: {OCTET}\r\n"
                  f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    writer.write(head_lines.encode() + body)
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    return int(status_line.split()[1])


async def test_local_segments_are_directories_and_clash_cleanly(hooked: HookedFactory,
                                                                receiver: Receiver,
                                                                storage_config) -> None:  # type: ignore[no-untyped-def]
    client = await hooked(enabled=["pre-create"])
    data_dir = storage_config["data_dir"]
    for chosen, status in (("a", 201), ("a/b", 409), ("c/d", 201), ("c", 409), ("c/d", 409)):
        receiver.responder = pre_create_answer({"ChangeFileInfo": {"ID": chosen}})
        r = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
        assert r.status == status, (chosen, await r.text())
    assert upload_file(data_dir, "a").is_file() and upload_file(data_dir, "c/d").is_file()


async def test_local_orphans_in_subdirectories_are_removed_at_start(tmp_path: Path,
                                                                    monkeypatch) -> None:  # type: ignore[no-untyped-def]
    store = LocalStore(str(tmp_path))
    await store.start()
    try:
        await store.create(Upload(id="t/kept/1", length=3))
    finally:
        await store.stop()
    orphan = upload_file(tmp_path, "t/lost/2")
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"x")
    stranger = upload_file(tmp_path, "t/x").with_name("not.an.id")
    stranger.write_bytes(b"x")  # not ours: left alone
    monkeypatch.setattr(local_store, "ORPHAN_GRACE", -10.0)
    store = LocalStore(str(tmp_path))
    await store.start()
    try:
        assert not orphan.exists()
        assert upload_file(tmp_path, "t/kept/1").exists()
        assert stranger.exists()
        assert (await store.get("t/kept/1")) is not None
    finally:
        await store.stop()
    assert orphan.parent.is_dir()  # directories stay


async def test_local_durable_mode_with_segments(tmp_path: Path) -> None:
    """``storage.fsync``: the subdirectories' entries are synced at creation (the upload
    directory's sync with the first bytes does not cover them); a lost empty file of a
    nested id is made again at start, directories too."""
    store = LocalStore(str(tmp_path), fsync=True)
    await store.start()
    try:
        await store.create(Upload(id="d/e/1", length=3))
        lock = await store.lock("d/e/1", 1.0)
        await lock.write(b"abc")
        assert (await lock.commit()).offset == 3
        await lock.release()
        await store.create(Upload(id="d/f/2", length=3))
    finally:
        await store.stop()
    lost = upload_file(tmp_path, "d/f/2").parent
    (lost / "2").unlink()
    lost.rmdir()
    store = LocalStore(str(tmp_path), fsync=True)
    await store.start()
    try:
        assert (lost / "2").stat().st_size == 0
        assert (await store.get("d/e/1")).offset == 3  # type: ignore[union-attr]
    finally:
        await store.stop()
