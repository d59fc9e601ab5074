"""Python hook callables used by the tests (and shown in the auth recipe of docs/hooks/python.md)."""

from __future__ import annotations

import threading
import time
from typing import Any

from tusd_py.protocol import TusError

#: Bearer tokens the recipe accepts, and whom they identify.
TOKENS = {"t-alice": "alice", "t-bob": "bob"}
#: Every hook request ``record`` saw, with the thread it ran on.
RECORDED: list[tuple[dict[str, Any], str]] = []


def _user(hook: dict[str, Any]) -> str | None:
    header = (hook["Event"]["HTTPRequest"]["Header"].get("Authorization") or [""])[0]
    scheme, _, token = header.partition(" ")
    return TOKENS.get(token) if scheme.lower() == "bearer" else None


def check_bearer(hook: dict[str, Any]) -> dict[str, Any] | None:
    """pre-create: require a known bearer token; record its user as the owner.
    pre-access: only the owner may HEAD/PATCH/GET/DELETE the upload."""
    user = _user(hook)
    if hook["Type"] == "pre-create":
        if user is None:
            return {"RejectUpload": True,
                    "HTTPResponse": {"StatusCode": 401, "Body": '{"error":"invalid token"}',
                                     "Header": {"Content-Type": "application/json",
                                                "WWW-Authenticate": "Bearer"}}}
        metadata = dict(hook["Event"]["Upload"]["MetaData"], owner=user)
        return {"ChangeFileInfo": {"MetaData": metadata}}
    if hook["Type"] == "pre-access":
        if user is None or hook["Event"]["Upload"]["MetaData"].get("owner") != user:
            return {"RejectUpload": True,
                    "HTTPResponse": {"StatusCode": 403, "Body": "not your upload"}}
    return None


async def record(hook: dict[str, Any]) -> None:
    RECORDED.append((hook, threading.current_thread().name))


def record_sync(hook: dict[str, Any]) -> None:
    RECORDED.append((hook, threading.current_thread().name))


def legal_hold(hook: dict[str, Any]) -> None:
    """Refuse by raising TusError (Python hooks only)."""
    if hook["Type"] == "pre-create" and "hold" in hook["Event"]["Upload"]["MetaData"]:
        raise TusError("unavailable for legal reasons", status=451)


#: Set when ``slow_pre_create`` returns; the daemon flag of each thread it ran on.
SLOW_DONE = threading.Event()
SLOW_THREADS: list[bool] = []


def slow_pre_create(hook: dict[str, Any]) -> dict[str, Any] | None:
    """With metadata ``slow``: answers after 0.6 s (past a 0.2 s timeout), and its late
    answer would change the id and add a header, if anything still listened."""
    if hook["Type"] != "pre-create" or "slow" not in hook["Event"]["Upload"]["MetaData"]:
        return None
    SLOW_THREADS.append(threading.current_thread().daemon)
    time.sleep(0.6)
    SLOW_DONE.set()
    return {"ChangeFileInfo": {"ID": "late-choice"}, "HTTPResponse": {"Header": {"X-Late": "1"}}}


def broken(hook: dict[str, Any]) -> None:
    raise RuntimeError("boom")


NOT_CALLABLE = 42


def per_user_folder(hook: dict[str, Any]) -> dict[str, Any] | None:
    """pre-create: file each upload under its user's folder (``ChangeFileInfo.Storage.Prefix``
    before the server's own id): ``users/<user>/<id>`` (docs/hooks/index.md)."""
    if hook["Type"] != "pre-create":
        return None
    user = hook["Event"]["Upload"]["MetaData"].get("user", "")
    if not user.isalnum():
        return {"RejectUpload": True, "HTTPResponse": {"StatusCode": 400, "Body": "no user"}}
    return {"ChangeFileInfo": {"Storage": {"Prefix": f"users/{user}/"}}}
