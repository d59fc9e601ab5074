"""post-finish is tracked in storage: never lost to a failure or a crash, never twice.

The receiver is real (aiohttp on 127.0.0.1); the daemons are real (in-process apps, and a
subprocess killed with SIGKILL); every driver runs against its emulator.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.http.helpers import create, patch, upload
from tusd_py.http.keys import STORE

from .conftest import Call, HookedFactory, Receiver, every_driver, metric

#: Short enough for a test: owed post-finish is looked for (and re-sent) this often.
REDELIVER = 0.3


class Switch:
    """A receiver answer that fails (500) while ``down``; remembers what it answered."""

    def __init__(self, *, down: bool = True) -> None:
        self.down = down
        self.answered: list[tuple[str, bool]] = []  # (hook type, was down)
        self.pre_finish: dict[str, Any] = {}

    def __call__(self, body: dict[str, Any], request: web.Request) -> Any:
        self.answered.append((body["Type"], self.down))
        if self.down:
            return (500, "receiver is down")
        if body["Type"] == "pre-finish":
            return self.pre_finish
        return {}

    def delivered(self, hook_type: str) -> int:
        return sum(1 for t, down in self.answered if t == hook_type and not down)


async def owed(client: TestClient, path: str) -> bool:
    upload = await client.app[STORE].get(path.rsplit("/", 1)[1])
    assert upload is not None
    return upload.finish_owed


async def no_longer_owed(client: TestClient, path: str) -> bool:
    """Whether the upload's post-finish is no longer owed (delivered, or refused)."""
    return not await owed(client, path)


async def until(condition: Any, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not await condition():
            await asyncio.sleep(0.05)


def keys(calls: list[Call]) -> set[str]:
    return {c.headers["Idempotency-Key"] for c in calls}


@every_driver
async def test_failed_post_finish_is_redelivered_once(hooked: HookedFactory, receiver: Receiver):
    switch = Switch()
    receiver.responder = switch
    client = await hooked(enabled=["post-finish"], redeliver_after=REDELIVER)
    path = await upload(client, b"hello", chunk=3)
    await receiver.wait_for("post-finish")  # the live delivery, refused with 500
    assert await owed(client, path)  # still owed in storage
    switch.down = False
    calls = await receiver.wait_for("post-finish", 2)
    await until(lambda: no_longer_owed(client, path))
    await receiver.let_time_pass(4 * REDELIVER)  # several more rounds: nothing more is sent
    calls = receiver.of("post-finish")
    assert len(calls) == 2 and switch.delivered("post-finish") == 1
    assert calls[1].upload["ID"] == path.rsplit("/", 1)[1]
    assert (calls[1].upload["Offset"], calls[1].upload["Size"]) == (5, 5)
    assert calls[1].http["Method"] == ""  # the finishing request is gone
    assert len(keys(calls)) == 1  # the same Idempotency-Key as the first attempt
    text = await (await client.get("/metrics")).text()
    assert metric(text, "tusd_hook_redeliveries_total", "post-finish") == 1
    assert metric(text, "tusd_hook_dropped_total", "post-finish") == 0


@every_driver
async def test_redelivery_on_two_replicas_delivers_once(hooked: HookedFactory,
                                                        receiver: Receiver):
    """Both replicas look for owed post-finish every 0.3 s: one delivers each upload."""
    switch = Switch()
    receiver.responder = switch
    replicas = [await hooked(enabled=["post-finish"], redeliver_after=REDELIVER)
                for _ in range(2)]
    paths = [await upload(replicas[i % 2], b"x" * (i + 1)) for i in range(4)]
    await receiver.wait_for("post-finish", 4)
    switch.down = False
    for path in paths:
        await until(lambda path=path: no_longer_owed(replicas[0], path))
    await receiver.let_time_pass(4 * REDELIVER)
    # The receiver answers in the order it records calls: pair them up.
    delivered = [c.upload["ID"] for c, (hook, down) in zip(receiver.calls, switch.answered,
                                                            strict=True) if not down]
    assert sorted(delivered) == sorted(p.rsplit("/", 1)[1] for p in paths), switch.answered


async def test_partials_owe_nothing_the_final_does(hooked: HookedFactory, receiver: Receiver):
    client = await hooked(enabled=["post-finish"], redeliver_after=REDELIVER)
    parts = []
    for data in (b"ab", b"cd"):
        path = await create(client, 2, Upload_Concat="partial")
        assert (await patch(client, path, 0, data)).status == 204
        parts.append(path)
    assert not await owed(client, parts[0])
    r = await client.post("/files/", headers={"Tus-Resumable": "1.0.0",
                                              "Upload-Concat": "final;" + " ".join(parts)})
    assert r.status == 201
    final = r.headers["Location"]
    (call,) = await receiver.wait_for("post-finish")
    assert call.upload["IsFinal"]
    await until(lambda: no_longer_owed(client, final))


async def test_pre_finish_refusal_means_no_post_finish_ever(hooked: HookedFactory,
                                                             receiver: Receiver):
    switch = Switch(down=False)
    switch.pre_finish = {"RejectUpload": True, "HTTPResponse": {"StatusCode": 422,
                                                                "Body": "not a PDF"}}
    receiver.responder = switch
    client = await hooked(enabled=["pre-finish", "post-finish"], redeliver_after=REDELIVER)
    path = await create(client, 3)
    r = await patch(client, path, 0, b"abc")
    assert (r.status, await r.text()) == (422, "not a PDF")
    await until(lambda: no_longer_owed(client, path))
    await receiver.let_time_pass(4 * REDELIVER)
    assert [c.type for c in receiver.calls] == ["pre-finish"]


async def test_failed_pre_finish_is_run_again_before_the_redelivery(hooked: HookedFactory,
                                                                     receiver: Receiver):
    """pre-finish down: the client gets 500 and the upload stays owed; once the receiver
    is back, pre-finish runs (and may still refuse) before post-finish."""
    switch = Switch()
    receiver.responder = switch
    client = await hooked(enabled=["pre-finish", "post-finish"], redeliver_after=REDELIVER)
    path = await create(client, 3)
    assert (await patch(client, path, 0, b"abc")).status == 500
    assert receiver.of("post-finish") == []
    switch.down = False
    await receiver.wait_for("post-finish")
    await until(lambda: no_longer_owed(client, path))
    await receiver.let_time_pass(4 * REDELIVER)
    assert [(t, down) for t, down in switch.answered if not down] == [
        ("pre-finish", False), ("post-finish", False)]
    assert receiver.of("pre-finish")[-1].http["Method"] == ""


async def test_post_finish_survives_kill_9_of_the_daemon(daemon_factory, receiver: Receiver,
                                                         tmp_path: Path):
    """The daemon dies while post-finish is in flight: the next start delivers it."""
    receiver.delay = 30.0  # the first delivery never gets an answer
    data_dir = tmp_path / "data"
    env = {"TUSD_HOOKS__HTTP__URL": receiver.url, "TUSD_HOOKS__HTTP__TIMEOUT": "60s",
           "TUSD_HOOKS__ENABLED": "post-finish", "TUSD_HOOKS__REDELIVER_AFTER": "0.5s"}
    first = await asyncio.to_thread(daemon_factory, env=env, data_dir=data_dir)
    tus = {"Tus-Resumable": "1.0.0"}
    async with aiohttp.ClientSession() as session:
        async with session.post(first.url, headers={**tus, "Upload-Length": "4"}) as r:
            location = r.headers["Location"]
        async with session.patch(location, data=b"done", headers={
                **tus, "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream"}) as r:
            assert r.status == 204
        await receiver.wait_for("post-finish")
        first.kill()  # SIGKILL while the receiver holds the delivery
        receiver.delay = 0
        started = time.monotonic()
        second = await asyncio.to_thread(daemon_factory, env=env, data_dir=data_dir)
        calls = await receiver.wait_for("post-finish", 2, within=15)
        assert time.monotonic() - started < 10
        await receiver.let_time_pass(2.0)  # a few more re-delivery rounds: nothing more
        calls = receiver.of("post-finish")
        assert len(calls) == 2 and len(keys(calls)) == 1
        upload_id = location.rsplit("/", 1)[1]
        assert calls[1].upload["ID"] == upload_id
        assert re.fullmatch("[0-9a-f]{32}", calls[1].headers["Idempotency-Key"])
        await _record(second.data_dir, upload_id)  # it is no longer owed
        async with session.get(second.root + "/metrics") as r:
            text = await r.text()
        assert 'tusd_hook_redeliveries_total{hooktype="post-finish"} 1.0' in text
    assert second.terminate() == 0


async def _record(data_dir: Path, upload_id: str) -> Any:
    from tusd_py.storage.local.store import LocalStore

    store = LocalStore(str(data_dir))
    await store.start()
    try:
        found = await store.get(upload_id)
        assert found is not None and not found.finish_owed
        return found
    finally:
        await store.stop()


async def test_a_storage_failure_leaves_the_post_finish_owed(hooked: HookedFactory,
                                                             receiver: Receiver, caplog):
    """The store fails while a re-delivery takes the upload's lock: nothing is sent, the
    upload stays owed (logged), and the next round delivers it."""
    import logging

    from tusd_py.protocol.errors import StorageError

    switch = Switch()
    receiver.responder = switch
    client = await hooked(enabled=["post-finish"], redeliver_after=REDELIVER)
    store = client.app[STORE]
    path = await upload(client, b"abc")
    await receiver.wait_for("post-finish")
    real_lock, failures = store.lock, []

    async def failing_lock(upload_id: str, wait: float) -> Any:
        if not failures:
            failures.append(upload_id)
            raise StorageError("database is locked")
        return await real_lock(upload_id, wait)

    store.lock = failing_lock  # type: ignore[method-assign]
    switch.down = False
    with caplog.at_level(logging.WARNING, logger="tusd_py.hooks"):
        await until(lambda: no_longer_owed(client, path))
    assert failures == [path.rsplit("/", 1)[1]]
    assert (f"post-finish hook for upload {failures[0]} not delivered (storage error: "
            "StorageError: database is locked)") in caplog.text
    assert switch.delivered("post-finish") == 1
